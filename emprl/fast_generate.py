"""A faster PPO rollout: the old log-probs, values and entropy come from ``generate`` itself.

``emprl.ppo.rollout`` samples the responses and then runs the policy once more over them (a full
encoder + decoder forward) for log pi(y_t|s_t), V(s_t) and the entropy. Everything that forward
computes is already computed while sampling: ``generate`` can return the raw (unprocessed) logits
of every step and the decoder's final hidden states. ``fast_rollout`` takes them from there and
saves that forward (about 7% of a whole PPO step of the tiny T5 on CPU; see benchmarks/ppo_step.py).

Same ``Rollout`` as ``ppo.rollout``, equal up to float rounding: cached incremental decoding and a
full forward sum in a different order (differences ~1e-6), so the first PPO pass has a ratio
1 +- 1e-6 instead of exactly 1. The log-probs are of the policy's raw distribution (not of the
temperature/top-k sampling distribution), as in ``ppo.rollout``. Dropout must be off (eval mode).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from emprl import ppo


@torch.no_grad()
def fast_rollout(model: "ppo.ActorCritic", reference, tokenizer, contexts: Sequence[str], gen_cfg, cfg,
                 device=None) -> "ppo.Rollout":
    """Drop-in for ``ppo.rollout`` (same arguments and result) without the extra policy forward."""
    device = device or next(model.parameters()).device
    policy, t5 = model.policy, ppo._t5(model.policy)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # keep the end of the context, like format_context
    try:
        enc = tokenizer(list(contexts), max_length=gen_cfg.max_source_len, truncation=True, padding=True,
                        return_tensors="pt")
    finally:
        tokenizer.truncation_side = side
    query_ids, query_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    pad_id, eos_id = t5.config.pad_token_id, t5.config.eos_token_id
    out = policy.generate(
        input_ids=query_ids, attention_mask=query_mask, do_sample=True, top_k=gen_cfg.top_k, top_p=gen_cfg.top_p,
        temperature=gen_cfg.temperature, max_new_tokens=gen_cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
        pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=t5.config.decoder_start_token_id,
        return_dict_in_generate=True, output_logits=True, output_hidden_states=True,
    )
    response_ids = out.sequences[:, 1:]  # drop the decoder start token; y_t was sampled from out.logits[t]
    if len(out.logits) != response_ids.shape[1]:
        raise RuntimeError(f"generate returned {len(out.logits)} logit steps for {response_ids.shape[1]} tokens")
    response_mask = ppo.response_mask_from_eos(response_ids, eos_id)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_id)).contiguous()
    logp_all = F.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)  # [B, T, V], raw logits
    logprobs = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    hidden = torch.cat([step[-1] for step in out.decoder_hidden_states], dim=1)  # final decoder states s_t
    values = model.value_head(hidden)
    ref_logprobs = ppo.reference_logprobs(policy, reference, query_ids, query_mask, response_ids, response_mask)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return ppo.Rollout(query_ids, query_mask, response_ids, response_mask, logprobs, ref_logprobs, values, entropy,
                       texts)
