"""The run set-up: device, precision, threads, artifact locations, recorded configuration, profiles."""

import json

import pytest
import torch

import emprl
from emprl import run as run_module
from emprl.profiles import PROFILES, get_profile, parse_overrides


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("EMPRL_DEVICE", raising=False)


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_auto_is_cpu_and_fp32_without_cuda(tmp_path, no_cuda, keep_threads):
    r = emprl.setup("smoke", output_dir=tmp_path)
    assert r.device == torch.device("cpu") and r.precision == "fp32"
    with r.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_auto_is_cuda_and_bf16_when_cuda_is_there(monkeypatch, tmp_path, keep_threads):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("EMPRL_DEVICE", raising=False)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        r = emprl.setup("smoke", output_dir=tmp_path)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert r.device == torch.device("cuda") and r.precision == "bf16"
    assert json.loads(r.paths.config.read_text())["resolved"] == {"device": "cuda", "precision": "bf16",
                                                                   "threads": r.threads, "reward_dtype": "float32"}
    # an explicit cpu wins over a CUDA machine
    assert emprl.setup("smoke", output_dir=tmp_path, device="cpu").device == torch.device("cpu")


def test_asking_for_cuda_without_cuda_is_an_error(tmp_path, no_cuda, monkeypatch, keep_threads):
    with pytest.raises(RuntimeError, match="'cuda' was asked for, but torch sees no CUDA device"):
        emprl.setup("smoke", output_dir=tmp_path, device="cuda")
    with pytest.raises(RuntimeError, match="'cuda:1' was asked for"):
        emprl.setup("smoke", output_dir=tmp_path, overrides={"runtime.device": "cuda:1"})
    monkeypatch.setenv("EMPRL_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        emprl.setup("smoke", output_dir=tmp_path)
    assert emprl.setup("smoke", output_dir=tmp_path, device="cpu").device.type == "cpu"  # the argument wins
    with pytest.raises(ValueError, match="runtime.device must be"):
        emprl.setup("smoke", output_dir=tmp_path, device="gpu")


def test_bf16_precision_autocasts_matmuls(tmp_path, no_cuda, keep_threads):
    r = emprl.setup("smoke", output_dir=tmp_path, device="cpu", overrides=["runtime.precision=bf16"])
    assert r.precision == "bf16"
    layer = torch.nn.Linear(4, 4)
    with r.autocast():
        out = layer(torch.ones(1, 4))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32  # fp32 master weights


def test_threads_follow_env_then_profile_then_rule(tmp_path, no_cuda, monkeypatch, keep_threads):
    monkeypatch.setenv("EMPRL_THREADS", "1")
    assert emprl.setup("smoke", output_dir=tmp_path, overrides={"runtime.threads": 2}).threads == 1
    monkeypatch.delenv("EMPRL_THREADS")
    assert emprl.setup("smoke", output_dir=tmp_path, overrides={"runtime.threads": 2}).threads == 2
    assert torch.get_num_threads() == 2
    assert emprl.setup("smoke", output_dir=tmp_path).threads == 1  # smoke: one thread
    monkeypatch.setenv("EMPRL_THREADS", "zero")
    with pytest.raises(ValueError, match="EMPRL_THREADS must be a positive integer"):
        emprl.setup("smoke", output_dir=tmp_path)


def test_paths_keep_the_on_disk_layout(tmp_path, no_cuda, keep_threads):
    r = emprl.setup("smoke", output_dir=tmp_path)
    p, out = r.paths, tmp_path.resolve()
    assert r.out == out and r.banner == "SMOKE PROFILE: numbers are not meaningful"
    assert p.identifiers == out / "checkpoints/identifiers"
    assert p.generator("prefix") == out / "checkpoints/generator/prefix"
    assert p.generator("full") == out / "checkpoints/generator/full"
    assert p.tokenizer == out / "checkpoints/generator/_tokenizer"
    assert p.generator_state("full") == out / "checkpoints/generator/_train_state/full"
    assert p.policy("no_kl") == out / "checkpoints/ppo/no_kl/policy"
    assert p.system("EmpRL") == out / "checkpoints/ppo/emprl/policy"
    assert p.system("w/o RL") == p.generator("prefix")
    assert p.system("w/o RL, Prefix-tuning") == p.generator("full")
    assert p.system("EmpRL", root=out / "ablation") == out / "ablation/checkpoints/ppo/emprl/policy"
    assert all((out / d).is_dir() for d in ("figures", "tables", "metrics", "cache"))
    with pytest.raises(ValueError, match=r"unknown system 'EmpRL\+'"):
        p.system("EmpRL+")
    with pytest.raises(ValueError, match="generator tuning must be"):
        p.generator("lora")


def test_the_resolved_configuration_is_written_without_paths(tmp_path, no_cuda, keep_threads):
    r = emprl.setup("smoke", seed=3, output_dir=tmp_path, overrides={"ppo": {"steps": 7}, "generator.lr": "3e-4"})
    written = json.loads((tmp_path / "metrics" / "config.json").read_text())
    assert written == r.config()
    assert written["config"]["ppo"]["steps"] == 7 and written["config"]["generator"]["lr"] == 3e-4
    assert written["config"]["seed"] == 3 and written["profile"] == "smoke"
    assert str(tmp_path) not in json.dumps(written)


def test_offline_without_data_sets_up_and_its_banner_names_it(tmp_path, no_cuda, monkeypatch, keep_threads):
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)
    r = emprl.setup("offline", output_dir=tmp_path)
    assert r.data_root is None and r.banner == "profile offline"
    repaired = emprl.setup("offline", output_dir=tmp_path, preset="repaired")
    assert repaired.banner == "profile offline, preset repaired"


def test_setup_prints_the_runs_settings_once(tmp_path, no_cuda, keep_threads, capsys):
    emprl.setup("smoke", seed=2, output_dir=tmp_path, device="cpu", preset="authors")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("profile smoke, preset authors, seed 2: device cpu, precision fp32, 1 CPU")
    assert printed[1:] == ["SMOKE PROFILE: numbers are not meaningful"]
    assert all((tmp_path / d).is_dir() for d in ("figures", "tables", "metrics", "cache", "generations"))


def test_overrides_are_parsed_by_type():
    parsed = parse_overrides(["ppo.steps=500", "generator.lr=3e-4", "evaluation.max_examples=none",
                              "ppo.whiten_advantages=false", "identifiers.pooling=mean", "ppo.value_clip=0.2"])
    assert parsed == {"ppo": {"steps": 500, "whiten_advantages": False, "value_clip": 0.2},
                      "generator": {"lr": 3e-4}, "evaluation": {"max_examples": None},
                      "identifiers": {"pooling": "mean"}}
    assert parse_overrides({"ppo": {"steps": 5}, "ppo.lr": 1e-3}) == {"ppo": {"steps": 5, "lr": 1e-3}}
    assert parse_overrides(None) == {}


@pytest.mark.parametrize("override, message", [
    ("ppo.steps=-1", r"ppo.steps must be >= 0, got -1"),
    ("ppo.batch_size=0", r"ppo.batch_size must be > 0, got 0"),
    ("ppo.mini_batch_size=3", r"ppo.mini_batch_size x ppo.grad_accum \(3 x 1\) must divide ppo.batch_size \(4\)"),
    ("generator.top_p=1.5", r"generator.top_p must be in \(0, 1\], got 1.5"),
    ("ppo.lam=-0.1", r"ppo.lam must be in \[0, 1\]"),
    ("identifiers.val_fraction=1", r"identifiers.val_fraction must be in \(0, 1\)"),
    ("ppo.steps=abc", r"override ppo.steps='abc': expected int"),
    ("ppo.steps=2.5", r"override ppo.steps='2.5': expected int"),
    ("ppo.whiten_advantages=maybe", r"expected bool"),
    ("identifiers.pooling=sum", r"identifiers.pooling must be one of \('max', 'mean'\)"),
    ("ppo.kl_estimator=exact", r"ppo.kl_estimator must be one of"),
    ("generator.num_heads=3", r"generator.num_heads \(3\) must divide generator.d_model \(32\)"),
    ("ppo.betta=0.1", r"unknown parameter 'betta' in section 'ppo'"),
    ("gen.lr=0.1", r"unknown section 'gen'"),
    ("ppo.steps", r"expected section.param=value"),
])
def test_bad_overrides_name_the_parameter(override, message):
    with pytest.raises(ValueError, match=message):
        get_profile("smoke", [override])


def test_wrong_types_in_dict_overrides_are_errors():
    with pytest.raises(ValueError, match="ppo.steps must be int, got 1.5"):
        get_profile("smoke", {"ppo": {"steps": 1.5}})
    with pytest.raises(ValueError, match="ppo.steps must be int, got True"):
        get_profile("smoke", {"ppo.steps": True})
    assert get_profile("smoke", {"ppo.lr": 1}).ppo.lr == 1  # an int is a fine float


def test_every_profile_validates_and_gpu_is_sized_as_issue_9_asks():
    for name in PROFILES:
        get_profile(name)
    gpu = get_profile("gpu")
    i = gpu.identifiers
    assert (i.encoder, i.max_context_len, i.max_response_len) == ("minilm", 256, 64)
    assert gpu.identifiers.epochs > get_profile("offline").identifiers.epochs
    g = gpu.generator  # the t5-small architecture, from scratch, trained to early stopping then prefix-tuned
    assert (g.model, g.tuning, g.d_model, g.d_ff, g.num_layers, g.num_heads) == \
        ("scratch", "prefix", 512, 2048, 6, 8)
    assert g.patience >= 1 and g.eval_every is not None
    assert gpu.evaluation.max_examples is None and gpu.data.max_test is None and gpu.data.max_train is None
    assert gpu.ppo.steps > 0 and gpu.runtime.device == "auto"


def test_systems_name_the_paper_rows():
    assert list(run_module.SYSTEMS) == ["EmpRL", "w/o KL Penalty", "w/o Empathy Reward", "w/o RL",
                                        "w/o RL, Prefix-tuning"]


def test_setup_takes_a_built_profile_and_layers_overrides_on_it(tmp_path, no_cuda, keep_threads):
    built = get_profile("smoke", {"ppo.steps": 3})
    r = emprl.setup(built, output_dir=tmp_path, overrides={"ppo.lr": 0.1})
    assert (r.profile.ppo.steps, r.profile.ppo.lr, r.profile.ppo.batch_size) == (3, 0.1, 4)


def test_reward_dtype_follows_the_cpus_native_bf16(tmp_path, no_cuda, monkeypatch, keep_threads):
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(run_module, "native_bf16", lambda native=native: native)
        r = emprl.setup("smoke", output_dir=tmp_path)
        assert r.reward_dtype == expected and r.config()["resolved"]["reward_dtype"] == expected
    monkeypatch.setattr(run_module, "native_bf16", lambda: True)
    assert emprl.setup("smoke", output_dir=tmp_path, overrides={"runtime.reward_dtype": "float32"}).reward_dtype == "float32"
    assert run_module.resolve_reward_dtype("auto", torch.device("cuda")) == "float32"  # CUDA: the autocast's bf16
    with pytest.raises(ValueError, match="runtime.reward_dtype"):
        emprl.setup("smoke", output_dir=tmp_path, overrides={"runtime.reward_dtype": "float16"})


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    from pathlib import Path

    real = Path.read_text
    for flags, expected in (("fpu avx2 fma", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True),
                            ("avx512_bf16x", False)):
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: f"flags\t: {flags}\n" if str(self) ==
                            "/proc/cpuinfo" else real(self, *a, **k))
        assert run_module.native_bf16() is expected, flags


def test_the_record_names_the_software_it_ran_on(tmp_path):
    import torch
    import transformers

    r = emprl.setup("smoke", output_dir=tmp_path)
    recorded = json.loads(r.paths.config.read_text())["software"]
    assert recorded["torch"] == torch.__version__.split("+")[0] or recorded["torch"] == torch.__version__
    assert recorded["transformers"] == transformers.__version__
    assert isinstance(recorded["cpu_native_bf16"], bool) and recorded["python"].count(".") == 2
    assert recorded["cpu"] == run_module.cpu_model() and recorded["cpu"] and "\n" not in recorded["cpu"]
