"""Run the numbered notebooks in order with papermill.

    python -m emprl.ops.pipeline --profile smoke|offline|gpu|paper [--preset paper|authors|repaired]
                             [--only 01,03] [--out DIR] [--jobs N] [--data-dir DIR] [--seed N]
                             [--device cpu|cuda|auto] [--set section.param=value ...]

Each notebook ``notebooks/NN_*.ipynb`` is executed into ``<out>/NN_*.ipynb`` (default
``outputs/<profile>/``) with the parameters ``profile``, ``preset``, ``seed``, ``device`` and
``overrides``; the data and output folders reach the kernel as ``$EMPRL_DATA_DIR`` and
``$EMPRL_OUTPUT_DIR``, so that no machine path is written into the rendered notebooks (papermill
records its parameters and file names in them). Progress bars are summary lines
(``$EMPRL_PROGRESS=summary``; the hub's and transformers' bars are off). The run stops at the first
failing notebook and names it and the failing cell. Each rendered notebook records, in its metadata
under ``emprl``, the commit, the profile, the preset and the resolved configuration;
``<out>/metrics/config.json`` holds the same. After a full run the judge scores every test system and the
tables are rebuilt from the committed levels (``judge_and_rebuild``); then the report ``<out>/report.md`` is
written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emprl.checkpoint import atomic_write_text
from emprl.profiles import PRESETS, PROFILES, SECTIONS, get_profile, parse_overrides
from emprl.run import REPO_ROOT, setup

NOTEBOOK_DIR = REPO_ROOT / "notebooks"

# What each notebook reads from the others' outputs (checkpoints, caches, generations); ``--jobs 2`` runs a
# notebook as soon as these have finished. A notebook missing here waits for every notebook before it.
DEPENDS: dict[str, tuple[str, ...]] = {
    "01": (), "02": (), "03": (),
    "04": ("02", "03"),  # PPO: identifiers and the prefix-tuned generator
    "05": ("04",),  # EmpRL's policy, w/o RL, w/o RL prefix-tuning
    "06": ("02", "03"),  # its own PPO runs under ablation/
    "07": ("04", "06"),  # systems of 05 and the ablation's EmpRL
    "08": ("02", "03"),  # the RL study trains its own arms
    "09": ("04", "06"),  # the playground's systems
    "10": ("02",),  # GRPO on the instruct LLM: the identifiers (its reward) and the judge
}


def discover(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks, in order."""
    found = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_*.ipynb) in {notebook_dir}")
    return found


def select(notebooks: list[Path], only: str | None) -> list[Path]:
    """Keep the notebooks whose two-digit number is listed in ``only`` ("01,03")."""
    if not only:
        return notebooks
    wanted = [w.strip().zfill(2) for w in only.split(",") if w.strip()]
    by_number = {p.name[:2]: p for p in notebooks}
    unknown = [w for w in wanted if w not in by_number]
    if unknown:
        raise ValueError(f"--only: no notebook numbered {unknown}; available: {sorted(by_number)}")
    return [by_number[w] for w in sorted(set(wanted))]


def _failing_cell(output_nb: Path) -> str:
    """Describe the first cell (1-based, as in the source notebook) that holds an error output."""
    try:
        nb = json.loads(output_nb.read_text())
    except (OSError, ValueError):
        return "(rendered notebook unreadable)"
    added = {"injected-parameters", "papermill-error-cell-tag"}
    source_cells = [c for c in nb.get("cells", []) if not added & set(c.get("metadata", {}).get("tags", []))]
    for index, cell in enumerate(source_cells, start=1):  # numbered as in the source notebook
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                src = "".join(cell.get("source", "")).strip().splitlines()
                first = src[0] if src else ""
                return f"cell {index} (first line: {first!r}): {out.get('ename')}: {out.get('evalue')}"
    return "(no error cell recorded)"


def commit() -> str | None:
    """The commit the code comes from: ``$EMPRL_COMMIT`` (set by the bundle), else git's HEAD (+"-dirty")."""
    if os.environ.get("EMPRL_COMMIT"):
        return os.environ["EMPRL_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def record(rendered: Path, run_config: dict[str, Any], code_commit: str | None) -> None:
    """Write the commit, profile and resolved configuration into a rendered notebook's metadata."""
    import nbformat

    nb = nbformat.read(rendered, as_version=4)
    nb.metadata["emprl"] = {"commit": code_commit, **run_config}
    nbformat.write(nb, rendered)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Every section but ``runtime``: the device and precision chosen do not make outputs stale."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k != "runtime"}))


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def sections_read(notebook: str | Path) -> set[str] | None:
    """The profile sections a notebook's code names (``P.<section>``), with "data", which every notebook reads
    through its loaders: the settings its outputs can depend on. None when the notebook is not there."""
    notebook = Path(notebook)
    if not notebook.is_file():
        return None
    return {"data"} | set(re.findall(r"\bP\.([a-z_]+)\b", notebook.read_text())) & set(SECTIONS)


# Settings added to a section after renders were recorded, whose value here is what the code did before they
# existed: a render that does not record one ran with this value. Add only a setting whose addition changed no
# computation at that value (the tests of the option show the old path is the default one).
ADDED_AS_BEFORE: dict[str, Any] = {
    "ppo.reward": "paper",  # R_emp as the paper's; "chance_corrected" came with issue 26
    "study.control_seeds": 3,  # was the constant study.CONTROL_SEEDS = (0, 1, 2); read only by 08's section 8
}


def staleness(rendered: str | Path, notebook_dir: Path = NOTEBOOK_DIR) -> list[str]:
    """Why a rendered notebook is not current for its profile ([] when it is).

    It is stale when it records no configuration, or when its recorded configuration differs from what
    ``get_profile`` builds today for the recorded profile and preset (the paper's where none is recorded)
    in a section its source in ``notebook_dir`` reads (``sections_read``; every section but ``runtime`` when
    the source is gone): a setting it never reads, such as a section added since, cannot change it. A setting
    of ``ADDED_AS_BEFORE`` that the render does not record counts as recorded at its value there.
    """
    import nbformat

    nb = nbformat.read(Path(rendered), as_version=4)
    recorded = nb.metadata.get("emprl")
    if not recorded or "config" not in recorded or "profile" not in recorded:
        return [f"{Path(rendered).name}: records no configuration (rendered before configurations were recorded)"]
    try:
        current = get_profile(recorded["profile"], preset=recorded.get("preset", "paper")).to_dict()
    except ValueError as err:
        return [f"{Path(rendered).name}: {err}"]
    old, new = _flatten(_comparable(recorded["config"])), _flatten(_comparable(current))
    read = sections_read(Path(notebook_dir) / Path(rendered).name)
    if read is not None:
        old = {k: v for k, v in old.items() if k.split(".")[0] in read}
        new = {k: v for k, v in new.items() if k.split(".")[0] in read}
    absent = "(absent)"
    old = {**{k: v for k, v in ADDED_AS_BEFORE.items() if k.split(".")[0] in {x.split(".")[0] for x in old}}, **old}
    return [f"{Path(rendered).name}: {key} recorded {old.get(key, absent)!r}, current {new.get(key, absent)!r}"
            for key in sorted(set(old) | set(new)) if old.get(key, absent) != new.get(key, absent)]


@contextlib.contextmanager
def _environment(**values: str | None):
    """Set (or, for None, leave as is) environment variables for the kernels papermill starts; restore after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _relative_names(rendered: Path, source: Path) -> None:
    """Replace the absolute input and output paths papermill records in a rendered notebook by names."""
    try:
        nb = json.loads(rendered.read_text())
    except (OSError, ValueError):
        return
    record = nb.get("metadata", {}).get("papermill")
    if record is None:
        return
    record["input_path"] = f"notebooks/{source.name}"
    record["output_path"] = rendered.name
    rendered.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def run(profile: str, only: str | None = None, out: str | None = None, data_dir: str | None = None,
        seed: int = 0, notebook_dir: Path = NOTEBOOK_DIR, device: str | None = None, overrides: Any = None,
        preset: str = "paper") -> Path:
    """Execute the selected notebooks; return the output folder. Raises RuntimeError on failure."""
    import papermill as pm

    overrides = parse_overrides(overrides)
    # validates the profile and the device before anything runs, and writes <out>/metrics/config.json
    the_run = setup(profile, seed=seed, data_dir=data_dir, output_dir=out, device=device, overrides=overrides,
                    preset=preset)
    out_dir, run_config, code_commit = the_run.out, the_run.config(), commit()
    notebooks = select(discover(notebook_dir), only)
    timings: dict[str, float] = {}
    for nb in notebooks:
        target = out_dir / nb.name
        print(f"[emprl.ops.pipeline] {profile}: running {nb.name} -> {target}", flush=True)
        start = time.perf_counter()
        data = None if data_dir in (None, "") else str(Path(data_dir).expanduser().resolve())
        progress = os.environ.get("EMPRL_PROGRESS") or "summary"
        try:
            with _environment(EMPRL_OUTPUT_DIR=str(out_dir), EMPRL_DATA_DIR=data, EMPRL_PROGRESS=progress,
                              HF_HUB_DISABLE_PROGRESS_BARS="1" if progress != "auto" else None):
                pm.execute_notebook(
                    str(nb), str(target),
                    parameters={"profile": profile, "preset": preset, "seed": seed, "device": device,
                                "overrides": overrides or None},
                    cwd=str(nb.parent), progress_bar=False, log_output=False,
                )
        except pm.PapermillExecutionError as err:
            raise RuntimeError(
                f"notebook {nb.name} failed at {_failing_cell(target)}; rendered notebook: {target}"
            ) from err
        finally:
            _relative_names(target, nb)
        record(target, run_config, code_commit)
        timings[nb.name] = round(time.perf_counter() - start, 1)
        print(f"[emprl.ops.pipeline] {nb.name} done in {timings[nb.name]:.1f} s", flush=True)
    _write_timings(out_dir, timings, partial=only is not None)
    if only is None:
        judge_and_rebuild(out_dir, profile, data_dir, the_run.paths.judge)
        try:
            from emprl.eval.report import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
            report = write_report(out_dir, profile)
            print(f"[emprl.ops.pipeline] report: {report}")
    total = sum(timings.values())
    print(f"[emprl.ops.pipeline] {len(timings)} notebook(s) in {total:.1f} s; outputs in {out_dir}")
    return out_dir


def judge_and_rebuild(out_dir: Path, profile: str, data_dir: str | None, judge_dir: Path) -> list[str]:
    """After a full run, what no notebook does: the judge's levels of every committed test system and of the
    training contexts its blind floor is fitted on (``eval.rescore``, which skips what is scored), then every
    table rebuilt from the committed files (``eval.rebuild``), for each test split with gold levels (notebook
    10's first contexts have their own). Without a trained judge the rebuild has the reward's identifiers only.
    Returns the splits rebuilt."""
    from emprl.eval import evaluation, rebuild, rescore

    if not evaluation.gold_levels_path(out_dir, "test").is_file():
        return []  # no notebook looked at the test split
    if (judge_dir / "judge.json").is_file():
        print("[emprl.ops.pipeline] the judge's levels of every test system (eval.rescore)", flush=True)
        rescore.rescore(profile, "judge", out=out_dir, data_dir=data_dir)
        rescore.train_frequencies(profile, "judge", out=out_dir, data_dir=data_dir)
    splits = sorted(path.name[: -len("_gold.json.gz")]
                    for path in (out_dir / evaluation.LEVELS_FOLDER).glob("test*_gold.json.gz"))
    for split in splits:
        print(f"[emprl.ops.pipeline] rebuilt tables ({split} split): "
              f"{len(rebuild.rebuild(out_dir, profile, split))} files", flush=True)
    return splits


def _write_timings(out_dir: Path, timings: dict[str, float], partial: bool) -> None:
    """Record notebook wall times in ``metrics/pipeline_timings.json``: a partial run updates its notebooks'
    entries, a full run starts afresh. Runs side by side (``--jobs``) share the file: a lock serialises the
    read-modify-write, and the atomic write never leaves a torn file."""
    import fcntl

    (out_dir / "metrics").mkdir(exist_ok=True)
    timings_file = out_dir / "metrics" / "pipeline_timings.json"
    with open(out_dir / "metrics" / ".pipeline_timings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if partial and timings_file.is_file():
            timings = {**json.loads(timings_file.read_text()), **timings}
        atomic_write_text(timings_file, json.dumps(dict(sorted(timings.items())), indent=2) + "\n")


def run_parallel(profile: str, jobs: int, only: str | None = None, out: str | None = None,
                 data_dir: str | None = None, seed: int = 0, notebook_dir: Path = NOTEBOOK_DIR,
                 device: str | None = None, overrides: Any = None, preset: str = "paper") -> Path:
    """``run`` with up to ``jobs`` notebooks at once, each in a process of its own with
    ``cores // jobs`` torch threads (``$EMPRL_THREADS`` if set): a notebook starts once the notebooks it
    reads (``DEPENDS``) have finished. On two cores two one-thread processes beat one two-thread process
    (generation does not scale with threads). Stops launching at the first failure and names it."""
    overrides = parse_overrides(overrides)
    the_run = setup(profile, seed=seed, data_dir=data_dir, output_dir=out, device=device, overrides=overrides,
                    preset=preset)
    out_dir = the_run.out
    notebooks = select(discover(notebook_dir), only)
    numbers = [nb.name[:2] for nb in notebooks]
    order = [nb.name[:2] for nb in discover(notebook_dir)]
    needs = {n: {d for d in DEPENDS.get(n, tuple(order[: order.index(n)])) if d in numbers} for n in numbers}
    env = {**os.environ, "EMPRL_THREADS": os.environ.get("EMPRL_THREADS") or str(max(1, (os.cpu_count() or 1)
                                                                                      // jobs))}
    pending, running, done, failed = list(numbers), {}, set(), []
    start = time.perf_counter()
    while pending or running:
        ready = [n for n in pending if needs[n] <= done] if not failed else []
        while ready and len(running) < jobs:
            n = ready.pop(0)
            pending.remove(n)
            cmd = [sys.executable, "-m", "emprl.ops.pipeline", "--profile", profile, "--preset", preset,
                   "--only", n, "--out", str(out_dir), "--seed", str(seed),
                   "--notebook-dir", str(notebook_dir)]
            cmd += ["--data-dir", data_dir] if data_dir else []
            cmd += ["--device", device] if device else []
            for section, params in overrides.items():
                cmd += [a for k, v in params.items() for a in ("--set", f"{section}.{k}={v}")]
            print(f"[emprl.ops.pipeline] {profile}: starting {n} ({len(running) + 1} running)", flush=True)
            running[n] = subprocess.Popen(cmd, env=env)
        if not running:
            break
        time.sleep(0.5)
        for n, proc in list(running.items()):
            if proc.poll() is not None:
                del running[n]
                (done.add(n) if proc.returncode == 0 else failed.append(n))
    if failed or pending:
        raise RuntimeError(f"notebook(s) {', '.join(failed)} failed (see the lines above); not run: "
                           f"{', '.join(pending) or 'none'}")
    if only is None:
        from emprl.eval.report import write_report

        judge_and_rebuild(out_dir, profile, data_dir, the_run.paths.judge)
        print(f"[emprl.ops.pipeline] report: {write_report(out_dir, profile)}")
    print(f"[emprl.ops.pipeline] {len(numbers)} notebook(s) in {time.perf_counter() - start:.1f} s wall, {jobs} at a "
          f"time; outputs in {out_dir}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emprl.ops.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", help=f"one of {sorted(PROFILES)} (default smoke)")
    parser.add_argument("--preset", default="paper",
                        help=f"method settings on the profile, one of {sorted(PRESETS)} (default paper)")
    parser.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--out", default=None, help="output folder (default outputs/<profile>)")
    parser.add_argument("--data-dir", default=None, help="data folder (default $EMPRL_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:N (default $EMPRL_DEVICE, else the profile's runtime.device)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.PARAM=VALUE",
                        help="override one profile parameter, e.g. --set ppo.steps=500 (repeatable)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks run side by side, each in its own process (default 1); see DEPENDS")
    parser.add_argument("--notebook-dir", default=str(NOTEBOOK_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        data = args.data_dir or os.environ.get("EMPRL_DATA_DIR")
        if args.jobs > 1:
            run_parallel(args.profile, args.jobs, args.only, args.out, data, args.seed,
                         notebook_dir=Path(args.notebook_dir), device=args.device, overrides=args.overrides,
                         preset=args.preset)
        else:
            run(args.profile, args.only, args.out, data, args.seed, notebook_dir=Path(args.notebook_dir),
                device=args.device, overrides=args.overrides, preset=args.preset)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"[emprl.ops.pipeline] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
