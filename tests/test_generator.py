"""Generator: tokenizer, build by profile, training, save/load, decoding, perplexity (tiny models)."""

import dataclasses
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import T5ForConditionalGeneration

from emprl import checkpoint as ckpt
from emprl.models import generator as G
from emprl.models import policy
from emprl.models.prefix import PrefixT5
from emprl.profiles import get_profile

torch.set_num_threads(1)

WORDS = "i feel so happy sad today because my dog cat friend job lost found new old house car".split()


def corpus(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    pick = lambda k: " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=g).tolist())
    contexts = [f"Speaker: {pick(3 + i % 5)}." for i in range(n)]
    responses = [f"oh {c.split()[2]} really?" for c in contexts]  # learnable: copy a context word
    return contexts, responses


def tiny_cfg(**kw):
    base = dict(vocab_size=60, d_model=16, d_ff=32, num_layers=2, num_heads=2, prefix_encoder_len=4,
                prefix_decoder_len=2, prefix_hidden=8, max_source_len=16, max_target_len=8, batch_size=8,
                lr=1e-2, full_lr=1e-2, epochs=2, full_epochs=2, max_new_tokens=6)
    return dataclasses.replace(get_profile("smoke").generator, **{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return corpus(40, 0), corpus(16, 1)


def test_tokenizer_special_ids_eos_and_roundtrip(data):
    tok = G.train_tokenizer(data[0][0] + data[0][1], 60)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("i feel happy today.")["input_ids"]
    assert ids[-1] == 1 and 0 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "i feel happy today."
    assert 3 < len(tok) <= 60


def test_encode_truncates_contexts_from_the_left(data):
    tok = G.train_tokenizer(data[0][0] + data[0][1], 60)
    text = "i feel so happy today because my dog found a new house"
    full = tok(text)["input_ids"]
    left = policy.encode(tok, [text], 5, "left")[0]
    right = policy.encode(tok, [text], 5, "right")[0]
    assert left == full[-5:]  # keeps the most recent tokens and </s>
    assert right[:4] == full[:4] and right[-1] == 1
    assert tok.truncation_side == "right"  # restored


def test_build_generator_by_tuning(data):
    prefix_model, tok = G.build_generator(tiny_cfg(), data[0][0] + data[0][1], seed=0)
    full_model, _ = G.build_generator(tiny_cfg(tuning="full"), data[0][0] + data[0][1], seed=0)
    assert isinstance(prefix_model, PrefixT5) and isinstance(full_model, T5ForConditionalGeneration)
    assert prefix_model.t5.config.vocab_size == len(tok)
    assert prefix_model.trainable_parameters() == sum(p.numel() for p in prefix_model.prefix.parameters())
    assert all(p.requires_grad for p in full_model.parameters())
    with pytest.raises(ValueError, match="tuning"):
        G.build_generator(tiny_cfg(tuning="lora"), ["a"], seed=0)


def test_offline_sizes_match_the_notes():
    """NOTES section 4: d_model 256, 4+4 layers, vocab 8k is about 9.4M parameters."""
    cfg = get_profile("offline").generator
    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(G.scratch_t5_config(cfg, cfg.vocab_size))
    assert abs(t5.num_parameters() / 1e6 - 9.4) < 0.1


def test_hub_model_offline_names_the_scratch_alternative(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(G.T5ForConditionalGeneration, "from_pretrained", offline)
    with pytest.raises(RuntimeError, match="'scratch'"):
        G.build_generator(tiny_cfg(model="t5-base"), None, seed=0)


@pytest.mark.parametrize("tuning", ["prefix", "full"])
def test_perplexity_equals_a_per_example_loop(data, tuning):
    (contexts, responses), _ = data
    model, tok = G.build_generator(tiny_cfg(tuning=tuning), contexts + responses, seed=0)
    model.eval()
    got = G.perplexity(model, tok, contexts[:7], responses[:7], batch_size=3)
    total, count = 0.0, 0
    with torch.no_grad():
        for c, r in zip(contexts[:7], responses[:7]):
            x = torch.tensor([tok(c)["input_ids"]])
            y = tok(r)["input_ids"]
            dec = torch.tensor([[0] + y[:-1]])  # decoder_start_token_id, then the gold tokens
            logp = model(input_ids=x, attention_mask=torch.ones_like(x), decoder_input_ids=dec).logits[0].log_softmax(-1)
            total -= sum(logp[j, t].item() for j, t in enumerate(y))
            count += len(y)
    assert got == pytest.approx(math.exp(total / count), rel=1e-5)
    assert 1 < got < 2 * len(tok)  # untrained: about the vocabulary size


def test_sampling_is_seeded_and_keeps_input_order(data):
    (contexts, responses), _ = data
    model, tok = G.build_generator(tiny_cfg(), contexts + responses, seed=0)
    cfg = tiny_cfg()
    a = policy.sample_responses(model, tok, contexts[:9], cfg, seed=1, batch_size=4, progress=False)
    assert a == policy.sample_responses(model, tok, contexts[:9], cfg, seed=1, batch_size=4, progress=False)
    assert a != policy.sample_responses(model, tok, contexts[:9], cfg, seed=2, batch_size=4, progress=False)
    # top_k=1 is greedy: the same per context whatever the batching, so order is checkable
    greedy = dataclasses.replace(cfg, top_k=1)
    one_by_one = [policy.sample_responses(model, tok, [c], greedy, progress=False)[0] for c in contexts[:9]]
    assert policy.sample_responses(model, tok, contexts[:9], greedy, batch_size=4, progress=False) == one_by_one
    # n samples per context from one encoder pass, in n blocks: greedy gives every block the one-by-one answers
    assert policy.sample_responses(model, tok, contexts[:9], greedy, batch_size=4, progress=False, n=3) == one_by_one * 3


@pytest.mark.parametrize("tuning", ["prefix", "full"])
def test_n_samples_per_context_share_the_encoder_and_differ(data, tuning):
    (contexts, responses), _ = data
    cfg = tiny_cfg(tuning=tuning)
    model, tok = G.build_generator(cfg, contexts + responses, seed=0)
    out = policy.sample_responses(model, tok, contexts[:5], cfg, seed=1, batch_size=2, progress=False, n=4)
    assert len(out) == 20
    blocks = [out[j * 5: (j + 1) * 5] for j in range(4)]
    assert len({tuple(b) for b in blocks}) > 1  # the samples of a context differ
    assert out == policy.sample_responses(model, tok, contexts[:5], cfg, seed=1, batch_size=2, progress=False, n=4)
    # the encoder runs once per batch of contexts, not once per sample
    calls = []
    encoder = model.t5.encoder if tuning == "prefix" else model.encoder
    hook = encoder.register_forward_hook(lambda mod, inp, outp: calls.append(outp.last_hidden_state.shape[0]))
    try:
        policy.sample_responses(model, tok, contexts[:5], cfg, seed=1, batch_size=2, progress=False, n=4)
    finally:
        hook.remove()
    assert calls == [2, 2, 1]


def test_paper_decoding_settings():
    cfg = get_profile("paper").generator
    assert (cfg.top_k, cfg.top_p, cfg.temperature, cfg.max_new_tokens) == (20, 1.0, 0.9, 30)
    assert (cfg.lr, cfg.batch_size, cfg.prefix_encoder_len, cfg.prefix_decoder_len) == (1e-4, 8, 40, 10)
    kw = policy.generation_kwargs(cfg, type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})())
    assert kw["do_sample"] and kw["top_k"] == 20 and kw["max_new_tokens"] == 30


@pytest.mark.parametrize("tuning", ["prefix", "full"])
def test_save_load_reproduces_generations_token_for_token(data, tmp_path, tuning):
    (contexts, responses), _ = data
    model, tok = G.build_generator(tiny_cfg(tuning=tuning), contexts + responses, seed=0)
    if tuning == "prefix":
        with torch.no_grad():  # a non-trivial prefix
            for p in model.prefix.parameters():
                p.add_(torch.randn_like(p))
    model.eval()
    G.save_generator(model, tok, tmp_path / tuning)
    G.save_generator(model, tok, tmp_path / tuning)  # overwriting is atomic and leaves no temp folders
    assert sorted(p.name for p in tmp_path.iterdir()) == [tuning]
    loaded, tok2 = G.load_generator(tmp_path / tuning)
    assert type(loaded) is type(model)
    x = policy.collate(policy.encode(tok, contexts[:5], 16, "left"), None, 0)
    kw = dict(do_sample=True, top_k=20, temperature=0.9, max_new_tokens=8)
    torch.manual_seed(0)
    a = model.generate(input_ids=x["input_ids"], attention_mask=x["attention_mask"], **kw)
    torch.manual_seed(0)
    b = loaded.generate(input_ids=x["input_ids"], attention_mask=x["attention_mask"], **kw)
    assert torch.equal(a, b)
    assert tok2(contexts[0])["input_ids"] == tok(contexts[0])["input_ids"]
    with pytest.raises(FileNotFoundError, match="generator.json"):
        G.load_generator(tmp_path)


def test_training_lowers_validation_loss(data, tmp_path):
    (train, valid) = data
    model, tok = G.build_generator(tiny_cfg(tuning="full", full_epochs=3), train[0] + train[1], seed=0)
    before = G.perplexity(model, tok, *valid)
    history = G.train_generator(model, tok, train, valid, tiny_cfg(tuning="full", full_epochs=3), tmp_path / "st",
                                seed=0, progress=False)
    evals = [h for h in history if h["valid_loss"] is not None]
    assert [h["step"] for h in evals] == [5, 10, 15]  # 40 examples / batch 8 = 5 steps per epoch
    assert G.perplexity(model, tok, *valid) < before
    best = min(h["valid_loss"] for h in evals)  # the best weights are loaded at the end
    assert math.log(G.perplexity(model, tok, *valid, max_source_len=16, max_target_len=8)) == pytest.approx(best, rel=1e-4)
    assert list(history[0])[:4] == ["step", "epoch", "train_loss", "valid_loss"]  # the columns plots.loss_curves reads


def test_prefix_training_moves_only_the_prefix(data, tmp_path):
    train, valid = data
    model, tok = G.build_generator(tiny_cfg(), train[0] + train[1], seed=0)
    t5_before = {k: v.clone() for k, v in model.t5.state_dict().items()}
    prefix_before = {k: v.clone() for k, v in model.prefix.state_dict().items()}
    G.train_generator(model, tok, train, valid, tiny_cfg(epochs=1), tmp_path, seed=0, progress=False)
    assert all(torch.equal(v, model.t5.state_dict()[k]) for k, v in t5_before.items())
    assert any(not torch.equal(v, model.prefix.state_dict()[k]) for k, v in prefix_before.items())


def test_early_stopping_on_validation_loss(data, tmp_path):
    train, valid = data
    cfg = tiny_cfg(tuning="full", full_lr=3.0, full_epochs=50, eval_every=1, patience=2)  # diverges at once
    model, tok = G.build_generator(cfg, train[0] + train[1], seed=0)
    history = G.train_generator(model, tok, train, valid, cfg, tmp_path, seed=0, progress=False)
    losses = [h["valid_loss"] for h in history]
    best_at = losses.index(min(losses))
    assert len(losses) == best_at + 3  # stopped after `patience` evaluations without improvement
    assert ckpt.load_state(tmp_path / "train_state.safetensors")[1]["stopped_early"]


def test_resume_continues_exactly(data, tmp_path):
    train, valid = data
    cfg = tiny_cfg(eval_every=2)
    straight, tok = G.build_generator(cfg, train[0] + train[1], seed=0)
    G.train_generator(straight, tok, train, valid, dataclasses.replace(cfg, max_steps=6), tmp_path / "a", seed=0,
                      progress=False)
    resumed, _ = G.build_generator(cfg, train[0] + train[1], seed=0)
    G.train_generator(resumed, tok, train, valid, dataclasses.replace(cfg, max_steps=2), tmp_path / "b", seed=0,
                      progress=False)
    fresh, _ = G.build_generator(cfg, train[0] + train[1], seed=0)  # a new process: weights come from the state
    history = G.train_generator(fresh, tok, train, valid, dataclasses.replace(cfg, max_steps=6), tmp_path / "b",
                                seed=0, progress=False)
    assert [h["step"] for h in history if h["valid_loss"] is not None] == [2, 4, 6]
    for (name, a), b in zip(straight.prefix.state_dict().items(), fresh.prefix.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # a finished run returns at once; another configuration is refused
    assert G.train_generator(fresh, tok, train, valid, dataclasses.replace(cfg, max_steps=6), tmp_path / "b",
                             seed=0, progress=False) == history
    with pytest.raises(ValueError, match="different run"):
        G.train_generator(fresh, tok, train, valid, dataclasses.replace(cfg, lr=0.5), tmp_path / "b", seed=0,
                          progress=False)
    # nor is a float32 run continued under bf16 autocast (runtime.precision=bf16): its steps would mix precisions
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="compute_dtype"):
        G.train_generator(fresh, tok, train, valid, dataclasses.replace(cfg, max_steps=8), tmp_path / "b", seed=0,
                          progress=False)


class Killed(RuntimeError):
    pass


def _untimed(rows):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def _train_recording(monkeypatch, state_dir, draws, kill_at=None):
    """Train a dropout-using full T5 (torch RNG) whose every batch also draws from python's and numpy's
    global RNGs (recorded in ``draws``); raise Killed at the ``kill_at``-th batch (evaluation batches count)."""
    def collate(*args, **kwargs):
        if len(draws) + 1 == kill_at:
            raise Killed(f"killed at batch {kill_at}")
        draws.append((random.random(), float(np.random.rand())))
        return policy.collate(*args, **kwargs)

    monkeypatch.setattr(G, "collate", collate)
    cfg = tiny_cfg(tuning="full", full_epochs=2, eval_every=2, patience=100)
    (train, valid) = corpus(40, 0), corpus(16, 1)
    tok = G.cached_tokenizer(train[0] + train[1], 60, state_dir.parent / "tok")  # one tokenizer for every run
    model, _ = G.build_generator(cfg, None, seed=0, tokenizer=tok)
    history = G.train_generator(model, tok, train, valid, cfg, state_dir, seed=0, progress=False)
    return model, history


def test_killed_mid_run_then_resumed_is_bit_identical(tmp_path, monkeypatch):
    """10 steps, evaluated every 2 (one batch each): batches s1 s2 e2 s3 s4 e4 s5 ...; the kill at batch 8 (step
    6) loses steps 5 and 6, which the resumed run redoes from the step-4 state with every RNG restored."""
    random.seed(1), np.random.seed(1)
    straight_draws = []
    straight, history = _train_recording(monkeypatch, tmp_path / "a", straight_draws)
    random.seed(1), np.random.seed(1)
    with pytest.raises(Killed):
        _train_recording(monkeypatch, tmp_path / "b", [], kill_at=8)
    assert ckpt.load_state(tmp_path / "b" / "train_state.safetensors")[1]["step"] == 4
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["best.safetensors", "train_state.safetensors"]
    random.seed(2), np.random.seed(2), torch.manual_seed(2)  # a new process: every RNG comes from the state
    resumed_draws = []
    resumed, resumed_history = _train_recording(monkeypatch, tmp_path / "b", resumed_draws)
    assert resumed_draws == straight_draws[6:]  # python and numpy continue where the step-4 state left them
    assert _untimed(resumed_history) == _untimed(history)
    assert [h["step"] for h in history if h["valid_loss"] is not None] == [2, 4, 6, 8, 10]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    fresh, _ = G.build_generator(tiny_cfg(tuning="full"), None, seed=0, tokenizer=G.cached_tokenizer([], 60,
                                                                                                   tmp_path / "tok"))
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), resumed.state_dict().values()))


def test_killed_while_writing_the_state_resumes_from_the_previous_pair(tmp_path, monkeypatch):
    """best.safetensors is written before the state: killed half-way through the step-4 state, the folder
    holds the step-2 state (and maybe the step-4 best weights, which the replay writes again)."""
    straight, history = _train_recording(monkeypatch, tmp_path / "a", [])
    real, state_writes = ckpt.atomic_write_bytes, []

    def half_then_die(path, data):
        if Path(path).name == "train_state.safetensors":
            state_writes.append(path)
            if len(state_writes) == 2:
                with open(Path(path).with_name(f"{Path(path).name}.tmp-{os.getpid()}"), "wb") as f:
                    f.write(data[: len(data) // 2])  # a temporary the kill leaves behind
                raise Killed("killed while writing the step-4 state")
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", half_then_die)
    with pytest.raises(Killed):
        _train_recording(monkeypatch, tmp_path / "b", [])
    monkeypatch.setattr(ckpt, "atomic_write_bytes", real)
    assert ckpt.load_state(tmp_path / "b" / "train_state.safetensors")[1]["step"] == 2
    resumed, resumed_history = _train_recording(monkeypatch, tmp_path / "b", [])
    assert _untimed(resumed_history) == _untimed(history) and not list((tmp_path / "b").glob("*.tmp-*"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_state_folder_of_the_older_layout_is_a_clear_error(data, tmp_path):
    train, valid = data
    (tmp_path / "state.json").write_text("{}")
    model, tok = G.build_generator(tiny_cfg(), train[0] + train[1], seed=0)
    with pytest.raises(ValueError, match="older layout.*delete the folder"):
        G.train_generator(model, tok, train, valid, tiny_cfg(), tmp_path, seed=0, progress=False)


def test_cached_tokenizer_is_trained_once_then_reused(data, tmp_path):
    texts = data[0][0] + data[0][1]
    first = G.cached_tokenizer(texts, 60, tmp_path / "tok")
    again = G.cached_tokenizer(["completely different words here"], 60, tmp_path / "tok")
    assert again.get_vocab() == first.get_vocab()
    model, tok = G.build_generator(tiny_cfg(), None, seed=0, tokenizer=first)
    assert tok is first and model.t5.config.vocab_size == len(first)
