"""Every figure the notebooks save, in one style.

Each function draws one figure, saves it as PNG to ``path`` (folders created) and returns it (``finish``,
also for figures drawn elsewhere, such as the playground's). The
figure is closed for pyplot, so a notebook cell that ends with the call shows it exactly once (Jupyter's
inline backend renders a returned Figure; nothing is left for it to draw again at the end of the cell).
``banner`` (the smoke banner, or a profile line) is the figure's title.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from emprl.data import LEVELS, MECHANISMS, SPLITS

DPI = 120
STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.9)}
PAPER_COLOR, OURS_COLOR = "tab:red", "tab:blue"


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float]):
    return plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)


def finish(fig, path, banner: str = ""):
    """Title ``fig`` with ``banner``, save it as PNG at ``path`` (folders created), close it, return it."""
    if banner:
        fig.suptitle(banner, color="red" if "SMOKE" in banner else "black", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return fig


def _styled(draw):
    """Run a plot function under STYLE (seaborn whitegrid, notebook context) without touching global rc."""
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__ = draw.__name__, draw.__doc__
    return wrapper


# ---- 01: data exploration
@_styled
def turns_per_dialogue(turns: pd.DataFrame, path, banner: str = ""):
    """Share of dialogues by number of utterances, per split (``turns``: columns split, turns)."""
    fig, axes = _subplots(1, 1, (7, 3.5))
    share = turns.groupby("split")["turns"].value_counts(normalize=True).rename("share").reset_index()
    sns.barplot(data=share, x="turns", y="share", hue="split", hue_order=list(SPLITS), ax=axes[0, 0])
    axes[0, 0].set(title="Utterances per dialogue", xlabel="utterances in the dialogue", ylabel="share of dialogues")
    return finish(fig, path, banner)


@_styled
def token_lengths(lengths: pd.DataFrame, path, banner: str = ""):
    """Histograms of context and response lengths per split (``lengths``: split, context, response)."""
    fig, axes = _subplots(1, 2, (11, 3.5))
    for ax, kind in zip(axes[0], ("context", "response")):
        sns.histplot(data=lengths, x=kind, hue="split", hue_order=list(SPLITS), stat="density",
                     common_norm=False, element="step", fill=False, bins=40, ax=ax)
        ax.set(title=f"{kind} length", xlabel="whitespace tokens")
    return finish(fig, path, banner)


@_styled
def emotions(emotions: pd.DataFrame, order: list[str], path, banner: str = ""):
    """Share of dialogues per emotion label and split (``emotions``: split, emotion)."""
    fig, axes = _subplots(1, 1, (8, max(3.0, 0.22 * len(order))))
    share = emotions.groupby("split")["emotion"].value_counts(normalize=True).rename("share").reset_index()
    sns.barplot(data=share, y="emotion", x="share", hue="split", hue_order=list(SPLITS), order=order, ax=axes[0, 0])
    axes[0, 0].set(title="Emotion labels", xlabel="share of dialogues", ylabel="")
    return finish(fig, path, banner)


@_styled
def epitome_levels(levels: pd.DataFrame, path, banner: str = ""):
    """Responses per level and mechanism (``levels``: one column per mechanism, values 0-2)."""
    fig, axes = _subplots(1, 1, (8, 3.5))
    long = levels.melt(var_name="mechanism", value_name="level")
    long["level"] = long["level"].map(dict(enumerate(LEVELS)))
    sns.countplot(data=long, x="mechanism", hue="level", hue_order=list(LEVELS), ax=axes[0, 0])
    axes[0, 0].set(title="EPITOME levels per communication mechanism", xlabel="", ylabel="responses")
    return finish(fig, path, banner)


@_styled
def epitome_cooccurrence(levels: pd.DataFrame, both_present: pd.DataFrame, path, banner: str = ""):
    """Left: share of responses with both mechanisms present; then joint level counts per pair."""
    pairs = [(a, b) for i, a in enumerate(MECHANISMS) for b in MECHANISMS[i + 1:]]
    fig, axes = _subplots(1, 1 + len(pairs), (18, 3.8))
    sns.heatmap(both_present, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, ax=axes[0, 0], cbar=False)
    axes[0, 0].set(title="both present (share)")
    for ax, (a, b) in zip(axes[0, 1:], pairs):
        joint = pd.crosstab(levels[a], levels[b]).reindex(index=range(3), columns=range(3), fill_value=0)
        sns.heatmap(joint, annot=True, fmt="d", cmap="Greens", ax=ax, cbar=False,
                    xticklabels=LEVELS, yticklabels=LEVELS)
        ax.set(title=f"{a} x {b}", xlabel=b, ylabel=a)
    return finish(fig, path, banner)


@_styled
def post_lengths(post_len: pd.DataFrame, path, banner: str = ""):
    """Histogram (log scale) of the seeker-post and response lengths (one column each)."""
    fig, axes = _subplots(1, 1, (8, 3.5))
    sns.histplot(data=post_len.melt(var_name="text", value_name="tokens"), x="tokens", hue="text",
                 log_scale=True, element="step", fill=False, bins=40, ax=axes[0, 0])
    axes[0, 0].set(title="EPITOME post lengths", xlabel="whitespace tokens (log scale)")
    return finish(fig, path, banner)


# ---- 02: identifiers
@_styled
def confusion_matrices(metrics: dict[str, dict], path, banner: str = ""):
    """One validation confusion matrix per identifier (``metrics[m]``: confusion, accuracy, weighted_f1)."""
    fig, axes = _subplots(1, len(metrics), (4.4 * len(metrics), 3.8))
    for ax, (m, r) in zip(axes[0], metrics.items()):
        sns.heatmap(pd.DataFrame(r["confusion"], index=LEVELS, columns=LEVELS),
                    annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
        ax.set(title=f"{m}\nacc {r['accuracy']:.1f}, wF1 {r['weighted_f1']:.1f}", xlabel="predicted", ylabel="gold")
    return finish(fig, path, banner)


# ---- 03: generator
@_styled
def loss_curves(histories: dict[str, list[dict]], path, banner: str = ""):
    """Train (running mean) and validation token cross-entropy by optimizer step, one panel per run."""
    fig, axes = _subplots(1, len(histories), (5.5 * len(histories), 3.5))
    for ax, (name, history) in zip(axes[0], histories.items()):
        frame = pd.DataFrame(history)
        ax.plot(frame["step"], frame["train_loss"], label="train (running mean)", alpha=0.7)
        val = frame.dropna(subset=["valid_loss"])
        ax.plot(val["step"], val["valid_loss"], "o-", label="validation")
        ax.set(title=f"{name} tuning", xlabel="optimizer step", ylabel="token cross-entropy (nats)")
        ax.legend()
    return finish(fig, path, banner)


# ---- 04, 06: PPO
PPO_PANELS = {
    "reward_mean": "total reward (sum of the reward vector)", "emp_reward_mean": "empathy reward R_emp",
    "kl": "sampled KL estimate sum log(pi/rho)", "entropy": "policy entropy per token",
    "value_loss": "value loss L^VF", "clip_frac": "clip fraction", "approx_kl": "approx. KL old->new",
    "response_len": "response length (tokens)",
}


@_styled
def ppo_curves(log: pd.DataFrame, path, banner: str = ""):
    """The PPO log by step: one panel per quantity of PPO_PANELS, a rolling mean once there are 20 steps."""
    fig, axes = _subplots(2, 4, (16, 6.5))
    for ax, (col, title) in zip(axes.flat, PPO_PANELS.items()):
        ax.plot(log["step"], log[col], lw=1, alpha=0.5)
        if len(log) >= 20:
            ax.plot(log["step"], log[col].rolling(max(len(log) // 20, 2)).mean(), lw=2)
        if col in ("reward_mean", "emp_reward_mean"):
            std = log[col.replace("_mean", "_std")]
            ax.fill_between(log["step"], log[col] - std, log[col] + std, alpha=0.15)
        if col == "kl":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set(title=title, xlabel="PPO step")
    return finish(fig, path, banner)


@_styled
def ppo_variants(logs: dict[str, pd.DataFrame], path, banner: str = ""):
    """R_emp and the KL estimate by step for several PPO variants."""
    fig, axes = _subplots(1, 2, (11, 3.6))
    for name, log in logs.items():
        axes[0, 0].plot(log["step"], log["emp_reward_mean"], label=name)
        axes[0, 1].plot(log["step"], log["kl"], label=name)
    axes[0, 0].set(title="empathy reward R_emp (batch mean)", xlabel="PPO step")
    axes[0, 1].set(title=PPO_PANELS["kl"], xlabel="PPO step")
    axes[0, 1].axhline(0.0, color="grey", lw=0.8)
    axes[0, 0].legend(fontsize=8)
    return finish(fig, path, banner)


# ---- 08: the RL study
STUDY_PANELS = {"emp_reward_mean": "R_emp (training batches)", "kl": "KL estimate per response",
                "explained_var": "critic: returns' variance explained", "response_len": "response length (tokens)",
                "entropy": "entropy (nats / token)"}


# GRPO's log (trl's names, emprl.rl.grpo.train_grpo's log.csv)
GRPO_PANELS = {"reward": "reward (training groups)", "kl": "KL to the base model",
               "completions/mean_length": "reply length (tokens)", "entropy": "entropy (nats / token)"}


@_styled
def study_curves(logs: dict[str, pd.DataFrame], path, banner: str = "", panels: dict[str, str] = STUDY_PANELS,
                 xlabel: str = "PPO step"):
    """The training curves of ``panels`` ({log column: title}; PPO's R_emp, KL, critic, response length and
    entropy by default, ``GRPO_PANELS`` for GRPO) by step, one line per run (rolling mean over a twentieth of
    the steps)."""
    fig, axes = _subplots(1, len(panels), (4.5 * len(panels), 4))
    for ax, (col, title) in zip(axes[0], panels.items()):
        for name, log in logs.items():
            window = max(len(log) // 20, 1)
            ax.plot(log["step"], log[col].rolling(window, min_periods=1).mean(), lw=1.5, label=name)
        if col == "kl":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set(title=title, xlabel=xlabel)
    axes[0, 0].legend(fontsize=7)
    return finish(fig, path, banner)


@_styled
def best_of_n(table: pd.DataFrame, path, banner: str = ""):
    """The best-of-n curve: one panel per metric, one line per selection rule, against n (log2 axis).
    ``table``: ``best_of_n.curve``'s, indexed by (n, rule)."""
    panels = {"Emp-F1": "Emp-F1 (%)", "kappa": "kappa (mean of 3)", "all 3 match": "all 3 levels match (%)",
              "Dist-2": "Dist-2", "mean length": "mean length (tokens)"}
    fig, axes = _subplots(1, len(panels), (4 * len(panels), 3.6))
    flat = table.reset_index()
    for ax, (col, title) in zip(axes[0], panels.items()):
        for rule, part in flat.groupby("rule", sort=False):
            ax.plot(part["n"], part[col], marker="o", lw=1.5, label=rule)
        ax.set_xscale("log", base=2)
        ax.set(title=title, xlabel="n (samples per context)")
    axes[0, 0].legend(fontsize=8)
    return finish(fig, path, banner)


# ---- 05, 06: systems against the paper
@_styled
def systems_vs_paper(rows: dict[str, dict], paper: dict, metrics: dict[str, str], path, banner: str = ""):
    """One panel per metric: our systems' values (with 95% CIs where ``<key>_low/_high`` exist) beside the
    paper's. ``rows``: system -> row of evaluation.evaluate_system; ``paper``: a paper_tables table;
    ``metrics``: row key -> paper column."""
    names = list(rows)
    reported = {n: dict(zip(paper["columns"], v)) for n, v in paper["rows"].items()}
    fig, axes = _subplots(1, len(metrics), (4 * len(metrics), 4))
    x = np.arange(len(names))
    for ax, (key, col) in zip(axes[0], metrics.items()):
        ours = [rows[n][key] for n in names]
        err = None
        if all(f"{key}_low" in rows[n] for n in names):
            err = [[o - rows[n][f"{key}_low"] for n, o in zip(names, ours)],
                   [rows[n][f"{key}_high"] - o for n, o in zip(names, ours)]]
        ax.bar(x - 0.2, ours, 0.4, yerr=err, capsize=3, color=OURS_COLOR,
               label="ours (95% CI)" if err is not None else "ours")
        theirs = [reported.get(n, {}).get(col) for n in names]
        theirs = [np.nan if v is None else v for v in theirs]
        ax.bar(x + 0.2, theirs, 0.4, label="paper", color=PAPER_COLOR, alpha=0.6)
        ax.set_xticks(x, [n.replace(", ", ",\n") for n in names], rotation=45 if len(names) > 2 else 0,
                      ha="right" if len(names) > 2 else "center", fontsize=8)
        ax.set_title(col)
    axes[0, 0].legend(fontsize=8)
    return finish(fig, path, banner)
