"""Every plot function draws what it is given, saves a PNG to the path and returns the figure closed."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from emprl.eval import plots  # noqa: E402
from emprl.data import LEVELS, MECHANISMS, SPLITS  # noqa: E402
from emprl.paper_tables import TABLE_V  # noqa: E402


def _saved(fig, path):
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)  # closed: a notebook shows the returned figure once
    return fig


def test_loss_curves_plot_the_history(tmp_path):
    history = [{"step": 1, "train_loss": 3.0, "valid_loss": None}, {"step": 2, "train_loss": 2.5, "valid_loss": 2.8},
               {"step": 3, "train_loss": 2.0, "valid_loss": 2.6}]
    fig = _saved(plots.loss_curves({"full": history, "prefix": history}, tmp_path / "f" / "loss.png", "banner"),
                 tmp_path / "f" / "loss.png")
    train, valid = fig.axes[0].get_lines()
    assert list(train.get_ydata()) == [3.0, 2.5, 2.0] and list(valid.get_xdata()) == [2, 3]
    assert fig.axes[1].get_title() == "prefix tuning" and fig._suptitle.get_text() == "banner"


def test_ppo_curves_one_panel_per_logged_quantity(tmp_path):
    n = 25
    log = pd.DataFrame({"step": np.arange(1, n + 1), **{c: np.linspace(-1, 1, n) for c in plots.PPO_PANELS},
                        "reward_std": np.ones(n), "emp_reward_std": np.ones(n)})
    fig = _saved(plots.ppo_curves(log, tmp_path / "ppo.png"), tmp_path / "ppo.png")
    assert [ax.get_title() for ax in fig.axes] == list(plots.PPO_PANELS.values())
    kl_ax = fig.axes[list(plots.PPO_PANELS).index("kl")]
    assert np.allclose(kl_ax.get_lines()[0].get_ydata(), log["kl"])  # raw values, then rolling mean, then y=0
    fig = _saved(plots.ppo_variants({"EmpRL": log, "no_kl": log}, tmp_path / "v.png"), tmp_path / "v.png")
    assert len(fig.axes[0].get_lines()) == 2


def test_study_curves_one_line_per_configuration_rolling_mean(tmp_path):
    n = 40
    log = pd.DataFrame({"step": np.arange(1, n + 1), **{c: np.arange(n, dtype=float) for c in plots.STUDY_PANELS}})
    fig = _saved(plots.study_curves({"paper": log, "exact KL": log * 2}, tmp_path / "s.png", "b"), tmp_path / "s.png")
    assert [ax.get_title() for ax in fig.axes] == list(plots.STUDY_PANELS.values())
    paper, exact = fig.axes[0].get_lines()
    # window n // 20 = 2: the mean of 0..39 over pairs is 0, 0.5, 1.5, ...
    assert list(paper.get_ydata()[:3]) == [0.0, 0.5, 1.5] and exact.get_ydata()[-1] == pytest.approx(77.0)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["paper", "exact KL"]


def test_systems_vs_paper_bars_ours_and_the_papers(tmp_path):
    rows = {"EmpRL": {"dist1": 3.0, "dist1_low": 2.0, "dist1_high": 4.5, "ppl": 20.0},
            "w/o RL": {"dist1": 2.0, "dist1_low": 1.0, "dist1_high": 2.5, "ppl": 21.0}}
    fig = _saved(plots.systems_vs_paper(rows, TABLE_V, {"dist1": "Dist-1", "ppl": "PPL"}, tmp_path / "t.png"),
                 tmp_path / "t.png")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([3.0, 2.0, 4.55, 4.25])  # ours, then Table V's EmpRL and w/o RL
    assert [p.get_height() for p in fig.axes[1].patches] == pytest.approx([20.0, 21.0, 12.87, 11.99])


def test_data_and_identifier_figures_save(tmp_path):
    rng = np.random.default_rng(0)
    levels = pd.DataFrame(rng.integers(0, 3, size=(30, 3)), columns=list(MECHANISMS))
    present = levels > 0
    co = pd.DataFrame([[float((present[a] & present[b]).mean()) for b in MECHANISMS] for a in MECHANISMS],
                      index=list(MECHANISMS), columns=list(MECHANISMS))
    turns = pd.DataFrame({"split": list(SPLITS) * 4, "turns": rng.integers(2, 6, 12)})
    lengths = pd.DataFrame({"split": list(SPLITS) * 4, "context": rng.integers(5, 50, 12),
                            "response": rng.integers(2, 20, 12)})
    emotions = pd.DataFrame({"split": list(SPLITS) * 2, "emotion": ["sad", "proud"] * 3})
    posts = pd.DataFrame({"seeker_post": rng.integers(1, 90, 10), "response_post": rng.integers(1, 40, 10)})
    conf = {m: {"confusion": np.eye(3, dtype=int).tolist(), "accuracy": 100.0, "weighted_f1": 100.0} for m in MECHANISMS}
    for name, fig in {
        "levels": plots.epitome_levels(levels, tmp_path / "levels.png"),
        "co": plots.epitome_cooccurrence(levels, co, tmp_path / "co.png"),
        "turns": plots.turns_per_dialogue(turns, tmp_path / "turns.png"),
        "lengths": plots.token_lengths(lengths, tmp_path / "lengths.png"),
        "emotions": plots.emotions(emotions, ["sad", "proud"], tmp_path / "emotions.png"),
        "posts": plots.post_lengths(posts, tmp_path / "posts.png"),
        "confusion": plots.confusion_matrices(conf, tmp_path / "confusion.png"),
    }.items():
        _saved(fig, tmp_path / f"{name}.png")
    assert len(LEVELS) == 3
