"""EmpathyScorer and cached gold labels, with tiny random identifiers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from emprl import identifiers as I
from emprl import scoring
from emprl.profiles import IdentifierConfig
from test_identifiers import CONTEXTS, RESPONSES, tiny_identifier

torch.set_num_threads(1)
MECHS = ("emotional_reactions", "interpretations", "explorations")  # the emprl.data contract


@pytest.fixture(scope="module")
def tokenizer():
    from emprl import encoders

    return encoders.load_tokenizer("minilm")


@pytest.fixture()
def scorer(tokenizer):
    models = {m: tiny_identifier(seed=10 * k) for k, m in enumerate(MECHS)}
    return scoring.EmpathyScorer(models, tokenizer, 24, 12, batch_size=3, mechanism_order=MECHS)


def test_logits_match_each_identifier_scored_alone(scorer, tokenizer):
    # duplicated contexts (shared encoding inside a batch) and an unsorted order
    contexts = CONTEXTS + CONTEXTS[::-1] + [CONTEXTS[0]]
    responses = RESPONSES + RESPONSES + ["", ]
    out = scorer.logits(contexts, responses)
    assert out.shape == (9, 3, 3)
    for k, m in enumerate(MECHS):
        naive = torch.stack([I.predict_logits(scorer.identifiers[m], tokenizer, [c], [r], 24, 12)[0]
                             for c, r in zip(contexts, responses)])
        assert torch.allclose(out[:, k], naive, atol=1e-5), m
    assert torch.equal(scorer.levels(contexts, responses), out.argmax(-1))
    scorer.chunk = 4  # internal chunks: same logits
    assert torch.allclose(scorer.logits(contexts, responses), out, atol=1e-5)


def test_bfloat16_option_close_to_float32_and_leaves_models_alone(scorer, tokenizer):
    ref = scorer.logits(CONTEXTS, RESPONSES)
    bf16 = scoring.EmpathyScorer(scorer.identifiers, tokenizer, 24, 12, mechanism_order=MECHS, dtype="bfloat16")
    assert torch.allclose(bf16.logits(CONTEXTS, RESPONSES), ref, atol=0.1)
    assert all(p.dtype == torch.float32 for m in scorer.identifiers.values() for p in m.parameters())
    assert bf16.fingerprint != scorer.fingerprint
    with pytest.raises(ValueError, match="dtype"):
        scoring.EmpathyScorer(scorer.identifiers, tokenizer, 24, 12, mechanism_order=MECHS, dtype="float16")


def test_empty_input_and_mismatch(scorer):
    assert scorer.logits([], []).shape == (0, 3, 3)
    with pytest.raises(ValueError, match="2 contexts but 1 responses"):
        scorer.logits(["a", "b"], ["c"])


def test_fingerprint_changes_with_weights(scorer):
    before = scorer.fingerprint
    assert scorer.fingerprint == before
    with torch.no_grad():
        scorer.identifiers["explorations"].classifier.bias.add_(1.0)
    scorer._fingerprint = None
    assert scorer.fingerprint != before


def examples():
    return [SimpleNamespace(context=(c,), response=r) for c, r in zip(CONTEXTS, RESPONSES)]


def test_gold_labels_cached_and_stale_cache_recomputed(scorer, tmp_path, monkeypatch):
    ctx = [f"Speaker: {c}" for c in CONTEXTS]
    first = scoring.gold_labels(scorer, examples(), tmp_path, contexts=ctx, progress=False)
    assert first.dtype == torch.long and first.shape == (4, 3)
    assert torch.equal(first, scorer.levels(ctx, RESPONSES))
    files = list(tmp_path.glob("gold_labels_*.json"))
    assert len(files) == 1

    calls = []
    real_levels = scoring.EmpathyScorer.levels
    monkeypatch.setattr(scoring.EmpathyScorer, "levels", lambda self, c, r: calls.append(1) or real_levels(self, c, r))
    again = scoring.gold_labels(scorer, examples(), tmp_path, contexts=ctx, progress=False)
    assert torch.equal(again, first) and calls == []  # served from the cache

    with torch.no_grad():  # new weights: the cache is stale
        scorer.identifiers["interpretations"].classifier.bias.copy_(torch.tensor([0.0, 0.0, 1e4]))
    scorer._fingerprint = None
    fresh = scoring.gold_labels(scorer, examples(), tmp_path, contexts=ctx, progress=False)
    assert calls and (fresh[:, 1] == 2).all()
    assert len(list(tmp_path.glob("gold_labels_*.json"))) == 1


def test_load_from_checkpoints(scorer, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring, "mechanisms", lambda: MECHS)
    cfg = IdentifierConfig(max_context_len=24, max_response_len=12)
    for m in MECHS:
        I.save_identifier(scorer.identifiers[m], tokenizer, tmp_path / m, cfg)
    loaded = scoring.EmpathyScorer.load(tmp_path, batch_size=3)
    assert loaded.fingerprint == scorer.fingerprint
    assert torch.equal(loaded.logits(CONTEXTS, RESPONSES), scorer.logits(CONTEXTS, RESPONSES))


def test_load_rejects_mixed_settings(scorer, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring, "mechanisms", lambda: MECHS)
    for k, m in enumerate(MECHS):
        I.save_identifier(scorer.identifiers[m], tokenizer, tmp_path / m,
                          IdentifierConfig(max_context_len=24 + k, max_response_len=12))
    with pytest.raises(ValueError, match="disagree"):
        scoring.EmpathyScorer.load(tmp_path)
