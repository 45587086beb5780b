"""Token-level PPO for an encoder-decoder policy (EmpRL, Section III-E), in one file, top to bottom.

trl 1.x has no PPO for encoder-decoders, so the algorithm lives here (CleanRL style). API:

- ``gae(rewards, values, mask, gamma, lam) -> (advantages, returns)``                Eq. 9-10
- ``ppo_loss(logprobs, old_logprobs, values, old_values, advantages, returns, mask, clip=0.2,
  alpha=0.1, value_clip=None, whiten_advantages=False, entropy=None) -> (loss, stats)``  Eq. 13-15
- ``ValueHead(d_model)``: linear on the decoder's final hidden state.
- ``ActorCritic(policy, value_head)``: policy and value share the network;
  ``forward(query_ids, query_mask, response_ids, response_mask) -> (logprobs, values, entropy)``.
- ``make_reference(policy)``: the frozen reference rho: a frozen copy of the trained prefix for a
  ``PrefixT5`` (one frozen T5 shared by policy and reference), a frozen model copy otherwise.
- ``sequence_logprobs(model, query_ids, query_mask, response_ids, response_mask, prefix=None,
  value_head=None) -> (logprobs, values | None, entropy)``.
- ``rollout(model, reference, tokenizer, contexts, gen_cfg, cfg) -> Rollout``: sample responses,
  old log-probs, reference log-probs, old values, and the per-token KL of ``cfg.kl_estimator``
  ("sampled": log pi - log rho of the sampled token, the paper/trl; "full": exact KL over the vocabulary;
  "warped"/"warped_full": both warped as the sampler, ``reward.warped_kl``).
- ``ppo_update(policy, value_head, optimizer, query_ids, query_mask, response_ids, response_mask,
  old_logprobs, old_values, rewards, cfg, accelerator=None, before_optimizer_step=None) -> stats``:
  the update alone (GAE + ``ppo_epochs`` passes over mini-batches), like trl's ``PPOTrainer.step``
  after scoring. ``value_head=None`` means ``policy`` is already an ``ActorCritic`` (or its DDP wrap).
- ``train_ppo(policy, reference, tokenizer, scorer, examples, gold, cfg, gen_cfg, out_dir, seed,
  variant="emprl", accelerator=None, ...)``: the whole loop with checkpoints, resume and logs;
  NaN/inf in log-probs, values, scorer logits, rewards, losses or gradients raises ``NonFiniteError``
  (step and quantity named) and leaves the last checkpoint untouched.

Differences from trl 0.9.6's PPOTrainer (the authors' stack), on purpose: the value loss is Eq. 15's
mean squared error without trl's factor 0.5 and without value clipping unless ``cfg.value_clip`` is set
(trl: 0.5 * max of clipped/unclipped, cliprange_value 0.2); advantage whitening is an option
(``cfg.whiten_advantages``, on by default as in trl); the reward scaling/normalisation/whitening options
follow trl's ``use_score_scaling``/``use_score_norm``/``whiten_rewards``.

One **step** = one PPO batch: roll out ``cfg.batch_size`` contexts (per process), score them, compute
the reward vector and GAE, then ``cfg.ppo_epochs`` passes over the batch in mini-batches of
``cfg.mini_batch_size`` with one optimizer step per ``cfg.grad_accum`` mini-batches. The paper's
24,000 steps are 24,000 such batches of 8 (batch 8, one mini-batch, 4 epochs: 4 optimizer steps each).

Tensors are right-padded: response position t holds action a_t = y_t, predicted from the decoder
state s_t = (y_<t, c); ``mask`` is 1 on real tokens (up to and including EOS). Dropout is off
(eval mode) in rollout and update, so the first PPO pass has ratio exactly 1.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from emprl import checkpoint as ckpt
from emprl.generator import new_token_limits
from emprl.reward import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    empathy_reward,
    full_kl,
    kl_penalty,
    masked_mean,
    masked_whiten,
    reward_vector,
    scale_scores,
    warped_kl,
    whiten_rewards,
)

VARIANTS = ("emprl", "no_kl", "no_emp")


class NonFiniteError(FloatingPointError):
    """NaN or inf in a reward, logit or loss: the run stops, the last good checkpoint is kept."""


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"non-finite {name} ({int((~torch.isfinite(x)).sum())} of {x.numel()} values)")


# --------------------------------------------------------------------------- equations


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float,
        mask_rewards: bool = True):
    """Generalised advantage estimation (Eq. 9-10) over right-padded [B, T] tensors.

    Values past the last real token count as 0 (the episode ends there); padding gets 0 advantage.
    ``mask_rewards=False`` lets rewards at padding flow back into the real tokens' advantages, as trl
    0.9.6 does after whitening (``reward.whiten_rewards(keep_padding=True)``).
    Returns (advantages, returns = advantages + values).
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    rewards = rewards * mask if mask_rewards else rewards
    T = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # Eq. 10
        last = delta + gamma * lam * last  # Eq. 9, recursively
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, advantages + values


def ppo_loss(
    logprobs, old_logprobs, values, old_values, advantages, returns, mask,
    clip: float = 0.2, alpha: float = 0.1, value_clip: float | None = None,
    whiten_advantages: bool = False, entropy: torch.Tensor | None = None,
):
    """L = -L^CLIP + alpha L^VF (Eq. 13-15) as masked means over real tokens; returns (loss, stats).

    ``returns`` = A + V_old (the target of Eq. 15). ``value_clip`` (trl's ``cliprange_value``) is off
    by default as in the paper. Stats: policy_loss, value_loss, loss, clip_frac, approx_kl
    (0.5 * mean squared log-ratio, as trl), ratio, value_clip_frac and entropy when given.
    """
    mask = mask.to(logprobs.dtype)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)  # c_t(theta), Eq. 14
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    policy_loss = masked_mean(torch.max(pg_unclipped, pg_clipped), mask)  # -L^CLIP, Eq. 14
    v_err = (values - returns) ** 2  # Eq. 15
    value_clip_frac = torch.zeros(())
    if value_clip is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
        v_err_clipped = (v_clipped - returns) ** 2
        value_clip_frac = masked_mean((v_err_clipped > v_err).to(mask.dtype), mask)
        v_err = torch.max(v_err, v_err_clipped)
    value_loss = masked_mean(v_err, mask)  # L^VF, Eq. 15
    loss = policy_loss + alpha * value_loss  # Eq. 13
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "loss": loss.item(),
            "clip_frac": masked_mean((pg_clipped > pg_unclipped).to(mask.dtype), mask).item(),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask).item(),
            "ratio": masked_mean(ratio, mask).item(),
            "value_clip_frac": float(value_clip_frac),
        }
        if entropy is not None:
            stats["entropy"] = masked_mean(entropy, mask).item()
    return loss, stats


class ValueHead(nn.Module):
    """V(s_t): a linear layer on the decoder's final hidden state at position t."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


# --------------------------------------------------------------------------- policy, value, reference


def _t5(model: nn.Module) -> nn.Module:
    """The T5ForConditionalGeneration inside a PrefixT5, or the model itself."""
    return model.t5 if hasattr(model, "t5") and hasattr(model, "prefix") else model


def is_prefix_model(model: nn.Module) -> bool:
    return hasattr(model, "t5") and hasattr(model, "prefix")


def sequence_logprobs(model, query_ids, query_mask, response_ids, response_mask, prefix=None, value_head=None):
    """log pi(y_t | y_<t, c) of the given response tokens, V(s_t) if ``value_head``, and the entropy [B, T]."""
    logp_all, values = sequence_log_softmax(model, query_ids, query_mask, response_ids, response_mask, prefix, value_head)
    logprobs = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, values, entropy


def sequence_log_softmax(model, query_ids, query_mask, response_ids, response_mask, prefix=None, value_head=None):
    """The full log pi(. | y_<t, c) [B, T, V] (float32) at every response position, and V(s_t) if ``value_head``."""
    config = _t5(model).config
    start = torch.full_like(response_ids[:, :1], config.decoder_start_token_id)
    decoder_input_ids = torch.cat([start, response_ids[:, :-1]], dim=1)  # s_t = (y_<t, c)
    decoder_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
    kwargs = {"prefix": prefix} if prefix is not None else {}
    out = model(
        input_ids=query_ids, attention_mask=query_mask, decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_mask, output_hidden_states=value_head is not None, **kwargs,
    )
    logp_all = F.log_softmax(out.logits.float(), dim=-1)
    values = value_head(out.decoder_hidden_states[-1]) if value_head is not None else None
    return logp_all, values


class ActorCritic(nn.Module):
    """The policy pi_theta and the value head V sharing one network (one module, so DDP can wrap it)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead) -> None:
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, query_ids, query_mask, response_ids, response_mask):
        return sequence_logprobs(self.policy, query_ids, query_mask, response_ids, response_mask, value_head=self.value_head)


def make_reference(policy: nn.Module) -> nn.Module:
    """The frozen trained generator rho: a frozen copy of the prefix (PrefixT5) or of the whole model."""
    ref = copy.deepcopy(policy.prefix if is_prefix_model(policy) else policy)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def reference_logprobs(policy, reference, query_ids, query_mask, response_ids, response_mask, full=False):
    """log rho(y_t | y_<t, c): the policy's frozen T5 with the reference prefix, or the reference model.

    ``full=True``: the whole log rho(. | y_<t, c) [B, T, V] instead of the sampled tokens' [B, T]."""
    fn = sequence_log_softmax if full else sequence_logprobs
    if is_prefix_model(policy) and not hasattr(reference, "generate"):
        return fn(policy, query_ids, query_mask, response_ids, response_mask, prefix=reference)[0]
    return fn(reference, query_ids, query_mask, response_ids, response_mask)[0]


def kl_estimator_of(cfg) -> str:
    """``cfg.kl_estimator`` ("sampled" if the config has none), checked against ``KL_ESTIMATORS``."""
    est = getattr(cfg, "kl_estimator", "sampled")
    if est not in KL_ESTIMATORS:
        raise ValueError(f"PPOConfig.kl_estimator must be one of {KL_ESTIMATORS}, got {est!r}")
    return est


# --------------------------------------------------------------------------- rollout


@dataclass
class Rollout:
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor  # [B, T] right-padded with pad
    response_mask: torch.Tensor  # [B, T] 1 on real tokens (up to and including EOS)
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    responses: list[str]
    kl: torch.Tensor | None = None  # [B, T] per-token R_kl (Eq. 6) of cfg.kl_estimator, 0 at padding


def response_mask_from_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row (all ones if there is none)."""
    is_eos = (response_ids == eos_token_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_eos).long()


@torch.no_grad()
def rollout(model: ActorCritic, reference, tokenizer, contexts: Sequence[str], gen_cfg, cfg, device=None) -> Rollout:
    """Sample one response per context (top-k/top-p/temperature of ``gen_cfg``, at least
    ``cfg.min_new_tokens``) and compute the old log-probs, reference log-probs, old values and the
    per-token KL of ``cfg.kl_estimator`` ("sampled": log pi - log rho of y_t; "full": ``full_kl``)."""
    estimator = kl_estimator_of(cfg)
    device = device or next(model.parameters()).device
    policy, t5 = model.policy, _t5(model.policy)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # keep the end of the context, like format_context
    try:
        enc = tokenizer(list(contexts), max_length=gen_cfg.max_source_len, truncation=True, padding=True, return_tensors="pt")
    finally:
        tokenizer.truncation_side = side
    query_ids, query_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    pad_id, eos_id = t5.config.pad_token_id, t5.config.eos_token_id
    min_new, max_new = new_token_limits(gen_cfg, cfg.min_new_tokens)
    try:
        out = policy.generate(
            input_ids=query_ids, attention_mask=query_mask, do_sample=True, top_k=gen_cfg.top_k, top_p=gen_cfg.top_p,
            temperature=gen_cfg.temperature, max_new_tokens=max_new, min_new_tokens=min_new,
            pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=t5.config.decoder_start_token_id,
        )
    except RuntimeError as e:  # torch.multinomial on NaN/inf probabilities
        if "inf" in str(e) or "nan" in str(e):
            raise NonFiniteError(f"non-finite policy logits while sampling ({e})") from e
        raise
    sequences = out if torch.is_tensor(out) else out.sequences
    response_ids = sequences[:, 1:]  # drop the decoder start token
    response_mask = response_mask_from_eos(response_ids, eos_id)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_id)).contiguous()
    if estimator != "sampled":  # the same two forwards, keeping the [B, T, V] log-probs only for the KL
        logp_all, values = sequence_log_softmax(policy, query_ids, query_mask, response_ids, response_mask,
                                                value_head=model.value_head)
        logprobs = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        ref_all = reference_logprobs(policy, reference, query_ids, query_mask, response_ids, response_mask, full=True)
        ref_logprobs = ref_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        if estimator == "full":
            kl = full_kl(logp_all, ref_all, response_mask)
        else:
            kl = warped_kl(logp_all, ref_all, response_ids, response_mask, top_k=gen_cfg.top_k,
                           temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, eos_token_id=eos_id,
                           min_new_tokens=min_new, exact=estimator == "warped_full")
        del logp_all, ref_all
    else:
        logprobs, values, entropy = model(query_ids, query_mask, response_ids, response_mask)
        ref_logprobs = reference_logprobs(policy, reference, query_ids, query_mask, response_ids, response_mask)
        kl = kl_penalty(logprobs, ref_logprobs) * response_mask.to(logprobs.dtype)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollout(query_ids, query_mask, response_ids, response_mask, logprobs, ref_logprobs, values, entropy, texts,
                   kl)


# --------------------------------------------------------------------------- update


def ppo_update(
    policy, value_head, optimizer, query_ids, query_mask, response_ids, response_mask,
    old_logprobs, old_values, rewards, cfg, accelerator=None,
    before_optimizer_step: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """GAE on the reward vector, then ``cfg.ppo_epochs`` passes of clipped PPO over mini-batches.

    Rewards may be whitened (``cfg.whiten_rewards``, trl's ``shift_mean=False``) before GAE and the
    advantages are whitened once per batch when ``cfg.whiten_advantages`` (trl's behaviour).
    ``before_optimizer_step(model)`` is called after the backward passes and before each optimizer step
    (e.g. to record gradients). Returns the mean stats of all mini-batches plus advantage/return means.
    """
    model = policy if value_head is None else ActorCritic(policy, value_head)
    mask = response_mask.to(old_logprobs.dtype)
    old_values = old_values * mask
    trl_padding = getattr(cfg, "whiten_rewards_padding", "zero") == "trl"
    if cfg.whiten_rewards:
        rewards = whiten_rewards(rewards, mask, keep_padding=trl_padding)
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam,
                              mask_rewards=not (cfg.whiten_rewards and trl_padding))  # Eq. 9-10
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask) * mask
    B, mb, accum = query_ids.shape[0], cfg.mini_batch_size, cfg.grad_accum
    if B % (mb * accum):
        raise ValueError(f"batch {B} is not a multiple of mini_batch_size*grad_accum = {mb}*{accum}")
    params = [p for p in model.parameters() if p.requires_grad]
    all_stats: list[dict[str, float]] = []
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B).to(query_ids.device)
        for start in range(0, B, mb * accum):
            optimizer.zero_grad(set_to_none=True)
            for m in range(accum):
                idx = perm[start + m * mb : start + (m + 1) * mb]
                logprobs, values, entropy = model(query_ids[idx], query_mask[idx], response_ids[idx], response_mask[idx])
                loss, stats = ppo_loss(
                    logprobs, old_logprobs[idx], values, old_values[idx], advantages[idx], returns[idx], mask[idx],
                    clip=cfg.clip, alpha=cfg.alpha, value_clip=cfg.value_clip, entropy=entropy,
                )
                _check_finite("PPO loss", loss.detach())
                (accelerator.backward if accelerator is not None else torch.Tensor.backward)(loss / accum)
                all_stats.append(stats)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm else math.inf)
            _check_finite("gradient norm", grad_norm)
            if before_optimizer_step is not None:
                before_optimizer_step(model)
            optimizer.step()
    out = {k: float(np.mean([s[k] for s in all_stats])) for k in all_stats[0]}
    out["advantages_mean"] = masked_mean(advantages, mask).item()
    out["returns_mean"] = masked_mean(returns, mask).item()
    out["values_mean"] = masked_mean(old_values, mask).item()
    return out


# --------------------------------------------------------------------------- training loop


def _context_texts(examples, idx, max_context_tokens) -> tuple[list[str], list[str]]:
    """(generator inputs, identifier inputs) as in emprl.evaluation: the generator's context is truncated
    to ``max_context_tokens`` words, the identifiers get the untruncated ``format_context`` string (as
    for the gold labels in ``scoring.gold_labels``)."""
    items = [examples[i] for i in idx]
    if all(isinstance(x, str) for x in items):
        return items, items
    from emprl.data import format_context

    return ([format_context(x.context, max_tokens=max_context_tokens) for x in items],
            [format_context(x.context) for x in items])


def _resume_key(cfg, gen_cfg, variant, seed, n_examples, world) -> dict:
    """What must match for a checkpoint to be resumed (``steps``/logging/checkpointing may change)."""
    c = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("steps", "checkpoint_every", "log_every")}
    for k, default in (("kl_estimator", "sampled"), ("whiten_rewards_padding", "zero"), ("lr_schedule", "constant")):
        if c.get(k) == default:  # options at their default leave the key as it is without them
            del c[k]
    g = {k: getattr(gen_cfg, k) for k in ("top_k", "top_p", "temperature", "max_new_tokens", "max_source_len")}
    if getattr(gen_cfg, "length_counts_start_token", False):
        g["length_counts_start_token"] = True
    return {"ppo": c, "sampling": g, "variant": variant, "seed": seed, "n_examples": n_examples, "world": world}


def _save_train_state(path, model, optimizer, step, meta, accelerator, rows):
    """Collect every process's RNG state; the main process writes one atomic file (log rows as a float64 table)."""
    rng_t, rng_m = ckpt.rng_state()
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        gathered = gather_object([(rng_t, rng_m)])
    else:
        gathered = [(rng_t, rng_m)]
    if accelerator is None or accelerator.is_main_process:
        tensors = {f"param/{n}": p for n, p in model.named_parameters() if p.requires_grad}
        opt_t, opt_m = ckpt.optimizer_to_flat(optimizer.state_dict())
        tensors.update(opt_t)
        tensors["log"] = torch.tensor([[float(r[k]) for k in LOG_FIELDS] for r in rows], dtype=torch.float64).reshape(
            len(rows), len(LOG_FIELDS))
        rng_meta = []
        for rank, (t, m) in enumerate(gathered):
            tensors.update({f"rng/{rank}/{k}": v for k, v in t.items()})
            rng_meta.append(m)
        ckpt.save_state(path, tensors, {**meta, "step": step, "optimizer": opt_m, "rng": rng_meta})
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _load_train_state(path, model, optimizer, rank):
    tensors, meta = ckpt.load_state(path)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {k[len("param/"):] for k in tensors if k.startswith("param/")}
    if saved != set(named):
        raise ValueError(f"{path}: trainable parameters differ from the model's ({sorted(saved ^ set(named))[:5]} ...)")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(tensors[f"param/{n}"])
    optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, meta["optimizer"]))
    prefix = f"rng/{rank}/"
    ckpt.set_rng_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, meta["rng"][rank])
    rows = [dict(zip(LOG_FIELDS, r)) for r in tensors["log"].tolist()]
    for r in rows:
        r["step"] = int(r["step"])
    return meta, rows


LOG_FIELDS = (
    "step", "reward_mean", "reward_std", "emp_reward_mean", "emp_reward_std", "score_mean", "kl", "kl_coef",
    "entropy", "policy_loss", "value_loss", "loss", "clip_frac", "approx_kl", "ratio", "value_clip_frac",
    "advantages_mean", "returns_mean", "values_mean", "response_len", "steps_per_s", "elapsed_s",
)


def lr_at(cfg, step: int) -> float:
    """The learning rate of PPO step ``step`` (0-based): ``cfg.lr``, or with ``cfg.lr_schedule="linear"``
    decayed linearly to 0 over ``cfg.steps`` (transformers' "linear" schedule without warm-up, stepped
    once per PPO step as trl's ``PPOTrainer.step`` does)."""
    schedule = getattr(cfg, "lr_schedule", "constant")
    if schedule == "constant":
        return cfg.lr
    if schedule == "linear":
        return cfg.lr * max(0.0, (cfg.steps - step) / cfg.steps)
    raise ValueError(f"PPOConfig.lr_schedule must be 'constant' or 'linear', got {schedule!r}")


def visited_subset(examples: Sequence, steps: int, batch_size: int, seed: int = 0) -> list:
    """The examples a ``steps``-step run draws from: all of them if ``steps * batch_size`` covers them,
    else a seeded random subset of that size (in the original order), so that gold labels are
    computed only for contexts the run will visit (the paper's 24,000 x 8 visits every example)."""
    n_visit = steps * batch_size
    if n_visit >= len(examples):
        return list(examples)
    keep = np.random.default_rng(seed).choice(len(examples), n_visit, replace=False)
    return [examples[i] for i in sorted(keep)]


def train_ppo(
    policy: nn.Module,
    reference: nn.Module | None,
    tokenizer,
    scorer,
    examples: Sequence,
    gold: torch.Tensor,
    cfg,
    gen_cfg,
    out_dir: str | os.PathLike,
    seed: int = 0,
    variant: str = "emprl",
    accelerator=None,
    *,
    max_context_tokens: int | None = None,
    resume: bool = True,
    progress: bool = True,
    value_head: ValueHead | None = None,
    before_optimizer_step: Callable[[nn.Module], None] | None = None,
    save_policy: bool = True,
) -> dict[str, Any]:
    """Train ``policy`` with PPO against ``scorer``'s empathy reward; resumable; logs every step.

    ``policy``: the trained generator (PrefixT5: only prefix + value head train; a plain T5: all of it).
    ``reference``: the frozen generator (``make_reference(policy)`` if None). ``scorer``: any object
    with ``.logits(contexts, responses) -> [B, 3, 3]``. ``examples``: DialogueExamples (contexts via
    ``emprl.data.format_context``) or context strings; ``gold`` [N, 3] their gold levels. ``variant``:
    "emprl", "no_kl" (beta = 0) or "no_emp" (R_emp = 0). Writes ``out_dir/checkpoints/ppo/<variant>/``
    (``train_state.safetensors`` every ``cfg.checkpoint_every`` steps; ``policy/`` and
    ``value_head.safetensors`` at the end) and ``out_dir/runs/ppo_<variant>/log.csv``. With
    ``accelerator`` (accelerate), each process rolls out its own ``cfg.batch_size`` contexts,
    gradients are all-reduced, and only the main process writes.
    Returns {"log": rows, "checkpoint_dir", "log_path", "resumed_from"}.
    """
    from emprl import paths

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if cfg.batch_size % (cfg.mini_batch_size * cfg.grad_accum):
        raise ValueError(
            f"PPOConfig: batch_size {cfg.batch_size} must be a multiple of mini_batch_size*grad_accum "
            f"({cfg.mini_batch_size}*{cfg.grad_accum})"
        )
    if cfg.min_new_tokens < 1:
        raise ValueError("PPOConfig.min_new_tokens must be >= 1 (the empathy reward sits on the last token)")
    kl_estimator_of(cfg)
    lr_at(cfg, 0)  # validates cfg.lr_schedule
    if getattr(cfg, "whiten_rewards_padding", "zero") not in ("zero", "trl"):
        raise ValueError(f"PPOConfig.whiten_rewards_padding must be 'zero' or 'trl', "
                         f"got {cfg.whiten_rewards_padding!r}")
    gold = torch.as_tensor(gold).long()
    if gold.shape != (len(examples), 3):
        raise ValueError(f"gold labels must be [{len(examples)}, 3] (one row per example), got {tuple(gold.shape)}")
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    is_main = rank == 0
    global_batch = cfg.batch_size * world
    steps_per_epoch = len(examples) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(examples)} examples are fewer than one batch of {global_batch} ({world} process(es))")

    # ---- models: policy + value head share the network; reference frozen
    if is_prefix_model(policy):
        for p in policy.t5.parameters():
            p.requires_grad_(False)
    if reference is None:
        reference = make_reference(policy)
    d_model = _t5(policy).config.d_model
    torch.manual_seed(seed)
    value_head = value_head if value_head is not None else ValueHead(d_model)
    device = accelerator.device if accelerator is not None else next(policy.parameters()).device
    model = ActorCritic(policy, value_head).to(device)
    reference.to(device)
    model.eval()  # dropout off in rollout and update
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    wrapped = model
    if accelerator is not None:
        wrapped, optimizer = accelerator.prepare(model, optimizer)
    kl_ctl = (AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else FixedKLController(cfg.beta))
    running = RunningMoments()

    # ---- where things go; resume
    out_dir = Path(out_dir)
    ck_dir = paths.checkpoint_dir(out_dir, "ppo", variant)
    state_path = ck_dir / "train_state.safetensors"
    log_dir = out_dir / "runs" / f"ppo_{variant}"
    log_path = log_dir / "log.csv"
    key = _resume_key(cfg, gen_cfg, variant, seed, len(examples), world)
    start_step, rows, resumed_from = 0, [], None
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    if is_main:
        ckpt.remove_stale_temporaries(ck_dir)
    if resume and state_path.exists():
        meta, rows = _load_train_state(state_path, model, optimizer, rank)
        if meta["key"] != key:
            raise ValueError(
                f"{state_path} was written by a different run configuration; delete it or pass resume=False.\n"
                f"saved: {meta['key']}\nnow:   {key}"
            )
        start_step, resumed_from = int(meta["step"]), int(meta["step"])
        kl_ctl.value = float(meta["kl_coef"])
        running.load_state_dict(meta["running"])
    if is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(log_path, [r for r in rows if r['step'] % cfg.log_every == 0])  # the log as of the checkpoint (drops rows of a killed run's lost steps)
    tb = _tensorboard(log_dir) if is_main else None
    meta_of = lambda: {"key": key, "kl_coef": kl_ctl.value, "running": running.state_dict()}  # noqa: E731

    beta_on = variant != "no_kl"
    t0, t_last = time.perf_counter(), time.perf_counter()
    bar = _tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, disable=not (progress and is_main))
    for step in bar:
        # ---- 1. this process's slice of the data
        epoch, pos = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
        idx = order[pos * global_batch : (pos + 1) * global_batch][rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
        try:
            contexts, score_contexts = _context_texts(examples, idx, max_context_tokens)
            # ---- 2. rollout: sample y_hat ~ pi, old log-probs and values, reference log-probs
            ro = rollout(model, reference, tokenizer, contexts, gen_cfg, cfg, device=device)
            _check_finite("policy log-probs", ro.logprobs)
            _check_finite("reference log-probs", ro.ref_logprobs)
            _check_finite("values", ro.values)
            # ---- 3. rewards: R_emp (Eq. 2-5), KL penalty (Eq. 6), reward vector (Eq. 7-8)
            logits = scorer.logits(score_contexts, ro.responses)
            _check_finite("scorer logits", torch.as_tensor(logits))
            r_emp = empathy_reward(torch.as_tensor(logits).to(device), gold[idx].to(device))
            _check_finite("empathy reward", r_emp)
            score = r_emp if variant != "no_emp" else torch.zeros_like(r_emp)
            if cfg.reward_scaling:
                score = scale_scores(score, running, normalize=cfg.reward_norm, clip=cfg.score_clip)
            mask = ro.response_mask.to(ro.logprobs.dtype)
            if ro.kl is None and kl_estimator_of(cfg) != "sampled":
                raise ValueError(f"kl_estimator={cfg.kl_estimator!r} needs a rollout that fills Rollout.kl")
            kl = ro.kl * mask if ro.kl is not None else kl_penalty(ro.logprobs, ro.ref_logprobs) * mask  # Eq. 6
            _check_finite("KL penalty", kl)
            beta = kl_ctl.value if beta_on else 0.0
            rewards = reward_vector(score, kl, mask, beta)
            _check_finite("rewards", rewards)
            # ---- 4. PPO update (GAE, Eq. 9-10; loss, Eq. 13-15)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            stats = ppo_update(
                wrapped, None, optimizer, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask,
                ro.logprobs, ro.values, rewards, cfg, accelerator=accelerator, before_optimizer_step=before_optimizer_step,
            )
        except NonFiniteError as e:
            raise NonFiniteError(
                f"PPO step {step + 1} ({variant}): {e}; stopped. Last good checkpoint: "
                f"{state_path if state_path.exists() else 'none'}"
            ) from None
        seq_kl = kl.sum(1)
        kl_ctl.update(_mean_all(seq_kl, accelerator), cfg.batch_size * world)

        # ---- 5. log
        now = time.perf_counter()
        total = _gather(rewards.sum(1), accelerator)
        emp = _gather(r_emp, accelerator)
        row = {
            "step": step + 1, "reward_mean": total.mean().item(), "reward_std": total.std().item() if total.numel() > 1 else 0.0,
            "emp_reward_mean": emp.mean().item(), "emp_reward_std": emp.std().item() if emp.numel() > 1 else 0.0,
            "score_mean": _mean_all(score, accelerator), "kl": _mean_all(seq_kl, accelerator), "kl_coef": beta,
            "response_len": _mean_all(mask.sum(1), accelerator), "steps_per_s": 1.0 / max(now - t_last, 1e-9),
            "elapsed_s": now - t0,
        }
        for k, v in stats.items():
            row[k] = _mean_all(torch.tensor(v, device=device), accelerator)
        row = {k: row.get(k, float("nan")) for k in LOG_FIELDS}
        t_last = now
        rows.append(row)
        if is_main and (step + 1) % cfg.log_every == 0:
            _append_csv(log_path, row)
            if tb is not None:
                for k, v in row.items():
                    if k != "step":
                        tb.add_scalar(f"ppo/{k}", v, step + 1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.3f}")

        # ---- 6. checkpoint
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_train_state(state_path, model, optimizer, step + 1, meta_of(), accelerator, rows)

    if tb is not None:
        tb.close()
    if is_main and save_policy:
        _save_policy(model, tokenizer, ck_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return {"log": rows, "checkpoint_dir": ck_dir, "log_path": log_path, "resumed_from": resumed_from, "model": model}


# --------------------------------------------------------------------------- small helpers


def _gather(x: torch.Tensor, accelerator) -> torch.Tensor:
    return accelerator.gather(x.contiguous()) if accelerator is not None and accelerator.num_processes > 1 else x


def _mean_all(x: torch.Tensor, accelerator) -> float:
    x = x.detach().float()
    if accelerator is not None and accelerator.num_processes > 1:
        return accelerator.reduce(x.mean(), reduction="mean").item()
    return x.mean().item()


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _append_csv(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - TensorBoard is optional
        return None
    return SummaryWriter(str(log_dir))


def _tqdm(it, **kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc="PPO", **kw)


def _save_policy(model: ActorCritic, tokenizer, ck_dir: Path) -> None:
    """The trained policy in the generator's format (``load_generator`` reads it) and the value head."""
    from safetensors.torch import save_file

    policy_dir = ck_dir / "policy"
    try:
        from emprl.generator import save_generator
    except ImportError:
        save_generator = None
    if save_generator is not None:
        save_generator(model.policy, tokenizer, policy_dir)
    elif hasattr(model.policy, "save_pretrained"):
        model.policy.save_pretrained(policy_dir)
        tokenizer.save_pretrained(policy_dir)
    tmp = ck_dir / "value_head.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.value_head.state_dict().items()}, str(tmp))
    os.replace(tmp, ck_dir / "value_head.safetensors")
