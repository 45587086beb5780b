"""Rejection-sampling fine-tuning (expert iteration: RAFT, Dong et al. 2023; ReST, Gulcehre et al. 2023).

A baseline for what the empathy reward can teach without PPO: sample k responses per training context from
the current generator (the paper's decoding), keep one per context, and fine-tune the prefix on the kept
(context, response) pairs with the generator's own loss (``generator.train_generator``), for one or more
rounds. ``keep="best"`` keeps the response with the highest R_emp against the context's gold levels (Eq.
2-3; training gold levels only); the matched control ``keep="random"`` keeps a seeded random one, so the
difference between the two is what the reward's choice adds to fine-tuning on one's own samples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from emprl.rl.best_of_n import best_by_reward, pool_rewards, sample_pool

KEEP = ("best", "random")


def kept(logits: torch.Tensor, gold, keep: str, seed: int = 0) -> torch.Tensor:
    """Index [N] of the kept sample of each context; ``logits`` [k, N, 3, 3], ``gold`` [N, 3]."""
    if keep == "best":
        return best_by_reward(logits, gold)
    if keep == "random":
        return torch.randint(logits.shape[0], (logits.shape[1],), generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")


def fine_tune_round(model, tokenizer, gen_contexts: list[str], score_contexts: list[str], gold, scorer, gen_cfg,
                    k: int, keep: str, state_dir: str | Path, seed: int = 0, valid_fraction: float = 0.1,
                    batch_size: int = 32, progress: bool = True, pool_cache: str | Path | None = None) -> dict:
    """One round: pool k samples per context, keep one per context, fine-tune ``model``'s trainable parameters
    (the prefix) on the kept pairs with ``generator.train_generator`` (one epoch at ``gen_cfg.lr``; early
    stopping on a held-out ``valid_fraction`` of the kept pairs). Resumable: the pool is kept in
    ``pool_cache`` (default ``state_dir/pool``; the first rounds of "best" and "random" start from the same
    generator, so one folder serves both) and the fine-tuning state in ``state_dir``.

    Returns {"history", "kept_reward" (mean R_emp of the kept samples), "pool_reward" (mean over the pool),
    "kept": kept responses}. The pool's sampling is seeded by ``seed``.
    """
    from emprl.models.generator import train_generator

    pool, logits = sample_pool(model, tokenizer, gen_contexts, score_contexts, scorer, gen_cfg, k, seed=seed,
                               batch_size=batch_size, progress=progress,
                               cache=Path(pool_cache) if pool_cache is not None else Path(state_dir) / "pool")
    N = len(gen_contexts)
    idx = kept(logits, gold, keep, seed)
    responses = [pool[int(j) * N + i] for i, j in enumerate(idx)]
    rewards = pool_rewards(logits, gold)  # [k, N]
    order = np.random.default_rng(seed).permutation(N)
    n_valid = max(1, int(N * valid_fraction))
    valid, train = order[:n_valid], order[n_valid:]
    cfg = dataclasses.replace(gen_cfg, epochs=1, max_steps=None, eval_every=None, eval_examples=None)
    history = train_generator(model, tokenizer, ([gen_contexts[i] for i in train], [responses[i] for i in train]),
                              ([gen_contexts[i] for i in valid], [responses[i] for i in valid]), cfg,
                              Path(state_dir), seed=seed, progress=progress)
    return {"history": history, "kept_reward": float(rewards[idx, torch.arange(N)].mean()),
            "pool_reward": float(rewards.mean()), "kept": responses}
