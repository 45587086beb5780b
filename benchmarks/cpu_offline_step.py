"""The offline PPO step and evaluation scoring on a CPU: today's path (a reference commit) against this tree.

    .venv/bin/python benchmarks/cpu_offline_step.py [--base 0c950b4] [--steps 5] [--threads 1,2]
                     [--batches 8,32] [--generator DIR] [--identifiers DIR] [--m 4]

Both sides run the same offline-dimension models (prefix T5 d256 4+4, 8k vocabulary, prefix 40/10; three
MiniLM identifiers), random weights unless ``--generator``/``--identifiers`` name trained checkpoints
(random weights never emit EOS, so every response is 30 tokens), on the same EmpatheticDialogues training
contexts (``$EMPRL_DATA_DIR``; invented text otherwise). "Today's path" is the emprl of ``--base`` (checked
out into a temporary git worktree), imported by its own worker process; "fast" is this tree with the
offline profile's settings. The workers take turns step by step (load on a shared machine drifts), and
every figure is the median over ``--steps`` timed steps after one untimed step, wall and CPU seconds.
Both sides first run the gold-label pass over the contexts they will score, as a PPO run and an
evaluation do.

Measured, per thread count and batch: the whole step and its phases (generation, reference forward,
identifier context/response encoders, update forward/backward/optimizer); evaluation scoring per
response with m samples per context (today: one evaluation per sample; fast: one call, contexts from the
cache); the identifiers' speed and level agreement in bfloat16 and int8 against float32. The JSON goes to
``benchmarks/results/cpu_offline_step.json`` with the CPU model, its flags and the torch version.

"Fast" is the current tree with the offline profile's settings on this machine: micro-batches of 4 in the
update and the reward scored in ``runtime.reward_dtype="auto"`` (bfloat16 on a CPU with native bf16);
where the CPU has native bf16 a third side runs the whole step under bf16 autocast
(``runtime.precision="bf16"``, an option, not a default).

Targets (issue 19): fast step / today's <= 0.6 at one thread and batch 8; evaluation scoring per response
at m = 4 <= 0.4 of today's.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "cpu_step_worker.py"


def cpu_info() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name", platform.processor()).strip(), "cores": torch.get_num_threads(),
            "flags_of_note": [f for f in flags if f.startswith(("avx", "amx"))], "torch": torch.__version__,
            "python": platform.python_version()}


def write_inputs(work: Path, args) -> None:
    """generator/, identifiers/ and data.json for both workers."""
    from emprl import data
    from emprl.models import encoders, generator, identifiers
    from emprl.profiles import get_profile

    prof = get_profile("offline")
    try:
        examples = data.load_split(prof, "train", None)[: args.contexts]
        contexts, score_contexts = data.context_texts(examples, prof.data.max_context_tokens)
        responses = [ex.response for ex in examples]
        source = "$EMPRL_DATA_DIR train split"
    except (FileNotFoundError, ValueError):
        words = "i feel so sad and alone since my dog died last week you know how it is with friends".split()
        g = torch.Generator().manual_seed(0)
        sentence = lambda k: " ".join(words[int(i)] for i in torch.randint(len(words), (k,), generator=g))  # noqa
        contexts = [f"Speaker: {sentence(20 + i % 40)}" for i in range(args.contexts)]
        score_contexts, responses = contexts, [sentence(5 + i % 15) for i in range(args.contexts)]
        source = "invented text (no EMPRL_DATA_DIR)"
    if args.generator:
        shutil.copytree(args.generator, work / "generator")
    else:
        torch.manual_seed(0)
        model, tok = generator.build_generator(prof.generator, contexts + responses, seed=0)
        generator.save_generator(model.eval(), tok, work / "generator")
    if args.identifiers:
        shutil.copytree(args.identifiers, work / "identifiers")
    else:
        tok = encoders.load_tokenizer("minilm")
        for k, m in enumerate(data.MECHANISMS):
            torch.manual_seed(k)
            model = identifiers.EmpathyIdentifier(encoders.load_encoder("minilm"), encoders.load_encoder("minilm"))
            identifiers.save_identifier(model.eval(), tok, work / "identifiers" / m, prof.identifiers)
    gold = torch.randint(0, 3, (len(contexts), 3), generator=torch.Generator().manual_seed(1)).tolist()
    (work / "data.json").write_text(json.dumps({"contexts": contexts, "score_contexts": score_contexts,
                                                "responses": responses, "gold": gold, "source": source}))


class Worker:
    def __init__(self, work: Path, threads: int, pythonpath: Path):
        env = {"PYTHONPATH": str(pythonpath), "OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin",
               "EMPRL_PROGRESS": "off", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(work), str(threads)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(pythonpath))
        self.hello = self.read()

    def read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("a benchmark worker died (its stderr is above)")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def medians(rows: list[dict]) -> dict:
    out = {}
    for clock in ("wall", "cpu"):
        keys = sorted({k for r in rows for k in r[clock]})
        out[clock] = {k: statistics.median(r[clock].get(k, 0.0) for r in rows) for k in keys}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="0c950b4", help="the reference commit (today's path)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side and setting")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--micro", type=int, default=4, help="the fast side's ppo.micro_batch_size")
    ap.add_argument("--contexts", type=int, default=1200)
    ap.add_argument("--eval-contexts", type=int, default=64)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--generator", default=None, help="a trained generator (emprl format); default random")
    ap.add_argument("--identifiers", default=None, help="trained identifiers; default MiniLM, random heads")
    ap.add_argument("--dtype-pairs", type=int, default=512, help="pairs for the bf16/int8 agreement check")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_offline_step.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="emprl-cpu-bench-"))
    base_tree = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=REPO, check=True,
                   capture_output=True)
    results = {"cpu": cpu_info(), "base_commit": subprocess.run(["git", "rev-parse", args.base], cwd=REPO,
               capture_output=True, text=True).stdout.strip(), "runs": {},
               # folders by name only: the JSON is committed and names no machine's paths
               "settings": {k: Path(v).name if k in ("identifiers", "generator", "out") and v else v
                            for k, v in vars(args).items()}}
    try:
        work = tmp / "work"
        work.mkdir()
        write_inputs(work, args)
        results["data"] = json.loads((work / "data.json").read_text())["source"]
        from emprl.run import resolve_reward_dtype
        from emprl.run import native_bf16

        reward_dtype = resolve_reward_dtype("auto", torch.device("cpu"))
        results["fast_settings"] = {"micro_batch_size": args.micro, "reward_dtype": reward_dtype,
                                    "native_bf16": native_bf16()}
        # (side, worker, step options): today; the fast path with the profile's defaults on this machine; where
        # the CPU has native bf16, also the whole step under bf16 autocast (runtime.precision="bf16", an option)
        cursor = 0  # each step and evaluation reads contexts no earlier command used
        for threads in [int(t) for t in args.threads.split(",")]:
            workers = {"today": Worker(work, threads, base_tree), "fast": Worker(work, threads, REPO)}
            assert not workers["today"].hello["has_cache"] and workers["fast"].hello["has_cache"]
            sides = {"today": ("today", {}), "fast": ("fast", {"micro": args.micro, "reward_dtype": reward_dtype})}
            if native_bf16():
                sides["fast + bf16 autocast"] = ("fast", {"micro": args.micro, "reward_dtype": "bfloat16",
                                                          "autocast": True})
            for batch in [int(b) for b in args.batches.split(",")]:
                rows = {name: [] for name in sides}
                for step in range(args.steps + 1):
                    lo = cursor
                    cursor += batch
                    for name, (worker, options) in sides.items():
                        workers[worker].ask(cmd="gold", range=[lo, lo + batch])
                        r = workers[worker].ask(cmd="step", batch=batch, start=lo, seed=step, **options)
                        if step > 0:  # the first step warms caches and allocators
                            rows[name].append(r)
                    print(f"threads {threads} batch {batch} step {step}: " + ", ".join(
                        f"{n} {rows[n][-1]['wall']['step']:.2f} s" for n in sides) if step else "warm-up", flush=True)
                run = {name: medians(r) for name, r in rows.items()}
                for name in sides:
                    if name != "today":
                        run[f"ratio_wall {name}"] = run[name]["wall"]["step"] / run["today"]["wall"]["step"]
                        run[f"ratio_cpu {name}"] = run[name]["cpu"]["step"] / run["today"]["cpu"]["step"]
                run["ratio_wall"], run["ratio_cpu"] = run["ratio_wall fast"], run["ratio_cpu fast"]
                run["response_tokens"] = statistics.mean(r["response_tokens"] for r in rows["fast"])
                results["runs"][f"threads{threads}_batch{batch}"] = run
                print(json.dumps({k: v for k, v in run.items() if k.startswith("ratio")}), flush=True)
            sides = workers
            # evaluation scoring with m samples per context
            rows = {"today": [], "fast": []}
            for rep in range(3):
                lo, hi = cursor, cursor + args.eval_contexts
                cursor = hi
                for name, worker in sides.items():
                    worker.ask(cmd="gold", range=[lo, hi])
                    rows[name].append(worker.ask(cmd="eval", range=[lo, hi], m=args.m, one_call=name == "fast"))
            ev = {name: {"per_response_wall": statistics.median(r["wall"]["eval"] / r["responses"] for r in rs),
                         "per_response_cpu": statistics.median(r["cpu"]["eval"] / r["responses"] for r in rs)}
                  for name, rs in rows.items()}
            ev["ratio_wall"] = ev["fast"]["per_response_wall"] / ev["today"]["per_response_wall"]
            ev["ratio_cpu"] = ev["fast"]["per_response_cpu"] / ev["today"]["per_response_cpu"]
            results["runs"][f"threads{threads}_eval_m{args.m}"] = ev
            print(json.dumps(ev), flush=True)
            if threads == 1:  # dtypes: speed and the share of levels that change against float32
                lo, hi = 0, args.dtype_pairs
                by = {d: sides["fast"].ask(cmd="levels", dtype=d, range=[lo, hi]) for d in ("float32", "bfloat16",
                                                                                          "int8")}
                ref = torch.tensor(by["float32"]["levels"])
                results["dtypes"] = {d: {"seconds_per_pair": r["wall"] / (hi - lo),
                                         "speed_vs_float32": by["float32"]["wall"] / r["wall"],
                                         "levels_changed_share": float((torch.tensor(r["levels"]) != ref).float()
                                                                       .mean())} for d, r in by.items()}
                print(json.dumps(results["dtypes"]), flush=True)
            for w in sides.values():
                w.close()
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
