"""Scoring throughput: EmpathyScorer vs a naive scorer (what the authors' code does), same weights, same pairs.

    EMPRL_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/identifiers.py [--ckpt DIR] [--n 256]

Naive: the three identifiers one after another, each re-tokenizing every batch, batches in input order
(padding to the longest pair of a random batch), torch.no_grad. Fast: ``EmpathyScorer.logits``: one
tokenization, length-sorted batches, padded tensors shared by the three identifiers, a context repeated
inside a batch encoded once per mechanism, inference_mode. Two workloads: N distinct (context, human
response) pairs, and N/2 contexts each with two responses (human + another), as in Emp-F1 where gold and
generated responses share a context. Prints pairs/s of both and the ratio (target >= 3x), for the
exact float32 scorer and for its bfloat16 option (level agreement with float32 printed).
Without --ckpt the identifiers are fresh (pretrained MiniLM encoders, random heads): speed does not
depend on the weights.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from emprl import data
from emprl.models import identifiers as I, scoring
from emprl.profiles import get_profile


def naive_logits(scorer: scoring.EmpathyScorer, contexts, responses, batch_size: int) -> torch.Tensor:
    out = torch.empty(len(contexts), 3, 3)
    tok = scorer.tokenizer
    with torch.no_grad():
        for k, m in enumerate(scorer.mechanisms):
            model = scorer.identifiers[m]
            for s in range(0, len(contexts), batch_size):
                c = I.pad(I.tokenize(tok, contexts[s: s + batch_size], scorer.max_context_len, "left"), tok.pad_token_id)
                r = I.pad(I.tokenize(tok, responses[s: s + batch_size], scorer.max_response_len, "right"), tok.pad_token_id)
                out[s: s + batch_size, k] = model(c[0], c[1], r[0], r[1])
    return out


def ed_pairs(n: int, seed: int, data_dir=None):
    """n (format_context, human response) pairs drawn from EmpatheticDialogues valid (or the smoke sample)."""
    profile = "offline" if data_dir or data.resolve_data_dir() else "smoke"
    examples = data.load_empathetic_dialogues("valid", data.dataset_dir(profile, data_dir))
    rng = random.Random(seed)
    picked = rng.sample(examples, min(n, len(examples)))
    return [data.format_context(e.context) for e in picked], [e.response for e in picked]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoints/identifiers folder (default: fresh MiniLM identifiers)")
    ap.add_argument("--profile", default="offline", help="IdentifierConfig to use without --ckpt")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.ckpt:
        scorer = scoring.EmpathyScorer.load(args.ckpt, batch_size=args.batch_size)
    else:
        cfg = get_profile(args.profile).identifiers
        models, tok = {}, None
        for k, m in enumerate(data.MECHANISMS):
            models[m], tok = I.build_identifier(cfg, seed=k)
        scorer = scoring.EmpathyScorer(models, tok, cfg.max_context_len, cfg.max_response_len, args.batch_size)
    contexts, responses = ed_pairs(args.n, 0, args.data_dir)
    half = len(contexts) // 2  # workload 2: each context with its human response and another one
    shared = (contexts[:half] * 2, responses[:half] + responses[half: 2 * half])
    print(f"{len(contexts)} pairs, batch {args.batch_size}, max lengths {scorer.max_context_len}/{scorer.max_response_len}, "
          f"{torch.get_num_threads()} threads, weights {'from ' + args.ckpt if args.ckpt else 'fresh'}")

    naive_logits(scorer, contexts[:8], responses[:8], args.batch_size)  # warm-up, both paths
    scorer.logits(contexts[:8], responses[:8])
    bf16 = scoring.EmpathyScorer(scorer.identifiers, scorer.tokenizer, scorer.max_context_len,
                                 scorer.max_response_len, args.batch_size, dtype="bfloat16")
    bf16.logits(contexts[:8], responses[:8])
    for name, (c, r) in (("distinct contexts", (contexts, responses)), ("context shared by 2 responses", shared)):
        slow, t_naive = timed(lambda: naive_logits(scorer, c, r, args.batch_size))
        print(f"[{name}] naive (float32)        {len(c) / t_naive:7.1f} pairs/s ({t_naive:.1f} s)", flush=True)
        for label, fast_scorer in (("EmpathyScorer float32 ", scorer), ("EmpathyScorer bfloat16", bf16)):
            fast, t_fast = timed(lambda: fast_scorer.logits(c, r))
            agree = float((slow.argmax(-1) == fast.argmax(-1)).float().mean())
            print(f"[{name}] {label} {len(c) / t_fast:7.1f} pairs/s ({t_fast:.1f} s) | ratio {t_naive / t_fast:.2f}x "
                  f"(target >= 3x) | max |logit diff| {float((slow - fast).abs().max()):.2e}, "
                  f"level agreement with naive {agree:.4f}", flush=True)


if __name__ == "__main__":
    main()
