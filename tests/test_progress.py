"""The progress setting: summary mode writes a few lines, off writes none, a bad value is named."""

import io

import pytest

from emprl import progress


def test_summary_writes_each_quarter_and_the_end(monkeypatch):
    out = io.StringIO()
    bar = progress.Summary(range(8), desc="PPO", file=out)
    assert list(bar) == list(range(8))
    lines = out.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["[PPO] 2/8", "[PPO] 4/8", "[PPO] 6/8", "[PPO] done 8/8"]


def test_summary_resumes_counts_postfix_and_inner_loops():
    out = io.StringIO()
    bar = progress.Summary(total=10, initial=6, desc="train", file=out)  # resumed at step 6: only 7/10 remains
    for _ in range(4):
        bar.update(1)
        bar.set_postfix(loss="1.000")
    bar.close()
    bar.close()  # closing twice writes once
    assert [line.split(" in ")[0] for line in out.getvalue().splitlines()] == ["[train] 7/10", "[train] done 10/10"]
    assert out.getvalue().rstrip().endswith("(loss=1.000)")
    tqdm_style = io.StringIO()
    bar = progress.Summary(total=1, desc="LLM", file=tqdm_style)
    bar.set_postfix(retries=0, cut=2, refresh=False)  # as the LLM client calls tqdm
    bar.update(1)
    bar.close()
    assert tqdm_style.getvalue().rstrip().endswith("(retries=0, cut=2)")
    inner = io.StringIO()
    list(progress.Summary(range(100), desc="epoch", quarters=False, file=inner))
    assert inner.getvalue().startswith("[epoch] done 100/100") and inner.getvalue().count("\n") == 1


def test_mode_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("EMPRL_PROGRESS", "off")
    assert list(progress.bar(range(3), desc="x")) == [0, 1, 2]
    monkeypatch.setenv("EMPRL_PROGRESS", "summary")
    list(progress.bar(range(4), desc="y"))
    assert capsys.readouterr().out.splitlines()[-1].startswith("[y] done 4/4")
    list(progress.bar(range(4), desc="z", disable=True))
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("EMPRL_PROGRESS", "widgets")
    with pytest.raises(ValueError, match="EMPRL_PROGRESS must be one of"):
        progress.bar(range(2))
    monkeypatch.delenv("EMPRL_PROGRESS")
    assert progress.mode() == "auto"
