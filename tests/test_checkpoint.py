"""The atomic writers and the resume rule of emprl.checkpoint."""

from __future__ import annotations

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
    with pytest.raises(ValueError, match="state.json.*different run configuration"):
        ckpt.check_key(path, {"lr": 1}, {"lr": 2})
    assert ckpt.check_key(path, {"lr": 1}, {"lr": 2}, restart=True) is False


def test_optimizer_state_round_trips_in_both_key_layouts(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for prefix, sep in (("optim/", "/"), ("", ".")):  # PPO's and the generator's files
        tensors, meta = ckpt.optimizer_to_flat(opt.state_dict(), prefix, sep)
        ckpt.save_tensors(tmp_path / "o.safetensors", tensors)
        fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
        fresh.load_state_dict(ckpt.optimizer_from_flat(ckpt.load_tensors(tmp_path / "o.safetensors"), meta, prefix, sep))
        for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
            assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
