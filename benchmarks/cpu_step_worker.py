"""One side of benchmarks/cpu_offline_step.py: an emprl (whichever is first on sys.path) that times PPO steps
and evaluation scoring on command, phase by phase. It reads commands as JSON lines on stdin and answers
each with one JSON line on stdout, so that two sides (the reference commit and the current tree) can take
turns step by step on a shared machine.

    python cpu_step_worker.py WORK_DIR THREADS

WORK_DIR holds ``generator/`` (emprl.models.generator format), ``identifiers/`` and ``data.json`` (contexts,
scorer contexts, human responses) written by cpu_offline_step.py. Only interfaces that both the reference
commit and the current tree have are used; phases are timed by wrapping them, not by editing them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch


class Clock:
    """Wall and CPU seconds spent inside wrapped functions, by phase (outermost call only per phase)."""

    def __init__(self):
        self.wall, self.cpu, self.depth = defaultdict(float), defaultdict(float), defaultdict(int)

    def wrap(self, phase, fn):
        def timed(*args, **kwargs):
            self.depth[phase] += 1
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth[phase] -= 1
                if self.depth[phase] == 0:
                    self.wall[phase] += time.perf_counter() - w
                    self.cpu[phase] += time.process_time() - c
        return timed

    def take(self) -> dict:
        out = {"wall": dict(self.wall), "cpu": dict(self.cpu)}
        self.wall.clear(), self.cpu.clear()
        return out


def main(work: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    from emprl.models import generator, scoring
    from emprl.rl import ppo_train
    from emprl.models import policy as P
    from emprl.profiles import PPOConfig, get_profile

    clock = Clock()
    prof = get_profile("offline")
    data = json.loads((work / "data.json").read_text())
    policy, tokenizer = generator.load_generator(work / "generator")
    scorer = scoring.EmpathyScorer.load(work / "identifiers", batch_size=2 * prof.identifiers.batch_size)
    # the PPO reward's scorers by dtype (the current tree: run.reward_dtype), copied before any wrapping
    scorers = {"float32": scorer}
    if hasattr(scorer, "with_dtype"):
        scorers["bfloat16"] = scorer.with_dtype("bfloat16")
    # phases: generation, reference forward, identifier context/response encoders, update forward/backward/step
    P.sample = clock.wrap("generation", P.sample)
    P.reference_logprobs = clock.wrap("reference", P.reference_logprobs)
    for s in scorers.values():
        for model in s.identifiers.values():
            model.encode_context = clock.wrap("score_context", model.encode_context)
            model.encode_response = clock.wrap("score_response", model.encode_response)
        s.logits = clock.wrap("scoring", s.logits)
    P.ActorCritic.forward = clock.wrap("update_forward", P.ActorCritic.forward)
    torch.Tensor.backward = clock.wrap("update_backward", torch.Tensor.backward)
    ppo_train.ppo_update = clock.wrap("update", ppo_train.ppo_update)
    fields = {f.name for f in dataclasses.fields(PPOConfig)}
    runs, out_dir = {}, Path(tempfile.mkdtemp())
    n = len(data["contexts"])

    def ppo_run(batch: int, micro: int | None):
        if (batch, micro) not in runs:
            settings = dict(prof.ppo.__dict__, batch_size=batch, mini_batch_size=8, grad_accum=batch // 8,
                            micro_batch_size=micro)
            cfg = PPOConfig(**{k: v for k, v in settings.items() if k in fields})
            run = ppo_train._setup(policy, None, None, cfg, prof.generator, "emprl", 0, n, out_dir, None)
            run.optimizer.step = clock.wrap("optimizer", run.optimizer.step)
            runs[(batch, micro)] = (run, cfg)
        return runs[(batch, micro)]

    print(json.dumps({"ready": True, "has_cache": hasattr(scorer, "context_cache"),
                      "micro_batch_option": "micro_batch_size" in fields}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "gold":  # the gold-label pass over contexts the next commands use (fills a cache)
            lo, hi = cmd["range"]
            scorer.levels(data["score_contexts"][lo:hi], data["responses"][lo:hi])
            clock.take()
            print(json.dumps({"ok": True}), flush=True)
        elif cmd["cmd"] == "step":
            run, cfg = ppo_run(cmd["batch"], cmd.get("micro"))
            lo = cmd["start"]
            idx = list(range(lo, lo + cfg.batch_size))
            gold = torch.tensor(data["gold"])[idx]
            reward = scorers[cmd.get("reward_dtype", "float32")]
            torch.manual_seed(cmd["seed"])
            clock.take()
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(cmd.get("autocast")))
            w, c = time.perf_counter(), time.process_time()
            with autocast:
                out = ppo_train.ppo_step(run, tokenizer, reward, [data["contexts"][i] for i in idx],
                                         [data["score_contexts"][i] for i in idx], gold, cfg, prof.generator, "emprl")
            total = {"step": time.perf_counter() - w}, {"step": time.process_time() - c}
            phases = clock.take()
            phases["wall"].update(total[0]), phases["cpu"].update(total[1])
            phases["response_tokens"] = float(out["mask"].sum(1).mean())
            print(json.dumps(phases), flush=True)
        elif cmd["cmd"] == "eval":  # m responses per context, scored the way each side's evaluation does
            lo, hi, m = cmd["range"][0], cmd["range"][1], cmd["m"]
            ctx = data["score_contexts"][lo:hi]
            replies = [[data["responses"][(i + 7 * (j + 1)) % n] for i in range(lo, hi)] for j in range(m)]
            clock.take()
            w, c = time.perf_counter(), time.process_time()
            if cmd["one_call"]:  # all m x N pairs at once: each context encoded once (or read from the cache)
                scorer.levels([c_ for _ in range(m) for c_ in ctx], [r for rs in replies for r in rs])
            else:  # one evaluation per sample, as an m = 1 evaluation run m times would
                for rs in replies:
                    scorer.levels(ctx, rs)
            phases = clock.take()
            phases["wall"]["eval"], phases["cpu"]["eval"] = time.perf_counter() - w, time.process_time() - c
            phases["responses"] = m * (hi - lo)
            print(json.dumps(phases), flush=True)
        elif cmd["cmd"] == "levels":  # levels of a dtype's scorer on the given pairs (agreement with float32)
            s = scoring.EmpathyScorer.load(work / "identifiers", batch_size=2 * prof.identifiers.batch_size,
                                           dtype=cmd["dtype"])
            lo, hi = cmd["range"]
            s.levels(data["score_contexts"][lo:lo + 8], data["responses"][lo:lo + 8])  # warm
            w = time.perf_counter()
            levels = s.levels(data["score_contexts"][lo:hi], data["responses"][lo:hi])
            print(json.dumps({"levels": levels.tolist(), "wall": time.perf_counter() - w}), flush=True)
        elif cmd["cmd"] == "quit":
            break


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
