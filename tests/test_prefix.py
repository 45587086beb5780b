"""Proofs that the T5 prefix works in training and in generate (issue 4, item 2), on a tiny T5."""

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from emprl.models.prefix import Prefix, PrefixT5

torch.set_num_threads(1)

ENC_LEN, DEC_LEN, HIDDEN = 5, 3, 12


def tiny_config(**kw):
    # more encoder than decoder layers: transformers 5.24 sizes the generate cache by num_layers
    base = dict(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=2, num_heads=2,
                dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5Config(**{**base, **kw})


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config()
    return PrefixT5(T5ForConditionalGeneration(cfg), Prefix.for_t5(cfg, ENC_LEN, DEC_LEN, HIDDEN)).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, 40, (3, 7), generator=g)
    mask = torch.ones_like(x)
    mask[1, 4:] = 0  # a padded row
    x[1, 4:] = 0
    y = torch.randint(3, 40, (3, 5), generator=g)
    return x, mask, y


def perturbed(prefix, scale=1.0, seed=5):
    other = copy.deepcopy(prefix)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def test_prefix_changes_training_loss():
    model, (x, m, y) = tiny_model(), batch()
    loss = model(x, m, labels=y).loss
    assert not torch.isclose(loss, model(x, m, labels=y, prefix=perturbed(model.prefix)).loss)
    # the same prefix through prefix= gives the same loss as the model's own
    assert torch.allclose(loss, model(x, m, labels=y, prefix=copy.deepcopy(model.prefix)).loss)


@pytest.mark.parametrize("group", ["encoder", "decoder", "cross"])
def test_each_prefix_group_changes_first_step_logits_inside_generate(group):
    model, (x, m, _) = tiny_model(), batch()
    other = copy.deepcopy(model.prefix)
    with torch.no_grad():
        other.embedding[group].add_(torch.randn_like(other.embedding[group]))
    kw = dict(do_sample=False, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    first = model.generate(x, m, **kw).scores[0]
    changed = model.generate(x, m, prefix=other, **kw).scores[0]
    assert first.shape == changed.shape == (3, 40)
    assert (first - changed).abs().max() > 1e-4


def test_prefix_changes_sampled_tokens_with_fixed_seed():
    model, (x, m, _) = tiny_model(), batch()
    kw = dict(do_sample=True, top_k=20, temperature=0.9, max_new_tokens=8, min_new_tokens=8)
    torch.manual_seed(3)
    a = model.generate(x, m, **kw)
    torch.manual_seed(3)
    a_again = model.generate(x, m, **kw)
    torch.manual_seed(3)
    b = model.generate(x, m, prefix=perturbed(model.prefix, 3.0), **kw)
    assert torch.equal(a, a_again)
    assert not torch.equal(a, b)


def test_t5_is_frozen_and_only_prefix_gets_gradients():
    model, (x, m, y) = tiny_model(), batch()
    model(x, m, labels=y).loss.backward()
    for name, p in model.t5.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    grads = [p.grad for p in model.prefix.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_trainable_parameter_count_matches_hand_computation():
    model = tiny_model()
    d_model, heads, d_kv, enc_layers, dec_layers = 16, 2, 8, 3, 2
    # per group: embedding L x d_model, Linear(d_model, hidden), Linear(hidden, layers * 2 * heads * d_kv)
    def group(length, layers):
        out = layers * 2 * heads * d_kv
        return length * d_model + (d_model * HIDDEN + HIDDEN) + (HIDDEN * out + out)
    expected = group(ENC_LEN, enc_layers) + group(DEC_LEN, dec_layers) + group(DEC_LEN, dec_layers)
    assert expected == (80 + 204 + 12 * 96 + 96) + 2 * (48 + 204 + 12 * 64 + 64) == 3700  # written out
    assert model.trainable_parameters() == expected
    folded = copy.deepcopy(model.prefix).fold()
    # folded: (layers, 2, heads, L, d_kv) per group
    assert sum(p.numel() for p in folded.parameters()) == 3 * 2 * 2 * 5 * 8 + 2 * (2 * 2 * 2 * 3 * 8) == 864


def test_folded_prefix_gives_the_same_logits():
    model, (x, m, y) = tiny_model(), batch()
    folded = copy.deepcopy(model.prefix).fold()
    assert folded.is_folded and len(list(folded.mlp.parameters())) == 0
    a = model(x, m, labels=y).logits
    b = model(x, m, labels=y, prefix=folded).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_generate_with_cache_equals_full_recompute_greedy_loop():
    """The decoder prefix is present at every cached decoding step and is not duplicated."""
    model, (x, m, _) = tiny_model(), batch()
    model.prefix = perturbed(model.prefix, 2.0)  # a prefix with a strong effect
    steps = 6
    cached = model.generate(x, m, do_sample=False, max_new_tokens=steps, min_new_tokens=steps, use_cache=True)
    dec = torch.zeros((3, 1), dtype=torch.long)  # decoder_start_token_id
    with torch.no_grad():
        for _ in range(steps):
            logits = model(x, m, decoder_input_ids=dec).logits[:, -1]
            logits[:, 1] = -float("inf")  # min_new_tokens: eos banned
            dec = torch.cat([dec, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, dec)


def test_padding_does_not_change_an_example():
    """Padding keys stay masked while prefix keys are visible: a padded row equals its unpadded self."""
    model, (x, m, y) = tiny_model(), batch()
    full = model(x, m, labels=y).logits[1]
    alone = model(x[1:2, :4], m[1:2, :4], labels=y[1:2]).logits[0]
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-5)


def test_encoder_attention_matches_a_manual_computation():
    """Prefix keys get zero relative position bias and are never masked (checked by hand on layer 0)."""
    model = tiny_model()
    attn = model.t5.encoder.block[0].layer[0].SelfAttention
    torch.manual_seed(2)
    h = torch.randn(2, 6, 16)
    mask_2d = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    additive = (1 - mask_2d[:, None, None, :].float()) * torch.finfo(torch.float32).min
    kv = model.prefix()["encoder"][0]  # (2, heads, L, d_kv)
    with torch.no_grad(), model.installed():
        got = attn(h, mask=additive)[0]
    with torch.no_grad():
        q = attn.q(h).view(2, 6, 2, 8).transpose(1, 2)
        k = torch.cat([kv[0].expand(2, -1, -1, -1), attn.k(h).view(2, 6, 2, 8).transpose(1, 2)], dim=2)
        v = torch.cat([kv[1].expand(2, -1, -1, -1), attn.v(h).view(2, 6, 2, 8).transpose(1, 2)], dim=2)
        bias = torch.cat([torch.zeros(1, 2, 6, ENC_LEN), attn.compute_bias(6, 6)], dim=-1)
        keep = torch.cat([torch.ones(2, ENC_LEN), mask_2d.float()], dim=1)[:, None, None, :]
        scores = (q @ k.transpose(-1, -2) + bias).masked_fill(keep == 0, -1e30)  # T5: no 1/sqrt(d) scaling
        manual = attn.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 16))
    torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-5)


def test_without_an_installed_prefix_t5_is_unchanged():
    model, (x, m, y) = tiny_model(), batch()
    plain = T5ForConditionalGeneration(tiny_config()).eval()
    plain.load_state_dict(model.t5.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.t5(input_ids=x, attention_mask=m, labels=y).logits,
                                   plain(input_ids=x, attention_mask=m, labels=y).logits, rtol=1e-5, atol=1e-5)
    assert all(a.emprl_prefix_kv is None for _, _, a in model._slots)  # uninstalled after use


def test_prefix_save_load_roundtrip(tmp_path):
    model, (x, m, y) = tiny_model(), batch()
    for folded in (False, True):
        prefix = copy.deepcopy(model.prefix)
        if folded:
            prefix.fold()
        prefix.save(tmp_path / str(folded))
        loaded = Prefix.load(tmp_path / str(folded))
        assert loaded.is_folded == folded
        torch.testing.assert_close(model(x, m, labels=y, prefix=loaded).logits, model(x, m, labels=y).logits,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="prefix_config.json"):
        Prefix.load(tmp_path / "nothing")


def test_forward_returns_decoder_hidden_states_when_asked():
    model, (x, m, y) = tiny_model(), batch()
    out = model(x, m, labels=y, output_hidden_states=True)
    assert len(out.decoder_hidden_states) == 2 + 1  # embeddings + each decoder layer
    assert out.decoder_hidden_states[-1].shape == (3, 5, 16)
    assert model(x, m, labels=y).decoder_hidden_states is None
