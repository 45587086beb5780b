"""python -m emprl.eval.rescore: committed generations scored by an evaluator into the levels files."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import torch

from emprl import data
from emprl.eval import evaluation, rescore
from emprl.profiles import get_profile


class TextScorer:
    """Stand-in evaluator: levels are a checksum of (context, response), so any mix-up of pairs shows."""

    def levels(self, contexts, responses):
        return torch.tensor([[zlib.crc32(f"{k}|{c}|{r}".encode()) % 3 for k in range(3)]
                             for c, r in zip(contexts, responses)])


@pytest.fixture()
def out(tmp_path, monkeypatch):
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)  # the bundled smoke sample
    monkeypatch.setattr(rescore, "load_evaluator", lambda *a, **k: TextScorer())
    return tmp_path


def smoke_test_split():
    P = get_profile("smoke")
    test = data.load_split(P, "test", data.dataset_dir("smoke"))
    return test, data.context_texts(test, P.data.max_context_tokens)[1]


@pytest.mark.parametrize("slice_size", [4, 250])  # slices that cut the test split, and one that holds it all
def test_rescore_writes_each_pairs_levels_then_skips_what_is_done(out, slice_size):
    test, contexts = smoke_test_split()
    assert len(test) > 4 and len(test) % 4  # a last slice shorter than the others
    ids = [ex.id for ex in test]
    a = [f"reply {j} to {i}" for j in range(2) for i in range(len(ids))]  # m = 2 blocks of N
    b = [f"other {i}" for i in range(len(ids))]
    evaluation.write_system_generations(out / "generations", "05_test", ids, {"A": a})
    evaluation.write_system_generations(out / "generations", "06_test", ids, {"A": a, "B": b})  # A again, same
    written = rescore.rescore("smoke", "reward", out=out, slice_size=slice_size)
    assert set(written) == {"gold", "A", "B"}
    assert not (out / "metrics" / "config.json").exists()  # a rendered run's record is left alone
    record = evaluation.read_json_gz(evaluation.levels_path(out, "test", "A"))
    assert record["m"] == 2 and record["ids"] == ids
    levels = np.asarray(record["evaluators"]["reward"]["levels"])  # [N, m, 3]
    for i in range(len(ids)):
        for j in range(2):
            expected = [zlib.crc32(f"{k}|{contexts[i]}|reply {j} to {i}".encode()) % 3 for k in range(3)]
            assert levels[i, j].tolist() == expected
    gold = evaluation.read_json_gz(evaluation.gold_levels_path(out, "test"))["evaluators"]["reward"]
    assert gold == [[zlib.crc32(f"{k}|{contexts[i]}|{test[i].response}".encode()) % 3 for k in range(3)]
                    for i in range(len(ids))]
    b_levels = np.asarray(
        evaluation.read_json_gz(evaluation.levels_path(out, "test", "B"))["evaluators"]["reward"]["levels"])
    assert b_levels[-1, 0].tolist() == [zlib.crc32(f"{k}|{contexts[-1]}|{b[-1]}".encode()) % 3 for k in range(3)]
    ledger = evaluation.read_ledger(out / evaluation.LEDGER_NAME)
    assert [e["system"] for e in ledger] == ["A [reward on committed generations]",
                                             "B [reward on committed generations]"]
    assert rescore.rescore("smoke", "reward", out=out) == {}  # all present: nothing scored, nothing logged
    assert set(rescore.rescore("smoke", "reward", out=out, force=True, systems=["gold"])) == {"gold"}
    assert set(rescore.rescore("smoke", "reward", out=out, force=True, systems=["B"])) == {"B"}  # gold not named
    assert set(rescore.rescore("smoke", "reward", out=out, force=True, systems=["gold", "B"])) == {"gold", "B"}
    with pytest.raises(ValueError, match=r"--system \['C'\]: no generations file"):
        rescore.rescore("smoke", "reward", out=out, systems=["C"])
    assert len(evaluation.read_ledger(out / evaluation.LEDGER_NAME)) == 4  # B twice more


def test_a_system_in_two_files_must_agree_and_every_pair_must_be_there(out):
    test, _ = smoke_test_split()
    ids = [ex.id for ex in test]
    evaluation.write_system_generations(out / "generations", "05_test", ids, {"A": ["x"] * len(ids)})
    evaluation.write_system_generations(out / "generations", "06_test", ids, {"A": ["y"] * len(ids)})
    with pytest.raises(ValueError, match="both hold 'A' but differ"):
        rescore.rescore("smoke", "reward", out=out)
    (out / "generations" / "06_test_a_responses.jsonl.gz").unlink()
    path = out / "generations" / "05_test_a_responses.jsonl.gz"
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(b"".join(lines[:-1])))  # one (context, sample) lost
    with pytest.raises(ValueError, match="1 of .* responses are missing"):
        rescore.rescore("smoke", "reward", out=out)


def test_train_frequencies_count_the_ppo_contexts_and_keep_the_other_evaluators(out):
    P = get_profile("smoke")
    evaluation.write_train_frequencies(out, "judge", np.full((3, 3), 1 / 3), n=7, source="another evaluator's")
    path = rescore.train_frequencies("smoke", "reward", out=out, slice_size=5)
    record = json.loads(path.read_text())
    train = data.visited_subset(data.load_split(P, "train", data.dataset_dir("smoke")), P.ppo.steps,
                                P.ppo.batch_size, P.seed)
    contexts = data.context_texts(train, P.data.max_context_tokens)[1]
    levels = np.array([[zlib.crc32(f"{k}|{c}|{ex.response}".encode()) % 3 for k in range(3)]
                       for c, ex in zip(contexts, train)])
    expected = [[float(np.mean(levels[:, k] == v)) for v in range(3)] for k in range(3)]
    assert np.allclose(record["evaluators"]["reward"], expected)
    assert record["counted"]["reward"] == {"n": len(train), "source": evaluation.TRAIN_SOURCE}
    assert record["evaluators"]["judge"] == np.full((3, 3), 1 / 3).tolist()
    assert record["counted"]["judge"]["n"] == 7


def test_replies_to_the_first_test_contexts_only_are_left_to_their_notebook(out, capsys):
    test, _ = smoke_test_split()
    ids = [ex.id for ex in test]
    evaluation.write_system_generations(out / "generations", "05_test", ids, {"A": [f"a {i}" for i in ids]})
    # notebook 10's: the first contexts of the test split, its levels under levels/test_first<n>_*
    evaluation.write_system_generations(out / "generations", "10_test", ids[:3], {"LLM": ["x", "y", "z"]})
    with pytest.raises(ValueError, match="responses are missing"):  # without its own levels: an incomplete file
        rescore.rescore("smoke", "judge", out=out)
    evaluation.write_levels(out, "test_first3", "LLM", ids[:3], {"judge": np.zeros((3, 3), dtype=int)})
    written = rescore.rescore("smoke", "judge", out=out)
    assert set(written) == {"gold", "A"}
    assert not evaluation.levels_path(out, "test", "LLM").exists()
    assert "LLM: 3 of" in capsys.readouterr().out
