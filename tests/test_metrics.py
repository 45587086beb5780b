"""Metrics against hand-computed values and sklearn as an independent reference."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from emprl.eval import metrics as M


def test_word_tokenizer_is_documented_behaviour():
    assert M.word_tokenize("That's GREAT, isn't it?!") == ["that's", "great", ",", "isn't", "it", "?", "!"]
    assert M.whitespace_tokenize("That's GREAT, ok") == ["That's", "GREAT,", "ok"]


def test_distinct_n_hand_computed():
    responses = ["I am fine.", "I am sad!"]
    # unigrams: i am fine . | i am sad !  -> 8 total, 6 distinct
    assert M.distinct_n(responses, 1) == pytest.approx(100 * 6 / 8)
    # bigrams: (i am)(am fine)(fine .) | (i am)(am sad)(sad !) -> 6 total, 5 distinct
    assert M.distinct_n(responses, 2) == pytest.approx(100 * 5 / 6)
    # whitespace: I am fine. | I am sad! -> 6 total, 4 distinct
    assert M.distinct_n(responses, 1, tokenizer="whitespace") == pytest.approx(100 * 4 / 6)


def test_distinct_n_is_corpus_level_not_mean_of_responses():
    # per-response distinct would be 100 for each; the corpus has 2 distinct of 4
    assert M.distinct_n(["a b", "a b"], 1) == pytest.approx(50.0)
    assert M.distinct_n(["a", "b"], 2) == 0.0  # no bigrams at all
    with pytest.raises(ValueError, match="tokenizer"):
        M.distinct_n(["a"], 1, tokenizer="bpe")


def test_weighted_f1_hand_computed():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tp 1, |gold| 2, |pred| 2 -> 0.5; class 1: tp 2, 2, 3 -> 0.8; class 2: tp 1, 2, 1 -> 2/3
    expected = (2 * 0.5 + 2 * 0.8 + 2 * (2 / 3)) / 6
    assert M.weighted_f1(gold, pred) == pytest.approx(expected)
    # a class predicted but absent from gold has weight 0 (as sklearn)
    assert M.weighted_f1(np.array([0, 0]), np.array([0, 1])) == pytest.approx(2 / 3)


def test_emp_f1_hand_computed_mean_of_mechanisms():
    g0, p0 = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]  # 0.65556 (above)
    g1 = p1 = [2, 1, 0, 0, 1, 2]  # perfect: 1.0
    g2, p2 = [0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]  # all wrong: 0.0
    gold, pred = np.array([g0, g1, g2]).T, np.array([p0, p1, p2]).T
    expected = 100 * ((2 * 0.5 + 2 * 0.8 + 2 * (2 / 3)) / 6 + 1.0 + 0.0) / 3
    assert M.emp_f1(gold, pred) == pytest.approx(expected)
    assert M.emp_f1_per_mechanism(gold, pred) == pytest.approx([100 * 3.9333333 / 6, 100.0, 0.0], rel=1e-5)


def test_emp_f1_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        gold = rng.integers(0, 3, size=(n, 3))
        pred = np.where(rng.random((n, 3)) < 0.5, gold, rng.integers(0, 3, size=(n, 3)))
        ref = 100 * np.mean([f1_score(gold[:, m], pred[:, m], average="weighted", zero_division=0) for m in range(3)])
        assert M.emp_f1(gold, pred) == pytest.approx(ref)


def test_emp_f1_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        M.emp_f1(np.zeros((4, 2), int), np.zeros((4, 2), int))
    with pytest.raises(ValueError, match="pred levels"):
        M.emp_f1(np.zeros((2, 3), int), np.full((2, 3), 3))


def test_weights_equal_repeating_examples():
    rng = np.random.default_rng(2)
    gold, pred = rng.integers(0, 3, (12, 3)), rng.integers(0, 3, (12, 3))
    responses = [" ".join(rng.choice(list("abcdefg"), size=rng.integers(1, 6))) for _ in range(12)]
    w = rng.integers(0, 3, 12).astype(float)
    rep = np.repeat(np.arange(12), w.astype(int))
    assert M.emp_f1(gold, pred, weights=w) == pytest.approx(M.emp_f1(gold[rep], pred[rep]))
    for n in (1, 2):
        inc = M._NgramIncidence.build(responses, n, "word")
        assert inc.distinct(w) == pytest.approx(M.distinct_n([responses[i] for i in rep], n))


def test_bootstrap_ci_of_a_mean_has_the_textbook_width():
    x = np.random.default_rng(3).normal(size=400)
    ci = M.bootstrap_ci(lambda w: float(w @ x / w.sum()), len(x), n_boot=1000, seed=0)
    assert ci.low < ci.value < ci.high
    # normal theory: 2 * 1.96 * sd / sqrt(n)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * x.std() / 20, rel=0.15)
    again = M.bootstrap_ci(lambda w: float(w @ x / w.sum()), len(x), n_boot=1000, seed=0)
    assert again == ci  # seeded


def _zipf_responses(seed, n=300, vocab=2000):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    return [" ".join(f"w{i}" for i in rng.choice(vocab, size=rng.integers(4, 12), p=p)) for _ in range(n)]


def test_distinct_ci_contains_estimate_where_plain_percentile_does_not():
    responses = _zipf_responses(4)
    ci = M.distinct_n_ci(responses, 1, n_boot=200, seed=0)
    assert ci.low < ci.value < ci.high
    assert ci.value == pytest.approx(M.distinct_n(responses, 1))
    inc = M._NgramIncidence.build(responses, 1, "word")
    plain = M.bootstrap_ci(inc.distinct, len(responses), n_boot=200, seed=0)
    assert plain.high < plain.value  # resampling duplicates responses: biased low, hence the correction


def test_paired_bootstrap_identical_systems_not_significant():
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 3, (200, 3))
    pred = rng.integers(0, 3, (200, 3))
    sys = {"responses": _zipf_responses(6, n=200), "levels": pred}
    for metric in ("dist1", "dist2", "emp_f1"):
        res = M.paired_test(metric, sys, sys, gold=gold, n_boot=200)
        assert res.delta == 0.0 and res.p_value == 1.0


def test_paired_bootstrap_detects_clearly_better_system():
    rng = np.random.default_rng(7)
    gold = rng.integers(0, 3, (200, 3))
    good = np.where(rng.random((200, 3)) < 0.8, gold, rng.integers(0, 3, (200, 3)))
    bad = rng.integers(0, 3, (200, 3))
    a = {"responses": _zipf_responses(8, n=200), "levels": good}
    b = {"responses": ["i am so sorry to hear that ."] * 200, "levels": bad}
    res = M.paired_test("emp_f1", a, b, gold=gold, n_boot=500)
    assert res.delta > 20 and res.low > 0 and res.p_value < 0.01
    res = M.paired_test("dist2", a, b, n_boot=500)
    assert res.delta > 0 and res.p_value < 0.01
    # reversed order: same p, negative difference
    rev = M.paired_test("emp_f1", b, a, gold=gold, n_boot=500)
    assert rev.delta < 0 and rev.p_value < 0.01


def test_paired_bootstrap_equal_quality_noise_not_significant():
    rng = np.random.default_rng(9)
    gold = rng.integers(0, 3, (300, 3))
    noisy = lambda: np.where(rng.random((300, 3)) < 0.5, gold, rng.integers(0, 3, (300, 3)))  # noqa: E731
    res = M.paired_test("emp_f1", {"responses": [""] * 300, "levels": noisy()}, {"responses": [""] * 300, "levels": noisy()}, gold=gold, n_boot=500)
    assert res.p_value > 0.05
    assert res.low < 0 < res.high


def test_evaluate_responses_row():
    rng = np.random.default_rng(10)
    gold = rng.integers(0, 3, (50, 3))
    row = M.evaluate_responses(_zipf_responses(11, n=50), gold, gold, ppl=12.5, n_boot=50)
    assert row["emp_f1"] == pytest.approx(100.0) and row["n_examples"] == 50 and row["ppl"] == 12.5
    assert row["dist1_low"] <= row["dist1"] <= row["dist1_high"]
    with pytest.raises(ValueError, match="responses"):
        M.evaluate_responses(["a"], gold, gold)


def test_comparison_table_layout_paper_block_then_ours():
    from emprl.eval import evaluation
    from emprl.paper_tables import TABLE_II

    rng = np.random.default_rng(12)
    gold = rng.integers(0, 3, (30, 3))
    row = M.evaluate_responses(_zipf_responses(13, n=30), gold, gold, ppl=20.0, n_boot=20)
    table = evaluation.table_ii({"EmpRL": row}, "ours: smoke")
    assert list(table.index) == [*TABLE_II["rows"], "EmpRL"]
    assert list(table.columns[:5]) == ["Block", "PPL", "Dist-1", "Dist-2", "Emp-F1 (%)"]
    assert table.iloc[-1]["Block"] == "ours: smoke" and table.iloc[-1]["n"] == "30" and table.iloc[0]["n"] == "-"
    assert table.loc["CASE", "Emp-F1 (%)"] == 64.72 and np.isnan(table.loc["ChatGPT", "PPL"])
    assert table.iloc[-1]["Emp-F1 (%)"] == pytest.approx(100.0)
    assert table.iloc[-1]["Dist-1 95% CI"] == f"[{row['dist1_low']:.2f}, {row['dist1_high']:.2f}]"


def test_paper_tables_consistent_across_tables():
    from emprl import paper_tables as T

    assert T.TABLE_II["rows"]["EmpRL"] == T.TABLE_V["rows"]["EmpRL"]  # the paper repeats its EmpRL row
    assert all(abs(sum(v) - 100.0) < 1e-6 for v in T.TABLE_IV["rows"].values())  # win + lose + tie
    assert [c["case"] for c in T.TABLE_VI] == [1, 2, 3, 4] and all(len(c["responses"]) == 9 for c in T.TABLE_VI)
    assert T.as_frame(T.TABLE_I).loc["explorations", "Accuracy (%)"] == 94.98


def test_paired_dist_n_interval_contains_the_observed_difference():
    # A repeats itself, B never does: resampling deflates their Dist-2 by different amounts, so
    # uncorrected resampled differences are shifted away from the observed one.
    from emprl.eval.metrics import distinct_n, paired_test

    a = {"responses": ["i am so sorry to hear that"] * 30 + [f"what a day number {i} was" for i in range(30)]}
    b = {"responses": [f"reply {i} has words {i + 1} and {i + 2}" for i in range(60)]}
    t = paired_test("dist2", a, b, n_boot=300, seed=0)
    assert t.delta == pytest.approx(distinct_n(a["responses"], 2) - distinct_n(b["responses"], 2))
    assert t.low <= t.delta <= t.high


def test_cohen_kappa_hand_computed_and_weights_repeat_examples():
    # mechanism 0: gold 0,0,1,2 / pred 0,1,1,2: p_o = 3/4; p_e = sum_c p_gold(c) p_pred(c) = .5*.25 + .25*.5 + .25*.25
    gold = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 2], [2, 0, 0]])
    pred = np.array([[0, 0, 0], [1, 1, 1], [1, 1, 2], [2, 0, 0]])
    p_o, p_e = 0.75, 0.5 * 0.25 + 0.25 * 0.5 + 0.25 * 0.25
    k = M.cohen_kappa(gold, pred)
    assert k[0] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert k[1] == pytest.approx(1.0) and k[2] == pytest.approx(1.0)
    w = np.array([2.0, 1.0, 3.0, 1.0])
    assert M.cohen_kappa(gold, pred, w) == pytest.approx(M.cohen_kappa(np.repeat(gold, [2, 1, 3, 1], axis=0),
                                                                       np.repeat(pred, [2, 1, 3, 1], axis=0)))
    const = np.zeros_like(gold)
    assert M.cohen_kappa(gold, const) == [0.0, 0.0, 0.0]  # a constant predictor agrees at chance only
    assert M.cohen_kappa(const, const) == [0.0, 0.0, 0.0]  # 0/0 (one level on both sides) is reported as 0


def test_all_match_and_floors():
    gold = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 2], [0, 0, 0], [2, 0, 0]])
    pred = np.array([[0, 0, 0], [1, 1, 1], [1, 1, 2], [0, 0, 1], [2, 0, 0]])
    assert M.all_match(gold, pred) == pytest.approx(60.0)
    assert M.all_match(gold, pred, np.array([1, 0, 0, 3, 0.0])) == pytest.approx(25.0)
    const = M.floor_levels(gold, "constant majority")
    assert const.tolist() == [[0, 0, 0]] * 5
    # mechanism 0: gold 0,0,1,0,2 vs all 0: F1 of class 0 = 2*3/(3+5) = 0.75, support 3 -> weighted 0.45
    assert M.weighted_f1(gold[:, 0], const[:, 0]) == pytest.approx(0.45)
    big = np.random.default_rng(0).choice(3, size=(20000, 3), p=[0.6, 0.3, 0.1])
    drawn = M.floor_levels(big, "marginal draws", seed=1)
    assert np.allclose([np.mean(drawn[:, m] == 0) for m in range(3)], 0.6, atol=0.02)
    assert np.array_equal(drawn, M.floor_levels(big, "marginal draws", seed=1))
    assert abs(np.mean(M.cohen_kappa(big, drawn))) < 0.03  # independent of the gold: kappa about 0
    with pytest.raises(ValueError, match="unknown floor"):
        M.floor_levels(gold, "oracle")


def test_m_samples_pool_rows_and_average_dist_over_blocks():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 3, size=(40, 3))
    levels = rng.integers(0, 3, size=(80, 3))  # m = 2 blocks of 40
    responses = _zipf_responses(5, n=80)
    row = M.evaluate_responses(responses, levels, gold, n_boot=30)
    assert row["samples_per_context"] == 2 and row["n_examples"] == 40
    assert row["emp_f1"] == pytest.approx(M.emp_f1(np.vstack([gold, gold]), levels))
    assert row["kappa"] == pytest.approx(np.mean(M.cohen_kappa(np.vstack([gold, gold]), levels)))
    assert row["dist2"] == pytest.approx((M.distinct_n(responses[:40], 2) + M.distinct_n(responses[40:], 2)) / 2)
    assert row["all_match"] == pytest.approx(M.all_match(np.vstack([gold, gold]), levels))
    floor = M.evaluate_responses(None, M.floor_levels(gold, "constant majority"), gold, n_boot=30)
    assert floor["dist1"] is None and floor["kappa"] == 0.0
    with pytest.raises(ValueError, match="m blocks"):
        M.evaluate_responses(responses[:79], levels[:79], gold)


def test_more_samples_per_context_shrink_the_paired_standard_error():
    """Two systems whose levels are noisy copies of the gold: with m = 4 samples per context (resampled with
    their context) the paired difference's standard error is smaller than with one sample."""
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=(400, 3))

    def noisy(m, p):
        rows = np.tile(gold, (m, 1))
        flip = rng.random(rows.shape) < p
        return np.where(flip, rng.integers(0, 3, size=rows.shape), rows)

    se = {}
    for m in (1, 4):
        a, b = {"responses": None, "levels": noisy(m, 0.5)}, {"responses": None, "levels": noisy(m, 0.5)}
        se[m] = M.paired_test("emp_f1", a, b, gold=gold, n_boot=300, seed=1).se
    assert se[4] < 0.7 * se[1]
    mixed = M.paired_test("kappa", {"responses": None, "levels": noisy(4, 0.2)},
                          {"responses": None, "levels": noisy(1, 0.8)}, gold=gold, n_boot=200)
    assert mixed.delta > 0 and mixed.p_value < 0.05  # systems with different m are compared on the same contexts


# --------------------------------------------------------------------------- the blind best floor, agreement


def test_best_blind_distribution_matches_a_brute_force_grid():
    for p in ([0.6, 0.3, 0.1], [0.85, 0.0, 0.15], [0.34, 0.33, 0.33], [0.5937, 0.3252, 0.0811], [1.0, 0.0, 0.0]):
        p = np.asarray(p)
        q = M.best_blind_distribution(p)
        assert q.min() >= 0 and q.sum() == pytest.approx(1.0)
        # independent: a plain loop over a 1/500 grid of the simplex, the formula written out per class
        best = 0.0
        for a in range(501):
            for b in range(501 - a):
                cand = (a / 500, b / 500, (500 - a - b) / 500)
                best = max(best, sum(2 * pj * pj * qj / (pj + qj) for pj, qj in zip(p, cand) if pj + qj > 0))
        assert M.expected_blind_f1(p, q) == pytest.approx(best, abs=2e-5)
        assert M.expected_blind_f1(p, q) >= M.expected_blind_f1(p, p) - 1e-12  # at least the marginal draws


def test_expected_blind_f1_against_a_monte_carlo_with_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.7, 0.25, 0.05])
    gold = rng.choice(3, size=200_000, p=p)
    pred = rng.choice(3, size=200_000, p=q)
    assert f1_score(gold, pred, average="weighted") == pytest.approx(M.expected_blind_f1(p, q), abs=3e-3)


def test_blind_floor_needs_the_training_frequencies_and_draws_from_its_optimum():
    rng = np.random.default_rng(1)
    gold = rng.choice(3, size=(30_000, 3), p=[0.6, 0.3, 0.1])
    with pytest.raises(ValueError, match="prior"):
        M.floor_levels(gold, "blind best")
    prior = M.level_frequencies(gold)
    drawn = M.floor_levels(gold, "blind best", seed=2, prior=prior)
    assert np.array_equal(drawn, M.floor_levels(gold, "blind best", seed=2, prior=prior))
    q = M.best_blind_distribution(prior[0])
    assert np.allclose(np.bincount(drawn[:, 0], minlength=3) / len(drawn), q, atol=0.01)
    expected = 100 * np.mean([M.expected_blind_f1(prior[m], M.best_blind_distribution(prior[m])) for m in range(3)])
    assert M.emp_f1(gold, drawn) == pytest.approx(expected, abs=0.8)
    assert M.emp_f1(gold, drawn) > M.emp_f1(gold, M.floor_levels(gold, "marginal draws", seed=2))
    cube = np.einsum("i,j,k->ijk", *prior).ravel()  # independent mechanisms: the triple prior's marginals
    assert np.allclose(M.triple_marginals(cube), prior)


def test_blind_floor_on_the_committed_offline_data():
    import json

    from emprl import run

    metrics_dir = run.REPO_ROOT / "outputs" / "offline" / "metrics"
    if not (metrics_dir / "best_of_n.json").is_file() or not (metrics_dir / "05_evaluation.json").is_file():
        pytest.skip("no committed offline outputs")
    prior = M.triple_marginals(json.loads((metrics_dir / "best_of_n.json").read_text())["prior_of_level_triples"])
    gold = np.asarray(json.loads((metrics_dir / "05_evaluation.json").read_text())["gold_levels"])
    score = M.emp_f1(gold, M.floor_levels(gold, "blind best", seed=0, prior=prior))
    assert 57.5 <= score <= 59.5


def test_agreement_macro_f1_and_tv_by_hand_and_against_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(4)
    gold = rng.choice(3, size=(500, 3), p=[0.6, 0.3, 0.1])
    pred = rng.choice(3, size=(500, 3), p=[0.5, 0.2, 0.3])
    w = rng.integers(0, 3, size=500).astype(float)
    for m in range(3):
        assert M.macro_f1(gold, pred, w)[m] == pytest.approx(
            100 * f1_score(gold[:, m], pred[:, m], average="macro", labels=[0, 1, 2], sample_weight=w, zero_division=0))
        tv = 50 * np.abs(np.bincount(pred[:, m], w, 3) - np.bincount(gold[:, m], w, 3)).sum() / w.sum()
        assert M.tv_distance(gold, pred, w)[m] == pytest.approx(tv)
    assert M.agreement(M.confusions(gold, pred, w))["kappa"] == pytest.approx(M.cohen_kappa(gold, pred, w))
    assert M.tv_distance(gold, gold) == [0.0, 0.0, 0.0] and M.macro_f1(gold, gold) == [100.0, 100.0, 100.0]


def test_rows_carry_macro_f1_tv_and_per_mechanism_cis():
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 3, size=(60, 3))
    levels = rng.integers(0, 3, size=(120, 3))  # m = 2
    row = M.evaluate_responses(None, levels, gold, n_boot=40)
    pooled = np.vstack([gold, gold])
    assert row["macro_f1"] == pytest.approx(np.mean(M.macro_f1(pooled, levels)))
    assert row["tv"] == pytest.approx(np.mean(M.tv_distance(pooled, levels)))
    for k, key in enumerate(M.MECHANISM_KEYS):
        assert row[f"kappa_{key}_low"] <= row[f"kappa_{key}"] <= row[f"kappa_{key}_high"]
        assert row[f"macro_f1_{key}"] == pytest.approx(M.macro_f1(pooled, levels)[k])
        assert row[f"macro_f1_{key}_low"] <= row[f"macro_f1_{key}_high"]
    assert row["macro_f1_low"] <= row["macro_f1"] <= row["macro_f1_high"]
    paired = M.paired_test("macro_f1", {"responses": None, "levels": np.vstack([gold, gold])},
                           {"responses": None, "levels": levels}, gold=gold, n_boot=40)
    assert paired.delta == pytest.approx(100 - row["macro_f1"])


def _system_with_agreement(gold, share, rng):
    """Levels that equal the gold on about ``share`` of the rows, else a random other level."""
    levels = gold.copy()
    wrong = rng.random(gold.shape) > share
    levels[wrong] = (gold[wrong] + rng.integers(1, 3, size=int(wrong.sum()))) % 3
    return {"responses": None, "levels": levels}


def test_seed_paired_test_with_one_seed_is_the_paired_test():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=(300, 3))
    a, b = _system_with_agreement(gold, 0.7, rng), _system_with_agreement(gold, 0.6, rng)
    for metric in ("emp_f1", "kappa"):
        one = M.seed_paired_test(metric, [a], [b], gold, n_boot=200, seed=3)
        ref = M.paired_test(metric, a, b, gold=gold, n_boot=200, seed=3)
        assert (one.delta, one.low, one.high, one.p_value) == pytest.approx((ref.delta, ref.low, ref.high, ref.p_value))
        assert one.per_seed == (pytest.approx(ref.delta),) and np.isnan(one.seed_sd)


def test_seed_paired_test_carries_the_spread_between_seeds():
    # three seeds of A whose effects over B differ a lot (agreement 0.55, 0.70, 0.85 against B's 0.55) on many
    # contexts: the context bootstrap of one seed is narrow, the interval over seeds must span their spread
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, size=(4000, 3))
    b = _system_with_agreement(gold, 0.55, rng)
    a_runs = [_system_with_agreement(gold, share, rng) for share in (0.55, 0.70, 0.85)]
    test = M.seed_paired_test("emp_f1", a_runs, [b], gold, n_boot=400, seed=0)
    per_seed = [M.paired_test("emp_f1", a, b, gold=gold, n_boot=10).delta for a in a_runs]
    assert test.per_seed == pytest.approx(tuple(per_seed))
    assert test.delta == pytest.approx(np.mean(per_seed)) and test.seed_sd == pytest.approx(np.std(per_seed, ddof=1))
    single = M.paired_test("emp_f1", a_runs[1], b, gold=gold, n_boot=400, seed=0)
    assert single.high - single.low < 3  # one seed: contexts alone, narrow
    assert test.high - test.low > 15  # seeds drawn with replacement: about the range of the seeds' effects
    assert test.low < per_seed[0] + 3 and test.high > per_seed[2] - 3
    with pytest.raises(ValueError, match="3 runs of A need 1 or 3 runs of B"):
        M.seed_paired_test("emp_f1", a_runs, [b, b], gold)
