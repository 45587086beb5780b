"""The RL study's statistics and criteria (emprl.rl.study) against values computed from raw samples by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from emprl.eval import evaluation
from emprl.rl import study
from emprl.eval.metrics import PairedTest
from emprl.profiles import get_profile


def log_from_rewards(rewards: np.ndarray) -> pd.DataFrame:
    """A PPO log as train_ppo writes it: per step the mean and the (unbiased) std of the batch's R_emp."""
    return pd.DataFrame({"step": np.arange(1, len(rewards) + 1), "emp_reward_mean": rewards.mean(1),
                         "emp_reward_std": rewards.std(1, ddof=1)})


@pytest.mark.parametrize("steps, frac", [(20, 0.1), (10, 0.1), (7, 0.2)])
def test_window_stats_equal_the_mean_and_se_of_the_raw_rewards(steps, frac):
    rng = np.random.default_rng(0)
    B = 6
    rewards = rng.uniform(0, 1, (steps, B)) + np.linspace(0, 0.3, steps)[:, None]
    first, last = study.window_stats(log_from_rewards(rewards), frac, batch_size=B)
    k = max(int(steps * frac), 1)
    for w, raw in ((first, rewards[:k].ravel()), (last, rewards[-k:].ravel())):
        assert w.n_steps == k
        assert w.mean == pytest.approx(raw.mean())
        assert w.se == pytest.approx(raw.std(ddof=1) / math.sqrt(raw.size))


def test_window_stats_rejects_too_short_logs():
    with pytest.raises(ValueError, match="at least 2 logged steps"):
        study.window_stats(log_from_rewards(np.ones((1, 4))), 0.1, batch_size=4)


def _paired(delta, p):
    return PairedTest(delta, delta - 1, delta + 1, p)


def test_criteria_by_hand():
    first, last = study.Window(0.10, 0.01, 2), study.Window(0.13, 0.01, 2)  # rise 0.03, SE sqrt(2)*0.01
    good = study.criteria(first, last, _paired(1.5, 0.01), _paired(0.2, 0.5), cand_ppl=110, ref_ppl=100,
                          cand_mean_len=9.0)
    assert good["R_emp rise"] == pytest.approx(0.03) and good["rise SE"] == pytest.approx(math.sqrt(2) * 0.01)
    assert good["meets (a)-(c)"]
    # (a) fails when the rise is under two standard errors: 0.028 < 2 * 0.01414 = 0.0283
    assert not study.criteria(first, study.Window(0.128, 0.01, 2), _paired(1.5, 0.01), _paired(0.2, 0.5),
                              110, 100, 9.0)["(a) R_emp rises"]
    bad = study.criteria(first, last, _paired(1.5, 0.06), _paired(-0.1, 0.5), cand_ppl=126, ref_ppl=100,
                         cand_mean_len=7.9)
    assert bad["(a) R_emp rises"] and not bad["(b) Emp-F1 beats the twin"]
    assert not (bad["(c) length >= 8"] or bad["(c) Dist-2 >= twin"] or bad["(c) PPL <= 1.25x"] or bad["(c) sound"])
    assert not study.criteria(first, last, _paired(-1.0, 0.01), _paired(0.0, 1.0), 125, 100, 8.0)[
        "(b) Emp-F1 beats the twin"]
    assert study.criteria(first, last, _paired(1.0, 0.01), _paired(0.0, 1.0), 125, 100, 8.0)["(c) sound"]


def test_arm_settings_and_selection():
    P = get_profile("smoke")
    cfg = study.arm_settings(P, "repaired, lr 1e-3", steps=3)
    assert cfg.steps == 3 and cfg.lr == 1e-3 and cfg.kl_in_loss and cfg.ratio == "sampler" and cfg.value_detach
    assert cfg.batch_size == P.ppo.batch_size and cfg.beta == P.ppo.beta
    assert study.arm_settings(P, "paper") == P.ppo
    offline = get_profile("offline")
    assert {study.arm_settings(offline, n).lr for n in study.ARMS} >= {1.41e-5, 1e-4, 1e-3}  # the swept prefix lr
    assert len({study.arm_folder(n) for n in study.ARMS}) == len(study.ARMS)
    assert all(" " not in study.arm_folder(n) and "," not in study.arm_folder(n) for n in study.ARMS)
    with pytest.raises(ValueError, match="unknown study arm"):
        study.arm_settings(P, "best")
    table = pd.DataFrame({"Emp-F1 effect": [1.0, 2.0, 0.5], "Emp-F1 effect p": [0.01, 0.2, 0.5],
                          "(c) sound": [True, False, True]}, index=["x", "y", "z"])
    name, why = study.select(table)
    assert name == "x" and "+1.00 points (p = 0.010)" in why  # y has the larger effect but unsound responses
    table["(c) sound"] = False
    assert study.select(table)[0] == "y"


def test_paper_signatures_are_table_v_differences():
    by_name = {s[0]: s[4] for s in evaluation.SIGNATURES}
    assert by_name["EmpRL - w/o RL: Emp-F1"] == pytest.approx(66.40 - 65.90)
    assert by_name["EmpRL - w/o RL: Dist-2"] == pytest.approx(27.71 - 26.09)
    assert by_name["EmpRL / w/o RL: PPL change (%)"] == pytest.approx(100 * (12.87 / 11.99 - 1))
    assert by_name["EmpRL - w/o Empathy Reward: Emp-F1"] == pytest.approx(66.40 - 64.99)
    assert by_name["w/o KL Penalty - EmpRL: Dist-2"] == pytest.approx(7.08 - 27.71)
    assert by_name["w/o KL Penalty / EmpRL: PPL change (%)"] == pytest.approx(100 * (28.71 / 12.87 - 1))


def test_verdicts_four_way_with_boundaries():
    v = lambda paper, low, high: evaluation.verdict(paper, (low + high) / 2, low, high)[0]  # noqa: E731
    assert v(0.5, 0.2, 1.0) == "reproduced"
    assert v(0.5, 2.0, 4.0) == "same sign, larger"
    assert v(0.5, 0.1, 0.3) == "same sign, smaller"
    assert v(0.5, -0.4, 0.7) == "undecided"  # holds 0 and the paper's
    assert v(0.5, -0.2, 0.2) == "undecided"  # holds 0, not the paper's
    assert v(0.5, -1.5, -0.5) == "opposite sign"
    assert v(-20.6, -22.0, -15.0) == "reproduced"
    assert v(-20.6, -18.0, -15.0) == "same sign, smaller"
    assert v(-20.6, -30.0, -25.0) == "same sign, larger"
    assert v(-20.6, 4.2, 4.5) == "opposite sign"
    # boundaries: the CI is closed
    assert v(0.5, 0.0, 1.0) == "undecided"  # an end at 0 contains 0
    assert v(0.5, -1.0, 0.0) == "undecided"
    assert v(0.5, 0.5, 1.0) == "reproduced"  # an end at the paper's value contains it
    assert v(0.5, 0.1, 0.5) == "reproduced"
    assert v(-0.5, -0.5, -0.1) == "reproduced"
    assert v(0.5, 1e-9, 0.4999) == "same sign, smaller"
    assert v(0.5, 0.5001, 1.0) == "same sign, larger"
    assert v(0.0, 0.1, 0.2) == "opposite sign"  # a paper value of 0 has no sign
    assert set(evaluation.VERDICTS) == {"reproduced", "same sign, smaller", "same sign, larger", "undecided",
                                   "opposite sign"}


def test_committed_offline_signatures_carry_the_four_way_verdicts():
    import json

    from emprl import run

    path = run.REPO_ROOT / "outputs" / "offline" / "metrics" / "paper_signatures.json"
    if not path.is_file():
        pytest.skip("no committed offline signatures")
    for s in json.loads(path.read_text())["signatures"]:
        assert s["verdict"] == evaluation.verdict(s["paper"], s["ours"], s["ci_low"], s["ci_high"])[0], s["signature"]


def test_paired_ppl_by_hand_and_signatures_run():
    from emprl.eval import metrics

    nll_a, nll_b, tok = np.array([2.0, 4.0, 6.0]), np.array([1.0, 3.0, 5.0]), np.array([2.0, 2.0, 4.0])
    t = metrics.paired_ppl(nll_a, tok, nll_b, tok, n_boot=50)
    assert t.delta == pytest.approx(math.exp(12 / 8) - math.exp(9 / 8))
    rel = metrics.paired_ppl(nll_a, tok, nll_b, tok, n_boot=50, relative=True)
    assert rel.delta == pytest.approx(100 * (math.exp(12 / 8) / math.exp(9 / 8) - 1))
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=(50, 3))
    systems = {name: {"responses": [f"reply {i} {name} {rng.integers(9)}" for i in range(100)],
                      "levels": rng.integers(0, 3, size=(100, 3)), "nll": rng.uniform(1, 3, 50),
                      "tokens": np.full(50, 3.0)} for name in ("EmpRL", "w/o RL", "w/o Empathy Reward", "w/o KL Penalty")}
    rows = evaluation.signatures(systems, gold, "word", n_boot=30, seed=0)
    assert [r["signature"] for r in rows] == [s[0] for s in evaluation.SIGNATURES]
    assert all(r["ci_low"] <= r["ours"] <= r["ci_high"] or r["verdict"] for r in rows)
    assert {r["verdict"] for r in rows} <= set(evaluation.VERDICTS)
    partial = evaluation.signatures({k: v for k, v in systems.items() if k in ("EmpRL", "w/o RL")}, gold, "word", n_boot=30,
                               seed=0, partial=True)
    assert [r["signature"] for r in partial] == [s[0] for s in evaluation.SIGNATURES if s[1:3] == ("EmpRL", "w/o RL")]
    with pytest.raises(KeyError):
        evaluation.signatures({"EmpRL": systems["EmpRL"]}, gold, "word", n_boot=30, seed=0)


def test_mean_length_counts_tokens():
    assert study.mean_length(["a b c", "d"], tokenizer="word") == pytest.approx(2.0)
