"""Device and precision: every stage takes the device of the model it is given (CI has only a CPU, so the
device is named explicitly), checkpoints saved in bf16 load anywhere in float32, and the stages run under
an outer bf16 autocast (what ``run.autocast()`` wraps around them on a GPU)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from emprl import checkpoint as ckpt
from emprl.eval import evaluation
from emprl.models import generator, identifiers, policy, scoring
from emprl.data import DialogueExample
from emprl.rl.ppo import gae, ppo_update, rollout
from emprl.rl.ppo_train import train_ppo
from emprl.profiles import GeneratorConfig, PPOConfig, get_profile

from test_generator import corpus, tiny_cfg  # noqa: E402  (shared tiny fixtures)
from test_identifiers import CFG, CONTEXTS, LABELS, RESPONSES, tiny_identifier  # noqa: E402
from test_ppo import CONTEXTS as PPO_CONTEXTS  # noqa: E402
from test_ppo import WordScorer, tiny_t5, tiny_tokenizer  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def id_tokenizer():
    from emprl.models import encoders

    return encoders.load_tokenizer("minilm")


def examples(contexts, responses):
    return [DialogueExample(str(i), "sad", "", (c,), r, 1) for i, (c, r) in enumerate(zip(contexts, responses))]


# --------------------------------------------------------------------------- every stage with an explicit device


def test_identifier_stages_run_on_the_given_device(id_tokenizer, tmp_path):
    model = tiny_identifier(0).to(CPU)
    data = (CONTEXTS, RESPONSES, LABELS)
    identifiers.train_identifier(model, id_tokenizer, data, data, dataclasses.replace(CFG, epochs=1), 0, progress=False)
    logits = identifiers.predict_logits(model, id_tokenizer, CONTEXTS, RESPONSES, 24, 12)
    assert logits.device == CPU and logits.dtype == torch.float32
    identifiers.save_identifier(model, id_tokenizer, tmp_path / "m", CFG)
    loaded, _, _ = identifiers.load_identifier(tmp_path / "m", device="cpu")
    assert next(loaded.parameters()).device == CPU
    assert torch.equal(logits, identifiers.predict_logits(loaded, id_tokenizer, CONTEXTS, RESPONSES, 24, 12))
    models = {m: tiny_identifier(k) for k, m in enumerate(scoring.mechanisms())}
    scorer = scoring.EmpathyScorer(models, id_tokenizer, 24, 12, batch_size=3, device=CPU)
    gold = scoring.gold_labels(scorer, examples(CONTEXTS, RESPONSES), tmp_path / "cache", progress=False)
    assert gold.shape == (4, 3) and gold.device == CPU


def test_generator_stages_run_on_the_given_device(tmp_path):
    (contexts, responses), valid = corpus(16, 0), corpus(8, 1)
    cfg = tiny_cfg(tuning="full", full_epochs=1)
    model, tok = generator.build_generator(cfg, contexts + responses, seed=0)
    model.to(CPU)
    generator.train_generator(model, tok, (contexts, responses), valid, cfg, tmp_path / "state", progress=False)
    total, count = generator.token_nll(model, tok, *valid, batch_size=4)
    assert count > 0 and total > 0
    texts = policy.sample_responses(model, tok, valid[0], cfg, batch_size=4, progress=False)
    generator.save_generator(model, tok, tmp_path / "g")
    loaded, _ = generator.load_generator(tmp_path / "g", device="cpu")
    assert policy.device_of(loaded) == CPU
    assert texts == policy.sample_responses(loaded, tok, valid[0], cfg, batch_size=4, progress=False)


def test_ppo_and_evaluation_run_on_the_given_device(tmp_path, id_tokenizer):
    tok, t5 = tiny_tokenizer(), tiny_t5().to(CPU)
    cfg = PPOConfig(steps=1, batch_size=4, mini_batch_size=2, ppo_epochs=1, min_new_tokens=2, checkpoint_every=1)
    gen = GeneratorConfig(max_new_tokens=5, max_source_len=12)
    res = train_ppo(t5, None, tok, WordScorer(), PPO_CONTEXTS[:4], torch.full((4, 3), 2), cfg, gen, tmp_path,
                    progress=False, save_policy=False)
    assert policy.device_of(res["model"]) == CPU and len(res["log"]) == 1
    models = {m: tiny_identifier(k) for k, m in enumerate(scoring.mechanisms())}
    scorer = scoring.EmpathyScorer(models, id_tokenizer, 24, 12, device="cpu")
    exs = examples(PPO_CONTEXTS[:4], ["i am so sorry", "what happened", "nice day", "you feel great"])
    E = dataclasses.replace(get_profile("smoke").evaluation, batch_size=2, bootstrap=10)
    out = evaluation.evaluate_system(t5, tok, exs, torch.zeros(4, 3, dtype=torch.long).numpy(), scorer, gen, E,
                                     seed=0, progress=False)
    assert len(out["responses"]) == 4 * E.samples_per_context and out["row"]["ppl"] > 1


# --------------------------------------------------------------------------- bf16 checkpoints load anywhere in fp32


def bf16_cast(model):
    """What a model trained in bf16 holds, seen in float32: the reference for a bf16 checkpoint."""
    return copy.deepcopy(model).to(torch.bfloat16).to(torch.float32)


@pytest.mark.parametrize("tuning", ["prefix", "full"])
def test_generator_saved_in_bf16_loads_on_cpu_in_float32(tmp_path, tuning):
    (contexts, responses) = corpus(16, 0)
    model, tok = generator.build_generator(tiny_cfg(tuning=tuning), contexts + responses, seed=0)
    model.eval()
    with torch.no_grad():  # weights that bf16 rounds
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    expected = bf16_cast(model)
    generator.save_generator(copy.deepcopy(model).to(torch.bfloat16), tok, tmp_path / "g")
    loaded, _ = generator.load_generator(tmp_path / "g", device="cpu")
    assert all(p.dtype == torch.float32 and p.device == CPU for p in loaded.parameters())
    batch = policy.collate(policy.encode(tok, contexts[:4], 16, "left"), policy.encode(tok, responses[:4], 8, "right"),
                           tok.pad_token_id, CPU)
    with torch.no_grad():
        got, want, orig = (m(**batch).logits for m in (loaded, expected, model))
    assert torch.equal(got, want)
    assert not torch.equal(got, orig)  # the bf16 rounding is real, so the comparison above can fail


def test_identifier_saved_in_bf16_loads_on_cpu_in_float32(tmp_path, id_tokenizer):
    model = tiny_identifier(3)
    expected = bf16_cast(model).eval()
    identifiers.save_identifier(copy.deepcopy(model).to(torch.bfloat16), id_tokenizer, tmp_path / "m", CFG)
    loaded, _, _ = identifiers.load_identifier(tmp_path / "m", device=CPU)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    got = identifiers.predict_logits(loaded, id_tokenizer, CONTEXTS, RESPONSES, 24, 12)
    assert torch.equal(got, identifiers.predict_logits(expected, id_tokenizer, CONTEXTS, RESPONSES, 24, 12))
    assert not torch.equal(got, identifiers.predict_logits(model, id_tokenizer, CONTEXTS, RESPONSES, 24, 12))


def test_trainable_state_saved_in_bf16_loads_into_a_float32_model(tmp_path):
    model = tiny_t5(seed=2)
    ckpt.save_tensors(tmp_path / "s.safetensors", {n: p.to(torch.bfloat16) for n, p in ckpt.trainable(model).items()})
    fresh = tiny_t5(seed=3)
    ckpt.load_trainable(fresh, ckpt.load_tensors(tmp_path / "s.safetensors", CPU), tmp_path / "s.safetensors")
    expected = bf16_cast(model)
    for (n, p), q in zip(fresh.named_parameters(), expected.parameters()):
        assert p.dtype == torch.float32 and torch.equal(p, q), n


# --------------------------------------------------------------------------- under an outer bf16 autocast


def test_rollout_and_update_under_bf16_autocast_keep_float32_quantities_and_weights():
    tok, t5 = tiny_tokenizer(), tiny_t5(seed=1)
    model = policy.ActorCritic(t5, policy.ValueHead(16)).eval()
    reference = policy.make_reference(t5)
    cfg = PPOConfig(min_new_tokens=2, batch_size=4, mini_batch_size=2, ppo_epochs=1)
    gen = GeneratorConfig(max_new_tokens=6, max_source_len=12)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ro = rollout(model, reference, tok, PPO_CONTEXTS[:4], gen, cfg)
        for name in ("logprobs", "ref_logprobs", "values", "entropy", "kl"):
            x = getattr(ro, name)
            assert x.dtype == torch.float32 and torch.isfinite(x).all(), name
        mask = ro.response_mask.float()
        rewards = torch.zeros_like(mask)
        rewards[torch.arange(4), mask.sum(1).long() - 1] = 1.0
        adv, _ = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
        assert adv.dtype == torch.float32
        before = copy.deepcopy(model.state_dict())
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        stats = ppo_update(model, None, optimizer, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask,
                           ro.logprobs, ro.values, rewards, cfg)
    assert all(map(lambda v: v == v, stats.values()))  # no NaN
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
