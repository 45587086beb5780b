"""GRPO on an instruct LLM with the empathy reward: trl's GRPOTrainer, a LoRA adapter, resumable runs, and the
validation replies of the base and trained models.

    python -m emprl.rl.grpo --profile offline --variant empathy [--seed S] [--out DIR]

trl's GRPOTrainer samples several completions per prompt and calls each reward function with keyword
arguments: ``prompts``, ``completions``, ``completion_ids``, every other column of the training dataset
(repeated for each completion of its prompt), and ``trainer_state``, ``log_extra``, ``log_metric``. Each row of
``prompt_dataset`` carries what the reward needs beside the completion: the identifiers' text of its context
(``context``) and the gold levels of its human response (``gold_levels``), so that the reward is R_emp of
Eq. 2-3 as in PPO, or its chance-corrected form (``reward.chance_corrected_reward``).

``train_grpo`` runs one training (the profile's ``grpo`` section; the loop is trl's); ``sample_replies`` samples
the validation replies of any model, base or trained, with the training's decoding; ``main`` is the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from emprl import checkpoint as ckpt
from emprl import data
from emprl.rl.best_of_n import level_prior
from emprl.rl.ppo_train import placebo_order
from emprl.rl.reward import chance_corrected_reward, empathy_reward

# "empathy": R_emp (Eq. 2-3); "chance_corrected": R_emp less its expectation under the training gold's
# level-triple frequencies; "placebo": R_emp against the gold levels of another training context
# (ppo_train.placebo_order): the reward keeps its distribution and loses its link to the context
VARIANTS = ("empathy", "chance_corrected", "placebo")
# settings a run may resume with other values of: its length, how often it is saved and its adapter kept, and
# how notebook 10 answers validation and test contexts after it (not training settings)
RESUMABLE_CHANGES = ("steps", "save_steps", "snapshot_every", "curve_examples", "test_examples",
                     "sample_batch_size")
SNAPSHOTS = "snapshots"  # run_dir/snapshots/step-<N>/: the adapter after N steps, every grpo.snapshot_every
LORA_TARGETS = "all-linear"  # peft: every linear layer but the LM head (q, k, v, o, gate, up, down)
KEY_FILE = "resume_key.json"
# trl 1.16 and peft 0.21 read transformers 5's deprecated alias of is_activation_checkpointing: its warning is
# noise (the answer is the same), silenced where they call it
DEPRECATED_PROPERTY = "`is_gradient_checkpointing` is deprecated"

# The instruct model is told who it is in the dialogue (the contexts alternate "Speaker:" and "Listener:",
# the Listener replying last) and to keep it short, like the paper's ChatGPT prompt ("no more than 30 words").
SYSTEM_PROMPT = ("You are the Listener in this conversation. Reply to the Speaker's last message with empathy, "
                 "in no more than 30 words.")


def prompt_dataset(examples: Sequence, gold_levels, max_context_tokens: int | None):
    """A ``datasets.Dataset`` of conversational prompts for trl: "prompt" (the system message and the context as
    the user's message, cut to ``max_context_tokens`` words as the generator sees it), "context" (the whole
    context as the identifiers read it) and "gold_levels" (three ints). ``examples``: as ``data.context_texts``
    takes them; ``gold_levels`` [N, 3]: the identifiers' levels of their human responses
    (``scoring.gold_labels``)."""
    from datasets import Dataset

    generation_contexts, scoring_contexts = data.context_texts(examples, max_context_tokens)
    gold = np.asarray(gold_levels)
    if gold.shape != (len(scoring_contexts), 3):
        raise ValueError(f"gold_levels must be [{len(scoring_contexts)}, 3] (one triple per example), "
                         f"got shape {gold.shape}")
    prompts = [chat_prompt(c) for c in generation_contexts]
    return Dataset.from_dict({"prompt": prompts, "context": scoring_contexts, "gold_levels": gold.tolist()})


def chat_prompt(context: str) -> list[dict]:
    """The messages an instruct model answers: the system prompt, and the generator's context as the user's."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": context}]


def empathy_reward_function(scorer, chance_corrected: bool = False, prior: torch.Tensor | None = None):
    """A trl reward function: R_emp (Eq. 2-3) of each completion against its row's gold levels, as floats.

    ``scorer``: the identifiers (``EmpathyScorer``), scoring (row's ``context``, completion). With
    ``chance_corrected``, ``reward.chance_corrected_reward`` with ``prior`` [27] (``best_of_n.level_prior`` of
    the training split). Completions are strings, or, with conversational prompts, lists of messages whose
    last is the assistant's reply. trl logs the reward under the function's ``__name__``."""
    if chance_corrected and prior is None:
        raise ValueError("the chance-corrected reward needs the prior: best_of_n.level_prior(gold of the "
                         "training split)")
    if prior is not None and not chance_corrected:
        raise ValueError("a prior was given for the plain empathy reward, which does not use it; pass "
                         "chance_corrected=True to subtract its expectation")

    def reward(completions: list, context: list[str], gold_levels: list[list[int]], **_) -> list[float]:
        responses = [c if isinstance(c, str) else _reply(c) for c in completions]
        logits = scorer.logits(list(context), responses)  # [B, 3, 3], Eq. 4
        gold = torch.tensor(gold_levels, dtype=torch.long)
        if chance_corrected:
            return chance_corrected_reward(logits, gold, prior).tolist()
        return empathy_reward(logits, gold).tolist()

    reward.__name__ = "chance_corrected_empathy_reward" if chance_corrected else "empathy_reward"
    return reward


def _reply(messages: list[dict]) -> str:
    """The text of a conversational completion: its last message, which must be the assistant's."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"a conversational completion must end with the assistant's reply, got {messages!r}")
    return messages[-1]["content"]


def load_policy(name: str, dtype: str = "float32", adapter: str | Path | None = None):
    """(model, tokenizer): the causal LM ``name`` ("smollm2": the verified folder, ``smollm2.smollm2_folder``;
    "tiny-random": ``smollm2.tiny_random_causal_lm``) in ``dtype`` ("float32" | "bfloat16"), with the LoRA
    adapter saved in the folder ``adapter`` on it if given (peft reads its safetensors)."""
    from emprl.models import smollm2

    if name == "smollm2":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = smollm2.smollm2_folder()
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    elif name == "tiny-random":
        model, tokenizer = smollm2.tiny_random_causal_lm()
    else:
        raise ValueError(f"unknown policy model {name!r}: 'smollm2' or 'tiny-random'")
    if tokenizer.pad_token is None:  # as trl does, so that its batches and ours are padded alike
        tokenizer.pad_token = tokenizer.eos_token
    model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
    if adapter is not None:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5 renamed (same answer)
            warnings.filterwarnings("ignore", message=DEPRECATED_PROPERTY)
            model = PeftModel.from_pretrained(model, str(adapter))
    return model, tokenizer


def train_grpo(cfg, examples: Sequence, gold_levels, scorer, run_dir: str | Path, variant: str = "empathy",
               seed: int = 0, *, max_context_tokens: int | None = None, device: str | torch.device = "cpu",
               resume: bool = True, progress: bool = True) -> dict:
    """Train a LoRA adapter on ``cfg.model`` with trl's GRPO against the empathy reward; resumable.

    ``cfg``: the profile's ``grpo`` section (``profiles.GRPOSettings``). ``examples``: the training contexts (as
    ``prompt_dataset`` takes them), ``gold_levels`` [N, 3] their human responses' levels. ``scorer``: the
    identifiers the reward reads (``EmpathyScorer``, in the reward's dtype). ``variant``: one of VARIANTS.
    ``run_dir`` (``Paths.grpo``) holds trl's ``checkpoint-<step>/`` (every ``cfg.save_steps`` steps and the
    last), ``resume_key.json``, the trained ``adapter/``, ``log.csv`` (one row per step: trl's logged
    reward, its std, the KL, the loss, completion lengths) and ``snapshots/step-<N>/``, the adapter after every
    ``cfg.snapshot_every`` steps (``keep_snapshots``). A rerun with the same settings continues from the
    last complete checkpoint (a finished run trains no step more); with other settings it is a ValueError naming
    them (``resume=False`` deletes ``run_dir`` and starts again). Returns {"model" (the trained PeftModel),
    "tokenizer", "adapter", "log", "log_path", "resumed_from" (a step, or None), "global_step", "snapshots"
    ({step: adapter folder})}.
    """
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from emprl.models.judge import resolve_dtype

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    run_dir, device = Path(run_dir), torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)

    # 1. the data and the reward (the placebo's: each context's row carries another context's gold levels)
    gold = torch.as_tensor(np.asarray(gold_levels)).long()
    prior = level_prior(gold) if variant == "chance_corrected" else None
    if variant == "placebo":
        gold = gold[torch.as_tensor(placebo_order(len(examples), seed))]
    rows = prompt_dataset(examples, gold, max_context_tokens)
    reward = empathy_reward_function(scorer, chance_corrected=variant == "chance_corrected", prior=prior)

    # 2. resume only a run of these settings: the key holds every setting that changes a number of the run
    key = {"grpo": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_CHANGES},
           "dtype": dtype, "variant": variant, "seed": seed, "max_context_tokens": max_context_tokens,
           "reward_dtype": getattr(scorer, "dtype", "float32"), "data": ckpt.key_digest(rows.to_dict())}
    key = json.loads(json.dumps(key))  # as it reads back from the file
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    # trl writes trainer_state.json last into a checkpoint: a folder without it was cut short by a kill
    done = sorted((p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                  key=lambda p: int(p.name.rpartition("-")[2]))
    key_path = run_dir / KEY_FILE
    if key_path.is_file():
        ckpt.check_key(run_dir, json.loads(key_path.read_text()), key)
    elif done:
        raise ValueError(f"{run_dir} holds checkpoints but no {KEY_FILE} to check them against; delete it or "
                         "pass resume=False")
    # under `accelerate launch` every process runs this function; one writes (trl's Trainer does the same)
    from accelerate import PartialState

    writes = PartialState().is_main_process
    run_dir.mkdir(parents=True, exist_ok=True)
    if writes:
        ckpt.atomic_write_text(key_path, json.dumps(key, indent=2) + "\n")
        keep_snapshots(run_dir, cfg.snapshot_every)  # a run resumed with the setting new keeps what is still there

    # 3. the policy and trl's settings. HF's Trainer saves the AdamW, scheduler and RNG states with torch.save
    # and (transformers 5.25) loads them back with torch.load(weights_only=True), so resuming unpickles no
    # code; its training_args.bin, a full pickle, it writes and never reads. The model is already in its dtype,
    # so trl's defaults bf16=True (an autocast, slow on a CPU without native bf16) and gradient checkpointing (a
    # second forward, for memory a 135M model does not need; "activation_checkpointing" in transformers 5) are
    # turned off. A constant rate: a run given more steps goes on as if it had been that long from the start.
    last = int(done[-1].name.rpartition("-")[2]) if done else None
    if last is not None and last >= cfg.steps:
        # finished: not handed back to HF's loop, which, resumed at the end of an epoch, trains the next epoch's
        # first step before it looks at max_steps (a finished run of whole epochs would grow a step per rerun)
        model, tokenizer = load_policy(cfg.model, dtype, adapter=done[-1])
        state = json.loads((done[-1] / "trainer_state.json").read_text())
        history, global_step = state["log_history"], state["global_step"]
    else:
        model, tokenizer = load_policy(cfg.model, dtype)
        args = GRPOConfig(
            output_dir=str(run_dir), use_cpu=device.type == "cpu", report_to=[], seed=seed,
            disable_tqdm=not progress,
            max_steps=cfg.steps, per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
            num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature, beta=cfg.beta, learning_rate=cfg.lr, lr_scheduler_type="constant",
            bf16=False, activation_checkpointing=False, logging_steps=1,
            save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2)  # two: the last may be cut short
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        # 4. train, from the last complete checkpoint if there is one. With an adapter and beta > 0, trl's
        # reference is the model with the adapter disabled: the base.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DEPRECATED_PROPERTY)
            trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward, args=args,
                                  train_dataset=rows, peft_config=lora)
            if writes:
                class KeepSnapshots(TrainerCallback):
                    def on_save(self, args, state, control, **kwargs):  # checkpoint-<step> is complete here
                        keep_snapshots(run_dir, cfg.snapshot_every)

                trainer.add_callback(KeepSnapshots())
            if not progress:  # without a progress bar the Trainer prints every step's logs: log.csv has them
                from transformers.trainer_callback import PrinterCallback

                trainer.remove_callback(PrinterCallback)
            # transformers orders checkpoints by step number where the filesystem's mtimes tie, and says so
            quiet = logging.getLogger("transformers.trainer_utils")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                trainer.train(resume_from_checkpoint=str(done[-1]) if done else None)
            finally:
                quiet.setLevel(level)
        model, history, global_step = trainer.model, trainer.state.log_history, trainer.state.global_step

    # 5. the adapter (adapter_model.safetensors, adapter_config.json) and the log
    adapter = run_dir / "adapter"
    log = pd.DataFrame([e for e in history if "reward" in e])
    log = log[["step", *[c for c in log.columns if c != "step"]]]
    log_path = run_dir / "log.csv"
    if writes:
        with ckpt.atomic_dir(adapter) as tmp:
            model.save_pretrained(str(tmp))
        with ckpt.atomic_file(log_path, "w") as f:
            log.to_csv(f, index=False)
    return {"model": model, "tokenizer": tokenizer, "adapter": adapter, "log": log, "log_path": log_path,
            "resumed_from": last, "global_step": global_step, "snapshots": snapshots(run_dir)}


def keep_snapshots(run_dir: Path, every: int) -> None:
    """Copy the adapter of each complete ``checkpoint-<N>`` with N a multiple of ``every`` to
    ``snapshots/step-<N>/`` if it is not there yet: trl keeps only the last two checkpoints, and the validation
    curve (notebook 10) answers with the adapter of every ``every`` steps. Adapter files only (safetensors)."""
    for folder in run_dir.glob("checkpoint-*"):
        number = folder.name.rpartition("-")[2]
        target = run_dir / SNAPSHOTS / f"step-{number}"
        if (not number.isdigit() or int(number) % every or target.is_dir()
                or not (folder / "trainer_state.json").is_file()):
            continue
        with ckpt.atomic_dir(target) as tmp:
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copyfile(folder / name, Path(tmp) / name)


def snapshots(run_dir: str | Path) -> dict[int, Path]:
    """{N: the adapter folder after N steps} of a run's kept snapshots, by step."""
    found = {int(p.name[5:]): p for p in (Path(run_dir) / SNAPSHOTS).glob("step-*") if p.name[5:].isdigit()}
    return dict(sorted(found.items()))


def sample_replies(model, tokenizer, contexts: Sequence[str], m: int, max_new_tokens: int, temperature: float,
                   seed: int = 0, batch_size: int = 32, progress: bool = False, cache_dir=None) -> list[str]:
    """``m`` replies to each of the generator's ``contexts`` (``data.context_texts``), in the evaluation layout:
    m blocks of N, sample j of context i at j * N + i.

    The prompt is ``chat_prompt``'s and the decoding trl's in training (pure sampling at ``temperature``: no
    top-k, no top-p; the tokenizer's and the model's end-of-sequence tokens end a reply), so that the base model
    and every trained one are sampled alike. Length-sorted batches of ``batch_size`` contexts, left-padded; batch
    b is sampled under seed ``seed + b`` (the caller's random stream is left as it was), so that a call gives the
    same replies again. A prompt is encoded once for its m replies: ``generate`` with ``num_return_sequences``
    would encode each copy, and a prompt holds a context of up to ``data.max_context_tokens`` words (measured
    15% faster on prompts of 89 tokens; more on longer ones). Its key-value cache, all but the last prompt token,
    is repeated m times and handed to ``generate``, which samples exactly as it would have (the same rows, the
    same random draws; tested).

    ``cache_dir``: keep the replies there, keyed by the model's weights, the contexts and every argument that
    changes them, so that the command line's validation replies and the notebook's are sampled once (on a CPU a
    system's thousands of replies take tens of minutes)."""
    from transformers import DynamicCache

    from emprl.models.scoring import state_fingerprint
    from emprl.progress import bar

    if cache_dir is not None:
        key = {"model": state_fingerprint({"policy": model}), "contexts": ckpt.key_digest(list(contexts)),
               "m": m, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
               "batch_size": batch_size, "torch": torch.__version__, "prompt": "encoded once"}
        path = Path(cache_dir) / f"replies_{ckpt.key_digest(key)[:16]}.json"
        cached = ckpt.load_cached(path, key)
        if cached is not None:
            return cached["replies"]
        replies = sample_replies(model, tokenizer, contexts, m, max_new_tokens, temperature, seed, batch_size,
                                 progress)
        ckpt.save_cached(path, key, {"replies": replies})
        return replies

    prompts = [tokenizer.apply_chat_template(chat_prompt(c), add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for c in contexts]
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    eos = eos if tokenizer.eos_token_id in eos else [tokenizer.eos_token_id, *eos]  # as trl gathers them
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    n = len(contexts)
    out = [""] * (m * n)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        for b, idx in enumerate(bar(data.length_sorted_batches([len(p) for p in prompts], batch_size),
                                    desc="sampling", disable=not progress, leave=False)):
            torch.manual_seed(seed + b)
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx],
                                device=device)  # not ids != pad: the pad token may be the prompt's end token
            # the prompt's cache but its last token (generate encodes at least one token itself), with the positions
            # generate gives a left-padded row, then repeated m times: row k is context k // m, as generate's copies
            cache = DynamicCache(config=model.config)
            model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True, cache=cache,
                  position_ids=(mask[:, :-1].cumsum(-1) - 1).clamp(min=0))
            cache.batch_repeat_interleave(m)
            tokens = model.generate(input_ids=ids.repeat_interleave(m, 0), attention_mask=mask.repeat_interleave(m, 0),
                                    cache=cache, do_sample=True, temperature=temperature, top_k=0,
                                    top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
            texts = tokenizer.batch_decode(tokens[:, width:], skip_special_tokens=True)  # row k: context k // m
            for k, text in enumerate(texts):
                out[(k % m) * n + idx[k // m]] = text.strip()
    model.train(was_training)
    return out


def reference_nll(model, tokenizer, contexts: Sequence[str], references: Sequence[str], batch_size: int = 16):
    """(nll [N], tokens [N]): the summed token cross-entropy of each human reply as the assistant's turn after
    ``chat_prompt(context)``, and its token count, end-of-turn token included (the reply's end, as T5's eos);
    PPL = exp(nll.sum() / tokens.sum()), as the T5 systems'. Only the model's own tokenizer reads the replies,
    so PPLs compare across the LLM's systems, not with the T5's."""
    eos = model.generation_config.eos_token_id
    eos = set([] if eos is None else [eos] if isinstance(eos, int) else eos) | {tokenizer.eos_token_id}
    rows = []
    for i, (context, reply) in enumerate(zip(contexts, references)):
        prompt = tokenizer.apply_chat_template(chat_prompt(context), add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template([*chat_prompt(context), {"role": "assistant", "content": reply}],
                                             tokenize=True, return_dict=True)["input_ids"]
        if full[: len(prompt)] != prompt:  # a template that rewrites earlier turns would misplace the reply
            raise ValueError(f"reference {i}: the chat template's prompt is not a prefix of the prompt with its reply")
        # up to the first end-of-turn token: what follows it (ChatML's newline) is no part of the reply
        end = next((k for k in range(len(prompt), len(full)) if full[k] in eos), len(full) - 1)
        rows.append((full[: end + 1], len(prompt)))
    nll, tokens = np.zeros(len(rows)), np.zeros(len(rows))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for idx in data.length_sorted_batches([len(ids) for ids, _ in rows], batch_size):
            width = max(len(rows[i][0]) for i in idx)  # right-padded: positions as in an unpadded row
            ids = torch.tensor([rows[i][0] + [tokenizer.pad_token_id] * (width - len(rows[i][0])) for i in idx],
                               device=device)
            mask = torch.tensor([[1] * len(rows[i][0]) + [0] * (width - len(rows[i][0])) for i in idx],
                                device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for r, i in enumerate(idx):  # only the reply's positions: the prompt's are most of the row
                start, stop = rows[i][1], len(rows[i][0])  # the reply's tokens: [start, stop)
                nll[i] = float(torch.nn.functional.cross_entropy(  # position t predicts token t + 1
                    logits[r, start - 1: stop - 1].float(), ids[r, start:stop], reduction="sum"))
                tokens[i] = stop - start
    model.train(was_training)
    return nll, tokens


def system_name(model: str, variant: str | None, seed: int) -> str:
    """The name the replies are written under: "<model> base", or "<model> GRPO <variant> seed <S>"."""
    return f"{model} base" if variant is None else f"{model} GRPO {variant} seed {seed}"


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) one GRPO run, then write its validation replies; ``--variant base``: the untrained
    model's replies, sampled alike. Never the test split."""
    from emprl.eval import evaluation
    from emprl.models.judge import resolve_dtype
    from emprl.models.scoring import EmpathyScorer, gold_labels
    from emprl.run import resolve_reward_dtype, setup

    parser = argparse.ArgumentParser(prog="python -m emprl.rl.grpo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--variant", choices=(*VARIANTS, "base"), required=True)
    parser.add_argument("--seed", type=int, default=0, help="training, data subset, placebo and sampling seed")
    parser.add_argument("--out", help="output folder with checkpoints/identifiers (default outputs/<profile>)")
    parser.add_argument("--data-dir", help="data folder (default $EMPRL_DATA_DIR)")
    args = parser.parse_args(argv)
    run = setup(args.profile, args.seed, output_dir=args.out, record=False)  # OUT's config.json stays as it is
    P, device, paths = run.profile, run.device, run.paths
    cfg, E = P.grpo, P.evaluation

    if args.variant == "base":
        model, tokenizer = load_policy(cfg.model, resolve_dtype(cfg.dtype, device))
        model.to(device)
        system = system_name(cfg.model, None, P.seed)
    else:
        scorer = EmpathyScorer.load(paths.identifiers, device)  # float32: the gold levels, as every stage's
        train = data.load_split(P, "train", args.data_dir)
        if cfg.train_examples is not None:  # train_examples contexts, each drawn once
            train = data.visited_subset(train, steps=cfg.train_examples, batch_size=1, seed=P.seed)
        gold = gold_labels(scorer, train, paths.cache)
        reward_scorer = scorer.with_dtype(resolve_reward_dtype(P.runtime.reward_dtype, device))  # as PPO's
        result = train_grpo(cfg, train, gold, reward_scorer, paths.grpo(args.variant, P.seed), args.variant,
                            P.seed, max_context_tokens=P.data.max_context_tokens, device=device)
        model, tokenizer = result["model"], result["tokenizer"]
        print(f"GRPO {args.variant}, seed {P.seed}: {result['global_step']} steps, adapter {result['adapter']}, "
              f"log {result['log_path']}", flush=True)
        system = system_name(cfg.model, args.variant, P.seed)

    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`: one process samples and writes
        return 0
    # the RL study's validation contexts and replies to each (evaluation.study_max_examples, samples_per_context)
    valid = data.load_split(P, "valid", args.data_dir)[: E.study_max_examples]
    contexts, _ = data.context_texts(valid, P.data.max_context_tokens)
    replies = sample_replies(model, tokenizer, contexts, E.samples_per_context, cfg.max_completion_length,
                             cfg.temperature, seed=P.seed, batch_size=cfg.sample_batch_size, progress=True,
                             cache_dir=paths.cache)  # the notebook's replies to these contexts: the same entry
    for path in evaluation.write_system_generations(paths.generations, "grpo_valid", [ex.id for ex in valid],
                                                    {system: replies}):
        print(f"{system}: {E.samples_per_context} x {len(valid)} validation replies in {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
