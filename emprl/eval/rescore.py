"""Score committed generations with an evaluator, into the committed levels files.

    python -m emprl.eval.rescore --profile offline --evaluator reward   # the reward's identifiers
    python -m emprl.eval.rescore --profile offline --evaluator judge    # the independent judge

Every ``OUT/generations/*test*_responses.jsonl.gz`` file holds a system's sampled responses to the test
contexts (id, system, sample, response). This scores them, and the human responses, with the evaluator and
writes ``OUT/levels/test_<system>.json.gz`` and ``OUT/levels/test_gold.json.gz`` (``evaluation.write_levels``),
keeping the other evaluators' levels there; ``python -m emprl.eval.rebuild`` then rebuilds the tables from those
files alone. Nothing is sampled again: a system whose file already holds the evaluator's levels is skipped
(``--force`` scores it again), so an interrupted run continues where it stopped. Each system scored appends a
line to the test ledger (system "<name> [<evaluator> on committed generations]"): it is a look at the test
split by another evaluator, not a new sample."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from emprl import data
from emprl.eval import evaluation
from emprl.profiles import get_profile
from emprl.run import Paths, resolve_device, resolve_output_dir, set_threads

EVALUATORS = ("reward", "judge")


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


def responses_by_sample(path: Path, ids: list[str]) -> list[str]:
    """The file's responses in the evaluation layout: m blocks of N, sample j of context i at j * N + i."""
    rows = evaluation.read_generations(path)
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


def rescore(profile: str, evaluator: str, out=None, checkpoints=None, data_dir=None, systems=None,
            force: bool = False, gold_only: bool = False) -> dict[str, Path]:
    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
    # not run.setup: it would overwrite the rendered run's metrics/config.json in OUT
    P = get_profile(profile)
    set_threads(P)
    out = resolve_output_dir(profile, out)
    paths = Paths(out)
    checkpoints = Path(checkpoints) if checkpoints else paths.checkpoints
    test = data.load_split(P, "test", data.dataset_dir(profile, data_dir))
    ids = [ex.id for ex in test]
    _, score_contexts = data.context_texts(test, P.data.max_context_tokens)
    ledger = evaluation.Ledger.of(out, P)
    scorer = load_evaluator(evaluator, checkpoints, resolve_device(P.runtime.device), paths.cache / "judge_features")
    written = {}

    gold_path = evaluation.gold_levels_path(out, "test")
    gold_record = evaluation.read_json_gz(gold_path) if gold_path.is_file() else {"evaluators": {}}
    if force or evaluator not in gold_record["evaluators"]:
        gold = scorer.levels(score_contexts, [ex.response for ex in test]).numpy()
        if evaluator in gold_record["evaluators"]:
            before = np.asarray(gold_record["evaluators"][evaluator])
            print(f"gold ({evaluator}): {int((before != gold).sum())} of {gold.size} levels changed", flush=True)
        written["gold"] = evaluation.write_gold_levels(out, "test", ids, {evaluator: gold})

    for system, path in generation_files(out).items():
        if gold_only or (systems and system not in systems):
            continue
        target = evaluation.levels_path(out, "test", system)
        if not force and target.is_file() and evaluator in evaluation.read_json_gz(target)["evaluators"]:
            print(f"{system}: {evaluator} levels present, skipped", flush=True)
            continue
        responses = responses_by_sample(path, ids)
        m = len(responses) // len(ids)
        ledger.append(f"{system} [{evaluator} on committed generations]", len(ids), m)
        levels = scorer.levels(score_contexts * m, responses).numpy()
        written[system] = evaluation.write_levels(out, "test", system, ids, {evaluator: levels},
                                                  generations=path.relative_to(out).as_posix())
        print(f"{system}: {m} x {len(ids)} responses scored by the {evaluator}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.eval.rescore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--evaluator", choices=EVALUATORS, required=True)
    parser.add_argument("--out", help="the output folder holding generations/ and levels/ (default outputs/<profile>)")
    parser.add_argument("--checkpoints", help="the folder holding identifiers/ and judge/ (default OUT/checkpoints)")
    parser.add_argument("--data-dir", help="data folder (default $EMPRL_DATA_DIR)")
    parser.add_argument("--system", action="append", help="only this system (repeatable)")
    parser.add_argument("--force", action="store_true", help="score again what the files already hold")
    parser.add_argument("--gold-only", action="store_true", help="only the human responses' levels")
    args = parser.parse_args(argv)
    rescore(args.profile, args.evaluator, args.out, args.checkpoints, args.data_dir, args.system, args.force,
            args.gold_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
