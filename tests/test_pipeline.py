"""The pipeline runner and the profile definition."""

import nbformat
import pytest

from emprl import pipeline
from emprl.profiles import get_profile


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\ndata_dir = None\noutput_dir = None\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_unknown_profile_and_parameter_are_clear_errors():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        get_profile("fast")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['betta'\] in section 'ppo'"):
        get_profile("smoke", {"ppo": {"betta": 0.1}})
    with pytest.raises(ValueError, match="unknown section 'gen'"):
        get_profile("smoke", {"gen": {}})
    assert get_profile("paper").ppo.beta == 0.2 and get_profile("paper").ppo.steps == 24000


def test_only_selects_by_number(tmp_path):
    for name in ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]:
        _notebook(tmp_path / name, "x = 1")
    found = pipeline.discover(tmp_path)
    assert [p.name for p in pipeline.select(found, "3,01")] == ["01_a.ipynb", "03_c.ipynb"]
    with pytest.raises(ValueError, match="no notebook numbered"):
        pipeline.select(found, "09")


def test_runs_in_order_and_names_the_failing_cell(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "01_ok.ipynb", "import os; open(os.environ['EMPRL_OUTPUT_DIR'] + '/ran_01', 'w').write(profile)")
    _notebook(nbdir / "02_bad.ipynb", "raise ValueError('boom in 02')")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"02_bad.ipynb failed at cell 2 .*ValueError: boom in 02"):
        pipeline.run("smoke", out=str(out), notebook_dir=nbdir)
    assert (out / "ran_01").read_text() == "smoke"
    assert (out / "01_ok.ipynb").exists()


def test_rendered_notebooks_hold_no_machine_path(tmp_path, monkeypatch):
    """The folders reach the kernel through the environment; papermill's records name files, not paths."""
    nbdir, out, data = tmp_path / "nbs", tmp_path / "out", tmp_path / "data"
    nbdir.mkdir()
    data.mkdir()
    monkeypatch.delenv("EMPRL_PROGRESS", raising=False)
    _notebook(nbdir / "01_env.ipynb", "import os\nprint(os.environ['EMPRL_PROGRESS'], output_dir, data_dir)\n"
              "assert os.path.basename(os.environ['EMPRL_DATA_DIR']) == 'data'")
    pipeline.run("smoke", out=str(out), data_dir=str(data), notebook_dir=nbdir)
    rendered = (out / "01_env.ipynb").read_text()
    assert str(tmp_path) not in rendered
    assert "summary None None" in rendered and '"input_path": "notebooks/01_env.ipynb"' in rendered


def test_data_label_names_the_data_without_its_path(tmp_path, monkeypatch):
    from emprl.evaluation import data_label

    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)
    assert data_label() == "bundled smoke sample"
    (tmp_path / "ed_data").mkdir()
    assert data_label(tmp_path / "ed_data") == "data folder ed_data"
    monkeypatch.setenv("EMPRL_DATA_DIR", str(tmp_path / "ed_data"))
    assert data_label() == data_label(str(tmp_path / "ed_data")) == "$EMPRL_DATA_DIR"
