"""Reward equations (Eq. 2-8) and the authors'-code reward options against hand computations."""

import itertools
import math

import numpy as np
import pytest
import torch

from emprl.rl.best_of_n import level_prior
from emprl.rl.reward import (
    AdaptiveKLController,
    RunningMoments,
    chance_corrected_reward,
    empathy_reward,
    expected_reward,
    kl_penalty,
    masked_whiten,
    reward_vector,
    scale_scores,
)


def test_empathy_reward_hand_computed():
    # example 0: uniform logits -> CE = log 3 per mechanism -> R = exp(-3 log 3) = 1/27
    # example 1: logits [0, log 2, log 3] (probs 1/6, 2/6, 3/6), gold 2, 1, 0 -> CE = log 2, log 3, log 6
    l1 = torch.tensor([0.0, math.log(2), math.log(3)])
    logits = torch.stack([torch.zeros(3, 3), torch.stack([l1, l1, l1])])
    gold = torch.tensor([[0, 1, 2], [2, 1, 0]])
    r = empathy_reward(logits, gold)
    expected = torch.tensor([1 / 27, (1 / 2) * (1 / 3) * (1 / 6)])
    assert torch.allclose(r, expected, atol=1e-7)


def test_empathy_reward_is_one_for_certain_correct_prediction_and_bad_shapes_raise():
    logits = torch.full((1, 3, 3), -1e4)
    logits[0, :, 1] = 0.0
    assert torch.allclose(empathy_reward(logits, torch.ones(1, 3, dtype=torch.long)), torch.ones(1))
    with pytest.raises(ValueError, match="gold_labels"):
        empathy_reward(torch.zeros(2, 3, 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        empathy_reward(torch.zeros(2, 9), torch.zeros(2, 3, dtype=torch.long))


def test_expected_reward_is_the_prior_weighted_sum_of_rewards():
    gold_train = np.random.default_rng(0).choice(3, size=(500, 3), p=[0.6, 0.3, 0.1])
    prior = level_prior(gold_train)
    assert prior.sum() == pytest.approx(1.0)
    assert prior[0] == pytest.approx(np.mean((gold_train == 0).all(axis=1)))  # (none, none, none) first
    logits = torch.randn(4, 5, 3, 3, generator=torch.Generator().manual_seed(1)) * 2
    brute = sum(prior[c] * empathy_reward(logits.reshape(-1, 3, 3), torch.tensor([t] * 20))
                for c, t in enumerate(itertools.product(range(3), repeat=3)))
    assert torch.allclose(expected_reward(logits, prior).reshape(-1), brute.double(), atol=1e-12)
    with pytest.raises(ValueError, match="prior must be"):
        expected_reward(logits, prior[:9])


def _chance_corrected_by_hand(logits: list[list[list[float]]], gold: list[int], prior: list[float]) -> float:
    """exp(-sum_i CE) against ``gold`` less sum over the 27 triples t of prior(t) exp(-sum_i CE against t),
    from explicit softmax probabilities."""
    probs = [[math.exp(v) / sum(math.exp(w) for w in row) for v in row] for row in logits]

    def reward(levels):
        return math.exp(-sum(-math.log(probs[i][levels[i]]) for i in range(3)))

    triples = list(itertools.product(range(3), repeat=3))
    return reward(gold) - sum(prior[k] * reward(t) for k, t in enumerate(triples))


def test_chance_corrected_reward_by_hand():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 3, 3, generator=g) * 2
    gold = torch.randint(0, 3, (6, 3), generator=g)
    prior = level_prior(torch.randint(0, 3, (200, 3), generator=g))
    out = chance_corrected_reward(logits, gold, prior)
    assert out.shape == (6,) and out.dtype == torch.float32
    for b in range(6):
        by_hand = _chance_corrected_by_hand(logits[b].tolist(), gold[b].tolist(), prior.tolist())
        assert out[b].item() == pytest.approx(by_hand, abs=1e-6)


def test_a_response_blind_to_the_gold_earns_zero_on_average_over_the_prior():
    """Whatever the identifiers see in a response, if that does not depend on the gold levels, its chance-
    corrected reward averaged over gold triples drawn from the prior is 0 (its plain R_emp is not)."""
    g = torch.Generator().manual_seed(4)
    prior = level_prior(np.random.default_rng(4).choice(3, size=(300, 3), p=[0.5, 0.3, 0.2]))
    triples = torch.tensor(list(itertools.product(range(3), repeat=3)))
    for logits in (torch.randn(1, 3, 3, generator=g) * 3, torch.zeros(1, 3, 3)):
        rewards = chance_corrected_reward(logits.expand(27, 3, 3), triples, prior)
        assert (prior.double() @ rewards.double()).item() == pytest.approx(0.0, abs=1e-6)
        assert (prior.double() @ empathy_reward(logits.expand(27, 3, 3), triples).double()).item() > 0.01


def test_kl_penalty_and_reward_vector_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -0.2, -1.0]])
    kl = kl_penalty(logp, ref)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.2, 0.0, -8.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r = reward_vector(torch.tensor([0.7, 0.3]), kl, mask, beta=0.2)
    expected = torch.tensor([[-0.1, 0.2, 0.0 + 0.7], [-0.04, 0.0 + 0.3, 0.0]])  # padding carries nothing
    assert torch.allclose(r, expected, atol=1e-7)


def test_reward_vector_rejects_left_padding_and_empty_rows():
    kl = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="right-padded"):
        reward_vector(torch.ones(2), kl, torch.tensor([[0, 1, 1], [1, 1, 1]]), 0.2)
    with pytest.raises(ValueError, match="no real token"):
        reward_vector(torch.ones(2), kl, torch.tensor([[0, 0, 0], [1, 1, 1]]), 0.2)


def test_masked_whiten_matches_manual():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    std = vals.std(unbiased=True)
    w = masked_whiten(x, mask)
    assert torch.allclose(w[mask.bool()], (vals - 2.5) / torch.sqrt(std**2 + 1e-8), atol=1e-6)
    w2 = masked_whiten(x, mask, shift_mean=False)
    assert torch.allclose(w2[mask.bool()], (vals - 2.5) / torch.sqrt(std**2 + 1e-8) + 2.5, atol=1e-6)


def test_running_moments_equal_batch_statistics():
    rm = RunningMoments()
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, -4.0])
    rm.update(a)
    rm.update(b)
    allv = torch.cat([a, b]).double()
    assert rm.mean == pytest.approx(allv.mean().item(), rel=1e-9)
    assert rm.std == pytest.approx(allv.std(unbiased=True).item(), rel=1e-9)
    rm2 = RunningMoments()
    s = scale_scores(torch.tensor([1.0, 3.0]), rm2, normalize=True)
    # after one batch: mean 2, std sqrt(2) -> (x - 2) / sqrt(2)
    assert torch.allclose(s, torch.tensor([-1.0, 1.0]) / math.sqrt(2), atol=1e-6)


def test_adaptive_kl_controller_by_hand():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c.update(9.0, n_steps=8)  # error = clip(0.5, +-0.2) = 0.2 -> 0.2 * (1 + 0.2 * 8 / 10000)
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 8 / 10000))
    c2 = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c2.update(5.4, n_steps=100)  # error = -0.1
    assert c2.value == pytest.approx(0.2 * (1 - 0.1 * 100 / 10000))


# --------------------------------------------------------------------------- full_kl (PPOConfig.kl_estimator="full")


def test_full_kl_matches_torch_distributions_and_is_zero_on_padding():
    from torch.distributions import Categorical, kl_divergence

    from emprl.rl.reward import full_kl

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 4, 7, generator=g)
    ref_logits = 3 * torch.randn(3, 4, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    expected = kl_divergence(Categorical(logits=logits), Categorical(logits=ref_logits)) * mask  # independent
    got = full_kl(torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1), mask)
    assert got.shape == (3, 4)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.allclose(full_kl(logits, ref_logits, mask), expected, atol=1e-5)  # raw logits are accepted too
    with pytest.raises(ValueError, match="full_kl"):
        full_kl(logits, ref_logits[:, :, :5], mask)
    with pytest.raises(ValueError, match="mask"):
        full_kl(logits, ref_logits, mask[:, :3])


def test_full_kl_is_nonnegative_and_zero_when_policy_equals_reference():
    from emprl.rl.reward import full_kl

    g = torch.Generator().manual_seed(1)
    mask = torch.ones(4, 6)
    for _ in range(5):
        logp = torch.log_softmax(5 * torch.randn(4, 6, 11, generator=g), -1)
        ref = torch.log_softmax(logp + 1e-3 * torch.randn(4, 6, 11, generator=g), -1)  # nearly equal: rounding
        assert (full_kl(logp, ref, mask) >= 0).all()
        assert torch.equal(full_kl(logp, logp, mask), torch.zeros(4, 6))
    # the sampled-token estimator of the same pair can be negative; full_kl cannot
    logp = torch.log(torch.tensor([[[0.1, 0.9]]]))
    ref = torch.log(torch.tensor([[[0.5, 0.5]]]))
    assert kl_penalty(logp[..., 0], ref[..., 0]).item() < 0 < full_kl(logp, ref, torch.ones(1, 1)).item()
