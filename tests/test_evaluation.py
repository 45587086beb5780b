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
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(pytest.fail.Exception, match="sampled again"):
        evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, seed=0, progress=False,
                                   cache_dir=tmp_path)  # under bf16 autocast: not the float32 evaluation
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


def test_blind_floor_row_and_the_agreement_columns():
    rng = np.random.default_rng(1)
    gold = rng.choice(3, size=(300, 3), p=[0.7, 0.2, 0.1])
    E = dataclasses.replace(get_profile("smoke").evaluation, bootstrap=30)
    prior = metrics.level_frequencies(rng.choice(3, size=(1000, 3), p=[0.6, 0.3, 0.1]))
    floors = evaluation.floor_rows(gold, E, seed=0, prior=prior)
    assert list(floors) == ["floor: constant majority", "floor: marginal draws",
                            "floor: blind best (training frequencies)"]
    blind = floors[metrics.BLIND_FLOOR]
    assert blind["emp_f1"] == pytest.approx(metrics.emp_f1(gold, metrics.floor_levels(gold, "blind best", 0, prior)))
    ours = metrics.evaluate_responses(None, gold, gold, n_boot=30)
    table = evaluation.table_ii({"perfect": ours}, "ours", floors=floors)
    assert table.loc["perfect", "Emp-F1 above blind floor"] == pytest.approx(100.0 - blind["emp_f1"])
    assert table.loc[metrics.BLIND_FLOOR, "Emp-F1 above blind floor"] == 0.0
    assert table.loc["perfect", "macro-F1 (%)"] == pytest.approx(100.0)
    assert table.loc["perfect", "TV distance (%)"] == pytest.approx(0.0)
    per_mech = evaluation.per_mechanism_table({"perfect": ours})
    assert per_mech.shape[0] == 3 and (per_mech["kappa"] == 1.0).all()
    assert set(evaluation.floor_systems(gold, 0, prior)) == set(floors)


def test_test_split_evaluations_append_to_the_ledger(tmp_path):
    model, tok, scorer = tiny_policy("prefix"), tiny_tokenizer(), _scorer()
    gen = GeneratorConfig(max_new_tokens=5, max_source_len=16)
    P = get_profile("smoke")
    E = dataclasses.replace(P.evaluation, samples_per_context=2, batch_size=4, bootstrap=10)
    gold = np.zeros((5, 3), dtype=int)
    ledger = evaluation.Ledger.of(tmp_path / "out", P)
    kwargs = dict(seed=0, progress=False, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="ledger"):
        evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, split="test", **kwargs)
    assert not ledger.path.exists()  # refused before anything was sampled or recorded
    evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, split="valid", **kwargs)
    assert not ledger.path.exists()  # the validation split is not recorded
    for _ in range(2):
        evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, split="test", system="A",
                                   ledger=ledger, **kwargs)
    entries = evaluation.read_ledger(ledger.path)
    assert [(e["system"], e["n"], e["m"], e["cached"]) for e in entries] == [("A", 5, 2, True), ("A", 5, 2, True)]
    assert entries[0]["config"] == evaluation.config_fingerprint(P) and len(entries[0]["config"]) == 64
    assert entries[0]["commit"] == evaluation.code_commit() and entries[0]["time"].endswith("+00:00")
    # the validation run above filled the cache: a fresh cache gives a new, uncached touch
    evaluation.evaluate_system(model, tok, _examples(), gold, scorer, gen, E, split="test", system="B", ledger=ledger,
                               seed=0, progress=False, cache_dir=tmp_path / "other")
    assert evaluation.read_ledger(ledger.path)[-1]["cached"] is False
    assert evaluation.config_fingerprint(dataclasses.replace(P, runtime=dataclasses.replace(P.runtime, threads=7))) \
        == evaluation.config_fingerprint(P)  # where it ran is not what it computes
    assert evaluation.config_fingerprint(dataclasses.replace(P, seed=1)) != evaluation.config_fingerprint(P)


def test_levels_files_round_trip_and_merge_evaluators(tmp_path):
    rng = np.random.default_rng(2)
    ids = [f"c{i}" for i in range(4)]
    levels = rng.integers(0, 3, size=(8, 3))  # m = 2 blocks of 4
    path = evaluation.write_levels(tmp_path, "test", "w/o RL", ids, {"reward": levels}, nll=[1.0, 2, 3, 4],
                                   tokens=[2, 2, 2, 2])
    assert path.name == "test_w_o_rl.json.gz"
    raw = evaluation.read_json_gz(path)
    assert raw["m"] == 2 and raw["evaluators"]["reward"]["levels"][1][0] == levels[1].tolist()  # [N][m][3]
    assert raw["evaluators"]["reward"]["levels"][1][1] == levels[5].tolist()
    judged = rng.integers(0, 3, size=(8, 3))
    evaluation.write_levels(tmp_path, "test", "w/o RL", ids, {"judge": judged})
    back = evaluation.read_levels(path)
    assert np.array_equal(back["levels"], levels) and back["nll"] == [1.0, 2, 3, 4]
    assert np.array_equal(evaluation.read_levels(path, "judge")["levels"], judged)
    with pytest.raises(ValueError, match="m blocks|need"):
        evaluation.write_levels(tmp_path, "test", "x", ids, {"reward": levels[:7]})
    gold = rng.integers(0, 3, size=(4, 3))
    evaluation.write_gold_levels(tmp_path, "test", ids, {"reward": gold})
    assert evaluation.read_json_gz(evaluation.gold_levels_path(tmp_path, "test"))["evaluators"]["reward"] == gold.tolist()
    with pytest.raises(FileNotFoundError, match="test_missing"):
        evaluation.read_json_gz(tmp_path / "levels" / "test_missing.json.gz")


def test_describe_run_names_the_model_it_is_given_instead_of_the_profiles_t5():
    P = get_profile("smoke")
    assert "T5" in evaluation.describe_run(P)
    label = evaluation.describe_run(P, model="smollm2 + LoRA r 16")
    assert "| smollm2 + LoRA r 16; identifiers " in label and "T5" not in label
