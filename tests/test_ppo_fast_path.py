"""The rollout's fast path (old log-probs, values and entropy from the generation pass) against the plain
path (a separate teacher-forced forward over the sampled tokens): the same PPO quantities in fp32."""

from __future__ import annotations

import copy

import pytest
import torch

from emprl.models import policy as P
from emprl.rl.ppo import gae, ppo_loss, ppo_update, rollout
from emprl.profiles import GeneratorConfig, PPOConfig
from emprl.rl.reward import masked_whiten, reward_vector

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
    from emprl.models.prefix import Prefix, PrefixT5

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


def _padded_batch(kind):
    """A rollout of 6 contexts of different lengths, with extra all-padding columns on queries and responses."""
    model, reference = setup(kind)
    tok = tiny_tokenizer()
    contexts = CONTEXTS + ["sad", "you feel great it was a nice day i am so sorry to hear that"]
    cfg, gen = PPOConfig(min_new_tokens=2), GeneratorConfig(max_new_tokens=8, max_source_len=16)
    torch.manual_seed(5)
    ro = rollout(model, reference, tok, contexts, gen, cfg)
    pad_cols = lambda x, n: torch.cat([x, torch.zeros(x.shape[0], n, dtype=x.dtype)], dim=1)  # noqa: E731
    return model, {"query_ids": pad_cols(ro.query_ids, 5), "query_mask": pad_cols(ro.query_mask, 5),
                   "response_ids": pad_cols(ro.response_ids, 3), "response_mask": pad_cols(ro.response_mask, 3),
                   "old_logprobs": pad_cols(ro.logprobs, 3), "old_values": pad_cols(ro.values, 3),
                   "rewards": pad_cols(reward_vector(torch.linspace(-0.5, 1.0, 6), ro.kl, ro.response_mask.float(),
                                                     0.2), 3)}


@pytest.mark.parametrize("micro", [None, 1, 2, 4])
@pytest.mark.parametrize("kind", ["full", "prefix"])
def test_trimmed_micro_batches_give_the_untrimmed_update(kind, micro):
    """ppo_update on length-sorted, trimmed micro-batches against the loss of the whole padded mini-batch,
    written out here (GAE, then one Eq. 13-15 loss over all real tokens) and stepped with plain SGD, whose
    step is proportional to the gradient (Adam's first step would hide a wrongly scaled gradient)."""
    model, batch = _padded_batch(kind)
    cfg = PPOConfig(batch_size=6, mini_batch_size=6, ppo_epochs=1, micro_batch_size=micro, whiten_advantages=True)
    ours = copy.deepcopy(model)
    params = [p for p in ours.parameters() if p.requires_grad]
    stats = ppo_update(ours, None, torch.optim.SGD(params, lr=1.0), **batch, cfg=cfg)

    ref = copy.deepcopy(model)
    mask = batch["response_mask"].float()
    adv, ret = gae(batch["rewards"], batch["old_values"] * mask, mask, cfg.gamma, cfg.lam)
    adv = masked_whiten(adv, mask) * mask
    logprobs, values, _ = ref(batch["query_ids"], batch["query_mask"], batch["response_ids"], batch["response_mask"])
    loss, ref_stats = ppo_loss(logprobs, batch["old_logprobs"], values, batch["old_values"] * mask, adv, ret, mask,
                               clip=cfg.clip, alpha=cfg.alpha)
    ref_params = [p for p in ref.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(ref_params, lr=1.0)
    loss.backward()
    optimizer.step()
    for k in ("loss", "policy_loss", "value_loss", "approx_kl", "ratio", "clip_frac"):
        assert stats[k] == pytest.approx(float(ref_stats[k]), rel=1e-4, abs=1e-6), k
    moved = 0.0
    for (n, p), q, p0 in zip([(n, p) for n, p in ours.named_parameters() if p.requires_grad], ref_params,
                             [p for p in model.parameters() if p.requires_grad]):
        moved = max(moved, float((q - p0).detach().abs().max()))
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), n
    assert moved > 1e-4  # the step moved the parameters


def test_prefix_attached_once_per_generate_gives_the_same_samples():
    """The prefix memo (cross-attention keys/values, position bias and mask padded once per generate) against
    attaching it at every layer and step: same tokens, same logits, and the memo is actually hit."""
    import emprl.models.prefix as prefix_module

    model, _ = setup("prefix")
    policy, tok = model.policy, tiny_tokenizer()
    ids, mask = P.encode_contexts(tok, CONTEXTS, 16, "cpu")
    kw = dict(do_sample=True, top_k=5, temperature=0.9, max_new_tokens=8, min_new_tokens=8,
              decoder_start_token_id=0, return_dict_in_generate=True, output_logits=True)
    hits = []
    real = prefix_module._memoized

    def counting(memo, name, source, make):
        if memo is not None and not torch.is_grad_enabled() and name in memo and memo[name][0] is source:
            hits.append(name)
        return real(memo, name, source, make)

    prefix_module._memoized = counting
    try:
        torch.manual_seed(3)
        fast = policy.generate(ids, mask, **kw)
    finally:
        prefix_module._memoized = real
    torch.manual_seed(3)
    plain = policy.generate(ids, mask, memo=False, **kw)
    assert torch.equal(fast.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(fast.logits, plain.logits))
    assert {"key", "value"} <= set(hits) and any(h.startswith("bias") for h in hits)
    # nothing is left behind once generate returns
    assert all(a.emprl_prefix_memo is None and a.emprl_shared_memo is None for _, _, a in policy._slots)


def test_reference_and_entropy_need_no_graph():
    """The reference log-probs are those of the sampled tokens (no entropy computed); the update's entropy is
    logged outside autograd, and its log-probs keep their graph."""
    model, reference = setup("prefix")
    tok = tiny_tokenizer()
    ids, mask = P.encode_contexts(tok, CONTEXTS, 16, "cpu")
    responses = torch.tensor([[5, 6, 1, 0], [7, 1, 0, 0], [5, 5, 5, 1], [8, 1, 0, 0]])
    rmask = P.response_mask_from_eos(responses, 1)
    ref = P.reference_logprobs(model.policy, reference, ids, mask, responses, rmask)
    full = P.reference_logprobs(model.policy, reference, ids, mask, responses, rmask, full=True)
    assert torch.equal(ref, full.gather(-1, responses.unsqueeze(-1)).squeeze(-1))
    logprobs, values, entropy = model(ids, mask, responses, rmask)
    assert logprobs.requires_grad and values.requires_grad and not entropy.requires_grad
    p = full.exp()  # entropy from the definition (of the reference here: the same function)
    _, _, ent_ref = P.sequence_logprobs(model.policy, ids, mask, responses, rmask, prefix=reference)
    assert torch.allclose(ent_ref, -(p * full).sum(-1), atol=1e-5)
