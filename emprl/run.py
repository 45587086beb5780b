"""One run's set-up: the profile, device, precision, threads, folders and every artifact's location.

Every notebook's first code cell is ``run = emprl.setup(profile, seed, data_dir, output_dir, device,
overrides, preset)``; later cells read ``run.profile``, ``run.out``, ``run.device``, ``run.paths`` and
``run.banner`` and wrap training, sampling, scoring and evaluation in ``with run.autocast():``. Nothing
else chooses a device, creates the standard output folders or prints the run's settings.

Checkpoints live under ``<out>/checkpoints/`` (git-ignored)::

    identifiers/<mechanism>/               the three empathy identifiers (notebook 02)
    judge/                                 the independent judge's heads (notebook 02)
    generator/{full,prefix}/               the generator by tuning (notebook 03)
    generator/_tokenizer/                  the scratch generator's tokenizer
    generator/_train_state/{full,prefix}/  the generator's resume state
    ppo/<variant>/policy/                  a PPO policy by variant (emprl, no_kl, no_emp, placebo; notebooks 04, 06)
    grpo/<variant>_seed<S>/                a GRPO run of the instruct LLM: trl's checkpoint-N/, adapter/, log.csv
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emprl import data
from emprl.profiles import Profile, get_profile, parse_overrides, with_settings

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SMOKE_BANNER = "SMOKE PROFILE: numbers are not meaningful"

# Our systems, named as the paper's rows, and where their checkpoints lie under <out>/checkpoints.
SYSTEMS = {
    "EmpRL": ("ppo", "emprl", "policy"),
    "w/o KL Penalty": ("ppo", "no_kl", "policy"),
    "w/o Empathy Reward": ("ppo", "no_emp", "policy"),
    "w/o RL": ("generator", "prefix"),
    "w/o RL, Prefix-tuning": ("generator", "full"),
}


def resolve_output_dir(profile: str, explicit: str | os.PathLike | None = None) -> Path:
    """The run's output folder: explicit, else ``$EMPRL_OUTPUT_DIR``, else ``outputs/<profile>``."""
    value = explicit if explicit not in (None, "") else os.environ.get("EMPRL_OUTPUT_DIR")
    path = Path(value) if value not in (None, "") else REPO_ROOT / "outputs" / profile
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(out: Path, *parts: str) -> Path:
    """A git-ignored folder for weights under the run's output folder (created)."""
    path = Path(out).joinpath("checkpoints", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Paths:
    """Where a run's artifacts lie; nothing is created here (the writers create their folders)."""

    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def identifiers(self) -> Path:
        return self.checkpoints / "identifiers"

    @property
    def judge(self) -> Path:
        return self.checkpoints / "judge"

    def generator(self, tuning: str) -> Path:
        """The saved generator by tuning: "prefix" (the paper's) or "full"."""
        if tuning not in ("prefix", "full"):
            raise ValueError(f"generator tuning must be 'prefix' or 'full', got {tuning!r}")
        return self.checkpoints / "generator" / tuning

    @property
    def tokenizer(self) -> Path:
        return self.checkpoints / "generator" / "_tokenizer"

    def generator_state(self, tuning: str) -> Path:
        return self.generator(tuning).parent / "_train_state" / tuning

    def ppo(self, variant: str, root: Path | None = None) -> Path:
        """A PPO run's folder (resume state, value head); ``root``: another output root (ablations)."""
        return Path(root or self.out) / "checkpoints" / "ppo" / variant

    def policy(self, variant: str, root: Path | None = None) -> Path:
        return self.ppo(variant, root) / "policy"

    def grpo(self, variant: str, seed: int) -> Path:
        """A GRPO run's folder (``emprl.rl.grpo.train_grpo``): checkpoints, resume key, adapter, log."""
        return self.checkpoints / "grpo" / f"{variant}_seed{seed}"

    def system(self, name: str, root: Path | None = None) -> Path:
        """The checkpoint folder of ``name`` (a key of SYSTEMS) under ``root or out``."""
        if name not in SYSTEMS:
            raise ValueError(f"unknown system {name!r}; known: {list(SYSTEMS)}")
        return Path(root or self.out).joinpath("checkpoints", *SYSTEMS[name])

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics"

    @property
    def generations(self) -> Path:
        return self.out / "generations"

    @property
    def config(self) -> Path:
        return self.metrics / "config.json"


def set_threads(profile: Profile | str) -> int:
    """Set torch's CPU threads: ``$EMPRL_THREADS``, else ``runtime.threads``, else 1 at smoke, else every core.

    Tiny smoke models gain nothing from a second thread and lose a lot when the cores are shared
    (measured here: 4-30x slower with two threads on a busy two-core machine).
    """
    value = os.environ.get("EMPRL_THREADS")
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"EMPRL_THREADS must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"EMPRL_THREADS must be a positive integer, got {value!r}")
    elif isinstance(profile, Profile) and profile.runtime.threads is not None:
        threads = profile.runtime.threads
    else:
        is_smoke = profile.is_smoke if isinstance(profile, Profile) else profile == "smoke"
        threads = 1 if is_smoke else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def resolve_device(requested: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; an explicit CUDA device that is not there is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {requested!r} was asked for, but torch sees no CUDA device (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}). Use device 'cpu' or 'auto', or install a CUDA build "
                "of torch."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {requested!r} was asked for, but only {torch.cuda.device_count()} CUDA "
                               "device(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """"auto" -> bf16 autocast on a CUDA device that supports it, else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo's flags.

    Where it does, bf16 identifier scoring measured 3.1x faster than float32 (AMD EPYC with avx512_bf16);
    where it does not, 5-7x slower (AMD EPYC with AVX2 only). False where the flags cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_reward_dtype(requested: str, device: torch.device) -> str:
    """"auto" -> "bfloat16" on a CPU that computes it natively (``native_bf16``: there the trained
    offline identifiers scored 2.8x faster and changed none of 1,536 levels), else "float32". Only PPO's
    reward is scored so: gold labels and every metric are float32 on every machine."""
    if requested != "auto":
        return requested
    return "bfloat16" if device.type == "cpu" and native_bf16() else "float32"


@dataclass(frozen=True)
class Run:
    profile: Profile
    out: Path
    data_root: Path | None
    device: torch.device
    precision: str
    threads: int
    banner: str  # a title for tables and figures: the smoke banner, else the profile (and preset)
    paths: Paths
    reward_dtype: str = "float32"
    preset: str = "paper"

    def autocast(self):
        """bf16 compute with fp32 master weights when precision is bf16; otherwise a null context."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def config(self) -> dict[str, Any]:
        """The full resolved configuration: the validated profile and what "auto" resolved to (no paths)."""
        return {"profile": self.profile.name, "preset": self.preset, "config": self.profile.to_dict(),
                "resolved": {"device": str(self.device), "precision": self.precision, "threads": self.threads,
                             "reward_dtype": self.reward_dtype},
                "software": software()}


def software() -> dict[str, Any]:
    """The versions and the CPU a run's numbers depend on. Training is deterministic for a seed within one
    environment, not across them: the offline identifiers retrained on another CPU with torch 2.13.0 in a fresh
    environment differ from the committed ones in the first decimal of Table I (docs/results.md), so a record
    names what it ran on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "trl"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found, "cpu": cpu_model(), "cpu_native_bf16": native_bf16()}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's first "model name", else ``platform.processor()``, else "unknown")."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


def banner(P: Profile, preset: str = "paper") -> str:
    """The smoke banner at the smoke profile, else "profile NAME" (and ", preset NAME" but the paper's)."""
    if P.is_smoke:
        return SMOKE_BANNER
    return f"profile {P.name}" + (f", preset {preset}" if preset != "paper" else "")


def setup(profile: str | Profile = "smoke", seed: int = 0, data_dir: str | os.PathLike | None = None,
          output_dir: str | os.PathLike | None = None, device: str | None = None, overrides: Any = None,
          preset: str = "paper", record: bool = True) -> Run:
    """Set up a run: build the profile (``preset`` then ``overrides`` on top), choose device, precision and
    threads, create the output folders, write the resolved configuration to ``<out>/metrics/config.json``
    and print the run's settings (with the smoke banner at the smoke profile).

    ``device``: None -> ``$EMPRL_DEVICE`` if set, else the profile's ``runtime.device`` ("auto" by default).
    ``overrides``: {section: {param: value}}, {"section.param": value} or "section.param=value" strings.
    ``preset``: a key of ``profiles.PRESETS`` ("paper", "authors", "repaired"). ``profile`` may be a name or
    a profile built elsewhere, whose values stay under the preset and the overrides.
    """
    layered = parse_overrides(overrides)
    device = device or os.environ.get("EMPRL_DEVICE") or None
    if device:
        layered.setdefault("runtime", {})["device"] = device
    if isinstance(profile, Profile):
        P = with_settings(profile, preset, layered, seed=seed)
    else:
        P = get_profile(profile, layered, seed=seed, preset=preset)
    name = P.name
    resolved = resolve_device(P.runtime.device)
    precision = resolve_precision(P.runtime.precision, resolved)
    if resolved.type == "cuda":  # TF32 matmuls and convolutions for the fp32 parts
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    threads = set_threads(P)
    # a warning names its category and message, not the source file: notebooks rendered from a run are
    # documentation, and the file's absolute path is the machine's
    warnings.formatwarning = _format_warning
    out = resolve_output_dir(name, output_dir)
    paths = Paths(out)
    for folder in (paths.figures, paths.tables, paths.metrics, paths.cache, paths.generations):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        data_root = data.dataset_dir(name, data_dir)
    except FileNotFoundError:
        data_root = None  # the notebooks that read data raise the clear error when they do
    run = Run(profile=P, out=out, data_root=data_root, device=resolved, precision=precision, threads=threads,
              banner=banner(P, preset), paths=paths,
              reward_dtype=resolve_reward_dtype(P.runtime.reward_dtype, resolved), preset=preset)
    if record:  # a command that adds to a rendered run's outputs (rescore, controls) leaves its record alone
        paths.config.write_text(json.dumps(run.config(), indent=2) + "\n")
    print(f"profile {P.name}, preset {preset}, seed {P.seed}: device {run.device}, precision {precision}, "
          f"{threads} CPU thread(s), PPO reward scored in {run.reward_dtype}")
    if P.is_smoke:
        print(SMOKE_BANNER)
    return run

