"""Report: collects every table and figure by notebook, with the provenance header."""

import dataclasses
import json

import numpy as np
import pandas as pd

from emprl.eval import report as R


def test_to_markdown_hand_written():
    frame = pd.DataFrame({"PPL": [12.874, None], "Dist-1": [4.5, 0.25]}, index=pd.Index(["EmpRL", "a|b"], name="Models"))
    assert R.to_markdown(frame) == (
        "| Models | PPL | Dist-1 |\n|---|---|---|\n| EmpRL | 12.87 | 4.50 |\n| a\\|b | - | 0.25 |\n"
    )


def test_format_config_one_parameter_per_line():
    from emprl.profiles import get_profile

    cfg = get_profile("smoke").ppo
    text = R.format_config(cfg)
    lines = text.splitlines()
    names = [f.name for f in dataclasses.fields(cfg)]  # __dataclass_fields__ also holds the ClassVar "section"
    assert lines[0] == "PPOConfig" and len(lines) == 1 + len(names)
    assert f"  beta{' ' * (len(max(names, key=len)) - 4)} = {cfg.beta!r}" in lines
    assert R.format_config({"a": 1, "bb": "x"}) == "dict\n  a  = 1\n  bb = 'x'"


def test_save_table_smoke_banner(tmp_path):
    frame = pd.DataFrame({"x": [1.0]}, index=["a"])
    text = R.save_table(tmp_path, "05_table_ii", frame, title="Table II", smoke=True)
    assert text.startswith("**SMOKE PROFILE: numbers are not meaningful**")
    assert (tmp_path / "tables" / "05_table_ii.md").read_text() == text
    assert pd.read_csv(tmp_path / "tables" / "05_table_ii.csv", index_col=0).loc["a", "x"] == 1.0
    assert "SMOKE" not in R.save_table(tmp_path, "t", frame, smoke=False)


def test_write_report_collects_tables_figures_and_provenance(tmp_path, monkeypatch):
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)
    frame = pd.DataFrame({"Emp-F1 (%)": [61.0]}, index=["EmpRL"])
    R.save_table(tmp_path, "05_table_ii", frame, smoke=True)
    R.save_table(tmp_path, "02_table_i", frame, smoke=True)
    R.save_table(tmp_path, "loose", frame)
    (tmp_path / "figures").mkdir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot(np.arange(3))
    plt.savefig(tmp_path / "figures" / "06_ablation.png")
    plt.close()
    R.record_provenance(tmp_path, "05_evaluation", "smoke", {"EmpRL": "ppo/emprl"}, "sample", {"test": 24})
    (tmp_path / "metrics" / "pipeline_timings.json").write_text(json.dumps({"05_evaluation.ipynb": 3.2}))
    path = R.write_report(tmp_path, "smoke")
    text = path.read_text()
    assert path == tmp_path / "report.md"
    header = [line for line in text.splitlines() if line.startswith("Profile **smoke**")]
    assert len(header) == 1 and "models: generator T5" in header[0] and "bundled" in header[0]
    assert "05: test 24" in header[0]
    assert "SMOKE PROFILE: numbers are not meaningful" in text.split("Profile **smoke**")[0]
    # ordered by notebook, every table and figure present, loose ones last
    assert text.index("## Notebook 02") < text.index("## Notebook 05") < text.index("## Notebook 06") < text.index("## Other outputs")
    assert "![06_ablation](figures/06_ablation.png)" in text and "### loose" in text
    assert "_Rests on_ test: 24; models: EmpRL: ppo/emprl; data: sample." in text
    assert "05_evaluation.ipynb 3.2" in text


def test_report_cli_with_nothing_yet(tmp_path, capsys):
    assert R.main(["--profile", "offline", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "No tables or figures" in text and "SMOKE" not in text and "not recorded" in text


def test_to_markdown_keeps_integer_columns_integer():
    import pandas as pd

    from emprl.eval.report import to_markdown

    frame = pd.DataFrame({"n": [48, 7], "f1": [0.5, 0.25]}, index=pd.Index(["a", "b"], name="sys"))
    text = to_markdown(frame)
    assert "| a | 48 | 0.50 |" in text and "48.00" not in text
