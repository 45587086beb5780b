"""The pipeline runner and the profile definition."""

import json

import nbformat
import pytest
import torch

from emprl.ops import pipeline
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
    with pytest.raises(ValueError, match=r"unknown parameter 'betta' in section 'ppo'"):
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


def _rendered(path, recorded=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    if recorded is not None:
        nb.metadata["emprl"] = recorded
    nbformat.write(nb, path)
    return path


def test_run_passes_device_and_overrides_and_records_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "01_ok.ipynb", "import os; open(os.environ['EMPRL_OUTPUT_DIR'] + '/params', 'w').write(repr((device, overrides)))")
    out = tmp_path / "out"
    pipeline.run("smoke", out=str(out), notebook_dir=nbdir, device="cpu", overrides=["ppo.steps=3"])
    assert (out / "params").read_text() == "('cpu', {'ppo': {'steps': 3}})"
    recorded = nbformat.read(out / "01_ok.ipynb", as_version=4).metadata["emprl"]
    assert recorded["profile"] == "smoke" and recorded["config"]["ppo"]["steps"] == 3
    assert recorded["resolved"]["device"] == "cpu" and "commit" in recorded
    assert str(tmp_path) not in json.dumps(recorded)  # no machine paths
    assert json.loads((out / "metrics" / "config.json").read_text())["config"] == recorded["config"]
    # its source reads no PPO setting, so a changed ppo.steps leaves it current; one that names P.ppo does not
    assert pipeline.staleness(out / "01_ok.ipynb", nbdir) == []
    _notebook(nbdir / "01_ok.ipynb", "steps = P.ppo.steps")
    assert pipeline.staleness(out / "01_ok.ipynb", nbdir) == ["01_ok.ipynb: ppo.steps recorded 3, current 4"]


def test_cli_errors_name_the_parameter_and_the_missing_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pipeline.main(["--profile", "smoke", "--out", str(tmp_path), "--set", "ppo.steps=-5"]) == 1
    assert "ppo.steps must be >= 0, got -5" in capsys.readouterr().err
    assert pipeline.main(["--profile", "smoke", "--out", str(tmp_path), "--set", "generator.lr=fast"]) == 1
    assert "override generator.lr='fast': expected float" in capsys.readouterr().err
    assert pipeline.main(["--profile", "smoke", "--out", str(tmp_path), "--device", "cuda"]) == 1
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_staleness_compares_the_recorded_configuration_with_the_profile(tmp_path):
    current = get_profile("offline").to_dict()
    fresh = {"commit": "abc", "profile": "offline", "config": current,
             "resolved": {"device": "cuda", "precision": "bf16", "threads": 16}}
    assert pipeline.staleness(_rendered(tmp_path / "02_a.ipynb", fresh)) == []
    # the device and precision chosen do not make outputs stale
    other_device = json.loads(json.dumps(fresh))
    other_device["config"]["runtime"]["device"] = "cuda"
    assert pipeline.staleness(_rendered(tmp_path / "02_b.ipynb", other_device)) == []
    changed = json.loads(json.dumps(fresh))
    changed["config"]["ppo"]["steps"] = 100
    changed["config"]["generator"]["lr"] = 1e-3
    assert pipeline.staleness(_rendered(tmp_path / "04_c.ipynb", changed)) == [
        f"04_c.ipynb: generator.lr recorded 0.001, current {current['generator']['lr']!r}",
        f"04_c.ipynb: ppo.steps recorded 100, current {current['ppo']['steps']!r}"]
    gone = json.loads(json.dumps(fresh))
    gone["config"]["ppo"]["old_knob"] = 1
    del gone["config"]["ppo"]["kl_estimator"]
    assert pipeline.staleness(_rendered(tmp_path / "04_d.ipynb", gone)) == [
        "04_d.ipynb: ppo.kl_estimator recorded '(absent)', current 'sampled'",
        "04_d.ipynb: ppo.old_knob recorded 1, current '(absent)'"]
    # a section its source does not read (notebook 01 reads no PPO setting) cannot make it stale
    assert pipeline.staleness(_rendered(tmp_path / "01_data_exploration.ipynb", changed)) == []
    assert pipeline.sections_read(pipeline.NOTEBOOK_DIR / "02_empathy_identifiers.ipynb") == {
        "data", "identifiers", "judge"}
    assert pipeline.staleness(_rendered(tmp_path / "05_e.ipynb")) == [
        "05_e.ipynb: records no configuration (rendered before configurations were recorded)"]
    assert "unknown profile 'nope'" in pipeline.staleness(
        _rendered(tmp_path / "05_f.ipynb", {**fresh, "profile": "nope"}))[0]


COMMITTED = sorted((pipeline.REPO_ROOT / "outputs").glob("*/[0-9][0-9]_*.ipynb"))


@pytest.mark.committed_outputs
@pytest.mark.skipif(not COMMITTED, reason="no committed rendered notebooks under outputs/")
def test_committed_rendered_notebooks_are_current():
    """Regenerate what this lists: `python -m emprl.ops.pipeline --profile <profile>`."""
    stale = [f"outputs/{nb.parent.name}/{reason}" for nb in COMMITTED for reason in pipeline.staleness(nb)]
    assert not stale, "stale rendered notebooks under outputs/:\n" + "\n".join(stale)


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
    from emprl.eval.evaluation import data_label

    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)
    assert data_label() == "bundled smoke sample"
    (tmp_path / "ed_data").mkdir()
    assert data_label(tmp_path / "ed_data") == "data folder ed_data"
    monkeypatch.setenv("EMPRL_DATA_DIR", str(tmp_path / "ed_data"))
    assert data_label() == data_label(str(tmp_path / "ed_data")) == "$EMPRL_DATA_DIR"


def test_a_partial_run_updates_the_timings_of_its_notebooks(tmp_path):
    nbdir, out = tmp_path / "nbs", tmp_path / "out"
    nbdir.mkdir()
    for name in ("01_a.ipynb", "02_b.ipynb"):
        _notebook(nbdir / name, "x = 1")
    pipeline.run("smoke", only="01", out=str(out), notebook_dir=nbdir)
    pipeline.run("smoke", only="02", out=str(out), notebook_dir=nbdir)
    timings = json.loads((out / "metrics" / "pipeline_timings.json").read_text())
    assert sorted(timings) == ["01_a.ipynb", "02_b.ipynb"]
    timings["00_removed.ipynb"] = 1.0  # a notebook that no longer exists
    (out / "metrics" / "pipeline_timings.json").write_text(json.dumps(timings))
    pipeline.run("smoke", out=str(out), notebook_dir=nbdir, only=None)  # a full run starts afresh
    assert sorted(json.loads((out / "metrics" / "pipeline_timings.json").read_text())) == ["01_a.ipynb", "02_b.ipynb"]


def test_jobs_run_notebooks_side_by_side_after_what_they_read(tmp_path, monkeypatch):
    """--jobs 2: each notebook in its own process with cores // 2 threads; 04 starts only after 02 and 03
    (pipeline.DEPENDS) have written their outputs; every notebook's timing is kept; a failure is named."""
    nbdir, out = tmp_path / "nbs", tmp_path / "out"
    nbdir.mkdir()
    write = ("import os; d = os.environ['EMPRL_OUTPUT_DIR']\n"
             "open(d + '/done_NAME', 'w').write(os.environ['EMPRL_THREADS'])")
    for name in ("01", "02", "03"):
        _notebook(nbdir / f"{name}_x.ipynb", write.replace("NAME", name))
    _notebook(nbdir / "04_y.ipynb", "import os; d = os.environ['EMPRL_OUTPUT_DIR']\n"
              "assert os.path.exists(f'{d}/done_02') and os.path.exists(f'{d}/done_03')\n"
              + write.replace("NAME", "04"))
    monkeypatch.delenv("EMPRL_THREADS", raising=False)
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 4)  # the children get 4 // 2 threads
    assert pipeline.main(["--profile", "offline", "--jobs", "2", "--out", str(out), "--notebook-dir", str(nbdir),
                          "--set", "ppo.steps=3"]) == 0
    assert {(out / f"done_{n}").read_text() for n in ("01", "02", "03", "04")} == {"2"}
    timings = json.loads((out / "metrics" / "pipeline_timings.json").read_text())
    assert sorted(timings) == ["01_x.ipynb", "02_x.ipynb", "03_x.ipynb", "04_y.ipynb"]
    rendered = nbformat.read(out / "04_y.ipynb", as_version=4)
    assert rendered.metadata["emprl"]["config"]["ppo"]["steps"] == 3  # the override reached the child
    _notebook(nbdir / "03_x.ipynb", "raise ValueError('boom in 03')")
    with pytest.raises(RuntimeError, match=r"03 failed .* not run: 04"):
        pipeline.run_parallel("smoke", 2, out=str(tmp_path / "out2"), notebook_dir=nbdir)


def test_a_setting_added_as_before_is_not_stale_where_a_render_predates_it(tmp_path):
    current = get_profile("smoke").to_dict()
    record = {"profile": "smoke", "preset": "paper", "config": json.loads(json.dumps(current))}
    del record["config"]["ppo"]["reward"]  # rendered before ppo.reward existed: the paper's reward
    assert pipeline.ADDED_AS_BEFORE["ppo.reward"] == "paper" == current["ppo"]["reward"]
    assert pipeline.staleness(_rendered(tmp_path / "04_a.ipynb", record)) == []
    other = get_profile("smoke", {"ppo.reward": "chance_corrected"}).to_dict()  # what the render would now miss
    assert pipeline.ADDED_AS_BEFORE["ppo.reward"] != other["ppo"]["reward"]


def test_a_full_run_ends_by_judging_and_rebuilding_a_partial_run_does_not(tmp_path, monkeypatch):
    nbdir, out = tmp_path / "nbs", tmp_path / "out"
    nbdir.mkdir()
    _notebook(nbdir / "01_a.ipynb", "x = 1")
    calls = []
    monkeypatch.setattr(pipeline, "judge_and_rebuild", lambda *a: calls.append(a[:2]) or [])
    pipeline.run("smoke", only="01", out=str(out), notebook_dir=nbdir)
    assert calls == []
    pipeline.run("smoke", out=str(out), notebook_dir=nbdir)
    assert calls == [(out, "smoke")]


def test_judge_and_rebuild_rebuilds_each_test_split_from_the_committed_levels(tmp_path):
    from test_rebuild import _write_run

    assert pipeline.judge_and_rebuild(tmp_path, "smoke", None, tmp_path / "no_judge") == []  # nothing evaluated
    _write_run(tmp_path)  # the test split's records, as notebook 05 writes them; no judge trained
    assert pipeline.judge_and_rebuild(tmp_path, "smoke", None, tmp_path / "no_judge") == ["test"]
    table = (tmp_path / "tables" / "rebuilt_table_ii_reward.md").read_text()
    assert "EmpRL" in table and "w/o RL" in table
