"""The README's headline table says what the committed rebuilt table says (issue 25: its numbers come from
``python -m emprl.eval.rebuild --profile offline``), so a rebuild that changes a number fails here until the
README follows."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "outputs" / "offline" / "tables" / "rebuilt_systems_by_evaluator.csv"
# README row label (its start) -> the system's name in the rebuilt table
ROWS = {"w/o RL (": "w/o RL", "EmpRL, the paper's": "EmpRL", "EmpRL, repaired": "repaired, lr 1e-4, 1600 steps",
        "its zero-reward twin": "repaired, lr 1e-4 twin, 1600 steps",
        "blind best floor": "floor: blind best (training frequencies)",
        "constant \"none\" floor": "floor: constant majority", "LLM row": "LLM (SmolLM2-135M-Instruct-Q4_1)"}
COLUMNS = ("Emp-F1 (judge)", "kappa (judge)", "Emp-F1 (reward)", "kappa (reward)")  # the README's order


def headline_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Headline results"):text.index("## Documentation")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for start, system in ROWS.items():
            if cells and cells[0].startswith(start):
                rows[system] = cells[1:1 + len(COLUMNS)]
    return rows


@pytest.mark.skipif(not TABLE.is_file(), reason="no committed offline rebuild")
def test_the_readme_headline_numbers_are_the_rebuilt_ones():
    table = pd.read_csv(TABLE, index_col=0)
    rows = headline_rows()
    assert set(rows) == set(ROWS.values()), f"README headline rows missing: {set(ROWS.values()) - set(rows)}"
    for system, cells in rows.items():
        for column, cell in zip(COLUMNS, cells):
            digits = len(cell.split(".")[1]) if "." in cell else 0
            assert re.fullmatch(r"-?\d+(\.\d+)?", cell), f"{system}, {column}: {cell!r} is not a number"
            assert float(cell) == pytest.approx(round(float(table.loc[system, column]), digits), abs=1e-9), \
                f"README says {cell} for {system}, {column}; the rebuilt table says {table.loc[system, column]}"


GRPO_TABLES = {e: ROOT / "outputs" / "offline" / "tables" / f"10_test_{e}.csv" for e in ("judge", "reward")}
# docs/results.md's notebook-10 row label (its start) -> the model's name in notebook 10's test tables
GRPO_ROWS = {"base (": "base", "GRPO, empathy": "GRPO empathy", "GRPO, placebo": "GRPO placebo",
             "GRPO, chance-corrected": "GRPO chance_corrected", "blind best floor": "floor: blind best (training frequencies)"}
# the docs table's columns in order: (evaluator, column of that evaluator's table)
GRPO_COLUMNS = (("judge", "Emp-F1 (%)"), ("judge", "kappa (mean)"), ("reward", "Emp-F1 (%)"), ("reward", "kappa (mean)"),
                ("judge", "Dist-1"), ("judge", "Dist-2"), ("judge", "mean length (tokens)"))


@pytest.mark.skipif(not all(p.is_file() for p in GRPO_TABLES.values()), reason="no committed notebook 10 render")
def test_the_llm_grpo_numbers_in_the_results_page_are_notebook_10s():
    tables = {e: pd.read_csv(p, index_col=0) for e, p in GRPO_TABLES.items()}
    text = (ROOT / "docs" / "results.md").read_text()
    section = text[text.index("## The empathy reward on an instruct LLM"):text.index("## Bundle")]
    seen = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        system = next((s for start, s in GRPO_ROWS.items() if cells and cells[0].startswith(start)), None)
        if system is None:
            continue
        seen.add(system)
        for (evaluator, column), cell in zip(GRPO_COLUMNS, cells[1:]):
            value = tables[evaluator].loc[system, column]
            if cell == "-":
                assert str(value) in ("-", "nan"), f"{system}, {column}: the table has {value}"
                continue
            digits = len(cell.split(".")[1]) if "." in cell else 0
            assert float(cell) == pytest.approx(round(float(value), digits), abs=1e-9), \
                f"docs/results.md says {cell} for {system}, {evaluator} {column}; notebook 10's table says {value}"
    assert seen == set(GRPO_ROWS.values()), f"rows missing: {set(GRPO_ROWS.values()) - seen}"
