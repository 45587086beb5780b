"""nbval can catch a wrong number: notebook 05's checked cell passes as is and fails when a metric formula
is broken on purpose.

The break is a ``sitecustomize.py`` on the PYTHONPATH of the nbval run, which the notebook's kernel
inherits: it replaces one formula of ``emprl.eval.metrics`` by a plausible wrong variant before any cell runs.
Notebooks 02-04 (identifiers, generator, PPO policy) run once first, at the smoke profile (about two
minutes on two cores).
"""

import json
import os
import subprocess
import sys

import pytest

from emprl.ops import pipeline
from emprl import run

NOTEBOOK = run.REPO_ROOT / "notebooks" / "05_evaluation.ipynb"

BREAKS = {
    # distinct n-grams counted within each response and summed, instead of over all responses (Dist-n)
    "dist_n_per_response": """
import numpy as np
from emprl.eval import metrics

def distinct(self, weights):
    total = float(weights @ self.lengths)
    per_response = np.asarray(self.matrix.sum(axis=1)).ravel()
    return 100.0 * float(weights @ per_response) / total if total else 0.0

metrics._NgramIncidence.distinct = distinct
""",
    # the share of levels equal to gold (accuracy) instead of the weighted F1 (Emp-F1)
    "emp_f1_as_accuracy": """
import numpy as np
from emprl.eval import metrics

def emp_f1(gold, pred, weights=None):
    hits = (np.asarray(gold) == np.asarray(pred)).mean(axis=1)
    return 100.0 * float(np.average(hits, weights=weights))

metrics.emp_f1 = emp_f1
""",
}


def _checked_cell_index() -> int:
    """The checked cell's number as nbval names it (it counts code cells only)."""
    code = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    return next(i for i, c in enumerate(code) if "# NBVAL_CHECK_OUTPUT" in "".join(c["source"]))


def _nbval(out, extra_path=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMPRL_OUTPUT_DIR": str(out), "MPLBACKEND": "Agg", "EMPRL_THREADS": "1"}
    for var in ("EMPRL_DATA_DIR", "EMPRL_LLM_URL", "EMPRL_LLM_MODEL", "EMPRL_LLM_API_KEY"):
        env.pop(var, None)  # the stored outputs are those of the bundled sample, without an LLM
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(run.REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider", str(NOTEBOOK)]
    return subprocess.run(command, cwd=run.REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke_run")
    saved = os.environ.pop("EMPRL_DATA_DIR", None)
    try:
        pipeline.run("smoke", only="02,03,04", out=str(out))
    finally:
        if saved is not None:
            os.environ["EMPRL_DATA_DIR"] = saved
    return out


def test_checked_cell_passes_unbroken(trained):
    result = _nbval(trained)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_checked_cell_fails_with_a_broken_formula(trained, tmp_path, name):
    (tmp_path / "sitecustomize.py").write_text(BREAKS[name])
    result = _nbval(trained, extra_path=str(tmp_path))
    assert result.returncode != 0
    failed = [line.split(" - ")[0] for line in result.stdout.splitlines() if line.startswith("FAILED")]
    # only the checked cell fails: every cell still runs, one printed number differs
    assert failed == [f"FAILED notebooks/{NOTEBOOK.name}::Cell {_checked_cell_index()}"], result.stdout[-3000:]
    assert "Cell outputs differ" in result.stdout
