"""Evaluate a generator on the test split: sample, PPL, identifier levels, metrics (notebooks 05-07).

``evaluate_system`` runs the three costly parts once each, batched: ``policy.sample_responses``
and ``generator.perplexity`` (length-sorted batches) and one ``scorer.levels`` call (the three
mechanisms scored together, length-sorted). Gold levels come from the cache that
``scoring.gold_labels`` keeps (computed once per identifier weights), not from here.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from emprl import metrics
from emprl.paper_tables import TABLE_II, as_frame

METRIC_COLUMNS = {"ppl": "PPL", "dist1": "Dist-1", "dist2": "Dist-2", "emp_f1": "Emp-F1 (%)"}


def is_saved_generator(directory) -> bool:
    return (Path(directory) / "generator.json").is_file()


def evaluate_system(model, tokenizer, examples, gold, scorer, gen_cfg, eval_cfg, max_context_tokens=None,
                    seed: int = 0, progress: bool = True) -> dict:
    """Sample one response per example, compute PPL on the gold responses, score the samples; on the
    model's device (the scorer on its own).

    Returns {"row": metrics.evaluate_responses(...) + timings, "responses": [...], "levels": [N, 3] array}.
    """
    from emprl import generator, policy
    from emprl.data import context_texts

    gen_contexts, score_contexts = context_texts(examples, max_context_tokens)
    timings = {}
    t = time.perf_counter()
    responses = policy.sample_responses(model, tokenizer, gen_contexts, gen_cfg, seed=seed,
                                           batch_size=eval_cfg.batch_size, progress=progress)
    timings["generation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ppl = generator.perplexity(model, tokenizer, gen_contexts, [ex.response for ex in examples],
                               batch_size=eval_cfg.batch_size, max_source_len=gen_cfg.max_source_len, progress=progress)
    timings["ppl_s"] = time.perf_counter() - t
    result = score_responses(responses, score_contexts, gold, scorer, eval_cfg, seed, ppl=ppl)
    result["row"].update(timings)
    return result


def score_responses(responses, score_contexts, gold, scorer, eval_cfg, seed: int = 0, ppl=None) -> dict:
    """Levels of the responses by the identifiers, then Dist-n and Emp-F1 with CIs: the one metrics call
    every system goes through (ours, and the LLM baseline, which has no PPL).

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
    return f"[{row[key + '_low']:.2f}, {row[key + '_high']:.2f}]"


def comparison_table(paper: dict, ours: dict[str, dict], paper_label: str, ours_label: str,
                     extra: dict[str, dict] | None = None) -> pd.DataFrame:
    """The paper's rows as a reference block above our measured rows, in the paper's columns.

    ``ours``: {system: metrics row}; our block adds 95% CIs and the number of examples.
    ``extra``: {system: {column: value}} added to our rows (e.g. PPO steps).
    """
    ref = as_frame(paper)
    ref.insert(0, "Block", paper_label)
    rows = []
    for name, r in ours.items():
        rows.append({"Model": name, "Block": ours_label, **{METRIC_COLUMNS[k]: r[k] for k in METRIC_COLUMNS},
                     "Dist-1 95% CI": _ci(r, "dist1"), "Dist-2 95% CI": _ci(r, "dist2"),
                     "Emp-F1 95% CI": _ci(r, "emp_f1"), "n": r["n_examples"], **(extra or {}).get(name, {})})
    measured = pd.DataFrame(rows).set_index("Model")
    table = pd.concat([ref, measured])
    for col in ["n", *{k for v in (extra or {}).values() for k in v}]:  # counts: integers, "-" for the paper's rows
        table[col] = table[col].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    return table


def table_ii(ours: dict[str, dict], ours_label: str) -> pd.DataFrame:
    """Table II layout: the paper's reported rows, then ours."""
    return comparison_table(TABLE_II, ours, "paper (reported, Table II)", ours_label)


def paired_tests(systems: dict[str, dict], gold, pairs, tokenizer="word", n_boot=1000, seed=0) -> pd.DataFrame:
    """Paired bootstrap tests (Dist-1, Dist-2, Emp-F1) for each (A, B) in ``pairs``.

    ``systems``: {name: {"responses": [...], "levels": [N, 3]}}.
    """
    rows = []
    for a, b in pairs:
        for metric, label in (("dist1", "Dist-1"), ("dist2", "Dist-2"), ("emp_f1", "Emp-F1 (%)")):
            res = metrics.paired_test(metric, systems[a], systems[b], gold=gold, tokenizer=tokenizer, n_boot=n_boot, seed=seed)
            rows.append({"Comparison": f"{a} - {b}", "Metric": label, "Difference": res.delta,
                         "95% CI": f"[{res.low:.2f}, {res.high:.2f}]", "p (paired bootstrap)": res.p_value,
                         "Dist-n tokenizer": metrics.tokenizer_label(tokenizer) if metric != "emp_f1" else "-"})
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
    """Every system's responses as gzip-compressed JSON lines {"id", "system", "response"}, atomically.

    ``ids``: one identifier per example; ``responses``: {system: responses in the order of ``ids``}.
    The gzip header carries no time stamp, so equal generations give byte-identical files.
    """
    path = Path(path)
    for system, texts in responses.items():
        if len(texts) != len(ids):
            raise ValueError(f"write_generations: {system!r} has {len(texts)} responses for {len(ids)} ids")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        for system, texts in responses.items():
            for i, text in zip(ids, texts):
                f.write((json.dumps({"id": i, "system": system, "response": text}, ensure_ascii=False) + "\n").encode())
    tmp.replace(path)
    return path


def read_generations(path) -> list[dict]:
    """The rows of a ``write_generations`` file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
