"""emprl.rl.controls: a configuration beside its placebo twin at a training seed, trained then evaluated on the
validation split into the committed levels files; resumable, listed, and run by workers without overlap."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from emprl.eval import evaluation
from emprl.models import encoders, generator as G
from emprl.models import identifiers as I
from emprl.profiles import IdentifierConfig
from emprl.rl import controls, study
from test_generator import corpus, tiny_cfg
from test_identifiers import tiny_identifier

SETTINGS = ["study.long_steps=2", "ppo.checkpoint_every=1", "evaluation.study_max_examples=6",
            "evaluation.samples_per_context=2", "evaluation.bootstrap=20"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny identifiers and a tiny prefix-tuned generator where the runs expect them."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("checkpoints")
    tokenizer = encoders.load_tokenizer("minilm")
    for k, m in enumerate(("emotional_reactions", "interpretations", "explorations")):
        I.save_identifier(tiny_identifier(seed=10 * k), tokenizer, folder / "identifiers" / m,
                          IdentifierConfig(max_context_len=24, max_response_len=12))
    contexts, responses = corpus(40, 0)
    model, tok = G.build_generator(tiny_cfg(tuning="prefix"), contexts + responses, seed=0)
    G.save_generator(model.eval(), tok, folder / "generator" / "prefix")
    return folder


def test_a_run_and_its_placebo_twin_train_evaluate_and_resume(checkpoints, tmp_path, monkeypatch):
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)  # the bundled smoke sample
    common = dict(out=tmp_path / "out", root=tmp_path / "runs", checkpoints=checkpoints, overrides=SETTINGS)
    rows = {v: controls.run_control("smoke", "repaired, lr 1e-4", v, 1, **common) for v in controls.VARIANTS}
    for variant in controls.VARIANTS:
        name = controls.run_name("repaired, lr 1e-4", variant, 1)
        record = evaluation.read_json_gz(evaluation.levels_path(tmp_path / "out", "valid", name))
        assert record["m"] == 2 and len(record["ids"]) == 6 and record["nll"] is not None
        log = pd.read_csv(tmp_path / "out" / "controls" / evaluation.system_stem(name) / "log.csv")
        assert len(log) == 2  # study.long_steps
    # each variant trained on its own (test_ppo checks what the placebo's reward is)
    for variant in controls.VARIANTS:
        state = tmp_path / "runs" / study.arm_folder("repaired, lr 1e-4") / "seed1" / "checkpoints" / "ppo" / variant
        assert (state / "train_state.safetensors").is_file()
    # a rerun resumes: the finished state, the cached evaluation, the same row
    again = controls.run_control("smoke", "repaired, lr 1e-4", "emprl", 1, **common)
    assert again["emp_f1"] == rows["emprl"]["emp_f1"] and again.get("cached")


def test_the_run_list_and_its_split_between_workers(tmp_path, capsys):
    runs = controls.all_runs()
    assert len(runs) == len(study.CONTROLS) * len(controls.VARIANTS) * len(study.CONTROL_SEEDS)
    assert runs[: 2 * len(study.CONTROLS)] == [(c, v, 0) for c in study.CONTROLS for v in controls.VARIANTS]
    assert controls.main(["--profile", "smoke", "--out", str(tmp_path), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 + len(runs) and all(line.startswith("to do") for line in listed)
    with pytest.raises(ValueError, match="unknown control configuration"):
        controls.run_control("smoke", "nope", "emprl", 0, out=tmp_path)
