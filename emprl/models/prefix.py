"""Prefix-tuning for T5 (Li & Liang 2021) that works in training *and* in ``generate``.

The paper prefix-tunes T5 with prefix length 40 on the context side and 10 on the response side
(Sec. IV-B). peft 0.21 cannot be used: its T5 prefix is dropped by ``generate`` (NOTES section 2).

What a prefix is here. For every layer, trainable keys and values are prepended to the keys and
values of three attentions:

- ``"encoder"``: encoder self-attention, length ``encoder_len`` (40, the context side);
- ``"decoder"``: decoder self-attention, length ``decoder_len`` (10, the response side);
- ``"cross"``: decoder cross-attention, length ``decoder_len`` (10).

While training they are reparameterized, ``P = MLP(P')`` with a small embedding ``P'`` and a
two-layer tanh MLP, one per group, as Li & Liang do; ``fold()`` evaluates the MLP once and keeps
plain tensors for inference (same outputs, no MLP).

How it is spliced into T5 (transformers 5.24). T5's attention layers call the function that
``AttentionInterface`` registers under ``config._attn_implementation``, with the keys and values
*after* the KV cache was updated and with the relative position bias and mask of the real keys.
We register ``"emprl_prefix"``: it prepends the prefix keys/values of the module's slot (if a
prefix is installed on it), pads the position bias and the mask with zero columns for the prefix
positions and runs T5's eager attention. Hence:

- prefix keys get **zero relative position bias** (they have no position) and are **never
  masked** (every query, including causal decoder queries and padded batches, sees the whole
  prefix); the real keys keep exactly the bias and mask T5 computes for them;
- the KV cache holds only real tokens (the prefix is added after the cache update), so in
  ``generate`` the decoder prefix is present at every step and never duplicated;
- the T5 weights and state-dict keys are untouched: ``model.t5`` is a plain
  ``T5ForConditionalGeneration`` whose attention only differs while a prefix is installed.

Policy and reference sharing one frozen T5 (PPO)::

    ref_prefix = copy.deepcopy(model.prefix).requires_grad_(False)
    out = model(input_ids, attention_mask, decoder_input_ids=..., output_hidden_states=True)  # policy
    ref = model(input_ids, attention_mask, decoder_input_ids=..., prefix=ref_prefix)         # reference
    tokens = model.generate(input_ids, attention_mask, do_sample=True, top_k=20)
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AttentionInterface, T5ForConditionalGeneration
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.t5.modeling_t5 import T5Attention, eager_attention_forward
from transformers.modeling_outputs import Seq2SeqLMOutput

ATTN_IMPLEMENTATION = "emprl_prefix"
GROUPS = ("encoder", "decoder", "cross")


def _memoized(memo: dict | None, name: str, source: torch.Tensor, make):
    """``make()``, or what it returned for this very ``source`` tensor earlier in the same ``installed`` block.

    In ``generate`` the cross-attention keys and values are the same cached tensors at every decoding step,
    and one position bias and one mask serve every layer of a step, so the prefix is attached to them once
    instead of at every layer and step. The memo holds ``source`` itself, so an identity match cannot be a
    new tensor at a reused address. Without grad only: under autograd every forward builds new tensors."""
    if memo is None or torch.is_grad_enabled():
        return make()
    hit = memo.get(name)
    if hit is not None and hit[0] is source:
        return hit[1]
    out = make()
    memo[name] = (source, out)
    return out


def prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None, **kwargs):
    """T5 eager attention with the installed prefix keys/values prepended (see module docstring)."""
    kv = getattr(module, "emprl_prefix_kv", None)
    if kv is not None:
        prefix_k, prefix_v = kv  # [heads, L, d_kv]
        batch, length = query.shape[0], prefix_k.shape[1]
        memo = getattr(module, "emprl_prefix_memo", None)
        shared = getattr(module, "emprl_shared_memo", None)  # bias and mask: one for all layers of a group
        key = _memoized(memo, "key", key, lambda: torch.cat(
            [prefix_k.unsqueeze(0).expand(batch, -1, -1, -1).to(key.dtype), key], dim=2))
        value = _memoized(memo, "value", value, lambda: torch.cat(
            [prefix_v.unsqueeze(0).expand(batch, -1, -1, -1).to(value.dtype), value], dim=2))
        if position_bias is not None:  # zero bias on prefix keys
            position_bias = _memoized(shared, f"bias{length}", position_bias, lambda: nn.functional.pad(
                position_bias, (length, 0), value=0.0))
        if attention_mask is not None:  # prefix keys are never masked
            keep = True if attention_mask.dtype == torch.bool else 0.0
            attention_mask = _memoized(shared, f"mask{length}", attention_mask, lambda: nn.functional.pad(
                attention_mask, (length, 0), value=keep))
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                   position_bias=position_bias, **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, prefix_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


class Prefix(nn.Module):
    """Prefix keys/values for all layers; ``forward()`` -> {group: [layers, 2 (k, v), heads, L, d_kv]}."""

    def __init__(self, num_layers: int, num_decoder_layers: int, num_heads: int, d_kv: int, d_model: int,
                 encoder_len: int, decoder_len: int, hidden: int):
        super().__init__()
        self.shape = dict(num_layers=num_layers, num_decoder_layers=num_decoder_layers, num_heads=num_heads,
                          d_kv=d_kv, d_model=d_model, encoder_len=encoder_len, decoder_len=decoder_len, hidden=hidden)
        self.layers = {"encoder": num_layers, "decoder": num_decoder_layers, "cross": num_decoder_layers}
        self.lengths = {"encoder": encoder_len, "decoder": decoder_len, "cross": decoder_len}
        self.num_heads, self.d_kv = num_heads, d_kv
        # P'_theta (Li & Liang: an embedding of the prefix positions) and the MLP reparameterization
        self.embedding = nn.ParameterDict(
            {g: nn.Parameter(torch.randn(self.lengths[g], d_model)) for g in GROUPS})
        self.mlp = nn.ModuleDict({g: nn.Sequential(
            nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, self.layers[g] * 2 * num_heads * d_kv))
            for g in GROUPS})
        self.folded = nn.ParameterDict()  # filled by fold()

    @classmethod
    def for_t5(cls, config, encoder_len: int, decoder_len: int, hidden: int) -> "Prefix":
        return cls(config.num_layers, config.num_decoder_layers, config.num_heads, config.d_kv, config.d_model,
                   encoder_len, decoder_len, hidden)

    @property
    def is_folded(self) -> bool:
        return len(self.folded) > 0

    def forward(self) -> dict[str, torch.Tensor]:
        if self.is_folded:
            return {g: self.folded[g] for g in GROUPS}
        out = {}
        for g in GROUPS:
            flat = self.mlp[g](self.embedding[g])  # P = MLP(P'), [L, layers * 2 * heads * d_kv]
            out[g] = flat.view(self.lengths[g], self.layers[g], 2, self.num_heads, self.d_kv).permute(1, 2, 3, 0, 4)
        return out

    @torch.no_grad()
    def fold(self) -> "Prefix":
        """Replace the MLP by the tensors it produces (inference form; still trainable). Idempotent."""
        if not self.is_folded:
            for g, kv in self.forward().items():
                self.folded[g] = nn.Parameter(kv.detach().clone().contiguous())
            self.embedding = nn.ParameterDict()
            self.mlp = nn.ModuleDict()
        return self

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / "prefix.safetensors"))
        (directory / "prefix_config.json").write_text(json.dumps({**self.shape, "folded": self.is_folded}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Prefix":
        directory = Path(directory)
        for name in ("prefix_config.json", "prefix.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing: not a saved prefix")
        shape = json.loads((directory / "prefix_config.json").read_text())
        folded = shape.pop("folded")
        prefix = cls(**shape)
        if folded:
            prefix.fold()
        prefix.load_state_dict(load_file(str(directory / "prefix.safetensors")))
        return prefix


class PrefixT5(nn.Module):
    """A frozen ``T5ForConditionalGeneration`` (``.t5``) plus a trainable :class:`Prefix` (``.prefix``).

    ``prefix=`` in ``forward``/``generate`` runs the same frozen T5 with another prefix module
    (e.g. PPO's frozen reference, ``copy.deepcopy(model.prefix)``).
    """

    def __init__(self, t5: T5ForConditionalGeneration, prefix: Prefix):
        super().__init__()
        t5.set_attn_implementation(ATTN_IMPLEMENTATION)
        # transformers 5.17 gives the encoder and decoder stacks config copies of their own, which that call
        # leaves as they were (5.24 shares one config); every attention reads its stack's copy
        for stack in (t5.encoder, t5.decoder):
            if stack.config._attn_implementation != ATTN_IMPLEMENTATION:
                stack.config._attn_implementation = ATTN_IMPLEMENTATION
        t5.requires_grad_(False)
        self.t5, self.prefix = t5, prefix
        # (group, layer, attention module) for every attention that takes a prefix
        self._slots: list[tuple[str, int, T5Attention]] = []
        for i, block in enumerate(t5.encoder.block):
            self._slots.append(("encoder", i, block.layer[0].SelfAttention))
        for i, block in enumerate(t5.decoder.block):
            self._slots.append(("decoder", i, block.layer[0].SelfAttention))
            self._slots.append(("cross", i, block.layer[1].EncDecAttention))
        for _, _, attn in self._slots:
            attn.emprl_prefix_kv = attn.emprl_prefix_memo = attn.emprl_shared_memo = None
            if attn.config._attn_implementation != ATTN_IMPLEMENTATION:
                raise RuntimeError("could not switch T5 attention to the prefix implementation")

    @property
    def config(self):
        return self.t5.config

    @contextlib.contextmanager
    def installed(self, prefix: Prefix | None = None, memo: bool = True):
        """Within the block, T5's attentions see the keys/values of ``prefix`` (default ``self.prefix``).

        ``memo``: attach the prefix to tensors that recur within the block once (``_memoized``); False
        attaches it at every call (the reference path of tests and benchmarks)."""
        kv = (self.prefix if prefix is None else prefix)()
        shared = {g: {} for g in GROUPS}  # per group: one position bias and one mask serve all its layers
        try:
            for group, layer, attn in self._slots:
                attn.emprl_prefix_kv = (kv[group][layer, 0], kv[group][layer, 1])
                # cross-attention keys and values recur at every decoding step; self-attention's grow
                attn.emprl_prefix_memo = {} if memo and group == "cross" else None
                attn.emprl_shared_memo = shared[group] if memo else None
            yield
        finally:
            for _, _, attn in self._slots:
                attn.emprl_prefix_kv = attn.emprl_prefix_memo = attn.emprl_shared_memo = None

    def forward(self, input_ids, attention_mask, decoder_input_ids=None, decoder_attention_mask=None, labels=None,
                output_hidden_states=False, prefix: Prefix | None = None) -> Seq2SeqLMOutput:
        with self.installed(prefix):
            return self.t5(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                           decoder_attention_mask=decoder_attention_mask,
                           labels=None if labels is None else labels.contiguous(),
                           output_hidden_states=output_hidden_states, return_dict=True)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, prefix: Prefix | None = None, memo: bool = True,
                 **generation_kwargs):
        with self.installed(prefix, memo):
            return self.t5.generate(input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
