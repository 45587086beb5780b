"""Best-of-n selection (the study's ceiling) and rejection-sampling fine-tuning, on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emprl.rl import best_of_n as B
from emprl.rl import rejection as R
from emprl.profiles import GeneratorConfig
from emprl.rl.reward import empathy_reward, expected_reward

from test_ppo import WordScorer, tiny_tokenizer  # noqa: E402
from test_ppo_fast_path import tiny_policy  # noqa: E402


def _logits(seed, n=4, N=30):
    return torch.randn(n, N, 3, 3, generator=torch.Generator().manual_seed(seed)) * 2


def test_rules_choose_what_they_say_among_the_first_n():
    logits, gold = _logits(2), np.random.default_rng(2).integers(0, 3, size=(30, 3))
    prior = B.level_prior(gold)
    gold_t = torch.as_tensor(gold)
    rewards = torch.stack([empathy_reward(logits[j], gold_t) for j in range(4)])
    assert torch.equal(B.choose(logits, gold, prior, "oracle", 4), rewards.argmax(0))
    assert torch.equal(B.choose(logits, gold, prior, "oracle", 2), rewards[:2].argmax(0))
    assert torch.equal(B.choose(logits, gold, prior, "expected", 4), expected_reward(logits, prior).argmax(0))
    assert torch.equal(B.choose(logits, gold, prior, "first", 4), torch.zeros(30, dtype=torch.long))
    assert torch.equal(B.choose(logits, gold, prior, "oracle", 1), torch.zeros(30, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be in"):
        B.choose(logits, gold, prior, "oracle", 5)
    with pytest.raises(ValueError, match="unknown rule"):
        B.choose(logits, gold, prior, "best", 2)


def test_best_by_reward_equals_a_python_loop_over_the_pool():
    """R_emp = exp(-sum of the three cross-entropies) by hand, the largest per context, the earliest on ties."""
    n, N = 5, 12
    logits = _logits(7, n=n, N=N).round()  # rounded logits: samples with equal rewards occur
    logits[3] = logits[1]  # and certainly: samples 1 and 3 tie on every context
    gold = np.random.default_rng(7).integers(0, 3, size=(N, 3))
    rewards = [[0.0] * N for _ in range(n)]
    for j in range(n):
        for i in range(N):
            ce = 0.0
            for mech in range(3):
                row = [float(v) for v in logits[j, i, mech]]
                ce += math.log(sum(math.exp(v) for v in row)) - row[gold[i, mech]]
            rewards[j][i] = math.exp(-ce)
    expected = []
    for i in range(N):
        best = max(rewards[j][i] for j in range(n))
        expected.append(next(j for j in range(n) if math.isclose(rewards[j][i], best, rel_tol=1e-6)))
    assert torch.allclose(B.pool_rewards(logits, gold).double(), torch.tensor(rewards, dtype=torch.double),
                          rtol=1e-5)
    assert B.best_by_reward(logits, gold).tolist() == expected
    assert 3 not in expected  # the later of two equal samples is never chosen


def test_curve_oracle_beats_first_and_reports_every_rule_and_n():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 3, size=(60, 3))
    logits = _logits(3, n=4, N=60)
    pool = [f"reply {j} to {i} with some words {i % 7}" for j in range(4) for i in range(60)]
    table, record = B.curve(pool, logits, gold, B.level_prior(gold), ns=(1, 2, 4), tokenizer="word", n_boot=50)
    assert len(table) == 9 and set(table.index.get_level_values("rule")) == set(B.RULES)
    assert table.loc[(4, "oracle"), "all 3 match"] >= table.loc[(1, "first"), "all 3 match"]
    assert table.loc[(4, "oracle"), "Emp-F1"] > table.loc[(1, "first"), "Emp-F1"]
    assert table.loc[(1, "oracle"), "Emp-F1 diff"] == 0.0  # n = 1: every rule takes the first sample
    assert len(record["chosen"]["oracle@4"]) == 60


def test_sample_pool_is_cached(tmp_path, monkeypatch):
    model, tok = tiny_policy("prefix"), tiny_tokenizer()
    scorer = WordScorer("good")
    scorer.fingerprint = "word-scorer"
    gen = GeneratorConfig(max_new_tokens=5, max_source_len=16)
    contexts = ["i am so sorry", "what happened", "it was a nice day"]
    responses, logits = B.sample_pool(model, tok, contexts, contexts, scorer, gen, 3, seed=1, cache=tmp_path)
    assert len(responses) == 9 and logits.shape == (3, 3, 3, 3)
    assert torch.equal(logits.reshape(9, 3, 3), scorer.logits(contexts * 3, responses))
    import emprl.models.policy

    real_sample = emprl.models.policy.sample_responses
    monkeypatch.setattr(emprl.models.policy, "sample_responses", lambda *a, **k: pytest.fail("sampled again"))
    again, logits2 = B.sample_pool(model, tok, contexts, contexts, scorer, gen, 3, seed=1, cache=tmp_path)
    assert again == responses and torch.equal(logits2, logits)
    assert [p.name for p in tmp_path.iterdir()] == ["pool.safetensors"]
    calls = []
    monkeypatch.setattr(emprl.models.policy, "sample_responses", lambda *a, **k: calls.append(1) or real_sample(*a, **k))
    other, _ = B.sample_pool(model, tok, contexts, contexts, scorer, gen, 3, seed=2, cache=tmp_path)  # stale
    assert calls == [1] and other != responses
    B.sample_pool(model, tok, contexts, contexts, scorer, gen, 3, seed=2, cache=tmp_path)
    assert calls == [1] and [p.name for p in tmp_path.iterdir()] == ["pool.safetensors"]


def test_kept_sample_best_and_random():
    logits, gold = _logits(4), np.random.default_rng(4).integers(0, 3, size=(30, 3))
    rewards = torch.stack([empathy_reward(logits[j], torch.as_tensor(gold)) for j in range(4)])
    assert torch.equal(R.kept(logits, gold, "best"), rewards.argmax(0))
    rand = R.kept(logits, gold, "random", seed=3)
    assert torch.equal(rand, R.kept(logits, gold, "random", seed=3)) and 0 <= rand.min() and rand.max() < 4
    assert not torch.equal(rand, rewards.argmax(0))
    with pytest.raises(ValueError, match="keep must be"):
        R.kept(logits, gold, "worst")


def test_a_round_fine_tunes_the_prefix_on_the_kept_samples(tmp_path):
    """The best-kept pool has a higher mean R_emp than the pool; fine-tuning moves the prefix only, and a
    second call resumes (same history, no new sampling)."""
    model, tok = tiny_policy("prefix"), tiny_tokenizer()
    t5_before = {n: p.clone() for n, p in model.t5.named_parameters()}
    prefix_before = {n: p.clone() for n, p in model.prefix.named_parameters()}
    scorer = WordScorer("good")
    scorer.fingerprint = "word-scorer"
    gen = GeneratorConfig(max_new_tokens=5, max_source_len=16, batch_size=4, lr=1e-2, max_target_len=8)
    contexts = ["i am so sorry", "what happened", "it was a nice day", "you feel great", "i feel bad",
                "that was so nice", "what day was it", "i hear you"] * 2
    gold = np.full((len(contexts), 3), 2)
    out = R.fine_tune_round(model, tok, contexts, contexts, gold, scorer, gen, k=4, keep="best",
                            state_dir=tmp_path / "best", seed=0, valid_fraction=0.25, batch_size=8, progress=False)
    assert out["kept_reward"] >= out["pool_reward"] and len(out["kept"]) == len(contexts)
    assert all(torch.equal(p, t5_before[n]) for n, p in model.t5.named_parameters())
    assert any(not torch.equal(p, prefix_before[n]) for n, p in model.prefix.named_parameters())
    again = R.fine_tune_round(tiny_policy("prefix"), tok, contexts, contexts, gold, scorer, gen, k=4, keep="best",
                              state_dir=tmp_path / "best", seed=0, valid_fraction=0.25, batch_size=8, progress=False)
    assert again["history"] == out["history"] and again["kept"] == out["kept"]
