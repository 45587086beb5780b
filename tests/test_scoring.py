"""EmpathyScorer and cached gold labels, with tiny random identifiers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from emprl.models import identifiers as I
from emprl.models import scoring
from emprl.profiles import IdentifierConfig
from test_identifiers import CONTEXTS, RESPONSES, tiny_identifier

torch.set_num_threads(1)
MECHS = ("emotional_reactions", "interpretations", "explorations")  # the emprl.data contract


@pytest.fixture(scope="module")
def tokenizer():
    from emprl.models import encoders

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


def test_int8_option_close_to_float32_and_leaves_models_alone(scorer, tokenizer):
    ref = scorer.logits(CONTEXTS, RESPONSES)
    int8 = scoring.EmpathyScorer(scorer.identifiers, tokenizer, 24, 12, mechanism_order=MECHS, dtype="int8")
    out = int8.logits(CONTEXTS, RESPONSES)
    assert torch.allclose(out, ref, atol=0.1) and not torch.equal(out, ref)  # quantized: close, not equal
    assert all(isinstance(l, torch.nn.Linear) for m in scorer.identifiers.values() for l in m.modules()
               if "Linear" in type(l).__name__)  # the caller's models keep their float layers
    assert int8.fingerprint not in (scorer.fingerprint,)
    with pytest.raises(ValueError, match="runs on the CPU"):
        scoring.EmpathyScorer(scorer.identifiers, tokenizer, 24, 12, mechanism_order=MECHS, dtype="int8",
                              device="meta")


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


def test_context_cache_gives_the_logits_of_the_uncached_path_bit_for_bit(scorer, tokenizer):
    def fresh(cache_bytes):
        return scoring.EmpathyScorer(scorer.identifiers, tokenizer, 24, 12, batch_size=3, mechanism_order=MECHS,
                                     context_cache_bytes=cache_bytes)

    uncached, cold = fresh(0), fresh(1 << 30)
    assert uncached.context_cache is None
    # the gold-label pass: human responses; then sampled responses to the same contexts, in another order
    # and batch composition, with contexts of other lengths beside them and one the cache has not seen
    scorer.logits(CONTEXTS, RESPONSES)
    cache = scorer.context_cache
    assert len(cache) == 3 * len(set(CONTEXTS)) and cache.misses == 3 * len(set(CONTEXTS)) and cache.hits == 0
    contexts = CONTEXTS[::-1] + CONTEXTS + ["a context nobody has scored yet", "short"]
    responses = ["oh no", "that is great!", "why?", "tell me more", "i am sorry", "wow", "hm", "so?", "and", "x"]
    warm = scorer.logits(contexts, responses)
    assert cache.hits == 3 * len(set(CONTEXTS)) and cache.misses == 3 * (len(set(CONTEXTS)) + 2)
    # a reward must not depend on what was scored before: warm, cold and no cache agree bit for bit
    assert torch.equal(warm, cold.logits(contexts, responses))
    assert torch.equal(warm, uncached.logits(contexts, responses))
    assert torch.equal(scorer.logits(contexts, responses), warm)  # served from the cache a second time


def test_a_context_state_does_not_depend_on_its_batch(scorer, tokenizer):
    """What the cache relies on: one context's encoder state is the same bits alone or among others (batched
    encoding with padding would change its last bits, which the comparison below would catch)."""
    model = scorer.identifiers[MECHS[0]]
    contexts = CONTEXTS[::-1] + ["a context nobody has scored yet", "short"]  # lengths 4 to 24 tokens
    ids = I.tokenize(tokenizer, contexts, 24, "left")
    alone = [scorer._context_states("x", model, [c], [i])[0] for c, i in zip(contexts, ids)]
    together = scorer._context_states("y", model, contexts, ids)
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    batched = scorer._encode(model.encode_context, ids)  # the response side's batched path, for contrast
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(alone, batched))


def test_context_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = scoring.ContextCache(max_bytes=3 * 40)  # three [10] float32 states
    for i in range(3):
        cache.put(("er", f"c{i}"), torch.full((10,), float(i)))
    assert cache.get(("er", "c0")) is not None  # c0 is now the most recently used
    cache.put(("er", "c3"), torch.zeros(10))
    assert cache.bytes == 120 and len(cache) == 3
    assert cache.get(("er", "c1")) is None and cache.get(("er", "c0")) is not None
    cache.put(("er", "big"), torch.zeros(31))  # larger than the bound: not kept, nothing evicted
    assert len(cache) == 3 and cache.get(("er", "big")) is None
    view = torch.zeros(4, 10)[0]  # a slice is stored as a copy of its own (the batch it came from is freed)
    cache.put(("ip", "v"), view)
    assert cache.get(("ip", "v")).untyped_storage().nbytes() == 40
    with pytest.raises(ValueError, match="max_bytes"):
        scoring.ContextCache(-1)


def test_with_dtype_copies_the_float32_weights_once(scorer, tokenizer):
    assert scorer.with_dtype("float32") is scorer
    bf16 = scorer.with_dtype("bfloat16")
    assert bf16.dtype == "bfloat16" and bf16.context_cache is not scorer.context_cache
    assert all(p.dtype == torch.float32 for m in scorer.identifiers.values() for p in m.parameters())
    assert torch.allclose(bf16.logits(CONTEXTS, RESPONSES), scorer.logits(CONTEXTS, RESPONSES), atol=0.1)
    with pytest.raises(ValueError, match="start from the float32 scorer"):
        bf16.with_dtype("int8")
