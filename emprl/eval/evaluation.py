"""Evaluate a generator on the test split: sample, PPL, identifier levels, metrics (notebooks 05-08).

``evaluate_system`` runs the three costly parts once each, batched: ``policy.sample_responses``
(``eval_cfg.samples_per_context`` = m responses per context, in m blocks of N), ``generator.perplexity``
(length-sorted batches) and one ``scorer.levels`` call over the m x N pairs (the three mechanisms scored
together, length-sorted; each context encoded once, or read from the scorer's context cache). Gold
levels come from the cache that ``scoring.gold_labels`` keeps (computed once per identifier weights).
``floor_rows`` are the reference predictors of every table (``metrics.FLOORS``) on the same gold levels.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emprl import checkpoint as ckpt
from emprl.eval import metrics
from emprl.paper_tables import TABLE_II, TABLE_V, as_frame

METRIC_COLUMNS = {"ppl": "PPL", "dist1": "Dist-1", "dist2": "Dist-2", "emp_f1": "Emp-F1 (%)"}
# beyond the paper: chance-corrected agreement with the gold levels (Emp-F1's floor sits near every system)
AGREEMENT_COLUMNS = {"kappa": "kappa (mean)", "all_match": "all 3 match (%)"}
# beyond the paper: per-level agreement and how far the predicted level distribution is from the gold one
DISTRIBUTION_COLUMNS = {"macro_f1": "macro-F1 (%)", "tv": "TV distance (%)"}
METRIC_LABELS = {"dist1": "Dist-1", "dist2": "Dist-2", "emp_f1": "Emp-F1 (%)", **AGREEMENT_COLUMNS,
                 **DISTRIBUTION_COLUMNS}
PAIRED_METRICS = ("dist1", "dist2", "emp_f1", "kappa", "all_match")  # paired_tests' default


def is_saved_generator(directory) -> bool:
    return (Path(directory) / "generator.json").is_file()


def evaluate_system(model, tokenizer, examples, gold, scorer, gen_cfg, eval_cfg, max_context_tokens=None,
                    seed: int = 0, progress: bool = True, cache_dir=None, split: str | None = None,
                    system: str | None = None, ledger: "Ledger | None" = None) -> dict:
    """Sample one response per example, compute PPL on the gold responses, score the samples; on the
    model's device (the scorer on its own).

    Returns {"row": metrics.evaluate_responses(...) + timings, "responses": m x N, "levels": [m x N, 3] array,
    "nll"/"tokens": [N] the gold responses' summed token cross-entropy and token count}. ``cache_dir``: keep
    the generations, levels and PPL there (``_evaluation_cache``), so that rendering a notebook again, or
    comparing a system in two notebooks, does not sample and score it twice.

    ``split="test"`` needs ``system`` (its name) and ``ledger`` (``Ledger.of(out, P)``): the evaluation appends
    one line to the test ledger, with "cached": true when it was read back from the cache.
    """
    from emprl.models import generator, policy
    from emprl.data import context_texts

    gen_contexts, score_contexts = context_texts(examples, max_context_tokens)
    m = eval_cfg.samples_per_context
    if cache_dir is not None:
        path, key = _evaluation_cache(cache_dir, model, scorer, gen_contexts, examples, m, seed, gen_cfg,
                                      eval_cfg)
        cached = ckpt.load_cached(path, key)
        if cached is not None:  # generation, PPL and scoring done before; the metrics and CIs again
            _touch(split, system, ledger, len(examples), m, cached=True)
            t = time.perf_counter()
            row = metrics.evaluate_responses(cached["responses"], cached["levels"], np.asarray(gold),
                                             ppl=cached["ppl"], tokenizer=eval_cfg.tokenizer,
                                             n_boot=eval_cfg.bootstrap, seed=seed, level=eval_cfg.ci_level)
            timings = {**cached["timings"], "metrics_s": time.perf_counter() - t}  # the rest: as first measured
            return {"row": {**row, **timings, "cached": True}, "responses": cached["responses"],
                    "levels": np.asarray(cached["levels"]), "nll": np.asarray(cached["nll"]),
                    "tokens": np.asarray(cached["tokens"])}
    _touch(split, system, ledger, len(examples), m, cached=False)
    timings = {}
    t = time.perf_counter()
    # m blocks of N: sample j of context i at j * N + i (metrics.evaluate_responses' layout)
    responses = policy.sample_responses(model, tokenizer, gen_contexts, gen_cfg, seed=seed,
                                        batch_size=eval_cfg.batch_size, progress=progress, n=m)
    timings["generation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    nll, tokens = generator.example_nll(model, tokenizer, gen_contexts, [ex.response for ex in examples],
                                        batch_size=eval_cfg.batch_size, max_source_len=gen_cfg.max_source_len,
                                        progress=progress)
    ppl = math.exp(float(nll.sum() / tokens.sum()))
    timings["ppl_s"] = time.perf_counter() - t
    result = score_responses(responses, score_contexts * m, gold, scorer, eval_cfg, seed, ppl=ppl)
    result["row"].update(timings)
    result["nll"], result["tokens"] = nll.numpy(), tokens.numpy()  # per example, for paired PPL tests
    if cache_dir is not None:
        ckpt.save_cached(path, key, {
            "responses": responses, "levels": result["levels"].tolist(), "ppl": ppl,
            "nll": result["nll"].tolist(), "tokens": result["tokens"].tolist(),
            "timings": {**timings, "scoring_s": result["row"]["scoring_s"]}})
    return result


def _evaluation_cache(cache_dir, model, scorer, gen_contexts, examples, m, seed, gen_cfg,
                      eval_cfg) -> tuple[Path, dict]:
    """The cache file of one evaluation and its key (generator weights, identifier weights, data, m, seed,
    decoding, batch size, autocast dtype). Generation, PPL and scoring are what it saves; the metrics and CIs
    are computed again from them."""
    from emprl.models.scoring import data_fingerprint, state_fingerprint

    key = {"generator": state_fingerprint({"g": model}), "identifiers": scorer.fingerprint,
           "data": data_fingerprint(gen_contexts, [ex.response for ex in examples]), "m": m, "seed": seed,
           "decoding": [gen_cfg.top_k, gen_cfg.top_p, gen_cfg.temperature, gen_cfg.max_new_tokens,
                        gen_cfg.max_source_len, gen_cfg.length_counts_start_token],
           "batch_size": eval_cfg.batch_size,
           "compute_dtype": ckpt.compute_dtype(next(model.parameters()).device.type)}  # under Run.autocast or not
    return Path(cache_dir) / f"evaluation_{ckpt.key_digest(key)[:16]}.json", key


def score_responses(responses, score_contexts, gold, scorer, eval_cfg, seed: int = 0, ppl=None,
                    split: str | None = None, system: str | None = None, ledger: "Ledger | None" = None) -> dict:
    """Levels of the responses by the identifiers, then Dist-n, Emp-F1 and agreement with CIs: the one metrics
    call every system goes through (ours, and the LLM baseline, which has no PPL). ``responses`` and
    ``score_contexts`` hold m blocks of N (``gold`` has N rows). ``split``, ``system``, ``ledger``: as
    ``evaluate_system`` (which records its own touch and passes none here).

    Returns {"row": metrics.evaluate_responses(...) + timings, "responses": [...], "levels": [N, 3] array}.
    """
    _touch(split, system, ledger, len(gold), len(responses) // max(len(gold), 1), cached=False)
    t = time.perf_counter()
    levels = scorer.levels(list(score_contexts), responses).numpy()
    scoring_s = time.perf_counter() - t
    t = time.perf_counter()
    row = metrics.evaluate_responses(responses, levels, np.asarray(gold), ppl=ppl, tokenizer=eval_cfg.tokenizer,
                                     n_boot=eval_cfg.bootstrap, seed=seed, level=eval_cfg.ci_level)
    row.update(scoring_s=scoring_s, metrics_s=time.perf_counter() - t)
    return {"row": row, "responses": responses, "levels": levels}


def _ci(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "-"
    return f"[{row[key + '_low']:.2f}, {row[key + '_high']:.2f}]"


def floor_rows(gold, eval_cfg, seed: int = 0, prior=None) -> dict[str, dict]:
    """The reference predictors (``metrics.FLOORS``) as table rows on the gold levels ``gold`` [N, 3]:
    {``metrics.FLOOR_ROWS[kind]``: metrics row} (no responses: no PPL or Dist-n). ``prior``: the training split's
    level frequencies [3 mechanisms, 3 levels] (``metrics.level_frequencies``), which the blind best floor is
    fitted on; without it that row is left out."""
    return {metrics.FLOOR_ROWS[kind]: metrics.evaluate_responses(None, levels, gold, n_boot=eval_cfg.bootstrap,
                                                                 seed=seed, level=eval_cfg.ci_level)
            for kind, levels in floor_systems_levels(gold, seed, prior).items()}


def floor_systems_levels(gold, seed: int = 0, prior=None) -> dict[str, np.ndarray]:
    """{floor kind: its levels [N, 3]} on ``gold``: every ``metrics.FLOORS`` kind, the blind best one only with
    ``prior``."""
    gold = np.asarray(gold)
    return {kind: metrics.floor_levels(gold, kind, seed, prior=prior) for kind in metrics.FLOORS
            if kind != "blind best" or prior is not None}


def floor_systems(gold, seed: int = 0, prior=None) -> dict[str, dict]:
    """The floors as systems for ``paired_tests``: {row name: {"responses": None, "levels": [N, 3]}}."""
    return {metrics.FLOOR_ROWS[kind]: {"responses": None, "levels": levels}
            for kind, levels in floor_systems_levels(gold, seed, prior).items()}


def comparison_table(paper: dict, ours: dict[str, dict], paper_label: str, ours_label: str,
                     extra: dict[str, dict] | None = None, floors: dict[str, dict] | None = None) -> pd.DataFrame:
    """The paper's rows as a reference block above our measured rows, in the paper's columns.

    ``ours``: {system: metrics row}; our block adds 95% CIs, mean kappa, macro-F1, the total variation distance
    of the predicted level distribution from the gold one, all-three-match, the number of contexts n and of
    samples per context m. ``floors`` (``floor_rows``): reference rows below ours, and columns with every row's
    Emp-F1 above the constant-majority floor and above the blind best floor. ``extra``: {system: {column:
    value}} added to our rows (e.g. PPO steps).
    """
    ref = as_frame(paper)
    ref.insert(0, "Block", paper_label)
    floors = floors or {}
    constant = floors.get(metrics.FLOOR_ROWS["constant majority"], {}).get("emp_f1")
    blind = floors.get(metrics.BLIND_FLOOR, {}).get("emp_f1")
    rows = []
    for name, r in {**ours, **floors}.items():
        row = {"Model": name, "Block": "reference (no response read)" if name in floors else ours_label,
               **{METRIC_COLUMNS[k]: r.get(k) for k in METRIC_COLUMNS},
               "Dist-1 95% CI": _ci(r, "dist1"), "Dist-2 95% CI": _ci(r, "dist2"), "Emp-F1 95% CI": _ci(r, "emp_f1")}
        if constant is not None:
            row["Emp-F1 above floor"] = r["emp_f1"] - constant
        if blind is not None:
            row["Emp-F1 above blind floor"] = r["emp_f1"] - blind
        if "kappa" in r:
            row.update({"kappa (mean)": r["kappa"], "kappa 95% CI": _ci(r, "kappa"),
                        "all 3 match (%)": r["all_match"], "all 3 match 95% CI": _ci(r, "all_match")})
        if "macro_f1" in r:
            row.update({"macro-F1 (%)": r["macro_f1"], "macro-F1 95% CI": _ci(r, "macro_f1"),
                        "TV distance (%)": r["tv"], "TV distance 95% CI": _ci(r, "tv")})
        row.update({"n": r["n_examples"], "m": r.get("samples_per_context", 1), **(extra or {}).get(name, {})})
        rows.append(row)
    measured = pd.DataFrame(rows).set_index("Model")
    table = pd.concat([ref, measured])
    for col in ["n", "m", *{k for v in (extra or {}).values() for k in v}]:  # counts: "-" for the paper's rows
        table[col] = table[col].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    return table


def per_mechanism_table(rows: dict[str, dict]) -> pd.DataFrame:
    """Per system and mechanism: weighted F1 (Emp-F1's part), Cohen's kappa, macro-F1 and the TV distance of the
    predicted level distribution from the gold one, each with its 95% CI (weighted F1: point only)."""
    from emprl.data import MECHANISMS

    out = []
    for name, r in rows.items():
        for mechanism, key in zip(MECHANISMS, metrics.MECHANISM_KEYS):
            entry = {"Model": name, "mechanism": mechanism, "weighted F1 (%)": r[f"emp_f1_{key}"]}
            for metric, label in (("kappa", "kappa"), ("macro_f1", "macro-F1 (%)"), ("tv", "TV distance (%)")):
                if f"{metric}_{key}" in r:
                    entry.update({label: r[f"{metric}_{key}"], f"{label} 95% CI": _ci(r, f"{metric}_{key}")})
            out.append(entry)
    return pd.DataFrame(out).set_index(["Model", "mechanism"])


def table_ii(ours: dict[str, dict], ours_label: str, floors: dict[str, dict] | None = None) -> pd.DataFrame:
    """Table II layout: the paper's reported rows, then ours, then the floors."""
    return comparison_table(TABLE_II, ours, "paper (reported, Table II)", ours_label, floors=floors)


def paired_tests(systems: dict[str, dict], gold, pairs, tokenizer="word", n_boot=1000, seed=0,
                 metric_names=PAIRED_METRICS) -> pd.DataFrame:
    """Paired bootstrap tests (Dist-1, Dist-2, Emp-F1, mean kappa, all-three-match) for each (A, B) in
    ``pairs``, contexts resampled with their samples; with the standard error of each difference.

    ``systems``: {name: {"responses": m x N strings or None, "levels": [m x N, 3]}}.
    """
    rows = []
    for a, b in pairs:
        for metric in metric_names:
            if metric.startswith("dist") and (systems[a].get("responses") is None
                                              or systems[b].get("responses") is None):
                continue  # a floor has no responses
            res = metrics.paired_test(metric, systems[a], systems[b], gold=gold, tokenizer=tokenizer, n_boot=n_boot,
                                      seed=seed)
            row = {"Comparison": f"{a} - {b}", "Metric": METRIC_LABELS[metric], "Difference": res.delta,
                   "95% CI": f"[{res.low:.2f}, {res.high:.2f}]", "SE": res.se, "p (paired bootstrap)": res.p_value}
            if any(name.startswith("dist") for name in metric_names):  # only a Dist-n row has a tokenizer to name
                row["Dist-n tokenizer"] = metrics.tokenizer_label(tokenizer) if metric.startswith("dist") else "-"
            rows.append(row)
    return pd.DataFrame(rows).set_index("Comparison")


def data_label(data_dir=None) -> str:
    """The data a run reads, named without machine paths: ``$EMPRL_DATA_DIR`` (when it is that folder),
    ``data folder <name>`` otherwise, or the bundled smoke sample."""
    import os

    from emprl.data import resolve_data_dir

    root = resolve_data_dir(data_dir)
    if root is None:
        return "bundled smoke sample"
    env = os.environ.get("EMPRL_DATA_DIR")
    if env and Path(env).expanduser().resolve() == root:
        return "$EMPRL_DATA_DIR"
    return f"data folder {root.name}"


def describe_run(P, data_dir=None, model: str | None = None) -> str:
    """One label for our block: profile, generator (``model``, or the profile's T5), identifiers, data."""
    g, i = P.generator, P.identifiers
    if model is None:
        model = f"T5 {g.model} (d_model {g.d_model}, {g.num_layers} layers)" if g.model == "scratch" else f"T5 {g.model}"
    return (f"ours: {P.name} | {model}; identifiers {i.encoder} | data {data_label(data_dir)} | Dist-n tokens: "
            f"{metrics.tokenizer_label(P.evaluation.tokenizer)}")


def write_generations(path, ids, responses: dict[str, list[str]]) -> Path:
    """Every system's responses as gzip-compressed JSON lines {"id", "system", "sample", "response"}, atomically.

    ``ids``: one identifier per context; ``responses``: {system: m blocks of responses in the order of
    ``ids``} (m may differ between systems; "sample" is the block, 0 to m - 1). The gzip header carries
    no time stamp, so equal generations give byte-identical files.
    """
    path = Path(path)
    for system, texts in responses.items():
        if not ids or len(texts) % len(ids) or not texts:
            raise ValueError(f"write_generations: {system!r} has {len(texts)} responses for {len(ids)} ids "
                             "(need m blocks of one response per id)")
    with ckpt.atomic_file(path) as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        for system, texts in responses.items():
            for k, text in enumerate(texts):
                row = {"id": ids[k % len(ids)], "system": system, "sample": k // len(ids), "response": text}
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
    return path


def generations_path(folder, stem: str, system: str) -> Path:
    """``<folder>/<stem>_<system stem>_responses.jsonl.gz``: where ``write_system_generations`` puts a system."""
    return Path(folder) / f"{stem}_{system_stem(system)}_responses.jsonl.gz"


def write_system_generations(folder, stem: str, ids, responses: dict[str, list[str]]) -> list[Path]:
    """``write_generations`` one file per system, ``generations_path(folder, stem, system)`` (the system's name in
    lower case, other characters than letters and digits as "_"): with m samples per context one file of every
    system would pass the size a repository should hold."""
    return [write_generations(generations_path(folder, stem, name), ids, {name: texts})
            for name, texts in responses.items()]


def write_evaluation_records(out, split: str, ids, gold, results: dict[str, dict], stem: str | None = None,
                             evaluator: str = "reward") -> list[Path]:
    """The committed record of an evaluation: the gold levels (``write_gold_levels``) and, per system of
    ``results`` ({name: ``evaluate_system`` or ``score_responses`` result}), its levels, per-example NLL and token
    counts (``write_levels``), pointing at its generations file ``generations_path(out / "generations", stem,
    name)`` (``stem`` as given to ``write_system_generations``; None: no generations file)."""
    paths = [write_gold_levels(out, split, ids, {evaluator: gold})]
    for name, r in results.items():
        generations = (None if stem is None else
                       generations_path(Path(out) / "generations", stem, name).relative_to(out).as_posix())
        paths.append(write_levels(out, split, name, ids, {evaluator: r["levels"]}, nll=r.get("nll"),
                                  tokens=r.get("tokens"), generations=generations))
    return paths


def read_generations(path) -> list[dict]:
    """The rows of a ``write_generations`` file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- the test-split ledger

LEDGER_NAME = "test_ledger.jsonl"


def config_fingerprint(profile) -> str:
    """sha256 of the profile's settings without its runtime section (device, threads, precision: where it ran,
    not what it computes)."""
    settings = {k: v for k, v in profile.to_dict().items() if k != "runtime"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def code_commit() -> str:
    """``git rev-parse HEAD`` of the repository this package lives in, or "unknown" (no git, not a checkout)."""
    from emprl.run import REPO_ROOT

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


@dataclass(frozen=True)
class Ledger:
    """OUT/test_ledger.jsonl: one line per evaluation on the test split, so that how often the test split was
    touched, by which code and settings, can be audited. ``Ledger.of(run.out, run.profile)``."""

    path: Path
    fingerprint: str

    @classmethod
    def of(cls, out, profile) -> "Ledger":
        return cls(Path(out) / LEDGER_NAME, config_fingerprint(profile))

    def append(self, system: str, n_contexts: int, m: int, cached: bool = False) -> dict:
        """Append one line {"system", "commit", "config", "n", "m", "time" (UTC, ISO), "cached"}: one write of one
        line to a file opened for appending, flushed and fsynced, so concurrent writers never interleave lines.
        ``cached``: the evaluation was read back from the cache (a re-render, not a new sampling and scoring)."""
        entry = {"system": system, "commit": code_commit(), "config": self.fingerprint, "n": int(n_contexts),
                 "m": int(m), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "cached": bool(cached)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry


def read_ledger(path) -> list[dict]:
    """The entries of a ledger file (none if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _touch(split, system, ledger, n_contexts, m, cached) -> None:
    """The ledger rule: an evaluation on the test split is recorded, and cannot be made without a ledger."""
    if split != "test":
        return
    if ledger is None or system is None:
        raise ValueError("an evaluation on the test split needs system= and ledger= (evaluation.Ledger.of(out, P)): "
                         "every touch of the test split is recorded")
    ledger.append(system, n_contexts, m, cached)


# --------------------------------------------------------------------------- committed per-response levels

LEVELS_FOLDER = "levels"


def system_stem(name: str) -> str:
    """A system's name in file names: lower case, other characters than letters and digits as "_"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def levels_path(out, split: str, system: str) -> Path:
    return Path(out) / LEVELS_FOLDER / f"{split}_{system_stem(system)}.json.gz"


def gold_levels_path(out, split: str) -> Path:
    return Path(out) / LEVELS_FOLDER / f"{split}_gold.json.gz"


def _write_json_gz(path: Path, record: dict) -> Path:
    with ckpt.atomic_file(path) as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(json.dumps(record, separators=(",", ":")).encode())
    return path


def read_json_gz(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing committed file {path}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def write_levels(out, split: str, system: str, ids, evaluators: dict[str, np.ndarray], nll=None, tokens=None,
                 generations: str | None = None) -> Path:
    """OUT/levels/<split>_<system stem>.json.gz: one system's evaluation record, enough to recompute every
    table without a model: {"system", "split", "ids" [N], "m", "evaluators": {name: {"levels": [N][m][3]}},
    "nll": [N] or null, "tokens": [N] or null, "generations": the responses' file relative to OUT or null}.

    ``evaluators``: {evaluator ("reward": the identifiers of the empathy reward): levels [m x N, 3] in the
    evaluation's layout (sample j of context i at row j * N + i)}. Evaluators already in the file and not
    given here are kept (another evaluator may be added later)."""
    n = len(ids)
    path = levels_path(out, split, system)
    record = {"system": system, "split": split, "ids": list(ids), "m": None, "evaluators": {},
              "nll": None if nll is None else np.asarray(nll, dtype=float).tolist(),
              "tokens": None if tokens is None else np.asarray(tokens, dtype=float).tolist(), "generations": generations}
    if path.is_file():
        old = read_json_gz(path)
        if old["ids"] == record["ids"]:
            record["evaluators"] = old["evaluators"]
            for key in ("nll", "tokens", "generations"):
                record[key] = record[key] if record[key] is not None else old.get(key)
    for name, levels in evaluators.items():
        levels = np.asarray(levels, dtype=np.int64)
        if n == 0 or levels.ndim != 2 or levels.shape[1] != 3 or len(levels) % n:
            raise ValueError(f"write_levels: {system!r}/{name}: levels of shape {levels.shape} for {n} ids "
                             "(need [m x N, 3])")
        m = len(levels) // n
        if record["m"] not in (None, m) and record["evaluators"].keys() - {name}:
            raise ValueError(f"write_levels: {system!r}/{name} has m = {m}, the file's other evaluators {record['m']}")
        record["m"] = m
        record["evaluators"][name] = {"levels": levels.reshape(m, n, 3).transpose(1, 0, 2).tolist()}
    return _write_json_gz(path, record)


def write_gold_levels(out, split: str, ids, evaluators: dict[str, np.ndarray]) -> Path:
    """OUT/levels/<split>_gold.json.gz: {"ids" [N], "evaluators": {name: [N][3] gold levels}} (evaluators
    already in the file and not given here are kept). Gold of other contexts than the file's is an error, not a
    replacement: every system's levels in OUT/levels are read against that file's ids (a subset of a split is
    another split name, e.g. "test_first1000")."""
    path = gold_levels_path(out, split)
    record = {"split": split, "ids": list(ids), "evaluators": {}}
    if path.is_file():
        old = read_json_gz(path)
        if old["ids"] != record["ids"]:
            raise ValueError(f"{path} holds the gold levels of {len(old['ids'])} other contexts than these "
                             f"{len(record['ids'])}: write a subset under its own split name, or remove the file "
                             f"first to replace the whole evaluation")
        record["evaluators"] = old["evaluators"]
    for name, gold in evaluators.items():
        gold = np.asarray(gold, dtype=np.int64)
        if gold.shape != (len(ids), 3):
            raise ValueError(f"write_gold_levels: {name}: gold of shape {gold.shape} for {len(ids)} ids")
        record["evaluators"][name] = gold.tolist()
    return _write_json_gz(path, record)


def read_levels(path, evaluator: str = "reward") -> dict:
    """A ``write_levels`` file as {"system", "ids", "m", "levels" [m x N, 3] (evaluation layout), "nll", "tokens",
    "generations"}."""
    record = read_json_gz(path)
    if evaluator not in record["evaluators"]:
        raise KeyError(f"{path}: no levels of evaluator {evaluator!r} (has {sorted(record['evaluators'])})")
    levels = np.asarray(record["evaluators"][evaluator]["levels"], dtype=np.int64)  # [N, m, 3]
    return {**{k: record.get(k) for k in ("system", "split", "ids", "m", "nll", "tokens", "generations")},
            "levels": levels.transpose(1, 0, 2).reshape(-1, 3)}


# --------------------------------------------------------------------------- the paper's signatures

VERDICTS = ("reproduced", "same sign, smaller", "same sign, larger", "undecided", "opposite sign")

_V = {name: dict(zip(TABLE_V["columns"], values)) for name, values in TABLE_V["rows"].items()}


def _ppl_change(a: str, b: str) -> float:
    return 100.0 * (_V[a]["PPL"] / _V[b]["PPL"] - 1.0)


# (name, system A, system B, metric, the paper's A - B). PPL as a relative change (%): our PPL is of another
# tokenizer and model, so only its relative change can be compared; Dist-n and Emp-F1 as points.
SIGNATURES = [
    ("EmpRL - w/o RL: Emp-F1", "EmpRL", "w/o RL", "emp_f1", _V["EmpRL"]["Emp-F1 (%)"] - _V["w/o RL"]["Emp-F1 (%)"]),
    ("EmpRL - w/o RL: Dist-1", "EmpRL", "w/o RL", "dist1", _V["EmpRL"]["Dist-1"] - _V["w/o RL"]["Dist-1"]),
    ("EmpRL - w/o RL: Dist-2", "EmpRL", "w/o RL", "dist2", _V["EmpRL"]["Dist-2"] - _V["w/o RL"]["Dist-2"]),
    ("EmpRL / w/o RL: PPL change (%)", "EmpRL", "w/o RL", "ppl_change", _ppl_change("EmpRL", "w/o RL")),
    ("EmpRL - w/o Empathy Reward: Emp-F1", "EmpRL", "w/o Empathy Reward", "emp_f1",
     _V["EmpRL"]["Emp-F1 (%)"] - _V["w/o Empathy Reward"]["Emp-F1 (%)"]),
    ("w/o KL Penalty / EmpRL: PPL change (%)", "w/o KL Penalty", "EmpRL", "ppl_change",
     _ppl_change("w/o KL Penalty", "EmpRL")),
    ("w/o KL Penalty - EmpRL: Dist-2", "w/o KL Penalty", "EmpRL", "dist2",
     _V["w/o KL Penalty"]["Dist-2"] - _V["EmpRL"]["Dist-2"]),
    ("w/o KL Penalty - EmpRL: Emp-F1", "w/o KL Penalty", "EmpRL", "emp_f1",
     _V["w/o KL Penalty"]["Emp-F1 (%)"] - _V["EmpRL"]["Emp-F1 (%)"]),
]



def verdict(paper: float, delta: float, low: float, high: float) -> tuple[str, str]:
    """Our difference [low, high] (95% CI, closed) against the paper's value; returns (verdict, reason):

    * *undecided*: the CI contains 0;
    * *opposite sign*: the CI excludes 0 on the other side of 0 from the paper's value (a paper value of 0 has
      no side: any CI that excludes 0 counts here);
    * *reproduced*: the CI excludes 0 and contains the paper's value;
    * *same sign, smaller* / *same sign, larger*: the CI excludes 0 and the paper's value, and lies between 0
      and the paper's value (smaller in size) or beyond it (larger).
    """
    ci = f"[{low:.2f}, {high:.2f}]"
    if low <= 0 <= high:
        return "undecided", f"the CI {ci} contains 0 (ours {delta:+.2f}, the paper's {paper:+.2f})"
    side = 1.0 if low > 0 else -1.0
    if np.sign(paper) != side:
        return "opposite sign", f"the CI {ci} excludes 0 on the other side from the paper's {paper:+.2f}"
    if low <= paper <= high:
        return "reproduced", f"the CI {ci} excludes 0 and contains the paper's {paper:+.2f}"
    if abs(paper) > max(abs(low), abs(high)):
        return "same sign, smaller", f"the CI {ci} excludes 0 and lies below the paper's {paper:+.2f} in size"
    return "same sign, larger", f"the CI {ci} excludes 0 and lies beyond the paper's {paper:+.2f}"


def signatures(systems: dict[str, dict], gold, tokenizer: str, n_boot: int, seed: int,
               partial: bool = False) -> list[dict]:
    """Each Table V signature: the paper's value, ours with its 95% CI and standard error, and the verdict.

    ``systems``: {Table V name: ``evaluate_system`` result ("responses", "levels", "nll", "tokens")}.
    ``partial``: leave out the signatures whose systems (or, for PPL, per-example NLL) are not in ``systems``
    instead of failing.
    """
    out = []
    for name, a, b, metric, paper in SIGNATURES:
        needs_nll = metric == "ppl_change"
        present = all(s in systems and (not needs_nll or systems[s].get("nll") is not None) for s in (a, b))
        if not present and partial:
            continue
        if needs_nll:
            t = metrics.paired_ppl(systems[a]["nll"], systems[a]["tokens"], systems[b]["nll"], systems[b]["tokens"],
                                   n_boot=n_boot, seed=seed, relative=True)
        else:
            t = metrics.paired_test(metric, systems[a], systems[b], gold=gold, tokenizer=tokenizer, n_boot=n_boot,
                                    seed=seed)
        v, reason = verdict(paper, t.delta, t.low, t.high)
        out.append({"signature": name, "paper": paper, "ours": t.delta, "ci_low": t.low, "ci_high": t.high,
                    "se": t.se, "p": t.p_value, "verdict": v, "reason": reason})
    return out


# which training examples the blind floor's frequencies count (every notebook and rescore: prior_contexts)
TRAIN_SOURCE = "gold levels of notebook 04's PPO contexts (data.visited_subset of the training split)"


def prior_contexts(P, train: list) -> list:
    """The training examples whose gold level frequencies fit the blind best floor (``TRAIN_SOURCE``): notebook
    04's PPO contexts, whatever the notebook trains on, so that every table's floor is the same draw."""
    from emprl import data

    return data.visited_subset(train, P.ppo.steps, P.ppo.batch_size, P.seed)


def train_frequencies_path(out) -> Path:
    return Path(out) / LEVELS_FOLDER / "train_frequencies.json"


def write_train_frequencies(out, evaluator: str, frequencies, n: int, source: str) -> Path:
    """Into OUT/levels/train_frequencies.json, keeping the other evaluators': ``evaluator``'s level frequencies
    [3 mechanisms, 3 levels] of the training split's human responses, which its blind best floor is fitted
    on; ``n`` and ``source``: how many training examples they count, and which."""
    path = train_frequencies_path(out)
    record = json.loads(path.read_text()) if path.is_file() else {"evaluators": {}, "counted": {}}
    record["evaluators"][evaluator] = np.asarray(frequencies, dtype=float).tolist()
    record["counted"][evaluator] = {"n": int(n), "source": source}
    ckpt.atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path
