"""The generator (paper Sec. III-C, Eq. 1): a T5 that maps a context to a response.

- ``build_generator``: the model by profile: ``"scratch"`` (a T5 from a ``T5Config`` with a tokenizer
  trained on the training split; offline/smoke), ``"t5-base"`` (hub; the paper) or a local path;
  ``cfg.tuning`` picks prefix-tuning (:class:`emprl.prefix.PrefixT5`, the paper) or full fine-tuning.
- ``train_generator``: supervised training (AdamW, early stopping on validation loss, resumable).
- ``save_generator`` / ``load_generator``: safetensors checkpoints.
- ``sample_responses``: the paper's decoding (top-k 20, top-p 1.0, temperature 0.9, <= 30 tokens).
- ``perplexity``: exp(mean token cross-entropy of the gold responses) over a split.

A T5 trained from scratch learns little when only a prefix is trained, so for ``model="scratch"``
the prefix-tuned generator is obtained like the paper's "pretrained T5, then prefix-tune": first
the whole T5 is trained on the training split (this is also the "w/o RL, prefix-tuning" full
fine-tuning ablation), then it is frozen and a fresh prefix is trained on it (``base=`` in
``build_generator``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from emprl.prefix import Prefix, PrefixT5
from emprl.profiles import GeneratorConfig

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5


# --------------------------------------------------------------------------- tokenizer and model


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram tokenizer trained on ``texts``; appends ``</s>`` like T5's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if not texts:
        raise ValueError("train_tokenizer: no training texts")
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def cached_tokenizer(train_texts: list[str], vocab_size: int, directory: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved in ``directory``, else one trained on ``train_texts`` and saved there.

    Unigram training is not bit-reproducible between runs, so a resumed run must reuse the saved one.
    """
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(directory)
    tokenizer = train_tokenizer(train_texts, vocab_size)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return tokenizer


def scratch_t5_config(cfg: GeneratorConfig, vocab_size: int) -> T5Config:
    """T5 v1.0 architecture (relu FFN, tied embeddings) at the profile's sizes."""
    return T5Config(vocab_size=vocab_size, d_model=cfg.d_model, d_kv=cfg.d_model // cfg.num_heads, d_ff=cfg.d_ff,
                    num_layers=cfg.num_layers, num_heads=cfg.num_heads, dropout_rate=0.1,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _load_hub_t5(name: str):
    try:
        return T5ForConditionalGeneration.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise RuntimeError(
            f"generator model {name!r} could not be loaded from the Hugging Face hub or a local folder ({err}). "
            "Offline, set the generator model to 'scratch' (as the offline and smoke profiles do): a T5 "
            "trained from scratch with a tokenizer trained on the training split."
        ) from err


def build_generator(cfg: GeneratorConfig, train_texts: list[str] | None = None, seed: int = 0,
                    base: str | Path | None = None, tokenizer=None):
    """A fresh generator and its tokenizer: ``(model, tokenizer)``.

    ``cfg.model``: "scratch" (needs ``train_texts`` for the tokenizer), a hub name or a local path.
    ``base``: a saved *full* generator (``save_generator``) whose T5 and tokenizer are used instead
    (the scratch model's prefix-tuning starts from its fully trained T5). ``tokenizer``: use this one
    for "scratch" instead of training one (see ``cached_tokenizer``).
    ``cfg.tuning``: "prefix" -> :class:`PrefixT5` (T5 frozen), "full" -> ``T5ForConditionalGeneration``.
    """
    if cfg.tuning not in ("prefix", "full"):
        raise ValueError(f"generator tuning must be 'prefix' or 'full', got {cfg.tuning!r}")
    torch.manual_seed(seed)
    if base is not None:
        t5, tokenizer = load_generator(base)
        if isinstance(t5, PrefixT5):
            raise ValueError(f"base={base} is a prefix-tuned generator; pass a full one")
    elif cfg.model == "scratch":
        if tokenizer is None:
            if not train_texts:
                raise ValueError("model='scratch' needs train_texts to train its tokenizer")
            tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
        t5 = T5ForConditionalGeneration(scratch_t5_config(cfg, len(tokenizer)))
    else:
        t5, tokenizer = _load_hub_t5(cfg.model)
    if cfg.tuning == "full":
        return t5.train(), tokenizer
    prefix = Prefix.for_t5(t5.config, cfg.prefix_encoder_len, cfg.prefix_decoder_len, cfg.prefix_hidden)
    return PrefixT5(t5, prefix).train(), tokenizer


def save_generator(model, tokenizer, directory: str | Path) -> Path:
    """Write the generator (safetensors + json + tokenizer) to ``directory``, replacing it atomically."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if isinstance(model, PrefixT5):
        model.t5.save_pretrained(tmp / "t5")
        model.prefix.save(tmp)
        tuning = "prefix"
    else:
        model.save_pretrained(tmp)
        tuning = "full"
    tokenizer.save_pretrained(tmp)
    (tmp / "generator.json").write_text(json.dumps({"tuning": tuning}, indent=2))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_generator(directory: str | Path):
    """``(model, tokenizer)`` from ``save_generator``; the model is in eval mode."""
    directory = Path(directory)
    meta_file = directory / "generator.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} is missing: {directory} is not a saved generator (see save_generator)")
    tuning = json.loads(meta_file.read_text())["tuning"]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tuning == "prefix":
        model = PrefixT5(T5ForConditionalGeneration.from_pretrained(directory / "t5"), Prefix.load(directory))
    else:
        model = T5ForConditionalGeneration.from_pretrained(directory)
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- batching


def encode(tokenizer, texts: list[str], max_len: int, side: str) -> list[list[int]]:
    """Token ids (with ``</s>``), truncated to ``max_len`` from the ``side`` ("left" for contexts)."""
    previous = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        return tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]
    finally:
        tokenizer.truncation_side = previous


def collate(sources: list[list[int]], targets: list[list[int]] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` (-100 on padding)."""
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
    return batch


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def shuffled_batches(lengths: list[int], batch_size: int, seed: int, pool: int = 50) -> list[list[int]]:
    """An epoch's batches: shuffle, sort by length within pools of ``pool`` batches, shuffle the batches."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)).tolist()
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start : start + batch_size * pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# --------------------------------------------------------------------------- perplexity


@torch.no_grad()
def token_nll(model, tokenizer, contexts: list[str], responses: list[str], batch_size: int = 32,
              max_source_len: int = 512, max_target_len: int = 512, progress: bool = False) -> tuple[float, int]:
    """(sum of token cross-entropies of the gold responses incl. ``</s>``, number of tokens)."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    was_training = model.training
    model.eval()
    sources = encode(tokenizer, contexts, max_source_len, "left")
    targets = encode(tokenizer, responses, max_target_len, "right")
    total, count = 0.0, 0
    batches = length_sorted_batches([len(s) + len(t) for s, t in zip(sources, targets)], batch_size)
    for idx in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        batch = collate([sources[i] for i in idx], [targets[i] for i in idx], tokenizer.pad_token_id)
        logits = model(**batch).logits
        total += nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100,
                                             reduction="sum").item()
        count += int((batch["labels"] != -100).sum())
    model.train(was_training)
    return total, count


def perplexity(model, tokenizer, contexts: list[str], responses: list[str], batch_size: int = 32,
               max_source_len: int = 512, max_target_len: int = 512, progress: bool = False) -> float:
    """PPL = exp(mean token cross-entropy of the gold responses over all tokens of the split)."""
    total, count = token_nll(model, tokenizer, contexts, responses, batch_size, max_source_len, max_target_len,
                             progress)
    return math.exp(total / count)


# --------------------------------------------------------------------------- decoding


def new_token_limits(cfg: GeneratorConfig, min_tokens: int = 0) -> tuple[int, int]:
    """(min_new_tokens, max_new_tokens) of the sampler for the limits ``min_tokens`` and ``cfg.max_new_tokens``.

    With ``cfg.length_counts_start_token`` they are transformers' ``min_length``/``max_length`` of an
    encoder-decoder (the authors' 5 and 30), which count the decoder start token: one new token fewer.
    """
    shift = 1 if cfg.length_counts_start_token else 0
    return max(min_tokens - shift, 0), cfg.max_new_tokens - shift


def generation_kwargs(cfg: GeneratorConfig, tokenizer) -> dict:
    """The paper's decoding (Sec. IV-B): top-k/top-p sampling with temperature, at most 30 tokens."""
    return dict(do_sample=True, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature,
                max_new_tokens=new_token_limits(cfg)[1], pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id)


@torch.no_grad()
def sample_responses(model, tokenizer, contexts: list[str], cfg: GeneratorConfig, seed: int = 0,
                     batch_size: int = 32, progress: bool = True) -> list[str]:
    """Sample one response per context; length-sorted batches, output in the input order.

    Batch ``b`` is sampled under seed ``seed + b``, so a run is reproducible for a given batch size.
    """
    was_training = model.training
    model.eval()
    sources = encode(tokenizer, contexts, cfg.max_source_len, "left")
    out: list[str] = [""] * len(contexts)
    kwargs = generation_kwargs(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        for b, idx in enumerate(tqdm(length_sorted_batches([len(s) for s in sources], batch_size),
                                     desc="sampling", disable=not progress, leave=False)):
            torch.manual_seed(seed + b)
            batch = collate([sources[i] for i in idx], None, tokenizer.pad_token_id)
            tokens = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
            for i, text in zip(idx, tokenizer.batch_decode(tokens, skip_special_tokens=True)):
                out[i] = text.strip()
    model.train(was_training)
    return out


# --------------------------------------------------------------------------- training


def schedule(cfg: GeneratorConfig, model) -> dict:
    """Learning rate, epochs and step cap of the run: prefix-tuning or full fine-tuning."""
    if isinstance(model, PrefixT5):
        return {"lr": cfg.lr, "epochs": cfg.epochs, "max_steps": cfg.max_steps}
    return {"lr": cfg.full_lr, "epochs": cfg.full_epochs, "max_steps": cfg.full_max_steps}


def _trainable(model) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _write_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_trainable(model, path: Path) -> None:
    params = _trainable(model)
    saved = load_file(str(path))
    if set(saved) != set(params):
        raise ValueError(f"{path}: its tensors do not match the model's trainable parameters")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, state["param_groups"]


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def train_generator(model, tokenizer, train: tuple[list[str], list[str]], valid: tuple[list[str], list[str]],
                    cfg: GeneratorConfig, state_dir: str | Path, seed: int = 0, progress: bool = True) -> list[dict]:
    """Supervised training (context -> response) with early stopping; returns the loss history.

    AdamW on the trainable parameters (the prefix, or all of T5 for full fine-tuning), batches of
    ``cfg.batch_size``, token cross-entropy. The validation loss (mean token cross-entropy = log
    PPL) on the first ``cfg.eval_examples`` validation examples is computed every ``cfg.eval_every``
    steps (default: once per epoch, and at the last step); training stops after
    ``cfg.patience`` evaluations without improvement, or at the epoch/step cap. The best weights are
    loaded into ``model`` at the end. ``state_dir`` holds an atomic checkpoint written at every
    evaluation (trainable weights, AdamW state, RNG, history): calling again resumes from it, and
    a finished run returns at once. A plain loop rather than ``Seq2SeqTrainer``: ``PrefixT5`` is
    not a ``PreTrainedModel`` (Trainer's saving, tied-weight and column handling assume one), and
    the checkpoint should hold only the trainable parameters.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    run = schedule(cfg, model)
    if cfg.eval_examples is not None:
        valid = (valid[0][: cfg.eval_examples], valid[1][: cfg.eval_examples])
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    fingerprint = {"cfg": asdict(cfg), "seed": seed, "tuning": "prefix" if isinstance(model, PrefixT5) else "full",
                   "n_train": len(train[0]), "n_valid": len(valid[0]), "trainable": sorted(_trainable(model)),
                   "vocab_sha256": vocab}
    for key in ("epochs", "max_steps", "full_epochs", "full_max_steps", "eval_every", "patience"):
        fingerprint["cfg"].pop(key)  # may be raised to extend a run
    fingerprint["cfg"].pop("length_counts_start_token")  # decoding only: training never reads it

    sources = encode(tokenizer, train[0], cfg.max_source_len, "left")
    targets = encode(tokenizer, train[1], cfg.max_target_len, "right")
    lengths = [len(s) + len(t) for s, t in zip(sources, targets)]
    steps_per_epoch = math.ceil(len(sources) / cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    log_every = max(1, min(50, eval_every // 5))
    total_steps = steps_per_epoch * run["epochs"]
    if run["max_steps"] is not None:
        total_steps = min(total_steps, run["max_steps"])

    params = _trainable(model)
    opt = torch.optim.AdamW(params.values(), lr=run["lr"])
    st = {"step": 0, "best": math.inf, "bad_evals": 0, "stopped_early": False, "history": [], "elapsed_s": 0.0}
    state_file = state_dir / "state.json"
    if state_file.is_file():
        saved = json.loads(state_file.read_text())
        if saved["fingerprint"] != fingerprint:
            raise ValueError(f"{state_file} belongs to a different run (config, data or model changed); "
                             f"delete {state_dir} to start again")
        st = saved["state"]
        _load_trainable(model, state_dir / "last.safetensors")
        extra = load_file(str(state_dir / "optimizer.safetensors"))
        torch.set_rng_state(extra.pop("__rng__"))
        _restore_optimizer(opt, extra, saved["param_groups"])

    def checkpoint():
        tensors, groups = _optimizer_tensors(opt)
        _save_atomic(params, state_dir / "last.safetensors")
        _save_atomic({**tensors, "__rng__": torch.get_rng_state()}, state_dir / "optimizer.safetensors")
        _write_atomic(json.dumps({"fingerprint": fingerprint, "state": st, "param_groups": groups}), state_file)

    def evaluate(train_loss):
        nll, n = token_nll(model, tokenizer, valid[0], valid[1], 2 * cfg.batch_size, cfg.max_source_len,
                           cfg.max_target_len)
        val = nll / n
        st["history"].append({"step": st["step"], "epoch": st["step"] / steps_per_epoch, "train_loss": train_loss,
                              "valid_loss": val, "valid_ppl": math.exp(val), "elapsed_s": st["elapsed_s"]})
        if val < st["best"]:
            st["best"], st["bad_evals"] = val, 0
            _save_atomic(params, state_dir / "best.safetensors")
        else:
            st["bad_evals"] += 1
            st["stopped_early"] = st["bad_evals"] >= cfg.patience
        checkpoint()

    model.train()
    bar = tqdm(total=total_steps, initial=st["step"], desc=f"train generator ({fingerprint['tuning']})",
               disable=not progress)
    running, n_running, start = 0.0, 0, time.perf_counter() - st["elapsed_s"]
    epoch_batches: dict[int, list[list[int]]] = {}
    while st["step"] < total_steps and not st["stopped_early"]:
        epoch, position = divmod(st["step"], steps_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {epoch: shuffled_batches(lengths, cfg.batch_size, seed * 1000 + epoch)}
        idx = epoch_batches[epoch][position]
        batch = collate([sources[i] for i in idx], [targets[i] for i in idx], tokenizer.pad_token_id)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        st["step"] += 1
        st["elapsed_s"] = time.perf_counter() - start
        running, n_running = running + loss.item(), n_running + 1
        bar.update(1)
        if st["step"] % log_every == 0 or st["step"] % eval_every == 0 or st["step"] == total_steps:
            row = {"step": st["step"], "epoch": st["step"] / steps_per_epoch, "train_loss": running / n_running}
            if st["step"] % eval_every == 0 or st["step"] == total_steps:
                evaluate(row["train_loss"])
                model.train()
                bar.set_postfix(valid_loss=f"{st['history'][-1]['valid_loss']:.3f}")
            else:
                st["history"].append({**row, "valid_loss": None, "valid_ppl": None, "elapsed_s": st["elapsed_s"]})
            running, n_running = 0.0, 0
    bar.close()
    if st["step"] == 0:
        raise ValueError("train_generator: no training steps (empty training split or zero epochs)")
    _load_trainable(model, state_dir / "best.safetensors")
    model.eval()
    return st["history"]


def save_loss_curves(history: list[dict], csv_path: str | Path, png_path: str | Path,
                     title: str = "generator") -> tuple[Path, Path]:
    """Write the history as csv and a plot of train and validation token cross-entropy by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    csv_path, png_path = Path(csv_path), Path(png_path)
    for path in (csv_path, png_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(history)
    frame.to_csv(csv_path, index=False)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(frame["step"], frame["train_loss"], label="train (running mean)", alpha=0.7)
    val = frame.dropna(subset=["valid_loss"])
    ax.plot(val["step"], val["valid_loss"], "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token cross-entropy (nats)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path
