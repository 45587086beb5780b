"""evaluate_system with m samples per context, its cache, and the floor rows of the tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emprl.eval import evaluation, metrics
from emprl.data import DialogueExample
from emprl.profiles import GeneratorConfig, get_profile

from test_ppo import WordScorer, tiny_tokenizer  # noqa: E402
from test_ppo_fast_path import tiny_policy  # noqa: E402

CONTEXTS = ["i am so sorry", "what happened", "it was a nice day", "you feel great", "i feel bad"]


def _examples():
    return [DialogueExample(f"c{i}", "sad", "", (c,), "i hear you", 1) for i, c in enumerate(CONTEXTS)]


def _scorer():
    scorer = WordScorer("good")
    scorer.fingerprint = "word-scorer"
    scorer.levels = lambda c, r: scorer.logits(c, r).argmax(-1)
    return scorer


def test_m_samples_per_context_and_the_cache(tmp_path, monkeypatch):
    model, tok, scorer = tiny_policy("prefix"), tiny_tokenizer(), _scorer()
    gen = GeneratorConfig(max_new_tokens=5, max_source_len=16)
    E = dataclasses.replace(get_profile("smoke").evaluation, samples_per_context=3, batch_size=4, bootstrap=20)
    gold = np.zeros((5, 3), dtype=int)
    out = evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, seed=0, progress=False,
                                     cache_dir=tmp_path)
    assert len(out["responses"]) == 15 and out["levels"].shape == (15, 3)
    assert out["row"]["samples_per_context"] == 3 and out["row"]["n_examples"] == 5
    assert len(set(out["responses"])) > 5  # the three samples of a context differ
    assert out["nll"].shape == (5,) and out["row"]["ppl"] == pytest.approx(np.exp(out["nll"].sum() /
                                                                                  out["tokens"].sum()))
    import emprl.models.policy

    monkeypatch.setattr(emprl.models.policy, "sample_responses", lambda *a, **k: pytest.fail("sampled again"))
    again = evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, seed=0, progress=False,
                                       cache_dir=tmp_path)
    assert again["responses"] == out["responses"] and again["row"]["cached"]
    assert again["row"]["emp_f1"] == out["row"]["emp_f1"] and again["row"]["ppl"] == out["row"]["ppl"]
    (entry,) = tmp_path.glob("evaluation_*.json")
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])  # unreadable: stale, computed again
    with pytest.raises(pytest.fail.Exception, match="sampled again"):
        evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, seed=0, progress=False,
                                   cache_dir=tmp_path)
    entry.write_bytes(good)
    with torch.no_grad():  # other weights: another cache entry
        next(p for p in model.prefix.parameters()).add_(0.5)
    with pytest.raises(pytest.fail.Exception, match="sampled again"):
        evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, seed=0, progress=False,
                                   cache_dir=tmp_path)


def test_tables_carry_floors_agreement_and_the_distance_to_the_floor():
    rng = np.random.default_rng(0)
    gold = rng.choice(3, size=(200, 3), p=[0.7, 0.2, 0.1])
    E = dataclasses.replace(get_profile("smoke").evaluation, bootstrap=30)
    floors = evaluation.floor_rows(gold, E, seed=0)
    assert set(floors) == {"floor: constant majority", "floor: marginal draws"}
    const = floors["floor: constant majority"]
    assert const["kappa"] == 0.0 and const["dist1"] is None
    assert const["emp_f1"] == pytest.approx(metrics.emp_f1(gold, np.zeros_like(gold)))
    ours = metrics.evaluate_responses([f"r {i}" for i in range(200)], gold, gold, ppl=10.0, n_boot=30)  # perfect
    table = evaluation.table_ii({"perfect": ours}, "ours", floors=floors)
    assert table.loc["perfect", "Emp-F1 above floor"] == pytest.approx(100.0 - const["emp_f1"])
    assert table.loc["floor: constant majority", "Emp-F1 above floor"] == 0.0
    assert table.loc["perfect", "kappa (mean)"] == pytest.approx(1.0)
    assert table.loc["floor: marginal draws", "Block"] == "reference (no response read)"
    paired = evaluation.paired_tests({"perfect": {"responses": None, "levels": gold},
                                      "floor": {"responses": None, "levels": np.zeros_like(gold)}}, gold,
                                     [("perfect", "floor")], n_boot=30)
    assert list(paired["Metric"]) == ["Emp-F1 (%)", "kappa (mean)", "all 3 match (%)"]
    assert (paired["p (paired bootstrap)"] < 0.1).all()
    # kappa is 1 and 0 on every resample (a perfect and a constant predictor): its difference never varies
    assert list(paired["SE"] > 0) == [True, False, True]
