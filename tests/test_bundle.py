"""The air-gapped bundle: contents, manifest, size limit, archives, and run.sh from a temporary copy.

The bundle here is built for the local Python with no extra wheels (this machine lacks nothing), from
the bundled smoke sample as data, so it needs no network; run.sh still installs our wheel with
``pip --no-index`` and runs the pipeline at the smoke profile from a copy of the bundle.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pytest
import torch

from emprl.ops import bundle
from emprl import data
from emprl.models import encoders

LOCAL_PYTHON = "%d.%d" % sys.version_info[:2]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "emprl-bundle"
    manifest = bundle.build(out, python=LOCAL_PYTHON, lacks=(), data_dir=data.sample_data_dir())
    return out, manifest


@pytest.mark.slow
def test_bundle_contents_manifest_and_size(built):
    out, manifest = built
    assert (out / "run.sh").stat().st_mode & 0o111
    assert [p.name.split("-")[0] for p in (out / "wheels").glob("*.whl")] == ["emprl"]
    assert sorted(p.name for p in (out / "notebooks").glob("*.ipynb"))[0] == "01_data_exploration.ipynb"
    with tarfile.open(out / "data.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"data/{f}" for f in bundle.DATA_FILES} <= names
    # every file is in the manifest with its sha256, computed here independently
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert all(_sha(out / name) == digest for name, digest in manifest["files"].items())
    assert json.loads((out / "manifest.json").read_text())["files"] == manifest["files"]
    # MiniLM: a bfloat16 copy of the verified original, its hash in both manifests
    minilm = json.loads((out / "minilm" / "manifest.json").read_text())
    copy_sha = _sha(out / "minilm" / "model.safetensors")
    assert minilm["sha256"] == copy_sha == manifest["files"]["minilm/model.safetensors"]
    assert minilm["source_sha256"] == encoders.MINILM_SHA256
    from safetensors.torch import load_file
    weights = load_file(out / "minilm" / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.bfloat16}
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size == manifest["size_bytes"] < bundle.MAX_BUNDLE_BYTES


@pytest.mark.slow
def test_minilm_copy_loads_after_verification_and_a_tampered_copy_does_not(built, tmp_path, monkeypatch):
    out, _ = built
    monkeypatch.setenv(encoders.MINILM_DIR_ENV, str(out / "minilm"))
    encoder = encoders.load_encoder("minilm")
    assert next(encoder.parameters()).dtype == torch.float32  # fp32 master weights from the bf16 copy
    copy = tmp_path / "minilm"
    shutil.copytree(out / "minilm", copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setenv(encoders.MINILM_DIR_ENV, str(copy))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        encoders.load_encoder("minilm")
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        encoders.minilm_path()


def test_bundle_refuses_a_folder_that_is_not_a_bundle_and_missing_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a bundle"):
        bundle.build(tmp_path / "mine", lacks=(), data_dir=data.sample_data_dir())
    (tmp_path / "empty_data").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks"):
        bundle.pack_data(tmp_path / "empty_data", tmp_path)


def test_pack_outputs_keeps_results_only_and_respects_the_size_limit(tmp_path):
    run = tmp_path / "run"
    files = {"01_a.ipynb": 9000, "02_b.ipynb": 9000, "report.md": 1000, "tables/t.csv": 7000,
             "figures/f.png": 15000, "metrics/m.json": 3000, "checkpoints/identifiers/x/model.safetensors": 5000, "cache/gold.pt": 100,
             "runs/ppo_emprl/log.csv": 100, "generations/test_generations.csv": 100}
    for name, size in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(os.urandom(size))  # incompressible: the archive is about the files' size
    archives = bundle.pack_outputs(run, tmp_path / "results", "emprl-smoke", max_bytes=20_000)
    assert len(archives) >= 3 and all(a.stat().st_size <= 20_000 for a in archives)
    packed = []
    for a in archives:
        with tarfile.open(a) as tar:
            packed += tar.getnames()
    assert sorted(packed) == sorted(["01_a.ipynb", "02_b.ipynb", "report.md", "tables/t.csv", "figures/f.png",
                                     "metrics/m.json"])
    with pytest.raises(RuntimeError, match="figures/f.png is 0.0 MB, over"):
        bundle.pack_outputs(run, tmp_path / "r2", max_bytes=16_000)
    with pytest.raises(FileNotFoundError, match="no rendered notebooks"):
        bundle.pack_outputs(tmp_path / "nothing", tmp_path / "r3")


def _copy(built, tmp_path, name="bundle-copy") -> Path:
    copy = tmp_path / name
    shutil.copytree(built[0], copy)
    return copy


def _run_sh(copy: Path, *args, env_extra=None, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("EMPRL_DATA_DIR", "EMPRL_OUTPUT_DIR", "PYTHONPATH",
                                                             "EMPRL_MINILM_DIR", "EMPRL_DEVICE")}
    env.update({"PYTHON": sys.executable, "EMPRL_THREADS": "1", **(env_extra or {})})
    return subprocess.run(["bash", str(copy / "run.sh"), *args], cwd=copy.parent, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_run_sh_names_each_failure(built, tmp_path):
    copy = _copy(built, tmp_path)
    wheel = next((copy / "wheels").glob("emprl-*.whl"))
    wheel.rename(tmp_path / wheel.name)
    res = _run_sh(copy, str(tmp_path / "r1"), "--profile", "smoke")
    assert res.returncode != 0 and f"missing file wheels/{wheel.name} (a wheel the target needs)" in res.stderr
    (tmp_path / wheel.name).rename(wheel)
    with open(copy / "data.tar.gz", "ab") as f:
        f.write(b"x")
    res = _run_sh(copy, str(tmp_path / "r2"), "--profile", "smoke")
    assert res.returncode != 0 and "wrong sha256 for data.tar.gz" in res.stderr
    (copy / "data.tar.gz").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["data.tar.gz"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    res = _run_sh(copy, str(tmp_path / "r3"), "--profile", "smoke")
    assert res.returncode != 0 and "no data: the bundle has no data.tar.gz" in res.stderr
    if not torch.cuda.is_available():
        fresh = _copy(built, tmp_path, "fresh")
        res = _run_sh(fresh, str(tmp_path / "r4"), "--profile", "smoke", "--device", "cuda")
        assert res.returncode != 0 and "--device cuda, but torch sees no CUDA device" in res.stderr
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3", "r4"))


@pytest.mark.slow
def test_run_sh_runs_the_smoke_pipeline_offline_and_writes_archives(built, tmp_path):
    """Notebook 02 only: it exercises what the bundle carries (data, the MiniLM copy, papermill, the wheel)."""
    copy = _copy(built, tmp_path)
    results = tmp_path / "results"
    res = _run_sh(copy, str(results), "--profile", "smoke", "--device", "cpu", "--only", "02",
                  env_extra={"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    archives = sorted(results.glob("emprl-smoke-*.tar.gz"))
    assert archives and all(a.stat().st_size <= bundle.MAX_ARCHIVE_BYTES for a in archives)
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
        nb = nbformat.reads(tar.extractfile("02_empathy_identifiers.ipynb").read().decode(), as_version=4)
    assert "tables/02_table_i_identifiers.csv" in names and "metrics/config.json" in names
    assert not any(n.startswith(("checkpoints", "cache")) for n in names)
    recorded = nb.metadata["emprl"]
    assert recorded["commit"] == json.loads((copy / "manifest.json").read_text())["commit"]
    assert recorded["profile"] == "smoke"
    assert recorded["resolved"]["device"] == "cpu"
