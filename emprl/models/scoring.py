"""Fast batched scoring with the three empathy identifiers, and cached gold labels (Eq. 4-5, Emp-F1).

What is shared across the three mechanisms and what is not: each mechanism has its own fine-tuned
context and response encoders, so no hidden state can be shared between mechanisms. Shared are the
tokenization (once per call) and the length sorting. Speed comes from padding little: contexts and
responses go through their encoders separately (the two encoders never see each other's padding), the
responses in length-sorted batches, each context alone and unpadded (so that its state does not depend on
the batch it came in: see ``_context_states``), and only the cheap head (attention, pooling, linear) runs
on re-padded pairs. A context that occurs several times in one call (e.g. with the human and a generated response,
or several sampled responses) is tokenized and encoded once per mechanism.

Across calls, a bounded ``ContextCache`` keeps each mechanism's context-encoder states: the gold-label
pass encodes every context a PPO run or an evaluation will visit, so their later scoring encodes only
the responses (the context side was 60% of the scoring time of an offline PPO step)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from emprl import checkpoint as ckpt
from emprl.models import identifiers as ident
from emprl.data import MECHANISMS, format_context, length_sorted_batches
from emprl.models.identifiers import EmpathyIdentifier, pad, tokenize


def mechanisms() -> tuple[str, ...]:
    return tuple(MECHANISMS)


def state_fingerprint(models: dict[str, torch.nn.Module], extra: dict | None = None) -> str:
    """sha256 over every parameter/buffer (name, dtype, shape, bytes) of the models plus ``extra``."""
    digest = hashlib.sha256(json.dumps(extra or {}, sort_keys=True).encode())
    for name in sorted(models):
        for key, tensor in sorted(models[name].state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}/{key}/{t.dtype}/{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


DTYPES = ("float32", "bfloat16", "int8")


def _int8_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with dynamically quantized int8 linear layers (weights int8, activations quantized per call)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not yet removed
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


# The cache's default bound. Context states are [tokens, d] float32 per mechanism, so one context costs
# 3 x tokens x d x 4 bytes: offline (MiniLM, d 384, <= 64 tokens) at most 295 kB, and 4 GiB hold >= 14,500
# contexts (a 1,600-step PPO run of batch 8 visits 12,800); paper scale (t5-base encoders, d 768, <= 256
# tokens) 2.4 MB, so 4 GiB hold about 1,800: enough for evaluation with m samples per context, not for
# every context of a long PPO run (its 40k training contexts would take about 94 GB; misses are encoded).
CONTEXT_CACHE_BYTES = 4 << 30


class ContextCache:
    """Context-encoder states by (mechanism, context text), least recently used first out, at most
    ``max_bytes`` of tensors. It belongs to one scorer, whose weights never change, so the text and the
    mechanism identify a state; ``EmpathyScorer.fingerprint`` names the checkpoint it was filled from."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"ContextCache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes, self.bytes, self.hits, self.misses = int(max_bytes), 0, 0, 0
        self._states: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: tuple[str, str]) -> torch.Tensor | None:
        state = self._states.get(key)
        if state is None:
            self.misses += 1
            return None
        self._states.move_to_end(key)
        self.hits += 1
        return state

    def put(self, key: tuple[str, str], state: torch.Tensor) -> None:
        size = state.numel() * state.element_size()
        if size > self.max_bytes or key in self._states:
            return
        # a clone: a slice of the batch it was encoded in would keep the whole batch alive
        self._states[key] = state.clone()
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._states.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class EmpathyScorer:
    """The three identifiers behind one call: ``logits(contexts, responses) -> [N, 3 mechanisms, 3 levels]``."""

    def __init__(self, identifiers: dict[str, EmpathyIdentifier], tokenizer, max_context_len: int,
                 max_response_len: int, batch_size: int = 32, device: str | torch.device = "cpu",
                 mechanism_order: Sequence[str] | None = None, dtype: str = "float32",
                 context_cache_bytes: int = CONTEXT_CACHE_BYTES):
        """``dtype="bfloat16"`` scores with bf16 copies of the weights: about 3x faster on CPUs with native
        bf16 (``run.native_bf16``), 5-7x slower on those without; ``"int8"``: dynamically quantized copies of the
        linear layers (CPU). Both move logits a little from float32 (the default, used for gold labels and
        Emp-F1), so a level can change: measure the share before using them (benchmarks/cpu_offline_step.py).
        ``context_cache_bytes``: the bound of the context-state cache (0: no cache, every call encodes)."""
        self.mechanisms = tuple(mechanism_order or mechanisms())
        missing = [m for m in self.mechanisms if m not in identifiers]
        if missing:
            raise ValueError(f"EmpathyScorer: no identifier for mechanism(s) {missing}")
        if dtype not in DTYPES:
            raise ValueError(f"EmpathyScorer: dtype must be one of {DTYPES}, got {dtype!r}")
        if dtype == "int8" and torch.device(device).type != "cpu":
            raise ValueError(f"EmpathyScorer: dtype 'int8' (dynamic quantization) runs on the CPU, not {device}")
        self.dtype = dtype
        if dtype == "float32":
            self.identifiers = {m: identifiers[m].to(device).eval() for m in self.mechanisms}
        elif dtype == "bfloat16":  # copies: the caller's float32 models stay untouched
            self.identifiers = {m: copy.deepcopy(identifiers[m]).to(device, torch.bfloat16).eval()
                                for m in self.mechanisms}
        else:
            self.identifiers = {m: _int8_copy(identifiers[m]) for m in self.mechanisms}
        # int8 weights are a deterministic function of the float ones, which the fingerprint hashes instead
        self._hashed = {m: identifiers[m] for m in self.mechanisms} if dtype == "int8" else self.identifiers
        self.tokenizer = tokenizer
        self.max_context_len, self.max_response_len = int(max_context_len), int(max_response_len)
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.chunk = 2048  # pairs per internal pass
        self._fingerprint: str | None = None
        self.context_cache = ContextCache(context_cache_bytes) if context_cache_bytes > 0 else None

    @classmethod
    def load(cls, ckpt_root: str | Path, device: str | torch.device = "cpu", batch_size: int = 32,
             dtype: str = "float32", context_cache_bytes: int = CONTEXT_CACHE_BYTES) -> "EmpathyScorer":
        """Load ``ckpt_root/<mechanism>/`` for the three mechanisms (safetensors + json, never unpickles)."""
        ckpt_root = Path(ckpt_root)
        models, tokenizer, lens = {}, None, set()
        for m in mechanisms():
            model, tok, config = ident.load_identifier(ckpt_root / m, device)
            models[m], tokenizer = model, tokenizer or tok
            lens.add((config["max_context_len"], config["max_response_len"], config["context_encoder"].get("vocab_size")))
        if len(lens) != 1:
            raise ValueError(f"{ckpt_root}: the three identifiers disagree on (max_context_len, max_response_len, "
                             f"vocab): {sorted(lens)}; retrain them with one IdentifierConfig")
        max_context_len, max_response_len, _ = lens.pop()
        return cls(models, tokenizer, max_context_len, max_response_len, batch_size, device, dtype=dtype,
                   context_cache_bytes=context_cache_bytes)

    def with_dtype(self, dtype: str) -> "EmpathyScorer":
        """This scorer if it already scores in ``dtype``, else one with copies of its float32 weights in
        ``dtype`` (and a context cache of its own); e.g. PPO's reward scorer, ``run.reward_dtype``."""
        if dtype == self.dtype:
            return self
        if self.dtype != "float32":
            raise ValueError(f"EmpathyScorer.with_dtype: start from the float32 scorer, not a {self.dtype} one")
        cache = self.context_cache.max_bytes if self.context_cache is not None else 0
        return EmpathyScorer(self.identifiers, self.tokenizer, self.max_context_len, self.max_response_len,
                             self.batch_size, self.device, self.mechanisms, dtype=dtype, context_cache_bytes=cache)

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and the scoring settings (used to detect stale cached gold labels)."""
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(
                self._hashed, {"max_context_len": self.max_context_len, "max_response_len": self.max_response_len,
                                   "dtype": self.dtype,
                                   "pooling": {m: v.pooling for m, v in self._hashed.items()}})
        return self._fingerprint

    @torch.inference_mode()
    def logits(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Logits [N, 3, 3] in input order; contexts are ``format_context`` strings (or seeker posts)."""
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        n = len(contexts)
        out = torch.empty(n, len(self.mechanisms), ident.NUM_LEVELS)
        for s in range(0, n, self.chunk):  # bounds the memory of the kept encoder states
            out[s: s + self.chunk] = self._logits(contexts[s: s + self.chunk], responses[s: s + self.chunk])
        return out

    def _logits(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(contexts))  # a repeated context is tokenized and encoded once
        slot = {c: i for i, c in enumerate(unique)}
        c_of = [slot[c] for c in contexts]
        c_ids = tokenize(self.tokenizer, unique, self.max_context_len, "left")  # once for the three mechanisms
        r_ids = tokenize(self.tokenizer, responses, self.max_response_len, "right")
        pairs = length_sorted_batches([len(c_ids[c]) + len(r) for c, r in zip(c_of, r_ids)], self.batch_size)
        out = torch.empty(len(responses), len(self.mechanisms), ident.NUM_LEVELS, device=self.device)
        for k, m in enumerate(self.mechanisms):
            model = self.identifiers[m]
            # contexts (each alone) and responses (length-sorted batches) go through their encoders apart
            C = self._context_states(m, model, unique, c_ids)
            R = self._encode(model.encode_response, r_ids)
            for batch in pairs:  # the cheap part (attention, pooling, linear) on re-padded states
                Cb, cm = _pad_states([C[c_of[i]] for i in batch])
                Rb, rm = _pad_states([R[i] for i in batch])
                rows = torch.as_tensor(batch, device=self.device)
                out[rows, k] = model.head(Cb, cm, Rb, rm).float()
        return out.cpu()  # one copy to the host per call

    def _context_states(self, mechanism: str, model, texts: list[str], ids: list[list[int]]) -> list[torch.Tensor]:
        """Context-encoder states of ``texts``: cached ones reused, the others encoded and cached.

        Each context is encoded alone, unpadded. Batched, a state would depend on its batch (padding and
        batch shape change the float rounding), so a cached state would differ in the last bits from one
        recomputed in another batch, and a PPO reward would depend on which contexts were scored before:
        a resumed run, starting with a cold cache, would drift from an uninterrupted one. Alone, a state is
        a function of the text and the weights only, the same whether cached, recomputed, warm or cold."""
        cache = self.context_cache
        if cache is None:
            return self._encode(model.encode_context, ids, batch_size=1)
        states = [cache.get((mechanism, t)) for t in texts]
        missing = [i for i, s in enumerate(states) if s is None]
        if missing:
            encoded = self._encode(model.encode_context, [ids[i] for i in missing], batch_size=1)
            for i, state in zip(missing, encoded):
                states[i] = state
                cache.put((mechanism, texts[i]), state)
        return states

    def _encode(self, encode, seqs: list[list[int]], batch_size: int | None = None) -> list[torch.Tensor]:
        """Encoder states [len_i, d] of each sequence (padding stripped), computed in length-sorted batches
        of ``batch_size`` (the scorer's if None)."""
        states: list[torch.Tensor | None] = [None] * len(seqs)
        for batch in length_sorted_batches([len(s) for s in seqs], batch_size or self.batch_size):
            ids, mask = pad([seqs[i] for i in batch], self.tokenizer.pad_token_id, self.device)
            hidden = encode(ids, mask)
            for j, i in enumerate(batch):
                states[i] = hidden[j, : len(seqs[i])]
        return states

    def levels(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Predicted levels [N, 3] (0 none, 1 weak, 2 strong)."""
        return self.logits(contexts, responses).argmax(dim=-1)


def _pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [len_i, d] states to [B, max_len, d] with zeros, and the matching 0/1 mask (on their device)."""
    device = states[0].device
    lengths = torch.tensor([len(x) for x in states], device=device)
    padded = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
    return padded, (torch.arange(padded.size(1), device=device)[None, :] < lengths[:, None]).long()


def data_fingerprint(contexts: Sequence[str], responses: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for c, r in zip(contexts, responses):
        digest.update(json.dumps([c, r]).encode())
    return digest.hexdigest()


def gold_labels(scorer: EmpathyScorer, examples, cache_dir: str | Path,
                contexts: Sequence[str] | None = None, progress: bool = True) -> torch.LongTensor:
    """Levels [N, 3] of the human responses (Eq. 5), computed once and cached in ``cache_dir``.

    The cache file (``checkpoint.save_cached``) is named after the data (contexts + responses) and keyed
    by the data and the scorer's weights; a cache written by other weights is stale and is recomputed
    and replaced. ``contexts`` defaults to ``format_context(example.context)`` for each example.
    """
    if contexts is None:
        contexts = [format_context(ex.context) for ex in examples]
    responses = [ex.response for ex in examples]
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts for {len(responses)} examples")
    data_fp = data_fingerprint(contexts, responses)
    path = Path(cache_dir) / f"gold_labels_{data_fp[:16]}.json"
    key = {"weights_fingerprint": scorer.fingerprint, "data_fingerprint": data_fp,
           "mechanisms": list(scorer.mechanisms)}
    cached = ckpt.load_cached(path, key)
    if cached is not None:
        return torch.tensor(cached["levels"], dtype=torch.long).reshape(len(responses), len(scorer.mechanisms))
    if path.is_file() and progress:
        print(f"gold labels in {path.name} are stale (other identifier weights or data): recomputing", flush=True)
    levels = _levels_with_progress(scorer, contexts, responses, progress)
    ckpt.save_cached(path, key, {"levels": levels.tolist()})
    return levels


def _levels_with_progress(scorer: EmpathyScorer, contexts, responses, progress: bool, chunk: int = 1024):
    from emprl.progress import bar

    parts = [scorer.levels(contexts[i: i + chunk], responses[i: i + chunk])
             for i in bar(range(0, len(responses), chunk), desc="gold labels", disable=not progress)]
    return torch.cat(parts) if parts else torch.zeros(0, len(scorer.mechanisms), dtype=torch.long)
