"""The rollout's fast path (old log-probs, values and entropy from the generation pass) against the plain
path (a separate teacher-forced forward over the sampled tokens): the same PPO quantities in fp32."""

from __future__ import annotations

import copy

import pytest
import torch

from emprl import policy as P
from emprl.ppo import gae, ppo_update, rollout
from emprl.profiles import GeneratorConfig, PPOConfig
from emprl.reward import reward_vector

from test_ppo import WORDS, tiny_tokenizer  # noqa: E402  (shared tiny fixtures)

CONTEXTS = ["i am so sorry to hear that", "what happened", "it was a nice day you feel great", "i feel bad"]
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_policy(kind: str):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(WORDS) + 3, d_model=16, d_ff=32, d_kv=8, num_layers=2, num_decoder_layers=2,
                   num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    t5 = T5ForConditionalGeneration(cfg).eval()
    if kind == "full":
        return t5
    from emprl.prefix import Prefix, PrefixT5

    return PrefixT5(t5, Prefix.for_t5(cfg, 3, 2, 8)).eval()


def setup(kind):
    policy = tiny_policy(kind)
    torch.manual_seed(1)
    model = P.ActorCritic(policy, P.ValueHead(16)).eval()
    reference = P.make_reference(policy)
    with torch.no_grad():  # the policy moves away from the reference, so the reference forward is checked too
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model, reference


def both_rollouts(model, reference, cfg, gen):
    tok = tiny_tokenizer()
    torch.manual_seed(5)
    fast = rollout(model, reference, tok, CONTEXTS, gen, cfg)
    torch.manual_seed(5)
    plain = rollout(model, reference, tok, CONTEXTS, gen, cfg, rescore=True)
    return fast, plain


@pytest.mark.parametrize("estimator", ["sampled", "full"])
@pytest.mark.parametrize("kind", ["full", "prefix"])
def test_fast_rollout_equals_the_plain_path(kind, estimator):
    model, reference = setup(kind)
    cfg, gen = PPOConfig(min_new_tokens=2, kl_estimator=estimator), GeneratorConfig(max_new_tokens=8, max_source_len=16)
    fast, plain = both_rollouts(model, reference, cfg, gen)
    assert torch.equal(fast.response_ids, plain.response_ids) and fast.responses == plain.responses
    m = fast.response_mask.bool()
    assert m.sum() > len(CONTEXTS)  # real tokens were sampled
    for name in ("logprobs", "values", "entropy", "ref_logprobs", "kl"):
        a, b = getattr(fast, name), getattr(plain, name)
        assert torch.allclose(a[m], b[m], **TOL), name
        assert torch.equal(a[~m], torch.zeros_like(a[~m])) or name not in ("values", "kl"), name
    assert (fast.logprobs[m] - fast.ref_logprobs[m]).abs().max() > 1e-3  # policy != reference
    # independent of emprl's forward: HF's own teacher-forced cross-entropy over the sampled tokens
    labels = fast.response_ids.masked_fill(~m, -100)
    with torch.no_grad():
        kw = {"prefix": None} if kind == "prefix" else {}
        logits = model.policy(input_ids=fast.query_ids, attention_mask=fast.query_mask, labels=labels, **kw).logits
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    assert torch.allclose(-ce[m], fast.logprobs[m], **TOL)


@pytest.mark.parametrize("kind", ["full", "prefix"])
def test_fast_path_gives_the_same_advantages_losses_and_update(kind):
    model, reference = setup(kind)
    cfg = PPOConfig(min_new_tokens=2, lr=1e-3, batch_size=4, mini_batch_size=2, ppo_epochs=2)
    gen = GeneratorConfig(max_new_tokens=8, max_source_len=16)
    fast, plain = both_rollouts(model, reference, cfg, gen)
    score = torch.tensor([0.3, -0.2, 0.9, 0.1])
    updated, stats = {}, {}
    for name, ro in (("fast", fast), ("plain", plain)):
        mask = ro.response_mask.float()
        rewards = reward_vector(score, ro.kl, mask, 0.2)  # Eq. 7-8
        adv, ret = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
        if name == "fast":
            adv_fast, ret_fast, rew_fast = adv, ret, rewards
        else:
            assert torch.allclose(rew_fast, rewards, **TOL)
            assert torch.allclose(adv_fast, adv, **TOL) and torch.allclose(ret_fast, ret, **TOL)
        trained = copy.deepcopy(model)
        optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=cfg.lr)
        torch.manual_seed(7)  # the same mini-batch order
        stats[name] = ppo_update(trained, None, optimizer, ro.query_ids, ro.query_mask, ro.response_ids,
                                 ro.response_mask, ro.logprobs, ro.values, rewards, cfg)
        updated[name] = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}
    for k in ("loss", "policy_loss", "value_loss", "approx_kl", "ratio", "entropy", "advantages_mean"):
        assert stats["fast"][k] == pytest.approx(stats["plain"][k], rel=1e-4, abs=1e-6), k
    before = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for n in updated["fast"]:
        step_fast, step_plain = updated["fast"][n] - before[n], updated["plain"][n] - before[n]
        assert step_fast.abs().max() > 0, n  # the update moved it
        # AdamW's step is about lr * sign(g): equal up to a small fraction of the learning rate
        assert torch.allclose(step_fast, step_plain, rtol=0, atol=1e-3 * cfg.lr), n


def test_fused_adamw_equals_the_default_one():
    """train_ppo fuses AdamW on CUDA; fused AdamW also runs on a CPU, where it is checked against the default."""
    torch.manual_seed(0)
    a = torch.nn.Linear(16, 8)
    b = copy.deepcopy(a)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.01)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    for step in range(5):
        x = torch.randn(4, 16)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.allclose(a.weight, torch.nn.Linear(16, 8).weight, atol=1e-3)  # the steps moved the weights


@pytest.mark.parametrize("kind", ["full", "prefix"])
def test_static_cache_gives_the_same_rollout(kind):
    """The static key/value cache (an option for CUDA, where transformers compiles it) against the default."""
    model, reference = setup(kind)
    cfg, gen = PPOConfig(min_new_tokens=2), GeneratorConfig(max_new_tokens=8, max_source_len=16)
    tok = tiny_tokenizer()
    out = {}
    for static in (False, True):
        torch.manual_seed(5)
        out[static] = rollout(model, reference, tok, CONTEXTS, gen, cfg, static_cache=static)
    a, b = out[False], out[True]
    assert torch.equal(a.response_ids, b.response_ids)
    m = a.response_mask.bool()
    for name in ("logprobs", "values", "entropy", "ref_logprobs", "kl"):
        assert torch.allclose(getattr(a, name)[m], getattr(b, name)[m], **TOL), name
