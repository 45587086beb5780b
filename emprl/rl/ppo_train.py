"""The PPO training loop around ``emprl.rl.ppo``: data, rewards, resume, logging, NaN guard, distributed.

One **step** = one PPO batch: roll out ``cfg.batch_size`` contexts (per process), score them, compute
the reward vector (Eq. 7-8) and GAE, then ``cfg.ppo_epochs`` passes over the batch in mini-batches of
``cfg.mini_batch_size`` with one optimizer step per ``cfg.grad_accum`` mini-batches. The paper's
24,000 steps are 24,000 such batches of 8 (batch 8, one mini-batch, 4 epochs: 4 optimizer steps each).

``train_ppo`` runs on the device of the policy it is given (or the accelerator's), under whatever
``torch.autocast`` the caller wraps around it; the reward scaling/normalisation options follow trl's
``use_score_scaling``/``use_score_norm``/``whiten_rewards``.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from emprl import checkpoint as ckpt
from emprl.models import policy as P
from emprl.data import context_texts
from emprl.rl.ppo import NonFiniteError, check_finite, ppo_update, rollout, sampler_settings
from emprl.rl.best_of_n import level_prior
from emprl.rl.reward import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    chance_corrected_reward,
    empathy_reward,
    reward_vector,
    scale_scores,
)

VARIANTS = ("emprl", "no_kl", "no_emp", "placebo")
LOG_FIELDS = (
    "step", "reward_mean", "reward_std", "emp_reward_mean", "emp_reward_std", "score_mean", "kl", "kl_coef",
    "entropy", "policy_loss", "value_loss", "loss", "clip_frac", "approx_kl", "ratio", "value_clip_frac",
    "advantages_mean", "returns_mean", "values_mean", "explained_var", "kl_loss", "response_len", "steps_per_s",
    "elapsed_s",
)


@dataclass
class _Run:
    """What every step needs: the models, optimizer, reward state and where the run writes."""

    model: P.ActorCritic  # the unwrapped module (rollout, saving)
    wrapped: nn.Module  # the module the update trains (DDP wrap under accelerate)
    reference: nn.Module
    optimizer: torch.optim.Optimizer
    kl_ctl: Any
    running: RunningMoments
    device: torch.device
    accelerator: Any
    rank: int
    world: int
    state_path: Path
    log_path: Path
    key: dict
    prior: torch.Tensor | None = None  # the level-triple frequencies of the chance-corrected reward


def train_ppo(
    policy: nn.Module,
    reference: nn.Module | None,
    tokenizer,
    scorer,
    examples: Sequence,
    gold: torch.Tensor,
    cfg,
    gen_cfg,
    out_dir,
    seed: int = 0,
    variant: str = "emprl",
    accelerator=None,
    *,
    max_context_tokens: int | None = None,
    resume: bool = True,
    progress: bool = True,
    value_head: P.ValueHead | None = None,
    before_optimizer_step: Callable[[nn.Module], None] | None = None,
    save_policy: bool = True,
) -> dict[str, Any]:
    """Train ``policy`` with PPO against ``scorer``'s empathy reward; resumable; logs every step.

    ``policy``: the trained generator (PrefixT5: only prefix + value head train; a plain T5: all of it).
    ``reference``: the frozen generator (``make_reference(policy)`` if None). ``scorer``: any object
    with ``.logits(contexts, responses) -> [B, 3, 3]``. ``examples``: DialogueExamples (contexts by
    ``emprl.data.context_texts``) or context strings; ``gold`` [N, 3] their gold levels. ``variant``:
    "emprl", "no_kl" (beta = 0), "no_emp" (R_emp = 0) or "placebo" (R_emp against the gold levels of another
    example, ``placebo_order``: the reward keeps its distribution and loses its link to the context). Writes ``out_dir/checkpoints/ppo/<variant>/``
    (``train_state.safetensors`` every ``cfg.checkpoint_every`` steps; ``policy/`` and
    ``value_head.safetensors`` at the end) and ``out_dir/runs/ppo_<variant>/log.csv``. With
    ``accelerator`` (accelerate), each process rolls out its own ``cfg.batch_size`` contexts,
    gradients are all-reduced, and only the main process writes. NaN/inf in log-probs, values, scorer
    logits, rewards, losses or gradients raises ``NonFiniteError`` (step and quantity named) and
    leaves the last checkpoint untouched.
    Returns {"log": rows, "checkpoint_dir", "log_path", "resumed_from", "model"}.
    """
    gold = _check_arguments(cfg, variant, examples, gold)
    run = _setup(policy, reference, value_head, cfg, gen_cfg, variant, seed, len(examples), out_dir,
                 accelerator, reward_dtype=getattr(scorer, "dtype", "float32"))
    if cfg.reward == "chance_corrected":
        run.prior = level_prior(gold).to(run.device)  # the placebo's permuted gold has the same frequencies
    if variant == "placebo":
        gold = gold[torch.as_tensor(placebo_order(len(examples), seed))]
    gold = gold.to(run.device)
    start_step, rows = _resume(run, cfg, seed, resume)
    is_main = run.rank == 0
    tb = _tensorboard(run.log_path.parent) if is_main else None
    global_batch = cfg.batch_size * run.world
    steps_per_epoch = len(examples) // global_batch

    t0 = t_last = time.perf_counter()
    bar = _tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps,
                disable=not (progress and is_main))
    for step in bar:
        # this process's slice of the data: a seeded permutation per epoch
        epoch, pos = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
        idx = order[pos * global_batch: (pos + 1) * global_batch][
            run.rank * cfg.batch_size: (run.rank + 1) * cfg.batch_size]
        contexts, score_contexts = context_texts([examples[i] for i in idx], max_context_tokens)
        for group in run.optimizer.param_groups:  # the policy's and the value head's, decayed alike
            group["lr"] = group["base_lr"] * lr_at(cfg, step) / cfg.lr
        try:
            out = ppo_step(run, tokenizer, scorer, contexts, score_contexts, gold[torch.as_tensor(idx)], cfg,
                           gen_cfg, variant, before_optimizer_step,
                           train_policy=step >= cfg.critic_warmup_steps)
        except NonFiniteError as e:
            last = run.state_path if run.state_path.exists() else "none"
            raise NonFiniteError(f"PPO step {step + 1} ({variant}): {e}; stopped. "
                                 f"Last good checkpoint: {last}") from None
        now = time.perf_counter()
        row = _log_row(run, step, out, cfg, now - t_last, now - t0)
        t_last = now
        rows.append(row)
        if is_main and (step + 1) % cfg.log_every == 0:
            _write_log(run.log_path, row, tb, step)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_train_state(run, step + 1, rows)

    if tb is not None:
        tb.close()
    if is_main and save_policy:
        _save_policy(run.model, tokenizer, run.state_path.parent)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return {"log": rows, "checkpoint_dir": run.state_path.parent, "log_path": run.log_path,
            "resumed_from": start_step or None, "model": run.model}


def ppo_step(run: _Run, tokenizer, scorer, contexts, score_contexts, gold, cfg, gen_cfg, variant,
             before_optimizer_step=None, train_policy: bool = True) -> dict[str, Any]:
    """One PPO step on this process's contexts: rollout, rewards, update. Returns its tensors and stats.
    ``train_policy=False``: a critic warm-up step (``cfg.critic_warmup_steps``)."""
    # 1. rollout: sample y ~ pi, old log-probs and values, reference log-probs, per-token KL (Eq. 6)
    ro = rollout(run.model, run.reference, tokenizer, contexts, gen_cfg, cfg)
    check_finite("policy log-probs", ro.logprobs)
    check_finite("reference log-probs", ro.ref_logprobs)
    check_finite("values", ro.values)
    # 2. rewards: R_emp (Eq. 2-5), KL penalty (Eq. 6), reward vector (Eq. 7-8)
    logits = torch.as_tensor(scorer.logits(score_contexts, ro.responses))
    check_finite("scorer logits", logits)
    r_emp = empathy_reward(logits.to(run.device), gold)
    check_finite("empathy reward", r_emp)
    if variant == "no_emp":
        score = torch.zeros_like(r_emp)
    elif run.prior is not None:  # ppo.reward "chance_corrected"; r_emp, the paper's, is still what is logged
        score = chance_corrected_reward(logits.to(run.device), gold, run.prior)
    else:
        score = r_emp
    if cfg.reward_scaling:
        score = scale_scores(score, run.running, normalize=cfg.reward_norm, clip=cfg.score_clip)
    mask = ro.response_mask.to(ro.logprobs.dtype)
    kl = ro.kl * mask
    check_finite("KL penalty", kl)
    beta = run.kl_ctl.value if variant != "no_kl" else 0.0
    rewards = reward_vector(score, kl, mask, 0.0 if cfg.kl_in_loss else beta)  # kl_in_loss: beta weighs loss
    check_finite("rewards", rewards)
    # 3. PPO update: GAE (Eq. 9-10), clipped loss (Eq. 13-15)
    sampler = None
    if ro.keep is not None:
        generation = P.generation_kwargs(gen_cfg, tokenizer, min_new_tokens=cfg.min_new_tokens)
        sampler = {"keep": ro.keep, **sampler_settings(gen_cfg, tokenizer, generation)}
    stats = ppo_update(run.wrapped, None, run.optimizer, ro.query_ids, ro.query_mask, ro.response_ids,
                       ro.response_mask, ro.logprobs, ro.values, rewards, cfg, accelerator=run.accelerator,
                       before_optimizer_step=before_optimizer_step, sampler=sampler,
                       ref_logp_all=ro.ref_logp_all, kl_coef=beta if cfg.kl_in_loss else 0.0,
                       train_policy=train_policy)
    seq_kl = kl.sum(1)
    run.kl_ctl.update(_mean_all(seq_kl, run.accelerator), cfg.batch_size * run.world)
    return {"rewards": rewards, "r_emp": r_emp, "score": score, "seq_kl": seq_kl, "mask": mask, "beta": beta,
            "stats": stats}


def placebo_order(n: int, seed: int) -> np.ndarray:
    """A fixed permutation of n examples with no fixed point: example i is rewarded against the gold levels of
    example ``order[i]``, never its own. Built as one cycle through a seeded shuffle (each example takes the
    next one's gold), so it depends on n and the seed alone."""
    if n < 2:
        raise ValueError(f"the placebo needs at least 2 examples to swap gold levels between, got {n}")
    cycle = np.random.default_rng([seed, 26]).permutation(n)  # 26: a stream apart from the data order's
    order = np.empty(n, dtype=np.int64)
    order[cycle] = np.roll(cycle, -1)
    return order


# --------------------------------------------------------------------------- set-up and resume


def _check_arguments(cfg, variant, examples, gold) -> torch.Tensor:
    """The arguments a PPOConfig cannot check (it checks its own values when it is built)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    gold = torch.as_tensor(gold).long()
    if gold.shape != (len(examples), 3):
        raise ValueError(f"gold labels must be [{len(examples)}, 3] (one row per example), "
                         f"got {tuple(gold.shape)}")
    return gold


def _setup(policy, reference, value_head, cfg, gen_cfg, variant, seed, n_examples, out_dir,
           accelerator, reward_dtype: str = "float32") -> _Run:
    """Policy + value head sharing the network, the frozen reference, AdamW, KL controller, file paths."""
    from emprl.run import checkpoint_dir

    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    if n_examples // (cfg.batch_size * world) == 0:
        raise ValueError(f"{n_examples} examples are fewer than one batch of {cfg.batch_size * world} "
                         f"({world} process(es))")
    if P.is_prefix_model(policy):
        for p in policy.t5.parameters():
            p.requires_grad_(False)
    if reference is None:
        reference = P.make_reference(policy)
    torch.manual_seed(seed)
    value_head = value_head if value_head is not None else P.ValueHead(policy.config.d_model)
    device = accelerator.device if accelerator is not None else P.device_of(policy)
    model = P.ActorCritic(policy, value_head, detach_value=cfg.value_detach).to(device)
    reference.to(device)
    model.eval()  # dropout off in rollout and update
    optimizer = adamw(model, cfg, torch.device(device))
    wrapped = model
    if accelerator is not None:
        wrapped, optimizer = accelerator.prepare(model, optimizer)
    if cfg.adaptive_kl:
        kl_ctl = AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
    else:
        kl_ctl = FixedKLController(cfg.beta)
    ck_dir = checkpoint_dir(Path(out_dir), "ppo", variant)
    log_path = Path(out_dir) / "runs" / f"ppo_{variant}" / "log.csv"
    return _Run(model, wrapped, reference, optimizer, kl_ctl, RunningMoments(), torch.device(device), accelerator,
                rank, world, ck_dir / "train_state.safetensors", log_path,
                _resume_key(cfg, gen_cfg, variant, seed, n_examples, world, reward_dtype,
                            ckpt.compute_dtype(torch.device(device).type)))


def adamw(model: P.ActorCritic, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW over two groups, the policy's trainable parameters at ``cfg.lr`` and the value head's at
    ``cfg.value_lr`` (``cfg.lr`` if None: then one group's arithmetic, AdamW being per parameter), each
    remembering its ``base_lr`` for the schedule. Fused into one kernel on CUDA, where the per-parameter
    launches of the default cost more than the arithmetic of a prefix (equal to the default to float
    rounding: tests/test_ppo_fast_path.py)."""
    fused = True if device.type == "cuda" else None
    value_ids = {id(p) for p in model.value_head.parameters()}
    value_lr = cfg.lr if cfg.value_lr is None else cfg.value_lr
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in value_ids],
               "lr": cfg.lr, "base_lr": cfg.lr},
              {"params": [p for p in model.value_head.parameters() if p.requires_grad],
               "lr": value_lr, "base_lr": value_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay,
                             fused=fused)


def lr_at(cfg, step: int) -> float:
    """The learning rate of PPO step ``step`` (0-based): ``cfg.lr``, or with ``cfg.lr_schedule="linear"``
    decayed linearly to 0 over ``cfg.lr_decay_steps`` (``cfg.steps`` if None; transformers' "linear"
    schedule without warm-up, stepped once per PPO step as trl's ``PPOTrainer.step`` does). The horizon
    is its own setting so that a short run of a long schedule decays as the long run would begin."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    horizon = cfg.lr_decay_steps or cfg.steps  # "linear", the only other schedule PPOConfig accepts
    return cfg.lr * max(0.0, (horizon - step) / horizon)


# PPO settings that change no number of a run: its length, its logging and checkpointing, and how the update
# is cut into pieces (the same loss and gradient); a run may resume with other values of these.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "micro_batch_size")
SAMPLING_FIELDS = ("top_k", "top_p", "temperature", "max_new_tokens", "max_source_len",
                   "length_counts_start_token")


def _resume_key(cfg, gen_cfg, variant, seed, n_examples, world, reward_dtype: str = "float32",
                compute_dtype: str = "float32") -> dict:
    """What must match for a checkpoint to be resumed: every PPO setting but RESUMABLE_CHANGES, the
    generator's sampling, the reward's dtype and the autocast dtype of rollout and update (a run must not mix
    rewards or steps of two precisions).

    Every field is in the key, at its default too, so a new PPOConfig option changes the key of every
    checkpoint written before it: such a checkpoint does not resume, and ``checkpoint.check_key``'s error
    shows both keys (delete the state or pass ``resume=False``)."""
    ppo = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    sampling = {k: getattr(gen_cfg, k) for k in SAMPLING_FIELDS}
    return {"ppo": ppo, "sampling": sampling, "variant": variant, "seed": seed, "n_examples": n_examples,
            "world": world, "reward_dtype": reward_dtype, "compute_dtype": compute_dtype}


def _resume(run: _Run, cfg, seed: int, resume: bool) -> tuple[int, list[dict]]:
    """Seed this rank, then continue from ``run.state_path`` if it exists (and ``resume``); start the log."""
    random.seed(seed + run.rank)
    np.random.seed(seed + run.rank)
    torch.manual_seed(seed + run.rank)
    is_main = run.rank == 0
    if is_main:
        ckpt.remove_stale_temporaries(run.state_path.parent)
    start_step, rows = 0, []
    if resume and run.state_path.exists():
        meta, rows = _load_train_state(run)  # the key is checked before anything is restored
        start_step = int(meta["step"])
        run.kl_ctl.value = float(meta["kl_coef"])
        run.running.load_state_dict(meta["running"])
    if is_main:  # the log as of the checkpoint (drops the rows of a killed run's lost steps)
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with ckpt.atomic_file(run.log_path, "w") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows([r for r in rows if r["step"] % cfg.log_every == 0])
    return start_step, rows


def _save_train_state(run: _Run, step: int, rows: list[dict]) -> None:
    """Collect every process's RNG state; the main process writes one atomic file (the log rows as a
    float64 table)."""
    rng = ckpt.rng_state()
    acc = run.accelerator
    if acc is not None and acc.num_processes > 1:
        from accelerate.utils import gather_object

        rngs = gather_object([rng])
    else:
        rngs = [rng]
    if run.rank == 0:
        log = torch.tensor([[float(r[k]) for k in LOG_FIELDS] for r in rows],
                           dtype=torch.float64).reshape(len(rows), len(LOG_FIELDS))
        meta = {"step": step, "kl_coef": run.kl_ctl.value, "running": run.running.state_dict()}
        ckpt.save_training_state(run.state_path, run.model, run.optimizer, run.key, meta, {"log": log}, rngs)
    if acc is not None:
        acc.wait_for_everyone()


def _load_train_state(run: _Run):
    tensors, meta = ckpt.load_training_state(run.state_path, run.model, run.optimizer, run.key, run.rank)
    rows = [dict(zip(LOG_FIELDS, r)) for r in tensors["log"].tolist()]
    for r in rows:
        r["step"] = int(r["step"])
    return meta, rows


def _save_policy(model: P.ActorCritic, tokenizer, ck_dir: Path) -> None:
    """The trained policy in the generator's format (``load_generator`` reads it) and the value head."""
    from emprl.models.generator import save_generator

    save_generator(model.policy, tokenizer, ck_dir / "policy")
    ckpt.save_tensors(ck_dir / "value_head.safetensors", model.value_head.state_dict())


# --------------------------------------------------------------------------- logging


def _log_row(run: _Run, step: int, out: dict, cfg, step_s: float, elapsed_s: float) -> dict[str, float]:
    """The step's log row: means over all processes (the only host synchronisation of a step)."""
    acc = run.accelerator
    total, emp = _gather(out["rewards"].sum(1), acc), _gather(out["r_emp"], acc)
    row = {
        "step": step + 1, "reward_mean": total.mean().item(),
        "reward_std": total.std().item() if total.numel() > 1 else 0.0,
        "emp_reward_mean": emp.mean().item(), "emp_reward_std": emp.std().item() if emp.numel() > 1 else 0.0,
        "score_mean": _mean_all(out["score"], acc), "kl": _mean_all(out["seq_kl"], acc), "kl_coef": out["beta"],
        "response_len": _mean_all(out["mask"].sum(1), acc), "steps_per_s": 1.0 / max(step_s, 1e-9),
        "elapsed_s": elapsed_s,
    }
    for k, v in out["stats"].items():
        row[k] = _mean_all(torch.tensor(v, device=run.device), acc)
    return {k: row.get(k, float("nan")) for k in LOG_FIELDS}


def _write_log(log_path: Path, row: dict, tb, step: int) -> None:
    with open(log_path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)
    if tb is not None:
        for k, v in row.items():
            if k != "step":
                tb.add_scalar(f"ppo/{k}", v, step + 1)


def _gather(x: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator is not None and accelerator.num_processes > 1:
        return accelerator.gather(x.contiguous())
    return x


def _mean_all(x: torch.Tensor, accelerator) -> float:
    x = x.detach().float()
    if accelerator is not None and accelerator.num_processes > 1:
        return accelerator.reduce(x.mean(), reduction="mean").item()
    return x.mean().item()


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - TensorBoard is optional
        return None
    return SummaryWriter(str(log_dir))


def _tqdm(it, **kw):
    from emprl.progress import bar

    return bar(it, desc="PPO", **kw)
