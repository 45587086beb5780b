"""Fetch the official datasets into a data directory: ``python -m emprl.download --data-dir DIR``.

- EmpatheticDialogues (Rashkin et al. 2019, CC BY-NC 4.0): the authors' tarball, extracted to
  ``DIR/empatheticdialogues/{train,valid,test}.csv``. No published checksum; its sha256 is printed.
- EPITOME Reddit files (Sharma et al. 2020): ``DIR/epitome/<name>-reddit.csv``, sha256-checked against
  the authors' release (commit 0e11f989 of behavioral-data/Empathy-Mental-Health).

Every file is written to a temporary file in the target folder and moved into place (``os.replace``),
so an interrupted run leaves no partial file. Files already present (and, for EPITOME, with the right
hash) are kept. Offline, the error says which files to put where by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
import urllib.error
import urllib.request
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emprl.download",
        description="Download EmpatheticDialogues and the EPITOME Reddit files into a data directory.",
        epilog=manual_instructions(Path("DIR")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", default=os.environ.get("EMPRL_DATA_DIR") or None,
                        help="target directory (default: $EMPRL_DATA_DIR)")
    parser.add_argument("--only", choices=DATASETS, action="append", help="fetch only this dataset (repeatable)")
    parser.add_argument("--force", action="store_true", help="download again even if the files are present")
    args = parser.parse_args(argv)
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
