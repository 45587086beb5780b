"""PPO under `accelerate launch` with two CPU processes (gloo): gradients stay in sync across ranks.

The test launches this file as a script (``accelerate launch --cpu --num_processes 2``). Each rank
rolls out / scores its OWN data, so the ranks' local gradients differ (checked: the test can fail);
after DDP's all-reduce every rank must hold the same gradient, equal to the mean of the local ones,
and the same parameters after the step. Part 1 runs ``ppo_update`` on fixed per-rank tensors;
part 2 runs two steps of the whole loop ``train_ppo``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_ppo import WORDS  # noqa: E402  (shared tiny fixtures)
from test_ppo import WordScorer as _WordScorer  # noqa: E402
from test_ppo import tiny_tokenizer as _tiny_tokenizer  # noqa: E402


# --------------------------------------------------------------------------- worker (runs in each process)




def _tiny_t5(seed=0):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)  # same seed on every rank: identical initial weights
    cfg = T5Config(vocab_size=len(WORDS) + 3, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_decoder_layers=1,
                   num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    return T5ForConditionalGeneration(cfg).eval()




def _flat_grad(model):
    import torch

    return torch.cat([p.grad.detach().flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])


def _flat_params(model):
    import torch

    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _worker(out: Path) -> None:
    import copy

    import torch
    from accelerate import Accelerator

    from emprl.models import policy
    from emprl.rl import ppo, ppo_train
    from emprl.profiles import GeneratorConfig, PPOConfig

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    result = {"world": world, "backend": str(torch.distributed.get_backend()) if world > 1 else None}

    # ---- part 1: ppo_update on fixed tensors, different on each rank
    cfg = PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=2, lr=1e-2, whiten_advantages=True)
    t5 = _tiny_t5()
    torch.manual_seed(0)
    model = policy.ActorCritic(t5, policy.ValueHead(16)).eval()
    local_model = copy.deepcopy(model)  # same start, no DDP: this rank's own gradient
    g = torch.Generator().manual_seed(100 + rank)
    B, Lq, T = 4, 7, 5
    q_ids = torch.randint(3, len(WORDS) + 3, (B, Lq), generator=g)
    q_mask = torch.ones(B, Lq, dtype=torch.long)
    r_ids = torch.randint(3, len(WORDS) + 3, (B, T), generator=g)
    r_ids[:, -1] = 1
    r_mask = torch.ones(B, T, dtype=torch.long)
    with torch.no_grad():
        old_logprobs, old_values, _ = model(q_ids, q_mask, r_ids, r_mask)
    rewards = torch.zeros(B, T)
    rewards[:, -1] = torch.rand(B, generator=g)

    def recorder(store):
        return lambda m: store.append(_flat_grad(m).clone())

    local_grads = []
    ppo.ppo_update(local_model, None, torch.optim.AdamW(local_model.parameters(), lr=cfg.lr), q_ids, q_mask, r_ids,
                   r_mask, old_logprobs, old_values, rewards, cfg, before_optimizer_step=recorder(local_grads))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    wrapped, optimizer = acc.prepare(model, optimizer)
    ddp_grads = []
    ppo.ppo_update(wrapped, None, optimizer, q_ids, q_mask, r_ids, r_mask, old_logprobs, old_values, rewards, cfg,
                   accelerator=acc, before_optimizer_step=recorder(ddp_grads))
    local0 = acc.gather(local_grads[0][None])  # [world, P]: the first pass is at the common start point
    ddp = [acc.gather(gr[None]) for gr in ddp_grads]
    params = acc.gather(_flat_params(model)[None])
    result["part1"] = {
        "local_grads_differ": (local0[0] - local0[1]).abs().max().item() if world > 1 else None,
        "local_grad_scale": local0.abs().max().item(),
        "ddp_grads_across_ranks": max((d[0] - d[1]).abs().max().item() for d in ddp) if world > 1 else None,
        "ddp_vs_mean_local": (ddp[0][0] - local0.mean(0)).abs().max().item(),
        "params_across_ranks": (params[0] - params[1]).abs().max().item() if world > 1 else None,
        "optimizer_steps": len(ddp_grads),
    }

    # ---- part 2: the whole loop, two steps, each rank its own contexts
    cfg2, gen = (PPOConfig(steps=2, lr=1e-2, batch_size=2, mini_batch_size=2, ppo_epochs=2, min_new_tokens=2,
                           checkpoint_every=2),
                 GeneratorConfig(max_new_tokens=4, max_source_len=12))
    contexts = ["i am so sorry", "what happened", "it was a nice day", "you feel great", "i feel bad",
                "that was so nice", "what day was it", "i hear you"]
    gold = torch.full((len(contexts), 3), 2, dtype=torch.long)
    grads2 = []
    res = ppo_train.train_ppo(_tiny_t5(), None, _tiny_tokenizer(), _WordScorer(), contexts, gold, cfg2, gen,
                        out / "run", seed=0, accelerator=acc, progress=False, save_policy=False,
                        before_optimizer_step=recorder(grads2))
    g2 = [acc.gather(gr[None]) for gr in grads2]
    p2 = acc.gather(_flat_params(res["model"])[None])
    result["part2"] = {
        "ddp_grads_across_ranks": max((d[0] - d[1]).abs().max().item() for d in g2) if world > 1 else None,
        "grad_scale": max(d.abs().max().item() for d in g2),
        "params_across_ranks": (p2[0] - p2[1]).abs().max().item() if world > 1 else None,
        "optimizer_steps": len(grads2),
        "log_rows": len(res["log"]),
    }
    if acc.is_main_process:
        (out / "result.json").write_text(json.dumps(result, indent=1))
    acc.wait_for_everyone()
    # tear the process group down before the interpreter does: left to exit, a gloo thread still running can
    # abort the process ("terminate called without an active exception"), seen on a loaded machine
    torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_keep_gradients_in_sync(tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("`accelerate` launcher not found next to the interpreter or on PATH")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["world"] == 2 and r["backend"] == "gloo"
    p1, p2 = r["part1"], r["part2"]
    # the ranks really had different data (else "in sync" would hold trivially)
    assert p1["local_grads_differ"] > 1e-3 * p1["local_grad_scale"]
    # all-reduced gradients: identical on both ranks, and the mean of the ranks' own gradients
    assert p1["optimizer_steps"] == 2
    assert p1["ddp_grads_across_ranks"] == 0.0
    assert p1["ddp_vs_mean_local"] <= 1e-5 * max(p1["local_grad_scale"], 1.0)
    assert p1["params_across_ranks"] == 0.0
    # the whole loop: 2 steps x 2 epochs x 1 mini-batch = 4 optimizer steps, in sync at each
    assert p2["optimizer_steps"] == 4 and p2["log_rows"] == 2
    assert p2["grad_scale"] > 0
    assert p2["ddp_grads_across_ranks"] == 0.0
    assert p2["params_across_ranks"] == 0.0


if __name__ == "__main__":  # a rank of the launched job
    _worker(Path(sys.argv[1]))
