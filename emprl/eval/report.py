"""OUT/report.md: every table (OUT/tables/*.md) and figure (OUT/figures/*.png) of the notebooks, in order,
under a header that states profile, models, data and how many examples each number rests on.

    python -m emprl.eval.report --profile smoke [--out DIR]

Conventions the notebooks follow (so that the report can group and annotate):

* tables and figures are named ``NN_name.md`` / ``NN_name.png`` after their notebook number;
  ``save_table`` writes the csv and the markdown (with the smoke banner at the smoke profile);
* each notebook calls ``record_provenance(OUT, "NN", ...)`` once, writing
  OUT/metrics/provenance_NN.json: models, data, and {quantity: number of examples}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import pandas as pd

from emprl.checkpoint import atomic_write_text
from emprl.run import SMOKE_BANNER, resolve_output_dir


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table (the index as first column; NaN/None as "-"), no extra dependency."""
    index_name = frame.index.name or ""
    header = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for idx, *values in frame.itertuples(index=True, name=None):  # keeps each column's dtype (iterrows upcasts)
        lines.append("| " + " | ".join([_cell(idx, digits), *(_cell(v, digits) for v in values)]) + " |")
    return "\n".join(lines) + "\n"


def save_table(out, name: str, frame: pd.DataFrame, title: str = "", note: str = "", smoke: bool = False,
               digits: int = 2) -> str:
    """Write OUT/tables/<name>.csv and <name>.md; return the markdown (printed by notebooks).

    At the smoke profile the markdown starts with the banner "SMOKE PROFILE: numbers are not meaningful".
    """
    tables = Path(out) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    frame.to_csv(tables / f"{name}.csv")
    parts = [f"**{SMOKE_BANNER}**\n"] if smoke else []
    if title:
        parts.append(f"**{title}**\n")
    parts.append(to_markdown(frame, digits))
    if note:
        parts.append(f"\n{note}\n")
    text = "\n".join(parts)
    atomic_write_text(tables / f"{name}.md", text)
    return text


def format_config(cfg) -> str:
    """A configuration (dataclass or dict) as its name, then one ``name = value`` line per parameter."""
    fields = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    width = max((len(k) for k in fields), default=0)
    return "\n".join([type(cfg).__name__] + [f"  {k:<{width}} = {v!r}" for k, v in fields.items()])


def record_provenance(out, notebook: str, profile: str, models: dict[str, str], data: str,
                      n_examples: dict[str, int]) -> Path:
    """OUT/metrics/provenance_<notebook>.json: what the notebook's numbers rest on."""
    path = Path(out) / "metrics" / f"provenance_{notebook}.json"
    record = {"notebook": notebook, "profile": profile, "models": models, "data": data,
              "n_examples": {k: int(v) for k, v in n_examples.items()}}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def _provenance(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted((out / "metrics").glob("provenance_*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        name = str(record.get("notebook", path.stem.removeprefix("provenance_")))
        found[name[:2] if name[:2].isdigit() else name] = record  # "03_generator" -> "03"
    return found


def _group(name: str) -> str:
    prefix = name[:2]
    return prefix if prefix.isdigit() and len(name) > 2 and name[2] == "_" else "other"


def _describe_profile(profile: str) -> tuple[str, str]:
    """Models and data as the profile defines them (used when no notebook recorded provenance)."""
    from emprl.eval.evaluation import data_label
    from emprl.profiles import get_profile

    p = get_profile(profile)
    g, i = p.generator, p.identifiers
    models = (f"generator T5 ({g.model}, {g.tuning}-tuned; d_model {g.d_model}, {g.num_layers}+{g.num_layers} layers, "
              f"prefix {g.prefix_encoder_len}/{g.prefix_decoder_len}), identifiers {i.encoder} ({i.pooling}-pooling), "
              f"PPO {p.ppo.steps} steps")
    root = data_label()
    caps = {k: v for k, v in (("train", p.data.max_train), ("valid", p.data.max_valid), ("test", p.data.max_test),
                             ("epitome", p.data.max_epitome)) if v is not None}
    data = (root if root != "bundled smoke sample" else "bundled invented sample (emprl.smoke_sample)") + (f", capped at {caps}" if caps else "")
    return models, data


def write_report(out, profile: str) -> Path:
    """Write OUT/report.md from OUT/tables/*.md, OUT/figures/*.png and the recorded provenance."""
    out = Path(out)
    tables = sorted((out / "tables").glob("*.md"))
    figures = sorted((out / "figures").glob("*.png"))
    prov = _provenance(out)
    models, data = _describe_profile(profile)
    lines = [f"# EmpRL reproduction report: profile `{profile}`", ""]
    if profile == "smoke":
        lines += [f"**{SMOKE_BANNER}**", ""]
    rests = "; ".join(f"{nb}: " + ", ".join(f"{k} {v}" for k, v in r.get("n_examples", {}).items()) for nb, r in prov.items())
    lines += [f"Profile **{profile}** | models: {models} | data: {data} | examples per number: {rests or 'not recorded'}", ""]
    timings = out / "metrics" / "pipeline_timings.json"
    if timings.exists():
        try:
            t = json.loads(timings.read_text())
            lines += ["Notebook wall times (s): " + ", ".join(f"{k} {v}" for k, v in t.items()), ""]
        except ValueError:
            pass
    groups = sorted({_group(p.stem) for p in [*tables, *figures]}, key=lambda g: (g == "other", g))
    if not groups:
        lines += ["No tables or figures were found under tables/ and figures/.", ""]
    for group in groups:
        notebook = next((p.name for p in sorted(out.glob(f"{group}_*.ipynb"))), None)
        lines += [f"## {'Notebook ' + group if group != 'other' else 'Other outputs'}" + (f" ({notebook})" if notebook else ""), ""]
        if group in prov:
            r = prov[group]
            counts = ", ".join(f"{k}: {v}" for k, v in r.get("n_examples", {}).items())
            m = r.get("models") or {}
            m = ", ".join(f"{k}: {v}" for k, v in m.items()) if isinstance(m, dict) else str(m)
            lines += [f"_Rests on_ {counts}; models: {m}; data: {r.get('data')}.", ""]
        for table in (t for t in tables if _group(t.stem) == group):
            lines += [f"### {table.stem}", "", table.read_text().strip(), ""]
        for fig in (f for f in figures if _group(f.stem) == group):
            lines += [f"### {fig.stem}", "", f"![{fig.stem}](figures/{fig.name})", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.eval.report", description="Write OUT/report.md.")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--out", default=None, help="output folder (default $EMPRL_OUTPUT_DIR or outputs/<profile>)")
    args = parser.parse_args(argv)
    print(write_report(resolve_output_dir(args.profile, args.out), args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
