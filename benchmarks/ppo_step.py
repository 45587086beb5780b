"""Seconds per EmpRL PPO step: ours (emprl.rl.ppo) against the authors' stack (trl 0.9.6), same machine, one run.

    .venv/bin/python benchmarks/ppo_step.py [--steps 5] [--identifiers minilm|tiny] [--threads 2]

Same tiny T5 (random init, d_model 256, 4+4 layers, vocab 8k: 9.4M parameters), same identifiers,
same contexts (~100 tokens), batch 8, sampling top-k 20 / top-p 1.0 / temperature 0.9, 5 to 30 new
tokens, 4 PPO epochs of one mini-batch. Measured:

(a) a whole step: rollout + empathy reward + 4 PPO epochs.
    ours:    emprl.rl.ppo.rollout -> EmpathyScorer.logits -> empathy_reward/reward_vector -> ppo_update
    authors: model.generate on the padded batch and trimming (their my_get_inputs) -> decode to text,
             re-tokenize, three identifiers one after another (their Rewards) -> PPOTrainer.step
(b) the PPO update alone: PPOTrainer.step (its forward passes for old log-probs, values and the
    reference, then 4 epochs) against ours: the same forward passes (which ours runs inside rollout,
    or takes from generation) + ppo_update. ppo_update without them is printed too.
(c) peak memory: resource.getrusage(RUSAGE_SELF).ru_maxrss of each side's process (peak resident set,
    libraries included), and its value after loading the models (so the difference is the run's own).

Ours is timed with the T5 fully fine-tuned ("full": the authors' setting, same trainable weights as
trl) and prefix-tuned ("prefix": the paper, prefix 40/10, MLP width 512, one frozen T5 shared with the
reference). ``ppo.rollout`` takes the old log-probs and values from the generation pass (the default);
"-plain" runs it with ``rescore=True`` (a second forward over the sampled tokens), the path it replaced;
the (b) column adds those forwards for every variant. Each side runs in its own process, one after the
other; the first ``--warmup`` steps are not timed. Targets (issues 5, 10): (a) ours >= 1.5x faster,
(b) ours no slower.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trl_bridge as tb  # noqa: E402

MECHANISMS = ("emotional_reactions", "interpretations", "explorations")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# --------------------------------------------------------------------------- setup (shared inputs)


def build_identifiers(root: Path, kind: str, seed: int) -> str:
    """Three identifiers saved with emprl.models.identifiers.save_identifier; returns their tokenizer's folder."""
    from transformers import BertConfig, BertModel

    from emprl.models import encoders, identifiers
    from emprl.profiles import IdentifierConfig

    cfg = IdentifierConfig()
    tokenizer = encoders.load_tokenizer("minilm")
    for k, m in enumerate(MECHANISMS):
        torch.manual_seed(seed + k)
        if kind == "minilm":  # two real all-MiniLM-L6-v2 encoders (22.7M parameters each), random heads
            model = identifiers.EmpathyIdentifier(encoders.load_encoder("minilm"), encoders.load_encoder("minilm"))
        else:  # tiny BERTs with MiniLM's vocabulary
            small = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=128)
            model = identifiers.EmpathyIdentifier(BertModel(small), BertModel(small))
        identifiers.save_identifier(model.eval(), tokenizer, root / m, cfg)
    return str(root / MECHANISMS[0])


def setup(work: Path, args) -> dict:
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(args.seed)
    t5 = T5ForConditionalGeneration(tb.tiny_t5_config(vocab_size=args.vocab)).eval()
    t5.save_pretrained(str(work / "t5"), safe_serialization=True)
    v_head = torch.nn.Linear(t5.config.d_model, 1)
    save_file({"weight": v_head.weight.detach().clone(), "bias": v_head.bias.detach().clone()},
              str(work / "v_head.safetensors"))
    vocab = tb.word_vocab(args.vocab)
    tb.write_json(work / "vocab.json", vocab)
    tokenizer = tb.word_tokenizer(vocab)
    n = args.warmup + args.steps
    g = torch.Generator().manual_seed(args.seed)
    contexts = [[" ".join(vocab[int(i)] for i in torch.randint(3, args.vocab, (args.context - 1,), generator=g))
                 for _ in range(args.batch)] for _ in range(n)]
    q = [tokenizer(c, padding=True, return_tensors="pt") for c in contexts]
    width = max(x["input_ids"].shape[1] for x in q)
    q_ids = torch.zeros(n, args.batch, width, dtype=torch.long)
    q_mask = torch.zeros(n, args.batch, width, dtype=torch.long)
    for s, x in enumerate(q):
        q_ids[s, :, : x["input_ids"].shape[1]], q_mask[s, :, : x["input_ids"].shape[1]] = x["input_ids"], x["attention_mask"]
    gold = torch.randint(0, 3, (n, args.batch, 3), generator=g)
    save_file({"query_ids": q_ids, "query_mask": q_mask, "gold": gold}, str(work / "bench.safetensors"))
    tb.write_json(work / "contexts.json", contexts)
    id_tok = build_identifiers(work / "identifiers", args.identifiers, args.seed)
    cfg = {
        "batch_size": args.batch, "mini_batch_size": args.batch, "ppo_epochs": 4, "lr": 1.41e-5, "beta": 0.2,
        "gamma": 1.0, "lam": 0.95, "clip": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1,
        "max_grad_norm": 1.0, "optimize_device_cache": True, "seed": args.seed,  # as the authors' CustomPPOTrainer
        "top_k": 20, "top_p": 1.0, "temperature": 0.9, "max_new_tokens": args.max_new_tokens, "min_new_tokens": 5,
        "mechanisms": list(MECHANISMS), "identifier_tokenizer": id_tok, "warmup": args.warmup, "steps": args.steps,
    }
    tb.write_json(work / "config.json", cfg)
    return {"t5_params": sum(p.numel() for p in t5.parameters()), "query_tokens": q_mask.sum(-1).float().mean().item()}


# --------------------------------------------------------------------------- ours (runs in its own process)


def ours_worker(work: Path, variant: str, threads: int) -> dict:
    from dataclasses import replace

    from transformers import T5ForConditionalGeneration

    from emprl.models import policy as P
    from emprl.rl import ppo
    from emprl.models.prefix import Prefix, PrefixT5
    from emprl.profiles import GeneratorConfig, PPOConfig
    from emprl.rl.reward import empathy_reward, reward_vector
    from emprl.models.scoring import EmpathyScorer

    torch.set_num_threads(threads)
    t_load = time.perf_counter()
    cfg_json = json.loads((work / "config.json").read_text())
    tokenizer = tb.word_tokenizer(json.loads((work / "vocab.json").read_text()))
    contexts = json.loads((work / "contexts.json").read_text())
    gold = load_file(str(work / "bench.safetensors"))["gold"]
    t5 = T5ForConditionalGeneration.from_pretrained(str(work / "t5")).eval()
    torch.manual_seed(cfg_json["seed"])
    tuning, _, plain = variant.partition("-")  # "full" | "prefix", optionally "-plain"
    if tuning not in ("full", "prefix") or plain not in ("", "plain"):
        raise ValueError(f"unknown variant {variant!r}: full, prefix, full-plain or prefix-plain")
    policy = PrefixT5(t5, Prefix.for_t5(t5.config, 40, 10, 512)) if tuning == "prefix" else t5
    reference = P.make_reference(policy)
    value_head = P.ValueHead(t5.config.d_model)
    vh = load_file(str(work / "v_head.safetensors"))
    value_head.linear.load_state_dict({"weight": vh["weight"], "bias": vh["bias"]})
    model = P.ActorCritic(policy, value_head).eval()
    from emprl.run import resolve_reward_dtype

    # the reward scored as a run on this machine scores it (runtime.reward_dtype "auto"); contexts are new at
    # every step here, so the context cache does not help
    scorer = EmpathyScorer.load(work / "identifiers").with_dtype(resolve_reward_dtype("auto", torch.device("cpu")))
    B = cfg_json["batch_size"]
    cfg = replace(PPOConfig(), batch_size=B, mini_batch_size=B, ppo_epochs=cfg_json["ppo_epochs"],
                  min_new_tokens=cfg_json["min_new_tokens"], micro_batch_size=4)  # the offline profile's cut
    gen_cfg = replace(GeneratorConfig(), max_source_len=256, max_new_tokens=cfg_json["max_new_tokens"],
                      top_k=cfg_json["top_k"], top_p=cfg_json["top_p"], temperature=cfg_json["temperature"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rss_loaded, t_load = peak_rss_mib(), time.perf_counter() - t_load
    times = {k: [] for k in ("rollout", "score", "update", "total", "forwards")}
    cpu = {k: [] for k in times}
    lengths = []
    clock = lambda: (time.perf_counter(), time.process_time())  # noqa: E731
    torch.manual_seed(cfg_json["seed"])
    for s in range(cfg_json["warmup"] + cfg_json["steps"]):
        t0 = clock()
        ro = ppo.rollout(model, reference, tokenizer, contexts[s], gen_cfg, cfg, rescore=bool(plain))
        t1 = clock()
        logits = scorer.logits(contexts[s], ro.responses)
        r_emp = empathy_reward(logits, gold[s])
        mask = ro.response_mask.to(ro.logprobs.dtype)
        rewards = reward_vector(r_emp, ro.kl, mask, cfg.beta)
        t2 = clock()
        ppo.ppo_update(model, None, optimizer, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask,
                       ro.logprobs, ro.values, rewards, cfg)
        t3 = clock()
        # not part of the step: the forward passes rollout ran after generate, timed alone for (b)
        with torch.no_grad():
            model(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)
            P.reference_logprobs(policy, reference, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)
        t4 = clock()
        if s >= cfg_json["warmup"]:
            for k, (a, b) in (("rollout", (t0, t1)), ("score", (t1, t2)), ("update", (t2, t3)), ("total", (t0, t3)),
                              ("forwards", (t3, t4))):
                times[k].append(b[0] - a[0])
                cpu[k].append(b[1] - a[1])
            lengths.append(ro.response_mask.sum(1).float().mean().item())
    return {"times": times, "cpu": cpu, "peak_rss_mib": peak_rss_mib(), "rss_after_load_mib": rss_loaded, "load_s": t_load,
            "trainable_params": sum(p.numel() for p in params), "response_len": statistics.mean(lengths)}


# --------------------------------------------------------------------------- report


def med(xs) -> float:
    return statistics.median(xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
    p.add_argument("--rounds", type=int, default=2, help="rounds alternating the sides (the machine's load varies)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads per side")
    p.add_argument("--identifiers", choices=["minilm", "tiny"], default="minilm")
    p.add_argument("--variants", default="full,prefix-plain,prefix",
                   help="ours: comma list of full, prefix, full-plain, prefix-plain (-plain: rollout(rescore=True))")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="full", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ours_worker is not None:
        res = ours_worker(args.ours_worker, args.variant, args.threads)
        (args.ours_worker / f"ours_{args.variant}.json").write_text(json.dumps(res, indent=1))
        return

    torch.set_num_threads(args.threads)
    tb.ref_python()  # build the reference venv first if needed
    variants = [x for x in args.variants.split(",") if x]
    runs: dict[str, list[dict]] = {v: [] for v in variants + ["trl"]}
    with tempfile.TemporaryDirectory(prefix="emprl_ppo_step_") as tmp:
        work = Path(tmp)
        info = setup(work, args)
        print(f"machine: {tb.machine()}; shared with other jobs (load average now "
              f"{' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}); {args.threads} thread(s) per side, "
              f"OMP_WAIT_POLICY=PASSIVE; each side in its own process, one at a time, {args.rounds} round(s) "
              f"alternating the sides")
        print(f"tiny T5 {info['t5_params']:,} parameters (random init), batch {args.batch}, contexts "
              f"{info['query_tokens']:.0f} tokens, 5-{args.max_new_tokens} new tokens, 4 PPO epochs x 1 mini-batch; "
              f"identifiers: {args.identifiers} ({'three x two all-MiniLM-L6-v2 encoders, random heads' if args.identifiers == 'minilm' else 'tiny random BERTs'}); "
              f"{args.steps} timed steps after {args.warmup} warm-up per round", flush=True)
        env = {**__import__("os").environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
        __import__("os").environ.update(OMP_WAIT_POLICY="PASSIVE")  # for the trl worker too
        for r in range(args.rounds):
            for v in variants:
                proc = subprocess.run([sys.executable, __file__, "--ours-worker", str(work), "--variant", v,
                                       "--threads", str(args.threads)], capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"ours ({v}) failed:\n{proc.stderr[-4000:]}")
                runs[v].append(json.loads((work / f"ours_{v}.json").read_text()))
            runs["trl"].append(tb.run_worker("bench", work, args.threads))
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
    report(runs, variants)


def pooled(results: list[dict], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for res in results:
        for k, v in res[key].items():
            out.setdefault(k, []).extend(v)
    return out


def report(runs: dict, variants: list[str]) -> None:
    trl = runs["trl"]
    tw, tc = pooled(trl, "times"), pooled(trl, "cpu")
    v = trl[0]["versions"]
    print(f"\nauthors' stack: trl {v['trl']}, transformers {v['transformers']}, torch {v['torch']}; "
          f"{trl[0]['trainable_params']:,} trainable parameters")
    print("Seconds per step. 'min' = fastest timed step (wall clock; least disturbed by the other jobs), "
          "'cpu' = median CPU time of the process (all its threads). ratio = authors' / ours (> 1: ours faster).")
    rows = [("trl", tw["generate"], tc["generate"], tw["score"], tc["score"], tw["step"], tc["step"], tw["total"],
             tc["total"], None, None, max(r["peak_rss_mib"] for r in trl), max(r["rss_after_load_mib"] for r in trl),
             trl[0]["trainable_params"])]
    for name in variants:
        w, c = pooled(runs[name], "times"), pooled(runs[name], "cpu")
        b_w = [f + u for f, u in zip(w["forwards"], w["update"])]
        b_c = [f + u for f, u in zip(c["forwards"], c["update"])]
        rows.append((name, w["rollout"], c["rollout"], w["score"], c["score"], b_w, b_c, w["total"], c["total"],
                     w["update"], c["update"], max(r["peak_rss_mib"] for r in runs[name]),
                     max(r["rss_after_load_mib"] for r in runs[name]), runs[name][0]["trainable_params"]))
    print(f"{'side':7s} {'trainable':>10s} | {'rollout/gen':>12s} | {'score':>12s} | {'(b) update':>12s} | "
          f"{'(a) whole step':>14s} | {'ratio (a)':>12s} | {'ratio (b)':>12s} | {'peak RSS MiB':>14s}")
    print(f"{'':7s} {'':>10s} | {'min':>5s} {'cpu':>6s} | {'min':>5s} {'cpu':>6s} | {'min':>5s} {'cpu':>6s} | "
          f"{'min':>6s} {'cpu':>7s} | {'min':>5s} {'cpu':>6s} | {'min':>5s} {'cpu':>6s} | {'peak':>6s} {'loaded':>7s}")
    ta_w, ta_c, tb_w, tb_c = min(tw["total"]), med(tc["total"]), min(tw["step"]), med(tc["step"])
    for name, rw, rc, sw, sc, bw, bc, aw, ac, uw, uc, peak, loaded, ntrain in rows:
        ra = (ta_w / min(aw), ta_c / med(ac))
        rb = (tb_w / min(bw), tb_c / med(bc))
        print(f"{name:7s} {ntrain:>10,} | {min(rw):5.2f} {med(rc):6.2f} | {min(sw):5.2f} {med(sc):6.2f} | "
              f"{min(bw):5.2f} {med(bc):6.2f} | {min(aw):6.2f} {med(ac):7.2f} | {ra[0]:5.2f} {ra[1]:6.2f} | "
              f"{rb[0]:5.2f} {rb[1]:6.2f} | {peak:6.0f} {loaded:7.0f}")
    print("(b) for ours = the forward passes for old log-probs, values and the reference (inside ours' rollout) "
          "+ ppo_update, which is what PPOTrainer.step does; ppo_update alone:")
    for name, *_, uw, uc, _p, _l, _n in rows[1:]:
        print(f"  {name}: min {min(uw):.2f} s, cpu {med(uc):.2f} s (ratio {tb_w / min(uw):.2f} / {tb_c / med(uc):.2f})")
    print("peak RSS = resource.getrusage(RUSAGE_SELF).ru_maxrss of the side's process (libraries included); "
          "'loaded' = the same right after loading models and data.")
    print("\nTargets: (a) ours >= 1.5x faster; (b) ours no slower (ratio >= 1).")
    for name, *_r in rows[1:]:
        aw, ac, bw, bc = _r[6], _r[7], _r[4], _r[5]
        ra, rb = ta_c / med(ac), tb_c / med(bc)
        print(f"  {name}: (a) {ra:.2f}x by CPU time ({ta_w / min(aw):.2f}x by fastest wall) -> "
              f"{'met' if ra >= 1.5 else 'MISSED'}; (b) {rb:.2f}x ({tb_w / min(bw):.2f}x) -> {'met' if rb >= 1.0 else 'MISSED'}")

if __name__ == "__main__":
    main()
