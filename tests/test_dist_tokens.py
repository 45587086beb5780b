"""Dist-n with the authors' tokens (nltk word_tokenize, case kept) and the generations file."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from emprl.eval import evaluation
from emprl.eval import metrics as M


def test_nltk_tokens_keep_case_and_split_clitics_like_treebank(monkeypatch):
    monkeypatch.setattr(M, "punkt_tab_verified", lambda: False)
    # hand-written Penn Treebank tokens: clitics split, case kept, only the final period split off
    assert M.nltk_tokenize("I'm so sorry. That's awful!") == ["I", "'m", "so", "sorry.", "That", "'s", "awful", "!"]
    assert M.nltk_tokenize("Don't worry, Bob.") == ["Do", "n't", "worry", ",", "Bob", "."]
    # Dist-1 by hand: "Oh no." + "oh no!" -> Oh, no, ., oh, no, ! -> 5 distinct of 6 (case kept)
    assert M.distinct_n(["Oh no.", "oh no!"], 1, tokenizer="nltk") == pytest.approx(100 * 5 / 6)
    assert M.distinct_n(["Oh no.", "oh no!"], 1, tokenizer="word") == pytest.approx(100 * 4 / 6)  # oh, no, ., !
    assert "preserve_line" in M.tokenizer_label("nltk")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        M.tokenizer_label("bpe")


def test_punkt_tab_is_used_only_when_its_checksum_verifies(tmp_path, monkeypatch):
    import nltk

    M.punkt_tab_verified.cache_clear()
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    assert not M.punkt_tab_verified()
    (tmp_path / "tokenizers" / "punkt_tab" / "english").mkdir(parents=True)
    (tmp_path / "tokenizers" / "punkt_tab.zip").write_bytes(b"not the real zip")
    M.punkt_tab_verified.cache_clear()
    assert not M.punkt_tab_verified()  # present, but the checksum fails
    monkeypatch.setattr(M, "PUNKT_TAB_SHA256", hashlib.sha256(b"not the real zip").hexdigest())
    M.punkt_tab_verified.cache_clear()
    assert M.punkt_tab_verified()
    M.punkt_tab_verified.cache_clear()


def test_sentence_split_gap_by_hand(monkeypatch):
    responses = ["I am sorry. That is sad.", "Oh no!", "Why. Why. Why"]
    gap = M.nltk_sentence_split_gap(responses)
    # inner sentence-final periods: "sorry." (1) and "Why." twice (2); 2 of 3 responses touched
    assert gap["responses_touched_pct"] == pytest.approx(100 * 2 / 3)
    # approx tokens: [I, am, sorry., That, is, sad, .] [Oh, no, !] [Why., Why., Why] -> 13 tokens, 3 touched
    assert gap["tokens_touched_pct"] == pytest.approx(100 * 3 / 13)
    # Dist-1 approx: distinct {I, am, sorry., That, is, sad, ., Oh, no, !, Why., Why} = 12 of 13
    assert gap["dist1_approx"] == pytest.approx(100 * 12 / 13)
    # all split: [I, am, sorry, ., That, is, sad, .] [Oh, no, !] [Why, ., Why, ., Why] -> 16 tokens,
    # distinct {I, am, sorry, ., That, is, sad, Oh, no, !, Why} = 11
    assert gap["dist1_all_split"] == pytest.approx(100 * 11 / 16)


def test_generations_file_round_trip_and_is_byte_identical(tmp_path):
    gens = {"EmpRL": ["so sorry", "oh no é", "hm", "why?"], "w/o RL": ["ok", "what happened?"]}  # m = 2 and 1
    a = evaluation.write_generations(tmp_path / "a.jsonl.gz", ["t0", "t1"], gens)
    b = evaluation.write_generations(tmp_path / "b.jsonl.gz", ["t0", "t1"], gens)
    assert a.read_bytes() == b.read_bytes()
    rows = evaluation.read_generations(a)
    assert rows == [{"id": "t0", "system": "EmpRL", "sample": 0, "response": "so sorry"},
                    {"id": "t1", "system": "EmpRL", "sample": 0, "response": "oh no é"},
                    {"id": "t0", "system": "EmpRL", "sample": 1, "response": "hm"},
                    {"id": "t1", "system": "EmpRL", "sample": 1, "response": "why?"},
                    {"id": "t0", "system": "w/o RL", "sample": 0, "response": "ok"},
                    {"id": "t1", "system": "w/o RL", "sample": 0, "response": "what happened?"}]
    with gzip.open(a, "rt") as f:
        assert len(f.read().splitlines()) == 6
    with pytest.raises(ValueError, match="'EmpRL' has 3 responses for 2 ids"):
        evaluation.write_generations(tmp_path / "c.jsonl.gz", ["t0", "t1"], {"EmpRL": ["x", "y", "z"]})


def test_tables_name_their_tokenizer(monkeypatch):
    import numpy as np

    from emprl.profiles import get_profile

    monkeypatch.setattr(M, "punkt_tab_verified", lambda: False)
    P = get_profile("smoke")
    assert P.evaluation.tokenizer == "nltk"
    assert evaluation.describe_run(P).endswith("Dist-n tokens: " + M.tokenizer_label("nltk"))
    gold = np.zeros((3, 3), dtype=int)
    systems = {"A": {"responses": ["so sorry.", "oh no", "why?"], "levels": gold},
               "B": {"responses": ["ok", "ok", "ok"], "levels": gold}}
    table = evaluation.paired_tests(systems, gold, [("A", "B")], tokenizer="word", n_boot=20)
    assert list(table["Dist-n tokenizer"]) == [M.tokenizer_label("word")] * 2 + ["-"] * 3  # Emp-F1, kappa, match
