"""Empathy identifiers (paper, section III-D, Fig. 3): model, training, evaluation, save/load.

One identifier per communication mechanism scores a (context, response) pair as none/weak/strong:

    C = Enc_ctx(context)                       two independent pretrained encoders
    R = Enc_rsp(response)
    H = R + Attention(Q=R, K=C, V=C)           single head, context padding masked, residual
    z = max-pool of H over real response positions   (option: mean, as the authors' code)
    logits = Linear(z)                         3 levels

Differences from the authors' released code (kept as the paper says): max pooling by default
(theirs: mean), a single linear layer (theirs: Linear-Tanh-Linear), contexts truncated from the
left so the latest turns survive (theirs: from the right).
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emprl import checkpoint as ckpt
from emprl.models import encoders
from emprl.data import length_sorted_batches
from emprl.paper_tables import TABLE_I
from emprl.profiles import IdentifierConfig

NUM_LEVELS = 3

# --------------------------------------------------------------------------- tokenization


def tokenize(tokenizer, texts: Sequence[str], max_len: int, side: str) -> list[list[int]]:
    """Token ids with special tokens, unpadded; over-long texts are cut on ``side`` ("left" keeps the end)."""
    if side not in ("left", "right"):
        raise ValueError(f"truncation side must be 'left' or 'right', got {side!r}")
    old = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        ids = tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]
    finally:
        tokenizer.truncation_side = old
    fallback = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return [seq if seq else [fallback] for seq in ids]  # a tokenizer without special tokens: keep one position


def pad(seqs: Sequence[Sequence[int]], pad_id: int,
        device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask) as LongTensors on ``device``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    device = torch.device(device)
    if device.type == "cuda":  # pinned memory: the copy overlaps with the GPU's work
        return ids.pin_memory().to(device, non_blocking=True), mask.pin_memory().to(device, non_blocking=True)
    return ids.to(device), mask.to(device)


# --------------------------------------------------------------------------- model


class SingleHeadAttention(nn.Module):
    """Scaled dot-product attention with one head; keys at padded context positions are masked out."""

    def __init__(self, d: int, dropout: float = 0.1):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, query, key_value, key_mask):
        scores = self.q(query) @ self.k(key_value).transpose(1, 2) / math.sqrt(query.size(-1))  # [B, Lr, Lc]
        scores = scores.masked_fill(key_mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        weights = self.dropout(scores.softmax(dim=-1))
        return self.out(weights @ self.v(key_value))


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Max or mean over the real (mask == 1) positions of ``states`` [B, L, d] -> [B, d]."""
    real = mask[:, :, None].bool()
    if mode == "max":
        return states.masked_fill(~real, torch.finfo(states.dtype).min).amax(dim=1)
    if mode == "mean":
        return (states * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    raise ValueError(f"IdentifierConfig.pooling must be 'max' or 'mean', got {mode!r}")


class EmpathyIdentifier(nn.Module):
    """Fig. 3: two encoders, response-to-context attention, residual, pooling, linear to 3 levels."""

    def __init__(self, context_encoder: nn.Module, response_encoder: nn.Module, pooling: str = "max",
                 dropout: float = 0.1, head: str = "linear"):
        super().__init__()
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1), pooling)  # validates the option early
        d = encoders.hidden_size(response_encoder)
        if encoders.hidden_size(context_encoder) != d:
            raise ValueError("context and response encoders must have the same hidden size")
        self.context_encoder = context_encoder
        self.response_encoder = response_encoder
        self.attention = SingleHeadAttention(d, dropout)
        self.dropout = nn.Dropout(dropout)
        if head == "linear":  # the paper
            self.classifier = nn.Linear(d, NUM_LEVELS)
        elif head == "mlp":  # the authors' code
            self.classifier = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Dropout(dropout), nn.Linear(d, NUM_LEVELS))
        else:
            raise ValueError(f"identifiers.head must be 'linear' or 'mlp', got {head!r}")
        self.pooling = pooling

    def encode_context(self, context_ids, context_mask):
        return self.context_encoder(input_ids=context_ids, attention_mask=context_mask).last_hidden_state

    def encode_response(self, response_ids, response_mask):
        return self.response_encoder(input_ids=response_ids, attention_mask=response_mask).last_hidden_state

    def head(self, C, context_mask, R, response_mask):
        """Logits [B, 3] from encoder states C [B, Lc, d] and R [B, Lr, d] (lets a caller encode separately)."""
        H = R + self.dropout(self.attention(R, C, context_mask))  # response attends to context, residual
        return self.classifier(self.dropout(pool(H, response_mask, self.pooling)))

    def forward(self, context_ids, context_mask, response_ids, response_mask):
        return self.head(self.encode_context(context_ids, context_mask), context_mask,
                         self.encode_response(response_ids, response_mask), response_mask)


def build_identifier(cfg: IdentifierConfig, seed: int) -> tuple[EmpathyIdentifier, object]:
    """A fresh identifier with two separately loaded copies of the pretrained encoder, and its tokenizer."""
    torch.manual_seed(seed)  # the attention and classifier initialisation
    model = EmpathyIdentifier(encoders.load_encoder(cfg.encoder), encoders.load_encoder(cfg.encoder), cfg.pooling,
                              head=cfg.head)
    return model, encoders.load_tokenizer(cfg.encoder)


# --------------------------------------------------------------------------- data


def epitome_pairs(records, mechanism: str) -> tuple[list[str], list[str], list[int]]:
    """(seeker posts, response posts, levels of ``mechanism``) from EPITOME records."""
    return ([r.seeker_post for r in records], [r.response_post for r in records],
            [int(r.levels[mechanism]) for r in records])


def class_weights(labels: Sequence[int], mode: str) -> torch.Tensor | None:
    """Cross-entropy weights against class imbalance: w_c = (N / (K n_c))^p, p = 1 ("inverse"),
    1/2 ("inverse_sqrt"); None for "none". Classes absent from ``labels`` get weight 1 (their count is clamped to N/K)."""
    if mode == "none":
        return None
    powers = {"inverse": 1.0, "inverse_sqrt": 0.5}
    if mode not in powers:
        raise ValueError(f"IdentifierConfig.class_weighting must be 'none', 'inverse' or 'inverse_sqrt', got {mode!r}")
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=NUM_LEVELS).astype(float)
    n, k = counts.sum(), NUM_LEVELS
    counts = np.where(counts > 0, counts, n / k)
    return torch.tensor((n / (k * counts)) ** powers[mode], dtype=torch.float32)


# --------------------------------------------------------------------------- inference


@torch.inference_mode()
def predict_logits(model: EmpathyIdentifier, tokenizer, contexts: Sequence[str], responses: Sequence[str],
                   max_context_len: int, max_response_len: int, batch_size: int = 32) -> torch.Tensor:
    """Logits [N, 3] (float32, CPU) of one identifier, in input order (length-sorted batches, eval mode),
    computed on the model's device."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    if len(contexts) == 0:
        return torch.zeros(0, NUM_LEVELS)
    model.eval()
    c_ids = tokenize(tokenizer, contexts, max_context_len, "left")
    r_ids = tokenize(tokenizer, responses, max_response_len, "right")
    device = next(model.parameters()).device
    out = torch.empty(len(contexts), NUM_LEVELS, device=device)  # copied to the host once, at the end
    for batch in length_sorted_batches([len(c) + len(r) for c, r in zip(c_ids, r_ids)], batch_size):
        ci, cm = pad([c_ids[i] for i in batch], tokenizer.pad_token_id, device)
        ri, rm = pad([r_ids[i] for i in batch], tokenizer.pad_token_id, device)
        out[torch.as_tensor(batch, device=device)] = model(ci, cm, ri, rm).float()
    return out.cpu()


def evaluate(logits: torch.Tensor, labels: Sequence[int], train_labels: Sequence[int] | None = None) -> dict:
    """Accuracy, weighted F1 (both in %), confusion matrix, and the majority-class floor.

    The majority class is taken from ``train_labels`` when given (else from ``labels``)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    y = np.asarray(labels, dtype=int)
    pred = logits.argmax(dim=-1).numpy()
    majority = int(np.bincount(np.asarray(train_labels if train_labels is not None else y, dtype=int),
                               minlength=NUM_LEVELS).argmax())
    floor = np.full_like(y, majority)
    kw = dict(average="weighted", labels=list(range(NUM_LEVELS)), zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": 100.0 * accuracy_score(y, pred),
        "weighted_f1": 100.0 * f1_score(y, pred, **kw),
        "majority_class": majority,
        "majority_accuracy": 100.0 * accuracy_score(y, floor),
        "majority_weighted_f1": 100.0 * f1_score(y, floor, **kw),
        "confusion": confusion_matrix(y, pred, labels=list(range(NUM_LEVELS))).tolist(),
    }


# --------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_identifier(model: EmpathyIdentifier, tokenizer, train: tuple, val: tuple, cfg: IdentifierConfig,
                     seed: int, progress: bool = True, desc: str = "identifier") -> dict:
    """Train with AdamW and weighted cross-entropy; early stopping on validation weighted F1.

    ``train``/``val`` are (contexts, responses, labels). The best epoch's weights are left in ``model``.
    Returns the history: per epoch train loss and validation metrics, and the best epoch.
    """
    from emprl import progress as _progress

    contexts, responses, labels = train
    if not (len(contexts) == len(responses) == len(labels)) or not labels:
        raise ValueError(f"{desc}: training data must be non-empty and aligned, got "
                         f"{len(contexts)}/{len(responses)}/{len(labels)} contexts/responses/labels")
    bad = sorted({int(y) for y in labels} - set(range(NUM_LEVELS)))
    if bad:
        raise ValueError(f"{desc}: labels must be in 0..2, found {bad}")
    seed_everything(seed)
    c_ids = tokenize(tokenizer, contexts, cfg.max_context_len, "left")
    r_ids = tokenize(tokenizer, responses, cfg.max_response_len, "right")
    device = next(model.parameters()).device
    y = torch.tensor(labels, dtype=torch.long, device=device)
    weight = class_weights(labels, cfg.class_weighting)
    weight = None if weight is None else weight.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)

    history: dict = {"epochs": [], "best_epoch": None, "best_val_weighted_f1": -1.0,
                     "class_weights": None if weight is None else weight.tolist()}
    best_state, bad_epochs = None, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(y), generator=generator).tolist()
        batches = [perm[i: i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]
        total = torch.zeros((), device=device)
        bar = _progress.bar(batches, desc=f"{desc} epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for batch in bar:
            ci, cm = pad([c_ids[i] for i in batch], tokenizer.pad_token_id, device)
            ri, rm = pad([r_ids[i] for i in batch], tokenizer.pad_token_id, device)
            # float32 logits: the loss stays exact under a bf16 autocast
            loss = F.cross_entropy(model(ci, cm, ri, rm).float(), y[batch], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val_metrics = evaluate(predict_logits(model, tokenizer, val[0], val[1], cfg.max_context_len,
                                              cfg.max_response_len, batch_size=2 * cfg.batch_size), val[2], labels)
        train_loss = float(total) / len(y)
        history["epochs"].append({"epoch": epoch, "train_loss": train_loss, **val_metrics})
        if progress:
            print(f"{desc} epoch {epoch}: train loss {train_loss:.4f}  val acc {val_metrics['accuracy']:.2f}"
                  f"  val weighted F1 {val_metrics['weighted_f1']:.2f}", flush=True)
        if val_metrics["weighted_f1"] > history["best_val_weighted_f1"]:
            history["best_epoch"], history["best_val_weighted_f1"] = epoch, val_metrics["weighted_f1"]
            best_state, bad_epochs = copy.deepcopy(model.state_dict()), 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return history


# --------------------------------------------------------------------------- save / load

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_identifier(model: EmpathyIdentifier, tokenizer, directory: str | Path, cfg: IdentifierConfig,
                    extra: dict | None = None) -> Path:
    """Write model.safetensors, config.json and the tokenizer files; weights and config atomically."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    with ckpt.atomic_path(directory / WEIGHTS) as tmp:
        save_model(model, str(tmp))  # handles T5's tied embedding tensors
    config = {
        "pooling": model.pooling,
        "max_context_len": cfg.max_context_len,
        "max_response_len": cfg.max_response_len,
        "identifier_config": asdict(cfg),
        # without transformers' "_name_or_path": where the encoder was loaded from is this machine's path
        **{f"{side}_encoder": {k: v for k, v in getattr(model, f"{side}_encoder").config.to_dict().items()
                               if k != "_name_or_path"} for side in ("context", "response")},
        **(extra or {}),
    }
    ckpt.atomic_write_text(directory / CONFIG, json.dumps(config, indent=2, default=str))  # last: marks complete
    return directory


def load_identifier(directory: str | Path, device: str | torch.device = "cpu") -> tuple[EmpathyIdentifier, object, dict]:
    """(model in eval mode, tokenizer, config dict) from a save_identifier folder. Never unpickles.

    The weights are copied into a float32 model on ``device``, whatever dtype and device they were saved from."""
    from safetensors.torch import load_model
    from transformers import AutoTokenizer

    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"identifier checkpoint incomplete: {directory / name} is missing")
    config = json.loads((directory / CONFIG).read_text())
    model = EmpathyIdentifier(encoders.encoder_from_config(config["context_encoder"]),
                              encoders.encoder_from_config(config["response_encoder"]), config["pooling"],
                              head=config.get("identifier_config", {}).get("head", "linear"))
    missing, unexpected = load_model(model, str(directory / WEIGHTS), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return model.to(device).eval(), tokenizer, config


# --------------------------------------------------------------------------- all three mechanisms


def train_fingerprint(cfg: IdentifierConfig, seed: int, mechanism: str, train: tuple, val: tuple) -> str:
    """What a checkpoint was trained from (settings, seed, data): a match lets a rerun skip training."""
    import hashlib

    settings = asdict(cfg)
    if settings["head"] == "linear":  # the default head keeps the fingerprint of configs without the option
        del settings["head"]
    digest = hashlib.sha256(json.dumps([settings, seed, mechanism], sort_keys=True).encode())
    for part in (train, val):
        digest.update(json.dumps([list(x) for x in part]).encode())
    return digest.hexdigest()


def train_identifiers(cfg: IdentifierConfig, train_records, val_records, ckpt_root: str | Path, seed: int,
                      mechanisms: Sequence[str], progress: bool = True,
                      device: str | torch.device = "cpu") -> dict:
    """Train (or resume from finished checkpoints) one identifier per mechanism and evaluate it on ``val_records``.

    Each identifier is saved to ``ckpt_root/<mechanism>/`` as soon as it is trained, so an interrupted
    run resumes at the first unfinished mechanism. Returns {mechanism: {"history", "metrics", "val_logits", "resumed"}}.
    """
    results = {}
    for mechanism in mechanisms:
        train, val = epitome_pairs(train_records, mechanism), epitome_pairs(val_records, mechanism)
        fp = train_fingerprint(cfg, seed, mechanism, train, val)
        compute = ckpt.compute_dtype(torch.device(device).type)
        if compute != "float32":  # under bf16 autocast: another training, never reused in float32 (key as before)
            fp += f" | compute {compute}"
        directory = Path(ckpt_root) / mechanism
        resumed = False
        config_file = directory / CONFIG
        if config_file.is_file() and ckpt.check_key(  # another training's identifier is retrained
                config_file, json.loads(config_file.read_text()).get("train_fingerprint"), fp, restart=True):
            model, tokenizer, saved = load_identifier(directory, device)
            history, resumed = saved["history"], True
            if progress:
                print(f"{mechanism}: finished checkpoint found, not retraining", flush=True)
        else:
            model, tokenizer = build_identifier(cfg, seed)
            model.to(device)
            history = train_identifier(model, tokenizer, train, val, cfg, seed, progress, desc=mechanism)
            save_identifier(model, tokenizer, directory, cfg,
                            extra={"mechanism": mechanism, "seed": seed, "train_fingerprint": fp, "history": history})
        logits = predict_logits(model, tokenizer, val[0], val[1], cfg.max_context_len, cfg.max_response_len,
                                batch_size=2 * cfg.batch_size)
        results[mechanism] = {"history": history, "metrics": evaluate(logits, val[2], train[2]),
                              "val_logits": logits, "resumed": resumed}
        del model
    return results


def table_i(results: dict) -> "pandas.DataFrame":
    """Table I laid out as in the paper, ours beside the paper's, with the majority-class floor."""
    import pandas as pd

    rows = []
    for mechanism, r in results.items():
        m = r["metrics"]
        paper_acc, paper_f1 = TABLE_I["rows"][mechanism]
        rows.append({"identifier": mechanism, "n_val": m["n"],
                     "accuracy (ours)": round(m["accuracy"], 2), "accuracy (paper)": paper_acc,
                     "weighted F1 (ours)": round(m["weighted_f1"], 2), "weighted F1 (paper)": paper_f1,
                     "majority accuracy": round(m["majority_accuracy"], 2),
                     "majority weighted F1": round(m["majority_weighted_f1"], 2),
                     "best epoch": r["history"]["best_epoch"]})
    return pd.DataFrame(rows)

