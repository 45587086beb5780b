"""PPO against the real EmpathyScorer with its context cache on (the default): a run killed and resumed,
whose scorer starts with a cold cache, ends with the weights of an uninterrupted run whose cache was warm,
and a run with the cache on is the run with it off, bit for bit."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from emprl.models import encoders
from emprl.data import MECHANISMS
from emprl.rl.ppo_train import train_ppo
from emprl.models.scoring import EmpathyScorer

sys.path.insert(0, str(Path(__file__).parent))
from test_identifiers import tiny_identifier  # noqa: E402
from test_ppo import WORDS, one_thread, tiny_cfgs, tiny_t5, tiny_tokenizer  # noqa: E402,F401
from test_ppo_resume import OPTS, assert_same_run, kill_after_step_2  # noqa: E402

# contexts of 1 to 23 words: batches pad them by different amounts, which moves a batched state's last bits
CONTEXTS = [" ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(1 + (7 * i) % 23)) for i in range(16)]


def run(out, scorer, **kw):
    torch.manual_seed(123)  # unrelated global state must not matter: train_ppo seeds itself
    cfg, gen = tiny_cfgs(**{**OPTS, **kw})
    gold = torch.tensor([[i % 3, (i // 3) % 3, 2] for i in range(len(CONTEXTS))])
    return train_ppo(tiny_t5(seed=1), None, tiny_tokenizer(), scorer, CONTEXTS, gold, cfg, gen, out, seed=7,
                     progress=False, save_policy=False)


def empathy_scorer(cache_bytes: int = 1 << 30, batch_size: int = 3) -> EmpathyScorer:
    """Tiny random identifiers behind the real scorer."""
    models = {m: tiny_identifier(seed=10 * k) for k, m in enumerate(MECHANISMS)}
    return EmpathyScorer(models, encoders.load_tokenizer("minilm"), 24, 12, batch_size=batch_size,
                         context_cache_bytes=cache_bytes)


class Crash(RuntimeError):
    pass


class CrashAt:
    """The scorer, raising on its n-th call (a kill in the middle of step n)."""

    def __init__(self, scorer, n):
        self.scorer, self.calls, self.n = scorer, 0, n

    def logits(self, contexts, responses):
        self.calls += 1
        if self.calls == self.n:
            raise Crash(f"killed in step {self.calls}")
        return self.scorer.logits(contexts, responses)


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory, one_thread):
    scorer = empathy_scorer()
    out = run(tmp_path_factory.mktemp("uninterrupted"), scorer)
    assert scorer.context_cache.hits > 0  # later steps did read states cached by earlier ones
    return out


def test_a_run_with_the_cache_is_the_run_without_it(tmp_path, one_thread):
    # 10 steps of 4 draws from 16 contexts: contexts come back in other company, from the cache or not
    # (encoded two at a time, the states of these contexts would differ in their last bits)
    assert_same_run(run(tmp_path / "on", empathy_scorer(batch_size=2), steps=10),
                    run(tmp_path / "off", empathy_scorer(cache_bytes=0, batch_size=2), steps=10))


def test_resume_with_a_cold_cache_after_a_crash_is_bit_identical(tmp_path, cached_run):
    with pytest.raises(Crash):
        run(tmp_path, CrashAt(empathy_scorer(), 3))  # dies during step 3; the last checkpoint is step 2
    resumed = run(tmp_path, empathy_scorer())
    assert resumed["resumed_from"] == 2
    assert_same_run(cached_run, resumed)


def test_sigkill_then_resume_with_the_cache_on_is_bit_identical(tmp_path, cached_run):
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from test_resume_with_context_cache import empathy_scorer, run
        class Slow:
            calls = 0
            def __init__(self):
                self.scorer = empathy_scorer()
            def logits(self, c, r):  # one call per step
                Slow.calls += 1
                # step 6 never ends, so however late the kill comes on a loaded machine it lands in steps 3-5
                time.sleep(3600 if Slow.calls == 6 else 0.05)
                return self.scorer.logits(c, r)
        run({str(tmp_path)!r}, Slow(), checkpoint_every=1)
    """)
    state = tmp_path / "checkpoints" / "ppo" / "emprl" / "train_state.safetensors"
    killed_at = kill_after_step_2(script, state)
    resumed = run(tmp_path, empathy_scorer(), checkpoint_every=1)
    assert resumed["resumed_from"] == killed_at
    assert_same_run(cached_run, resumed)
