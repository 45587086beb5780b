"""The empathy-reward study (notebook 08, issue 18): can the reward raise Emp-F1 at all, and what is left of the
paper's Table V signatures when tested with enough power.

- ``ARMS``: PPO configurations (the paper's, a swept prefix learning rate, the repairs); each runs beside its
  **twin**, the same configuration with the empathy reward set to 0 (variant "no_emp", same seed and steps),
  so that an arm's effect is its paired difference from its twin at equal steps: what the reward adds over
  the drift that PPO, the KL term and sampling cause on their own.
- ``arm_settings(P, name, steps)``: the PPOConfig of an arm: its preset and overrides on the profile.
- ``window_stats`` / ``criteria``: training R_emp rise and the three conditions, against a reference (the twin).
- ``select``: the arm to run long, chosen on validation.
- ``CONTROLS``, ``select_control``: issue 26's configurations, each beside its placebo twin at
  several seeds (``emprl.rl.controls`` runs them), and the rule that picks the headline, fixed before the runs.

The paper's Table V signatures and their verdicts are ``emprl.eval.evaluation.signatures`` / ``verdict``: they
live with the evaluation so that ``emprl.eval.rebuild`` recomputes them from committed files alone.

Every arm starts from the same generator checkpoint and the same identifiers; selection is on the validation
split, the test split is touched once, for the final tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emprl.profiles import PPOConfig, with_settings


@dataclass(frozen=True)
class Arm:
    preset: str  # a key of emprl.profiles.PRESETS
    overrides: dict  # PPO settings on top of the preset
    what: str  # what it tests


# The repairs are the "repaired" preset (its prefix learning rate is 1e-4). The names are those of the
# committed output folders (arm_folder): keep them.
ARMS: dict[str, Arm] = {
    "paper": Arm("paper", {}, "the profile's PPO section: the paper's settings (lr 1.41e-5, sampled-token KL "
                 "in the reward)"),
    "paper, lr 1e-4": Arm("paper", {"lr": 1e-4}, "the paper's PPO with a 7x larger prefix learning rate"),
    "paper, lr 1e-3": Arm("paper", {"lr": 1e-3}, "the paper's PPO with a 70x larger prefix learning rate"),
    "repaired, lr 1e-4": Arm("repaired", {}, "all repairs (critic lr 1e-3, warm-up, detached value, sampler "
                             "ratio, exact KL in the loss), prefix lr 1e-4"),
    "repaired, lr 1e-3": Arm("repaired", {"lr": 1e-3}, "all repairs, prefix lr 1e-3"),
}
# Issue 26: does the reward make the policy read the context? Each configuration runs beside its placebo twin
# (the same reward against another context's gold) at seeds 0 .. study.control_seeds - 1 (emprl.rl.controls).
CONTROLS: dict[str, Arm] = {
    "paper": ARMS["paper"],
    "paper, lr 1e-4": ARMS["paper, lr 1e-4"],
    "repaired, lr 1e-4": ARMS["repaired, lr 1e-4"],
    "repaired, chance-corrected": Arm("repaired", {"reward": "chance_corrected"},
                                      "all repairs, prefix lr 1e-4, paid R_emp less its expectation under the "
                                      "training split's level frequencies"),
}
MIN_MEAN_LENGTH = 8.0  # tokens, criterion (c)
MAX_PPL_RATIO = 1.25  # criterion (c): PPL within +25% of the reference


def arm_settings(P, name: str, steps: int | None = None) -> PPOConfig:
    """The PPO settings of arm ``name`` on profile ``P`` for ``steps`` steps (the profile's if None): the
    arm's preset, then its overrides, on ``P`` (``profiles.with_settings``, as ``emprl.setup`` layers
    them)."""
    arms = {**ARMS, **CONTROLS}
    if name not in arms:
        raise ValueError(f"unknown study arm {name!r}; known: {list(arms)}")
    arm = arms[name]
    overrides = dict(arm.overrides)
    if steps is not None:
        overrides["steps"] = int(steps)
    return with_settings(P, arm.preset, {"ppo": overrides}).ppo


def arm_folder(name: str) -> str:
    """The arm's output root under ``study/`` (no spaces or commas)."""
    return name.replace(", ", "_").replace(" ", "_").replace(".", "p")


# --------------------------------------------------------------------------- training-curve statistics


@dataclass(frozen=True)
class Window:
    mean: float
    se: float
    n_steps: int


def window_stats(log: pd.DataFrame, frac: float = 0.1, batch_size: int | None = None) -> tuple[Window, Window]:
    """R_emp over the first and the last ``frac`` of the logged steps (at least one step each).

    The mean is that of all responses in the window; the standard error is that of this mean over the
    window's responses, from each step's logged mean, standard deviation and ``batch_size`` (pooled:
    within-step plus between-step spread), so a one-step window still has one.
    """
    if not 0 < frac <= 0.5:
        raise ValueError(f"frac must be in (0, 0.5], got {frac}")
    k = max(int(len(log) * frac), 1)
    if len(log) < 2 * k:
        raise ValueError(f"need at least {2 * k} logged steps for two windows of {k}, got {len(log)}")
    B = int(batch_size) if batch_size is not None else None
    out = []
    for part in (log.head(k), log.tail(k)):
        m, s = part["emp_reward_mean"].to_numpy(float), part["emp_reward_std"].to_numpy(float)
        if B is None or B < 2:
            se = float(np.std(m, ddof=1) / math.sqrt(k)) if k > 1 else float("nan")
            out.append(Window(float(m.mean()), se, k))
            continue
        grand = m.mean()
        ss = ((B - 1) * s**2 + B * (m - grand) ** 2).sum()  # sum of squares of all k*B rewards about the mean
        n = k * B
        out.append(Window(float(grand), float(math.sqrt(ss / (n - 1) / n)), k))
    return out[0], out[1]


# --------------------------------------------------------------------------- criteria and selection


def criteria(first: Window, last: Window, emp_f1_test, dist2_test, cand_ppl: float, ref_ppl: float,
             cand_mean_len: float) -> dict:
    """The three conditions for one arm, against a reference (its twin).

    (a) training R_emp rises: last-window mean - first-window mean > 2 standard errors of that difference;
    (b) Emp-F1 beats the reference: difference > 0 with paired-bootstrap p < 0.05;
    (c) sound responses: mean length >= 8 tokens, Dist-2 not below the reference (difference >= 0),
        PPL <= 1.25 x the reference's.
    ``emp_f1_test`` / ``dist2_test``: ``metrics.PairedTest`` of the arm minus the reference.
    """
    rise = last.mean - first.mean
    se = math.sqrt(first.se**2 + last.se**2)
    a = bool(math.isfinite(se) and rise > 2 * se)
    b = bool(emp_f1_test.delta > 0 and emp_f1_test.p_value < 0.05)
    c_len = bool(cand_mean_len >= MIN_MEAN_LENGTH)
    c_dist = bool(dist2_test.delta >= 0)
    c_ppl = bool(cand_ppl <= MAX_PPL_RATIO * ref_ppl)
    return {"R_emp rise": rise, "rise SE": se, "(a) R_emp rises": a, "(b) Emp-F1 beats the twin": b,
            "(c) length >= 8": c_len, "(c) Dist-2 >= twin": c_dist, "(c) PPL <= 1.25x": c_ppl,
            "(c) sound": c_len and c_dist and c_ppl, "meets (a)-(c)": a and b and c_len and c_dist and c_ppl}


def mean_length(responses, tokenizer: str = "nltk") -> float:
    """Mean response length in Dist-n tokens (``metrics.TOKENIZERS[tokenizer]``)."""
    from emprl.eval.metrics import TOKENIZERS

    tok = TOKENIZERS[tokenizer]
    return float(np.mean([len(tok(r)) for r in responses])) if len(responses) else 0.0


def select(table: pd.DataFrame) -> tuple[str, str]:
    """The arm to run long, and why: among the arms whose responses stay sound (c), the largest Emp-F1 effect
    over the twin (significant or not: the long run is what gives it the power); if none is sound, the
    largest effect overall. ``table``: one row per arm with "Emp-F1 effect", "Emp-F1 effect p", "(c) sound"."""
    sound = table[table["(c) sound"]]
    pool, why = (sound, "largest validation Emp-F1 effect over its twin among the arms with sound responses")
    if sound.empty:
        pool, why = table, "no arm kept its responses sound (c); largest validation Emp-F1 effect over its twin"
    name = str(pool["Emp-F1 effect"].idxmax())
    row = pool.loc[name]
    return name, (f"{why}: {float(row['Emp-F1 effect']):+.2f} points (p = {float(row['Emp-F1 effect p']):.3f})")



def select_control(table: pd.DataFrame) -> tuple[str, str]:
    """The configuration to headline, and why. The rule, fixed before any run (issue 26): on the validation
    split, the largest lower bound of the 95% CI (seeds and contexts, ``metrics.seed_paired_test``) of the
    effect over the placebo twin on the judge's kappa (mean of the three mechanisms), among the configurations
    whose responses stay sound at every seed (mean length >= 8 tokens, Dist-2 not below the placebo's, PPL
    <= 1.25 x w/o RL's); if none is sound, among all. Every configuration is reported on the test split
    alike; the headline is the one the README's sentence is about. ``table``: one row per configuration with
    "kappa effect low" and "sound"."""
    sound = table[table["sound"].astype(bool)]
    pool, why = (sound, "largest lower CI bound of the judge-kappa effect over the placebo, sound responses")
    if sound.empty:
        pool, why = table, "no configuration kept its responses sound; largest lower CI bound of the judge-kappa effect"
    name = str(pool["kappa effect low"].idxmax())
    return name, f"{why}: {float(pool.loc[name, 'kappa effect low']):+.3f}"
