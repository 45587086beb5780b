"""One GRPO step of the instruct LLM, broken down, against trl's default GRPO configuration in the same run.

    .venv/bin/python benchmarks/grpo_step.py [--profile offline] [--steps 3] [--threads 2]
                     [--identifiers DIR] [--model smollm2|tiny-random] [--skip-default]

Two configurations train the same model on the same training contexts with the same empathy reward
(``rl.grpo.empathy_reward_function`` over the identifiers in ``--identifiers``, else tiny random ones):

* **emprl**: the profile's ``grpo`` section through ``rl.grpo.train_grpo``'s settings (LoRA on every linear
  layer, the model in ``grpo.dtype``, no autocast, no activation checkpointing, prompts_per_step x
  num_generations replies of at most max_completion_length tokens);
* **trl default**: ``trl.GRPOConfig`` with nothing set but what a CPU run needs (``use_cpu``, no reporting,
  the step count and logging): full fine-tuning, its own batch, group size, completion length, autocast and
  activation checkpointing.

Each step's time is split by trl's own profiling points (recorded by wrapping ``ProfilingContext``): generation
(``transformers.generate``), reward (the reward function), reference and old log-probs (the log-prob passes made
while preparing the batch), and the update (the rest of the step: the loss's forward, backward and the optimizer),
with completions per second (replies of the step / its wall time). The first step is not timed (it loads and
warms up); figures are medians over the timed steps. JSON goes to ``benchmarks/results/grpo_step.json`` with the
CPU, its flags and the library versions. Target (issue 27): 1.5 completions/s or better on two cores for emprl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_offline_step import cpu_info  # noqa: E402  (one description of the machine for every benchmark)


class StepClock:
    """trl's profiling points as they close, grouped by step: {step: [(name, parent, seconds)]}."""

    def __init__(self):
        self.steps: dict[int, list[tuple[str, str | None, float]]] = {}
        self.stack: list[str] = []
        self.step = 0

    def install(self):
        from trl.extras import profiling

        clock, enter, leave = self, profiling.ProfilingContext.__enter__, profiling.ProfilingContext.__exit__

        def __enter__(ctx):
            clock.stack.append(ctx.name)
            return enter(ctx)

        def __exit__(ctx, *exc):
            duration = time.perf_counter() - ctx._start_time
            clock.stack.pop()
            clock.steps.setdefault(clock.step, []).append((ctx.name, clock.stack[-1] if clock.stack else None,
                                                           duration))
            return leave(ctx, *exc)

        profiling.ProfilingContext.__enter__, profiling.ProfilingContext.__exit__ = __enter__, __exit__


def breakdown(events: list[tuple[str, str | None, float]], step_s: float, reward_name: str) -> dict:
    """Seconds of generation, reward, log-prob passes while preparing the batch, and the update (the rest)."""
    def total(match, parent=None):
        return sum(d for n, p, d in events if match(n) and (parent is None or (p or "").endswith(parent)))

    prepare = total(lambda n: n.endswith("_prepare_inputs"))
    generation = total(lambda n: n.endswith("generate") or n.endswith("generate_batch"))
    reward = total(lambda n: n.endswith(reward_name))
    logps = total(lambda n: n.endswith("_get_per_token_logps_and_entropies"), parent="_prepare_inputs")
    return {"step_s": step_s, "generation_s": generation, "reward_s": reward, "reference_and_old_logps_s": logps,
            "other_preparation_s": max(prepare - generation - reward - logps, 0.0),
            "update_s": max(step_s - prepare, 0.0)}


def run(name: str, args_factory, model, tokenizer, dataset, reward, peft_config, steps: int) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    clock = CLOCK
    clock.steps.clear()  # trl numbers its steps from 1 in every run: another configuration's events are not this one's
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            clock.step = state.global_step + 1
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        args = args_factory(out)
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward, args=args,
                              train_dataset=dataset, peft_config=peft_config, callbacks=[Timer()])
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the figures are printed below
        trainer.train()
    per_step = args.per_device_train_batch_size  # replies a step (one process)
    rows = [breakdown(clock.steps.get(k + 1, []), t, reward.__name__) for k, t in enumerate(times)]
    timed = rows[1:] or rows  # the first step loads and warms up
    median = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
    median["completions_per_s"] = per_step / median["step_s"]
    print(f"{name}: {per_step} replies a step, median over {len(timed)} step(s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in median.items()), flush=True)
    return {"replies_per_step": per_step, "settings": {k: getattr(args, k) for k in (
        "per_device_train_batch_size", "num_generations", "max_completion_length", "beta", "learning_rate",
        "bf16", "gradient_checkpointing", "temperature")}, "steps": rows, "median": median}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--model", default=None, help="the grpo.model to load (default: the profile's)")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration (the first is not timed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--identifiers", help="trained identifiers (default: tiny random ones)")
    parser.add_argument("--skip-default", action="store_true", help="time emprl's configuration only")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "grpo_step.json"))
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)

    from peft import LoraConfig
    from trl import GRPOConfig

    from emprl import data
    from emprl.models import encoders, scoring
    from emprl.models.judge import resolve_dtype
    from emprl.profiles import get_profile
    from emprl.rl import grpo

    P = get_profile(a.profile)
    cfg = P.grpo if a.model is None else dataclasses.replace(P.grpo, model=a.model)
    if a.identifiers:
        scorer = scoring.EmpathyScorer.load(a.identifiers)
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from test_identifiers import tiny_identifier

        scorer = scoring.EmpathyScorer({m: tiny_identifier(seed=10 * k) for k, m in enumerate(data.MECHANISMS)},
                                       encoders.load_tokenizer("minilm"), 64, 48, mechanism_order=data.MECHANISMS)
    try:
        train = data.load_split(P, "train")[:64]
    except FileNotFoundError:  # no EMPRL_DATA_DIR: the bundled sample
        train = data.load_split(get_profile("smoke"), "train", data.dataset_dir("smoke"))
    gold = scoring.gold_labels(scorer, train, Path(tempfile.mkdtemp()), progress=False)
    dataset = grpo.prompt_dataset(train, gold, P.data.max_context_tokens)
    reward = grpo.empathy_reward_function(scorer)
    dtype = resolve_dtype(cfg.dtype, "cpu")
    results = {"machine": cpu_info(), "threads": a.threads, "profile": a.profile, "model": cfg.model,
               "identifiers": "trained" if a.identifiers else "tiny random", "configurations": {}}
    import transformers
    import trl
    import peft

    results["versions"] = {"trl": trl.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__, "torch": torch.__version__}

    model, tokenizer = grpo.load_policy(cfg.model, dtype)
    emprl_args = lambda out: GRPOConfig(  # noqa: E731  (train_grpo's settings)
        output_dir=out, use_cpu=True, report_to=[], max_steps=a.steps, logging_steps=1, save_strategy="no",
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, beta=cfg.beta,
        learning_rate=cfg.lr, lr_scheduler_type="constant", bf16=False, activation_checkpointing=False,
        disable_tqdm=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=grpo.LORA_TARGETS, task_type="CAUSAL_LM")
    results["configurations"]["emprl"] = run("emprl", emprl_args, model, tokenizer, dataset, reward, lora, a.steps)
    if not a.skip_default:
        model, tokenizer = grpo.load_policy(cfg.model, "float32")  # trl's default trains the fp32 weights
        default_args = lambda out: GRPOConfig(output_dir=out, use_cpu=True, report_to=[], max_steps=a.steps,  # noqa: E731
                                              logging_steps=1, save_strategy="no", disable_tqdm=True)
        results["configurations"]["trl default"] = run("trl default", default_args, model, tokenizer, dataset,
                                                       reward, None, a.steps)
        e, d = (results["configurations"][k]["median"]["completions_per_s"] for k in ("emprl", "trl default"))
        print(f"completions per second: emprl {e:.2f}, trl default {d:.2f} ({e / d:.1f}x); target >= 1.5 on two "
              f"cores: {'met' if e >= 1.5 else 'not met'}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"written {a.out}")
    return 0


CLOCK = StepClock()
CLOCK.install()

if __name__ == "__main__":
    raise SystemExit(main())
