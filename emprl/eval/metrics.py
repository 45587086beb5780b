"""Automatic metrics of the paper (Dist-1/2, Emp-F1; Sec. IV-D) with bootstrap confidence intervals.

PPL is ``emprl.models.generator.perplexity``. Everything here is plain numpy on already generated text
and already predicted empathy levels, so it is cheap next to generation and scoring.

* ``distinct_n``: distinct n-grams over all generated responses / all n-grams x 100 (the authors'
  corpus-level definition, Li et al. 2016), on a named tokenizer (``TOKENIZERS``).
* ``emp_f1``: for each mechanism the weighted F1 of predicted vs gold levels (weights = gold
  support, as sklearn's ``average="weighted"``), averaged over the three mechanisms, in percent.
* ``cohen_kappa`` / ``all_match``: chance-corrected agreement with the gold levels per mechanism
  (sklearn's ``cohen_kappa_score``) and the share of examples whose three levels all match (beyond the
  paper: Emp-F1's floor, a constant "none", sits within a point of every system here).
* ``floor_levels``: the reference predictors on the same gold levels (constant majority, marginal draws, and
  the best context-blind predictor, ``best_blind_distribution``, fitted on the training split's frequencies).
* ``agreement``: per mechanism kappa, macro-F1 and the total variation distance between the predicted and the
  gold level distributions, from confusion matrices (all bootstrap resamples at once).
* ``bootstrap_ci`` / ``paired_bootstrap``: percentile bootstrap over test contexts (beyond the paper).

A system may answer each context with m sampled responses: ``responses`` and ``levels`` then hold m
blocks of N rows (sample j of context i at row j * N + i). Emp-F1, kappa and all-match pool the m x N
rows (each against its context's gold levels); Dist-n is the mean over the m blocks of the corpus Dist-n
of N responses (comparable with one sample per context); the bootstrap resamples contexts together with
their m samples.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import sparse

# --------------------------------------------------------------------------- tokenizers

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")


def word_tokenize(text: str) -> list[str]:
    """Lowercase, then split into words (letters/digits, inner apostrophes kept) and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


def whitespace_tokenize(text: str) -> list[str]:
    """Split on whitespace, case kept (punctuation stays attached to words)."""
    return text.split()


# sha256 of nltk_data's tokenizers/punkt_tab.zip (4,319,076 bytes), as LexNLP's asset bootstrap pins it;
# not re-derived here (the file cannot be downloaded on our machines)
PUNKT_TAB_SHA256 = "e57f64187974277726a3417ca6f181ec5403676c717672eef6a748a7b20e0106"


@functools.lru_cache(maxsize=1)
def punkt_tab_verified() -> bool:
    """True if nltk's punkt_tab is installed (unzipped, with its zip) and the zip's sha256 matches."""
    import nltk

    for root in map(Path, nltk.data.path):
        zipped, unzipped = root / "tokenizers" / "punkt_tab.zip", root / "tokenizers" / "punkt_tab" / "english"
        if zipped.is_file() and unzipped.is_dir():
            return hashlib.sha256(zipped.read_bytes()).hexdigest() == PUNKT_TAB_SHA256
    return False


def nltk_tokenize(text: str) -> list[str]:
    """The authors' Dist-n tokens (``nlgevaluation.py``): nltk ``word_tokenize``, case kept.

    Exact when a verified punkt_tab is installed (sentences split first); otherwise
    ``preserve_line=True``, which skips the sentence split and so leaves the period of an inner
    sentence on its word ("sorry." stays one token); ``nltk_sentence_split_gap`` measures the effect.
    """
    from nltk.tokenize import word_tokenize as nltk_word_tokenize

    return nltk_word_tokenize(text, preserve_line=not punkt_tab_verified())


_INNER_PERIOD_RE = re.compile(r"(?<=\w)\.(?=\s+\S)")


def nltk_sentence_split_gap(responses: Sequence[str]) -> dict[str, float]:
    """How far the ``preserve_line`` approximation can be from the exact nltk tokens on ``responses``.

    The exact tokenizer differs only where punkt ends a sentence inside a response; splitting every
    word-final period followed by more text bounds that (punkt also splits there, except after
    abbreviations such as "Mr."). Returns the share of responses and tokens touched and Dist-n of both.
    """
    from nltk.tokenize import word_tokenize as nltk_word_tokenize

    def approx(t):
        return nltk_word_tokenize(t, preserve_line=True)

    def all_split(t):
        return nltk_word_tokenize(_INNER_PERIOD_RE.sub(" .", t), preserve_line=True)

    n_tokens = sum(len(approx(r)) for r in responses)
    touched = [len(_INNER_PERIOD_RE.findall(r)) for r in responses]
    out = {"responses_touched_pct": 100.0 * sum(t > 0 for t in touched) / max(len(responses), 1),
           "tokens_touched_pct": 100.0 * sum(touched) / max(n_tokens, 1)}
    for n in (1, 2):
        out[f"dist{n}_approx"] = distinct_n(responses, n, approx)
        out[f"dist{n}_all_split"] = distinct_n(responses, n, all_split)
    return out


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "nltk": nltk_tokenize, "word": word_tokenize, "whitespace": whitespace_tokenize,
}


def tokenizer_label(name: str) -> str:
    """How a table names its Dist-n tokenizer."""
    if name == "nltk":
        how = "exact, punkt_tab verified" if punkt_tab_verified() else "preserve_line=True: no punkt_tab sentence split"
        return f"nltk word_tokenize, case kept ({how})"
    labels = {"word": "lowercase word/punctuation split", "whitespace": "whitespace split, case kept"}
    if name not in labels:
        raise ValueError(f"unknown tokenizer {name!r}: choose one of {sorted(TOKENIZERS)}")
    return labels[name]


def _tokenizer(tokenizer: str | Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    if callable(tokenizer):
        return tokenizer
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}: choose one of {sorted(TOKENIZERS)} or pass a callable")
    return TOKENIZERS[tokenizer]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of one token sequence (none when it is shorter than n)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# --------------------------------------------------------------------------- Dist-n


def distinct_n(responses: Sequence[str], n: int, tokenizer: str | Callable = "word") -> float:
    """Dist-n = |distinct n-grams over all responses| / |all n-grams| x 100 (0.0 when there are none)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tok = _tokenizer(tokenizer)
    total, distinct = 0, set()
    for response in responses:
        grams = ngrams(tok(response), n)
        total += len(grams)
        distinct.update(grams)
    return 100.0 * len(distinct) / total if total else 0.0


@dataclass(frozen=True)
class _NgramIncidence:
    """Responses x n-gram types incidence (CSR) and n-gram counts per response, for fast resampling."""

    matrix: sparse.csr_matrix  # [N, types], 1 where a response contains the type
    lengths: np.ndarray  # [N] number of n-grams in each response

    @classmethod
    def build(cls, responses: Sequence[str], n: int, tokenizer: str | Callable) -> "_NgramIncidence":
        tok = _tokenizer(tokenizer)
        vocab: dict[tuple[str, ...], int] = {}
        rows, cols, lengths = [], [], []
        for i, response in enumerate(responses):
            grams = ngrams(tok(response), n)
            lengths.append(len(grams))
            for g in set(grams):
                rows.append(i)
                cols.append(vocab.setdefault(g, len(vocab)))
        data = np.ones(len(rows), dtype=np.float64)
        matrix = sparse.csr_matrix((data, (rows, cols)), shape=(len(responses), max(len(vocab), 1)))
        return cls(matrix, np.asarray(lengths, dtype=np.float64))

    def distinct(self, weights: np.ndarray) -> float:
        """Dist-n of the corpus in which response i occurs ``weights[i]`` times."""
        total = float(weights @ self.lengths)
        if total == 0:
            return 0.0
        present = self.matrix.T @ (weights > 0).astype(np.float64)
        return 100.0 * float(np.count_nonzero(present)) / total


# --------------------------------------------------------------------------- Emp-F1


def weighted_f1(gold: np.ndarray, pred: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted F1 in [0, 1]: sum over classes of support_c * F1_c / N (sklearn ``average="weighted"``).

    F1_c is 0 where precision or recall is undefined (sklearn's ``zero_division=0``). ``weights``
    counts how often each example occurs (bootstrap); None means once each.
    """
    gold = np.asarray(gold, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    w = np.ones(len(gold)) if weights is None else np.asarray(weights, dtype=np.float64)
    confusion = np.bincount(gold * 3 + pred, weights=w, minlength=9).reshape(3, 3)  # three levels
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)  # gold counts
    predicted = confusion.sum(axis=0)
    denom = support + predicted  # F1 = 2 TP / (|gold_c| + |pred_c|)
    f1 = np.divide(2 * tp, denom, out=np.zeros(3), where=denom > 0)
    n = support.sum()
    return float((support * f1).sum() / n) if n else 0.0


def _check_levels(gold: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gold, pred = np.asarray(gold), np.asarray(pred)
    if gold.shape != pred.shape or gold.ndim != 2 or gold.shape[1] != 3:
        raise ValueError(f"gold and pred must both be [N, 3] level labels; got {gold.shape} and {pred.shape}")
    for name, a in (("gold", gold), ("pred", pred)):
        if a.size and (a.min() < 0 or a.max() > 2):
            raise ValueError(f"{name} levels must be in {{0, 1, 2}} (none/weak/strong); found {a.min()}..{a.max()}")
    return gold.astype(np.int64), pred.astype(np.int64)


def emp_f1(gold, pred, weights: np.ndarray | None = None) -> float:
    """Emp-F1 (Sec. IV-D): mean over the three mechanisms of the weighted F1 of ``pred`` vs ``gold``, in percent.

    ``gold``: [N, 3] identifier levels of the human responses; ``pred``: [N, 3] of the generated ones.
    """
    gold, pred = _check_levels(gold, pred)
    return 100.0 * float(np.mean([weighted_f1(gold[:, m], pred[:, m], weights=weights) for m in range(3)]))


def emp_f1_per_mechanism(gold, pred) -> list[float]:
    """The three per-mechanism weighted F1 scores (percent), in ``emprl.data.MECHANISMS`` order."""
    gold, pred = _check_levels(gold, pred)
    return [100.0 * weighted_f1(gold[:, m], pred[:, m]) for m in range(3)]


def cohen_kappa(gold, pred, weights: np.ndarray | None = None) -> list[float]:
    """Cohen's kappa of ``pred`` against ``gold`` per mechanism ([N, 3] levels; ``weights`` as in
    ``weighted_f1``): 0 is chance agreement, 1 perfect; a constant prediction scores 0."""
    from sklearn.metrics import cohen_kappa_score

    gold, pred = _check_levels(gold, pred)
    out = []
    for m in range(3):
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns where kappa is 0/0, handled below
            k = cohen_kappa_score(gold[:, m], pred[:, m], labels=[0, 1, 2], sample_weight=weights)
        out.append(float(k) if np.isfinite(k) else 0.0)  # one level everywhere on both sides: 0/0, say 0
    return out


def all_match(gold, pred, weights: np.ndarray | None = None) -> float:
    """Percent of examples whose three predicted levels all equal the gold ones (``weights`` as above)."""
    gold, pred = _check_levels(gold, pred)
    hit = (gold == pred).all(axis=1).astype(np.float64)
    w = np.ones(len(hit)) if weights is None else np.asarray(weights, dtype=np.float64)
    return 100.0 * float(w @ hit / w.sum()) if w.sum() else 0.0


FLOORS = {"constant majority": "the most frequent gold level of each mechanism, for every example",
          "marginal draws": "levels drawn independently per mechanism from the gold levels' frequencies (seeded)",
          "blind best": "levels drawn independently per mechanism from the distribution that maximises the "
                        "expected weighted F1 under the training split's level frequencies (seeded)"}
# how a table names each floor's row
FLOOR_ROWS = {"constant majority": "floor: constant majority", "marginal draws": "floor: marginal draws",
              "blind best": "floor: blind best (training frequencies)"}
BLIND_FLOOR = FLOOR_ROWS["blind best"]


def level_frequencies(levels) -> np.ndarray:
    """[3 mechanisms, 3 levels] relative frequencies of the levels in ``levels`` [N, 3]."""
    levels, _ = _check_levels(levels, levels)
    counts = np.stack([np.bincount(levels[:, m], minlength=3) for m in range(3)]).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


def triple_marginals(prior) -> np.ndarray:
    """[3 mechanisms, 3 levels] marginals of a distribution over the 27 level triples in
    ``itertools.product(range(3), repeat=3)`` order (``best_of_n.level_prior``): triple (a, b, c) at 9a + 3b + c."""
    cube = np.asarray(prior, dtype=np.float64).reshape(3, 3, 3)
    return np.stack([cube.sum(axis=(1, 2)), cube.sum(axis=(0, 2)), cube.sum(axis=(0, 1))])


def expected_blind_f1(p, q) -> np.ndarray:
    """Expected weighted F1 (in [0, 1], large N) of levels drawn from q independently of gold levels of frequencies p.

    Independent draws: class j's true positives are N p_j q_j, so its precision is p_j and its recall q_j, and
    F1_j = 2 p_j q_j / (p_j + q_j); weighted by support: sum_j p_j * 2 p_j q_j / (p_j + q_j) (0 where p_j + q_j = 0).
    ``q`` may be [..., 3] (many candidates at once).
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    denom = p + q
    terms = np.divide(2 * p * p * q, denom, out=np.zeros(np.broadcast(p, q).shape), where=denom > 0)
    return terms.sum(axis=-1)


def best_blind_distribution(p, grid: int = 400) -> np.ndarray:
    """The level distribution q maximising ``expected_blind_f1(p, q)`` over the simplex.

    The objective is concave in q (each term 2 p^2 q / (p + q) is), so a grid over the 2-simplex (step
    1 / ``grid``) finds the optimum's neighbourhood and SLSQP from the best grid point refines it.
    """
    from scipy.optimize import minimize

    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    i, j = np.meshgrid(np.arange(grid + 1), np.arange(grid + 1), indexing="ij")
    keep = i + j <= grid
    cand = np.stack([i[keep], j[keep], grid - i[keep] - j[keep]], axis=1) / grid
    start = cand[np.argmax(expected_blind_f1(p, cand))]
    res = minimize(lambda q: -expected_blind_f1(p, q), start, method="SLSQP", bounds=[(0.0, 1.0)] * 3,
                   constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1.0}], options={"ftol": 1e-14})
    q = np.clip(res.x, 0.0, None) if res.success else start
    q = q / q.sum()
    return q if expected_blind_f1(p, q) >= expected_blind_f1(p, start) else start


def floor_levels(gold, kind: str, seed: int = 0, prior=None) -> np.ndarray:
    """The levels [N, 3] of a reference predictor that never reads a response, on these gold levels.

    "blind best" needs ``prior``: the [3 mechanisms, 3 levels] frequencies of the training split's gold levels
    (``level_frequencies`` or ``triple_marginals``); it never sees the test gold's frequencies.
    """
    gold, _ = _check_levels(gold, gold)
    counts = np.stack([np.bincount(gold[:, m], minlength=3) for m in range(3)])  # [3 mechanisms, 3 levels]
    if kind == "constant majority":
        return np.tile(counts.argmax(axis=1), (len(gold), 1))
    if kind == "marginal draws":
        rng = np.random.default_rng(seed)
        return np.stack([rng.choice(3, size=len(gold), p=counts[m] / counts[m].sum()) for m in range(3)], axis=1)
    if kind == "blind best":
        if prior is None:
            raise ValueError("the blind best floor needs prior: the training split's level frequencies [3, 3]")
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (3, 3):
            raise ValueError(f"prior must be [3 mechanisms, 3 levels] frequencies, got shape {prior.shape}")
        rng = np.random.default_rng(seed)
        return np.stack([rng.choice(3, size=len(gold), p=best_blind_distribution(prior[m])) for m in range(3)],
                        axis=1)
    raise ValueError(f"unknown floor {kind!r}; known: {list(FLOORS)}")


# --------------------------------------------------------------------------- agreement beyond Emp-F1


def confusions(gold, pred, weights: np.ndarray | None = None) -> np.ndarray:
    """[..., 3 mechanisms, 3 gold levels, 3 predicted levels] weighted confusion matrices; ``weights`` [N] or
    [B, N] (B resamples at once)."""
    gold, pred = _check_levels(gold, pred)
    cells = np.zeros((len(gold), 3, 9))
    for m in range(3):
        cells[np.arange(len(gold)), m, gold[:, m] * 3 + pred[:, m]] = 1.0
    w = np.ones(len(gold)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(w, cells, axes=([-1], [0])).reshape(*w.shape[:-1], 3, 3, 3)


def agreement(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Per mechanism, from confusion matrices [..., 3, 3, 3]: Cohen's kappa, macro-F1 (%, unweighted mean of
    the three levels' F1, 0 for a level absent from both sides) and the total variation distance (%) between the
    predicted and the gold level distributions, 1/2 sum_j |pred_j - gold_j|. Each [..., 3]."""
    total = conf.sum(axis=(-2, -1))
    gold_n, pred_n = conf.sum(axis=-1), conf.sum(axis=-2)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(gold_n + pred_n > 0, 2 * tp / (gold_n + pred_n), 0.0)
        p_o = tp.sum(axis=-1) / total
        p_e = (gold_n * pred_n).sum(axis=-1) / total**2
        kappa = np.where(np.isclose(p_e, 1.0), 0.0, (p_o - p_e) / (1 - p_e))  # one level on both sides: 0
        tv = 0.5 * np.abs(pred_n - gold_n).sum(axis=-1) / total
    return {"kappa": kappa, "macro_f1": 100.0 * f1.mean(axis=-1), "tv": 100.0 * tv}


def macro_f1(gold, pred, weights: np.ndarray | None = None) -> list[float]:
    """Macro-F1 (%) per mechanism of ``pred`` against ``gold`` ([N, 3] levels)."""
    return agreement(confusions(gold, pred, weights))["macro_f1"].tolist()


def tv_distance(gold, pred, weights: np.ndarray | None = None) -> list[float]:
    """Total variation distance (%) per mechanism between the predicted and the gold level distributions."""
    return agreement(confusions(gold, pred, weights))["tv"].tolist()


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


def _resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] multiplicities of a nonparametric bootstrap over n examples, seeded."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    bias_correct: bool = False,
) -> CI:
    """Percentile bootstrap CI of ``statistic(weights)``, weights[i] = how often example i is drawn.

    ``bias_correct`` shifts the bootstrap distribution by its bias (mean - estimate) before taking
    percentiles. Dist-n needs it: a resample repeats responses, which adds n-grams but never
    distinct ones, so every resampled Dist-n is biased low and a plain percentile interval can
    miss the estimate entirely.
    """
    if n == 0:
        raise ValueError("cannot bootstrap an empty set of examples")
    value = statistic(np.ones(n))
    boots = np.array([statistic(w) for w in _resample_weights(n, n_boot, seed)])
    if bias_correct:
        boots = boots - (boots.mean() - value)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return CI(float(value), float(low), float(high), level)


def distinct_n_ci(responses: Sequence[str], n: int, tokenizer: str | Callable = "word", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> CI:
    """Dist-n with a bias-corrected percentile bootstrap CI over responses."""
    inc = _NgramIncidence.build(responses, n, tokenizer)
    return bootstrap_ci(inc.distinct, len(responses), n_boot, seed, level, bias_correct=True)


METRICS = ("dist1", "dist2", "emp_f1", "kappa", "all_match")
AGREEMENT_METRICS = ("macro_f1", "tv")  # means over the three mechanisms, from ``agreement``
MECHANISM_KEYS = ("er", "ip", "ex")  # emprl.data.MECHANISMS order


class _System:
    """One system's metrics as functions of context weights w [N] (w[i]: how often context i is drawn),
    whatever its number m of samples per context."""

    def __init__(self, gold, responses: Sequence[str] | None, levels, tokenizer: str | Callable = "word"):
        gold = np.asarray(gold)
        levels = np.asarray(levels)
        n = len(gold)
        if n == 0 or len(levels) % n or len(levels) == 0:
            raise ValueError(f"{len(levels)} level rows for {n} contexts: need m blocks of {n} rows (m >= 1)")
        if responses is not None and len(responses) != len(levels):
            raise ValueError(f"{len(responses)} responses but {len(levels)} predicted level rows")
        self.n, self.m = n, len(levels) // n
        self.gold, self.levels = _check_levels(np.tile(gold, (self.m, 1)), levels)
        self.responses, self.tokenizer = responses, tokenizer
        self._incidences: dict[int, list[_NgramIncidence]] = {}
        self._cells: np.ndarray | None = None

    def rows(self, w: np.ndarray) -> np.ndarray:
        return np.tile(w, self.m)

    def emp_f1(self, w: np.ndarray) -> float:
        return emp_f1(self.gold, self.levels, self.rows(w))

    def kappa(self, w: np.ndarray) -> float:  # cohen_kappa's value, from the cached cells (much faster)
        return float(np.mean(agreement((w @ self.context_cells().reshape(self.n, -1)).reshape(3, 3, 3))["kappa"]))

    def all_match(self, w: np.ndarray) -> float:
        return all_match(self.gold, self.levels, self.rows(w))

    def macro_f1(self, w: np.ndarray) -> float:
        return float(np.mean(agreement((w @ self.context_cells().reshape(self.n, -1)).reshape(3, 3, 3))["macro_f1"]))

    def tv(self, w: np.ndarray) -> float:
        return float(np.mean(agreement((w @ self.context_cells().reshape(self.n, -1)).reshape(3, 3, 3))["tv"]))

    def context_cells(self) -> np.ndarray:
        """[N, 3 mechanisms, 9] how many of context i's m rows fall in each (gold, predicted) cell."""
        if self._cells is not None:
            return self._cells
        cells = np.zeros((self.n, 3, 9))
        for j in range(self.m):
            block = slice(j * self.n, (j + 1) * self.n)
            for k in range(3):
                cells[np.arange(self.n), k, self.gold[block, k] * 3 + self.levels[block, k]] += 1.0
        self._cells = cells
        return cells

    def incidences(self, k: int) -> list[_NgramIncidence]:
        if self.responses is None:
            raise ValueError("Dist-n needs the responses")
        if k not in self._incidences:
            self._incidences[k] = [_NgramIncidence.build(self.responses[j * self.n: (j + 1) * self.n], k,
                                                         self.tokenizer) for j in range(self.m)]
        return self._incidences[k]

    def statistic(self, metric: str) -> Callable[[np.ndarray], float]:
        if metric in ("dist1", "dist2"):
            blocks = self.incidences(int(metric[-1]))
            return lambda w: float(np.mean([b.distinct(w) for b in blocks]))
        if metric in ("emp_f1", "kappa", "all_match", *AGREEMENT_METRICS):
            return getattr(self, metric)
        raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS}")


@dataclass(frozen=True)
class PairedTest:
    """Paired bootstrap comparison of system A against system B on the same examples."""

    delta: float  # metric(A) - metric(B) on the full set
    low: float  # percentile CI of the difference
    high: float
    p_value: float  # two-sided: 2 x the smaller share of resamples on either side of 0, +1-smoothed
    se: float = float("nan")  # standard deviation of the resampled differences


def paired_bootstrap(
    statistic_a: Callable[[np.ndarray], float],
    statistic_b: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    bias_correct: bool = False,
) -> PairedTest:
    """Paired bootstrap test: both systems are scored on the same resamples of the n examples.

    ``bias_correct`` centres the resampled differences on the observed one first (as ``bootstrap_ci``
    does): needed for Dist-n, whose resamples are biased low by a different amount for each system.

    The p-value is that of the percentile-bootstrap test of "no difference":
    ``min(1, 2 * min(#(delta_b <= 0) + 1, #(delta_b >= 0) + 1) / (n_boot + 1))``. Identical systems
    give 1; a system better on (nearly) every resample gives about 2 / (n_boot + 1).
    """
    delta = statistic_a(np.ones(n)) - statistic_b(np.ones(n))
    deltas = np.array([statistic_a(w) - statistic_b(w) for w in _resample_weights(n, n_boot, seed)])
    if bias_correct:
        deltas = deltas - (deltas.mean() - delta)
    below, above = np.count_nonzero(deltas <= 0), np.count_nonzero(deltas >= 0)
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n_boot + 1))
    alpha = (1.0 - level) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    return PairedTest(float(delta), float(low), float(high), float(p), float(deltas.std(ddof=1)))


def paired_test(
    metric: str,
    a: dict,
    b: dict,
    gold=None,
    tokenizer: str | Callable = "word",
    n_boot: int = 1000,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap of ``metric`` (one of ``METRICS`` or ``AGREEMENT_METRICS``) between systems ``a`` and ``b``
    on the same contexts.

    Each system is a dict with "responses" (m x N strings, or None for a floor) and "levels" ([m x N, 3]);
    the two may have different m. ``gold`` is the [N, 3] gold levels (for Dist-n alone, a system's N is its
    number of responses).
    """
    if metric not in METRICS + AGREEMENT_METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS + AGREEMENT_METRICS}")
    if gold is None:
        if metric not in ("dist1", "dist2"):
            raise ValueError(f"paired_test({metric!r}, ...) needs gold levels")
        if len(a["responses"]) != len(b["responses"]):
            raise ValueError(f"paired test needs the same examples: {len(a['responses'])} vs "
                             f"{len(b['responses'])} responses")
        gold = np.zeros((len(a["responses"]), 3), dtype=np.int64)
    sa, sb = (_System(gold, s["responses"], s["levels"] if s.get("levels") is not None
                      else np.zeros((len(s["responses"]), 3), dtype=np.int64), tokenizer) for s in (a, b))
    return paired_bootstrap(sa.statistic(metric), sb.statistic(metric), len(np.asarray(gold)), n_boot, seed,
                            bias_correct=metric in ("dist1", "dist2"))


@dataclass(frozen=True)
class SeedPairedTest(PairedTest):
    """A paired comparison over training seeds and contexts: ``delta`` is the mean over seeds of the per-seed
    differences, the CI and p-value include the spread between seeds."""

    per_seed: tuple[float, ...] = ()  # metric(A_s) - metric(B_s) on all contexts, per training seed
    seed_sd: float = float("nan")  # their standard deviation (nan with one seed)


def seed_paired_test(metric: str, a_runs: Sequence[dict], b_runs: Sequence[dict], gold, tokenizer="word",
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> SeedPairedTest:
    """Paired bootstrap of ``metric`` between A and B when each was trained with several seeds: a resample
    draws training seeds with replacement and, for all of them alike, contexts with replacement (the same
    contexts for A and B), and takes the mean over the drawn seeds of metric(A_s) - metric(B_s).

    ``a_runs[s]`` and ``b_runs[s]`` are seed s of each system, as ``paired_test``'s systems ("responses",
    "levels"); a B with a single run (a system trained without RL) stands beside every seed of A. With one
    seed this is ``paired_test`` (the same context resamples). The seeds' draws come from a stream of their own."""
    if metric not in METRICS + AGREEMENT_METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS + AGREEMENT_METRICS}")
    if not a_runs or len(b_runs) not in (1, len(a_runs)):
        raise ValueError(f"{len(a_runs)} runs of A need 1 or {len(a_runs)} runs of B, got {len(b_runs)}")
    b_runs = list(b_runs) * len(a_runs) if len(b_runs) == 1 else list(b_runs)
    gold = np.asarray(gold)
    n, k = len(gold), len(a_runs)

    def stat(run: dict):
        return _System(gold, run["responses"], run["levels"], tokenizer).statistic(metric)

    pairs = [(stat(a), stat(b)) for a, b in zip(a_runs, b_runs)]
    ones = np.ones(n)
    per_seed = [fa(ones) - fb(ones) for fa, fb in pairs]
    drawn = np.random.default_rng([seed, 1]).integers(0, k, size=(n_boot, k))
    deltas = np.array([np.mean([pairs[s][0](w) - pairs[s][1](w) for s in seeds])
                       for w, seeds in zip(_resample_weights(n, n_boot, seed), drawn)])
    if metric in ("dist1", "dist2"):  # as paired_bootstrap: resampled Dist-n is biased low
        deltas = deltas - (deltas.mean() - float(np.mean(per_seed)))
    below, above = np.count_nonzero(deltas <= 0), np.count_nonzero(deltas >= 0)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    return SeedPairedTest(float(np.mean(per_seed)), float(low), float(high),
                          min(1.0, 2.0 * (min(below, above) + 1) / (n_boot + 1)), float(deltas.std(ddof=1)),
                          tuple(float(d) for d in per_seed), float(np.std(per_seed, ddof=1)) if k > 1 else math.nan)


def paired_ppl(nll_a, tokens_a, nll_b, tokens_b, n_boot: int = 1000, seed: int = 0,
               relative: bool = False) -> PairedTest:
    """Paired bootstrap of the corpus PPL, exp(sum nll / sum tokens) over resampled examples, of A minus B
    (``relative``: PPL_A / PPL_B - 1, in percent, comparable across vocabularies). Per-example nll and token
    counts: ``generator.example_nll``."""
    a, ta, b, tb = (np.asarray(x, dtype=np.float64) for x in (nll_a, tokens_a, nll_b, tokens_b))
    if not len(a) == len(ta) == len(b) == len(tb):
        raise ValueError(f"paired PPL needs the same examples: {len(a)}, {len(ta)}, {len(b)}, {len(tb)}")
    ppl_a = lambda w: float(np.exp(w @ a / (w @ ta)))  # noqa: E731
    ppl_b = lambda w: float(np.exp(w @ b / (w @ tb)))  # noqa: E731
    if relative:
        return paired_bootstrap(lambda w: 100.0 * (ppl_a(w) / ppl_b(w) - 1.0), lambda w: 0.0, len(a), n_boot, seed)
    return paired_bootstrap(ppl_a, ppl_b, len(a), n_boot, seed)


# --------------------------------------------------------------------------- one system's row


def evaluate_responses(
    responses: Sequence[str] | None,
    pred_levels,
    gold_levels,
    ppl: float | None = None,
    tokenizer: str | Callable = "word",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """One system's row: PPL (given), Dist-1/2, Emp-F1, mean kappa, all-three-match, mean macro-F1 and mean TV
    distance with bootstrap CIs over contexts; per mechanism F1, and kappa, macro-F1 and TV distance with CIs; m
    (samples per context). ``responses=None`` (a floor predictor): no Dist-n. A flat dict, ready for a table row
    or json."""
    system = _System(gold_levels, responses, pred_levels, tokenizer)
    row = {"n_examples": system.n, "samples_per_context": system.m, "ppl": None if ppl is None else float(ppl)}
    for name in METRICS:
        if responses is None and name in ("dist1", "dist2"):
            row.update({name: None, f"{name}_low": None, f"{name}_high": None})
            continue
        ci = bootstrap_ci(system.statistic(name), system.n, n_boot, seed, level,
                          bias_correct=name in ("dist1", "dist2"))
        row.update({name: ci.value, f"{name}_low": ci.low, f"{name}_high": ci.high})
    f1 = [100.0 * weighted_f1(system.gold[:, m], system.levels[:, m]) for m in range(3)]
    kappa = cohen_kappa(system.gold, system.levels)
    for k, key in enumerate(MECHANISM_KEYS):
        row.update({f"emp_f1_{key}": f1[k], f"kappa_{key}": kappa[k]})
    row.update(_agreement_cis(system, n_boot, seed, level))
    return row


def _agreement_cis(system: _System, n_boot: int, seed: int, level: float) -> dict:
    """Macro-F1 and TV distance (mean and per mechanism) and kappa per mechanism, with percentile CIs over the
    same resamples of contexts as ``bootstrap_ci`` (same seed), all from one matrix product."""
    cells = system.context_cells()
    point = agreement(np.tensordot(np.ones(system.n), cells, axes=1).reshape(3, 3, 3))
    boots = agreement(np.tensordot(_resample_weights(system.n, n_boot, seed), cells, axes=1)
                      .reshape(n_boot, 3, 3, 3))
    alpha = (1.0 - level) / 2
    out = {}
    for name in ("macro_f1", "tv", "kappa"):
        per_mechanism = [(key, point[name][k], boots[name][:, k]) for k, key in enumerate(MECHANISM_KEYS)]
        if name != "kappa":  # the mean kappa and its CI are METRICS'
            per_mechanism.insert(0, ("", point[name].mean(), boots[name].mean(axis=1)))
        for key, value, resampled in per_mechanism:
            label = f"{name}_{key}" if key else name
            low, high = np.quantile(resampled, [alpha, 1 - alpha])
            out.update({label: float(value), f"{label}_low": float(low), f"{label}_high": float(high)})
    return out
