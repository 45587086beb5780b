"""The generator (paper Sec. III-C, Eq. 1): a T5 that maps a context to a response.

- ``build_generator``: the model by profile: ``"scratch"`` (a T5 from a ``T5Config`` with a tokenizer
  trained on the training split; offline/smoke), ``"t5-base"`` (hub; the paper) or a local path;
  ``cfg.tuning`` picks prefix-tuning (:class:`emprl.models.prefix.PrefixT5`, the paper) or full fine-tuning.
- ``train_generator``: supervised training (AdamW, early stopping on validation loss, resumable).
- ``save_generator`` / ``load_generator``: safetensors checkpoints (sampling: ``emprl.models.policy``).
- ``perplexity``: exp(mean token cross-entropy of the gold responses) over a split.

A T5 trained from scratch learns little when only a prefix is trained, so for ``model="scratch"``
the prefix-tuned generator is obtained like the paper's "pretrained T5, then prefix-tune": first
the whole T5 is trained on the training split (this is also the "w/o RL, prefix-tuning" full
fine-tuning ablation), then it is frozen and a fresh prefix is trained on it (``base=`` in
``build_generator``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from emprl.progress import bar as progress_bar
from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from emprl import checkpoint as ckpt
from emprl.data import length_sorted_batches
from emprl.models.policy import collate, device_of, encode
from emprl.models.prefix import Prefix, PrefixT5
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
    with ckpt.atomic_dir(directory) as tmp:
        tokenizer.save_pretrained(tmp)
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
    with ckpt.atomic_dir(directory) as tmp:
        if isinstance(model, PrefixT5):
            model.t5.save_pretrained(tmp / "t5")
            model.prefix.save(tmp)
            tuning = "prefix"
        else:
            model.save_pretrained(tmp)
            tuning = "full"
        tokenizer.save_pretrained(tmp)
        (tmp / "generator.json").write_text(json.dumps({"tuning": tuning}, indent=2))
    return Path(directory)


def load_generator(directory: str | Path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from ``save_generator``, in eval mode, float32 on ``device`` whatever the
    saved dtype and device (a generator trained in bf16 on a GPU loads on a CPU)."""
    directory = Path(directory)
    meta_file = directory / "generator.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} is missing: {directory} is not a saved generator (see save_generator)")
    tuning = json.loads(meta_file.read_text())["tuning"]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tuning == "prefix":
        t5 = T5ForConditionalGeneration.from_pretrained(directory / "t5", dtype=torch.float32)
        model = PrefixT5(t5, Prefix.load(directory))
    else:
        model = T5ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    return model.to(device).eval(), tokenizer


# --------------------------------------------------------------------------- batching


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
def example_nll(model, tokenizer, contexts: list[str], responses: list[str], batch_size: int = 32,
                max_source_len: int = 512, max_target_len: int = 512,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (sum of token cross-entropies of the gold response incl. ``</s>`` [N] float64, its number
    of tokens [N]); a corpus PPL over any resample of the examples follows from them (paired PPL tests)."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    was_training = model.training
    model.eval()
    sources = encode(tokenizer, contexts, max_source_len, "left")
    targets = encode(tokenizer, responses, max_target_len, "right")
    device = device_of(model)
    nll = torch.zeros(len(contexts), dtype=torch.float64, device=device)  # on the device, read once at the end
    batches = length_sorted_batches([len(s) + len(t) for s, t in zip(sources, targets)], batch_size)
    for idx in progress_bar(batches, desc="perplexity", disable=not progress, leave=False):
        batch = collate([sources[i] for i in idx], [targets[i] for i in idx], tokenizer.pad_token_id, device)
        logits = model(**batch).logits.float()  # float32 cross-entropy under a bf16 autocast too
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=-100, reduction="none")
        nll[torch.as_tensor(idx, device=device)] = ce.double().sum(1)
    model.train(was_training)
    return nll.cpu(), torch.tensor([len(t) for t in targets], dtype=torch.float64)


def token_nll(model, tokenizer, contexts: list[str], responses: list[str], batch_size: int = 32,
              max_source_len: int = 512, max_target_len: int = 512, progress: bool = False) -> tuple[float, int]:
    """(sum of token cross-entropies of the gold responses incl. ``</s>``, number of tokens)."""
    nll, count = example_nll(model, tokenizer, contexts, responses, batch_size, max_source_len, max_target_len,
                             progress)
    return float(nll.sum()), int(count.sum())


def perplexity(model, tokenizer, contexts: list[str], responses: list[str], batch_size: int = 32,
               max_source_len: int = 512, max_target_len: int = 512, progress: bool = False) -> float:
    """PPL = exp(mean token cross-entropy of the gold responses over all tokens of the split)."""
    total, count = token_nll(model, tokenizer, contexts, responses, batch_size, max_source_len, max_target_len,
                             progress)
    return math.exp(total / count)


# --------------------------------------------------------------------------- training


def schedule(cfg: GeneratorConfig, model) -> dict:
    """Learning rate, epochs and step cap of the run: prefix-tuning or full fine-tuning."""
    if isinstance(model, PrefixT5):
        return {"lr": cfg.lr, "epochs": cfg.epochs, "max_steps": cfg.max_steps}
    return {"lr": cfg.full_lr, "epochs": cfg.full_epochs, "max_steps": cfg.full_max_steps}


def train_generator(model, tokenizer, train: tuple[list[str], list[str]], valid: tuple[list[str], list[str]],
                    cfg: GeneratorConfig, state_dir: str | Path, seed: int = 0, progress: bool = True) -> list[dict]:
    """Supervised training (context -> response) with early stopping; returns the loss history.

    AdamW on the trainable parameters (the prefix, or all of T5 for full fine-tuning), batches of
    ``cfg.batch_size``, token cross-entropy. The validation loss (mean token cross-entropy = log
    PPL) on the first ``cfg.eval_examples`` validation examples is computed every ``cfg.eval_every``
    steps (default: once per epoch, and at the last step); training stops after
    ``cfg.patience`` evaluations without improvement, or at the epoch/step cap. The best weights are
    loaded into ``model`` at the end. ``state_dir`` holds one state file written atomically at every
    evaluation (``checkpoint.save_training_state``: trainable weights, AdamW state, every RNG, history)
    and the best weights (``best.safetensors``): calling again resumes from them, and a finished run
    returns at once. A plain loop rather than ``Seq2SeqTrainer``: ``PrefixT5`` is
    not a ``PreTrainedModel`` (Trainer's saving, tied-weight and column handling assume one), and
    the checkpoint should hold only the trainable parameters.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    run = schedule(cfg, model)
    if cfg.eval_examples is not None:
        valid = (valid[0][: cfg.eval_examples], valid[1][: cfg.eval_examples])
    vocab = ckpt.key_digest(sorted(tokenizer.get_vocab().items()))
    fingerprint = {"cfg": asdict(cfg), "seed": seed, "tuning": "prefix" if isinstance(model, PrefixT5) else "full",
                   "n_train": len(train[0]), "n_valid": len(valid[0]), "trainable": sorted(ckpt.trainable(model)),
                   "vocab_sha256": vocab}
    for key in ("epochs", "max_steps", "full_epochs", "full_max_steps", "eval_every", "patience"):
        fingerprint["cfg"].pop(key)  # may be raised to extend a run
    fingerprint["cfg"].pop("length_counts_start_token")  # decoding only: training never reads it
    compute = ckpt.compute_dtype(next(model.parameters()).device.type)
    if compute != "float32":  # under bf16 autocast: another training, never resumed in float32 (key as before)
        fingerprint["compute_dtype"] = compute

    sources = encode(tokenizer, train[0], cfg.max_source_len, "left")
    targets = encode(tokenizer, train[1], cfg.max_target_len, "right")
    lengths = [len(s) + len(t) for s, t in zip(sources, targets)]
    steps_per_epoch = math.ceil(len(sources) / cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    log_every = max(1, min(50, eval_every // 5))
    total_steps = steps_per_epoch * run["epochs"]
    if run["max_steps"] is not None:
        total_steps = min(total_steps, run["max_steps"])

    params = ckpt.trainable(model)
    device = device_of(model)
    opt = torch.optim.AdamW(params.values(), lr=run["lr"])
    st = {"step": 0, "best": math.inf, "bad_evals": 0, "stopped_early": False, "history": [], "elapsed_s": 0.0}
    if (state_dir / "state.json").is_file():
        raise ValueError(f"{state_dir} holds a generator state in an older layout (state.json, last.safetensors, "
                         "optimizer.safetensors) that cannot be resumed: delete the folder to start afresh")
    ckpt.remove_stale_temporaries(state_dir)
    state_file = state_dir / "train_state.safetensors"
    if state_file.is_file():
        _, meta = ckpt.load_training_state(state_file, model, opt, fingerprint)
        st = {k: meta[k] for k in st}

    def evaluate(train_loss):
        nll, n = token_nll(model, tokenizer, valid[0], valid[1], 2 * cfg.batch_size, cfg.max_source_len,
                           cfg.max_target_len)
        val = nll / n
        st["history"].append({"step": st["step"], "epoch": st["step"] / steps_per_epoch, "train_loss": train_loss,
                              "valid_loss": val, "valid_ppl": math.exp(val), "elapsed_s": st["elapsed_s"]})
        if val < st["best"]:
            st["best"], st["bad_evals"] = val, 0
            # best before the state that refers to it: a kill between the two resumes from the older
            # state, whose replay writes these same weights again
            ckpt.save_tensors(state_dir / "best.safetensors", params)
        else:
            st["bad_evals"] += 1
            st["stopped_early"] = st["bad_evals"] >= cfg.patience
        ckpt.save_training_state(state_file, model, opt, fingerprint, st)

    model.train()
    bar = progress_bar(total=total_steps, initial=st["step"], desc=f"train generator ({fingerprint['tuning']})",
               disable=not progress)
    running, n_running, start = 0.0, 0, time.perf_counter() - st["elapsed_s"]
    epoch_batches: dict[int, list[list[int]]] = {}
    while st["step"] < total_steps and not st["stopped_early"]:
        epoch, position = divmod(st["step"], steps_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {epoch: shuffled_batches(lengths, cfg.batch_size, seed * 1000 + epoch)}
        idx = epoch_batches[epoch][position]
        batch = collate([sources[i] for i in idx], [targets[i] for i in idx], tokenizer.pad_token_id, device)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        st["step"] += 1
        st["elapsed_s"] = time.perf_counter() - start
        running, n_running = running + loss.detach().float(), n_running + 1  # no host sync until logged
        bar.update(1)
        if st["step"] % log_every == 0 or st["step"] % eval_every == 0 or st["step"] == total_steps:
            row = {"step": st["step"], "epoch": st["step"] / steps_per_epoch,
                   "train_loss": float(running) / n_running}
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
    ckpt.load_trainable(model, ckpt.load_tensors(state_dir / "best.safetensors"), state_dir / "best.safetensors")
    model.eval()
    return st["history"]
