"""Seconds per EmpRL PPO step at the paper's scale, plain and fast rollout side by side, and the projected
wall time of its 24,000 steps.

    python benchmarks/gpu_ppo_t5base.py                 # on a GPU: t5-base architecture, bf16, batch 8
    python benchmarks/gpu_ppo_t5base.py --dry-run       # anywhere: a tiny config on CPU (checks the script)

The policy is the t5-base architecture (T5Config: d_model 768, 12+12 layers, 12 heads, d_ff 3072,
vocab 32128; ~223M parameters) with RANDOM weights (timing only, nothing to download), prefix-tuned as
in the paper (prefix 40/10, MLP width 512; ``--tuning full`` for the authors' full fine-tuning).
The three empathy identifiers have two t5-base encoders each (the paper's Fig. 3), also random.
The whole step runs through emprl's own code: ``ppo.rollout`` (sample 5-30 tokens, top-k 20,
temperature 0.9; old log-probs, values, reference log-probs) -> ``EmpathyScorer.logits`` ->
``empathy_reward`` / ``reward_vector`` -> ``ppo_update`` (4 epochs, one mini-batch of 8).
Two rollout paths, alternated step by step on the same warm device: "plain" (``rescore=True``: a
separate forward over the sampled tokens for the old log-probs and values) and "fast" (the default:
both from the generation pass; only the reference needs a forward). Precision: ``bf16`` = float32
master weights under ``torch.autocast`` (as ``emprl.run`` runs the stages), ``bf16-weights`` = weights
cast to bf16, ``fp32``. AdamW is fused on CUDA (as ``train_ppo``). Text is synthetic words through a
word-level tokenizer with t5-base's vocabulary size, contexts of ``--context`` tokens. Random weights
rarely emit </s>, so responses run to the 30-token maximum: an upper bound for the generation part.
Prints the device, seconds per step (median; rollout / scoring / update) per path, the peak GPU memory
and the projection ``median step x 24,000``; writes the figures as JSON with the device name to
``benchmarks/results/`` (not for ``--dry-run`` unless ``--json`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

PAPER_STEPS = 24000
MECHANISMS = ("emotional_reactions", "interpretations", "explorations")


def word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def t5_config(dry_run: bool):
    from transformers import T5Config

    if dry_run:  # tiny, to check the script on a CPU
        return T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                        num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    # t5-base (Raffel et al. 2020), as in its published config.json
    return T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                    num_heads=12, relative_attention_num_buckets=32, dropout_rate=0.0, feed_forward_proj="relu",
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build(args, device, weights_dtype):
    from transformers import T5EncoderModel, T5ForConditionalGeneration

    from emprl.models import policy as P
    from emprl.models.identifiers import EmpathyIdentifier
    from emprl.models.prefix import Prefix, PrefixT5
    from emprl.models.scoring import EmpathyScorer

    config = t5_config(args.dry_run)
    torch.manual_seed(args.seed)
    t5 = T5ForConditionalGeneration(config)
    policy = PrefixT5(t5, Prefix.for_t5(config, 40, 10, 512)) if args.tuning == "prefix" else t5
    reference = P.make_reference(policy)
    model = P.ActorCritic(policy, P.ValueHead(config.d_model)).eval()
    model.to(device=device, dtype=weights_dtype)
    reference.to(device=device, dtype=weights_dtype)
    enc_cfg = replace_cfg(config)
    ids = {m: EmpathyIdentifier(T5EncoderModel(enc_cfg), T5EncoderModel(enc_cfg)).to(device=device, dtype=weights_dtype)
           for m in MECHANISMS}
    tokenizer = word_tokenizer(config.vocab_size)
    scorer = EmpathyScorer(ids, tokenizer, max_context_len=256, max_response_len=64, batch_size=32, device=device,
                           mechanism_order=MECHANISMS)
    return model, policy, reference, scorer, tokenizer, config


def replace_cfg(config):
    c = config.__class__(**config.to_dict())
    c.is_encoder_decoder, c.use_cache = False, False
    return c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny T5 config on CPU, to check the script")
    p.add_argument("--device", default=None, help="default: cuda if available (never for --dry-run)")
    p.add_argument("--precision", choices=["bf16", "bf16-weights", "fp32"], default=None,
                   help="default: bf16 on CUDA, fp32 on a CPU")
    p.add_argument("--tuning", choices=["prefix", "full"], default="prefix")
    p.add_argument("--paths", default="plain,fast", help="comma list of plain, fast")
    p.add_argument("--static-cache", choices=["auto", "on", "off"], default="auto",
                   help="static key/value cache in generation (auto: emprl.models.policy.static_cache's default)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--steps", type=int, default=10, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 2; 1 for --dry-run, whose tiny ops only contend for cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="where to write the figures (default: benchmarks/results/)")
    args = p.parse_args()
    torch.set_num_threads(args.threads or (1 if args.dry_run else 2))

    from emprl.rl import ppo
    from emprl.profiles import GeneratorConfig, PPOConfig
    from emprl.rl.reward import empathy_reward, reward_vector

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"))
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    weights_dtype = torch.bfloat16 if args.precision == "bf16-weights" else torch.float32
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"DEVICE: {device} = {name}; torch {torch.__version__}; precision {args.precision}; "
          f"static cache {args.static_cache}"
          + ("   [DRY RUN: tiny config, figures are NOT t5-base]" if args.dry_run else ""))
    paths = [x for x in args.paths.split(",") if x]
    if not paths or set(paths) - {"plain", "fast"}:
        raise SystemExit(f"--paths: a comma list of plain, fast; got {args.paths!r}")

    model, policy, reference, scorer, tokenizer, config = build(args, device, weights_dtype)
    n_policy = sum(p.numel() for p in policy.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_ident = sum(p.numel() for m in scorer.identifiers.values() for p in m.parameters())
    print(f"policy {n_policy / 1e6:.1f}M parameters ({args.tuning}-tuned: {n_train / 1e6:.2f}M trainable incl. value "
          f"head); identifiers 3 x 2 encoders, {n_ident / 1e6:.1f}M parameters; batch {args.batch}, context "
          f"{args.context} tokens, 5-{args.max_new_tokens} new tokens, 4 PPO epochs x 1 mini-batch")
    cfg = replace(PPOConfig(), batch_size=args.batch, mini_batch_size=args.batch)  # the paper's PPO settings
    gen_cfg = replace(GeneratorConfig(), max_source_len=max(256, args.context + 1), max_new_tokens=args.max_new_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(args.seed)
    static = {"auto": None, "on": True, "off": False}[args.static_cache]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {path: {"rollout": [], "score": [], "update": [], "total": []} for path in paths}
    lengths = {path: [] for path in paths}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for s in range(args.warmup + args.steps):
        contexts = [" ".join(f"w{int(i)}" for i in torch.randint(3, config.vocab_size, (args.context - 1,),
                                                                  generator=g)) for _ in range(args.batch)]
        gold = torch.randint(0, 3, (args.batch, 3), generator=g).to(device)
        for path in paths:  # alternated, so that both see the same device state
            sync()
            t0 = time.perf_counter()
            with autocast:
                ro = ppo.rollout(model, reference, tokenizer, contexts, gen_cfg, cfg, rescore=path == "plain",
                                 static_cache=static)
                sync()
                t1 = time.perf_counter()
                r_emp = empathy_reward(scorer.logits(contexts, ro.responses).to(device), gold)
                mask = ro.response_mask.to(ro.logprobs.dtype)
                rewards = reward_vector(r_emp, ro.kl, mask, cfg.beta)
                sync()
                t2 = time.perf_counter()
                ppo.ppo_update(model, None, optimizer, ro.query_ids, ro.query_mask, ro.response_ids,
                               ro.response_mask, ro.logprobs, ro.values, rewards, cfg)
            sync()
            t3 = time.perf_counter()
            n_tok = ro.response_mask.sum(1).float().mean().item()
            tag = "warm-up" if s < args.warmup else "timed"
            print(f"  step {s + 1} {path:5s} ({tag}): rollout {t1 - t0:.3f} s, score {t2 - t1:.3f} s, "
                  f"update {t3 - t2:.3f} s, total {t3 - t0:.3f} s, response length {n_tok:.1f}", flush=True)
            if s >= args.warmup:
                for k, v in (("rollout", t1 - t0), ("score", t2 - t1), ("update", t3 - t2), ("total", t3 - t0)):
                    times[path][k].append(v)
                lengths[path].append(n_tok)
    med = {path: {k: statistics.median(v) for k, v in t.items()} for path, t in times.items()}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    hours = {path: m["total"] * PAPER_STEPS / 3600 for path, m in med.items()}
    print(f"\nmedian over {args.steps} steps per path ({name}, {args.precision}):")
    print(f"{'path':6s} | {'rollout':>8s} | {'score':>8s} | {'update':>8s} | {'WHOLE STEP':>10s} | "
          f"{'24,000 steps':>12s}")
    for path, m in med.items():
        print(f"{path:6s} | {m['rollout']:8.3f} | {m['score']:8.3f} | {m['update']:8.3f} | {m['total']:10.3f} | "
              f"{hours[path]:10.2f} h")
    if len(med) == 2:
        print(f"fast / plain: rollout {med['plain']['rollout'] / med['fast']['rollout']:.2f}x, whole step "
              f"{med['plain']['total'] / med['fast']['total']:.2f}x faster")
    print(f"peak GPU memory allocated: {peak:.2f} GiB" if device.type == "cuda" else "peak GPU memory: n/a (CPU)")
    if args.dry_run:
        print("[DRY RUN: not t5-base; the projection means nothing]")
    out = args.json
    if out is None and not args.dry_run:
        slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
        out = Path(__file__).resolve().parent / "results" / f"gpu_ppo_t5base_{slug}_{args.tuning}_{args.precision}.json"
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            json.dump({"device": str(device), "device_name": name, "torch": torch.__version__,
                       "precision": args.precision, "static_cache": args.static_cache, "dry_run": args.dry_run, "tuning": args.tuning,
                       "batch": args.batch, "context": args.context, "steps": args.steps, "median_s": med,
                       "times": times, "response_len": {k: statistics.mean(v) for k, v in lengths.items()},
                       "peak_gpu_gib": peak, "projected_hours_24000": hours, "policy_params": n_policy,
                       "trainable_params": n_train}, f, indent=1)
        print(f"figures written to {out}")


if __name__ == "__main__":
    main()
