"""EmpatheticDialogues and EPITOME (Mental Health Subreddits): loaders, the context format, the split.

Data directory layout (``python -m emprl.download --data-dir DIR`` creates it)::

    DIR/empatheticdialogues/{train,valid,test}.jsonl.gz   rebuilt layout, one dialogue a line
    DIR/empatheticdialogues/{train,valid,test}.csv        official release layout (authors' tarball)
    DIR/epitome/{emotional-reactions,interpretations,explorations}-reddit.csv

When both EmpatheticDialogues layouts exist, ``{split}.jsonl.gz`` is read.
"""

from __future__ import annotations

import collections
import csv
import gzip
import json
import logging
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

MECHANISMS = ("emotional_reactions", "interpretations", "explorations")
LEVELS = ("none", "weak", "strong")
SPLITS = ("train", "valid", "test")
ROLES = ("Speaker", "Listener")

ED_DIR = "empatheticdialogues"
EPITOME_DIR = "epitome"
EPITOME_FILES = {
    "emotional_reactions": "emotional-reactions-reddit.csv",
    "interpretations": "interpretations-reddit.csv",
    "explorations": "explorations-reddit.csv",
}
ED_CSV_COLUMNS = ("conv_id", "utterance_idx", "context", "prompt", "speaker_idx", "utterance", "selfeval", "tags")
EPITOME_COLUMNS = ("sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales")
DOWNLOAD_COMMAND = "python -m emprl.download --data-dir DIR"


class DataFormatError(ValueError):
    """Malformed input file; the message names the file and, where known, the line."""


def resolve_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The data directory: the explicit argument, else ``$EMPRL_DATA_DIR``, else None.

    None means "no real data": the smoke profile then falls back to the bundled sample.
    """
    value = explicit if explicit not in (None, "") else os.environ.get("EMPRL_DATA_DIR")
    if value in (None, ""):
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {path} does not exist (set EMPRL_DATA_DIR or pass data_dir; "
            f"`{DOWNLOAD_COMMAND}` fetches the official files)"
        )
    return path


def sample_data_dir() -> Path:
    """The bundled smoke sample (invented data written by emprl.smoke_sample into a cache folder)."""
    from emprl import smoke_sample

    return smoke_sample.ensure()


def _missing_file(path: Path | str, root: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"expected data file {path} does not exist. Fetch the official files with "
        f"`python -m emprl.download --data-dir {root}` (or put them there by hand: see "
        f"`python -m emprl.download --help`), or point EMPRL_DATA_DIR at a directory that has them."
    )


def _root(data_dir: str | Path | None) -> Path:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise FileNotFoundError(
            "no data directory: pass data_dir or set EMPRL_DATA_DIR "
            f"(`{DOWNLOAD_COMMAND}` fetches the official files; the smoke profile uses the bundled sample "
            "through emprl.data.dataset_dir)"
        )
    return root


# =========================================================================== EmpatheticDialogues


@dataclass(frozen=True, slots=True)
class Dialogue:
    conv_id: str
    emotion: str
    situation: str
    turns: tuple[str, ...]  # turns[0] by the Speaker, then alternating Listener / Speaker


@dataclass(frozen=True, slots=True)
class DialogueExample:
    """One listener turn: ``response = turns[turn]``, ``context = turns[:turn]`` (context[0] by the Speaker)."""

    conv_id: str
    emotion: str
    situation: str
    context: tuple[str, ...]
    response: str
    turn: int  # zero-based index of the response in its dialogue: 1, 3, 5, ...

    @property
    def id(self) -> str:
        """``conv_id/turn``: unique in a split (a dialogue gives one example per listener turn)."""
        return f"{self.conv_id}/{self.turn}"


def load_dialogues(split: str, data_dir: str | Path | None = None) -> list[Dialogue]:
    """The dialogues of one split, in file order, from ``{split}.jsonl.gz`` if it exists, else ``{split}.csv``.

    Utterances are stripped of surrounding whitespace (the rebuilt layout already is) and kept even
    when empty, so that roles keep alternating by position.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    root = _root(data_dir)
    jsonl, raw = root / ED_DIR / f"{split}.jsonl.gz", root / ED_DIR / f"{split}.csv"
    if jsonl.is_file():
        return _read_jsonl(jsonl)
    if raw.is_file():
        return _read_official_csv(raw)
    raise _missing_file(f"{raw} (or {jsonl.name} beside it)", root)


def dialogue_examples(dialogues: Sequence[Dialogue]) -> list[DialogueExample]:
    """One example per listener turn (zero-based turn 1, 3, 5, ...; the paper's even-numbered u_2, u_4, ...).

    A listener turn that is empty gives no example (counted, with a warning): it is no target to learn
    or score. On the shared data there are none: 40,252 / 5,736 / 5,257 examples (train/valid/test).
    """
    examples, empty = [], 0
    for d in dialogues:
        for t in range(1, len(d.turns), 2):
            if not d.turns[t]:
                empty += 1
                continue
            examples.append(DialogueExample(d.conv_id, d.emotion, d.situation, d.turns[:t], d.turns[t], t))
    if empty:
        warnings.warn(f"skipped {empty} empty listener turn(s): they give no example", stacklevel=2)
    return examples


def load_empathetic_dialogues(split: str, data_dir: str | Path | None = None) -> list[DialogueExample]:
    """The paper's examples of one split: one per listener turn, context = all preceding utterances."""
    return dialogue_examples(load_dialogues(split, data_dir))


def _read_jsonl(path: Path) -> list[Dialogue]:
    """Rebuilt layout: one JSON object a line with conv_id, emotion, situation, turns (list of str)."""
    dialogues = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    turns = obj["turns"]
                    if not isinstance(turns, list) or not all(isinstance(u, str) for u in turns):
                        raise TypeError("'turns' must be a list of strings")
                    dialogues.append(
                        Dialogue(str(obj["conv_id"]), str(obj["emotion"]), str(obj["situation"]),
                                 tuple(u.strip() for u in turns))
                    )
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                    what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
                    raise DataFormatError(f"{path}, line {line_no}: malformed dialogue ({what})") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(f"{path}: cannot read as gzip-compressed UTF-8 JSON lines ({e})") from None
    return dialogues


def _read_official_csv(path: Path) -> list[Dialogue]:
    """Official release layout: columns conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags.

    The release never quotes fields; commas inside text are written ``_comma_``. So each line is split on
    every comma (``csv.QUOTE_NONE``: quote characters are text) and ``_comma_`` becomes ",". Some rows are
    ragged: in the newer valid/test files listener rows carry a 9th field of inline response candidates.
    Such rows keep the 8 known columns (only the first 6 are used) and the extra fields are dropped and
    counted in the log. A row with fewer than 8 fields, a non-integer utterance_idx, or turns out of order
    (each conversation's rows are contiguous, utterance_idx 1, 2, ...) is an error naming file and line.
    Emotion = ``context``, situation = ``prompt``; roles follow position (``speaker_idx`` is not used).
    """
    rows: dict[str, list[Any]] = {}
    ragged, current = 0, None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header[:8]) != ED_CSV_COLUMNS:
                raise DataFormatError(f"{path}, line 1: expected the header {','.join(ED_CSV_COLUMNS)}, got {header}")
            for fields in reader:
                line_no = reader.line_num
                if not fields or fields == [""]:
                    continue
                if len(fields) < len(ED_CSV_COLUMNS):
                    raise DataFormatError(
                        f"{path}, line {line_no}: {len(fields)} fields, expected {len(ED_CSV_COLUMNS)} "
                        f"({','.join(ED_CSV_COLUMNS)})"
                    )
                ragged += len(fields) > len(ED_CSV_COLUMNS)
                conv_id, idx, emotion, prompt, _, utterance = fields[:6]
                try:
                    idx = int(idx)
                except ValueError:
                    raise DataFormatError(f"{path}, line {line_no}: utterance_idx {idx!r} is not an integer") from None
                if conv_id != current:
                    if conv_id in rows:
                        raise DataFormatError(f"{path}, line {line_no}: rows of conversation {conv_id} are not contiguous")
                    rows[conv_id] = [emotion, _uncomma(prompt), []]
                    current = conv_id
                turns = rows[conv_id][2]
                if idx != len(turns) + 1:
                    raise DataFormatError(
                        f"{path}, line {line_no}: conversation {conv_id} has utterance_idx {idx}, expected {len(turns) + 1}"
                    )
                turns.append(_uncomma(utterance).strip())
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise DataFormatError(f"{path}, line {reader.line_num}: {e}") from None
    if ragged:
        log.info("%s: %d ragged row(s) with extra fields (inline candidates) read by their 8 known columns", path, ragged)
    return [Dialogue(c, e, s, tuple(t)) for c, (e, s, t) in rows.items()]


def _uncomma(text: str) -> str:
    return text.replace("_comma_", ",")


# =========================================================================== the model's input text


def format_context(context: Sequence[str], max_tokens: int | None = None, tokenizer: Any = None) -> str:
    """The one model input string of a context: ``"Speaker: u1 Listener: u2 Speaker: u3"`` (paper III-A:
    all context utterances concatenated), roles alternating from "Speaker", pieces joined by a space.

    With ``max_tokens``, the string has at most that many tokens, counted by ``tokenizer.tokenize``
    when a tokenizer is given, else as whitespace-separated words. Whole utterances (with their marker)
    are dropped from the left first; then the oldest remaining utterance is cut at a word boundary from
    its left, keeping its marker (dropped too if no word fits), so the latest turns survive. A budget that
    cannot hold the last utterance's marker and one word is a ValueError.
    """
    pieces = [f"{ROLES[i % 2]}: {u}".strip() for i, u in enumerate(context)]
    text = " ".join(pieces)
    if max_tokens is None:
        return text
    if max_tokens < 1:
        raise ValueError(f"format_context: max_tokens must be a positive integer, got {max_tokens!r}")

    def count(s: str) -> int:
        return len(tokenizer.tokenize(s)) if tokenizer is not None else len(s.split())

    # Pieces tokenize additively for whitespace counting, SentencePiece and WordPiece; the loop only
    # tightens the budget for a tokenizer where they don't.
    budget = max_tokens
    while True:
        text = _fit(pieces, budget, count)
        excess = count(text) - max_tokens
        if excess <= 0:
            return text
        budget -= excess



def context_texts(items: Sequence, max_context_tokens: int | None) -> tuple[list[str], list[str]]:
    """(generator inputs, identifier inputs) of contexts: the rule every stage follows.

    The generator sees ``format_context`` truncated to ``max_context_tokens`` words (the profile's
    ``data.max_context_tokens``); the identifiers see the whole ``format_context`` string and truncate
    it from the left to their own token budget, as for the gold labels, so generated and human
    responses are scored alike. ``items``: DialogueExamples, lists of turns, or formatted strings
    (used as they are for both).
    """
    turns = [x.context if hasattr(x, "context") else x for x in items]
    if all(isinstance(t, str) for t in turns):
        return list(turns), list(turns)
    return ([format_context(t, max_tokens=max_context_tokens) for t in turns], [format_context(t) for t in turns])

def _fit(pieces: list[str], budget: int, count) -> str:
    kept: list[str] = []
    for i in range(len(pieces) - 1, -1, -1):
        n = count(pieces[i])
        if n <= budget:
            kept.append(pieces[i])
            budget -= n
            continue
        # Cut the oldest surviving utterance from its left: keep the longest suffix of words that fits.
        marker, _, utterance = pieces[i].partition(" ")
        words = utterance.split()
        lo, hi = 0, len(words)  # smallest start s with count(marker + words[s:]) <= budget; s == len(words): marker only
        while lo < hi:
            mid = (lo + hi) // 2
            if count(" ".join([marker, *words[mid:]])) <= budget:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(words):  # a cut utterance with no word left is dropped
            kept.append(" ".join([marker, *words[lo:]]))
        break
    if pieces and not kept:
        raise ValueError("format_context: max_tokens is too small to hold the last utterance's marker and one word")
    return " ".join(reversed(kept))


# =========================================================================== EPITOME (Mental Health Subreddits)


@dataclass(frozen=True)
class EpitomeRecord:
    sp_id: str
    rp_id: str
    seeker_post: str
    response_post: str
    levels: dict[str, int]  # mechanism -> 0 (no), 1 (weak), 2 (strong) communication


def load_epitome(data_dir: str | Path | None = None, return_stats: bool = False):
    """The three EPITOME Reddit files joined on (sp_id, rp_id): one record per distinct pair.

    Repeated pairs: each file repeats 61 rows (60 pairs twice, one three times; 3,084 rows, 3,023 pairs).
    Identical copies (same texts and level) are dropped. Copies that disagree take the most frequent
    level, ties going to the copy that comes first in the file. On the released files all disagreements
    are on the level (never the texts): 10 pairs in emotional reactions, 10 in interpretations and
    5 in explorations, 19 distinct pairs in all; only one is decided by a majority (explorations
    0, 0, 2 -> 0), the others keep the first copy. A warning reports the counts.
    Texts come from the emotional-reactions file: the three files disagree on the seeker text of 259
    pairs and the response text of 442, all but 5 and 31 of them in whitespace only.
    Record order: first appearance in the emotional-reactions file.

    Returns the records, or ``(records, stats)`` with ``return_stats`` (rows, duplicates, conflicts).
    """
    root = _root(data_dir)
    per_file: dict[str, dict[tuple[str, str], tuple[str, str, int]]] = {}
    stats: dict[str, Any] = {"rows": {}, "pairs": {}, "duplicate_rows_dropped": {}, "conflicting_pairs": {}}
    conflicting: set[tuple[str, str]] = set()
    for mechanism, name in EPITOME_FILES.items():
        path = root / EPITOME_DIR / name
        if not path.is_file():
            raise _missing_file(path, root)
        copies = _read_epitome_csv(path)
        resolved = {}
        for pair, rows in copies.items():
            levels = collections.Counter(r[2] for r in rows)  # insertion order: ties go to the first copy
            if len(set(rows)) > 1:
                conflicting.add(pair)
                stats["conflicting_pairs"][mechanism] = stats["conflicting_pairs"].get(mechanism, 0) + 1
            seeker, response, _ = rows[0]
            resolved[pair] = (seeker, response, levels.most_common(1)[0][0])
        per_file[mechanism] = resolved
        stats["rows"][mechanism] = sum(len(r) for r in copies.values())
        stats["pairs"][mechanism] = len(resolved)
        stats["duplicate_rows_dropped"][mechanism] = stats["rows"][mechanism] - len(resolved)
        stats["conflicting_pairs"].setdefault(mechanism, 0)

    first = MECHANISMS[0]
    for mechanism in MECHANISMS[1:]:
        only_first = per_file[first].keys() - per_file[mechanism].keys()
        only_this = per_file[mechanism].keys() - per_file[first].keys()
        if only_first or only_this:
            example = sorted(only_first or only_this)[0]
            raise DataFormatError(
                f"{root / EPITOME_DIR / EPITOME_FILES[mechanism]}: the three EPITOME files must hold the same "
                f"(sp_id, rp_id) pairs; {len(only_first)} pair(s) of {EPITOME_FILES[first]} are missing here and "
                f"{len(only_this)} are extra, e.g. {example}"
            )

    records = []
    text_differs = {"seeker_post": 0, "response_post": 0, "seeker_post_beyond_whitespace": 0, "response_post_beyond_whitespace": 0}
    for pair, (seeker, response, _) in per_file[first].items():
        for i, field in enumerate(("seeker_post", "response_post")):
            texts = {per_file[m][pair][i] for m in MECHANISMS}
            text_differs[field] += len(texts) > 1
            text_differs[field + "_beyond_whitespace"] += len({" ".join(t.split()) for t in texts}) > 1
        levels = {m: per_file[m][pair][2] for m in MECHANISMS}
        records.append(EpitomeRecord(pair[0], pair[1], seeker, response, levels))
    stats["records"] = len(records)
    stats["pairs_with_any_conflict"] = len(conflicting)
    stats["text_differences_across_files"] = text_differs
    if conflicting:
        warnings.warn(
            f"EPITOME: {len(conflicting)} (sp_id, rp_id) pair(s) have copies with different levels "
            f"(per mechanism: {stats['conflicting_pairs']}); kept the majority level, ties to the first copy",
            stacklevel=2,
        )
    return (records, stats) if return_stats else records


def _read_epitome_csv(path: Path) -> dict[tuple[str, str], list[tuple[str, str, int]]]:
    """(sp_id, rp_id) -> its rows (seeker_post, response_post, level), in file order (standard quoted CSV)."""
    copies: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != EPITOME_COLUMNS:
                raise DataFormatError(f"{path}, line 1: expected the header {','.join(EPITOME_COLUMNS)}, got {header}")
            start = reader.line_num + 1
            for fields in reader:
                line_no, start = start, reader.line_num + 1  # a record may span lines (newlines in posts)
                if not fields:
                    continue
                if len(fields) != len(EPITOME_COLUMNS):
                    raise DataFormatError(f"{path}, line {line_no}: {len(fields)} fields, expected {len(EPITOME_COLUMNS)}")
                sp_id, rp_id, seeker, response, level = fields[:5]
                if level.strip() not in ("0", "1", "2"):
                    raise DataFormatError(f"{path}, line {line_no}: level {level!r} is not 0, 1 or 2")
                if not sp_id or not rp_id:
                    raise DataFormatError(f"{path}, line {line_no}: empty sp_id or rp_id")
                copies.setdefault((sp_id, rp_id), []).append((seeker, response, int(level)))
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise DataFormatError(f"{path}, line {reader.line_num}: {e}") from None
    return copies


def split_epitome(
    records: Sequence[EpitomeRecord], seed: int = 0, val_fraction: float = 0.2
) -> tuple[list[EpitomeRecord], list[EpitomeRecord]]:
    """Deterministic train/validation split (paper III-B: 20% for validation), grouped and stratified.

    Grouped by seeker post (sp_id), so no (sp_id, rp_id) pair, and no seeker post, is on both sides
    (43 seeker posts of the real files have 2-3 responses). Stratified on the joint levels of the three
    mechanisms (the group's first record by rp_id): each stratum sends round-ish ``val_fraction`` of its
    groups to validation, the remainders allotted by largest fraction so the total is
    ``round(val_fraction * groups)``. Depends only on the records' content and ``seed``, not their order.
    Both lists keep the input order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split_epitome: val_fraction must be in (0, 1), got {val_fraction!r}")
    groups: dict[str, list[EpitomeRecord]] = collections.defaultdict(list)
    for r in records:
        groups[r.sp_id].append(r)
    strata: dict[tuple[int, ...], list[str]] = collections.defaultdict(list)
    for sp_id in sorted(groups):
        head = min(groups[sp_id], key=lambda r: r.rp_id)
        strata[tuple(head.levels[m] for m in MECHANISMS)].append(sp_id)

    rng = random.Random(seed)
    keys = sorted(strata)
    for key in keys:
        rng.shuffle(strata[key])
    quota = {k: val_fraction * len(strata[k]) for k in keys}
    take = {k: int(quota[k]) for k in keys}
    remainder = round(val_fraction * len(groups)) - sum(take.values())
    tiebreak = {k: rng.random() for k in keys}
    for k in sorted(keys, key=lambda k: (-(quota[k] - take[k]), tiebreak[k]))[:remainder]:
        take[k] += 1
    val_ids = {sp_id for k in keys for sp_id in strata[k][: take[k]]}
    train = [r for r in records if r.sp_id not in val_ids]
    val = [r for r in records if r.sp_id in val_ids]
    return train, val


# =========================================================================== profiles


def dataset_dir(profile_name: str, data_dir: str | Path | None = None) -> Path:
    """The data directory of a run: explicit or $EMPRL_DATA_DIR; else the bundled sample for "smoke"."""
    root = resolve_data_dir(data_dir)
    if root is not None:
        return root
    if profile_name == "smoke":
        return sample_data_dir()
    raise FileNotFoundError(
        f"profile {profile_name!r} needs the real datasets: set EMPRL_DATA_DIR (or pass data_dir) to a directory "
        f"with empatheticdialogues/ and epitome/; `{DOWNLOAD_COMMAND}` fetches them. "
        "Only the smoke profile runs on the bundled sample."
    )


def _profile(profile):
    from emprl.profiles import get_profile

    return get_profile(profile) if isinstance(profile, str) else profile


def load_split(profile, split: str, data_dir: str | Path | None = None) -> list[DialogueExample]:
    """A split's examples for a profile (a Profile or its name), capped at the first ``max_<split>``."""
    p = _profile(profile)
    examples = load_empathetic_dialogues(split, dataset_dir(p.name, data_dir))
    cap = {"train": p.data.max_train, "valid": p.data.max_valid, "test": p.data.max_test}[split]
    return examples if cap is None else examples[:cap]


def load_epitome_for(profile, data_dir: str | Path | None = None) -> list[EpitomeRecord]:
    """EPITOME records for a profile (a Profile or its name), capped at the first ``max_epitome``."""
    p = _profile(profile)
    records = load_epitome(dataset_dir(p.name, data_dir))
    return records if p.data.max_epitome is None else records[: p.data.max_epitome]


def visited_subset(examples: Sequence, steps: int, batch_size: int, seed: int = 0) -> list:
    """The examples a ``steps``-step PPO run draws from: all of them if ``steps * batch_size`` covers
    them, else a seeded random subset of that size (in the original order), so that gold labels are
    computed only for contexts the run will visit (the paper's 24,000 x 8 visits every example)."""
    import numpy as np

    n_visit = steps * batch_size
    if n_visit >= len(examples):
        return list(examples)
    keep = np.random.default_rng(seed).choice(len(examples), n_visit, replace=False)
    return [examples[i] for i in sorted(keep)]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little padding is computed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
