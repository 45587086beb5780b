"""Every evaluation table and the paper's signatures again, from committed files alone (no model, no scoring).

    python -m emprl.eval.rebuild --profile offline [--out DIR] [--split test]

Reads, under the run's output folder OUT (``evaluation.write_evaluation_records`` writes them):

* ``levels/<split>_gold.json.gz``: the gold levels per evaluator;
* ``levels/<split>_<system>.json.gz``: each system's levels per evaluator, per-example NLL and token counts
  (PPL where present), and the name of its generations file (Dist-n where present);
* ``levels/train_frequencies.json``: the training split's level frequencies, which the blind best floor is
  fitted on;
* ``generations/*.jsonl.gz``: the responses.

Writes, per evaluator E, ``tables/rebuilt_table_ii_E``, ``tables/rebuilt_table_v_E`` (the Table V systems
present), ``tables/rebuilt_systems_E`` (every system), ``tables/rebuilt_effects_E`` (paired Emp-F1 and kappa
differences: every system minus w/o RL, or minus the LLM's base model where there is no w/o RL, and each system
minus its placebo twin and the study's controls) as .md and .csv, and ``metrics/rebuilt_signatures.json`` (the
paper's signatures whose systems are present). A split other than ``test`` writes ``rebuilt_<split>_...``, so
that rebuilding notebook 10's ``test_first1000`` leaves the test split's tables as they are. The bootstrap
settings and the Dist-n tokenizer are the profile's (``emprl.profiles``); the seed is the profile's seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from emprl.eval import evaluation, metrics
from emprl.eval.report import save_table
from emprl.paper_tables import TABLE_II, TABLE_V
from emprl.profiles import get_profile
from emprl.run import resolve_output_dir

TABLE_II_SYSTEMS = ("EmpRL", "w/o RL")  # notebook 05's systems; an LLM row ("LLM ...") joins them
TABLE_V_SYSTEMS = tuple(TABLE_V["rows"])
BASELINE = "w/o RL"  # every system's effect is read against the generator before RL
# the study's controls (notebook 08): an arm against its zero-reward twin, best-of-n against a random keep
CONTROL_PAIRS = (("repaired, lr 1e-4, 1600 steps", "repaired, lr 1e-4 twin, 1600 steps"),
                 ("RS, keep best", "RS, keep random"))
EFFECT_METRICS = ("emp_f1", "kappa")


def _responses(out: Path, record: dict) -> list[str] | None:
    """The system's responses in the evaluation layout (sample j of context i at j * N + i), or None."""
    if not record.get("generations"):
        return None
    path = out / record["generations"]
    if not path.is_file():
        raise FileNotFoundError(f"{record['system']}: its generations file {path} is missing")
    index = {cid: i for i, cid in enumerate(record["ids"])}
    n, m = len(record["ids"]), record["m"]
    responses: list[str | None] = [None] * (n * m)
    rows = evaluation.read_generations(path)
    names = {row["system"] for row in rows}
    # a file of one system may name it otherwise (the LLM's file names its model)
    name = record["system"] if record["system"] in names or len(names) != 1 else next(iter(names))
    for row in rows:
        if row["system"] == name and row["id"] in index and row["sample"] < m:
            responses[row["sample"] * n + index[row["id"]]] = row["response"]
    missing = sum(r is None for r in responses)
    if missing:
        raise ValueError(f"{path}: {missing} of {n * m} responses of {record['system']!r} are missing")
    return responses  # type: ignore[return-value]


def load(out, split: str = "test") -> dict:
    """Every committed evaluation record of ``split`` under OUT: {"gold": {evaluator: [N, 3]}, "ids",
    "train_frequencies": {evaluator: [3, 3]} or {}, "systems": {name: {"ids", "m", "levels": {evaluator:
    [m x N, 3]}, "responses", "nll", "tokens"}}}. A missing gold file, or a system on other ids, is an error
    that names the file."""
    out = Path(out)
    gold_record = evaluation.read_json_gz(evaluation.gold_levels_path(out, split))
    ids = gold_record["ids"]
    freq_path = evaluation.train_frequencies_path(out)
    frequencies = json.loads(freq_path.read_text())["evaluators"] if freq_path.is_file() else {}
    systems = {}
    gold_name = evaluation.gold_levels_path(out, split).name
    for path in sorted((out / evaluation.LEVELS_FOLDER).glob(f"{split}_*.json.gz")):
        if path.name == gold_name:
            continue
        record = evaluation.read_json_gz(path)
        if record.get("split", split) != split:  # "test_first1000_..." also matches "test_*": another split's
            continue
        if record["ids"] != ids:
            raise ValueError(f"{path}: its ids are not those of {gold_name}")
        levels = {name: np.asarray(e["levels"], dtype=np.int64).transpose(1, 0, 2).reshape(-1, 3)
                  for name, e in record["evaluators"].items()}
        systems[record["system"]] = {"ids": ids, "m": record["m"], "levels": levels, "nll": record.get("nll"),
                                     "tokens": record.get("tokens"), "responses": _responses(out, record)}
    if not systems:
        raise FileNotFoundError(f"no system's levels under {out / evaluation.LEVELS_FOLDER} for split {split!r}")
    return {"gold": {k: np.asarray(v, dtype=np.int64) for k, v in gold_record["evaluators"].items()}, "ids": ids,
            "train_frequencies": {k: np.asarray(v) for k, v in frequencies.items()}, "systems": systems}


def ppl_of(system: dict) -> float | None:
    """exp(sum of the per-example NLL / sum of the tokens) of a loaded system, or None without its NLL."""
    if system.get("nll") is None or system.get("tokens") is None:
        return None
    return math.exp(float(np.sum(system["nll"]) / np.sum(system["tokens"])))


def rows(data: dict, evaluator: str, eval_cfg, seed: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """({system: metrics row}, {floor: metrics row}) of one evaluator, as the notebooks compute them."""
    if evaluator not in data["gold"]:
        raise KeyError(f"no gold levels of evaluator {evaluator!r} (have {sorted(data['gold'])})")
    gold = data["gold"][evaluator]
    ours = {}
    for name, s in data["systems"].items():
        if evaluator not in s["levels"]:
            continue
        ours[name] = metrics.evaluate_responses(s["responses"], s["levels"][evaluator], gold, ppl=ppl_of(s),
                                                tokenizer=eval_cfg.tokenizer, n_boot=eval_cfg.bootstrap, seed=seed,
                                                level=eval_cfg.ci_level)
    floors = evaluation.floor_rows(gold, eval_cfg, seed, prior=data["train_frequencies"].get(evaluator))
    return ours, floors


def signatures(data: dict, evaluator: str, eval_cfg, seed: int) -> list[dict]:
    """The paper's signatures whose systems are present (PPL ones: with their NLL)."""
    systems = {n: {"responses": s["responses"], "levels": s["levels"][evaluator], "nll": s["nll"],
                   "tokens": s["tokens"]}
               for n, s in data["systems"].items() if evaluator in s["levels"] and s["responses"] is not None}
    return evaluation.signatures(systems, data["gold"][evaluator], eval_cfg.tokenizer, eval_cfg.bootstrap, seed,
                                 partial=True)


def effects(data: dict, evaluator: str, eval_cfg, seed: int) -> pd.DataFrame | None:
    """Paired bootstrap of Emp-F1 and mean kappa under one evaluator: every system minus w/o RL (or the LLM's base),
    each system minus its placebo twin, and the study's controls (``CONTROL_PAIRS``) where both systems are
    present; None when there is nothing to pair."""
    systems = {n: {"responses": s["responses"], "levels": s["levels"][evaluator]}
               for n, s in data["systems"].items() if evaluator in s["levels"]}
    # notebook 10's split has no w/o RL: its systems are read against the LLM before GRPO ("<model> base")
    base = BASELINE if BASELINE in systems else next((n for n in sorted(systems) if n.endswith(" base")), None)
    pairs = [(n, base) for n in sorted(systems) if base is not None and n != base]
    # a system against its placebo twin: the same run with the last word of its name "placebo" (notebook 10)
    twins = [(n, f"{n.rsplit(' ', 1)[0]} placebo") for n in sorted(systems) if not n.endswith(" placebo")]
    pairs += [(a, b) for a, b in twins if b in systems and a != base]
    pairs += [(a, b) for a, b in CONTROL_PAIRS if a in systems and b in systems]
    if not pairs:
        return None
    return evaluation.paired_tests(systems, data["gold"][evaluator], pairs, eval_cfg.tokenizer, eval_cfg.bootstrap,
                                   seed, metric_names=EFFECT_METRICS)


def side_by_side(by_evaluator: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """One row per system (floors included), per evaluator: Emp-F1, its CI, its distance above that evaluator's
    blind best floor, mean kappa and its CI. ``by_evaluator``: {evaluator: {system: metrics row}} as ``rows``."""
    table: dict[str, dict] = {}
    for evaluator, systems in by_evaluator.items():
        blind = systems.get(metrics.BLIND_FLOOR, {}).get("emp_f1")
        for name, r in systems.items():
            row = table.setdefault(name, {})
            row[f"Emp-F1 ({evaluator})"] = r["emp_f1"]
            row[f"Emp-F1 95% CI ({evaluator})"] = evaluation._ci(r, "emp_f1")
            row[f"above blind ({evaluator})"] = "-" if blind is None else f"{r['emp_f1'] - blind:+.2f}"
            row[f"kappa ({evaluator})"] = r["kappa"]
            row[f"kappa 95% CI ({evaluator})"] = evaluation._ci(r, "kappa")
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.index.name = "system"
    return frame


def gold_agreement(gold: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per pair of evaluators and mechanism: Cohen's kappa, agreement and each side's level shares (%)."""
    from emprl.data import LEVELS, MECHANISMS

    rows_ = []
    names = sorted(gold)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            kappa = metrics.cohen_kappa(gold[a], gold[b])
            for k, mechanism in enumerate(MECHANISMS):
                row = {"evaluators": f"{a} vs {b}", "mechanism": mechanism, "Cohen's kappa": kappa[k],
                       "agreement (%)": 100 * float(np.mean(gold[a][:, k] == gold[b][:, k]))}
                for name in (a, b):
                    row.update({f"{level} (%), {name}": 100 * float(np.mean(gold[name][:, k] == v))
                                for v, level in enumerate(LEVELS)})
                rows_.append(row)
    return pd.DataFrame(rows_).set_index(["evaluators", "mechanism"])


def rebuild(out, profile: str, split: str = "test") -> dict[str, Path]:
    """Write the rebuilt tables and signatures under OUT; returns {what: path}."""
    out = Path(out)
    P = get_profile(profile)
    E, seed = P.evaluation, P.seed
    data = load(out, split)
    label = f"rebuilt from committed levels ({profile}, {split} split) | Dist-n tokens: {E.tokenizer}"
    note = (f"Rebuilt by python -m emprl.eval.rebuild from OUT/levels and OUT/generations; CIs: {E.bootstrap} "
            f"bootstrap resamples of contexts with their samples, seed {seed}. Emp-F1 above blind floor: minus the "
            "blind best floor's Emp-F1 (levels drawn from the distribution that maximises the expected weighted F1 "
            "under the training split's level frequencies). PPL only where the per-example NLL is committed.")
    stem = "rebuilt" if split == "test" else f"rebuilt_{split}"  # one split's tables never overwrite another's
    written, sigs, by_evaluator = {}, {}, {}
    for evaluator in data["gold"]:
        ours, floors = rows(data, evaluator, E, seed)
        by_evaluator[evaluator] = {**ours, **floors}
        n, m = len(data["ids"]), {r["samples_per_context"] for r in ours.values()}
        suffix = f" | evaluator {evaluator} | n={n}, m={'/'.join(map(str, sorted(m)))}"
        tables = {
            "table_ii": ({k: v for k, v in ours.items() if k in TABLE_II_SYSTEMS or k.startswith("LLM")},
                         TABLE_II, "paper (reported, Table II)"),
            "table_v": ({k: v for k, v in ours.items() if k in TABLE_V_SYSTEMS}, TABLE_V, "paper (reported, Table V)"),
            "systems": (ours, TABLE_V, "paper (reported, Table V)"),
        }
        for name, (subset, paper, paper_label) in tables.items():
            if not subset:
                continue
            frame = evaluation.comparison_table(paper, subset, paper_label, label + suffix, floors=floors)
            key = f"{stem}_{name}_{evaluator}"
            save_table(out, key, frame, title=f"{key}: {split} split, evaluator {evaluator}", note=note,
                       smoke=P.is_smoke)
            written[key] = out / "tables" / f"{key}.md"
        paired = effects(data, evaluator, E, seed)
        if paired is not None:
            key = f"{stem}_effects_{evaluator}"
            save_table(out, key, paired, digits=3, smoke=P.is_smoke,
                       title=f"Paired bootstrap effects ({split} split, evaluator {evaluator}): every system minus "
                             f"{BASELINE} (or the LLM's base model), against its placebo twin, and the study's "
                             "controls")
            written[key] = out / "tables" / f"{key}.md"
        sigs[evaluator] = signatures(data, evaluator, E, seed)
        if sigs[evaluator]:
            key = f"{stem}_signatures_{evaluator}"
            save_table(out, key, pd.DataFrame(sigs[evaluator]).set_index("signature"), digits=3, smoke=P.is_smoke,
                       title=f"The paper's signatures, rebuilt ({split} split, evaluator {evaluator})")
            written[key] = out / "tables" / f"{key}.md"
    if len(data["gold"]) > 1:  # every system under each evaluator, side by side
        key = f"{stem}_systems_by_evaluator"
        save_table(out, key, side_by_side(by_evaluator), smoke=P.is_smoke,
                   title=f"Every system under each evaluator ({split} split, n={len(data['ids'])})",
                   note="Emp-F1 and mean Cohen's kappa against each evaluator's own gold levels, with 95% CIs; "
                        "above blind: minus that evaluator's blind best floor (fitted on its levels of the training "
                        "split), '-' where those frequencies are not committed.")
        written[key] = out / "tables" / f"{key}.md"
    if len(data["gold"]) > 1:  # the evaluators against each other, on the human responses
        key = f"{stem}_gold_agreement"
        save_table(out, key, gold_agreement(data["gold"]), smoke=P.is_smoke,
                   title=f"The evaluators' levels of the human responses against each other ({split} split, "
                         f"n={len(data['ids'])})")
        written[key] = out / "tables" / f"{key}.md"
    path = out / "metrics" / f"{stem}_signatures.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"profile": profile, "split": split, "n": len(data["ids"]),
                                "bootstrap": E.bootstrap, "signatures": sigs}, indent=1) + "\n")
    written["signatures"] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.eval.rebuild",
                                     description="Rebuild the evaluation tables and signatures from committed files.")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--out", default=None, help="output folder (default $EMPRL_OUTPUT_DIR or outputs/<profile>)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    try:
        written = rebuild(resolve_output_dir(args.profile, args.out), args.profile, args.split)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"rebuild: {e}", file=sys.stderr)
        return 2
    for key, path in written.items():
        print(f"{key}: {path}")
    print(f"rebuilt in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
