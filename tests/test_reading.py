"""The "Reading the results" text follows the numbers: each condition flips with its input."""

import numpy as np
import pandas as pd

from emprl.eval import reading
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


def test_rl_study_reads_the_floor_the_ceiling_the_arms_and_the_test_split():
    from types import SimpleNamespace

    part1 = pd.DataFrame({"emp_f1": [55.0], "kappa": [0.04], "all_match": [18.0]}, index=["w/o RL"])
    floors = {"floor: constant majority": {"emp_f1": 55.5, "kappa": 0.0, "all_match": 21.0}}
    bon = pd.DataFrame([
        {"n": 16, "rule": "oracle", "Emp-F1 diff": 6.0, "Emp-F1 diff CI": "[5.00, 7.00]", "Emp-F1 p": 0.002,
         "kappa diff": 0.2},
        {"n": 16, "rule": "expected", "Emp-F1 diff": -1.5, "Emp-F1 diff CI": "[-2.50, -0.50]", "Emp-F1 p": 0.004,
         "kappa diff": -0.01},
        {"n": 16, "rule": "first", "Emp-F1 diff": 0.0, "Emp-F1 diff CI": "-", "Emp-F1 p": 1.0, "kappa diff": 0.0},
    ]).set_index(["n", "rule"])
    rs = pd.DataFrame([{"keep": "best", "round": 1, "kept R_emp": 0.3}, {"keep": "random", "round": 1, "kept R_emp": 0.15}])
    val = {"RS, keep best": {"row": {"emp_f1": 54.0}}, "RS, keep random": {"row": {"emp_f1": 55.1}}}
    arms = pd.DataFrame([{"R_emp first 10%": 0.13, "R_emp last 10%": 0.2, "(a) R_emp rises": True,
                          "Emp-F1 effect": -0.8, "Emp-F1 effect CI": "[-1.50, -0.10]", "Emp-F1 effect p": 0.03,
                          "Emp-F1 twin": 54.2, "Emp-F1 vs w/o RL": -1.6,
                          "PPL / twin": 1.1, "explained var (last 10%)": 0.35, "meets (a)-(c)": False}],
                        index=pd.Index(["paper, lr 1e-3"], name="arm"))
    test = {"w/o RL": {"n_examples": 5257, "samples_per_context": 4}}
    comps = ["A - A twin", "A - w/o RL", "RS, keep best - w/o RL", "RS, keep best - RS, keep random"]
    paired = pd.DataFrame([{"Comparison": c, "Metric": "Emp-F1 (%)", "Difference": -0.3, "95% CI": "[-0.60, 0.00]",
                            "SE": 0.15, "p (paired bootstrap)": 0.06} for c in comps]).set_index("Comparison")
    S = SimpleNamespace(rs_rounds=1, rs_samples=8, rs_contexts=4000, long_steps=1600)
    text = reading.rl_study(part1, floors, bon, rs, val, arms, "paper, lr 1e-3", "largest effect", test, paired,
                            ("A", "A twin"), [{"verdict": "undecided"}, {"verdict": "same sign, smaller"}], S, smoke=False)
    assert "the model without RL 55.00 (-0.50 points above it)" in text
    assert "(the oracle) changes Emp-F1 by +6.00 (95% CI [5.00, 7.00], p = 0.002)" in text
    assert "**lowers** Emp-F1" in text and "learning the context-to-level mapping" in text  # oracle up, expected down
    assert "paper, lr 1e-3: R_emp 0.130 -> 0.200 (rose); Emp-F1 effect over its twin -0.80" in text
    assert "p = 0.030); against w/o RL -1.60, its twin -0.80 (an effect" in text  # twin 54.2 - w/o RL 55.0
    assert "critic explains 0.35" in text and "**paper, lr 1e-3** (largest effect)" in text
    assert "A minus its twin -0.30 (95% CI [-0.60, 0.00], SE 0.15, p = 0.060)" in text
    assert "1 same sign, smaller; 1 undecided (of 2)" in text
    bon.loc[(16, "expected"), ["Emp-F1 diff", "Emp-F1 p"]] = [1.0, 0.01]
    assert "even without the gold levels" in reading.rl_study(part1, floors, bon, rs, val, arms, "x", "y", test, paired,
                                                               ("A", "A twin"), [], S, smoke=False)


def test_playground_names_the_best_reply_matching_levels_and_attention_peak():
    from emprl.ops import playground
    from emprl.ops.playground import AttentionMap, Scores

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
    text = playground.reading(scores, {"emotional_reactions": amap}, "EmpRL", smoke=False)
    assert "at ER strong / IP none / EX none; it scores R_emp 0.4320" in text and "no system's reply scores" in text
    assert "EmpRL's has the highest R_emp (0.2100) and w/o RL's the lowest (0.0300)" in text
    assert "1 of 2 replies get the human reply's level in all three mechanisms (EmpRL)." in text
    # "dog" gets 0.5 and 0.9 down the rows: mean 0.7; uniform over 2 words 0.5
    assert "the most attended context word is 'dog' (mean weight 0.700, against 0.500 if" in text
    scores.r_emp[0] = 0.5  # above the human reply's 0.432
    assert "1 of 2 systems' replies score higher" in playground.reading(scores, {}, "EmpRL", smoke=False)


def test_evaluation_and_ablations_read_the_floor_signatures_and_the_no_kl_ppl():
    rows = {"EmpRL": {"dist1": 5.0, "dist2": 20.0, "emp_f1": 57.2, "n_examples": 100, "samples_per_context": 4,
                      "kappa": 0.04, "kappa_low": 0.03, "kappa_high": 0.05},
            "w/o RL": {"dist1": 4.0, "dist2": 21.0, "emp_f1": 57.1, "n_examples": 100, "samples_per_context": 4,
                       "kappa": 0.035, "kappa_low": 0.02, "kappa_high": 0.05}}
    floors = {"floor: constant majority": {"emp_f1": 56.45, "all_match": 21.0}}
    paired = _paired(["EmpRL - w/o RL"], {"EmpRL - w/o RL": (1.0, -1.0, 0.1)}, {"EmpRL - w/o RL": (0.01, 0.01, 0.7)})
    paired["SE"] = 0.18
    text = reading.evaluation(rows, paired, TABLE_II, smoke=False, floors=floors)
    assert "scores Emp-F1 56.45" in text and "Emp-F1 above it: EmpRL +0.75, w/o RL +0.65 points" in text
    assert "EmpRL 0.040 [0.030, 0.050]" in text and "standard error of the Emp-F1 difference: 0.18" in text
    assert "100 test contexts with 4 sampled response(s)" in text
    floors["floor: blind best (training frequencies)"] = {"emp_f1": 58.5, "emp_f1_low": 57.8, "emp_f1_high": 59.2}
    for r in rows.values():
        r.update(macro_f1=34.0, tv=8.5)
    text = reading.evaluation(rows, paired, TABLE_II, smoke=False, floors=floors)
    assert "scores Emp-F1 58.50 [57.80, 59.20]. Emp-F1 above it: EmpRL -1.30, w/o RL -1.40 points" in text
    assert "EmpRL 34.00 and 8.50, w/o RL 34.00 and 8.50" in text
    sig = [{"signature": "EmpRL - w/o RL: Emp-F1", "paper": 0.5, "ours": 0.1, "ci_low": -0.3, "ci_high": 0.5,
            "verdict": "undecided"}]
    no_kl = pd.DataFrame({"step": [0, 200, 400], "valid PPL": [46.0, 48.0, 50.0]})
    text = reading.ablations({"EmpRL": {}, "w/o RL": {}}, paired, TABLE_V, smoke=False, signatures=sig, no_kl_ppl=no_kl)
    assert "1 undecided (of 1)" in text and "ours +0.10 [-0.30, 0.50], **undecided**" in text
    assert "46.00 at step 0, 50.00 at step 400 (least-squares slope +10.00 per 1,000 steps)" in text
