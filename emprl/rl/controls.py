"""Does the empathy reward make the policy read the context? The runs behind the answer (issue 26).

    python -m emprl.rl.controls --profile offline --list                     # every run, done or not
    python -m emprl.rl.controls --profile offline --config "repaired, lr 1e-4" --seed 1 --variant placebo
    python -m emprl.rl.controls --profile offline --next 2 --worker 0         # the runs left, split in two
    python -m emprl.rl.controls --profile offline --split test --next 2 --worker 0   # then the test split, once

A run is one configuration of ``study.CONTROLS`` (a preset and overrides), one variant, one training seed:
PPO from the prefix-tuned generator for ``study.long_steps`` steps, then the validation split (m samples per
context) through ``evaluation.evaluate_system``, the one evaluation of every system. The training seeds are
0 .. ``study.control_seeds`` - 1. The variants: "emprl"
(the configuration's reward) and its **placebo twin** ("placebo": the same reward scored against the gold
levels of another training context, ``ppo_train.placebo_order``), at the same seed, so the difference is what
reading the context buys. The training seed changes the value head's initialisation, the data order and the
sampling; every run starts from the same generator and visits the same contexts. "w/o RL" (the generator
itself) is evaluated once, alike.

Checkpoints go under ``--root`` (outside the work tree: a run is resumable, and a killed one continues from
its last checkpoint); what is committed goes under OUT: the training log (``controls/<run>/log.csv``), the
validation generations and per-response levels with per-example NLL (``evaluation.write_evaluation_records``,
split "valid"), from which the tables are rebuilt. The test split is touched once, after every validation run is
done and the headline is chosen by the rule fixed before the runs (``study.select_control``): ``--split test``
evaluates every run alike (a finished run resumes at its last step, so it only evaluates), each evaluation
recorded in the test ledger, and refuses while a validation run is missing.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from emprl import data
from emprl.eval import evaluation
from emprl.models import generator, scoring
from emprl.profiles import get_profile
from emprl.rl import ppo_train, study
from emprl.run import resolve_output_dir, setup

VARIANTS = ("emprl", "placebo")
BASE = "w/o RL"  # the generator itself, evaluated once beside the runs


def run_name(config: str, variant: str, seed: int) -> str:
    """The system's name in tables and levels files: "<config> | <variant> | seed <s>"."""
    return f"{config} | {variant} | seed {seed}"


def all_runs(n_seeds: int) -> list[tuple[str, str, int]]:
    """Every (config, variant, seed) of seeds 0 .. n_seeds - 1 (``study.control_seeds``), the generator
    without RL first as (None, "emprl", 0), then seeds outermost: after each seed, every configuration has a
    result."""
    return [(None, "emprl", 0)] + [(c, v, s) for s in range(n_seeds) for c in study.CONTROLS for v in VARIANTS]


def worker_of(index: int, k: int) -> int:
    """Which of k workers runs ``all_runs(...)[index]``. Fixed by the run's place in the whole list, not in what
    is left, so workers started at different times (or again in a new session) never take the same run; a run
    and its placebo twin go to one worker, so each pair is finished together."""
    return 0 if index == 0 else ((index - 1) // len(VARIANTS)) % k


def name_of(config: str | None, variant: str, seed: int) -> str:
    return BASE if config is None else run_name(config, variant, seed)


def is_done(out: Path, name: str, split: str = "valid") -> bool:
    return evaluation.levels_path(out, split, name).is_file()


def run_control(profile: str, config: str | None, variant: str, seed: int, out=None, root=None, checkpoints=None,
                data_dir=None, overrides=None, progress: bool = False, split: str = "valid") -> dict:
    """Train (or resume) one run and evaluate it on ``split``; returns its evaluation row. ``config`` None: the
    generator without RL (``BASE``). ``overrides``: as ``emprl.setup``'s (e.g. "runtime.precision=bf16": every
    run alike). ``split``: "valid" (the first ``evaluation.study_max_examples`` examples) or "test" (the first
    ``evaluation.max_examples``, as every test table; recorded in the ledger)."""
    if config is not None and config not in study.CONTROLS:
        raise ValueError(f"unknown control configuration {config!r}; known: {list(study.CONTROLS)}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    run = setup(profile, output_dir=out, overrides=overrides, record=False)
    P, out, paths, device = run.profile, run.out, run.paths, run.device
    checkpoints = Path(checkpoints) if checkpoints else paths.checkpoints
    root = Path(root) if root else paths.checkpoints / "controls"
    E, S = P.evaluation, P.study
    name = name_of(config, variant, seed)

    scorer = scoring.EmpathyScorer.load(checkpoints / "identifiers", device=device,
                                        batch_size=2 * P.identifiers.batch_size)
    reward_scorer = scorer.with_dtype(run.reward_dtype)  # PPO's reward; gold levels and metrics: float32
    examples = data.load_split(P, split, data.dataset_dir(profile, data_dir))
    examples = examples[: E.study_max_examples or E.max_examples] if split == "valid" else examples[: E.max_examples]
    gold = scoring.gold_labels(scorer, examples, paths.cache).numpy()
    gen_dir = checkpoints / "generator" / "prefix"
    policy, tokenizer = generator.load_generator(gen_dir)
    policy = policy.to(device)
    t = time.perf_counter()
    log = None
    if config is not None:
        cfg = study.arm_settings(P, config, S.long_steps)
        train = data.visited_subset(data.load_split(P, "train", data.dataset_dir(profile, data_dir)), cfg.steps,
                                    cfg.batch_size, P.seed)  # the same contexts for every run
        gold_train = scoring.gold_labels(scorer, train, paths.cache)
        run_root = root / study.arm_folder(config) / f"seed{seed}"
        with run.autocast():
            res = ppo_train.train_ppo(policy, None, tokenizer, reward_scorer, train, gold_train, cfg, P.generator,
                                      run_root, seed=seed, variant=variant,
                                      max_context_tokens=P.data.max_context_tokens, progress=progress)
        policy, log = res["model"].policy, res["log_path"]
    train_s = time.perf_counter() - t
    with run.autocast():
        result = evaluation.evaluate_system(policy, tokenizer, examples, gold, scorer, P.generator, E,
                                            P.data.max_context_tokens, seed=P.seed, progress=progress,
                                            cache_dir=paths.cache, split=split, system=name,
                                            ledger=evaluation.Ledger.of(out, P) if split == "test" else None)
    ids, stem = [ex.id for ex in examples], f"controls_{split}"
    evaluation.write_system_generations(out / "generations", stem, ids, {name: result["responses"]})
    evaluation.write_evaluation_records(out, split, ids, gold, {name: result}, stem=stem)
    if (checkpoints / "judge").is_dir():  # the independent judge's levels beside the reward identifiers'
        from emprl.models.judge import Judge

        judge = Judge.load(checkpoints / "judge", device, cache_dir=paths.cache / "judge_features")
        _, score_contexts = data.context_texts(examples, P.data.max_context_tokens)
        m = len(result["responses"]) // len(examples)
        gold_record = evaluation.gold_levels_path(out, split)
        if "judge" not in evaluation.read_json_gz(gold_record)["evaluators"]:
            evaluation.write_gold_levels(out, split, ids, {"judge": judge.levels(
                score_contexts, [ex.response for ex in examples]).numpy()})
        evaluation.write_levels(out, split, name, ids,
                                {"judge": judge.levels(score_contexts * m, result["responses"]).numpy()})
    if log is not None:  # the curve beside the levels, committed
        target = out / "controls" / evaluation.system_stem(name) / "log.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)
    print(f"{name}: trained in {train_s:.0f} s; {split} Emp-F1 {result['row']['emp_f1']:.2f}, "
          f"kappa {result['row']['kappa']:.3f}", flush=True)
    return result["row"]


def summary(out, profile: str, split: str = "valid") -> tuple[pd.DataFrame, str | None, str]:
    """Per configuration with both variants at one seed or more, from the committed ``split`` records alone
    (``eval.rebuild.load``): under each evaluator, the effect on mean kappa over the placebo twin and over w/o
    RL, and Emp-F1 above that evaluator's blind best floor, each with its 95% CI over seeds and contexts
    (``metrics.seed_paired_test``); PPL over w/o RL's; whether the responses stay sound at every seed. Returns
    (table, the headline configuration by ``study.select_control`` or None, why)."""
    from emprl.eval import metrics, rebuild

    P = get_profile(profile)
    E = P.evaluation
    records = rebuild.load(out, split)
    systems, gold = records["systems"], records["gold"]
    if BASE not in systems:
        raise FileNotFoundError(f"no {split} record of {BASE!r} under {out}: python -m emprl.rl.controls "
                                f"--config {BASE!r} --split {split}")
    evaluators = sorted(gold, key=lambda e: e != "judge")  # the judge first: the headline reads it
    for name, record in systems.items():
        missing = [e for e in evaluators if e not in record["levels"]]
        if missing and (name == BASE or name.split(" | ")[0] in study.CONTROLS):
            how = (f"python -m emprl.eval.rescore --profile {profile} --evaluator {missing[0]} --system {name!r}"
                   if split == "test" else "remove it and run the control again (it scores with every evaluator)")
            raise ValueError(f"{evaluation.levels_path(out, split, name)} has no {missing[0]} levels, which the "
                             f"gold has: {how}")
    test = dict(tokenizer=E.tokenizer, n_boot=E.bootstrap, seed=P.seed)
    base_ppl = rebuild.ppl_of(systems[BASE])
    rows = {}
    for config in study.CONTROLS:
        seeds = [s for s in range(P.study.control_seeds)
                 if all(run_name(config, v, s) in systems for v in VARIANTS)]
        if not seeds:
            continue
        arms = [systems[run_name(config, "emprl", s)] for s in seeds]
        twins = [systems[run_name(config, "placebo", s)] for s in seeds]
        row = {"seeds": len(seeds)}
        for e in evaluators:
            def as_system(record):
                return {"responses": record["responses"], "levels": record["levels"][e]}

            a, t = [as_system(r) for r in arms], [as_system(r) for r in twins]
            blind = metrics.floor_levels(gold[e], "blind best", P.seed, prior=records["train_frequencies"].get(e)) \
                if e in records["train_frequencies"] else None
            effects = {"kappa over placebo": metrics.seed_paired_test("kappa", a, t, gold[e], **test),
                       "kappa over w/o RL": metrics.seed_paired_test("kappa", a, [as_system(systems[BASE])],
                                                                     gold[e], **test)}
            if blind is not None:
                effects["Emp-F1 above blind floor"] = metrics.seed_paired_test(
                    "emp_f1", a, [{"responses": None, "levels": blind}], gold[e], **test)
            for what, r in effects.items():
                row.update({f"{what} ({e})": r.delta, f"{what} low ({e})": r.low, f"{what} high ({e})": r.high,
                            f"{what} seed SD ({e})": r.seed_sd})
            if e == evaluators[0]:
                row["kappa effect low"] = effects["kappa over placebo"].low
        ppl = [rebuild.ppl_of(r) for r in arms]
        lengths = [study.mean_length(r["responses"], E.tokenizer) for r in arms]
        dist2 = [(metrics.distinct_n(x["responses"], 2, E.tokenizer), metrics.distinct_n(y["responses"], 2, E.tokenizer))
                 for x, y in zip(arms, twins)]
        row["PPL / w/o RL"] = float(np.mean(ppl)) / base_ppl if base_ppl and None not in ppl else float("nan")
        row["mean length"] = float(np.mean(lengths))
        row["sound"] = bool(all(n >= study.MIN_MEAN_LENGTH for n in lengths) and all(x >= y for x, y in dist2)
                            and base_ppl is not None and None not in ppl
                            and all(v <= study.MAX_PPL_RATIO * base_ppl for v in ppl))
        rows[config] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "configuration"
    if table.empty:
        return table, None, "no configuration has both variants at any seed yet"
    selected, why = study.select_control(table)
    return table, selected, why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.rl.controls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--out", help="the output folder (default outputs/<profile>)")
    parser.add_argument("--root", help="where the runs' checkpoints go (default OUT/checkpoints/controls)")
    parser.add_argument("--checkpoints", help="the folder holding identifiers/ and generator/ (default "
                                              "OUT/checkpoints)")
    parser.add_argument("--data-dir", help="data folder (default $EMPRL_DATA_DIR)")
    parser.add_argument("--config", help=f"one of {list(study.CONTROLS)}, or {BASE!r}")
    parser.add_argument("--variant", default="emprl", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="valid (default), or test: once, every run alike, after every validation run")
    parser.add_argument("--list", action="store_true", help="list every run and whether it is done")
    parser.add_argument("--next", type=int, metavar="K", help="run the runs not done yet, as worker --worker of K")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.PARAM=VALUE",
                        help="override one profile parameter for every run alike, e.g. --set runtime.precision=bf16")
    args = parser.parse_args(argv)
    out = resolve_output_dir(args.profile, args.out)
    runs = all_runs(get_profile(args.profile).study.control_seeds)
    if args.list:
        for run in runs:
            print(f"{'done' if is_done(out, name_of(*run), args.split) else 'to do':6} {name_of(*run)}")
        return 0
    if args.split == "test":  # the test split once, after the selection on validation (issue 26)
        missing = [name_of(*r) for r in runs if not is_done(out, name_of(*r), "valid")]
        if missing:
            parser.error(f"{len(missing)} run(s) have no validation record yet (first: {missing[0]!r}); the test "
                         "split comes after every validation run")
    common = dict(out=args.out, root=args.root, checkpoints=args.checkpoints, data_dir=args.data_dir,
                  overrides=args.overrides, split=args.split)
    if args.next is not None:
        if not 0 <= args.worker < args.next:
            parser.error(f"--worker must be in [0, {args.next}), got {args.worker}")
        todo = [r for i, r in enumerate(runs)
                if worker_of(i, args.next) == args.worker and not is_done(out, name_of(*r), args.split)]
        for config, variant, seed in todo:
            run_control(args.profile, config, variant, seed, **common)
        return 0
    config = None if args.config in (None, BASE) else args.config
    run_control(args.profile, config, args.variant, args.seed, progress=True, **common)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
