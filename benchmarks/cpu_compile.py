"""Does torch.compile pay on a CPU for the offline PPO step? Eager against compiled, in one run.

    .venv/bin/python benchmarks/cpu_compile.py [--threads 1] [--repeats 5]

(a) The update's forward and backward (``policy.ActorCritic`` on the offline-dimension prefix T5: d256, 4+4
    layers, 8k vocabulary, prefix 40/10) on a micro-batch of 4 (queries of 96 tokens, responses of 30), eager
    against ``torch.compile(dynamic=True)`` (trimmed micro-batches change shape at every step).
(b) Generation (30 new tokens, batch 8, the paper's top-k 20 / temperature 0.9) of the same T5 without a
    prefix: transformers' default dynamic cache against its static cache compiled by transformers
    (``CompileConfig``, forced on a CPU).

For each: the first call (compile included), the median of the next calls, and the break-even step count
(compile time / saving per call; "never" when compiled is slower). Results go to
``benchmarks/results/cpu_compile.json`` with the CPU model and the torch version.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> tuple[float, float]:
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def verdict(eager: tuple[float, float], compiled: tuple[float, float]) -> dict:
    saving = eager[1] - compiled[1]
    compile_s = compiled[0] - compiled[1]
    return {"eager_first_s": eager[0], "eager_s": eager[1], "compiled_first_s": compiled[0],
            "compiled_s": compiled[1], "compile_s": compile_s, "saving_per_call_s": saving,
            "break_even_calls": compile_s / saving if saving > 0 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_compile.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import CompileConfig, T5Config, T5ForConditionalGeneration

    from emprl.models import policy as P
    from emprl.models.prefix import Prefix, PrefixT5

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=8000, d_model=256, d_ff=1024, d_kv=64, num_layers=4, num_decoder_layers=4, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    t5 = T5ForConditionalGeneration(cfg).eval()
    policy = PrefixT5(t5, Prefix.for_t5(cfg, 40, 10, 512).fold()).eval()
    model = P.ActorCritic(policy, P.ValueHead(256)).eval()
    q = torch.randint(2, 8000, (4, 96))
    r = torch.randint(2, 8000, (4, 30))

    def update(fn):
        def step():
            logprobs, values, _ = fn(q, torch.ones_like(q), r, torch.ones_like(r))
            (logprobs.sum() + values.sum()).backward()
        return step

    results = {"update": verdict(timed(update(model), args.repeats),
                                 timed(update(torch.compile(model, dynamic=True)), args.repeats))}
    print("update forward+backward:", json.dumps(results["update"]), flush=True)

    ids = torch.randint(2, 8000, (8, 96))
    kw = dict(do_sample=True, top_k=20, temperature=0.9, max_new_tokens=30, min_new_tokens=30,
              decoder_start_token_id=0)
    compile_config = CompileConfig(dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles the static cache's decoding on CUDA only

    def generate(**extra):
        return lambda: t5.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw, **extra)

    results["generation"] = verdict(timed(generate(), args.repeats),
                                    timed(generate(cache_implementation="static", compile_config=compile_config),
                                          args.repeats))
    print("generation:", json.dumps(results["generation"]), flush=True)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                      "")
    results.update({"cpu": model_name, "threads": args.threads, "torch": torch.__version__})
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
