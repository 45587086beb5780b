""""Reading the results": each notebook's closing text, built from the numbers it has just measured.

One function per stage returns Markdown. The comparisons and caveats are conditions on the measured
values (did PPO raise R_emp, did the KL estimate go negative, how far Table I is from the paper's), so
the text changes when the numbers do. The paper's numbers come from ``emprl.paper_tables``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from emprl.paper_tables import TABLE_I

SMOKE_CAVEAT = ("**Smoke profile:** a tiny model trained for seconds on an invented sample; the text below "
                "describes these numbers and shows that the pipeline runs, not anything about EmpRL.")
PAPER_PPO_STEPS = 24_000  # paper IV-B


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) + "\n"


def _head(smoke: bool) -> list[str]:
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
    return "\n".join(_head(smoke)) + _bullets(lines)


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
    return "\n".join(_head(smoke)) + _bullets(lines)


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
    return "\n".join(_head(smoke)) + _bullets(lines)


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
    return "\n".join(_head(smoke)) + _bullets(lines)


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


def evaluation(rows: dict[str, dict], paired: pd.DataFrame, paper: dict, smoke: bool) -> str:
    """05: EmpRL against the generator without RL (paired bootstrap), and both against the paper."""
    lines = []
    for key, label in _METRICS:
        _, _, text = _paired_line(paired, "EmpRL - w/o RL", label)
        lines.append(f"{label}: EmpRL {rows['EmpRL'][key]:.2f} vs w/o RL {rows['w/o RL'][key]:.2f}; "
                     f"EmpRL is {text}.")
    reported = dict(zip(paper["columns"], paper["rows"]["EmpRL"]))
    gaps = ", ".join(f"{label} {_signed(rows['EmpRL'][key] - reported[label])}" for key, label in _METRICS)
    lines.append(f"Distance of our EmpRL from the paper's (Table II): {gaps}.")
    n = rows["EmpRL"]["n_examples"]
    lines.append(f"Limits: {n:,} test examples and one sample per context; Dist-n depends on the tokenizer (ours "
                 "is named in the table; the paper does not say) and on how many responses are pooled, so "
                 "it compares systems on the same examples only; Emp-F1 is measured by our identifiers; PPL "
                 "uses our tokenizer and is not comparable with the paper's.")
    return "\n".join(_head(smoke)) + _bullets(lines)


def ablations(rows: dict[str, dict], paired: pd.DataFrame, paper: dict, smoke: bool) -> str:
    """06: each ablation against EmpRL, and whether the paper's direction is reproduced."""
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
    lines.append("Limits: the PPO variants are trained for the profile's steps, not the paper's 24,000 "
                 "(1,600 for w/o KL penalty); with few steps the variants stay close to the generator they "
                 "start from, so differences are small by construction.")
    return "\n".join(_head(smoke)) + _bullets(lines)


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
    return "\n".join(_head(smoke)) + _bullets(lines)
