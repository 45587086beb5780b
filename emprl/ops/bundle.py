"""A self-contained bundle that runs the pipeline on an air-gapped GPU machine.

    python -m emprl.ops.bundle OUTDIR [--python 3.12] [--platform manylinux2014_x86_64] [--data-dir DIR]
    python -m emprl.ops.bundle --pack RUN_OUT DEST      (used by run.sh: archive a run's outputs)

OUTDIR (under 60 MB) holds:

    run.sh            ./run.sh RESULTS [--profile gpu] [--device cuda] [--set section.param=value ...]
    wheels/           what the target lacks (TARGET_LACKS and their dependencies) and our emprl wheel
    data.tar.gz       EmpatheticDialogues and EPITOME from EMPRL_DATA_DIR
    minilm/           all-MiniLM-L6-v2 as a bfloat16 copy of the sha256-verified original, with its manifest
    notebooks/        the numbered notebooks the pipeline executes
    manifest.json     the commit, target, and every file's sha256 (run.sh checks them before anything runs)

The target (our GPU test machine, NOTES.md section 5) has Python 3.12, torch, transformers 5.17,
accelerate, peft, pandas, seaborn, scikit-learn, safetensors and tokenizers; it lacks the notebook stack.
Our transformers (5.24, a 13.5 MB wheel) does not fit beside MiniLM's 45 MB, so the bundle uses the
target's 5.17; emprl's tests pass on 5.17 once ``PrefixT5`` also sets the prefix attention on the T5
encoder's and decoder's own configs (5.17 copies the config into each stack). Wheels come from
``pip download --only-binary=:all:`` for the stated Python and platform, kept in a wheelhouse cache so a rebuild needs no network.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from emprl import data
from emprl.models import encoders
from emprl.run import REPO_ROOT

MAX_BUNDLE_BYTES = 60 * 10**6
MAX_ARCHIVE_BYTES = 16 * 10**6
ARCHIVE_OVERHEAD = 2048  # gzip header and trailer, tar's end-of-archive blocks
TARGET_PYTHON = "3.12"
TARGET_PLATFORM = "manylinux2014_x86_64"
# What the target lacks to run the notebooks (NOTES.md section 5); their dependencies come along.
TARGET_LACKS = ("papermill", "nbclient", "nbformat", "ipykernel", "nbval")
# Dependencies the target already has (its torch, transformers, pandas and seaborn stacks): shipping them
# would shadow the installed, mutually compatible versions.
TARGET_HAS = frozenset({
    "numpy", "requests", "idna", "urllib3", "certifi", "charset-normalizer", "tqdm", "packaging", "pyyaml",
    "python-dateutil", "tzdata", "pytz", "six", "typing-extensions", "filelock", "fsspec", "jinja2", "markupsafe",
})
# Imported only when present (IPython's completer, ipykernel's debugger): 10 MB the pipeline never uses.
OPTIONAL = frozenset({"jedi", "debugpy"})
# The files the pipeline reads from the data directory (emprl.data).
DATA_FILES = (
    *(f"empatheticdialogues/{s}.jsonl.gz" for s in ("train", "valid", "test")),
    *(f"epitome/{m}-reddit.csv" for m in ("emotional-reactions", "interpretations", "explorations")),
)
# What run.sh archives from a run's output folder: no checkpoints, caches, logs or data-bearing files.
PACKED = ("*.ipynb", "report.md", "tables/*", "figures/*", "metrics/*")


def sha256(path: Path) -> str:
    return encoders.sha256_file(path)


def _dist_name(wheel: Path) -> str:
    """The normalized distribution name of a wheel file (PEP 503)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def _python_tag(python: str) -> str:
    return "cp" + python.replace(".", "")


def download_wheels(packages: list[str], wheelhouse: Path, python: str, platform: str, dest: Path) -> list[Path]:
    """The binary wheels of ``packages`` and their dependencies for the target, copied into ``dest``.

    Resolved from the ``wheelhouse`` cache alone when it has them all (no network), else with ``pip download``
    from the index; the cache keeps what was downloaded.
    """
    wheelhouse.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python,
            "--implementation", "cp", "--abi", _python_tag(python), "--platform", platform,
            "--find-links", str(wheelhouse)]
    with tempfile.TemporaryDirectory() as tmp:
        offline = subprocess.run([*base, "--no-index", "-d", tmp, *packages], capture_output=True, text=True)
        if offline.returncode != 0:
            online = subprocess.run([*base, "-d", tmp, *packages], capture_output=True, text=True)
            if online.returncode != 0:
                raise RuntimeError(f"pip download failed for {packages} (Python {python}, {platform}); without "
                                   f"network, put the wheels in {wheelhouse} first.\n{online.stderr[-2000:]}")
        kept = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            if not (wheelhouse / wheel.name).exists():
                shutil.copy2(wheel, wheelhouse / wheel.name)
            if _dist_name(wheel) not in TARGET_HAS | OPTIONAL:
                kept.append(Path(shutil.copy2(wheel, dest / wheel.name)))
    return kept


def build_emprl_wheel(dest: Path) -> Path:
    """Our own wheel (no dependencies pinned at install: run.sh installs with --no-deps)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"  # a clean copy: no stale build/ or egg-info from the checkout
        shutil.copytree(REPO_ROOT / "emprl", src / "emprl", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO_ROOT / name, src / name)
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                 "-q", "-w", tmp, str(src)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not build the emprl wheel (needs setuptools):\n{result.stderr[-2000:]}")
        built = next(Path(tmp).glob("emprl-*.whl"))
        return Path(shutil.copy2(built, dest / built.name))


def pack_data(data_dir: Path, dest: Path) -> Path:
    """``data.tar.gz`` of DATA_FILES (+ READMEs); a missing file is an error naming it."""
    missing = [f for f in DATA_FILES if not (data_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"data directory {data_dir} lacks {missing}: set EMPRL_DATA_DIR to a folder with "
                                f"the real data (`{data.DOWNLOAD_COMMAND}` fetches it)")
    target = dest / "data.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for name in [*DATA_FILES, "empatheticdialogues/README.md", "epitome/README.md"]:
            if (data_dir / name).is_file():
                tar.add(data_dir / name, arcname=f"data/{name}", filter=_anonymous)
    return target


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def git_commit() -> str | None:
    from emprl.ops.pipeline import commit

    return commit()


def build(outdir: str | Path, python: str = TARGET_PYTHON, platform: str = TARGET_PLATFORM,
          lacks: tuple[str, ...] = TARGET_LACKS, data_dir: str | Path | None = None,
          wheelhouse: str | Path | None = None) -> dict:
    """Write the bundle to ``outdir`` (replaced if it holds a previous bundle); return its manifest."""
    out = Path(outdir).resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise FileExistsError(f"{out} exists and is not a bundle: choose an empty or new folder")
        shutil.rmtree(out)
    data_root = data.resolve_data_dir(data_dir)
    if data_root is None:
        raise FileNotFoundError("no data: set EMPRL_DATA_DIR (or --data-dir) to the folder with "
                                "empatheticdialogues/ and epitome/")
    (out / "wheels").mkdir(parents=True)
    cache = Path.home() / ".cache" / "emprl" / "wheelhouse" / f"{_python_tag(python)}-{platform}"
    wheelhouse = Path(wheelhouse or cache)
    if lacks:
        download_wheels(list(lacks), wheelhouse, python, platform, out / "wheels")
    build_emprl_wheel(out / "wheels")
    pack_data(data_root, out)
    encoders.write_minilm_bf16(out / "minilm")
    shutil.copytree(REPO_ROOT / "notebooks", out / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    shutil.copy2(Path(__file__).with_name("bundle_run.sh"), out / "run.sh")
    os.chmod(out / "run.sh", 0o755)
    files = {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"commit": git_commit(), "python": python, "platform": platform, "lacks": list(lacks),
                "minilm": json.loads((out / "minilm" / encoders.MANIFEST).read_text()), "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if size > MAX_BUNDLE_BYTES:
        biggest = sorted(((p.stat().st_size, str(p.relative_to(out))) for p in out.rglob("*") if p.is_file()),
                         reverse=True)[:5]
        raise RuntimeError(f"bundle is {size / 1e6:.1f} MB, over the {MAX_BUNDLE_BYTES / 1e6:.0f} MB limit; "
                           f"largest files: {[(n, f'{s / 1e6:.1f} MB') for s, n in biggest]}")
    manifest["size_bytes"] = size
    return manifest


def pack_outputs(run_out: str | Path, dest: str | Path, name: str = "emprl-outputs",
                 max_bytes: int = MAX_ARCHIVE_BYTES) -> list[Path]:
    """Archive a run's rendered notebooks, report, tables, figures and metrics into ``dest`` as
    ``<name>-N.tar.gz`` files of at most ``max_bytes`` each (files are never split; one larger than
    the limit is an error naming it)."""
    run_out, dest = Path(run_out), Path(dest)
    files = sorted({p for pattern in PACKED for p in run_out.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"no rendered notebooks, tables, figures or metrics in {run_out}")
    dest.mkdir(parents=True, exist_ok=True)
    archives: list[Path] = []
    group: list[Path] = []

    def flush() -> None:
        if group:
            path = dest / f"{name}-{len(archives) + 1}.tar.gz"
            with tarfile.open(path, "w:gz") as tar:
                for f in group:
                    tar.add(f, arcname=str(f.relative_to(run_out)), filter=_anonymous)
            if path.stat().st_size > max_bytes:  # the bound above makes this unreachable; never ship one over
                raise RuntimeError(f"{path} is {path.stat().st_size} bytes, over the {max_bytes}-byte limit")
            archives.append(path)
            group.clear()

    budget = ARCHIVE_OVERHEAD
    for f in files:
        # an upper bound on what the file adds to the gzipped tar: deflate expands incompressible data by
        # well under 0.1%, and tar adds a 512-byte header and padding to 512 bytes
        cost = int(f.stat().st_size * 1.001) + 1024
        if ARCHIVE_OVERHEAD + cost > max_bytes:
            raise RuntimeError(f"{f.relative_to(run_out)} is {f.stat().st_size / 1e6:.1f} MB, over the "
                               f"{max_bytes / 1e6:.0f} MB archive limit")
        if budget + cost > max_bytes:
            flush()
            budget = ARCHIVE_OVERHEAD
        group.append(f)
        budget += cost
    flush()
    return archives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.ops.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="the bundle folder to write (or, with --pack, the archives' folder)")
    parser.add_argument("--python", default=TARGET_PYTHON, help=f"target Python (default {TARGET_PYTHON})")
    parser.add_argument("--platform", default=TARGET_PLATFORM, help=f"target platform (default {TARGET_PLATFORM})")
    parser.add_argument("--lacks", default=",".join(TARGET_LACKS),
                        help="comma-separated packages the target lacks (default: %(default)s; '' for none)")
    parser.add_argument("--data-dir", default=None, help="data folder (default $EMPRL_DATA_DIR)")
    parser.add_argument("--wheelhouse", default=None, help="wheel cache (default ~/.cache/emprl/wheelhouse/...)")
    parser.add_argument("--pack", default=None, metavar="RUN_OUT", help="archive RUN_OUT's outputs into OUTDIR")
    parser.add_argument("--name", default="emprl-outputs", help="archive name prefix (with --pack)")
    args = parser.parse_args(argv)
    try:
        if args.pack:
            for archive in pack_outputs(args.pack, args.outdir, args.name):
                print(f"{archive} ({archive.stat().st_size / 1e6:.2f} MB)")
            return 0
        lacks = tuple(p.strip() for p in args.lacks.split(",") if p.strip())
        manifest = build(args.outdir, args.python, args.platform, lacks, args.data_dir, args.wheelhouse)
    except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as err:
        print(f"[emprl.ops.bundle] error: {err}", file=sys.stderr)
        return 1
    print(f"[emprl.ops.bundle] {args.outdir}: {manifest['size_bytes'] / 1e6:.1f} MB, {len(manifest['files'])} files, "
          f"Python {manifest['python']} on {manifest['platform']}; run it with ./run.sh RESULTS --profile gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
