"""Score committed generations with an evaluator, into the committed levels files.

    python -m emprl.eval.rescore --profile offline --evaluator reward   # the reward's identifiers
    python -m emprl.eval.rescore --profile offline --evaluator judge    # the independent judge

Every ``OUT/generations/*test*_responses.jsonl.gz`` file holds a system's sampled responses to the test
contexts (id, system, sample, response). This scores them, and the human responses, with the evaluator and
writes ``OUT/levels/test_<system>.json.gz`` and ``OUT/levels/test_gold.json.gz`` (``evaluation.write_levels``;
a file that answers only the first n test contexts and has its levels in ``levels/test_first<n>_<system>``, as
notebook 10's, is skipped: that notebook scores its replies under both evaluators),
keeping the other evaluators' levels there; ``python -m emprl.eval.rebuild`` then rebuilds the tables from those
files alone. Nothing is sampled again: a system whose file already holds the evaluator's levels is skipped
(``--force`` scores it again). What is left is scored together, a slice of the contexts at a time (``--slice``):
the judge encodes each context once for all its responses and caches each slice's features, so an interrupted
run continues from its last finished slice. Each system scored appends a
line to the test ledger (system "<name> [<evaluator> on committed generations]"): it is a look at the test
split by another evaluator, not a new sample."""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from emprl import data
from emprl.eval import evaluation
from emprl.run import setup

EVALUATORS = ("reward", "judge")
GOLD = "gold"  # the human responses


def generation_files(out: Path) -> dict[str, Path]:
    """{system: its generations file} of the test split; a system in two files must have the same responses."""
    found: dict[str, Path] = {}
    for path in sorted((out / "generations").glob("*test*_responses.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            system = json.loads(f.readline())["system"]
        if system in found and _text(found[system]) != _text(path):
            raise ValueError(f"{path.name} and {found[system].name} both hold {system!r} but differ")
        found.setdefault(system, path)
    return found


def _text(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def responses_by_sample(path: Path, rows: list[dict], ids: list[str]) -> list[str]:
    """The responses of ``rows`` (``evaluation.read_generations(path)``) in the evaluation layout: m blocks of
    N, sample j of context i at j * N + i."""
    m = 1 + max(r["sample"] for r in rows)
    where = {i: k for k, i in enumerate(ids)}
    out: list[str | None] = [None] * (m * len(ids))
    for r in rows:
        if r["id"] not in where:
            raise ValueError(f"{path.name}: id {r['id']!r} is not a test context of this profile")
        out[r["sample"] * len(ids) + where[r["id"]]] = r["response"]
    missing = sum(x is None for x in out)
    if missing:
        raise ValueError(f"{path.name}: {missing} of {len(out)} (context, sample) responses are missing")
    return out


def load_evaluator(name: str, checkpoints: Path, device, cache_dir: Path):
    """The reward's identifiers (float32, as for every metric) or the judge, from ``checkpoints``."""
    if name == "reward":
        from emprl.models.scoring import EmpathyScorer

        return EmpathyScorer.load(checkpoints / "identifiers", device)
    from emprl.models.judge import Judge

    return Judge.load(checkpoints / "judge", device, cache_dir=cache_dir)


def score_in_slices(scorer, contexts: list[str], jobs: dict[str, list[str]], slice_size: int) -> dict[str, np.ndarray]:
    """{name: levels [len(responses), 3]} of every job's responses (m blocks of N: response j * N + i answers
    ``contexts[i]``), scored together, ``slice_size`` contexts at a time. Together: the judge then encodes each
    context once for all the responses to it (``models.judge.Backbone.features``); by slices: it caches each
    slice's features, so an interrupted run continues from its last finished slice."""
    n = len(contexts)
    levels = {name: np.zeros((len(responses), 3), dtype=np.int64) for name, responses in jobs.items()}
    for start in range(0, n if jobs else 0, slice_size):
        began, stop = time.time(), min(start + slice_size, n)
        where = [(name, j * n + i) for name, responses in jobs.items()
                 for j in range(len(responses) // n) for i in range(start, stop)]
        scored = scorer.levels([contexts[k % n] for _, k in where], [jobs[name][k] for name, k in where])
        for (name, k), row in zip(where, scored.numpy()):
            levels[name][k] = row
        print(f"contexts {start}-{stop} of {n}: {len(where)} responses in {time.time() - began:.0f} s", flush=True)
    return levels


def train_frequencies(profile: str, evaluator: str, out=None, checkpoints=None, data_dir=None,
                      slice_size: int = 250) -> Path:
    """The evaluator's level frequencies of the human responses of the PPO run's training contexts
    (``evaluation.prior_contexts``, as the notebooks count the reward's), into ``levels/train_frequencies.json``:
    the blind best floor of that evaluator is fitted on them."""
    from emprl.eval import metrics

    run = setup(profile, output_dir=out, record=False)  # the rendered run's metrics/config.json stays as it is
    P, out, paths = run.profile, run.out, run.paths
    checkpoints = Path(checkpoints) if checkpoints else paths.checkpoints
    train = evaluation.prior_contexts(P, data.load_split(P, "train", data.dataset_dir(profile, data_dir)))
    _, contexts = data.context_texts(train, P.data.max_context_tokens)
    scorer = load_evaluator(evaluator, checkpoints, run.device, paths.cache / "judge_features")
    levels = score_in_slices(scorer, contexts, {GOLD: [ex.response for ex in train]}, slice_size)[GOLD]
    return evaluation.write_train_frequencies(out, evaluator, metrics.level_frequencies(levels), len(train),
                                              evaluation.TRAIN_SOURCE)


def rescore(profile: str, evaluator: str, out=None, checkpoints=None, data_dir=None, systems=None,
            force: bool = False, slice_size: int = 250) -> dict[str, Path]:
    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
    run = setup(profile, output_dir=out, record=False)  # the rendered run's metrics/config.json stays as it is
    P, out, paths = run.profile, run.out, run.paths
    checkpoints = Path(checkpoints) if checkpoints else paths.checkpoints
    test = data.load_split(P, "test", data.dataset_dir(profile, data_dir))
    ids = [ex.id for ex in test]
    _, score_contexts = data.context_texts(test, P.data.max_context_tokens)
    ledger = evaluation.Ledger.of(out, P)
    scorer = load_evaluator(evaluator, checkpoints, run.device, paths.cache / "judge_features")
    written = {}

    # what to score: the human responses unless their levels are there, and each system without them
    gold_path = evaluation.gold_levels_path(out, "test")
    gold_record = evaluation.read_json_gz(gold_path) if gold_path.is_file() else {"evaluators": {}}
    jobs: dict[str, list[str]] = {}  # name -> responses, m blocks of N (sample j of context i at j * N + i)
    if (force or evaluator not in gold_record["evaluators"]) and (not systems or GOLD in systems):
        jobs[GOLD] = [ex.response for ex in test]
    files, found = {}, generation_files(out)
    unknown = sorted(set(systems or ()) - set(found) - {GOLD})
    if unknown:
        raise ValueError(f"--system {unknown}: no generations file of that system under {out / 'generations'} "
                         f"(there: {sorted(found)} and {GOLD!r})")
    for system, path in found.items():
        if systems and system not in systems:
            continue
        target = evaluation.levels_path(out, "test", system)
        if not force and target.is_file() and evaluator in evaluation.read_json_gz(target)["evaluators"]:
            print(f"{system}: {evaluator} levels present, skipped", flush=True)  # before reading its replies
            continue
        rows = evaluation.read_generations(path)
        answered = len({row["id"] for row in rows})
        subset = evaluation.levels_path(out, f"test_first{answered}", system)
        if answered < len(ids) and subset.is_file():  # notebook 10's replies to the first test contexts
            print(f"{system}: {answered} of {len(ids)} test contexts, scored under both evaluators by the notebook "
                  f"that sampled them ({subset.relative_to(out)}), skipped", flush=True)
            continue
        jobs[system], files[system] = responses_by_sample(path, rows, ids), path
    levels = score_in_slices(scorer, score_contexts, jobs, slice_size)
    n = len(ids)
    for name, found in levels.items():
        if name == GOLD:
            if evaluator in gold_record["evaluators"]:
                before = np.asarray(gold_record["evaluators"][evaluator])
                print(f"gold ({evaluator}): {int((before != found).sum())} of {found.size} levels changed",
                      flush=True)
            written[GOLD] = evaluation.write_gold_levels(out, "test", ids, {evaluator: found})
            continue
        m = len(jobs[name]) // n
        ledger.append(f"{name} [{evaluator} on committed generations]", n, m)
        target = evaluation.levels_path(out, "test", name)
        if evaluator in (evaluation.read_json_gz(target)["evaluators"] if target.is_file() else {}):
            before = np.asarray(evaluation.read_json_gz(target)["evaluators"][evaluator])
            print(f"{name} ({evaluator}): {int((before != found).sum())} of {found.size} levels changed",
                  flush=True)
        written[name] = evaluation.write_levels(out, "test", name, ids, {evaluator: found},
                                                generations=files[name].relative_to(out).as_posix())
        print(f"{name}: {m} x {n} responses scored by the {evaluator}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.eval.rescore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--evaluator", choices=EVALUATORS, required=True)
    parser.add_argument("--out", help="the output folder holding generations/ and levels/ (default outputs/<profile>)")
    parser.add_argument("--checkpoints", help="the folder holding identifiers/ and judge/ (default OUT/checkpoints)")
    parser.add_argument("--data-dir", help="data folder (default $EMPRL_DATA_DIR)")
    parser.add_argument("--system", action="append",
                        help="only this system (repeatable; 'gold': the human responses)")
    parser.add_argument("--force", action="store_true", help="score again what the files already hold")
    parser.add_argument("--train-frequencies", action="store_true",
                        help="instead: the level frequencies of the PPO run's training contexts (the blind floor's)")
    parser.add_argument("--slice", type=int, default=250, help="contexts per slice (a judge caches each slice)")
    args = parser.parse_args(argv)
    if args.slice < 1:
        parser.error(f"--slice must be at least 1, got {args.slice}")
    if args.train_frequencies:
        print(train_frequencies(args.profile, args.evaluator, args.out, args.checkpoints, args.data_dir, args.slice))
        return 0
    rescore(args.profile, args.evaluator, args.out, args.checkpoints, args.data_dir, args.system, args.force,
            args.slice)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
