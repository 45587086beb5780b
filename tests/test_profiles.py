"""Profiles and presets: every section checks itself when built; a preset means the same by every route."""

import dataclasses
import json

import nbformat
import pytest
import torch

import emprl
from emprl.ops import pipeline
from emprl.rl import study
from emprl.rl.ppo_train import RESUMABLE_CHANGES, _resume_key
from emprl.profiles import (CHOICES, PRESETS, GeneratorConfig, PPOConfig, RuntimeConfig, get_profile,
                            with_settings)
from emprl.rl.reward import KL_ESTIMATORS


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("EMPRL_DEVICE", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- a section checks itself


def test_replace_and_direct_construction_are_checked_as_get_profile_is():
    ppo = get_profile("smoke").ppo
    with pytest.raises(ValueError, match=r"^ppo.lr must be > 0, got -1$"):
        dataclasses.replace(ppo, lr=-1)
    with pytest.raises(ValueError, match="ppo.kl_estimator must be one of"):
        PPOConfig(kl_estimator="exact")
    with pytest.raises(ValueError, match="ppo.steps must be int, got 1.5"):
        dataclasses.replace(ppo, steps=1.5)
    with pytest.raises(ValueError, match=r"ppo.mini_batch_size x ppo.grad_accum \(3 x 1\) must divide"):
        PPOConfig(batch_size=4, mini_batch_size=3)
    with pytest.raises(ValueError, match="ppo.min_new_tokens must be > 0"):
        PPOConfig(min_new_tokens=0)
    with pytest.raises(ValueError, match=r"generator.num_heads \(3\) must divide generator.d_model \(32\)"):
        GeneratorConfig(d_model=32, num_heads=3)
    with pytest.raises(ValueError, match="runtime.device must be"):
        RuntimeConfig(device="tpu")
    # through get_profile the message also names the profile
    with pytest.raises(ValueError, match=r"profile 'smoke': ppo.lr must be > 0, got -1"):
        get_profile("smoke", {"ppo.lr": -1})
    assert dataclasses.replace(ppo, lr=1e-4).lr == 1e-4


def test_the_kl_estimator_choices_are_the_rewards():
    assert CHOICES["ppo.kl_estimator"] == KL_ESTIMATORS


def test_the_resume_key_holds_every_setting_that_changes_numbers():
    cfg, gen = PPOConfig(), GeneratorConfig()
    key = _resume_key(cfg, gen, "emprl", 0, 16, 1)
    assert set(key["ppo"]) == {f.name for f in dataclasses.fields(PPOConfig)} - set(RESUMABLE_CHANGES)
    assert key["ppo"]["kl_estimator"] == "sampled"  # defaults are in the key too
    assert key["sampling"]["length_counts_start_token"] is False and key["reward_dtype"] == "float32"
    assert _resume_key(dataclasses.replace(cfg, steps=5, micro_batch_size=2), gen, "emprl", 0, 16, 1) == key
    assert _resume_key(dataclasses.replace(cfg, ratio="sampler"), gen, "emprl", 0, 16, 1) != key
    assert _resume_key(cfg, gen, "emprl", 0, 16, 1, reward_dtype="bfloat16")["reward_dtype"] == "bfloat16"


# --------------------------------------------------------------------------- presets


def test_the_repaired_preset_is_the_studys_selected_arm():
    P = get_profile("offline", preset="repaired")
    r = P.ppo
    got = (r.value_lr, r.critic_warmup_steps, r.value_detach, r.ratio, r.kl_in_loss, r.kl_estimator, r.lr)
    assert got == (1e-3, 20, True, "sampler", True, "full", 1e-4)
    assert r.steps == get_profile("offline").ppo.steps  # a size: the profile's
    assert study.arm_settings(get_profile("offline"), "repaired, lr 1e-4") == r


def test_study_arms_are_built_from_presets():
    P = get_profile("offline", {"ppo.batch_size": 16})  # the profile's own settings stay under the arm's
    for name, arm in study.ARMS.items():
        assert arm.preset in PRESETS
        expected = get_profile("offline", {"ppo": {"batch_size": 16, **arm.overrides}}, preset=arm.preset).ppo
        assert study.arm_settings(P, name) == expected
    assert study.arm_settings(P, "repaired, lr 1e-3", steps=3) == dataclasses.replace(
        get_profile("offline", {"ppo.batch_size": 16}, preset="repaired").ppo, lr=1e-3, steps=3)
    # the committed output folders keep their names
    assert [study.arm_folder(n) for n in study.ARMS] == [
        "paper", "paper_lr_1e-4", "paper_lr_1e-3", "repaired_lr_1e-4", "repaired_lr_1e-3"]


def test_with_settings_layers_a_preset_on_a_built_profile():
    built = get_profile("smoke", {"ppo.steps": 3})
    layered = with_settings(built, "authors", {"ppo.lr": 0.5})
    assert layered == get_profile("smoke", {"ppo": {"steps": 3, "lr": 0.5}}, preset="authors")
    assert with_settings(built) == built
    with pytest.raises(ValueError, match="unknown preset 'trl'"):
        with_settings(built, "trl")


def _notebook_dumping_the_profile(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\npreset = "paper"\ndata_dir = None\n'
                                       'output_dir = None\nseed = 0\ndevice = None\noverrides = None')
    params.metadata["tags"] = ["parameters"]
    body = ("import json, os, emprl\n"
            "run = emprl.setup(profile, seed, data_dir, output_dir, device, overrides, preset=preset)\n"
            "with open(os.environ['EMPRL_OUTPUT_DIR'] + '/profile.json', 'w') as f:\n"
            "    json.dump(run.profile.to_dict(), f)")
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_a_preset_is_the_same_by_every_route(tmp_path, cpu_only):
    expected = get_profile("smoke", {"ppo.steps": 3, "runtime.device": "cpu"}, preset="repaired")
    by_setup = emprl.setup("smoke", output_dir=tmp_path / "setup", device="cpu", overrides={"ppo.steps": 3},
                           preset="repaired")
    assert by_setup.profile == expected and by_setup.config()["preset"] == "repaired"
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook_dumping_the_profile(nbdir / "01_dump.ipynb")
    out = tmp_path / "out"
    code = pipeline.main(["--profile", "smoke", "--preset", "repaired", "--out", str(out), "--device", "cpu",
                          "--set", "ppo.steps=3", "--notebook-dir", str(nbdir)])
    assert code == 0
    assert json.loads((out / "profile.json").read_text()) == expected.to_dict()  # papermill's parameter
    recorded = nbformat.read(out / "01_dump.ipynb", as_version=4).metadata["emprl"]
    assert recorded["preset"] == "repaired"
    assert recorded["config"] == json.loads(json.dumps(expected.to_dict()))
    # staleness compares with the recorded preset's profile: only the override differs
    assert pipeline.staleness(out / "01_dump.ipynb") == ["01_dump.ipynb: ppo.steps recorded 3, current 4"]


def test_an_unknown_preset_is_a_clear_error_by_every_route(tmp_path, cpu_only, capsys):
    with pytest.raises(ValueError, match=r"unknown preset 'trl': choose one of \['authors', 'paper', 're"):
        get_profile("smoke", preset="trl")
    with pytest.raises(ValueError, match="unknown preset 'trl'"):
        emprl.setup("smoke", output_dir=tmp_path, preset="trl")
    assert pipeline.main(["--profile", "smoke", "--preset", "trl", "--out", str(tmp_path)]) == 1
    assert "unknown preset 'trl'" in capsys.readouterr().err


def test_every_notebook_passes_its_preset_to_setup():
    for path in pipeline.discover():
        nb = nbformat.read(path, as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert 'preset = "paper"' in params.source, path.name
        calls = [c.source for c in nb.cells if c.cell_type == "code" and "emprl.setup(" in c.source]
        assert len(calls) == 1 and "preset=preset" in calls[0], path.name
