"""emprl.rl.controls: a configuration beside its placebo twin at a training seed, trained then evaluated on the
validation split into the committed levels files; resumable, listed, and run by workers without overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emprl import data
from emprl.eval import evaluation
from emprl.models import encoders, generator as G
from emprl.models import identifiers as I
from emprl.profiles import IdentifierConfig, get_profile
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
    # the test split: the finished run only evaluates (no step added to its log), recorded in the ledger
    name = controls.run_name("repaired, lr 1e-4", "emprl", 1)
    test_row = controls.run_control("smoke", "repaired, lr 1e-4", "emprl", 1, split="test", **common)
    record = evaluation.read_json_gz(evaluation.levels_path(tmp_path / "out", "test", name))
    P = get_profile("smoke")
    test_ids = [ex.id for ex in data.load_split(P, "test")[: P.evaluation.max_examples]]
    assert record["ids"] == test_ids and test_row["n_examples"] == len(test_ids)
    assert record["m"] == 2 and set(record["evaluators"]) == {"reward"}  # no judge among these checkpoints
    assert record["generations"] == evaluation.generations_path(tmp_path / "out" / "generations", "controls_test",
                                                                 name).relative_to(tmp_path / "out").as_posix()
    assert (tmp_path / "out" / record["generations"]).is_file()
    assert len(pd.read_csv(tmp_path / "out" / "controls" / evaluation.system_stem(name) / "log.csv")) == 2
    ledger = evaluation.read_ledger(tmp_path / "out" / evaluation.LEDGER_NAME)
    assert [(e["system"], e["n"], e["m"], e["cached"]) for e in ledger] == [(name, len(test_ids), 2, False)]
    with pytest.raises(ValueError, match="split must be"):
        controls.run_control("smoke", "repaired, lr 1e-4", "emprl", 1, split="train", **common)


def test_the_run_list_and_its_split_between_workers(tmp_path, capsys):
    seeds = get_profile("smoke").study.control_seeds
    runs = controls.all_runs(seeds)
    assert len(runs) == 1 + len(study.CONTROLS) * len(controls.VARIANTS) * seeds
    assert runs[0] == (None, "emprl", 0) and controls.name_of(*runs[0]) == controls.BASE
    assert runs[1: 1 + 2 * len(study.CONTROLS)] == [(c, v, 0) for c in study.CONTROLS for v in controls.VARIANTS]
    assert controls.main(["--profile", "smoke", "--out", str(tmp_path), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(runs) and all(line.startswith("to do") for line in listed)
    # the test split comes after every validation run: refused, and nothing is trained or evaluated
    with pytest.raises(SystemExit):
        controls.main(["--profile", "smoke", "--out", str(tmp_path), "--split", "test", "--next", "1"])
    assert "no validation record yet" in capsys.readouterr().err
    assert not (tmp_path / "levels").exists() and not (tmp_path / evaluation.LEDGER_NAME).exists()
    with pytest.raises(ValueError, match="unknown control configuration"):
        controls.run_control("smoke", "nope", "emprl", 0, out=tmp_path)


def _agreeing(gold, share, rng, m=2):
    """m blocks of N levels equal to the gold on about ``share`` of the rows."""
    tiled = np.tile(gold, (m, 1))
    return np.where(rng.random(tiled.shape) < share, tiled, rng.integers(0, 3, tiled.shape))


def _random_gold(out, split, n, rng):
    """(ids, {evaluator: [n, 3] random levels}) of both evaluators, written as the split's gold file."""
    ids = [f"{split}{i}" for i in range(n)]
    gold = {"reward": rng.integers(0, 3, (n, 3)), "judge": rng.integers(0, 3, (n, 3))}
    evaluation.write_gold_levels(out, split, ids, gold)
    return ids, gold


def test_summary_reads_the_committed_records_and_picks_the_headline(tmp_path):
    from emprl.eval import metrics

    rng = np.random.default_rng(0)
    n = 300
    ids, gold = _random_gold(tmp_path, "valid", n, rng)
    for e in gold:
        evaluation.write_train_frequencies(tmp_path, e, metrics.level_frequencies(gold[e]), n, "synthetic")
    # "paper" reads its context under the judge (agreement 0.6 vs its placebo's 0.3); "paper, lr 1e-4" does not
    shares = {("paper", "emprl"): 0.6, ("paper", "placebo"): 0.3, ("paper, lr 1e-4", "emprl"): 0.3,
              ("paper, lr 1e-4", "placebo"): 0.3}
    levels = {}

    def write(name, share):
        responses = [f"a reply of about ten words to context {i % n} number {j}" for j in range(2) for i in range(n)]
        levels[name] = {e: _agreeing(gold[e], share, rng) for e in gold}
        evaluation.write_system_generations(tmp_path / "generations", "controls_valid", ids, {name: responses})
        evaluation.write_levels(tmp_path, "valid", name, ids, levels[name], nll=np.full(n, 20.0),
                                tokens=np.full(n, 10.0), generations=evaluation.generations_path(
                                    tmp_path / "generations", "controls_valid", name).relative_to(tmp_path).as_posix())

    write(controls.BASE, 0.3)
    for seed in (0, 1):
        for (config, variant), share in shares.items():
            write(controls.run_name(config, variant, seed), share)
    table, selected, why = controls.summary(tmp_path, "smoke")
    assert list(table.index) == ["paper", "paper, lr 1e-4"] and (table["seeds"] == 2).all()
    expected = metrics.seed_paired_test(
        "kappa", [{"responses": None, "levels": levels[controls.run_name("paper", "emprl", s)]["judge"]} for s in (0, 1)],
        [{"responses": None, "levels": levels[controls.run_name("paper", "placebo", s)]["judge"]} for s in (0, 1)],
        gold["judge"], n_boot=get_profile("smoke").evaluation.bootstrap, seed=0)
    assert table.loc["paper", "kappa over placebo (judge)"] == pytest.approx(expected.delta)
    assert table.loc["paper", "kappa effect low"] == pytest.approx(expected.low)
    assert table.loc["paper", "kappa over placebo (judge)"] > 0.2
    assert abs(table.loc["paper, lr 1e-4", "kappa over placebo (judge)"]) < 0.1
    assert selected == "paper" and "kappa" in why
    from emprl.eval import reading

    text = reading.controls(table, selected, why, smoke=False)
    assert "read its context" in text and "in: paper." in text and "No evidence either way for: paper, lr 1e-4" in text


def test_summary_names_the_file_and_the_command_when_a_system_lacks_an_evaluator(tmp_path):
    rng = np.random.default_rng(1)
    ids, gold = _random_gold(tmp_path, "test", 20, rng)
    evaluation.write_levels(tmp_path, "test", controls.BASE, ids, {"reward": _agreeing(gold["reward"], 0.5, rng)})
    with pytest.raises(ValueError, match=r"test_w_o_rl\.json\.gz has no judge levels, which the gold has: "
                                         r"python -m emprl\.eval\.rescore --profile smoke --evaluator judge "
                                         r"--system 'w/o RL'"):
        controls.summary(tmp_path, "smoke", "test")


def test_workers_take_fixed_disjoint_runs_whatever_is_done_and_twins_stay_together(tmp_path, monkeypatch):
    runs = controls.all_runs(get_profile("smoke").study.control_seeds)
    # one run of the second pair is already done: its twin stays with the same worker, and no run moves
    done = controls.name_of(*runs[3])
    path = evaluation.levels_path(tmp_path, "valid", done)
    path.parent.mkdir(parents=True)
    path.write_text("")
    taken = {}
    for worker in (0, 1):
        calls = []
        monkeypatch.setattr(controls, "run_control", lambda profile, c, v, s, **kw: calls.append((c, v, s)))
        assert controls.main(["--profile", "smoke", "--out", str(tmp_path), "--next", "2", "--worker", str(worker)]) == 0
        taken[worker] = calls
    assert sorted(taken[0] + taken[1], key=runs.index) == [r for r in runs if controls.name_of(*r) != done]
    assert runs[0] in taken[0] and runs[1] in taken[0] and runs[2] in taken[0]  # w/o RL, then the first pair
    assert runs[4] in taken[1] and runs[3] not in taken[1]  # the second pair's other twin, on worker 1
    for (c, v, s) in taken[0] + taken[1]:  # twins on one worker
        twin = (c, "placebo" if v == "emprl" else "emprl", s)
        if c is not None and controls.name_of(*twin) != done:
            assert ((c, v, s) in taken[0]) == (twin in taken[0])
