"""Human-evaluation kit (paper Sec. IV-D): blind rating / A-B sheets out, filled sheets in, scores.

    python -m emprl.eval.humaneval export --generations GEN.csv --systems EmpRL "w/o RL" --mode rating --n 100 --out DIR
    python -m emprl.eval.humaneval export --generations GEN.csv --systems EmpRL "w/o RL" --mode ab --n 100 --out DIR
    python -m emprl.eval.humaneval tiebreak --key DIR/ab_key.csv DIR/ab_sheet_rater*.csv --out DIR/ab_sheet_rater4.csv
    python -m emprl.eval.humaneval score --key DIR/rating_key.csv DIR/rating_sheet_rater*.csv
    python -m emprl.eval.humaneval score --key DIR/ab_key.csv DIR/ab_sheet_rater{1,2,3}.csv --tiebreak DIR/ab_sheet_rater4.csv

``GEN.csv`` has a ``context`` column and one column of responses per system (notebook 05 writes
OUT/generations/test_generations.csv). Each rater fills their own copy of the sheet; the key file
(blind id -> system) stays with the experimenter.

* Ratings: Empathy, Relevance, Fluency from 1 (poor) to 5 (excellent); the final rating of a system
  is the mean over raters and items (paper: the average of the three evaluators).
* A/B: model A (``--systems`` first) against each other system, shown in random order as
  response 1 / response 2; the rater writes 1, 2 or tie. The outcome for A is the majority of the
  three raters; when all three differ a fourth rater decides (paper). Win/Lose/Tie in percent.
* Agreement: Fleiss' kappa over the raters (nominal categories).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

ASPECTS = ("empathy", "relevance", "fluency")
SCALE = (1, 5)
CHOICES = ("1", "2", "tie")
OUTCOMES = ("win", "lose", "tie")
# Columns that only the key may hold: a sheet carrying any of them is not blind.
KEY_ONLY_COLUMNS = {"system", "model", "model_a", "model_b", "a_position", "example_index"}

RATING_INSTRUCTIONS = """Rate each response to its dialogue context from 1 to 5 on three aspects
(1: poor, 2: marginal, 3: moderate, 4: good, 5: excellent):
- empathy: does the response express understanding of the speaker's situation and feelings and convey appropriate emotions?
- relevance: is the response relevant to the context?
- fluency: is the response natural and fluent?
Fill the columns empathy, relevance, fluency with whole numbers. Do not edit other columns or reorder ids.
"""

AB_INSTRUCTIONS = """For each context, choose the better response: write 1 (response_1 is better),
2 (response_2 is better) or tie (equally good) in the column "choice". Do not edit other columns.
"""


class SheetError(ValueError):
    """A filled sheet that cannot be scored; the message names the file and the line."""


# --------------------------------------------------------------------------- export


def _read_generations(path: Path, systems: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ["context", *systems] if c not in frame.columns]
    if missing:
        raise SheetError(f"{path}: missing column(s) {missing}; columns are {list(frame.columns)}")
    return frame["context"].tolist(), {s: frame[s].tolist() for s in systems}


def _sample(n_contexts: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if n > n_contexts:
        raise ValueError(f"n={n} contexts requested but only {n_contexts} are available")
    return np.sort(rng.choice(n_contexts, size=n, replace=False))


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)


def _refuse_overwrite(out: Path, pattern: str, overwrite: bool) -> None:
    existing = sorted(out.glob(pattern))
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists (sheets may already be filled): pass overwrite=True or use another folder")


def _shuffled_items(out_dir, prefix: str, overwrite: bool, n_contexts: int, n: int, seed: int,
                    systems: Sequence[str]):
    """Create the export folder and draw the items: (folder, rng, [(example, system)], shuffled order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _refuse_overwrite(out, f"{prefix}_*.csv", overwrite)
    rng = np.random.default_rng(seed)
    idx = _sample(n_contexts, n, rng)
    rows = [(i, s) for i in idx for s in systems]
    return out, rng, rows, rng.permutation(len(rows))


def _write_export(out: Path, prefix: str, key: pd.DataFrame, sheet: pd.DataFrame, instructions: str,
                  n_raters: int, rng) -> dict[str, Path]:
    """Write the key, the instructions and one sheet per rater, each rater in their own order."""
    paths = {"key": out / f"{prefix}_key.csv", "instructions": out / f"{prefix}_instructions.txt"}
    _write_csv(paths["key"], key)
    paths["instructions"].write_text(instructions)
    for r in range(1, n_raters + 1):
        paths[f"rater{r}"] = out / f"{prefix}_sheet_rater{r}.csv"
        _write_csv(paths[f"rater{r}"], sheet.iloc[rng.permutation(len(sheet))])
    return paths


def export_rating(contexts: Sequence[str], responses: dict[str, Sequence[str]], out_dir, n: int = 100,
                  seed: int = 0, n_raters: int = 3, overwrite: bool = False) -> dict[str, Path]:
    """Write one shuffled blind rating sheet per rater and the key; return their paths."""
    out, rng, rows, order = _shuffled_items(out_dir, "rating", overwrite, len(contexts), n, seed, list(responses))
    key = pd.DataFrame(
        [{"item_id": f"R{k + 1:04d}", "system": rows[j][1], "example_index": int(rows[j][0])} for k, j in enumerate(order)]
    )
    sheet = pd.DataFrame({
        "item_id": key["item_id"],
        "context": [contexts[i] for i in key["example_index"]],
        "response": [responses[s][i] for s, i in zip(key["system"], key["example_index"])],
        **{a: "" for a in ASPECTS},
    })
    return _write_export(out, "rating", key, sheet, RATING_INSTRUCTIONS, n_raters, rng)


def export_ab(contexts: Sequence[str], responses: dict[str, Sequence[str]], model_a: str, out_dir, n: int = 100,
              seed: int = 0, n_raters: int = 3, overwrite: bool = False) -> dict[str, Path]:
    """Write blind A/B sheets (model A against every other system, random sides) and the key."""
    if model_a not in responses:
        raise ValueError(f"model A {model_a!r} is not among the systems {list(responses)}")
    baselines = [s for s in responses if s != model_a]
    if not baselines:
        raise ValueError("an A/B test needs at least one system besides model A")
    out, rng, rows, order = _shuffled_items(out_dir, "ab", overwrite, len(contexts), n, seed, baselines)
    a_pos = rng.integers(1, 3, size=len(rows))
    key = pd.DataFrame([
        {"item_id": f"P{k + 1:04d}", "example_index": int(rows[j][0]), "model_a": model_a, "model_b": rows[j][1],
         "a_position": int(a_pos[k])}
        for k, j in enumerate(order)
    ])
    first = [responses[a if p == 1 else b][i] for i, a, b, p in zip(key["example_index"], key["model_a"], key["model_b"], key["a_position"])]
    second = [responses[b if p == 1 else a][i] for i, a, b, p in zip(key["example_index"], key["model_a"], key["model_b"], key["a_position"])]
    sheet = pd.DataFrame({"item_id": key["item_id"], "context": [contexts[i] for i in key["example_index"]],
                          "response_1": first, "response_2": second, "choice": ""})
    return _write_export(out, "ab", key, sheet, AB_INSTRUCTIONS, n_raters, rng)


# --------------------------------------------------------------------------- import and validation


def read_key(path) -> pd.DataFrame:
    """The key file of an export (rating or A/B), with its ``mode`` attribute set."""
    path = Path(path)
    key = pd.read_csv(path, dtype={"item_id": str})
    if {"item_id", "system", "example_index"} <= set(key.columns):
        key.attrs["mode"] = "rating"
    elif {"item_id", "example_index", "model_a", "model_b", "a_position"} <= set(key.columns):
        key.attrs["mode"] = "ab"
    else:
        raise SheetError(f"{path}: not a key file (columns {list(key.columns)})")
    if key["item_id"].duplicated().any():
        raise SheetError(f"{path}: duplicate item ids {sorted(key.loc[key['item_id'].duplicated(), 'item_id'])[:5]}")
    return key


def read_sheet(path, key: pd.DataFrame, subset: Sequence[str] | None = None) -> pd.DataFrame:
    """A filled sheet, validated against the key; indexed by item_id.

    Errors (``SheetError`` naming the file and CSV line): not blind (key-only columns, or ids that
    name a system), unknown or duplicate ids, missing rows (all key ids, or all of ``subset``),
    empty or out-of-range scores, invalid A/B choices.
    """
    path = Path(path)
    mode = key.attrs["mode"]
    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SheetError(f"{path}: cannot read the sheet: {err}") from err
    leaked = sorted(KEY_ONLY_COLUMNS & {c.strip().lower() for c in sheet.columns})
    if leaked:
        raise SheetError(f"{path}: the sheet is not blind: it holds key column(s) {leaked}")
    needed = ["item_id", *(ASPECTS if mode == "rating" else ("choice",))]
    missing_cols = [c for c in needed if c not in sheet.columns]
    if missing_cols:
        raise SheetError(f"{path}: missing column(s) {missing_cols}; columns are {list(sheet.columns)}")
    systems = set(key["system"]) if mode == "rating" else set(key["model_a"]) | set(key["model_b"])
    known = set(key["item_id"])
    seen: dict[str, int] = {}
    values = []
    for r, row in sheet.iterrows():
        line = r + 2  # header is line 1
        item = row["item_id"].strip()
        named = [s for s in systems if s and s.lower() in item.lower()]
        if named:
            raise SheetError(f"{path}, line {line}: item id {item!r} names system {named[0]!r}: the sheet is not blind")
        if item not in known:
            raise SheetError(f"{path}, line {line}: unknown item id {item!r} (not in the key)")
        if item in seen:
            raise SheetError(f"{path}, line {line}: item id {item!r} already on line {seen[item]}")
        seen[item] = line
        if mode == "rating":
            scores = {}
            for aspect in ASPECTS:
                raw = row[aspect].strip()
                try:
                    value = float(raw)
                except ValueError:
                    value = None
                if value is None or value != int(value) or not SCALE[0] <= value <= SCALE[1]:
                    raise SheetError(f"{path}, line {line}, item {item}: {aspect} must be a whole number "
                                     f"{SCALE[0]}-{SCALE[1]}, got {raw!r}")
                scores[aspect] = int(value)
            values.append({"item_id": item, **scores})
        else:
            choice = row["choice"].strip().lower()
            if choice not in CHOICES:
                raise SheetError(f"{path}, line {line}, item {item}: choice must be one of {list(CHOICES)}, got {row['choice']!r}")
            values.append({"item_id": item, "choice": choice})
    required = known if subset is None else set(subset)
    absent = sorted(required - set(seen))
    if absent:
        raise SheetError(f"{path}: {len(absent)} row(s) missing, e.g. item id(s) {absent[:5]}")
    return pd.DataFrame(values).set_index("item_id")


# --------------------------------------------------------------------------- agreement


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa from counts [items, categories]: how many raters put item i in category j.

    Every item must have the same number of raters n >= 2. NaN when chance agreement is 1 (every
    rating in one category).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    if counts.ndim != 2 or len(counts) == 0 or not np.all(n == n[0]) or n[0] < 2:
        raise ValueError("fleiss_kappa needs counts [items, categories] with the same number (>= 2) of raters per item")
    n = n[0]
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))  # agreement on item i
    p_j = counts.sum(axis=0) / counts.sum()  # share of category j
    p_bar, p_e = p_i.mean(), (p_j**2).sum()
    return float("nan") if p_e == 1 else float((p_bar - p_e) / (1 - p_e))


def _counts(labels: np.ndarray, categories: Sequence) -> np.ndarray:
    """[items, raters] labels -> [items, categories] counts."""
    return np.stack([(labels == c).sum(axis=1) for c in categories], axis=1)


# --------------------------------------------------------------------------- scoring


def score_ratings(sheet_paths: Sequence, key_path) -> dict:
    """Mean ratings per system and aspect (over raters and items), and Fleiss' kappa per aspect."""
    key = read_key(key_path)
    if key.attrs["mode"] != "rating":
        raise SheetError(f"{key_path}: an A/B key; use score_ab")
    sheets = [read_sheet(p, key) for p in sheet_paths]
    if len(sheets) < 2:
        raise ValueError("need at least two raters' sheets")
    ids = key["item_id"].tolist()
    per_rater = {a: np.stack([s.loc[ids, a].to_numpy() for s in sheets], axis=1) for a in ASPECTS}  # [items, raters]
    frame = pd.DataFrame({a: per_rater[a].mean(axis=1) for a in ASPECTS})
    frame["system"] = key["system"].to_numpy()
    means = frame.groupby("system", sort=False)[list(ASPECTS)].mean()
    means.columns = [a.capitalize() for a in ASPECTS]
    kappa = {a.capitalize(): fleiss_kappa(_counts(per_rater[a], range(SCALE[0], SCALE[1] + 1))) for a in ASPECTS}
    n_items = key.groupby("system", sort=False).size().to_dict()
    return {"means": means, "kappa": kappa, "n_raters": len(sheets), "n_items": n_items}


def _outcomes(sheet: pd.DataFrame, key: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    """Outcome for model A (win/lose/tie) of each id, from one rater's choices."""
    choice = sheet.loc[list(ids), "choice"].to_numpy()
    a_pos = key.set_index("item_id").loc[list(ids), "a_position"].astype(str).to_numpy()
    return np.where(choice == "tie", "tie", np.where(choice == a_pos, "win", "lose"))


def split_items(sheet_paths: Sequence, key_path) -> list[str]:
    """The A/B items on which the raters form no majority (a fourth rater must decide)."""
    key = read_key(key_path)
    ids = key["item_id"].tolist()
    votes = np.stack([_outcomes(read_sheet(p, key), key, ids) for p in sheet_paths], axis=1)
    return [i for i, row in zip(ids, votes) if Counter(row).most_common(1)[0][1] * 2 <= len(row)]


def score_ab(sheet_paths: Sequence, key_path, tiebreak_path=None) -> dict:
    """Win/Lose/Tie percentages of model A against each baseline (paper's majority rule) and Fleiss' kappa."""
    key = read_key(key_path)
    if key.attrs["mode"] != "ab":
        raise SheetError(f"{key_path}: a rating key; use score_ratings")
    if len(sheet_paths) < 2:
        raise ValueError("need at least two raters' sheets")
    ids = key["item_id"].tolist()
    votes = np.stack([_outcomes(read_sheet(p, key), key, ids) for p in sheet_paths], axis=1)  # [items, raters]
    final, split = [], []
    for item, row in zip(ids, votes):
        label, count = Counter(row).most_common(1)[0]
        if count * 2 > len(row):
            final.append(label)
        else:
            final.append(None)
            split.append(item)
    if split:
        if tiebreak_path is None:
            raise SheetError(f"{len(split)} item(s) have no majority ({split[:5]}...): a fourth rater must decide them; "
                             "write their sheet with `python -m emprl.eval.humaneval tiebreak` and pass it as tiebreak_path")
        decided = _outcomes(read_sheet(tiebreak_path, key, subset=split), key, split)
        lookup = dict(zip(split, decided))
        final = [lookup[i] if f is None else f for i, f in zip(ids, final)]
    frame = pd.DataFrame({"pair": (key["model_a"] + " vs " + key["model_b"]).to_numpy(), "outcome": final})
    table = (pd.crosstab(frame["pair"], frame["outcome"], normalize="index") * 100).reindex(columns=list(OUTCOMES), fill_value=0.0)
    table = table.reindex(frame["pair"].unique())
    table.columns = ["Win (%)", "Lose (%)", "Tie (%)"]
    table.index.name = "Models"
    return {"table": table, "kappa": fleiss_kappa(_counts(votes, OUTCOMES)), "n_raters": votes.shape[1],
            "n_split": len(split), "n_items": frame.groupby("pair").size().to_dict()}


def export_tiebreak(sheet_paths: Sequence, key_path, out_path) -> Path:
    """A blank A/B sheet holding only the items the raters split on, for the fourth rater."""
    split = set(split_items(sheet_paths, key_path))
    sheet = pd.read_csv(sheet_paths[0], dtype=str, keep_default_na=False)
    sheet = sheet[sheet["item_id"].str.strip().isin(split)].copy()
    sheet["choice"] = ""
    out_path = Path(out_path)
    _write_csv(out_path, sheet)
    return out_path


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.eval.humaneval", description="Blind human-evaluation sheets.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write blind sheets and the key")
    ex.add_argument("--generations", required=True, help="CSV with a context column and one column per system")
    ex.add_argument("--systems", nargs="+", required=True, help="systems to evaluate; for --mode ab the first is model A")
    ex.add_argument("--mode", choices=("rating", "ab"), default="rating")
    ex.add_argument("--n", type=int, default=100, help="number of sampled contexts (paper: 100)")
    ex.add_argument("--raters", type=int, default=3)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--out", required=True)
    ex.add_argument("--overwrite", action="store_true", help="replace existing sheets in --out")
    sc = sub.add_parser("score", help="score filled sheets")
    sc.add_argument("--key", required=True)
    sc.add_argument("sheets", nargs="+")
    sc.add_argument("--tiebreak", default=None, help="the fourth rater's A/B sheet")
    tb = sub.add_parser("tiebreak", help="write the fourth rater's A/B sheet (items without a majority)")
    tb.add_argument("--key", required=True)
    tb.add_argument("sheets", nargs="+")
    tb.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            contexts, responses = _read_generations(Path(args.generations), args.systems)
            if args.mode == "rating":
                paths = export_rating(contexts, responses, args.out, args.n, args.seed, args.raters, args.overwrite)
            else:
                paths = export_ab(contexts, responses, args.systems[0], args.out, args.n, args.seed, args.raters,
                                  args.overwrite)
            for name, p in paths.items():
                print(f"{name}: {p}")
        elif args.command == "tiebreak":
            print(export_tiebreak(args.sheets, args.key, args.out))
        else:
            key = read_key(args.key)
            if key.attrs["mode"] == "rating":
                res = score_ratings(args.sheets, args.key)
                print(res["means"].round(2).to_string())
                print("Fleiss' kappa:", {k: round(v, 3) for k, v in res["kappa"].items()})
            else:
                res = score_ab(args.sheets, args.key, args.tiebreak)
                print(res["table"].round(2).to_string())
                print(f"Fleiss' kappa: {res['kappa']:.3f}; items decided by a fourth rater: {res['n_split']}")
    except (SheetError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
