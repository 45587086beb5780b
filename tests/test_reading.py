"""The "Reading the results" text follows the numbers: each condition flips with its input."""

import numpy as np
import pandas as pd

from emprl import reading
from emprl.paper_tables import TABLE_II, TABLE_V


def _log(emp, kl):
    n = len(emp)
    return pd.DataFrame({"step": range(1, n + 1), "emp_reward_mean": emp, "kl": kl})


def test_ppo_says_whether_r_emp_rose_fell_or_stayed():
    flat_kl = [0.0] * 20
    rose = reading.ppo(_log([0.1] * 10 + [0.5] * 10, flat_kl), [0.2, 0.3], [0.4, 0.1], "sampled", 0.2, False)
    assert "PPO raised it: 0.1000 over the first 2 steps, 0.5000 over the last 2" in rose
    fell = reading.ppo(_log([0.5] * 10 + [0.1] * 10, flat_kl), [0.2], [0.2], "sampled", 0.2, False)
    assert "it **fell**" in fell
    noisy = reading.ppo(_log([0.1, 0.3] * 10, flat_kl), [0.2], [0.2], "sampled", 0.2, False)
    assert "no change beyond step-to-step noise" in noisy
    short = reading.ppo(_log([0.1, 0.3, 0.2], [0.0] * 3), [0.2], [0.2], "sampled", 0.2, True)
    assert "no trend to read" in short and short.startswith(reading.SMOKE_CAVEAT)
    # fixed contexts: mean 0.25 -> 0.25, 1 of 2 higher
    assert "went from 0.2500 before RL to 0.2500 after (+0.0000); 1 of 2 responses scored higher" in rose


def test_ppo_explains_a_negative_sampled_kl_only_when_there_is_one():
    emp = [0.2] * 12
    negative = reading.ppo(_log(emp, [0.0, -0.5, 0.3] * 4), [0.1], [0.1], "sampled", 0.2, False)
    assert "negative at 4 of 12 steps (minimum -0.5000)" in negative and "top-k 20" in negative
    positive = reading.ppo(_log(emp, [0.0, 0.5, 0.3] * 4), [0.1], [0.1], "sampled", 0.2, False)
    assert "negative at" not in positive and "stays non-negative here" in positive
    full = reading.ppo(_log(emp, [0.0, 0.5, 0.3] * 4), [0.1], [0.1], "full", 0.2, False)
    assert "exact per-token KL" in full
    # beta x mean KL of the last step (12 // 10 = 1 step): 0.2 * 0.3
    assert "beta x KL = 0.0600" in positive


def _table_i(acc, f1, floor_f1):
    return pd.DataFrame({"identifier": ["emotional_reactions", "interpretations", "explorations"],
                         "n_val": [200, 200, 200], "accuracy (ours)": acc, "weighted F1 (ours)": f1,
                         "majority weighted F1": floor_f1})


def test_identifiers_gap_to_table_i_and_majority_floor():
    text = reading.identifiers(_table_i([87.68, 80.25, 94.98], [87.70, 83.79, 90.0], [50.0, 90.0, 60.0]),
                               "MiniLM", False)
    assert "accuracy 87.7 (paper 87.68, +0.0 points)" in text
    assert "accuracy 80.2 (paper 85.25, -5.0 points)" in text  # 80.25 rounds half to even in f-strings
    assert text.count("**not above** the majority-class floor") == 1  # interpretations: 83.79 <= 90
    # mean gaps: accuracy (0 - 5 + 0) / 3, weighted F1 (0 + 0 - 4.8) / 3
    assert "-1.7 points of accuracy and -1.6 of weighted F1" in text
    assert "one pair moves accuracy by 0.50 points" in text and "not the paper's T5-base" in text


def test_generator_compares_prefix_with_full_and_flags_unconverged_runs():
    ppl = {"full": {"valid PPL": 30.0, "test PPL": 31.0, "steps": 10},
           "prefix": {"valid PPL": 28.0, "test PPL": 29.0, "steps": 10}}
    still = [{"valid_loss": 3.0}, {"valid_loss": None}, {"valid_loss": 2.5}]
    stopped = [{"valid_loss": 2.0}, {"valid_loss": 2.5}]
    text = reading.generator(ppl, {"full": still, "prefix": stopped}, scratch=True, smoke=False)
    assert "lowered test PPL from the full model's 31.00 to 29.00" in text
    assert text.count("still at its lowest") == 1 and text.count("stopped improving") == 1
    ppl["prefix"]["test PPL"] = 40.0
    assert "is not below the fully fine-tuned one's (31.00)" in reading.generator(
        ppl, {"full": still, "prefix": still}, scratch=True, smoke=False)


def _paired(comparisons, deltas, ps):
    """CI: the difference +- 0.5 when p < 0.05 (excludes 0 for |d| >= 1), else +- 2 (includes 0)."""
    rows = [{"Comparison": c, "Metric": m, "Difference": d, "p (paired bootstrap)": p,
             "95% CI": f"[{d - (0.5 if p < 0.05 else 2):.2f}, {d + (0.5 if p < 0.05 else 2):.2f}]"}
            for c in comparisons for (m, d, p) in zip(("Dist-1", "Dist-2", "Emp-F1 (%)"), deltas[c], ps[c])]
    return pd.DataFrame(rows).set_index("Comparison")


def test_evaluation_reads_the_paired_test_and_the_gap_to_table_ii():
    rows = {"EmpRL": {"dist1": 5.0, "dist2": 20.0, "emp_f1": 60.0, "n_examples": 100},
            "w/o RL": {"dist1": 4.0, "dist2": 21.0, "emp_f1": 60.0, "n_examples": 100}}
    paired = _paired(["EmpRL - w/o RL"], {"EmpRL - w/o RL": (1.0, -1.0, 0.0)},
                     {"EmpRL - w/o RL": (0.01, 0.01, 0.9)})
    text = reading.evaluation(rows, paired, TABLE_II, smoke=False)
    assert "Dist-1: EmpRL 5.00 vs w/o RL 4.00; EmpRL is higher (+1.00, 95% CI [0.50, 1.50] excludes 0" in text
    assert "Dist-2: EmpRL 20.00 vs w/o RL 21.00; EmpRL is lower (-1.00" in text
    assert "Emp-F1 (%): EmpRL 60.00 vs w/o RL 60.00; EmpRL is not distinguishable" in text
    # paper EmpRL: Dist-1 4.55, Dist-2 27.71, Emp-F1 66.40
    assert "Dist-1 +0.45, Dist-2 -7.71, Emp-F1 (%) -6.40" in text


def test_ablations_count_agreement_with_the_paper_direction():
    rows = {n: {} for n in ("EmpRL", "w/o KL Penalty")}
    # paper: EmpRL - w/o KL Penalty = +2.91, +20.63, +8.25 (all positive)
    paired = _paired(["EmpRL - w/o KL Penalty"], {"EmpRL - w/o KL Penalty": (1.0, -2.0, 1.0)},
                     {"EmpRL - w/o KL Penalty": (0.01, 0.01, 0.5)})
    text = reading.ablations(rows, paired, TABLE_V, smoke=False)
    assert "1 of 3 paired differences have a 95% CI that excludes 0 and the paper's sign" in text
    assert "paper +2.91" in text


def test_data_names_the_rare_levels():
    counts = pd.DataFrame([[90, 8, 2], [50, 30, 20]], index=["explorations", "interpretations"],
                          columns=["no", "weak", "strong"])
    text = reading.data({"train": 10, "valid": 2, "test": 3}, counts, 12.34, 50.0, smoke=False)
    assert "rarest level is 'strong' explorations (2.0% of pairs)" in text
    assert "Under 5% of the pairs: 'strong' explorations (2.0%)." in text
    assert "10 / 2 / 3 train / valid / test" in text and "12.3 words" in text
    assert reading.rarest_levels(counts, 0.01) == []


def test_case_studies_name_the_best_match():
    agreement = pd.DataFrame({"pairs": [12, 12], "same level as gold (%)": [50.0, 75.0]},
                             index=pd.Index(["ours: EmpRL", "paper: EmpRL"], name="Model"))
    text = reading.case_studies(agreement, smoke=False)
    assert text.startswith("- paper: EmpRL matches the gold response's level most often (75.0% of their")
    assert "ours: EmpRL: 50.0% of 12." in text
    agreement.loc["ours: EmpRL", "same level as gold (%)"] = 75.0
    assert "ours: EmpRL and paper: EmpRL tie in matching" in reading.case_studies(agreement, smoke=False)
    assert np.isfinite(agreement.values).all()


def _study_row(first, last, rise_se, meets, emp_f1_diff=1.0, p=0.01):
    return {"R_emp first 10%": first, "R_emp last 10%": last, "R_emp rise": last - first, "rise SE": rise_se,
            "Emp-F1": 50.0 + emp_f1_diff, "Emp-F1 diff": emp_f1_diff, "Emp-F1 diff 95% CI": "[0.50, 1.50]",
            "Emp-F1 p": p, "mean length": 9.0, "PPL / w/o RL": 1.1, "(a) R_emp rises": last - first > 2 * rise_se,
            "(b) Emp-F1 beats w/o RL": meets, "(c) sound": True, "meets (a)-(c)": meets}


def test_rl_study_reads_trends_negative_kl_and_the_choice():
    from emprl import study

    table = study.study_table({"paper": _study_row(0.2, 0.1, 0.01, False, -1.0, 0.3),
                               "exact KL": _study_row(0.2, 0.3, 0.01, True),
                               "beta 0.05": _study_row(0.2, 0.205, 0.01, False, 0.0, 0.9)})
    logs = {"paper": _log([0.2] * 4, [0.0, -0.3, 0.1, -0.1]), "exact KL": _log([0.2] * 4, [0.0, 0.1, 0.2, 0.3]),
            "beta 0.05": _log([0.2] * 4, [0.0] * 4)}
    estimators = {"paper": "sampled", "exact KL": "full", "beta 0.05": "sampled"}
    base = {"n_examples": 25, "emp_f1": 50.0, "dist2": 20.0, "ppl": 100.0}
    text = reading.rl_study(table, logs, estimators, base, 4, smoke=True)
    assert text.startswith(reading.SMOKE_CAVEAT) and "exact KL meets (a)-(c)" in text
    assert "paper: training R_emp 0.2000 -> 0.1000, **fell**" in text
    assert "exact KL: training R_emp 0.2000 -> 0.3000, rose" in text
    assert "beta 0.05: training R_emp 0.2000 -> 0.2050, no change beyond two standard errors (0.0200)" in text
    assert "(-1.00 against w/o RL, 95% CI [0.50, 1.50], p = 0.300)" in text
    assert "below zero under paper (sampled: 2 of 4 steps, minimum -0.3000)." in text and "a bug" not in text
    logs["exact KL"]["kl"] = [0.0, -0.1, 0.2, 0.3]
    assert "**that is a bug**" in reading.rl_study(table, logs, estimators, base, 4, smoke=False)
    logs = {n: _log([0.2] * 4, [-1e-7, 0.0, 0.0, 0.0]) for n in logs}  # float rounding, not a negative KL
    assert "stayed above -1e-05" in reading.rl_study(table, logs, estimators, base, 4, smoke=False)


def test_playground_names_the_best_reply_matching_levels_and_attention_peak():
    from emprl.playground import AttentionMap, Scores

    # rows: EmpRL, w/o RL, the human reply; mechanisms ER, IP, EX; levels none/weak/strong
    probs = np.array([[[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]],
                      [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]],
                      [[0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1]]])
    gold = probs[-1].argmax(-1)  # strong, none, none
    r_emp = probs[:, np.arange(3), gold].prod(-1)  # 0.7*0.6*0.5, 0.1*0.6*0.5, 0.8*0.9*0.6
    scores = Scores(["EmpRL", "w/o RL", "Gold (human)"], ["a", "b", "c"], probs, gold, r_emp)
    # context words "my" (pieces "my") and "dog" (pieces "do", "##g"); the response's two rows
    amap = AttentionMap("emotional_reactions", ["my", "do", "##g"], ["so", "sad"],
                        np.array([[0.5, 0.25, 0.25], [0.1, 0.45, 0.45]]))
    text = reading.playground(scores, {"emotional_reactions": amap}, "EmpRL", smoke=False)
    assert "at ER strong / IP none / EX none; it scores R_emp 0.4320" in text and "no system's reply scores" in text
    assert "EmpRL's has the highest R_emp (0.2100) and w/o RL's the lowest (0.0300)" in text
    assert "1 of 2 replies get the human reply's level in all three mechanisms (EmpRL)." in text
    # "dog" gets 0.5 and 0.9 down the rows: mean 0.7; uniform over 2 words 0.5
    assert "the most attended context word is 'dog' (mean weight 0.700, against 0.500 if" in text
    scores.r_emp[0] = 0.5  # above the human reply's 0.432
    assert "1 of 2 systems' replies score higher" in reading.playground(scores, {}, "EmpRL", smoke=False)
