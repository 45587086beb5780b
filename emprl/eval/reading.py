""""Reading the results": each notebook's closing text, built from the numbers it has just measured.

One function per stage returns Markdown. The comparisons and caveats are conditions on the measured
values (did PPO raise R_emp, did the KL estimate go negative, how far Table I is from the paper's), so
the text changes when the numbers do. The paper's numbers come from ``emprl.paper_tables``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from emprl.eval.evaluation import VERDICTS
from emprl.eval.metrics import BLIND_FLOOR
from emprl.paper_tables import TABLE_I

VERDICT_RULE = ("reproduced: the 95% CI excludes 0 and contains the paper's value; same sign, smaller or larger: "
                "it excludes 0 and the paper's value; undecided: it contains 0; opposite sign: it excludes 0 on the "
                "other side")

SMOKE_CAVEAT = ("**Smoke profile:** a tiny model trained for seconds on an invented sample; the text below "
                "describes these numbers and shows that the pipeline runs, not anything about EmpRL.")
PAPER_PPO_STEPS = 24_000  # paper IV-B


def bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) + "\n"


def head(smoke: bool) -> list[str]:
    return [SMOKE_CAVEAT, ""] if smoke else []


def _signed(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}f}"


def rarest_levels(level_counts: pd.DataFrame, threshold: float = 0.05) -> list[tuple[str, str, float]]:
    """(mechanism, level, share) of the cells of a mechanism x level count table under ``threshold``."""
    shares = level_counts.div(level_counts.sum(axis=1), axis=0)
    return [(m, lvl, float(shares.loc[m, lvl])) for m in shares.index for lvl in shares.columns
            if shares.loc[m, lvl] < threshold]


def data(examples: dict[str, int], level_counts: pd.DataFrame, mean_response_words: float,
         mean_context_words: float, smoke: bool) -> str:
    """01: sizes, response and context lengths, and the EPITOME levels the identifiers will find hard."""
    lines = [f"EmpatheticDialogues gives {examples['train']:,} / {examples['valid']:,} / {examples['test']:,} "
             f"train / valid / test examples (listener turns). A human response has {mean_response_words:.1f} "
             f"words on average, its context {mean_context_words:.1f}."]
    n_pairs = int(level_counts.iloc[0].sum())
    rare = rarest_levels(level_counts)
    shares = level_counts.div(level_counts.sum(axis=1), axis=0)
    m, lvl = shares.stack().idxmin()
    lines.append(f"EPITOME has {n_pairs:,} labelled pairs; its rarest level is '{lvl}' {m} "
                 f"({shares.loc[m, lvl]:.1%} of pairs).")
    if rare:
        cells = ", ".join(f"'{lvl}' {m} ({s:.1%})" for m, lvl, s in rare)
        lines.append(f"Under 5% of the pairs: {cells}. An identifier sees few examples of these levels, so its "
                     "weighted F1 (notebook 02) rests mostly on the frequent levels, and Emp-F1 inherits that.")
    else:
        lines.append("No level is under 5% of the pairs in any mechanism.")
    return "\n".join(head(smoke)) + bullets(lines)


def identifiers(table: pd.DataFrame, encoder: str, smoke: bool) -> str:
    """02: Table I against the paper's, and against the majority-class floor.

    ``table``: ``identifiers.table_i`` (identifier, n_val, accuracy/weighted F1 ours, majority floor)."""
    lines = []
    gaps_acc, gaps_f1 = [], []
    for _, row in table.iterrows():
        m = row["identifier"]
        paper_acc, paper_f1 = TABLE_I["rows"][m]
        acc, f1 = float(row["accuracy (ours)"]), float(row["weighted F1 (ours)"])
        gaps_acc.append(acc - paper_acc)
        gaps_f1.append(f1 - paper_f1)
        floor = float(row["majority weighted F1"])
        verdict = (f"above the majority-class floor ({floor:.1f})" if f1 > floor else
                   f"**not above** the majority-class floor ({floor:.1f}): it has learned little beyond the "
                   "most frequent level")
        lines.append(f"{m}: accuracy {acc:.1f} (paper {paper_acc:.2f}, {_signed(acc - paper_acc, 1)} points), "
                     f"weighted F1 {f1:.1f} (paper {paper_f1:.2f}, {_signed(f1 - paper_f1, 1)}); {verdict}.")
    lines.append(f"On average ours are {_signed(float(np.mean(gaps_acc)), 1)} points of accuracy and "
                 f"{_signed(float(np.mean(gaps_f1)), 1)} of weighted F1 from the paper's Table I.")
    n_val = int(table["n_val"].min())
    lines.append(f"Limits: {n_val} validation pairs per identifier, so one pair moves accuracy by "
                 f"{100 / n_val:.2f} points and the rare levels rest on a handful of pairs; the encoder is "
                 f"{encoder}" + (" as in the paper." if encoder == "t5-base" else
                                  ", not the paper's T5-base, and the split is ours (the paper's is not "
                                  "published)."))
    return "\n".join(head(smoke)) + bullets(lines)


def _still_improving(history: list[dict]) -> bool:
    evals = [h["valid_loss"] for h in history if h.get("valid_loss") is not None]
    return len(evals) >= 2 and evals[-1] <= min(evals)


def generator(ppl: dict[str, dict], histories: dict[str, list[dict]], scratch: bool, smoke: bool) -> str:
    """03: the two generators' perplexities and whether training had converged.

    ``ppl``: run name ("full", "prefix") -> {"valid PPL", "test PPL", "steps"}."""
    lines = []
    for name, row in ppl.items():
        state = ("its validation loss was still at its lowest at the last evaluation, so more steps would "
                 "likely lower it" if _still_improving(histories[name]) else
                 "its validation loss had stopped improving (early stopping keeps the best evaluation)")
        lines.append(f"{name} tuning: test PPL {row['test PPL']:.2f} (valid {row['valid PPL']:.2f}) after "
                     f"{row['steps']} steps; {state}.")
    if {"full", "prefix"} <= set(ppl):
        full, prefix = ppl["full"]["test PPL"], ppl["prefix"]["test PPL"]
        if prefix < full:
            lines.append(f"The prefix lowered test PPL from the full model's {full:.2f} to {prefix:.2f}"
                         + (": the prefix adapted the frozen model it was tuned on." if scratch else "."))
        else:
            lines.append(f"The prefix-tuned model's test PPL ({prefix:.2f}) is not below the fully fine-tuned "
                         f"one's ({full:.2f})" + (": the prefix did not improve on the frozen model it starts "
                                                 "from." if scratch else "; in the paper, too, prefix-tuning "
                                                 "trades a little PPL (11.99 vs 12.17, Table V)."))
    lines.append("Limits: token-level PPL with this generator's own tokenizer, so it is not comparable with the "
                 "paper's T5-base numbers" + ("; the T5 is trained from scratch, not pretrained." if scratch
                                              else "."))
    return "\n".join(head(smoke)) + bullets(lines)


def _steps(k: int) -> str:
    return "step" if k == 1 else f"{k} steps"


def _window_change(values: pd.Series) -> tuple[float, float, float]:
    """Mean of the first and last 10% of steps and two standard errors of their difference."""
    k = max(len(values) // 10, 1)
    first, last = values.head(k), values.tail(k)
    se = math.sqrt((first.var(ddof=1) if k > 1 else 0.0) / k + (last.var(ddof=1) if k > 1 else 0.0) / k)
    return float(first.mean()), float(last.mean()), 2 * se


def ppo(log: pd.DataFrame, r_before, r_after, kl_estimator: str, beta: float, smoke: bool) -> str:
    """04: did PPO raise R_emp, what the KL panel shows and why it can be negative."""
    r_before, r_after = np.asarray(r_before, dtype=float), np.asarray(r_after, dtype=float)
    lines = []
    start, end, noise = _window_change(log["emp_reward_mean"])
    k = max(len(log) // 10, 1)
    if len(log) < 10:
        verdict = (f"with {len(log)} steps there is no trend to read (first step {start:.4f}, last {end:.4f})")
    elif end - start > noise:
        verdict = f"PPO raised it: {start:.4f} over the first {_steps(k)}, {end:.4f} over the last {k}"
    elif start - end > noise:
        verdict = f"it **fell**: {start:.4f} over the first {_steps(k)}, {end:.4f} over the last {k}"
    else:
        verdict = (f"no change beyond step-to-step noise: {start:.4f} over the first {_steps(k)}, {end:.4f} over "
                   f"the last {k} (two standard errors {noise:.4f})")
    lines.append(f"R_emp, the batch mean of the empathy reward (Eq. 5): {verdict}.")
    diff = float(r_after.mean() - r_before.mean())
    lines.append(f"On the {len(r_before)} fixed validation contexts, mean R_emp went from {r_before.mean():.4f} "
                 f"before RL to {r_after.mean():.4f} after ({_signed(diff, 4)}); "
                 f"{int((r_after > r_before).sum())} of {len(r_before)} responses scored higher. So few contexts "
                 "and one sample each make this an illustration, not a test (notebook 05 tests on the test split).")
    kl = log["kl"]
    negative = int((kl < 0).sum())
    kl_line = (f"The KL panel (per response, summed over tokens) starts at {kl.iloc[0]:.4f} (the policy starts "
               f"as the reference) and ends at {kl.iloc[-1]:.4f}; its mean over the last {_steps(k)} is "
               f"{kl.tail(k).mean():.4f}, a penalty beta x KL = {beta * kl.tail(k).mean():.4f} against R_emp "
               f"of at most 1.")
    lines.append(kl_line)
    if kl_estimator == "sampled" and negative:
        lines.append(f"It is negative at {negative} of {len(log)} steps (minimum {kl.min():.4f}). That is not "
                     "a bug: the panel is the sampled estimate sum_t log pi(y_t|s_t) - log rho(y_t|s_t) of Eq. 6, "
                     "whose mean is KL(pi || rho) only for responses drawn from pi itself. Here they are drawn "
                     "with top-k 20 and temperature 0.9 (the paper's decoding), which over-draw the policy's most "
                     "likely tokens; where PPO has moved probability away from those tokens, log pi < log rho on "
                     "exactly the tokens that get drawn, and the estimate averages below zero. The true KL is "
                     "never negative; "
                     "`PPOConfig.kl_estimator=\"full\"` uses the exact per-token KL over the vocabulary.")
    elif kl_estimator == "sampled":
        lines.append("It stays non-negative here, though as a sampled estimate under top-k/temperature "
                     "decoding (Eq. 6, as trl) it can go below zero; the true KL cannot.")
    else:
        lines.append(f"The estimator is `{kl_estimator}`: the exact per-token KL over the vocabulary, "
                     "never negative.")
    lines.append(f"Limits: {len(log)} PPO steps against the paper's {PAPER_PPO_STEPS:,}; R_emp is judged by our "
                 "identifiers (notebook 02), whose errors the policy can learn to exploit.")
    return "\n".join(head(smoke)) + bullets(lines)


_METRICS = (("dist1", "Dist-1"), ("dist2", "Dist-2"), ("emp_f1", "Emp-F1 (%)"))


def _paired_line(paired: pd.DataFrame, comparison: str, label: str) -> tuple[float, bool, str]:
    """(difference, whether its 95% CI excludes 0, the sentence) for one row of ``evaluation.paired_tests``."""
    row = paired.loc[[comparison]]
    row = row[row["Metric"] == label].iloc[0]
    delta, p = float(row["Difference"]), float(row["p (paired bootstrap)"])
    low, high = (float(v) for v in str(row["95% CI"]).strip("[]").split(","))
    if low > 0 or high < 0:
        word = "higher" if delta > 0 else "lower"
        return delta, True, f"{word} ({_signed(delta)}, 95% CI {row['95% CI']} excludes 0, p = {p:.3f})"
    return delta, False, f"not distinguishable ({_signed(delta)}, 95% CI {row['95% CI']}, p = {p:.2f})"


def _floor_lines(rows: dict[str, dict], floors: dict[str, dict] | None) -> list[str]:
    """How far each system sits above the constant and the blind best floors, and its agreement beyond Emp-F1."""
    if not floors or "floor: constant majority" not in floors:
        return []
    const = floors["floor: constant majority"]
    above = ", ".join(f"{n} {_signed(r['emp_f1'] - const['emp_f1'])}" for n, r in rows.items())
    lines = [f"The floor: predicting the most frequent gold level of every mechanism for every response scores "
             f"Emp-F1 {const['emp_f1']:.2f} (kappa 0, all three levels right on {const['all_match']:.1f}% of "
             f"contexts). Emp-F1 above it: {above} points."]
    blind = floors.get(BLIND_FLOOR)
    if blind is not None:
        above = ", ".join(f"{n} {_signed(r['emp_f1'] - blind['emp_f1'])}" for n, r in rows.items())
        lines.append(f"The blind best floor, which reads neither context nor response and draws levels from the "
                     f"distribution that maximises the expected weighted F1 under the training split's level "
                     f"frequencies, scores Emp-F1 {blind['emp_f1']:.2f} [{blind['emp_f1_low']:.2f}, "
                     f"{blind['emp_f1_high']:.2f}]. Emp-F1 above it: {above} points; a system below it has not shown "
                     "on Emp-F1 that it reads the context at all.")
    if all("kappa" in r for r in rows.values()):
        kappas = ", ".join(f"{n} {r['kappa']:.3f} [{r['kappa_low']:.3f}, {r['kappa_high']:.3f}]"
                           for n, r in rows.items())
        lines.append(f"Chance-corrected agreement with the gold levels (Cohen's kappa, mean of the three "
                     f"mechanisms; 0 is chance, 1 perfect): {kappas}.")
    if all("macro_f1" in r for r in rows.values()):
        parts = ", ".join(f"{n} {r['macro_f1']:.2f} and {r['tv']:.2f}" for n, r in rows.items())
        lines.append(f"Macro-F1 (%, every level counts alike) and the total variation distance (%) of the predicted "
                     f"level distribution from the gold one, mean of the mechanisms: {parts}.")
    return lines


def verdict_counts(signatures: list[dict]) -> str:
    """"n verdict; ... of N" in ``evaluation.VERDICTS`` order (verdicts that do not occur left out)."""
    counts = pd.Series([s["verdict"] for s in signatures]).value_counts()
    order = [v for v in VERDICTS if v in counts] + [v for v in counts.index if v not in VERDICTS]
    return "; ".join(f"{int(counts[v])} {v}" for v in order) + f" (of {len(signatures)})"


def _se_line(paired: pd.DataFrame, comparison: str) -> str:
    if "SE" not in paired.columns:
        return ""
    row = paired.loc[[comparison]]
    row = row[row["Metric"] == "Emp-F1 (%)"]
    return f" (standard error of the Emp-F1 difference: {float(row['SE'].iloc[0]):.2f} points)" if len(row) else ""


def evaluation(rows: dict[str, dict], paired: pd.DataFrame, paper: dict, smoke: bool,
               floors: dict[str, dict] | None = None) -> str:
    """05: EmpRL against the generator without RL (paired bootstrap), both against the floor and the paper."""
    lines = []
    for key, label in _METRICS:
        _, _, text = _paired_line(paired, "EmpRL - w/o RL", label)
        lines.append(f"{label}: EmpRL {rows['EmpRL'][key]:.2f} vs w/o RL {rows['w/o RL'][key]:.2f}; "
                     f"EmpRL is {text}" + (_se_line(paired, "EmpRL - w/o RL") if key == "emp_f1" else "") + ".")
    lines += _floor_lines(rows, floors)
    reported = dict(zip(paper["columns"], paper["rows"]["EmpRL"]))
    gaps = ", ".join(f"{label} {_signed(rows['EmpRL'][key] - reported[label])}" for key, label in _METRICS)
    lines.append(f"Distance of our EmpRL from the paper's (Table II): {gaps}.")
    n, m = rows["EmpRL"]["n_examples"], rows["EmpRL"].get("samples_per_context", 1)
    lines.append(f"Limits: {n:,} test contexts with {m} sampled response(s) each; Dist-n depends on the tokenizer "
                 "(ours is named in the table; the paper does not say) and on how many responses are pooled, so "
                 "it compares systems on the same examples only; Emp-F1 is measured by our identifiers; PPL "
                 "uses our tokenizer and is not comparable with the paper's.")
    return "\n".join(head(smoke)) + bullets(lines)


def ablations(rows: dict[str, dict], paired: pd.DataFrame, paper: dict, smoke: bool,
              floors: dict[str, dict] | None = None, signatures: list[dict] | None = None,
              no_kl_ppl: pd.DataFrame | None = None) -> str:
    """06: each ablation against EmpRL, whether the paper's direction is reproduced, the floor, the verdict on
    each of the paper's signatures, and how w/o KL's PPL moved with its steps."""
    reported = {n: dict(zip(paper["columns"], v)) for n, v in paper["rows"].items()}
    lines, agree, total = [], 0, 0
    for name in rows:
        if name == "EmpRL":
            continue
        parts = []
        for key, label in _METRICS:
            delta, significant, text = _paired_line(paired, f"EmpRL - {name}", label)
            paper_delta = reported["EmpRL"][label] - reported[name][label]
            same = significant and np.sign(delta) == np.sign(paper_delta)
            agree, total = agree + int(same), total + 1
            parts.append(f"{label} {text}; paper {_signed(paper_delta)}")
        lines.append(f"EmpRL minus {name}: " + "; ".join(parts) + ".")
    lines.append(f"{agree} of {total} paired differences have a 95% CI that excludes 0 and the paper's sign.")
    lines += _floor_lines(rows, floors)
    if signatures:
        lines.append("The paper's signatures (metrics/paper_signatures.json; " + VERDICT_RULE + "): "
                     + verdict_counts(signatures) + ". " + "; ".join(
            f"{s['signature']}: paper {_signed(s['paper'])}, ours {_signed(s['ours'])} [{s['ci_low']:.2f}, "
            f"{s['ci_high']:.2f}], **{s['verdict']}**" for s in signatures) + ".")
    if no_kl_ppl is not None and len(no_kl_ppl) > 1:
        first, last = no_kl_ppl.iloc[0], no_kl_ppl.iloc[-1]
        slope = np.polyfit(no_kl_ppl["step"], no_kl_ppl["valid PPL"], 1)[0]
        lines.append(f"w/o KL penalty, validation PPL by PPO step: {first['valid PPL']:.2f} at step "
                     f"{int(first['step'])}, {last['valid PPL']:.2f} at step {int(last['step'])} (least-squares "
                     f"slope {_signed(1000 * slope)} per 1,000 steps); the paper's footnote 4 says PPL grows with "
                     "the steps without the KL term.")
    lines.append("Limits: one training run (seed) per variant, so the paired tests measure the test sample's "
                 "noise, not the spread between training runs; the identifiers that give R_emp also measure "
                 "Emp-F1.")
    return "\n".join(head(smoke)) + bullets(lines)


def case_studies(agreement: pd.DataFrame, smoke: bool) -> str:
    """07: which responses' identifier levels match the gold response's most often."""
    col = "same level as gold (%)"
    top = agreement[col].max()
    best = [str(n) for n in agreement.index[agreement[col] == top]]
    lines = [f"{' and '.join(best)} {'matches' if len(best) == 1 else 'tie in matching'} the gold response's level "
             f"most often ({top:.1f}% of their (case, mechanism) pairs)."]
    lines += [f"{name}: {row[col]:.1f}% of {int(row['pairs'])}." for name, row in agreement.iterrows()
              if row[col] != top]
    lines.append("Limits: a handful of contexts and one sample each; the levels are our identifiers' judgement, "
                 "so this shows what the responses look like, not which system is better (notebook 05 tests that).")
    return "\n".join(head(smoke)) + bullets(lines)


def _test_line(paired: pd.DataFrame, comparison: str) -> str:
    """The Emp-F1 difference of ``comparison`` with its CI and p-value."""
    row = paired.loc[[comparison]]
    row = row[row["Metric"] == "Emp-F1 (%)"].iloc[0]
    se = f", SE {float(row['SE']):.2f}" if "SE" in row else ""
    return f"{_signed(float(row['Difference']))} (95% CI {row['95% CI']}{se}, p = {float(row['p (paired bootstrap)']):.3f})"


def rl_study(part1: pd.DataFrame, floors: dict, bon: pd.DataFrame, rs_rounds: pd.DataFrame, val: dict, arms: pd.DataFrame,
             selected: str, why: str, test: dict, paired_test: pd.DataFrame, long_labels: tuple[str, str],
             signatures: list[dict], S, smoke: bool) -> str:
    """08: the floors, what best-of-n says the reward can buy, rejection sampling, the arms against their twins,
    the selected arm's long run and the test split, and the signatures' verdicts. Every number comes from the
    notebook's tables: ``part1`` (validation rows), ``floors`` (validation floor rows), ``bon``
    (``best_of_n.curve``), ``rs_rounds``, ``val`` (validation evaluations), ``arms`` (the arms table),
    ``test``/``paired_test`` (the test split), ``long_labels`` (the long arm's and its twin's names)."""
    const = floors["floor: constant majority"]
    base = part1.loc["w/o RL"]
    lines = [f"Floors (validation): the constant majority level scores Emp-F1 {const['emp_f1']:.2f}, the model without RL "
             f"{base['emp_f1']:.2f} ({_signed(base['emp_f1'] - const['emp_f1'])} points above it); its kappa is "
             f"{base['kappa']:.3f} and all three levels match on {base['all_match']:.1f}% of contexts "
             f"(constant: {const['all_match']:.1f}%)."]
    if BLIND_FLOOR in floors:
        blind = floors[BLIND_FLOOR]
        lines.append(f"The blind best floor (levels drawn, reading nothing, from the distribution that maximises the "
                     f"expected weighted F1 under the training split's level frequencies) scores Emp-F1 "
                     f"{blind['emp_f1']:.2f} on validation; the model without RL is "
                     f"{_signed(base['emp_f1'] - blind['emp_f1'])} points above it.")
    top = int(bon.index.get_level_values("n").max())
    oracle, expected = bon.loc[(top, "oracle")], bon.loc[(top, "expected")]
    lines.append(f"Best-of-{top} (validation): choosing by R_emp against the gold levels (the oracle) changes Emp-F1 by "
                 f"{_signed(oracle['Emp-F1 diff'])} (95% CI {oracle['Emp-F1 diff CI']}, p = {oracle['Emp-F1 p']:.3f}) "
                 f"and kappa by {_signed(oracle['kappa diff'], 3)}; choosing by the reward expected under the training "
                 f"split's level frequencies (what a policy that never sees the gold can aim for) changes Emp-F1 by "
                 f"{_signed(expected['Emp-F1 diff'])} (95% CI {expected['Emp-F1 diff CI']}, p = {expected['Emp-F1 p']:.3f}).")
    oracle_up = oracle["Emp-F1 diff"] > 0 and oracle["Emp-F1 p"] < 0.05
    expected_up = expected["Emp-F1 diff"] > 0 and expected["Emp-F1 p"] < 0.05
    expected_down = expected["Emp-F1 diff"] < 0 and expected["Emp-F1 p"] < 0.05
    if oracle_up and not expected_up:
        lines.append("**What the ceiling implies:** the generator's samples hold responses at the gold levels (the "
                     "oracle finds them), so the reward carries the information to raise Emp-F1 where the gold "
                     "levels are known; but a policy never sees them, and choosing what the training split's level "
                     "frequencies favour "
                     + ("**lowers** Emp-F1: the reward's pull toward the common level triples costs the metric. "
                        if expected_down else "does not raise Emp-F1. ")
                     + "PPO on this reward can raise Emp-F1 only by learning the context-to-level mapping the gold "
                     "levels encode, which the oracle reads and the policy must infer from the context; what it "
                     "gains without learning that mapping is reward, not Emp-F1.")
    elif expected_up:
        lines.append("**What the ceiling implies:** even without the gold levels, choosing by the expected reward raises "
                     "Emp-F1, so a policy trained on this reward has a reachable gain of that size to find.")
    else:
        lines.append("**What the ceiling implies:** not even the oracle raises Emp-F1 beyond noise at this n: the "
                     "identifiers' levels of sampled responses rarely change the weighted F1, so no policy trained "
                     "on this reward can show a gain on this metric at this sample size.")
    if len(rs_rounds):
        best, rand = val["RS, keep best"]["row"], val["RS, keep random"]["row"]
        last = rs_rounds.groupby("keep").tail(1).set_index("keep")
        lines.append(f"Rejection sampling ({S.rs_rounds} round(s), {S.rs_samples} samples of {S.rs_contexts:,} training "
                     f"contexts): the kept samples' mean R_emp {last.loc['best', 'kept R_emp']:.3f} (best) against "
                     f"{last.loc['random', 'kept R_emp']:.3f} (random); validation Emp-F1 {best['emp_f1']:.2f} (best), "
                     f"{rand['emp_f1']:.2f} (random), {base['emp_f1']:.2f} (w/o RL).")
    for name, row in arms.iterrows():
        lines.append(f"{name}: R_emp {row['R_emp first 10%']:.3f} -> {row['R_emp last 10%']:.3f} "
                     f"({'rose' if row['(a) R_emp rises'] else 'no rise beyond two standard errors'}); Emp-F1 effect "
                     f"over its twin {_signed(row['Emp-F1 effect'])} (95% CI {row['Emp-F1 effect CI']}, p = "
                     f"{row['Emp-F1 effect p']:.3f}); against w/o RL {_signed(row['Emp-F1 vs w/o RL'])}, its twin "
                     f"{_signed(row['Emp-F1 twin'] - base['emp_f1'])} (an effect over the twin is partly the twin's own "
                     f"drift when the twin moves); PPL {row['PPL / twin']:.2f}x the twin's; critic explains "
                     f"{row['explained var (last 10%)']:.2f} of the returns' variance at the end; "
                     f"{'meets (a)-(c)' if row['meets (a)-(c)'] else 'does not meet (a)-(c)'}.")
    lines.append(f"Selected for the long run ({S.long_steps:,} steps): **{selected}** ({why}).")
    arm, twin = long_labels
    lines.append(f"Test split (n={test['w/o RL']['n_examples']:,}, m={test['w/o RL']['samples_per_context']}): {arm} minus "
                 f"its twin {_test_line(paired_test, f'{arm} - {twin}')}; minus w/o RL "
                 f"{_test_line(paired_test, f'{arm} - w/o RL')}; RS keep best minus w/o RL "
                 f"{_test_line(paired_test, 'RS, keep best - w/o RL')}; RS keep best minus keep random "
                 f"{_test_line(paired_test, 'RS, keep best - RS, keep random')}.")
    if signatures:
        lines.append(f"The paper's signatures (notebook 06): {verdict_counts(signatures)}.")
    return "\n".join(head(smoke)) + bullets(lines)


def _effect_words(delta: float, low: float, high: float, digits: int = 3) -> tuple[str, int]:
    """("+0.012 [0.004, 0.020]", sign of the CI: 1 above 0, -1 below, 0 containing it)."""
    sign = 1 if low > 0 else -1 if high < 0 else 0
    return f"{_signed(delta, digits)} [{low:.{digits}f}, {high:.{digits}f}]", sign


def controls(table: pd.DataFrame, selected: str | None, why: str, smoke: bool, evaluator: str = "judge") -> str:
    """Issue 26's verdict: per configuration, its effect over its placebo twin and over w/o RL on ``evaluator``'s
    mean kappa, Emp-F1 above that evaluator's blind floor and PPL, with CIs over seeds and contexts; then whether
    the empathy reward makes the policy read the context. ``table``: ``rl.controls.summary``'s."""
    if table.empty:
        return "\n".join(head(smoke)) + bullets(["No configuration has both variants at any seed yet."])
    reads, lines = [], []
    for config, row in table.iterrows():
        placebo, s_placebo = _effect_words(row[f"kappa over placebo ({evaluator})"],
                                           row[f"kappa over placebo low ({evaluator})"],
                                           row[f"kappa over placebo high ({evaluator})"])
        base, _ = _effect_words(row[f"kappa over w/o RL ({evaluator})"], row[f"kappa over w/o RL low ({evaluator})"],
                                row[f"kappa over w/o RL high ({evaluator})"])
        line = (f"**{config}** ({int(row['seeds'])} seed(s)): mean kappa ({evaluator}) over its placebo {placebo}, "
                f"over w/o RL {base}")
        if f"Emp-F1 above blind floor ({evaluator})" in row and not pd.isna(row[f"Emp-F1 above blind floor ({evaluator})"]):
            blind, _ = _effect_words(row[f"Emp-F1 above blind floor ({evaluator})"],
                                     row[f"Emp-F1 above blind floor low ({evaluator})"],
                                     row[f"Emp-F1 above blind floor high ({evaluator})"], digits=2)
            line += f"; Emp-F1 above the blind floor {blind}"
        if not pd.isna(row["PPL / w/o RL"]):
            line += f"; PPL {row['PPL / w/o RL']:.2f}x w/o RL's"
        line += "" if row["sound"] else "; its responses did not stay sound at every seed"
        lines.append(line + ".")
        reads.append((config, s_placebo))
    yes = [c for c, s in reads if s > 0]
    no = [c for c, s in reads if s == 0]
    less = [c for c, s in reads if s < 0]
    verdict = ("The empathy reward makes the policy read its context, beyond what the placebo's reward (its "
               f"distribution without the link to the context) does, in: {', '.join(yes)}." if yes else
               "In no configuration does the empathy reward make the policy read its context more than its placebo "
               "twin does (95% CIs over seeds and contexts).")
    if no:
        verdict += f" No evidence either way for: {', '.join(no)} (the CI contains 0)."
    if less:
        verdict += f" Less than the placebo: {', '.join(less)}."
    lines.append(verdict)
    if selected is not None:
        lines.append(f"Headline configuration by the rule fixed before the runs: **{selected}** ({why}).")
    return "\n".join(head(smoke)) + bullets(lines)


def grpo(rows: dict[str, dict[str, dict]], paired: dict[str, pd.DataFrame], lengths: dict[str, float],
         variants, smoke: bool, split: str = "validation") -> str:
    """10: what GRPO with the empathy reward did to the instruct LLM, against its base model and against its
    placebo twin, under each evaluator (the judge first), on ``split``. ``rows``: {evaluator: {system: metrics
    row}} with systems "base" and "GRPO <variant>"; ``paired``: {evaluator: ``evaluation.paired_tests``} with
    rows "GRPO <v> - base" and "GRPO <v> - GRPO placebo"; ``lengths``: {system: mean reply length in tokens}."""
    from emprl.eval.evaluation import METRIC_LABELS

    evaluators = sorted(rows, key=lambda e: e != "judge")
    lines = [f"On the {split} split, {rows[evaluators[0]]['base']['n_examples']:,} contexts answered "
             f"{rows[evaluators[0]]['base'].get('samples_per_context', 1)} times by each model; the base model's "
             f"replies average {lengths['base']:.1f} tokens."]
    moved = {}
    for v in variants:
        name = f"GRPO {v}"
        parts = []
        for e in evaluators:
            _, sig, text = _paired_line(paired[e], f"{name} - base", METRIC_LABELS["kappa"])
            parts.append(f"mean kappa ({e}) {text}")
            if e == evaluators[0]:
                moved[v] = sig and rows[e][name]["kappa"] > rows[e]["base"]["kappa"]
        line = f"**{name}** against the base model: " + "; ".join(parts)
        if v != "placebo" and "GRPO placebo" in {f"GRPO {x}" for x in variants}:
            _, sig, text = _paired_line(paired[evaluators[0]], f"{name} - GRPO placebo", METRIC_LABELS["kappa"])
            line += f"; against the placebo ({evaluators[0]}): {text}"
            moved[v] = moved[v] and sig and rows[evaluators[0]][name]["kappa"] > rows[evaluators[0]]["GRPO placebo"]["kappa"]
        line += f"; replies of {lengths[name]:.1f} tokens."
        lines.append(line)
    gained = [v for v in variants if v != "placebo" and moved.get(v)]
    lines.append((f"The empathy reward raised the instruct LLM's agreement with the gold empathy levels beyond its "
                  f"base and its placebo twin ({evaluators[0]}, 95% CIs over contexts) with: {', '.join(gained)}."
                  if gained else
                  f"No variant raised the instruct LLM's agreement with the gold empathy levels ({evaluators[0]}'s "
                  "mean kappa) beyond both its base model and its placebo twin (95% CIs over contexts)."))
    return "".join(head(smoke)) + bullets(lines)
