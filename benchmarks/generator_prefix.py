"""Cost of the prefix: PrefixT5 vs the plain T5 it wraps (reference), same weights, same batch.

    .venv/bin/python benchmarks/generator_prefix.py [--profile offline] [--batch 32] [--threads 1] [--repeats 3]

Times (median of ``--repeats``) of a forward pass with loss, of sampling ``max_new_tokens`` tokens
(the same computation plus the prefix) and, for information, of a training step (forward + backward +
AdamW: full fine-tuning of the plain T5 vs prefix-tuning) with the paper's decoding, for the profile's scratch T5 with random weights
and random inputs of typical EmpatheticDialogues lengths (context 64 tokens, response 20). Prints
seconds and the ratio PrefixT5 / plain T5. The prefix adds ``prefix_encoder_len`` keys to every
encoder attention and ``prefix_decoder_len`` to every decoder attention; the plain T5 runs its default
attention (sdpa), the prefix model T5's eager attention plus the prefix.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import T5ForConditionalGeneration

from emprl.models import generator, policy
from emprl.models.prefix import Prefix, PrefixT5
from emprl.profiles import get_profile


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_profile(args.profile).generator
    torch.manual_seed(0)
    plain = T5ForConditionalGeneration(generator.scratch_t5_config(cfg, cfg.vocab_size))
    wrapped_t5 = T5ForConditionalGeneration(plain.config)
    wrapped_t5.load_state_dict(plain.state_dict())
    model = PrefixT5(wrapped_t5, Prefix.for_t5(plain.config, cfg.prefix_encoder_len, cfg.prefix_decoder_len,
                                               cfg.prefix_hidden))
    x = torch.randint(3, cfg.vocab_size, (args.batch, 64))
    mask = torch.ones_like(x)
    y = torch.randint(3, cfg.vocab_size, (args.batch, 20))
    tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
    gen_kw = {**policy.generation_kwargs(cfg, tok), "min_new_tokens": cfg.max_new_tokens}

    def step(m, params):
        opt = torch.optim.AdamW(params, lr=1e-4)

        def run():
            loss = m(input_ids=x, attention_mask=mask, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return run

    plain.train()
    model.train()
    rows = {"train step (full vs prefix tuning)": (timed(step(plain, list(plain.parameters())), args.repeats),
                                                   timed(step(model, list(model.prefix.parameters())), args.repeats))}
    plain.eval()
    model.eval()
    with torch.no_grad():
        rows["forward (loss)"] = (timed(lambda: plain(input_ids=x, attention_mask=mask, labels=y), args.repeats),
                                  timed(lambda: model(input_ids=x, attention_mask=mask, labels=y), args.repeats))
        rows[f"sample {cfg.max_new_tokens} tokens"] = (
            timed(lambda: plain.generate(input_ids=x, attention_mask=mask, **gen_kw), args.repeats),
            timed(lambda: model.generate(input_ids=x, attention_mask=mask, **gen_kw), args.repeats))
    print(f"profile {args.profile}: T5 {plain.num_parameters() / 1e6:.1f}M params, batch {args.batch}, "
          f"{args.threads} thread(s), prefix {cfg.prefix_encoder_len}/{cfg.prefix_decoder_len}")
    print(f"{'':36} {'plain T5 (s)':>13} {'PrefixT5 (s)':>13} {'ratio':>7}")
    for name, (ref, ours) in rows.items():
        print(f"{name:36} {ref:13.3f} {ours:13.3f} {ours / ref:7.2f}")


if __name__ == "__main__":
    main()
