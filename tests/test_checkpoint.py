"""The atomic writers and the resume rule of emprl.checkpoint."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from emprl import checkpoint as ckpt


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a" / "f.txt"
    ckpt.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with ckpt.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]
    with ckpt.atomic_file(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"


def test_atomic_dir_swaps_a_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "model"
    with ckpt.atomic_dir(target) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(ValueError):
        with ckpt.atomic_dir(target) as tmp:
            (tmp / "w").write_text("2")
            raise ValueError("crash mid-save")
    assert (target / "w").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with ckpt.atomic_dir(target) as tmp:
        (tmp / "v").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["v"]  # replaced, not merged
    with ckpt.atomic_dir(target, replace=False) as tmp:  # another writer got there first: keep theirs
        (tmp / "x").write_text("4")
    assert sorted(p.name for p in target.iterdir()) == ["v"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_check_key_resumes_matches_and_names_the_file_otherwise(tmp_path):
    path = tmp_path / "state.json"
    assert ckpt.check_key(path, {"lr": 1}, {"lr": 1})
    with pytest.raises(ValueError, match=r"state.json.*different run configuration.*: lr \(saved 1, now 2\);"):
        ckpt.check_key(path, {"lr": 1}, {"lr": 2})
    assert ckpt.check_key(path, {"lr": 1}, {"lr": 2}, restart=True) is False


def test_optimizer_state_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, meta = ckpt.optimizer_to_flat(opt.state_dict())
    assert sorted(tensors) == [f"optim/{i}/{k}" for i in (0, 1) for k in ("exp_avg", "exp_avg_sq", "step")]
    ckpt.save_tensors(tmp_path / "o.safetensors", tensors)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(ckpt.optimizer_from_flat(ckpt.load_tensors(tmp_path / "o.safetensors"), meta))
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))


# --------------------------------------------------------------------------- training state


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_training_state_restores_parameters_optimizer_every_rng_and_checks_the_key(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)  # frozen: not in the state
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "train_state.safetensors"
    ckpt.save_training_state(path, model, opt, {"lr": 0.1}, {"step": 3, "history": [1.5]},
                             tensors={"log": torch.ones(2)})
    expected = _draws()
    saved_params = {n: p.clone() for n, p in ckpt.trainable(model).items()}

    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # another process
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    other[0].weight.requires_grad_(False)
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=0.1)
    tensors, meta = ckpt.load_training_state(path, other, other_opt, {"lr": 0.1})
    assert _draws() == expected
    assert all(torch.equal(p, saved_params[n]) for n, p in ckpt.trainable(other).items())
    assert not any(k.startswith("param/0.weight") for k in tensors)
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert meta["step"] == 3 and meta["history"] == [1.5] and torch.equal(tensors["log"], torch.ones(2))
    with pytest.raises(ValueError, match="train_state.safetensors.*different run configuration"):
        ckpt.load_training_state(path, other, other_opt, {"lr": 0.2})


# --------------------------------------------------------------------------- keyed result caches


@pytest.mark.parametrize("name", ["entry.json", "entry.safetensors"])
def test_cache_hit_miss_on_another_key_and_overwrite(tmp_path, name):
    path = tmp_path / "c" / name
    result = {"responses": ["a", "b"], "ppl": 1.5}
    if name.endswith(".safetensors"):
        result["logits"] = torch.randn(2, 3, 3)
    assert ckpt.load_cached(path, {"seed": 0}) is None  # nothing yet
    ckpt.save_cached(path, {"seed": 0, "decoding": (20, 0.9)}, result)
    hit = ckpt.load_cached(path, {"decoding": [20, 0.9], "seed": 0})  # key order and tuples vs lists: equal
    assert hit.keys() == result.keys() and hit["responses"] == ["a", "b"] and hit["ppl"] == 1.5
    if "logits" in result:
        assert torch.equal(hit["logits"], result["logits"])
    assert ckpt.load_cached(path, {"seed": 1, "decoding": [20, 0.9]}) is None  # another key: stale
    ckpt.save_cached(path, {"seed": 1}, {"ppl": 2.0})  # recomputed: replaces the stale entry
    assert ckpt.load_cached(path, {"seed": 1}) == {"ppl": 2.0} and ckpt.load_cached(path, {"seed": 0}) is None
    assert sorted(p.name for p in path.parent.iterdir()) == [name]


@pytest.mark.parametrize("name", ["entry.json", "entry.safetensors"])
def test_a_corrupt_cache_file_is_stale(tmp_path, name):
    path = tmp_path / name
    for junk in (b"", b"{not json", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", b'{"no": "key"}', b"[1, 2]"):
        path.write_bytes(junk)
        assert ckpt.load_cached(path, {"seed": 0}) is None
    with pytest.raises(ValueError, match="a .json or a .safetensors file"):
        ckpt.load_cached(tmp_path / "entry.pt", {"seed": 0})


@pytest.mark.parametrize("name", ["entry.json", "entry.safetensors"])
def test_a_crash_while_writing_the_cache_leaves_the_old_entry_or_none(tmp_path, monkeypatch, name):
    path = tmp_path / name
    real = ckpt._write_payload

    def half_then_die(f, data):
        f.write(data[: len(data) // 2])
        f.flush()
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(ckpt, "_write_payload", half_then_die)
    with pytest.raises(RuntimeError):
        ckpt.save_cached(path, {"seed": 0}, {"ppl": 1.0})
    assert not path.exists() and list(tmp_path.iterdir()) == []  # none
    monkeypatch.setattr(ckpt, "_write_payload", real)
    ckpt.save_cached(path, {"seed": 0}, {"ppl": 1.0})
    monkeypatch.setattr(ckpt, "_write_payload", half_then_die)
    with pytest.raises(RuntimeError):
        ckpt.save_cached(path, {"seed": 1}, {"ppl": 2.0})
    assert ckpt.load_cached(path, {"seed": 0}) == {"ppl": 1.0}  # the old entry
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_key_digest_is_sha256_of_canonical_json():
    import hashlib
    import json

    key = {"b": [1, 2.5, "é"], "a": {"y": None, "x": True}}
    assert ckpt.key_digest(key) == hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    assert ckpt.key_digest(key) == ckpt.key_digest({"a": {"x": True, "y": None}, "b": [1, 2.5, "é"]})


def test_compute_dtype_is_autocasts_inside_it_and_float32_outside():
    assert ckpt.compute_dtype("cpu") == "float32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ckpt.compute_dtype("cpu") == "torch.bfloat16"
        with torch.autocast("cpu", enabled=False):
            assert ckpt.compute_dtype("cpu") == "float32"
    assert ckpt.compute_dtype("cpu") == "float32"
