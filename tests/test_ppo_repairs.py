"""The PPO repairs of the study (issue 18), each an option off by default: the value head's own learning rate
and stopped gradient, a critic-only warm-up, the ratio under the sampling distribution, the exact KL in the
loss, and a learning-rate decay horizon of its own."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from emprl.models import policy as P
from emprl.rl.ppo import ppo_update, rollout, sampler_settings
from emprl.rl.ppo_train import adamw, lr_at
from emprl.profiles import GeneratorConfig, PPOConfig, get_profile
from emprl.rl.reward import full_kl, reward_vector

from test_ppo import tiny_tokenizer  # noqa: E402
from test_ppo_fast_path import CONTEXTS, setup  # noqa: E402

GEN = GeneratorConfig(max_new_tokens=8, max_source_len=16, top_k=5, temperature=0.7)


def _rollout(model, reference, **cfg_kw):
    cfg = PPOConfig(min_new_tokens=2, batch_size=4, mini_batch_size=4, **cfg_kw)
    torch.manual_seed(5)
    generation = P.generation_kwargs(GEN, tiny_tokenizer(), min_new_tokens=cfg.min_new_tokens)
    return cfg, rollout(model, reference, tiny_tokenizer(), CONTEXTS, GEN, cfg), generation


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_defaults_are_the_papers_ppo():
    cfg = get_profile("paper").ppo
    assert (cfg.value_lr, cfg.value_detach, cfg.critic_warmup_steps, cfg.ratio, cfg.kl_in_loss,
            cfg.lr_decay_steps) == (None, False, 0, "raw", False, None)
    assert get_profile("paper", preset="authors").ppo.lr_decay_steps == 24000
    with pytest.raises(ValueError, match="ppo.ratio"):
        get_profile("smoke", {"ppo": {"ratio": "warped"}})


def test_value_head_gets_its_own_learning_rate():
    model, _ = setup("prefix")
    opt = adamw(model, PPOConfig(lr=1e-5, value_lr=1e-3), torch.device("cpu"))
    lrs = [(g["lr"], g["base_lr"], len(g["params"])) for g in opt.param_groups]
    n_value = len(list(model.value_head.parameters()))
    assert lrs[0][:2] == (1e-5, 1e-5) and lrs[1] == (1e-3, 1e-3, n_value)
    # one AdamW step on gradients of 1 moves each parameter by about its group's lr
    before = _trainable(model)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    after = _trainable(model)
    steps = {n: float((after[n] - before[n]).abs().max()) for n in before}
    assert all(abs(v - 1e-3) < 2e-4 for n, v in steps.items() if n.startswith("value_head"))
    assert all(v < 2e-5 for n, v in steps.items() if not n.startswith("value_head"))


def test_detached_value_does_not_train_the_policy():
    model, _ = setup("prefix")
    tok = tiny_tokenizer()
    ids, mask = P.encode_contexts(tok, CONTEXTS, 16, "cpu")
    responses = torch.tensor([[5, 6, 1, 0], [7, 1, 0, 0], [5, 5, 5, 1], [8, 1, 0, 0]])
    rmask = P.response_mask_from_eos(responses, 1)
    for detach in (False, True):
        ac = P.ActorCritic(model.policy, model.value_head, detach_value=detach)
        ac.zero_grad()
        _, values, _ = ac(ids, mask, responses, rmask)
        (values ** 2).sum().backward()
        prefix_grad = sum(float(p.grad.abs().sum()) for p in model.policy.prefix.parameters() if p.grad is not None)
        assert (prefix_grad == 0) is detach
        assert float(model.value_head.linear.weight.grad.abs().sum()) > 0


def test_critic_warmup_steps_only_the_value_head():
    model, reference = setup("prefix")
    cfg, ro, _ = _rollout(model, reference)
    rewards = reward_vector(torch.tensor([0.9, 0.1, 0.5, 0.3]), ro.kl, ro.response_mask.float(), 0.2)
    trained = copy.deepcopy(model)
    before = _trainable(trained)
    opt = adamw(trained, cfg, torch.device("cpu"))
    stats = ppo_update(trained, None, opt, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask,
                       ro.logprobs, ro.values, rewards, cfg, train_policy=False)
    after = _trainable(trained)
    assert all(torch.equal(after[n], before[n]) for n in before if not n.startswith("value_head"))
    assert any(not torch.equal(after[n], before[n]) for n in before if n.startswith("value_head"))
    assert stats["value_loss"] > 0


def _warped_by_hand(logits, temperature, top_k, eos, min_new):
    """log q of the sampler from its definition: EOS banned before min_new tokens, temperature, the k largest
    kept, renormalised (no ties in random logits)."""
    x = logits / temperature
    x[:, :min_new, eos] = -float("inf")
    out = torch.full_like(x, -float("inf"))
    top = x.topk(top_k, dim=-1)
    return out.scatter(-1, top.indices, F.log_softmax(top.values, dim=-1))


def test_sampler_ratio_uses_the_sampling_distribution():
    model, reference = setup("prefix")
    cfg, ro, generation = _rollout(model, reference, ratio="sampler")
    _, raw, _ = _rollout(model, reference)
    assert torch.equal(ro.response_ids, raw.response_ids)
    m = ro.response_mask.bool()
    # the old log-probs are log q(y_t) of the tempered, truncated distribution the tokens were drawn from
    with torch.no_grad():
        logp_all, _ = P.sequence_log_softmax(model.policy, ro.query_ids, ro.query_mask, ro.response_ids,
                                             ro.response_mask)
    logq = _warped_by_hand(logp_all, GEN.temperature, GEN.top_k, 1, generation["min_new_tokens"])
    expected = logq.gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ro.logprobs[m], expected[m], atol=1e-5)
    assert (ro.logprobs[m] - raw.logprobs[m]).abs().max() > 1e-2  # not the raw policy's
    assert ro.keep.sum(-1)[m].max() <= GEN.top_k
    # on the first pass the new policy is the old one: every ratio is 1
    rewards = reward_vector(torch.tensor([0.9, 0.1, 0.5, 0.3]), ro.kl, ro.response_mask.float(), 0.2)
    sampler = {"keep": ro.keep, **sampler_settings(GEN, tiny_tokenizer(), generation)}
    one_pass = PPOConfig(min_new_tokens=2, batch_size=4, mini_batch_size=4, ppo_epochs=1, ratio="sampler")
    trained = copy.deepcopy(model)
    stats = ppo_update(trained, None, torch.optim.SGD([p for p in trained.parameters() if p.requires_grad],
                                                          lr=0.0), ro.query_ids, ro.query_mask, ro.response_ids,
                       ro.response_mask, ro.logprobs, ro.values, rewards, one_pass, sampler=sampler)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-5) and stats["approx_kl"] < 1e-10


def test_exact_kl_in_the_loss_pulls_the_policy_back_to_the_reference():
    """With no reward at all (and a critic at 0, so no advantage), the exact KL in the loss alone moves a
    policy that drifted from rho back toward it; without it nothing moves."""
    model, reference = setup("prefix")  # setup() moved the policy away from the reference
    torch.nn.init.zeros_(model.value_head.linear.weight)
    torch.nn.init.zeros_(model.value_head.linear.bias)

    def exact_kl(m):
        with torch.no_grad():
            lp, _ = P.sequence_log_softmax(m.policy, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)
            ref = P.reference_logprobs(m.policy, reference, ro.query_ids, ro.query_mask, ro.response_ids,
                                       ro.response_mask, full=True)
        return float(full_kl(lp, ref, ro.response_mask).sum() / ro.response_mask.sum())

    cfg, ro, _ = _rollout(model, reference, kl_in_loss=True, lr=1.0)
    assert ro.ref_logp_all is not None and ro.values.abs().max() == 0
    start = exact_kl(model)
    assert start > 1e-3
    moved = {}
    for coef in (1.0, 0.0):
        trained = copy.deepcopy(model)
        opt = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=cfg.lr)
        for _ in range(5):
            rewards = torch.zeros_like(ro.kl)
            ppo_update(trained, None, opt, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask,
                       ro.logprobs, ro.values, rewards, cfg, ref_logp_all=ro.ref_logp_all, kl_coef=coef)
        moved[coef] = exact_kl(trained)
    assert moved[1.0] < 0.8 * start
    assert moved[0.0] == pytest.approx(start, rel=1e-6)


def test_lr_decay_horizon_is_independent_of_the_run_length():
    cfg = PPOConfig(steps=200, lr=1e-5, lr_schedule="linear", lr_decay_steps=24000)
    assert lr_at(cfg, 199) == pytest.approx(1e-5 * (24000 - 199) / 24000)
    assert lr_at(PPOConfig(steps=200, lr=1e-5, lr_schedule="linear"), 199) == pytest.approx(1e-5 / 200)
