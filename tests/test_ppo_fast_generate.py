"""fast_rollout (log-probs/values from generate) against a separate forward over the sampled tokens."""

from __future__ import annotations

import pytest
import torch

from emprl import ppo
from emprl.fast_generate import fast_rollout
from emprl.profiles import GeneratorConfig, PPOConfig

from test_ppo import WORDS, tiny_tokenizer  # noqa: E402  (shared tiny fixtures)




def tiny_policy(kind: str):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(WORDS) + 3, d_model=16, d_ff=32, d_kv=8, num_layers=2, num_decoder_layers=2,
                   num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    t5 = T5ForConditionalGeneration(cfg).eval()
    if kind == "full":
        return t5
    from emprl.prefix import Prefix, PrefixT5

    return PrefixT5(t5, Prefix.for_t5(cfg, 3, 2, 8)).eval()


@pytest.mark.parametrize("kind", ["full", "prefix"])
def test_fast_rollout_matches_a_separate_forward(kind):
    policy = tiny_policy(kind)
    torch.manual_seed(1)
    model = ppo.ActorCritic(policy, ppo.ValueHead(16)).eval()
    reference = ppo.make_reference(policy)
    with torch.no_grad():  # make the reference differ from the policy so the reference forward is checked too
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    tok = tiny_tokenizer()
    contexts = ["i am so sorry to hear that", "what happened", "it was a nice day you feel great", "i feel bad"]
    cfg = PPOConfig(min_new_tokens=2)
    gen = GeneratorConfig(max_new_tokens=8, max_source_len=16)
    torch.manual_seed(5)
    ro = fast_rollout(model, reference, tok, contexts, gen, cfg)
    # independent: the ActorCritic forward and the reference forward over the same sampled tokens
    with torch.no_grad():
        logprobs, values, entropy = model(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)
        ref = ppo.reference_logprobs(policy, reference, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)
    m = ro.response_mask.bool()
    assert m.sum() > len(contexts)  # real tokens were sampled
    assert torch.allclose(ro.logprobs[m], logprobs[m], atol=1e-5)
    assert torch.allclose(ro.values[m], values[m], atol=1e-5)
    assert torch.allclose(ro.entropy[m], entropy[m], atol=1e-5)
    assert torch.allclose(ro.ref_logprobs[m], ref[m], atol=1e-5)
    assert (ro.logprobs[m] - ro.ref_logprobs[m]).abs().max() > 1e-3  # policy != reference: not trivially equal
    # the same sampled responses as ppo.rollout with the same seed
    torch.manual_seed(5)
    slow = ppo.rollout(model, reference, tok, contexts, gen, cfg)
    assert torch.equal(slow.response_ids, ro.response_ids) and slow.responses == ro.responses
    assert torch.allclose(slow.logprobs[m], ro.logprobs[m], atol=1e-5)
