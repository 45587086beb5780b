"""EmpRL reward: empathy reward (Eq. 2-5), KL penalty (Eq. 6) and the reward vector (Eq. 7-8).

The empathy reward's expectation when the gold levels are drawn from the training split's frequencies
(``expected_reward``), and the reward less that expectation (``chance_corrected_reward``).

Also the reward options of the authors' released code (which used trl 0.9.6): running score
scaling / normalisation (``RunningMoments``, ``scale_scores``), masked whitening, and the fixed and
adaptive KL controllers (Ziegler et al. 2019). Tensors are right-padded: ``mask`` [B, T] is 1 for the
real generated tokens of each response, then 0.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "empathy_reward",
    "TRIPLES",
    "expected_reward",
    "chance_corrected_reward",
    "kl_penalty",
    "full_kl",
    "sampling_log_probs",
    "warped_kl",
    "KL_ESTIMATORS",
    "reward_vector",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "whiten_rewards",
    "RunningMoments",
    "scale_scores",
    "FixedKLController",
    "AdaptiveKLController",
    "check_right_padded",
]


def empathy_reward(logits: torch.Tensor, gold_labels: torch.Tensor) -> torch.Tensor:
    """R_emp = exp(-sum_i CE(l_hat_i, l_i)) per example (Eq. 2-3).

    ``logits`` [B, 3 mechanisms, 3 levels]: the identifiers on (context, generated response) (Eq. 4);
    ``gold_labels`` [B, 3] long: the identifiers' levels of the human response (Eq. 5). Returns [B].
    """
    if logits.dim() != 3:
        raise ValueError(f"empathy_reward: logits must be [batch, mechanisms, levels], got shape {tuple(logits.shape)}")
    if gold_labels.shape != logits.shape[:2]:
        raise ValueError(
            f"empathy_reward: gold_labels shape {tuple(gold_labels.shape)} does not match logits {tuple(logits.shape)}"
        )
    logp = F.log_softmax(logits.float(), dim=-1)
    ce = -logp.gather(-1, gold_labels.long().unsqueeze(-1)).squeeze(-1)  # [B, 3], Eq. 3 terms
    return torch.exp(-ce.sum(dim=-1))  # Eq. 2


TRIPLES = torch.tensor(list(itertools.product(range(3), repeat=3)))  # the 27 level triples (ER, IP, EX)


def expected_reward(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """E_{l ~ prior}[R_emp(logits, l)] = sum over triples l of prior(l) prod_i p_i(l_i); logits [..., 3, 3],
    ``prior`` [27] (``best_of_n.level_prior``). Float64 [...]."""
    if prior.shape != (len(TRIPLES),):
        raise ValueError(f"prior must be [27] (the level triples in TRIPLES order), got shape {tuple(prior.shape)}")
    p = torch.softmax(logits.double(), dim=-1)  # [..., 3 mechanisms, 3 levels]
    per_triple = p[..., 0, TRIPLES[:, 0]] * p[..., 1, TRIPLES[:, 1]] * p[..., 2, TRIPLES[:, 2]]  # [..., 27]
    return per_triple @ prior.double()


def chance_corrected_reward(logits: torch.Tensor, gold_labels: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """R_emp against the gold levels less its expectation when the gold triple is drawn from ``prior``, [B].

    R_emp pays a response for the levels the identifiers see in it whatever its context: levels common in the
    training split match the gold often, so a response aiming at them earns a reward without reading its
    context. Less that expectation, a response whose predicted distribution does not depend on the gold earns
    0 on average over the prior, and only matching its own context's levels pays. Per response, not a constant
    per prompt: a group baseline (GRPO) does not remove it. ``logits`` [B, 3, 3], ``gold_labels`` [B, 3],
    ``prior`` [27] (``best_of_n.level_prior`` of the training split). Float32, as ``empathy_reward``.
    """
    return (empathy_reward(logits, gold_labels).double() - expected_reward(logits, prior)).float()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """R_kl at each step: log pi(a_t|s_t) - log rho(a_t|s_t) of the sampled tokens (Eq. 6), [B, T]."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"kl_penalty: shapes differ {tuple(logprobs.shape)} vs {tuple(ref_logprobs.shape)}")
    return logprobs - ref_logprobs


# PPOConfig.kl_estimator: kl_penalty (paper, trl "kl"), full_kl, or warped_kl (sampled token / exact)
KL_ESTIMATORS = ("sampled", "full", "warped", "warped_full")


def full_kl(logprobs_all: torch.Tensor, ref_logprobs_all: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact per-token R_kl = KL(pi(.|s_t) || rho(.|s_t)) over the vocabulary (Eq. 6 in expectation), [B, T].

    ``logprobs_all`` / ``ref_logprobs_all`` [B, T, V]: the policy's and reference's untempered log-probs
    (logits are accepted too: both are log-softmaxed here). Unlike the sampled-token estimator
    ``kl_penalty`` it is >= 0 whatever the sampler drew; 0 where ``mask`` [B, T] is 0.
    """
    if logprobs_all.shape != ref_logprobs_all.shape or logprobs_all.dim() != 3:
        raise ValueError(
            f"full_kl: need two [batch, T, vocab] tensors of one shape, got {tuple(logprobs_all.shape)} "
            f"and {tuple(ref_logprobs_all.shape)}"
        )
    if mask.shape != logprobs_all.shape[:2]:
        raise ValueError(f"full_kl: mask shape {tuple(mask.shape)} does not match {tuple(logprobs_all.shape[:2])}")
    logp = F.log_softmax(logprobs_all.float(), dim=-1)
    ref = F.log_softmax(ref_logprobs_all.float(), dim=-1)
    p = logp.exp()
    # sum_v pi(v|s_t) (log pi(v|s_t) - log rho(v|s_t)); terms with pi(v|s_t) = 0 contribute 0
    kl = torch.where(p > 0, p * (logp - ref), torch.zeros_like(p)).sum(-1).clamp_min(0.0)  # rounding below 0
    return torch.where(mask.bool(), kl, torch.zeros_like(kl))


def sampling_log_probs(
    logits: torch.Tensor, *, top_k: int, temperature: float, top_p: float = 1.0,
    eos_token_id: int | None = None, min_new_tokens: int = 0, keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """log q(.|s_t) [B, T, V] of the sampler that drew the responses, -inf outside its support.

    In transformers' order: EOS gets -inf at response positions t < ``min_new_tokens`` (the
    min-new-tokens processor), then temperature, top-k (ties with the k-th value kept), top-p,
    renormalised. ``keep`` (bool [B, T, V]) replaces the top-k/top-p set: ``warped_kl`` warps the
    reference with the policy's set. ``logits`` may be log-probs: a constant shift changes nothing.
    """
    x = logits.float() / temperature
    if min_new_tokens > 0:
        if eos_token_id is None:
            raise ValueError("sampling_log_probs: min_new_tokens > 0 needs eos_token_id")
        banned = torch.arange(x.shape[1], device=x.device) < min_new_tokens  # [T]
        x[:, banned, eos_token_id] = -math.inf
    if keep is None:
        keep = torch.ones_like(x, dtype=torch.bool)
        if 0 < top_k < x.shape[-1]:
            kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
            keep &= x >= kth
        if top_p < 1.0:
            sorted_x, order = torch.sort(x.masked_fill(~keep, -math.inf), dim=-1)  # ascending, as transformers
            cum = sorted_x.softmax(-1).cumsum(-1)
            drop_sorted = cum <= 1.0 - top_p
            drop_sorted[..., -1] = False  # keep at least the most likely token
            keep &= ~drop_sorted.scatter(-1, order, drop_sorted)
        keep &= torch.isfinite(x)
    return F.log_softmax(x.masked_fill(~keep, -math.inf), dim=-1)


def warped_kl(
    logprobs_all: torch.Tensor, ref_logprobs_all: torch.Tensor, response_ids: torch.Tensor, mask: torch.Tensor,
    *, top_k: int, temperature: float, top_p: float = 1.0, eos_token_id: int | None = None,
    min_new_tokens: int = 0, exact: bool = False,
) -> torch.Tensor:
    """Per-token R_kl between the sampling distributions q_pi and q_rho (Eq. 6 with both warped alike), [B, T].

    Responses are drawn from q_pi (``sampling_log_probs`` of the policy), while Eq. 6 with the untempered
    pi and rho is no KL of anything the sampler does: E_q[log pi - log rho] can be negative. Here rho is
    warped the same way, restricted to q_pi's support (rho's own top-k may exclude the sampled token,
    making the KL infinite), so E_q[sum_t R_kl_t] is KL(q_pi || q_rho) over whole responses, >= 0.
    ``exact=False``: log q_pi(y_t) - log q_rho(y_t) of the sampled tokens ``response_ids`` (unbiased);
    ``exact=True``: KL(q_pi(.|s_t) || q_rho(.|s_t)) over the vocabulary (lower variance). 0 where
    ``mask`` is 0. ``logprobs_all`` / ``ref_logprobs_all``: [B, T, V] log-softmax (or logits).
    """
    if logprobs_all.shape != ref_logprobs_all.shape or logprobs_all.dim() != 3:
        raise ValueError(
            f"warped_kl: need two [batch, T, vocab] tensors of one shape, got {tuple(logprobs_all.shape)} "
            f"and {tuple(ref_logprobs_all.shape)}"
        )
    if mask.shape != logprobs_all.shape[:2] or response_ids.shape != mask.shape:
        raise ValueError(f"warped_kl: mask {tuple(mask.shape)} and response_ids {tuple(response_ids.shape)} "
                         f"must be {tuple(logprobs_all.shape[:2])}")
    warp = dict(top_k=top_k, temperature=temperature, top_p=top_p, eos_token_id=eos_token_id,
                min_new_tokens=min_new_tokens)
    q_pi = sampling_log_probs(logprobs_all, **warp)
    support = torch.isfinite(q_pi)
    q_rho = sampling_log_probs(ref_logprobs_all, keep=support, **warp)
    if exact:
        diff = torch.where(support, q_pi - q_rho, torch.zeros_like(q_pi))
        kl = (q_pi.exp() * diff).sum(-1).clamp_min(0.0)  # rounding below 0
    else:
        ids = response_ids.unsqueeze(-1)
        kl = (q_pi.gather(-1, ids) - q_rho.gather(-1, ids)).squeeze(-1)
    return torch.where(mask.bool(), kl, torch.zeros_like(kl))  # padding tokens may lie outside the support


def check_right_padded(mask: torch.Tensor) -> torch.Tensor:
    """Return the lengths of a right-padded 0/1 mask [B, T]; error if a row has a gap or is empty."""
    lengths = mask.long().sum(dim=1)
    expected = (torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]).to(mask.dtype)
    if not torch.equal(mask, expected):
        bad = (mask != expected).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"mask must be right-padded (ones then zeros); rows {bad[:10]} are not")
    if (lengths == 0).any():
        raise ValueError(f"mask: rows {(lengths == 0).nonzero().flatten().tolist()[:10]} have no real token")
    return lengths


def reward_vector(r_emp: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * R_kl_t, plus R_emp at the last real token t = T; 0 at padding (Eq. 7-8). [B, T]."""
    lengths = check_right_padded(mask)
    rewards = -beta * kl * mask  # Eq. 8, t = 1..T-1 (and the KL part of t = T)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, lengths - 1] += r_emp.to(rewards.dtype)  # Eq. 8, t = T
    return rewards


# --------------------------------------------------------------------------- masked statistics (as trl 0.9.6)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError("masked_var: need at least two real tokens for an unbiased variance")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the real tokens; ``shift_mean=False`` adds the mean back (trl's reward whitening)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def whiten_rewards(rewards: torch.Tensor, mask: torch.Tensor, keep_padding: bool = False) -> torch.Tensor:
    """Whiten the reward vector over its real tokens, keeping its mean (trl's ``whiten_rewards``).

    ``keep_padding=False`` (ours): 0 at padding. ``keep_padding=True`` (trl 0.9.6): padding keeps its
    whitened value (-mean/std + mean of a zero reward) and, since trl's GAE runs over the padding too,
    it reaches the real tokens' advantages; pass the result to ``gae(..., mask_rewards=False)`` for that.
    """
    mask = mask.to(rewards.dtype)
    out = masked_whiten(rewards * mask, mask, shift_mean=False)
    return out if keep_padding else out * mask


# --------------------------------------------------------------------------- authors'-code options


class RunningMoments:
    """Running mean/std of the scores over all steps (trl 0.9.6 ``use_score_scaling``)."""

    def __init__(self) -> None:
        self.mean, self.std, self.var, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.detach().double().flatten()
        n = xs.numel()
        xs_var, xs_mean = torch.var_mean(xs, unbiased=False)
        delta = xs_mean.item() - self.mean
        tot = self.count + n
        tot_sum = xs_var.item() * n + self.var * self.count + delta**2 * self.count * n / tot
        self.mean += delta * n / tot
        self.var = tot_sum / tot
        self.std = math.sqrt(self.var * tot / (tot - 1)) if tot > 1 else 1.0
        self.count = tot

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "var": self.var, "count": self.count}

    def load_state_dict(self, d: dict) -> None:
        self.mean, self.std, self.var, self.count = (float(d[k]) for k in ("mean", "std", "var", "count"))


def scale_scores(scores: torch.Tensor, running: RunningMoments, normalize: bool, clip: float | None = None) -> torch.Tensor:
    """Divide by the running std (and subtract the running mean if ``normalize``), then clip (trl 0.9.6)."""
    running.update(scores)
    scale = running.std + torch.finfo(scores.dtype).eps
    out = (scores - running.mean) / scale if normalize else scores / scale
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out


class FixedKLController:
    """Constant beta (the paper)."""

    def __init__(self, beta: float) -> None:
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """beta_{k+1} = beta_k * (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon) (Ziegler et al. 2019)."""

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = float(beta), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
