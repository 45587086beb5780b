"""python -m emprl.eval.rebuild: the tables and signatures from committed levels files alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from emprl.eval import evaluation, metrics, rebuild
from emprl.profiles import get_profile


def _write_run(out, n=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"conv{i}" for i in range(n)]
    gold = rng.choice(3, size=(n, 3), p=[0.6, 0.3, 0.1])
    systems = {}
    for k, name in enumerate(("EmpRL", "w/o RL")):
        m = 2
        responses = [f"reply {name} {i % 7} {rng.integers(20)} words here" for i in range(m * n)]
        levels = np.where(rng.random((m * n, 3)) < 0.5 + 0.2 * k, np.tile(gold, (m, 1)), rng.integers(0, 3, (m * n, 3)))
        nll, tokens = rng.uniform(10, 20, n), rng.integers(3, 9, n).astype(float)
        systems[name] = {"responses": responses, "levels": levels, "nll": nll, "tokens": tokens}
    evaluation.write_system_generations(out / "generations", "05_test", ids,
                                        {k: v["responses"] for k, v in systems.items()})
    evaluation.write_evaluation_records(out, "test", ids, gold, systems, stem="05_test")
    prior = metrics.level_frequencies(rng.choice(3, size=(200, 3), p=[0.6, 0.3, 0.1]))
    evaluation.write_train_frequencies(out, "reward", prior, n=200, source="synthetic")
    return gold, systems, prior


def test_rebuild_gives_the_numbers_metrics_computes_directly(tmp_path, capsys):
    gold, systems, prior = _write_run(tmp_path)
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0
    E, seed = get_profile("smoke").evaluation, get_profile("smoke").seed
    table = pd.read_csv(tmp_path / "tables" / "rebuilt_table_ii_reward.csv", index_col=0)
    for name, s in systems.items():
        direct = metrics.evaluate_responses(s["responses"], s["levels"], gold,
                                            ppl=math.exp(s["nll"].sum() / s["tokens"].sum()), tokenizer=E.tokenizer,
                                            n_boot=E.bootstrap, seed=seed, level=E.ci_level)
        row = table[table["Block"].str.startswith("rebuilt")].loc[name]
        for column, key in (("Emp-F1 (%)", "emp_f1"), ("kappa (mean)", "kappa"), ("macro-F1 (%)", "macro_f1"),
                            ("TV distance (%)", "tv"), ("all 3 match (%)", "all_match"), ("Dist-1", "dist1"),
                            ("Dist-2", "dist2"), ("PPL", "ppl")):
            assert float(row[column]) == pytest.approx(direct[key]), column
    blind = metrics.emp_f1(gold, metrics.floor_levels(gold, "blind best", seed, prior=prior))
    assert float(table.loc[metrics.BLIND_FLOOR, "Emp-F1 (%)"]) == pytest.approx(blind)
    row = table[table["Block"].str.startswith("rebuilt")].loc["EmpRL"]
    assert float(row["Emp-F1 above blind floor"]) == pytest.approx(float(row["Emp-F1 (%)"]) - blind)
    sigs = json.loads((tmp_path / "metrics" / "rebuilt_signatures.json").read_text())["signatures"]["reward"]
    assert [s["signature"] for s in sigs] == [s[0] for s in evaluation.SIGNATURES if s[1:3] == ("EmpRL", "w/o RL")]
    direct = metrics.paired_test("emp_f1", systems["EmpRL"], systems["w/o RL"], gold=gold, tokenizer=E.tokenizer,
                                 n_boot=E.bootstrap, seed=seed)
    assert sigs[0]["ours"] == pytest.approx(direct.delta) and sigs[0]["ci_low"] == pytest.approx(direct.low)
    assert (tmp_path / "tables" / "rebuilt_table_v_reward.md").is_file()


def test_a_missing_file_is_a_clear_error_naming_it(tmp_path, capsys):
    _write_run(tmp_path)
    (tmp_path / "generations" / "05_test_w_o_rl_responses.jsonl.gz").unlink()
    with pytest.raises(FileNotFoundError, match="05_test_w_o_rl_responses.jsonl.gz"):
        rebuild.load(tmp_path)
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert "05_test_w_o_rl_responses.jsonl.gz" in capsys.readouterr().err
    (tmp_path / "levels" / "test_gold.json.gz").unlink()
    with pytest.raises(FileNotFoundError, match="test_gold.json.gz"):
        rebuild.load(tmp_path)


def test_a_second_evaluators_gold_is_compared_with_the_first(tmp_path, capsys):
    from sklearn.metrics import cohen_kappa_score

    gold, _, _ = _write_run(tmp_path)
    ids = [f"conv{i}" for i in range(len(gold))]
    judge = gold.copy()
    judge[::3, 0] = (judge[::3, 0] + 1) % 3  # disagrees on a third of the emotional reactions
    evaluation.write_gold_levels(tmp_path, "test", ids, {"judge": judge})  # beside the reward's
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "tables" / "rebuilt_gold_agreement.csv", index_col=[0, 1])
    row = table.loc[("judge vs reward", "emotional_reactions")]
    assert row["Cohen's kappa"] == pytest.approx(cohen_kappa_score(judge[:, 0], gold[:, 0]))
    assert row["agreement (%)"] == pytest.approx(100 * np.mean(judge[:, 0] == gold[:, 0]))
    assert table.loc[("judge vs reward", "interpretations"), "Cohen's kappa"] == pytest.approx(1.0)


def test_every_system_under_both_evaluators_side_by_side(tmp_path, capsys):
    gold, systems, prior = _write_run(tmp_path)
    ids = [f"conv{i}" for i in range(len(gold))]
    rng = np.random.default_rng(5)
    judge_gold = rng.integers(0, 3, size=gold.shape)
    evaluation.write_gold_levels(tmp_path, "test", ids, {"judge": judge_gold})
    judge_levels = {}
    for name in systems:  # m = 2 blocks of N, as the reward's
        judge_levels[name] = rng.integers(0, 3, size=(2 * len(ids), 3))
        evaluation.write_levels(tmp_path, "test", name, ids, {"judge": judge_levels[name]})
    evaluation.write_train_frequencies(tmp_path, "judge", metrics.level_frequencies(judge_gold), n=40,
                                       source="synthetic")
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "tables" / "rebuilt_systems_by_evaluator.csv", index_col=0)
    for name in systems:
        assert table.loc[name, "Emp-F1 (judge)"] == pytest.approx(
            metrics.emp_f1(np.tile(judge_gold, (2, 1)), judge_levels[name]), abs=1e-6)
        assert table.loc[name, "Emp-F1 (reward)"] == pytest.approx(
            metrics.emp_f1(np.tile(gold, (2, 1)), systems[name]["levels"]), abs=1e-6)
        assert table.loc[name, "kappa (judge)"] == pytest.approx(
            np.mean(metrics.cohen_kappa(np.tile(judge_gold, (2, 1)), judge_levels[name])), abs=1e-6)
    blind = table.loc[metrics.BLIND_FLOOR, "Emp-F1 (judge)"]
    above = float(table.loc["EmpRL", "above blind (judge)"])
    assert above == pytest.approx(table.loc["EmpRL", "Emp-F1 (judge)"] - blind, abs=0.01)


def test_effects_are_paired_differences_against_w_o_rl(tmp_path, capsys):
    gold, systems, _ = _write_run(tmp_path)
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "tables" / "rebuilt_effects_reward.csv")
    assert set(table["Comparison"]) == {"EmpRL - w/o RL"}  # no control pair has both systems here
    E = get_profile("smoke").evaluation
    for metric, label in (("emp_f1", "Emp-F1 (%)"), ("kappa", "kappa (mean)")):
        row = table[table["Metric"] == label].iloc[0]
        # the difference computed independently of the paired bootstrap: the two systems' own scores
        direct = {"emp_f1": lambda lv: metrics.emp_f1(np.tile(gold, (2, 1)), lv),
                  "kappa": lambda lv: float(np.mean(metrics.cohen_kappa(np.tile(gold, (2, 1)), lv)))}[metric]
        assert row["Difference"] == pytest.approx(
            direct(systems["EmpRL"]["levels"]) - direct(systems["w/o RL"]["levels"]), abs=1e-9)
        res = metrics.paired_test(metric, systems["EmpRL"], systems["w/o RL"], gold=gold, n_boot=E.bootstrap,
                                  seed=get_profile("smoke").seed)
        assert row["95% CI"] == f"[{res.low:.2f}, {res.high:.2f}]"


def test_gold_levels_of_other_contexts_do_not_replace_the_committed_ones(tmp_path):
    gold, systems, _ = _write_run(tmp_path)
    path = evaluation.gold_levels_path(tmp_path, "test")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"test_gold.*other contexts.*own split name"):
        evaluation.write_gold_levels(tmp_path, "test", ["conv0", "conv1"], {"judge": gold[:2]})
    assert path.read_bytes() == before  # nothing lost
    evaluation.write_gold_levels(tmp_path, "test_first2", ["conv0", "conv1"], {"judge": gold[:2]})  # a subset
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0  # the whole split still rebuilds


def test_notebook_10s_split_is_rebuilt_beside_the_test_split_against_base_and_placebo(tmp_path, capsys):
    gold, _, _ = _write_run(tmp_path)  # the test split's records
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0
    test_tables = {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir()}
    # notebook 10's records: a subset of the test contexts, the LLM before GRPO and three GRPO variants
    rng = np.random.default_rng(3)
    n, m, split = 20, 2, "test_first20"
    ids, sub = [f"conv{i}" for i in range(n)], gold[:n]
    names = ("smollm2 base", "smollm2 GRPO empathy", "smollm2 GRPO chance_corrected", "smollm2 GRPO placebo")
    llm = {name: {"levels": rng.integers(0, 3, size=(m * n, 3)),
                  "responses": [f"{name} reply {rng.integers(9)}" for _ in range(m * n)]} for name in names}
    evaluation.write_system_generations(tmp_path / "generations", "10_test", ids,
                                        {k: v["responses"] for k, v in llm.items()})
    evaluation.write_evaluation_records(tmp_path, split, ids, sub, llm, stem="10_test")
    assert rebuild.main(["--profile", "smoke", "--out", str(tmp_path), "--split", split]) == 0
    # the test split's tables are left as they were; the subset's have names of their own
    assert {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir() if p.name in test_tables} == test_tables
    assert (tmp_path / "metrics" / f"rebuilt_{split}_signatures.json").is_file()
    table = pd.read_csv(tmp_path / "tables" / f"rebuilt_{split}_effects_reward.csv")
    emp = table[table["Metric"] == "Emp-F1 (%)"].set_index("Comparison")["Difference"]
    assert set(emp.index) == {"smollm2 GRPO empathy - smollm2 base", "smollm2 GRPO chance_corrected - smollm2 base",
                              "smollm2 GRPO placebo - smollm2 base", "smollm2 GRPO empathy - smollm2 GRPO placebo",
                              "smollm2 GRPO chance_corrected - smollm2 GRPO placebo"}
    f1 = {k: metrics.emp_f1(np.tile(sub, (m, 1)), v["levels"]) for k, v in llm.items()}  # each system on its own
    assert emp["smollm2 GRPO empathy - smollm2 GRPO placebo"] == pytest.approx(
        f1["smollm2 GRPO empathy"] - f1["smollm2 GRPO placebo"], abs=1e-9)
    assert emp["smollm2 GRPO chance_corrected - smollm2 base"] == pytest.approx(
        f1["smollm2 GRPO chance_corrected"] - f1["smollm2 base"], abs=1e-9)
