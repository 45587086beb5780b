"""Resumable PPO: a run killed at any point (even mid-checkpoint) resumes bit-identically; NaN stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from emprl import checkpoint as ckpt
from emprl.rl.ppo import NonFiniteError
from emprl.rl.ppo_train import train_ppo

sys.path.insert(0, str(Path(__file__).parent))
from test_ppo import CONTEXTS, WordScorer, one_thread, tiny_cfgs, tiny_t5, tiny_tokenizer  # noqa: E402,F401

TIMING = ("steps_per_s", "elapsed_s")
# adaptive KL and reward scaling on, so their running states must survive the restart too
OPTS = dict(steps=6, checkpoint_every=2, adaptive_kl=True, kl_target=0.5, kl_horizon=50, reward_scaling=True, reward_norm=True)


class Crash(RuntimeError):
    pass


class CrashingScorer(WordScorer):
    """Raises on the n-th call (simulates a kill in the middle of step n), or returns NaN logits."""

    def __init__(self, crash_at=None, nan_at=None):
        super().__init__("good")
        self.calls, self.crash_at, self.nan_at = 0, crash_at, nan_at

    def logits(self, contexts, responses):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(f"killed in step {self.calls}")
        out = super().logits(contexts, responses)
        if self.calls == self.nan_at:
            out[0, 0, 0] = float("nan")
        return out


def run(out, scorer=None, **kw):
    torch.manual_seed(123)  # unrelated global state must not matter: train_ppo seeds itself
    cfg, gen = tiny_cfgs(**{**OPTS, **kw})
    gold = torch.full((len(CONTEXTS), 3), 2)
    return train_ppo(tiny_t5(seed=1), None, tiny_tokenizer(), scorer or WordScorer("good"), CONTEXTS, gold, cfg, gen,
                     out, seed=7, progress=False, save_policy=False)


def assert_same_run(a, b):
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a["log"]) == strip(b["log"])
    csv_a = [line.split(",")[:-2] for line in a["log_path"].read_text().splitlines()]
    csv_b = [line.split(",")[:-2] for line in b["log_path"].read_text().splitlines()]
    assert csv_a == csv_b


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, one_thread):
    return run(tmp_path_factory.mktemp("uninterrupted"))


def test_resume_after_crash_mid_step_is_bit_identical(tmp_path, reference_run):
    with pytest.raises(Crash):
        run(tmp_path, CrashingScorer(crash_at=5))  # dies during step 5; last checkpoint is step 4
    resumed = run(tmp_path)
    assert resumed["resumed_from"] == 4
    assert_same_run(reference_run, resumed)
    # the final model differs from the initial one (the test could fail)
    assert not torch.equal(resumed["model"].value_head.linear.weight, run(tmp_path / "x", steps=0)["model"].value_head.linear.weight)


def test_crash_during_checkpoint_write_keeps_previous_state(tmp_path, reference_run, monkeypatch):
    writes = {"n": 0}
    real = ckpt._write_payload

    def half_then_die(f, data):
        writes["n"] += 1
        if writes["n"] == 2:  # the step-4 checkpoint
            f.write(data[: len(data) // 2])
            f.flush()
            raise Crash("killed while writing the checkpoint")
        real(f, data)

    monkeypatch.setattr(ckpt, "_write_payload", half_then_die)
    with pytest.raises(Crash):
        run(tmp_path)
    monkeypatch.setattr(ckpt, "_write_payload", real)
    state = tmp_path / "checkpoints" / "ppo" / "emprl" / "train_state.safetensors"
    assert ckpt.load_state(state)[1]["step"] == 2
    resumed = run(tmp_path)
    assert resumed["resumed_from"] == 2
    assert_same_run(reference_run, resumed)


def kill_after_step_2(script: str, state: Path, wait_s: float = 300) -> int:
    """Run ``script``, a 6-step training that checkpoints every step and never ends step 6, SIGKILL it
    soon after its step-2 checkpoint, and return the step of the checkpoint it left (2 to 5)."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + wait_s  # importing torch can take minutes on a loaded machine
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.exists() and ckpt.load_state(state)[1]["step"] >= 2:
                break
            time.sleep(0.01)
        time.sleep(0.13)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = ckpt.load_state(state)[1]["step"]
    assert 2 <= killed_at < 6
    return killed_at


def test_sigkill_at_any_point_then_resume_is_bit_identical(tmp_path, reference_run):
    """A real SIGKILL of a training process (checkpoint every step, so the kill often lands in a write)."""
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from test_ppo_resume import run, WordScorer
        class Slow(WordScorer):
            calls = 0
            def logits(self, c, r):  # one call per step
                Slow.calls += 1
                # step 6 never ends: however late the kill comes on a loaded machine, the run cannot
                # finish first, and the kill still lands anywhere in steps 3 to 5, writes included
                time.sleep(3600 if Slow.calls == 6 else 0.05)
                return super().logits(c, r)
        run({str(tmp_path)!r}, Slow('good'), steps=6, checkpoint_every=1)
    """)
    state = tmp_path / "checkpoints" / "ppo" / "emprl" / "train_state.safetensors"
    killed_at = kill_after_step_2(script, state)
    resumed = run(tmp_path, checkpoint_every=1)
    assert resumed["resumed_from"] == killed_at
    assert not list(state.parent.glob("*.tmp-*"))
    assert_same_run(reference_run, resumed)


def test_nan_in_scorer_logits_stops_with_diagnostic_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError, match=r"step 3 .*scorer logits"):
        run(tmp_path, CrashingScorer(nan_at=3))
    state = tmp_path / "checkpoints" / "ppo" / "emprl" / "train_state.safetensors"
    assert ckpt.load_state(state)[1]["step"] == 2


def test_nan_in_weights_is_caught_at_the_next_logits(tmp_path):
    calls = {"n": 0}

    def poison(model):
        calls["n"] += 1
        if calls["n"] == 4 * 3:  # last optimizer step of step 3 (4 epochs x 1 mini-batch)
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    cfg, gen = tiny_cfgs(**OPTS)
    with pytest.raises(NonFiniteError, match=r"step 4 .*non-finite"):
        train_ppo(tiny_t5(seed=1), None, tiny_tokenizer(), WordScorer(), CONTEXTS, torch.full((len(CONTEXTS), 3), 2),
                  cfg, gen, tmp_path, seed=7, progress=False, save_policy=False, before_optimizer_step=poison)
    state = tmp_path / "checkpoints" / "ppo" / "emprl" / "train_state.safetensors"
    tensors, meta = ckpt.load_state(state)
    assert meta["step"] == 2 and all(torch.isfinite(v.float()).all() for k, v in tensors.items() if k.startswith("param/"))


def test_resume_with_a_different_config_is_a_clear_error(tmp_path):
    run(tmp_path, steps=2)
    with pytest.raises(ValueError, match="different run configuration"):
        run(tmp_path, steps=4, lr=1e-4)
    assert run(tmp_path, steps=4)["resumed_from"] == 2  # more steps is fine


def test_resume_under_another_autocast_precision_is_a_clear_error(tmp_path):
    run(tmp_path, steps=2)  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match=r"compute_dtype \(saved "
                                                                                        r"'float32', now 'torch.bfloat16'\)"):
        run(tmp_path, steps=4)  # Run.autocast with runtime.precision=bf16: the steps would mix two precisions
    assert run(tmp_path, steps=4)["resumed_from"] == 2  # in its own precision it resumes


def test_corrupt_state_file_names_the_file(tmp_path):
    bad = tmp_path / "train_state.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="train_state.safetensors"):
        ckpt.load_state(bad)
