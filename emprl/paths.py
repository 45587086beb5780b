"""Where data is read from and where runs write to."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data directory: the explicit argument, else ``$EMPRL_DATA_DIR``, else None.

    None means "no real data": the smoke profile then falls back to the bundled sample.
    """
    value = explicit if explicit not in (None, "") else os.environ.get("EMPRL_DATA_DIR")
    if value in (None, ""):
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {path} does not exist (set EMPRL_DATA_DIR or pass data_dir; "
            "`python -m emprl.download --data-dir DIR` fetches the official files)"
        )
    return path


def sample_data_dir() -> Path:
    """The bundled smoke sample (invented data written by emprl.smoke_sample into a cache folder)."""
    from emprl import smoke_sample

    return smoke_sample.ensure()


def output_dir(profile: str, explicit: str | os.PathLike | None = None) -> Path:
    """The run's output folder: explicit, else ``$EMPRL_OUTPUT_DIR``, else ``outputs/<profile>``."""
    value = explicit if explicit not in (None, "") else os.environ.get("EMPRL_OUTPUT_DIR")
    path = Path(value) if value not in (None, "") else REPO_ROOT / "outputs" / profile
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(out: Path, *parts: str) -> Path:
    """A git-ignored folder for weights under the run's output folder."""
    path = Path(out).joinpath("checkpoints", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
