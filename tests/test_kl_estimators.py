"""KL estimators (emprl.rl.reward) against brute force on a tiny vocabulary, and trl's reward whitening.

The toy policy and reference are autoregressive tables of random logits indexed by the prefix; every
response of at most L tokens over a vocabulary of V is enumerated, so sequence-level KLs are exact.
The sampler's warp in the brute force comes from transformers' own logits processors, not from
``emprl.rl.reward.sampling_log_probs``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from emprl.rl.ppo import gae
from emprl.rl.reward import (
    full_kl,
    kl_penalty,
    masked_whiten,
    sampling_log_probs,
    warped_kl,
    whiten_rewards,
)

V, L, EOS = 5, 3, 4


def toy_logits(seed: int, prefix: tuple[int, ...]) -> np.ndarray:
    """Logits of a toy autoregressive model after ``prefix``: random, fixed per (seed, prefix)."""
    base = np.random.default_rng([seed, len(prefix), *prefix]).normal(0, 1.5, V)
    return base


def policy_logits(prefix):
    return toy_logits(1, prefix)


def reference_logits(prefix):
    return toy_logits(1, prefix) + 0.8 * toy_logits(2, prefix)  # correlated with the policy, not equal


def hf_warp(top_k, temperature, top_p, min_new_tokens):
    procs = LogitsProcessorList()
    if min_new_tokens:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=1, min_new_tokens=min_new_tokens,
                                                       eos_token_id=EOS))
    procs.append(TemperatureLogitsWarper(temperature))
    procs.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p=top_p))
    return procs


def step_probs(logits: np.ndarray, prefix, procs, support=None) -> np.ndarray:
    """One step's sampling distribution computed by transformers' processors (decoder start token + prefix)."""
    ids = torch.tensor([[0, *prefix]])
    scores = procs(ids, torch.tensor(logits, dtype=torch.float64)[None])[0]
    if support is not None:  # the reference warped with the policy's set, as sampled
        x = torch.tensor(logits, dtype=torch.float64)
        if len(prefix) < getattr(procs[0], "min_new_tokens", 0):
            x[EOS] = -math.inf
        scores = torch.where(torch.tensor(support), x / procs_temperature(procs), torch.tensor(-math.inf))
    return torch.softmax(scores, -1).numpy()


def procs_temperature(procs) -> float:
    return next(p.temperature for p in procs if isinstance(p, TemperatureLogitsWarper))


def enumerate_responses(procs):
    """Every response (ending at EOS or at L tokens) with its probabilities under q_pi and q_rho
    (rho warped on q_pi's support) and under the untempered pi and rho."""
    out = []

    def walk(prefix, q_pi, q_rho, p_pi, p_rho):
        if (prefix and prefix[-1] == EOS) or len(prefix) == L:
            out.append((prefix, q_pi, q_rho, p_pi, p_rho))
            return
        lp, lr = policy_logits(prefix), reference_logits(prefix)
        qp = step_probs(lp, prefix, procs)
        qr = step_probs(lr, prefix, procs, support=qp > 0)
        pp = np.exp(lp - np.logaddexp.reduce(lp))
        pr = np.exp(lr - np.logaddexp.reduce(lr))
        for v in range(V):
            walk(prefix + (v,), q_pi * qp[v], q_rho * qr[v], p_pi * pp[v], p_rho * pr[v])

    walk((), 1.0, 1.0, 1.0, 1.0)
    return out


def batch_of(responses):
    """[N, L, V] untempered log-softmax of policy and reference along each response, ids and mask."""
    n = len(responses)
    lp, lr = torch.zeros(n, L, V, dtype=torch.float64), torch.zeros(n, L, V, dtype=torch.float64)
    ids, mask = torch.zeros(n, L, dtype=torch.long), torch.zeros(n, L)
    for i, (seq, *_rest) in enumerate(responses):
        for t, y in enumerate(seq):
            lp[i, t] = torch.log_softmax(torch.tensor(policy_logits(seq[:t])), -1)
            lr[i, t] = torch.log_softmax(torch.tensor(reference_logits(seq[:t])), -1)
            ids[i, t], mask[i, t] = y, 1
    return lp, lr, ids, mask


WARPS = [dict(top_k=3, temperature=0.9, top_p=1.0, min_new_tokens=2),
         dict(top_k=2, temperature=0.7, top_p=1.0, min_new_tokens=0),
         dict(top_k=4, temperature=1.3, top_p=0.8, min_new_tokens=1)]


@pytest.mark.parametrize("warp", WARPS)
def test_sampling_log_probs_matches_transformers_processors(warp):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g, dtype=torch.float64)
    logits[0, 1, 5] = logits[0, 1, 2]  # a tie
    ours = sampling_log_probs(logits, eos_token_id=EOS, **warp).exp()
    procs = hf_warp(**warp)
    for b in range(3):
        for t in range(4):
            ref = torch.softmax(procs(torch.zeros(1, 1 + t, dtype=torch.long), logits[b, t][None].clone())[0], -1)
            torch.testing.assert_close(ours[b, t], ref.to(ours.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize("warp", WARPS)
def test_warped_kl_expectation_is_kl_of_sampling_distributions(warp):
    responses = enumerate_responses(hf_warp(**warp))
    q_pi = np.array([r[1] for r in responses])
    q_rho = np.array([r[2] for r in responses])
    assert q_pi.sum() == pytest.approx(1.0, abs=1e-9) and q_rho.sum() == pytest.approx(1.0, abs=1e-9)
    on = q_pi > 0
    brute = float((q_pi[on] * np.log(q_pi[on] / q_rho[on])).sum())  # KL(q_pi || q_rho) over whole responses
    assert brute > 0
    lp, lr, ids, mask = batch_of(responses)
    for exact in (False, True):
        kl = warped_kl(lp, lr, ids, mask, eos_token_id=EOS, exact=exact, **warp).sum(1).numpy()
        assert np.isfinite(kl[on]).all()
        assert float((q_pi[on] * kl[on]).sum()) == pytest.approx(brute, rel=1e-6, abs=1e-9)
    # the exact per-token KL is >= 0 everywhere, not only in expectation
    assert (warped_kl(lp, lr, ids, mask, eos_token_id=EOS, exact=True, **warp) >= 0).all()


def test_sampled_and_full_estimators_without_warp_give_the_sequence_kl():
    """With plain sampling (temperature 1, no top-k, no EOS ban) q = pi, and both Eq. 6 estimators
    have expectation KL(pi || rho) over whole responses."""
    responses = enumerate_responses(hf_warp(top_k=V, temperature=1.0, top_p=1.0, min_new_tokens=0))
    p_pi = np.array([r[3] for r in responses])
    p_rho = np.array([r[4] for r in responses])
    brute = float((p_pi * np.log(p_pi / p_rho)).sum())
    lp, lr, ids, mask = batch_of(responses)
    sampled = kl_penalty(lp.gather(-1, ids[..., None])[..., 0], lr.gather(-1, ids[..., None])[..., 0]) * mask
    assert float((p_pi * sampled.sum(1).numpy()).sum()) == pytest.approx(brute, rel=1e-6)
    full = full_kl(lp, lr, mask).sum(1).numpy()
    assert float((p_pi * full).sum()) == pytest.approx(brute, rel=1e-6)


def test_sampled_estimator_under_warped_sampling_can_be_negative_while_warped_is_not():
    """One step: pi = (0.4, 0.35, 0.25), rho = (0.6, 0.2, 0.2), top-1 sampling always draws token 0, so
    E_q[log pi - log rho] = log(0.4 / 0.6) < 0; the same-warp KL is 0 (both warps put all mass on 0)."""
    lp = torch.log(torch.tensor([[[0.4, 0.35, 0.25]]], dtype=torch.float64))
    lr = torch.log(torch.tensor([[[0.6, 0.2, 0.2]]], dtype=torch.float64))
    ids, mask = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1)
    sampled = kl_penalty(lp[..., 0], lr[..., 0])
    assert sampled.item() == pytest.approx(math.log(0.4 / 0.6))
    for exact in (False, True):
        assert warped_kl(lp, lr, ids, mask, top_k=1, temperature=0.9, exact=exact).item() == pytest.approx(0.0)


def test_warped_kl_monte_carlo_with_transformers_sampling():
    """Sample responses with transformers' processors and torch.multinomial (seeded); the mean of the
    sampled-token estimator lies within 4 standard errors of the brute-force KL(q_pi || q_rho)."""
    warp = WARPS[0]
    procs = hf_warp(**warp)
    responses = enumerate_responses(procs)
    q_pi = np.array([r[1] for r in responses])
    q_rho = np.array([r[2] for r in responses])
    on = q_pi > 0
    brute = float((q_pi[on] * np.log(q_pi[on] / q_rho[on])).sum())
    g = torch.Generator().manual_seed(123)
    drawn = []
    for _ in range(3000):
        seq = ()
        while not ((seq and seq[-1] == EOS) or len(seq) == L):
            q = torch.tensor(step_probs(policy_logits(seq), seq, procs))
            seq += (int(torch.multinomial(q, 1, generator=g)),)
        drawn.append((seq,))
    lp, lr, ids, mask = batch_of(drawn)
    est = warped_kl(lp, lr, ids, mask, eos_token_id=EOS, **warp).sum(1).numpy()
    se = est.std(ddof=1) / math.sqrt(len(est))
    assert abs(est.mean() - brute) < 4 * se


def test_warped_kl_rejects_bad_shapes():
    with pytest.raises(ValueError, match="warped_kl"):
        warped_kl(torch.zeros(2, 3, 5), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3),
                  top_k=2, temperature=1.0)


# --------------------------------------------------------------------------- trl 0.9.6 reward whitening


def trl_compute_advantages(values, rewards, mask, gamma, lam, whiten_rewards):
    """A transcription, for this test only, of trl 0.9.6 ``PPOTrainer.compute_advantages`` and
    ``trl.core.masked_whiten`` (read from git tag v0.9.6 of huggingface/trl)."""

    def mean(x, m):
        return (x * m).sum() / m.sum()

    def whiten(x, m, shift_mean=True):
        mu = mean(x, m)
        var = mean((x - mu) ** 2, m) * m.sum() / (m.sum() - 1)
        w = (x - mu) * torch.rsqrt(var + 1e-8)
        return w if shift_mean else w + mu

    values = values * mask
    rewards = rewards * mask
    if whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    last, rev = 0, []
    T = rewards.shape[-1]
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        rev.append(last)
    advantages = torch.stack(rev[::-1]).transpose(0, 1)
    returns = advantages + values
    return whiten(advantages, mask), returns


def test_trl_reward_whitening_matches_trl_compute_advantages():
    g = torch.Generator().manual_seed(0)
    B, T = 5, 7
    lengths = torch.tensor([7, 3, 5, 1, 6])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64) * mask
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    gamma, lam = 1.0, 0.95
    trl_adv, trl_ret = trl_compute_advantages(values, rewards, mask, gamma, lam, whiten_rewards=True)
    real = mask.bool()

    w = whiten_rewards(rewards, mask, keep_padding=True)
    adv, ret = gae(w, values, mask, gamma, lam, mask_rewards=False)
    torch.testing.assert_close(masked_whiten(adv, mask)[real], trl_adv[real])
    torch.testing.assert_close(ret[real], trl_ret[real])

    # ours zeroes the whitened padding; the short rows' advantages then differ from trl's
    w0 = whiten_rewards(rewards, mask)
    assert (w0[~real] == 0).all() and (w[~real] != 0).all()
    adv0, _ = gae(w0, values, mask, gamma, lam)
    assert not torch.allclose(masked_whiten(adv0, mask)[real], trl_adv[real])
    # without reward whitening the two agree
    trl_adv_nw, _ = trl_compute_advantages(values, rewards, mask, gamma, lam, whiten_rewards=False)
    adv_nw, _ = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(masked_whiten(adv_nw, mask)[real], trl_adv_nw[real])
