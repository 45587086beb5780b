"""The independent judge: a frozen backbone's features, heads trained on EPITOME-like records, save/load
that checks the backbone, the profile section, and SmolLM2's conversion from the verified GGUF."""

import dataclasses
import json
import os
import random

import pytest
import torch

from emprl import download
from emprl.data import MECHANISMS, EpitomeRecord
from emprl.models import judge, smollm2
from emprl.profiles import CHOICES, JudgeConfig, get_profile

# each response carries the level of each mechanism as a word: the rule a judge must learn
WORDS = {"emotional_reactions": ("calm", "sad", "sorry"), "interpretations": ("tree", "see", "understand"),
         "explorations": ("done", "maybe", "why")}
FILLER = "the a it is was to and of in my you we they day time home work week".split()


def records(n: int, seed: int) -> list[EpitomeRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        levels = {m: rng.randrange(3) for m in MECHANISMS}
        words = [WORDS[m][levels[m]] for m in MECHANISMS] + rng.sample(FILLER, 4)
        rng.shuffle(words)
        seeker = " ".join(rng.sample(FILLER, 6))
        out.append(EpitomeRecord(f"s{seed}-{i}", f"r{i}", seeker, " ".join(words), levels))
    return out


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield judge.Backbone.load("tiny-random", dtype="float32")
    torch.set_num_threads(threads)


CFG = JudgeConfig(backbone="tiny-random", max_context_len=16, max_response_len=16, dtype="float32", lr=1e-2,
                  epochs=80, patience=20, batch_size=16)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    train, val = records(240, seed=1), records(60, seed=2)
    model, results = judge.train_judge(CFG, train, val, folder / "ckpt", seed=0, cache_dir=folder / "cache",
                                       progress=False, backbone=tiny)
    return folder, train, val, model, results


def test_a_trained_judge_learns_a_separable_rule(trained):
    _, _, val, model, results = trained
    for m in MECHANISMS:
        assert results[m]["metrics"]["accuracy"] > 80, (m, results[m]["metrics"])  # chance: about 33
    levels = model.levels([r.seeker_post for r in val], [r.response_post for r in val])
    assert levels.shape == (len(val), 3) and levels.dtype == torch.long
    gold = torch.tensor([[r.levels[m] for m in MECHANISMS] for r in val])
    assert (levels == gold).float().mean() > 0.8
    table = judge.table_i(results)
    assert list(table["identifier"]) == list(MECHANISMS) and "weighted F1 (ours)" in table


def test_features_are_the_same_bits_with_the_cache_warm_and_cold(tiny, tmp_path, monkeypatch):
    contexts, responses = ["I lost my job today", "my dog is ill"] * 3, ["so sorry", "why?", "ok", "hm", "a", "b"]
    args = (16, 16, "mean", 4)
    cold = tiny.features(contexts, responses, *args, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("judge_features_*.safetensors"))) == 1
    uncached = tiny.features(contexts, responses, *args)
    assert torch.equal(cold, uncached)

    def no_forward(*a, **k):
        raise AssertionError("a warm cache must not run the backbone")

    monkeypatch.setattr(tiny, "model", no_forward)
    warm = tiny.features(contexts, responses, *args, cache_dir=tmp_path)
    assert torch.equal(cold, warm) and warm.dtype == torch.float32
    monkeypatch.undo()
    other = tiny.features(contexts, responses, 16, 16, "max", 4, cache_dir=tmp_path)  # other settings: a miss
    assert not torch.equal(other, cold) and len(list(tmp_path.glob("judge_features_*"))) == 2


def test_shared_context_features_equal_each_whole_text_alone(tiny):
    # the reference: each text in one pass of its own, unpadded, the response's states averaged by hand
    contexts = ["I lost my job today", "my dog is ill", "I lost my job today", "exams next week, scared",
                "my dog is ill", "I lost my job today"]
    responses = ["so sorry", "why? what happened to him, is he at the vet now or at home with you?", "ok",
                 "you will do fine", "oh no", "that is awful, how are you coping with it all?"]
    got = tiny.features(contexts, responses, 16, 16, "mean", 2)
    ids, starts = tiny.token_ids(contexts, responses, 16, 16)
    with torch.inference_mode():
        for i, (x, s) in enumerate(zip(ids, starts)):
            hidden = tiny.model(input_ids=torch.tensor([x])).last_hidden_state[0]
            torch.testing.assert_close(got[i], hidden[s:].mean(dim=0), rtol=1e-5, atol=1e-5)


def test_the_context_is_cut_from_the_left_and_the_response_from_the_right(tiny):
    ids, starts = tiny.token_ids(["one two three four five six"], ["alpha beta gamma delta"], 3, 4)
    tok = tiny.tokenizer
    assert ids[0][0] == tok.cls_token_id and starts[0] == 4
    assert tok.decode(ids[0][1:4]) == "four five six"
    assert tok.decode(ids[0][4:]).startswith("response")  # MiniLM lower-cases


def test_load_round_trips_resumes_and_refuses_another_backbone(trained, tiny):
    folder, train, val, model, results = trained
    contexts, responses = [r.seeker_post for r in val], [r.response_post for r in val]
    loaded = judge.Judge.load(folder / "ckpt")  # loads its own backbone, by name, in its saved dtype
    assert loaded.backbone.hash == tiny.hash
    assert torch.equal(loaded.logits(contexts, responses), model.logits(contexts, responses))
    again, resumed = judge.train_judge(CFG, train, val, folder / "ckpt", seed=0, cache_dir=folder / "cache",
                                       progress=False, backbone=tiny)
    assert all(r["resumed"] for r in resumed.values())
    assert all(resumed[m]["metrics"] == results[m]["metrics"] for m in MECHANISMS)
    # another seed is another training: retrained, not resumed
    _, other = judge.train_judge(CFG, train, val, folder / "other", seed=1, progress=False, backbone=tiny)
    assert not any(r["resumed"] for r in other.values())

    saved = json.loads((folder / "ckpt" / judge.CONFIG).read_text())
    (folder / "ckpt" / judge.CONFIG).write_text(json.dumps({**saved, "backbone_hash": "0" * 64}))
    try:
        with pytest.raises(ValueError, match="retrain the judge"):
            judge.Judge.load(folder / "ckpt", backbone=tiny)
        # heads trained on features computed another way (a judge from before the context was shared)
        (folder / "ckpt" / judge.CONFIG).write_text(json.dumps({k: v for k, v in saved.items() if k != "encoding"}))
        with pytest.raises(ValueError, match="features computed as .*retrain the judge"):
            judge.Judge.load(folder / "ckpt", backbone=tiny)
    finally:
        (folder / "ckpt" / judge.CONFIG).write_text(json.dumps(saved))


def test_auto_dtype_is_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(judge, "native_bf16", lambda: False)
    assert judge.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(judge, "native_bf16", lambda: True)
    assert judge.resolve_dtype("auto", "cpu") == "bfloat16"
    assert judge.resolve_dtype("float32", "cpu") == "float32"


def test_the_profile_section_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match=r"^judge.backbone must be one of"):
        JudgeConfig(backbone="gpt-2")
    with pytest.raises(ValueError, match=r"^judge.dtype must be one of"):
        JudgeConfig(dtype="float16")
    with pytest.raises(ValueError, match=r"^judge.lr must be > 0, got 0"):
        dataclasses.replace(JudgeConfig(), lr=0)
    with pytest.raises(ValueError, match=r"profile 'smoke': judge.max_response_len must be > 0"):
        get_profile("smoke", {"judge.max_response_len": 0})
    with pytest.raises(ValueError, match="judge.epochs must be int, got 2.5"):
        get_profile("offline", {"judge.epochs": 2.5})
    assert get_profile("smoke").judge.backbone == "tiny-random"
    assert get_profile("offline").judge.backbone == "smollm2"
    assert get_profile("paper").judge.backbone == "roberta-base"
    assert set(judge.BACKBONES) == set(CHOICES["judge.backbone"])


GGUF = download.llm_path("smollm2")
# the judge's backbone hash of SmolLM2 (scoring.state_fingerprint of its base model), which the offline judge's
# checkpoint records: the same from the base-only copy the conversion used to save
SMOLLM2_HASH = "bd463f19defd54d326c751f9e5760666b0a9a19f48ad7935633fbc1d9c9a2464"


@pytest.mark.slow
@pytest.mark.skipif(not GGUF.is_file(), reason="no SmolLM2 GGUF here (python -m emprl.download --llm smollm2)")
def test_smollm2_converts_from_the_gguf_and_its_copy_is_verified(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (tmp_path / "llm").mkdir()
        os.symlink(GGUF, tmp_path / "llm" / GGUF.name)
        backbone = judge.Backbone.load("smollm2", dtype="float32", cache_root=tmp_path)
        folder = tmp_path / "llm" / smollm2.CONVERTED
        assert "quantization_config" not in json.loads((folder / "config.json").read_text())
        manifest = json.loads((folder / smollm2.MANIFEST).read_text())
        assert manifest["source_sha256"] == download.LLMS["smollm2"].gguf_sha256
        assert backbone.dim == 576
        assert backbone.hash == SMOLLM2_HASH  # judges trained on the base-only copy load on this one
        features = backbone.features(["I failed my exam."], ["Oh no, I am so sorry. How are you feeling?"], 64, 48)
        assert features.shape == (1, 576) and torch.isfinite(features).all()

        # the copy is the whole causal LM, its head tied to the embeddings, and it still knows its facts
        from transformers import AutoModelForCausalLM
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        assert manifest["architecture"] == "LlamaForCausalLM"
        assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
        ids = backbone.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            next_token = lm(input_ids=ids).logits[0, -1].argmax()
        assert backbone.tokenizer.decode(next_token).strip() == "Paris"

        with open(folder / smollm2.WEIGHTS, "r+b") as f:  # one byte changed: the copy is refused
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))
        with pytest.raises(ValueError, match="sha256 mismatch"):
            judge.Backbone.load("smollm2", dtype="float32", cache_root=tmp_path)
    finally:
        torch.set_num_threads(threads)
