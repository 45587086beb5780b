"""Evaluate a generator on the test split: sample, PPL, identifier levels, metrics (notebooks 05-08).

``evaluate_system`` runs the three costly parts once each, batched: ``policy.sample_responses``
(``eval_cfg.samples_per_context`` = m responses per context, in m blocks of N), ``generator.perplexity``
(length-sorted batches) and one ``scorer.levels`` call over the m x N pairs (the three mechanisms scored
together, length-sorted; each context encoded once, or read from the scorer's context cache). Gold
levels come from the cache that ``scoring.gold_labels`` keeps (computed once per identifier weights).
``floor_rows`` are the reference predictors of every table (``metrics.FLOORS``) on the same gold levels.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from emprl import checkpoint as ckpt
from emprl.eval import metrics
from emprl.paper_tables import TABLE_II, as_frame

METRIC_COLUMNS = {"ppl": "PPL", "dist1": "Dist-1", "dist2": "Dist-2", "emp_f1": "Emp-F1 (%)"}
# beyond the paper: chance-corrected agreement with the gold levels (Emp-F1's floor sits near every system)
AGREEMENT_COLUMNS = {"kappa": "kappa (mean)", "all_match": "all 3 match (%)"}
METRIC_LABELS = {"dist1": "Dist-1", "dist2": "Dist-2", "emp_f1": "Emp-F1 (%)", **AGREEMENT_COLUMNS}


def is_saved_generator(directory) -> bool:
    return (Path(directory) / "generator.json").is_file()


def evaluate_system(model, tokenizer, examples, gold, scorer, gen_cfg, eval_cfg, max_context_tokens=None,
                    seed: int = 0, progress: bool = True, cache_dir=None) -> dict:
    """Sample one response per example, compute PPL on the gold responses, score the samples; on the
    model's device (the scorer on its own).

    Returns {"row": metrics.evaluate_responses(...) + timings, "responses": m x N, "levels": [m x N, 3] array,
    "nll"/"tokens": [N] the gold responses' summed token cross-entropy and token count}. ``cache_dir``: keep
    the generations, levels and PPL there (``_evaluation_cache``), so that rendering a notebook again, or
    comparing a system in two notebooks, does not sample and score it twice.
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
            t = time.perf_counter()
            row = metrics.evaluate_responses(cached["responses"], cached["levels"], np.asarray(gold),
                                             ppl=cached["ppl"], tokenizer=eval_cfg.tokenizer,
                                             n_boot=eval_cfg.bootstrap, seed=seed, level=eval_cfg.ci_level)
            timings = {**cached["timings"], "metrics_s": time.perf_counter() - t}  # the rest: as first measured
            return {"row": {**row, **timings, "cached": True}, "responses": cached["responses"],
                    "levels": np.asarray(cached["levels"]), "nll": np.asarray(cached["nll"]),
                    "tokens": np.asarray(cached["tokens"])}
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
    decoding, batch size). Generation, PPL and scoring are what it saves; the metrics and CIs are computed
    again from them."""
    from emprl.models.scoring import data_fingerprint, state_fingerprint

    key = {"generator": state_fingerprint({"g": model}), "identifiers": scorer.fingerprint,
           "data": data_fingerprint(gen_contexts, [ex.response for ex in examples]), "m": m, "seed": seed,
           "decoding": [gen_cfg.top_k, gen_cfg.top_p, gen_cfg.temperature, gen_cfg.max_new_tokens,
                        gen_cfg.max_source_len, gen_cfg.length_counts_start_token],
           "batch_size": eval_cfg.batch_size}
    return Path(cache_dir) / f"evaluation_{ckpt.key_digest(key)[:16]}.json", key


def score_responses(responses, score_contexts, gold, scorer, eval_cfg, seed: int = 0, ppl=None) -> dict:
    """Levels of the responses by the identifiers, then Dist-n, Emp-F1 and agreement with CIs: the one metrics
    call every system goes through (ours, and the LLM baseline, which has no PPL). ``responses`` and
    ``score_contexts`` hold m blocks of N (``gold`` has N rows).

    Returns {"row": metrics.evaluate_responses(...) + timings, "responses": [...], "levels": [N, 3] array}.
    """
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


def floor_rows(gold, eval_cfg, seed: int = 0) -> dict[str, dict]:
    """The reference predictors (``metrics.FLOORS``) as table rows on the gold levels ``gold`` [N, 3]:
    {"floor: <kind>": metrics row} (no responses: no PPL or Dist-n)."""
    gold = np.asarray(gold)
    return {f"floor: {kind}": metrics.evaluate_responses(None, metrics.floor_levels(gold, kind, seed), gold,
                                                         n_boot=eval_cfg.bootstrap, seed=seed, level=eval_cfg.ci_level)
            for kind in metrics.FLOORS}


def comparison_table(paper: dict, ours: dict[str, dict], paper_label: str, ours_label: str,
                     extra: dict[str, dict] | None = None, floors: dict[str, dict] | None = None) -> pd.DataFrame:
    """The paper's rows as a reference block above our measured rows, in the paper's columns.

    ``ours``: {system: metrics row}; our block adds 95% CIs, mean kappa and all-three-match, the number of
    contexts n and of samples per context m. ``floors`` (``floor_rows``): reference rows below ours, and a
    column with every row's Emp-F1 above the constant-majority floor. ``extra``: {system: {column: value}}
    added to our rows (e.g. PPO steps).
    """
    ref = as_frame(paper)
    ref.insert(0, "Block", paper_label)
    floors = floors or {}
    constant = floors.get("floor: constant majority", {}).get("emp_f1")
    rows = []
    for name, r in {**ours, **floors}.items():
        row = {"Model": name, "Block": "reference (no response read)" if name in floors else ours_label,
               **{METRIC_COLUMNS[k]: r.get(k) for k in METRIC_COLUMNS},
               "Dist-1 95% CI": _ci(r, "dist1"), "Dist-2 95% CI": _ci(r, "dist2"), "Emp-F1 95% CI": _ci(r, "emp_f1")}
        if constant is not None:
            row["Emp-F1 above floor"] = r["emp_f1"] - constant
        if "kappa" in r:
            row.update({"kappa (mean)": r["kappa"], "kappa 95% CI": _ci(r, "kappa"),
                        "all 3 match (%)": r["all_match"], "all 3 match 95% CI": _ci(r, "all_match")})
        row.update({"n": r["n_examples"], "m": r.get("samples_per_context", 1), **(extra or {}).get(name, {})})
        rows.append(row)
    measured = pd.DataFrame(rows).set_index("Model")
    table = pd.concat([ref, measured])
    for col in ["n", "m", *{k for v in (extra or {}).values() for k in v}]:  # counts: "-" for the paper's rows
        table[col] = table[col].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    return table


def table_ii(ours: dict[str, dict], ours_label: str, floors: dict[str, dict] | None = None) -> pd.DataFrame:
    """Table II layout: the paper's reported rows, then ours, then the floors."""
    return comparison_table(TABLE_II, ours, "paper (reported, Table II)", ours_label, floors=floors)


def paired_tests(systems: dict[str, dict], gold, pairs, tokenizer="word", n_boot=1000, seed=0,
                 metric_names=tuple(METRIC_LABELS)) -> pd.DataFrame:
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
            rows.append({"Comparison": f"{a} - {b}", "Metric": METRIC_LABELS[metric], "Difference": res.delta,
                         "95% CI": f"[{res.low:.2f}, {res.high:.2f}]", "SE": res.se, "p (paired bootstrap)": res.p_value,
                         "Dist-n tokenizer": metrics.tokenizer_label(tokenizer) if metric.startswith("dist") else "-"})
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


def describe_run(P, data_dir=None) -> str:
    """One label for our block: profile, generator, identifiers, data."""
    g, i = P.generator, P.identifiers
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


def write_system_generations(folder, stem: str, ids, responses: dict[str, list[str]]) -> list[Path]:
    """``write_generations`` one file per system, ``<folder>/<stem>_<system>_responses.jsonl.gz`` (the system's
    name in lower case, other characters than letters and digits as "_"): with m samples per context one
    file of every system would pass the size a repository should hold."""
    import re

    return [write_generations(Path(folder) / f"{stem}_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}"
                                             "_responses.jsonl.gz", ids, {name: texts})
            for name, texts in responses.items()]


def read_generations(path) -> list[dict]:
    """The rows of a ``write_generations`` file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
