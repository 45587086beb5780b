"""Best-of-n: what choosing among sampled responses by the empathy reward can buy (the study's ceiling).

A pool holds n responses per context from one generator with the paper's decoding (``policy.sample_responses``
on the contexts repeated n times: n blocks of N), scored once by the identifiers (logits [n, N, 3, 3]). For
every n' <= n, one response per context is chosen among its first n' samples by a rule:

- ``oracle``: the largest R_emp against the context's gold levels (Eq. 2-3): an upper bound on what a
  policy maximising this reward could reach, since it sees the gold levels the policy never sees;
- ``expected``: the largest R_emp expected under the joint frequencies of the gold level triples of the
  training split: what a policy that cannot see the gold aims for (the reward's pull to common levels);
- ``first``: the first sample, i.e. the generator as it is (the baseline of the paired tests).

The chosen responses' levels are the identifiers' argmax on them (already scored); every rule's metrics come
from ``metrics.evaluate_responses`` and its paired test against ``first`` from ``metrics.paired_test``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emprl.eval import metrics
from emprl.rl.reward import empathy_reward, expected_reward

RULES = {"oracle": "largest R_emp against the gold levels",
         "expected": "largest R_emp expected under the training split's gold level frequencies",
         "first": "the first sample"}


def level_prior(gold_train) -> torch.Tensor:
    """Joint frequencies [27] of the gold level triples (in ``reward.TRIPLES`` order) of training examples."""
    gold = torch.as_tensor(np.asarray(gold_train)).long()
    codes = gold[:, 0] * 9 + gold[:, 1] * 3 + gold[:, 2]
    counts = torch.bincount(codes, minlength=27).double()
    return counts / counts.sum()


def pool_rewards(logits: torch.Tensor, gold) -> torch.Tensor:
    """R_emp [n, N] of every sample against its context's gold levels (Eq. 2-3); ``logits`` [n, N, 3, 3],
    ``gold`` [N, 3]."""
    gold_t = torch.as_tensor(np.asarray(gold)).long()
    return torch.stack([empathy_reward(logits[j], gold_t) for j in range(logits.shape[0])])


def best_by_reward(logits: torch.Tensor, gold) -> torch.Tensor:
    """Index [N] of each context's sample with the largest R_emp against its gold levels; ``logits``
    [n, N, 3, 3], ``gold`` [N, 3]. The oracle rule, and rejection sampling's ``keep="best"``."""
    return pool_rewards(logits, gold).argmax(dim=0)  # ties: the earliest sample


def sample_pool(model, tokenizer, gen_contexts: list[str], score_contexts: list[str], scorer, gen_cfg, n: int,
                seed: int = 0, batch_size: int = 32, progress: bool = True,
                cache: str | Path | None = None) -> tuple[list[str], torch.Tensor]:
    """n responses per context (n blocks of N, the paper's decoding) and their identifier logits [n, N, 3, 3]
    (each context encoded once: one scoring call, or the scorer's context cache).

    ``cache``: a folder where the pool is kept (``pool.safetensors``, ``checkpoint.save_cached``), read
    back by a later call with the same contexts, n, seed, decoding, generator weights and identifiers, so
    that a killed study does not sample again."""
    from emprl import checkpoint as ckpt
    from emprl.models.policy import sample_responses
    from emprl.models.scoring import data_fingerprint, state_fingerprint

    N = len(gen_contexts)
    if cache is not None:
        path = Path(cache) / "pool.safetensors"
        key = {"contexts": data_fingerprint(gen_contexts, score_contexts), "n": n, "seed": seed,
               "decoding": [gen_cfg.top_k, gen_cfg.top_p, gen_cfg.temperature, gen_cfg.max_new_tokens],
               "generator": state_fingerprint({"g": model}), "identifiers": scorer.fingerprint}
        cached = ckpt.load_cached(path, key)
        if cached is not None:
            return cached["responses"], cached["logits"]
    responses = sample_responses(model, tokenizer, list(gen_contexts), gen_cfg, seed=seed, batch_size=batch_size,
                                 progress=progress, n=n)
    logits = scorer.logits(list(score_contexts) * n, responses)
    logits = logits.reshape(n, N, *logits.shape[1:])
    if cache is not None:
        ckpt.save_cached(path, key, {"responses": responses, "logits": logits})
    return responses, logits


def choose(logits: torch.Tensor, gold, prior: torch.Tensor, rule: str, n: int) -> torch.Tensor:
    """Index [N] of the chosen sample among the first ``n`` of each context; ``logits`` [n_pool, N, 3, 3]."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {list(RULES)}")
    if not 1 <= n <= logits.shape[0]:
        raise ValueError(f"n must be in [1, {logits.shape[0]}] (the pool's samples per context), got {n}")
    if rule == "first":
        return torch.zeros(logits.shape[1], dtype=torch.long)
    if rule == "oracle":
        return best_by_reward(logits[:n], gold)
    return expected_reward(logits[:n], prior).argmax(dim=0)  # ties: the earliest sample


def curve(pool: list[str], logits: torch.Tensor, gold, prior: torch.Tensor, ns=(1, 2, 4, 8, 16),
          tokenizer: str = "nltk", n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Every rule at every n: Emp-F1, mean kappa, all-three-match, Dist-2, mean length, and the paired
    difference from ``first`` (Emp-F1, kappa, all-match, Dist-2) with its 95% CI and p.

    ``pool``: n_pool x N responses in n_pool blocks of N; ``logits`` [n_pool, N, 3, 3] their identifier logits.
    Returns (table, {"rows": [...], "chosen": {f"{rule}@{n}": indices}}) for best_of_n.json.
    """
    from emprl.rl.study import mean_length

    n_pool, N = logits.shape[:2]
    if len(pool) != n_pool * N:
        raise ValueError(f"{len(pool)} pooled responses for {n_pool} samples x {N} contexts")
    gold = np.asarray(gold)
    levels = logits.argmax(-1).numpy()  # [n_pool, N, 3]
    picked = {}
    for n in ns:
        for rule in RULES:
            idx = choose(logits, gold, prior, rule, n).numpy()
            picked[(rule, n)] = {"responses": [pool[j * N + i] for i, j in enumerate(idx)],
                                 "levels": levels[idx, np.arange(N)], "index": idx}
    first = picked[("first", ns[0])]
    rows = []
    for (rule, n), sys_ in picked.items():
        row = metrics.evaluate_responses(sys_["responses"], sys_["levels"], gold, tokenizer=tokenizer,
                                         n_boot=n_boot, seed=seed)
        entry = {"n": n, "rule": rule, "Emp-F1": row["emp_f1"], "kappa": row["kappa"],
                 "all 3 match": row["all_match"], "Dist-2": row["dist2"],
                 "mean length": mean_length(sys_["responses"], tokenizer)}
        for metric, label in (("emp_f1", "Emp-F1"), ("kappa", "kappa"), ("all_match", "all 3 match"),
                              ("dist2", "Dist-2")):
            if rule == "first":
                entry.update({f"{label} diff": 0.0, f"{label} diff CI": "-", f"{label} p": 1.0})
                continue
            t = metrics.paired_test(metric, sys_, first, gold=gold, tokenizer=tokenizer, n_boot=n_boot, seed=seed)
            entry.update({f"{label} diff": t.delta, f"{label} diff CI": f"[{t.low:.2f}, {t.high:.2f}]",
                          f"{label} p": t.p_value})
        rows.append(entry)
    table = pd.DataFrame(rows).set_index(["n", "rule"]).sort_index()
    return table, {"rows": rows, "chosen": {f"{r}@{n}": s["index"].tolist() for (r, n), s in picked.items()}}
