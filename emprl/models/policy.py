"""The policy pi_theta: everything that depends on the generator being an encoder-decoder T5.

PPO's rollout and update, sampling for evaluation, and perplexity reach the model only through
these functions, so a decoder-only policy would be a second implementation of them, not edits
across modules:

- ``encode`` / ``collate`` / ``encode_contexts``: token ids with left truncation of the context
  (the latest turns survive), right-padded batches on the model's device.
- ``generation_kwargs``: the paper's decoding (top-k 20, top-p 1.0, temperature 0.9, <= 30 tokens).
- ``sample``: one generation pass returning the responses, their EOS mask and, from that same pass,
  the raw log pi(. | s_t) and the decoder states s_t (PPO's old log-probs and values need no
  second forward). ``sample_responses``: batched, seeded sampling of text (evaluation).
- ``sequence_log_softmax`` / ``sequence_logprobs``: teacher-forced log pi(. | y_<t, c), its value
  of the given tokens, V(s_t) and the entropy, in float32 whatever the autocast.
- ``ValueHead``, ``ActorCritic``: V on the decoder's final hidden state, sharing the network.
- ``make_reference`` / ``reference_logprobs``: the frozen reference rho (for a ``PrefixT5``, a frozen
  copy of the prefix on the one shared frozen T5).

Tensors are right-padded: response position t holds y_t, predicted from s_t = (y_<t, c); the mask
is 1 on real tokens up to and including EOS.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from emprl.data import length_sorted_batches


def is_prefix_model(model: nn.Module) -> bool:
    return hasattr(model, "t5") and hasattr(model, "prefix")


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- encoding


def encode(tokenizer, texts: list[str], max_len: int, side: str) -> list[list[int]]:
    """Token ids (with ``</s>``), truncated to ``max_len`` from the ``side`` ("left" for contexts)."""
    previous = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        return tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]
    finally:
        tokenizer.truncation_side = previous


def collate(sources: list[list[int]], targets: list[list[int]] | None, pad_id: int,
            device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` (-100 on padding), moved to ``device``."""
    width = max(len(s) for s in sources)
    input_ids = torch.full((len(sources), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sources):
        input_ids[i, : len(s)] = torch.tensor(s)
    batch = {"input_ids": input_ids, "attention_mask": (torch.arange(width)[None] < torch.tensor(
        [len(s) for s in sources])[:, None]).long()}
    if targets is not None:
        labels = torch.full((len(targets), max(len(t) for t in targets)), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            labels[i, : len(t)] = torch.tensor(t)
        batch["labels"] = labels
    device = torch.device(device)
    # pinned host memory lets the copy overlap with the GPU's work
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=pin) for k, v in batch.items()}


def encode_contexts(tokenizer, contexts: list[str], max_source_len: int,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
    """(query_ids, query_mask) of the contexts, left-truncated to ``max_source_len`` tokens, on ``device``."""
    batch = collate(encode(tokenizer, contexts, max_source_len, "left"), None, tokenizer.pad_token_id, device)
    return batch["input_ids"], batch["attention_mask"]


# --------------------------------------------------------------------------- sampling


def new_token_limits(cfg, min_tokens: int = 0) -> tuple[int, int]:
    """(min_new_tokens, max_new_tokens) of the sampler for the limits ``min_tokens`` and ``cfg.max_new_tokens``.

    With ``cfg.length_counts_start_token`` they are transformers' ``min_length``/``max_length`` of an
    encoder-decoder (the authors' 5 and 30), which count the decoder start token: one new token fewer.
    """
    shift = 1 if cfg.length_counts_start_token else 0
    return max(min_tokens - shift, 0), cfg.max_new_tokens - shift


def generation_kwargs(cfg, tokenizer, min_new_tokens: int | None = None) -> dict:
    """The paper's decoding (Sec. IV-B): top-k/top-p sampling with temperature, at most 30 tokens."""
    min_new, max_new = new_token_limits(cfg, min_new_tokens or 0)
    kw = dict(do_sample=True, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature,
              max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
              eos_token_id=tokenizer.eos_token_id)
    if min_new_tokens is not None:
        kw["min_new_tokens"] = min_new
    return kw


def response_mask_from_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row (all ones if there is none)."""
    is_eos = (response_ids == eos_token_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_eos).long()


@dataclass
class Sample:
    response_ids: torch.Tensor  # [B, T], pad after the first EOS
    response_mask: torch.Tensor  # [B, T]
    logp_all: torch.Tensor | None  # [B, T, V] float32 log pi(. | s_t) of the raw policy (before top-k etc.)
    hidden: torch.Tensor | None  # [B, T, d] the decoder's final hidden state s_t


STATIC_CACHE_ON_CUDA = False  # not yet measured with the prefix attention on a GPU: see gpu_ppo_t5base.py


def static_cache(device: torch.device, on: bool | None = None) -> dict:
    """Generation settings for a static key/value cache, which transformers compiles on CUDA (there the
    per-token launches dominate decoding); ``on=None``: ``STATIC_CACHE_ON_CUDA`` on CUDA, off elsewhere.
    Same samples and log-probs as the default cache (tests/test_ppo_fast_path.py)."""
    on = (device.type == "cuda" and STATIC_CACHE_ON_CUDA) if on is None else on
    return {"cache_implementation": "static"} if on else {}


@torch.no_grad()
def sample(policy: nn.Module, query_ids, query_mask, generation: dict, scores: bool = False,
           static: bool | None = None) -> Sample:
    """One generation pass. ``scores``: also keep the raw logits and final decoder states of every step,
    which equal a teacher-forced forward over the sampled tokens (same weights, cached attention).
    ``static``: a static key/value cache (see ``static_cache``)."""
    config = policy.config  # a PrefixT5's is its T5's
    out = policy.generate(input_ids=query_ids, attention_mask=query_mask,
                          decoder_start_token_id=config.decoder_start_token_id,
                          return_dict_in_generate=True, output_logits=scores, output_hidden_states=scores,
                          **static_cache(query_ids.device, static), **generation)
    response_ids = out.sequences[:, 1:]  # drop the decoder start token; y_t was sampled from out.logits[t]
    mask = response_mask_from_eos(response_ids, config.eos_token_id)
    response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, config.pad_token_id))
    if not scores:
        return Sample(response_ids.contiguous(), mask, None, None)
    if len(out.logits) != response_ids.shape[1]:
        raise RuntimeError(f"generate returned {len(out.logits)} logit steps for {response_ids.shape[1]} "
                           "tokens")
    logp_all = F.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
    hidden = torch.cat([step[-1] for step in out.decoder_hidden_states], dim=1)
    return Sample(response_ids.contiguous(), mask, logp_all, hidden)


@torch.no_grad()
def sample_responses(model, tokenizer, contexts: list[str], cfg, seed: int = 0, batch_size: int = 32,
                     progress: bool = True, n: int = 1) -> list[str]:
    """Sample ``n`` responses per context on the model's device; length-sorted batches, input order kept.

    Returns n blocks of len(contexts) responses (sample j of context i at j * len(contexts) + i). The n samples
    of a context share one encoder pass (``num_return_sequences``): with long contexts the encoder is most of
    a batch's arithmetic. Batch ``b`` (of ``batch_size`` contexts) is sampled under seed ``seed + b``, so a run
    is reproducible for a given batch size and n.
    """
    from emprl.progress import bar

    was_training = model.training
    model.eval()
    device = device_of(model)
    sources = encode(tokenizer, contexts, cfg.max_source_len, "left")
    N = len(contexts)
    out: list[str] = [""] * (N * n)
    kwargs = {**generation_kwargs(cfg, tokenizer), **static_cache(device)}
    if n > 1:
        kwargs["num_return_sequences"] = n
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for b, idx in enumerate(bar(length_sorted_batches([len(s) for s in sources], batch_size),
                                    desc="sampling", disable=not progress, leave=False)):
            torch.manual_seed(seed + b)
            batch = collate([sources[i] for i in idx], None, tokenizer.pad_token_id, device)
            tokens = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    **kwargs)
            texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)  # context-major: i's n samples
            for k, text in enumerate(texts):
                out[(k % n) * N + idx[k // n]] = text.strip()
    model.train(was_training)
    return out


# --------------------------------------------------------------------------- log-probs, value, reference


def sequence_log_softmax(model, query_ids, query_mask, response_ids, response_mask, prefix=None,
                         value_head=None, detach_value: bool = False):
    """The full log pi(. | y_<t, c) [B, T, V] (float32) at every response position, and V(s_t) if
    ``value_head`` (``detach_value``: on the detached state, so the value loss does not train the policy)."""
    config = model.config
    start = torch.full_like(response_ids[:, :1], config.decoder_start_token_id)
    decoder_input_ids = torch.cat([start, response_ids[:, :-1]], dim=1)  # s_t = (y_<t, c)
    decoder_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
    kwargs = {"prefix": prefix} if prefix is not None else {}
    out = model(
        input_ids=query_ids, attention_mask=query_mask, decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_mask, output_hidden_states=value_head is not None, **kwargs,
    )
    logp_all = F.log_softmax(out.logits.float(), dim=-1)  # float32 under a bf16 autocast too
    values = None
    if value_head is not None:
        hidden = out.decoder_hidden_states[-1]
        values = value_head(hidden.detach() if detach_value else hidden)
    return logp_all, values


def token_logprobs(logp_all: torch.Tensor, response_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_t | s_t) [B, T], entropy H(pi(. | s_t)) [B, T]) from the full log-probs [B, T, V]."""
    logprobs = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # logged, never differentiated: no graph for a [B, T, V] product
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def sequence_logprobs(model, query_ids, query_mask, response_ids, response_mask, prefix=None, value_head=None):
    """log pi(y_t | y_<t, c) of the given tokens, V(s_t) if ``value_head``, and the entropy [B, T]."""
    logp_all, values = sequence_log_softmax(model, query_ids, query_mask, response_ids, response_mask, prefix,
                                            value_head)
    logprobs, entropy = token_logprobs(logp_all, response_ids)
    return logprobs, values, entropy


class ValueHead(nn.Module):
    """V(s_t): a linear layer on the decoder's final hidden state at position t (float32 out)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()


class ActorCritic(nn.Module):
    """The policy pi_theta and the value head V sharing one network (one module, so DDP can wrap it).

    ``detach_value``: V reads the decoder state without passing its gradient back, so the value loss trains
    the value head only (by default it also trains the shared network: the prefix, for a PrefixT5)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead, detach_value: bool = False) -> None:
        super().__init__()
        self.policy, self.value_head, self.detach_value = policy, value_head, detach_value

    def forward(self, query_ids, query_mask, response_ids, response_mask, full: bool = False):
        """(log pi(y_t | s_t), V(s_t), entropy), and the full log pi(. | s_t) [B, T, V] last if ``full``."""
        logp_all, values = sequence_log_softmax(self.policy, query_ids, query_mask, response_ids, response_mask,
                                                value_head=self.value_head, detach_value=self.detach_value)
        logprobs, entropy = token_logprobs(logp_all, response_ids)
        return (logprobs, values, entropy, logp_all) if full else (logprobs, values, entropy)


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
    if is_prefix_model(policy) and not hasattr(reference, "generate"):
        logp_all = sequence_log_softmax(policy, query_ids, query_mask, response_ids, response_mask,
                                        prefix=reference)[0]
    else:
        logp_all = sequence_log_softmax(reference, query_ids, query_mask, response_ids, response_mask)[0]
    if full:
        return logp_all
    return logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # no entropy: nobody reads rho's
