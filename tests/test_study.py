"""The RL study's statistics and criteria (emprl.study) against values computed from raw samples by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from emprl import study
from emprl.metrics import PairedTest
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
    good = study.criteria(first, last, _paired(1.5, 0.01), _paired(0.2, 0.5), cand_ppl=110, base_ppl=100,
                          cand_mean_len=9.0)
    assert good["R_emp rise"] == pytest.approx(0.03) and good["rise SE"] == pytest.approx(math.sqrt(2) * 0.01)
    assert good["meets (a)-(c)"]
    # (a) fails when the rise is under two standard errors: 0.028 < 2 * 0.01414 = 0.0283
    assert not study.criteria(first, study.Window(0.128, 0.01, 2), _paired(1.5, 0.01), _paired(0.2, 0.5),
                              110, 100, 9.0)["(a) R_emp rises"]
    bad = study.criteria(first, last, _paired(1.5, 0.06), _paired(-0.1, 0.5), cand_ppl=126, base_ppl=100,
                         cand_mean_len=7.9)
    assert bad["(a) R_emp rises"] and not bad["(b) Emp-F1 beats w/o RL"]
    assert not (bad["(c) length >= 8"] or bad["(c) Dist-2 >= w/o RL"] or bad["(c) PPL <= 1.25x"] or bad["(c) sound"])
    assert not study.criteria(first, last, _paired(-1.0, 0.01), _paired(0.0, 1.0), 125, 100, 8.0)[
        "(b) Emp-F1 beats w/o RL"]
    assert study.criteria(first, last, _paired(1.0, 0.01), _paired(0.0, 1.0), 125, 100, 8.0)["(c) sound"]


def test_config_settings_and_finding():
    P = get_profile("smoke")
    cfg, gen = study.config_settings(P, "authors", steps=3)
    assert cfg.steps == 3 and cfg.adaptive_kl and cfg.batch_size == 32 and gen.length_counts_start_token
    assert gen.max_new_tokens == P.generator.max_new_tokens
    cfg, gen = study.config_settings(P, "same-warp KL", steps=3)
    assert cfg.kl_estimator == "warped" and cfg.lr == P.ppo.lr and not gen.length_counts_start_token
    assert len(study.DEFAULT) >= 6 and set(study.DEFAULT) <= set(study.CONFIGS)
    with pytest.raises(ValueError, match="unknown study configuration"):
        study.config_settings(P, "best")
    table = pd.DataFrame({"R_emp rise": [0.02, -0.01], "Emp-F1 diff": [1.0, 2.0], "Emp-F1 p": [0.01, 0.2],
                          "(a) R_emp rises": [True, False], "(b) Emp-F1 beats w/o RL": [True, False],
                          "(c) sound": [True, True], "meets (a)-(c)": [True, False]}, index=["x", "y"])
    assert study.choose(table) == "x"
    text = study.finding(table, 5)
    assert "1 of 2 raise training R_emp" in text and "y (+2.00 points, p = 0.200)" in text and "x meets (a)-(c)" in text
    table["meets (a)-(c)"] = False
    assert study.choose(table) is None and "No configuration meets (a)-(c)" in study.finding(table, 5)
    assert "does not rise at all under: y" in study.finding(table, 5)


def test_mean_length_counts_tokens():
    assert study.mean_length(["a b c", "d"], tokenizer="word") == pytest.approx(2.0)
