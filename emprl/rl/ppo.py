"""Token-level PPO for an encoder-decoder policy (EmpRL, Section III-E): the algorithm, top to bottom.

trl 1.x has no PPO for encoder-decoders, so the algorithm lives here (CleanRL style): ``rollout``
(sample responses, old log-probs, values, reference log-probs, per-token KL), ``gae`` (Eq. 9-10),
``ppo_loss`` (Eq. 13-15) and ``ppo_update`` (epochs of mini-batches). The model-specific parts are
in ``emprl.models.policy``; the training loop (data, rewards, resume, logging, distributed) in
``emprl.rl.ppo_train``.

Differences from trl 0.9.6's PPOTrainer (the authors' stack), on purpose: the value loss is Eq. 15's
mean squared error without trl's factor 0.5 and without value clipping unless ``cfg.value_clip`` is set
(trl: 0.5 * max of clipped/unclipped, cliprange_value 0.2); advantage whitening is an option
(``cfg.whiten_advantages``, on by default as in trl).

Tensors are right-padded: response position t holds action a_t = y_t, predicted from the decoder
state s_t = (y_<t, c); ``mask`` is 1 on real tokens (up to and including EOS). Dropout is off
(eval mode) in rollout and update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from emprl.models import policy as P
from emprl.rl.reward import (full_kl, kl_penalty, masked_mean, masked_var, masked_whiten, sampling_log_probs,
                          warped_kl, whiten_rewards)


class NonFiniteError(FloatingPointError):
    """NaN or inf in a reward, logit or loss: the run stops, the last good checkpoint is kept."""


def check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"non-finite {name} ({int((~torch.isfinite(x)).sum())} of {x.numel()} values)")


# --------------------------------------------------------------------------- 1. rollout


@dataclass
class Rollout:
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor  # [B, T] right-padded with pad
    response_mask: torch.Tensor  # [B, T] 1 on real tokens (up to and including EOS)
    logprobs: torch.Tensor  # log pi_old(y_t | s_t)
    ref_logprobs: torch.Tensor  # log rho(y_t | s_t)
    values: torch.Tensor  # V_old(s_t)
    entropy: torch.Tensor
    responses: list[str]
    kl: torch.Tensor  # [B, T] per-token R_kl (Eq. 6) of cfg.kl_estimator, 0 at padding
    # cfg.ratio == "sampler": the sampler's support [B, T, V] (top-k set, EOS ban), and ``logprobs`` are then
    # those of the sampling distribution q (tempered, truncated), not of the raw policy
    keep: torch.Tensor | None = None
    ref_logp_all: torch.Tensor | None = None  # [B, T, V] log rho(. | s_t), kept for cfg.kl_in_loss


@torch.no_grad()
def rollout(model: P.ActorCritic, reference, tokenizer, contexts: Sequence[str], gen_cfg, cfg,
            rescore: bool = False, static_cache: bool | None = None) -> Rollout:
    """Sample one response per context (``gen_cfg``'s top-k/top-p/temperature, at least
    ``cfg.min_new_tokens``) on the model's device, with the old log-probs, values, reference log-probs
    and the per-token KL of ``cfg.kl_estimator`` ("sampled": log pi - log rho of y_t; "full": ``full_kl``;
    "warped"/"warped_full": policy and reference both warped as the sampler, ``reward.warped_kl``).

    The old log-probs, values and entropy come from the generation pass itself: its raw logits and
    final decoder states are those of a teacher-forced forward over the sampled tokens (the same
    weights; cached attention sums in another order, so they agree to float rounding, ~1e-6 in fp32,
    and the first PPO pass has a ratio of 1 to that precision). They are of the raw policy, not of the
    top-k/temperature sampling distribution. ``rescore=True`` recomputes them with that separate
    forward (the plain path, for tests and benchmarks). ``static_cache``: see ``policy.static_cache``.
    """
    estimator, kl_in_loss = cfg.kl_estimator, cfg.kl_in_loss
    policy = model.policy
    query_ids, query_mask = P.encode_contexts(tokenizer, list(contexts), gen_cfg.max_source_len,
                                              P.device_of(model))
    generation = P.generation_kwargs(gen_cfg, tokenizer, min_new_tokens=cfg.min_new_tokens)
    try:
        sample = P.sample(policy, query_ids, query_mask, generation, scores=not rescore, static=static_cache)
    except RuntimeError as e:  # torch.multinomial on NaN/inf probabilities
        if "inf" in str(e) or "nan" in str(e):
            raise NonFiniteError(f"non-finite policy logits while sampling ({e})") from e
        raise
    response_ids, response_mask = sample.response_ids, sample.response_mask
    if rescore:
        logp_all, values = P.sequence_log_softmax(policy, query_ids, query_mask, response_ids, response_mask,
                                                  value_head=model.value_head)
    else:
        logp_all, values = sample.logp_all, model.value_head(sample.hidden)
    logprobs, entropy = P.token_logprobs(logp_all, response_ids)
    mask = response_mask.to(logprobs.dtype)
    # the policy's log-probs came from generation, so rho needs the only forward of the rollout
    ref = P.reference_logprobs(policy, reference, query_ids, query_mask, response_ids, response_mask,
                               full=estimator != "sampled" or kl_in_loss)
    if estimator == "full":
        ref_logprobs = ref.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        kl = full_kl(logp_all, ref, response_mask)  # Eq. 6 in expectation over the vocabulary
    elif estimator in ("warped", "warped_full"):  # a true KL of the two sampling distributions
        ref_logprobs = ref.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        kl = warped_kl(logp_all, ref, response_ids, response_mask, top_k=gen_cfg.top_k,
                       temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, eos_token_id=tokenizer.eos_token_id,
                       min_new_tokens=generation["min_new_tokens"], exact=estimator == "warped_full")
    else:
        ref_logprobs = ref.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1) if kl_in_loss else ref
        kl = kl_penalty(logprobs, ref_logprobs) * mask  # Eq. 6
    keep = None
    if cfg.ratio == "sampler":  # pi_old as the sampler drew from it: Eq. 14's ratio is then of one distribution
        logq = sampling_log_probs(logp_all, **sampler_settings(gen_cfg, tokenizer, generation))
        keep = torch.isfinite(logq)
        logprobs = logq.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1).masked_fill(mask == 0, 0.0)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollout(query_ids, query_mask, response_ids, response_mask, logprobs, ref_logprobs, values * mask,
                   entropy, texts, kl, keep, ref if kl_in_loss else None)


def sampler_settings(gen_cfg, tokenizer, generation: dict) -> dict:
    """The warping of ``reward.sampling_log_probs`` that the rollout's sampler applied."""
    return {"top_k": gen_cfg.top_k, "temperature": gen_cfg.temperature, "top_p": gen_cfg.top_p,
            "eos_token_id": tokenizer.eos_token_id, "min_new_tokens": generation.get("min_new_tokens", 0)}


# --------------------------------------------------------------------------- 2. advantages and loss


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
    whiten_advantages: bool = False, entropy: torch.Tensor | None = None, policy_coef: float = 1.0,
):
    """L = -L^CLIP + alpha L^VF (Eq. 13-15) as masked means over real tokens; returns (loss, stats),
    stats as detached 0-d tensors.

    ``returns`` = A + V_old (the target of Eq. 15). ``value_clip`` (trl's ``cliprange_value``) is off
    by default as in the paper. ``policy_coef`` weighs -L^CLIP (1 in Eq. 13). Stats: policy_loss, value_loss,
    loss, clip_frac, approx_kl (0.5 * mean squared log-ratio, as trl), ratio, value_clip_frac and entropy when
    given.
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
    loss = policy_coef * policy_loss + alpha * value_loss  # Eq. 13 (policy_coef 0: a critic-only warm-up)
    with torch.no_grad():  # 0-d tensors: the caller syncs with the host once, where it logs
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "loss": loss.detach(),
            "clip_frac": masked_mean((pg_clipped > pg_unclipped).to(mask.dtype), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
            "value_clip_frac": value_clip_frac.to(loss.device),
        }
        if entropy is not None:
            stats["entropy"] = masked_mean(entropy, mask)
    return loss, stats


# --------------------------------------------------------------------------- 3. update


def ppo_update(
    policy, value_head, optimizer, query_ids, query_mask, response_ids, response_mask,
    old_logprobs, old_values, rewards, cfg, accelerator=None,
    before_optimizer_step: Callable[[nn.Module], None] | None = None,
    sampler: dict | None = None, ref_logp_all: torch.Tensor | None = None, kl_coef: float = 0.0,
    train_policy: bool = True,
) -> dict[str, float]:
    """GAE on the reward vector, then ``cfg.ppo_epochs`` passes of clipped PPO over mini-batches.

    Rewards may be whitened (``cfg.whiten_rewards``, trl's ``shift_mean=False``) before GAE and the
    advantages are whitened once per batch when ``cfg.whiten_advantages`` (trl's behaviour); a reward equal on
    every real token of the batch gives advantages of exactly 0 instead (the critic still trains).
    ``before_optimizer_step(model)`` is called after the backward passes and before each optimizer step
    (e.g. to record gradients). Returns the mean stats of all mini-batches plus advantage/return means and
    the share of the returns' variance the old values explain.

    Repairs (issue 18), all off by default: ``sampler`` ({"keep": the rollout's [B, T, V] support, and
    ``ppo.sampler_settings``}): the new log-probs are those of the sampling distribution restricted to the
    old support, as ``old_logprobs`` are, so the ratio of Eq. 14 compares one distribution. ``kl_coef`` with
    ``ref_logp_all`` [B, T, V]: adds kl_coef x the exact per-token KL(pi_theta || rho) at the visited states
    to the loss, a term whose gradient pulls pi back toward rho (as GRPO's; a KL in the reward is a
    constant to the policy gradient at a state). ``train_policy=False``: a critic-only step (the value loss
    alone; the policy's parameters are not stepped).
    """
    model = policy if value_head is None else P.ActorCritic(policy, value_head)
    core = getattr(model, "module", model)  # under DDP the ActorCritic is wrapped
    value_params = {id(p) for p in core.value_head.parameters()}
    mask = response_mask.to(old_logprobs.dtype)
    old_values = old_values * mask
    # trl keeps the whitened rewards on padding, where they reach GAE; ours zeroes them (the paper is silent)
    trl_padding = cfg.whiten_rewards and cfg.whiten_rewards_padding == "trl"
    if cfg.whiten_rewards:
        rewards = whiten_rewards(rewards, mask, keep_padding=trl_padding)
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam, mask_rewards=not trl_padding)  # Eq. 9-10
    real = rewards[mask.bool()]
    if real.numel() and bool((real == real[0]).all()):
        # A reward equal on every token of every response (the zero-reward twin with the KL in the loss) makes
        # every action as good as any other: the advantage is exactly 0. GAE would return only the critic's
        # errors, and whitening would scale them to unit variance: a policy gradient of pure noise.
        advantages = torch.zeros_like(advantages)
    elif cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask) * mask
    B, mb, accum = query_ids.shape[0], cfg.mini_batch_size, cfg.grad_accum
    if B % (mb * accum):
        raise ValueError(f"batch {B} is not a multiple of mini_batch_size*grad_accum = {mb}*{accum}")
    params = [p for p in model.parameters() if p.requires_grad]
    query_len, response_len = query_mask.sum(1), response_mask.sum(1)
    micro = cfg.micro_batch_size or mb
    all_stats: list[dict[str, torch.Tensor]] = []
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B).to(query_ids.device)
        for start in range(0, B, mb * accum):
            optimizer.zero_grad(set_to_none=True)
            for m in range(accum):
                idx = perm[start + m * mb : start + (m + 1) * mb]
                # The mini-batch's loss is a mean over its real tokens. Computed on length-sorted micro-batches
                # cut to their longest query and response, each weighted by its share of the tokens, the sum
                # is the same loss and gradient without the padding's arithmetic (equal to float rounding).
                n_tokens = mask[idx].sum()
                idx = idx[torch.argsort(query_len[idx], stable=True)]
                mb_stats: dict[str, torch.Tensor] = {}
                for part in idx.split(micro):
                    q, r = int(query_len[part].max()), int(response_len[part].max())
                    logprobs, values, entropy, logp_all = model(query_ids[part, :q], query_mask[part, :q],
                                                                response_ids[part, :r], response_mask[part, :r],
                                                                full=True)
                    if sampler is not None:  # log q_theta(y_t) on the old support (see the docstring)
                        settings = {k: v for k, v in sampler.items() if k != "keep"}
                        logq = sampling_log_probs(logp_all, keep=sampler["keep"][part, :r], **settings)
                        logprobs = logq.gather(-1, response_ids[part, :r].unsqueeze(-1)).squeeze(-1)
                        logprobs = logprobs.masked_fill(mask[part, :r] == 0, 0.0)
                    loss, stats = ppo_loss(  # Eq. 13-15
                        logprobs, old_logprobs[part, :r], values, old_values[part, :r], advantages[part, :r],
                        returns[part, :r], mask[part, :r], clip=cfg.clip, alpha=cfg.alpha,
                        value_clip=cfg.value_clip, entropy=entropy, policy_coef=1.0 if train_policy else 0.0,
                    )
                    stats["kl_loss"] = torch.zeros((), device=loss.device)
                    if kl_coef and ref_logp_all is not None:  # exact KL(pi || rho) per visited state, in the loss
                        kl_t = (logp_all.exp() * (logp_all - ref_logp_all[part, :r])).sum(-1)
                        kl_loss = masked_mean(kl_t, mask[part, :r])
                        loss = loss + kl_coef * kl_loss
                        stats["kl_loss"] = kl_loss.detach()
                    share = mask[part, :r].sum() / n_tokens
                    if accelerator is not None:
                        accelerator.backward(loss * share / accum)
                    else:
                        (loss * share / accum).backward()
                    for k, v in stats.items():
                        mb_stats[k] = mb_stats.get(k, 0.0) + v * share
                all_stats.append(mb_stats)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            # one host sync per optimizer step: a non-finite loss makes the gradient norm non-finite too
            if not torch.isfinite(grad_norm):
                check_finite("PPO loss", torch.stack([s["loss"] for s in all_stats]))
                check_finite("gradient norm", grad_norm)
            if not train_policy:  # critic warm-up: only the value head steps
                for p in params:
                    if id(p) not in value_params:
                        p.grad = None
            if before_optimizer_step is not None:
                before_optimizer_step(model)
            optimizer.step()
    means = torch.stack([torch.stack([s[k] for s in all_stats]).double().mean() for k in all_stats[0]])
    # how much of the returns' spread the old values explain: 1 is a perfect critic, 0 a constant one
    spread = masked_var(returns, mask, unbiased=False)
    explained = 1 - masked_var(returns - old_values, mask, unbiased=False) / spread if spread > 0 else spread * math.nan
    extra = torch.stack([masked_mean(x, mask) for x in (advantages, returns, old_values)] + [explained])
    out = dict(zip(list(all_stats[0]) + ["advantages_mean", "returns_mean", "values_mean", "explained_var"],
                   torch.cat([means, extra.double()]).tolist()))
    return out
