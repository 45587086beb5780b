"""Evaluation wall time (notebook 05's work for one system) vs a naive evaluation, same models, same examples.

    EMPRL_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/evaluation.py --out outputs/offline [--n 512]

Fast (``emprl.eval.evaluation.evaluate_system`` + cached gold): gold levels read from the
``scoring.gold_labels`` cache; sampling and PPL in length-sorted batches; the three mechanisms
scored in one ``EmpathyScorer.levels`` call over all generated responses.
Naive reference (what a straightforward script does): gold levels recomputed; sampling, PPL and
scoring in batches of input order (``batch_size`` examples at a time), each mechanism scored by
its own ``levels`` call. Prints the seconds of each part and the ratio naive / fast.

Needs trained checkpoints under ``--out`` (identifiers; the generator ``--system``, default the
prefix-tuned one). The sampled texts differ between the two paths (different batch composition
changes the random draws), so only times are compared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from emprl import data
from emprl.eval import evaluation
from emprl.models import generator, policy, scoring
from emprl.run import SYSTEMS, Paths, resolve_output_dir
from emprl.profiles import get_profile


def naive(model, tokenizer, scorer, examples, cfg, batch_size: int, max_context_tokens, seed: int) -> dict:
    gen_ctx, score_ctx = data.context_texts(examples, max_context_tokens)
    gold_resp = [ex.response for ex in examples]
    times, t = {}, time.perf_counter()
    for s in range(0, len(examples), batch_size):  # gold recomputed, input-order batches
        scorer.levels(score_ctx[s: s + batch_size], gold_resp[s: s + batch_size])
    times["gold_s"] = time.perf_counter() - t
    t = time.perf_counter()
    responses = []
    for b, s in enumerate(range(0, len(examples), batch_size)):
        responses += policy.sample_responses(model, tokenizer, gen_ctx[s: s + batch_size], cfg, seed + b,
                                                batch_size, progress=False)
    times["generation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(0, len(examples), batch_size):
        generator.token_nll(model, tokenizer, gen_ctx[s: s + batch_size], gold_resp[s: s + batch_size], batch_size,
                            cfg.max_source_len)
    times["ppl_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for m in scorer.mechanisms:  # one mechanism at a time
        single = scoring.EmpathyScorer({m: scorer.identifiers[m]}, scorer.tokenizer, scorer.max_context_len,
                                       scorer.max_response_len, scorer.batch_size, mechanism_order=(m,))
        for s in range(0, len(examples), batch_size):
            single.levels(score_ctx[s: s + batch_size], responses[s: s + batch_size])
    times["scoring_s"] = time.perf_counter() - t
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="offline")
    ap.add_argument("--out", default=None, help="run folder with checkpoints (default outputs/<profile>)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--system", default="w/o RL", choices=list(SYSTEMS))
    ap.add_argument("--n", type=int, default=256, help="test examples (the whole split: 0)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    P = get_profile(args.profile)
    out = resolve_output_dir(args.profile, args.out)
    examples = data.load_split(P, "test", args.data_dir)
    examples = examples[: args.n] if args.n else examples
    scorer = scoring.EmpathyScorer.load(Paths(out).identifiers, batch_size=2 * P.identifiers.batch_size)
    model, tokenizer = generator.load_generator(Paths(out).system(args.system))
    E = P.evaluation
    print(f"{len(examples)} test examples, system {args.system!r} from {out}, batch {E.batch_size}, "
          f"{torch.get_num_threads()} threads")

    scoring.gold_labels(scorer, examples, out / "cache", progress=False)  # fill the cache (as notebook 02 does)
    t0 = time.perf_counter()
    gold = scoring.gold_labels(scorer, examples, out / "cache", progress=False).numpy()
    fast = {"gold_s": time.perf_counter() - t0}
    row = evaluation.evaluate_system(model, tokenizer, examples, gold, scorer, P.generator, E,
                                     P.data.max_context_tokens, seed=0, progress=False)["row"]
    fast.update({k: row[k] for k in ("generation_s", "ppl_s", "scoring_s")})
    slow = naive(model, tokenizer, scorer, examples, P.generator, E.batch_size, P.data.max_context_tokens, 0)
    for key in ("gold_s", "generation_s", "ppl_s", "scoring_s"):
        print(f"{key[:-2]:>10}: naive {slow[key]:8.2f} s | fast {fast[key]:8.2f} s | ratio {slow[key] / max(fast[key], 1e-9):6.2f}x")
    total_slow, total_fast = sum(slow.values()), sum(fast.values())
    print(f"{'total':>10}: naive {total_slow:8.2f} s | fast {total_fast:8.2f} s | ratio {total_slow / total_fast:6.2f}x "
          f"(metrics + {E.bootstrap} bootstrap resamples add {row['metrics_s']:.2f} s to fast)")
    print(f"projected for the whole test split: fast about {total_fast / len(examples) * 5257:.0f} s per system "
          f"(5,257 examples), naive {total_slow / len(examples) * 5257:.0f} s" if args.n else "")


if __name__ == "__main__":
    main()
