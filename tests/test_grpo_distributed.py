"""GRPO under `accelerate launch` with two CPU processes (gloo): the same train_grpo, each rank sampling and
scoring its own prompts, the LoRA adapter identical on both ranks after every step, one rank writing.

The test launches this file as a script (``accelerate launch --cpu --num_processes 2``), as
tests/test_ppo_distributed.py does for PPO; a multi-GPU run is the same command with ``--multi_gpu`` and
``configs/accelerate_deepspeed_zero2.yaml`` (docs/method.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_ppo_distributed import _free_port  # noqa: E402  (shared)


def _worker(out: Path) -> None:
    import torch
    from accelerate import PartialState

    from emprl.models import encoders, scoring
    from emprl.profiles import get_profile
    from emprl.rl import grpo
    from test_grpo import MECHS, TRAIN, TRAIN_GOLD
    from test_identifiers import tiny_identifier

    torch.set_num_threads(1)
    state = PartialState()
    models = {m: tiny_identifier(seed=10 * k) for k, m in enumerate(MECHS)}
    scorer = scoring.EmpathyScorer(models, encoders.load_tokenizer("minilm"), 24, 12, batch_size=3,
                                   mechanism_order=MECHS)
    seen = []

    class Recording:  # the contexts this rank's reward scored
        dtype = "float32"

        def logits(self, contexts, responses):
            seen.extend(contexts)
            return scorer.logits(contexts, responses)

    cfg = get_profile("smoke").grpo  # 2 steps of 2 prompts x 2 replies
    run = grpo.train_grpo(cfg, TRAIN, TRAIN_GOLD, Recording(), out / "run", progress=False)
    lora = {n: p.detach().clone() for n, p in run["model"].named_parameters() if "lora_" in n}
    (out / f"rank{state.process_index}.json").write_text(json.dumps({
        "world": state.num_processes, "steps": run["global_step"], "contexts": sorted(set(seen)),
        "lora_sum": float(sum(p.double().sum() for p in lora.values())),
        # LoRA's B matrices start at zero: what they hold is what training put there
        "lora_b_abs": float(sum(p.double().abs().sum() for n, p in lora.items() if "lora_B" in n))}))
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()  # before the interpreter exits (tests/test_ppo_distributed.py)


@pytest.mark.slow
def test_two_processes_train_one_adapter(tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("`accelerate` launcher not found next to the interpreter or on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "true",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [2, 2]
    assert ranks[0]["contexts"] != ranks[1]["contexts"]  # each rank scored the replies to its own prompts
    assert ranks[0]["lora_b_abs"] > 0  # trained
    assert ranks[0]["lora_sum"] == ranks[1]["lora_sum"] and ranks[0]["lora_b_abs"] == ranks[1]["lora_b_abs"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3  # header + 2 steps, written once


def test_the_deepspeed_config_for_multi_gpu_users_is_what_accelerate_reads():
    from accelerate.commands.config.config_args import ClusterConfig

    path = Path(__file__).parent.parent / "configs" / "accelerate_deepspeed_zero2.yaml"
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own reader, as `accelerate launch` uses it
    assert "DEEPSPEED" in str(config.distributed_type) and config.deepspeed_config["zero_stage"] == 2
    assert str(config.mixed_precision) == "no"  # the model's dtype is the profile's grpo.dtype
    assert not config.use_cpu and config.num_processes >= 2


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
