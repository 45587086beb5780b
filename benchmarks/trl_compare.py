"""One PPO step, ours (emprl.rl.ppo) against the legacy trl 0.9.6 PPOTrainer, on identical inputs.

    .venv/bin/python benchmarks/trl_compare.py [--threads 2] [--seed 0]

Both sides get the same tiny T5 policy and frozen reference (random init, ~9.4M parameters; the
policy is the reference plus small noise so that the KL is not zero; saved with save_pretrained),
the same value-head weights, the same 8 queries (~100 tokens), the same sampled responses (5-30 tokens,
ending in </s>) and the same scores. trl runs in its own venv (benchmarks/trl_env.sh). Printed: the
largest differences in log-probs, reference log-probs, values, KL, the reward vector, advantages,
returns, the losses and the parameter update after the 4 PPO epochs.

How the two are configured to compute the same thing (and where they differ on purpose):

- Token positions. For an encoder-decoder, trl 0.9.6 masks out position 0 of its log-probs
  (``start = 1`` in ``batched_forward_pass``), which for a T5 decoder is the FIRST GENERATED TOKEN
  y_1: its KL, value, advantage and loss term are dropped. The paper's Eq. 8/14/15 run over
  t = 1..T, and emprl keeps y_1. For the comparison ours is given trl's loss mask (y_1 excluded)
  while the decoder still attends to y_1; with ours' own mask the two differ by exactly that token.
- Advantage whitening: trl always whitens advantages (per batch, unbiased variance);
  ours with ``PPOConfig.whiten_advantages=True`` (the default) does the same.
- Value loss: trl uses 0.5 * mean(max(unclipped, clipped)^2) with ``cliprange_value`` 0.2 and
  ``vf_coef``; Eq. 15 has no 0.5 and the paper no value clipping. Matched by trl ``vf_coef`` =
  2 * alpha and ours ``value_clip`` = trl ``cliprange_value``.
- KL estimator: both use log pi - log rho of the sampled token (trl ``kl_penalty="kl"``, Eq. 6) with a
  fixed beta (trl ``adap_kl_ctrl=False``, ``init_kl_coef`` = beta); the score is added at the last
  real token (</s>) by both.
- Optimizer: both Adam (no weight decay) at the same lr, no gradient clipping, one mini-batch of 8,
  4 epochs. trl shuffles with numpy, ours with torch; with one mini-batch only the summation order
  differs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trl_bridge as tb  # noqa: E402

TOL = 1e-4  # float32 on two different transformers versions


def build_inputs(work: Path, seed: int, batch: int, context: int, vocab_size: int):
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)
    ref = T5ForConditionalGeneration(tb.tiny_t5_config(vocab_size=vocab_size)).eval()
    ref.save_pretrained(str(work / "t5_ref"), safe_serialization=True)
    # the policy a few steps into training: the reference plus small noise, so the KL is not zero
    t5 = copy.deepcopy(ref)
    with torch.no_grad():
        for p in t5.parameters():
            p.add_(0.05 * p.std() * torch.randn_like(p))
    t5.save_pretrained(str(work / "t5"), safe_serialization=True)
    vocab = tb.word_vocab(vocab_size)
    tb.write_json(work / "vocab.json", vocab)
    v_head = torch.nn.Linear(t5.config.d_model, 1)
    save_file({"weight": v_head.weight.detach().clone(), "bias": v_head.bias.detach().clone()},
              str(work / "v_head.safetensors"))
    queries = tb.random_queries(batch, context, vocab_size, seed)
    q_ids, q_mask = tb.pad_right(queries)
    # responses: sampled from the model, cut at lengths 5..30, ending with </s>
    with torch.no_grad():
        gen = t5.generate(input_ids=q_ids, attention_mask=q_mask, do_sample=True, top_k=20, temperature=0.9,
                          max_new_tokens=29, min_new_tokens=29, eos_token_id=None, pad_token_id=tb.PAD)[:, 1:]
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(5, 31, (batch,), generator=g)
    lengths[0] = 30  # at least one full-length row
    responses = [torch.cat([gen[i, : int(n) - 1], torch.tensor([tb.EOS])]) for i, n in enumerate(lengths)]
    r_ids, r_mask = tb.pad_right(responses)
    scores = torch.rand(batch, generator=g)  # stand-in for R_emp in [0, 1]
    trl_responses = [torch.cat([torch.tensor([tb.PAD]), r]) for r in responses]  # trl's: start token first
    tr_ids, _ = tb.pad_right(trl_responses)
    save_file({"query_ids": q_ids, "query_len": q_mask.sum(1), "response_ids": tr_ids,
               "response_len": r_mask.sum(1) + 1, "scores": scores}, str(work / "batch.safetensors"))
    return t5, ref, v_head, q_ids, q_mask, r_ids, r_mask, scores


def run_ours(t5, reference, v_head_lin, q_ids, q_mask, r_ids, r_mask, scores, loss_mask, cfg):
    """Our functions on the same inputs: (internals dict, update stats, per-pass losses, new params)."""
    from emprl.models import policy
    from emprl.rl import ppo, reward

    value_head = policy.ValueHead(t5.config.d_model)
    value_head.linear.load_state_dict(v_head_lin.state_dict())
    model = policy.ActorCritic(t5, value_head).eval()
    reference.requires_grad_(False)

    class LossMaskAdapter(torch.nn.Module):
        """Attends with the real-token mask while ppo_update masks its sums with ``loss_mask``."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, query_ids, query_mask, response_ids, response_mask):
            return self.inner(query_ids, query_mask, response_ids, policy.response_mask_from_eos(response_ids, tb.EOS))

    with torch.no_grad():
        logprobs, values, _ = model(q_ids, q_mask, r_ids, r_mask)
        ref_logprobs = policy.reference_logprobs(t5, reference, q_ids, q_mask, r_ids, r_mask)
    kl = reward.kl_penalty(logprobs, ref_logprobs) * r_mask
    rewards = reward.reward_vector(scores, kl, r_mask.float(), cfg.beta)
    m = loss_mask.float()
    adv, ret = ppo.gae(rewards * m, values * m, m, cfg.gamma, cfg.lam)
    adv_w = reward.masked_whiten(adv, m) * m
    # the loss of the first pass (ratio 1) from our ppo_loss, before any update
    with torch.no_grad():
        loss0, stats0 = ppo.ppo_loss(logprobs, logprobs, values * m, values * m, adv_w, ret, m, clip=cfg.clip,
                                     alpha=cfg.alpha, value_clip=cfg.value_clip)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    passes = []

    def record(_model):
        passes.append(1)

    stats = ppo.ppo_update(LossMaskAdapter(model), None, optimizer, q_ids, q_mask, r_ids, m.long(), logprobs,
                           values, rewards * m, cfg, before_optimizer_step=record)
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    internals = {"logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values * m, "raw_values": values,
                 "kl": kl, "rewards": rewards, "advantages": adv_w, "returns": ret}
    return internals, stats, stats0, before, after


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--keep", type=Path, default=None, help="keep the exchange files in this folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from emprl.profiles import PPOConfig

    cfg = replace(PPOConfig(), batch_size=args.batch, mini_batch_size=args.batch, ppo_epochs=4, grad_accum=1,
                  lr=1.41e-5, max_grad_norm=None, beta=0.2, gamma=1.0, lam=0.95, alpha=0.1, clip=0.2,
                  value_clip=0.2, whiten_advantages=True, whiten_rewards=False)
    trl_cfg = {"batch_size": args.batch, "mini_batch_size": args.batch, "ppo_epochs": cfg.ppo_epochs, "lr": cfg.lr,
               "beta": cfg.beta, "gamma": cfg.gamma, "lam": cfg.lam, "clip": cfg.clip,
               "cliprange_value": cfg.value_clip, "vf_coef": 2 * cfg.alpha, "max_grad_norm": None, "seed": args.seed}

    ctx = tempfile.TemporaryDirectory(prefix="emprl_trl_compare_") if args.keep is None else None
    work = Path(ctx.name) if ctx else args.keep
    work.mkdir(parents=True, exist_ok=True)
    t5, ref, v_head, q_ids, q_mask, r_ids, r_mask, scores = build_inputs(work, args.seed, args.batch, args.context, args.vocab)
    tb.write_json(work / "config.json", trl_cfg)
    print(f"machine: {tb.machine()}; threads {args.threads}")
    print(f"tiny T5: {sum(p.numel() for p in t5.parameters()):,} parameters; batch {args.batch}, "
          f"queries {q_mask.sum(1).tolist()} tokens, responses {r_mask.sum(1).tolist()} tokens")

    trl_result = tb.run_worker("compare", work, args.threads)
    theirs = load_file(str(work / "trl_internals.safetensors"))
    trl_params = load_file(str(work / "trl_params.safetensors"))
    loss_mask = theirs["mask"]  # trl's: our real-token mask without y_1
    n_first = int((r_mask.float() - loss_mask).sum())
    ours, stats, stats0, before, after = run_ours(t5, ref, v_head, q_ids, q_mask, r_ids, r_mask, scores, loss_mask, cfg)
    print(f"trl {trl_result['versions']['trl']} / transformers {trl_result['versions']['transformers']} "
          f"vs emprl (transformers {__import__('transformers').__version__})")
    print(f"trl's loss mask drops the first generated token of every response ({n_first} of "
          f"{int(r_mask.sum())} tokens); below, ours uses trl's mask so that the sums agree.\n")

    m = loss_mask.bool()
    print(f"scale: mean |KL| per token {ours['kl'][m].abs().mean().item():.3e}, mean |A| "
          f"{ours['advantages'][m].abs().mean().item():.3f}, mean |return| {ours['returns'][m].abs().mean().item():.3f}\n")
    rows = []

    def diff(name, a, b, where=m, note=""):
        d = (a.float() - b.float())[where].abs().max().item()
        rows.append((name, d, note))

    diff("log pi(y_t|s_t)", ours["logprobs"], theirs["logprobs"])
    diff("log rho(y_t|s_t) (reference)", ours["ref_logprobs"], theirs["ref_logprobs"])
    diff("V(s_t) (value head)", ours["values"], theirs["values"])
    diff("KL penalty, Eq. 6", ours["kl"], theirs["kl"])
    diff("reward vector, Eq. 8", ours["rewards"], theirs["rewards"])
    diff("advantages, Eq. 9-10 (whitened)", ours["advantages"], theirs["advantages"])
    diff("returns A + V", ours["returns"], theirs["returns"])
    full = r_mask.bool()
    d_first = (ours["logprobs"] - theirs["logprobs"])[full & ~m]
    trl_losses = trl_result["losses"]
    first = trl_losses[0]
    mean = lambda k: sum(x[k] for x in trl_losses) / len(trl_losses)  # noqa: E731
    rows.append(("loss, first pass (ratio 1)", abs(stats0["loss"] - first["total"]), ""))
    rows.append(("policy loss, first pass", abs(stats0["policy_loss"] - first["policy_loss"]), ""))
    rows.append(("alpha * value loss, first pass", abs(cfg.alpha * stats0["value_loss"] - first["value_term"]),
                 "ours alpha*L_VF vs trl vf_coef*0.5*L_VF"))
    rows.append(("loss, mean of 4 passes", abs(stats["loss"] - mean("total")), ""))
    rows.append(("policy loss, mean of 4 passes", abs(stats["policy_loss"] - mean("policy_loss")), ""))
    rows.append(("clip fraction, mean of 4 passes", abs(stats["clip_frac"] - mean("clip_frac")), ""))
    rows.append(("approx KL, mean of 4 passes", abs(stats["approx_kl"] - mean("approx_kl")), ""))
    rows.append(("entropy, mean of 4 passes", abs(stats["entropy"] - mean("entropy")), ""))

    # parameter update after the whole step: ||delta_ours - delta_trl|| / ||delta_trl||
    num, den, worst = 0.0, 0.0, ("", 0.0)
    for k, v0 in before.items():
        name = ("t5." + k[len("policy."):]) if k.startswith("policy.") else "v_head." + k.split(".")[-1]
        if name not in trl_params:
            continue
        d_ours, d_trl = after[k] - v0, trl_params[name] - v0
        num += (d_ours - d_trl).pow(2).sum().item()
        den += d_trl.pow(2).sum().item()
    rel_update = (num / den) ** 0.5 if den > 0 else float("nan")

    print(f"{'quantity':40s} {'max |ours - trl|':>16s}")
    ok = True
    for name, d, note in rows:
        flag = "" if d <= TOL else "  <-- differs"
        ok &= d <= TOL
        print(f"{name:40s} {d:16.3e}{flag}{('   (' + note + ')') if note else ''}")
    print(f"{'parameter update after 4 epochs':40s} {rel_update:16.3e}   (relative: |d_ours - d_trl| / |d_trl|)")
    ok &= rel_update < 1e-2
    print(f"\ntrl: mean over passes of loss {mean('total'):.6f}, policy {mean('policy_loss'):.6f}, "
          f"clip frac {mean('clip_frac'):.4f}, approx KL {mean('approx_kl'):.3e}")
    print(f"ours: mean over passes of loss {stats['loss']:.6f}, policy {stats['policy_loss']:.6f}, "
          f"clip frac {stats['clip_frac']:.4f}, approx KL {stats['approx_kl']:.3e}")
    print(f"\nOn purpose, with ours' own settings (paper): y_1 is kept (the {n_first} first tokens above, "
          f"their log-probs agree too: max diff {d_first.abs().max().item():.1e}), no value clipping, "
          "value loss without the 0.5 factor.")
    print("RESULT:", "agree to float tolerance" if ok else "DIFFER (see rows marked above)")
    if ctx:
        ctx.cleanup()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
