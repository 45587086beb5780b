"""The authors' preset (trl 0.9.6 PPOTrainer as their released code configures it), one option per test."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from emprl.models import identifiers as I
from emprl.models.policy import ActorCritic, ValueHead, make_reference, new_token_limits
from emprl.rl.ppo import ppo_update, rollout
from emprl.rl.ppo_train import lr_at, train_ppo
from emprl.profiles import PRESETS, PROFILES, GeneratorConfig, IdentifierConfig, PPOConfig, get_profile
from emprl.rl.reward import masked_mean

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))
from test_ppo import WordScorer, tiny_t5, tiny_tokenizer  # noqa: E402  (shared tiny fixtures)

CONTEXTS = ["i am so sorry", "what happened", "it was a nice day", "you feel great", "i feel bad",
            "that was so nice", "what day was it", "i hear you"] * 2



# --------------------------------------------------------------------------- the preset itself


def test_authors_preset_applies_to_every_profile_and_overrides_come_last():
    for name in PROFILES:
        P = get_profile(name, preset="authors")
        assert P.ppo.adaptive_kl and (P.ppo.beta, P.ppo.kl_target, P.ppo.kl_horizon) == (0.2, 6.0, 10000)
        assert P.ppo.reward_scaling and P.ppo.reward_norm and P.ppo.whiten_rewards
        assert P.ppo.whiten_rewards_padding == "trl" and P.ppo.lr_schedule == "linear"
        assert (P.ppo.batch_size, P.ppo.mini_batch_size, P.ppo.grad_accum, P.ppo.lr) == (32, 8, 4, 1e-5)
        assert P.ppo.max_grad_norm == 1.0 and P.ppo.weight_decay == 0.0 and P.ppo.min_new_tokens == 5
        assert P.generator.length_counts_start_token
        assert P.generator.max_new_tokens == get_profile(name).generator.max_new_tokens  # a size: the profile's
        assert P.identifiers.head == "mlp"
        # everything the preset does not name is the profile's
        assert P.ppo.steps == get_profile(name).ppo.steps and P.generator.d_model == get_profile(name).generator.d_model
    assert get_profile("smoke", preset="paper") == get_profile("smoke")
    assert get_profile("smoke", {"ppo": {"lr": 3e-5}}, preset="authors").ppo.lr == 3e-5
    with pytest.raises(ValueError, match="unknown preset 'trl'"):
        get_profile("smoke", preset="trl")
    assert set(PRESETS) == {"paper", "authors", "repaired"}


# --------------------------------------------------------------------------- one option each


def test_linear_lr_decay_matches_transformers_linear_schedule():
    from transformers import get_linear_schedule_with_warmup

    cfg = PPOConfig(steps=7, lr=1e-3, lr_schedule="linear")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=cfg.steps)
    for step in range(cfg.steps):
        assert lr_at(cfg, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()  # trl steps the scheduler once per PPO step
    assert lr_at(PPOConfig(steps=7, lr=1e-3), 5) == 1e-3
    with pytest.raises(ValueError, match="ppo.lr_schedule"):
        PPOConfig(lr_schedule="cosine")


def test_train_ppo_uses_the_linear_schedule(tmp_path, monkeypatch):
    made, seen = [], []
    real = torch.optim.AdamW

    def capture(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(torch.optim, "AdamW", capture)
    cfg = PPOConfig(steps=3, lr=1e-2, batch_size=4, mini_batch_size=4, ppo_epochs=2, min_new_tokens=2,
                    checkpoint_every=3, lr_schedule="linear")
    gen = GeneratorConfig(max_new_tokens=5, max_source_len=16)
    train_ppo(tiny_t5(), None, tiny_tokenizer(), WordScorer(), CONTEXTS, torch.full((16, 3), 2), cfg, gen, tmp_path,
              progress=False, save_policy=False, before_optimizer_step=lambda m: seen.append(made[0].param_groups[0]["lr"]))
    assert seen == pytest.approx([1e-2, 1e-2, 1e-2 * 2 / 3, 1e-2 * 2 / 3, 1e-2 / 3, 1e-2 / 3])


def test_length_counting_the_start_token_matches_transformers_min_max_length():
    """The authors' GenerationConfig(min_length=5, max_length=30) samples exactly what our limits
    with ``length_counts_start_token`` sample (same seed), and one token fewer than min/max_new_tokens."""
    t5, tok = tiny_t5(3), tiny_tokenizer()
    enc = tok(CONTEXTS[:8], return_tensors="pt", padding=True)
    gen = GeneratorConfig(max_new_tokens=9, length_counts_start_token=True)
    lo, hi = new_token_limits(gen, 5)
    assert (lo, hi) == (4, 8) and new_token_limits(GeneratorConfig(max_new_tokens=9), 5) == (5, 9)
    common = dict(do_sample=True, top_k=20, temperature=0.9, pad_token_id=0, eos_token_id=1)
    with torch.no_grad():
        torch.manual_seed(0)
        a = t5.generate(**enc, min_length=5, max_length=9, **common)
        torch.manual_seed(0)
        b = t5.generate(**enc, min_new_tokens=lo, max_new_tokens=hi, **common)
    assert torch.equal(a, b)
    assert a.shape[1] - 1 <= hi
    is_eos = a[:, 1:] == 1
    first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.tensor(a.shape[1]))
    assert (first_eos >= lo).all()  # at least lo tokens before EOS


def test_mlp_identifier_head_and_its_round_trip(tmp_path):
    from transformers import BertConfig, BertModel

    from emprl.models import encoders

    def bert(seed):
        torch.manual_seed(seed)
        return BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=128))

    model = I.EmpathyIdentifier(bert(0), bert(1), head="mlp").eval()
    kinds = [type(m) for m in model.classifier]
    assert kinds == [torch.nn.Linear, torch.nn.Tanh, torch.nn.Dropout, torch.nn.Linear]
    assert model.classifier[0].weight.shape == (16, 16) and model.classifier[3].weight.shape == (3, 16)
    tok = encoders.load_tokenizer("minilm")
    cfg = IdentifierConfig(max_context_len=24, max_response_len=12, head="mlp")
    I.save_identifier(model, tok, tmp_path / "m", cfg)
    loaded, tok2, _ = I.load_identifier(tmp_path / "m")
    a = I.predict_logits(model, tok, ["my dog died"], ["so sorry"], 24, 12)
    assert torch.equal(a, I.predict_logits(loaded, tok2, ["my dog died"], ["so sorry"], 24, 12))
    with pytest.raises(ValueError, match="identifiers.head"):
        I.EmpathyIdentifier(bert(0), bert(1), head="deep")
    # the default head leaves existing checkpoints' fingerprints unchanged; the mlp head changes them
    import hashlib
    import json
    from dataclasses import asdict

    base = IdentifierConfig()
    old = {k: v for k, v in asdict(base).items() if k != "head"}
    digest = hashlib.sha256(json.dumps([old, 0, "explorations"], sort_keys=True).encode())
    for part in ((["c"], ["r"], [1]), (["c"], ["r"], [1])):
        digest.update(json.dumps([list(x) for x in part]).encode())
    fp = I.train_fingerprint(base, 0, "explorations", (["c"], ["r"], [1]), (["c"], ["r"], [1]))
    assert fp == digest.hexdigest()
    assert I.train_fingerprint(IdentifierConfig(head="mlp"), 0, "explorations", (["c"], ["r"], [1]),
                               (["c"], ["r"], [1])) != fp


def test_ppo_update_with_trl_padding_whitening_gives_trl_returns():
    """ppo_update's returns_mean with whiten_rewards_padding="trl" is trl 0.9.6's, computed by the
    transcription in test_kl_estimators; the "zero" variant gives another value."""
    from test_kl_estimators import trl_compute_advantages

    t5 = tiny_t5(1)
    model = ActorCritic(t5, ValueHead(16)).eval()
    tok = tiny_tokenizer()
    enc = tok(CONTEXTS[:4], return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 2, 4, 3])
    mask = (torch.arange(5)[None] < lengths[:, None]).long()
    resp = torch.randint(3, 10, (4, 5), generator=g) * mask
    rewards = torch.randn(4, 5, generator=g) * mask
    old_values = torch.randn(4, 5, generator=g)
    with torch.no_grad():
        old_logprobs, _, _ = model(enc["input_ids"], enc["attention_mask"], resp, mask)
    out = {}
    for padding in ("trl", "zero"):
        cfg = PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, whiten_rewards=True,
                        whiten_rewards_padding=padding)  # the optimizer's lr 0 keeps the model fixed
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
        out[padding] = ppo_update(model, None, opt, enc["input_ids"], enc["attention_mask"], resp, mask,
                                  old_logprobs, old_values, rewards, cfg)
    _, trl_ret = trl_compute_advantages(old_values.double(), rewards.double(), mask.double(), 1.0, 0.95, True)
    expected = masked_mean(trl_ret, mask.double()).item()
    assert out["trl"]["returns_mean"] == pytest.approx(expected, rel=1e-5)
    assert out["zero"]["returns_mean"] != pytest.approx(expected, rel=1e-3)


def test_rollout_warped_kl_matches_transformers_processors():
    """Rollout's "warped" KL of each sampled token = log q_pi - log q_rho, with q_pi from transformers'
    processors on teacher-forced policy logits, q_rho the reference's logits through the same ban and
    temperature, restricted to q_pi's support."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    tok, t5 = tiny_tokenizer(), tiny_t5(5)
    model = ActorCritic(t5, ValueHead(16)).eval()
    ref = make_reference(t5)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    gen = GeneratorConfig(max_new_tokens=6, max_source_len=16, top_k=5, temperature=0.8)
    cfg = PPOConfig(min_new_tokens=3, kl_estimator="warped")
    torch.manual_seed(0)
    ro = rollout(model, ref, tok, CONTEXTS[:4], gen, cfg)
    labels = ro.response_ids.masked_fill(ro.response_mask == 0, -100).contiguous()
    with torch.no_grad():
        lp = t5(input_ids=ro.query_ids, attention_mask=ro.query_mask, labels=labels).logits.double()
        lr = ref(input_ids=ro.query_ids, attention_mask=ro.query_mask, labels=labels).logits.double()
    procs = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(1, 3, 1), TemperatureLogitsWarper(0.8),
                                 TopKLogitsWarper(5)])
    for b in range(4):
        for t in range(int(ro.response_mask[b].sum())):
            prefix = torch.zeros(1, 1 + t, dtype=torch.long)
            q_pi = torch.log_softmax(procs(prefix, lp[b, t][None].clone())[0], -1)
            x = lr[b, t].clone()
            if t < 3:
                x[1] = -math.inf
            q_rho = torch.log_softmax(torch.where(torch.isfinite(q_pi), x / 0.8, torch.tensor(-math.inf)), -1)
            y = ro.response_ids[b, t]
            assert ro.kl[b, t].item() == pytest.approx((q_pi[y] - q_rho[y]).item(), abs=1e-4)
    assert (ro.kl[ro.response_mask == 0] == 0).all()


def test_train_ppo_runs_the_authors_preset_on_a_tiny_model(tmp_path):
    P = get_profile("smoke", preset="authors")
    cfg = PPOConfig(**{**P.ppo.__dict__, "steps": 2, "batch_size": 8, "mini_batch_size": 2, "grad_accum": 4,
                       "ppo_epochs": 2, "checkpoint_every": 2, "min_new_tokens": 3})
    gen = GeneratorConfig(max_new_tokens=6, max_source_len=16, length_counts_start_token=True)
    res = train_ppo(tiny_t5(2), None, tiny_tokenizer(), WordScorer(), CONTEXTS, torch.full((16, 3), 2), cfg, gen,
                    tmp_path, progress=False, save_policy=False)
    log = res["log"]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    assert log[1]["kl_coef"] != log[0]["kl_coef"]  # adaptive controller moved beta
    assert max(r["response_len"] for r in log) <= 5  # max_length 6 counts the start token
