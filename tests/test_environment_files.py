"""environment.yml (conda) and pyproject.toml (pip) must list the same dependencies."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_conda_and_pip_dependencies_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    conda_lines = [
        line.strip()[2:].strip()
        for line in (ROOT / "environment.yml").read_text().splitlines()
        if line.strip().startswith("- ") and line.startswith("      ")
    ]
    conda_side = {_name(r): r.replace(" ", "") for r in conda_lines if not r.startswith("-e")}
    assert conda_side == pip_side
