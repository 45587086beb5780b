"""The empathy reward as a trl reward function, the prompts, and two GRPO steps with LoRA on the tiny causal LM."""

from __future__ import annotations

import math

import pytest
import torch

from emprl.models import encoders, scoring, smollm2
from emprl.rl import grpo
from emprl.rl.best_of_n import level_prior
from emprl.rl.reward import chance_corrected_reward, empathy_reward
from test_identifiers import tiny_identifier

torch.set_num_threads(1)
MECHS = ("emotional_reactions", "interpretations", "explorations")  # the emprl.data contract
CONTEXTS = [["I lost my job today and I do not know what to do."],
            ["My dog died last week.", "Oh no, I am so sorry.", "He was fourteen."]]
GOLD = [[2, 0, 1], [1, 1, 0]]
PRIOR = level_prior(torch.tensor([[0, 0, 0], [2, 0, 1], [1, 1, 0], [0, 0, 2], [0, 0, 0]]))


@pytest.fixture(scope="module")
def scorer():
    models = {m: tiny_identifier(seed=10 * k) for k, m in enumerate(MECHS)}
    return scoring.EmpathyScorer(models, encoders.load_tokenizer("minilm"), 24, 12, batch_size=3,
                                 mechanism_order=MECHS)


def test_prompts_carry_the_generator_context_the_identifiers_context_and_the_gold():
    rows = grpo.prompt_dataset(CONTEXTS, torch.tensor(GOLD), max_context_tokens=6)
    assert rows.column_names == ["prompt", "context", "gold_levels"]
    last_words = "Listener: sorry. Speaker: He was fourteen."  # 6 words, markers kept
    assert rows[1]["prompt"] == [{"role": "system", "content": grpo.SYSTEM_PROMPT},
                                 {"role": "user", "content": last_words}]
    assert rows[1]["context"] == ("Speaker: My dog died last week. Listener: Oh no, I am so sorry. "
                                  "Speaker: He was fourteen.")
    assert rows["gold_levels"] == GOLD
    with pytest.raises(ValueError, match="gold_levels must be"):
        grpo.prompt_dataset(CONTEXTS, GOLD[:1], max_context_tokens=6)


def test_the_reward_function_is_the_empathy_reward_of_plain_and_conversational_completions(scorer):
    rows = grpo.prompt_dataset(CONTEXTS * 2, GOLD * 2, max_context_tokens=None)  # two completions per prompt
    texts = ["That sounds so hard, I am sorry.", "Why?", "What happened?", "I understand how you feel."]
    expected = empathy_reward(scorer.logits(rows["context"], texts), torch.tensor(rows["gold_levels"])).tolist()
    reward = grpo.empathy_reward_function(scorer)
    assert reward.__name__ == "empathy_reward"
    columns = {"prompts": rows["prompt"], "completion_ids": [[0]] * 4, "context": rows["context"],
               "gold_levels": rows["gold_levels"], "trainer_state": None}  # as trl passes them
    plain = reward(completions=texts, **columns)
    assert plain == expected and all(isinstance(r, float) for r in plain)
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    assert reward(completions=chat, **columns) == expected
    with pytest.raises(ValueError, match="end with the assistant's reply"):
        reward(completions=[[{"role": "user", "content": t}] for t in texts], **columns)

    corrected = grpo.empathy_reward_function(scorer, chance_corrected=True, prior=PRIOR)
    assert corrected.__name__ == "chance_corrected_empathy_reward"
    assert corrected(completions=chat, **columns) == chance_corrected_reward(
        scorer.logits(rows["context"], texts), torch.tensor(rows["gold_levels"]), PRIOR).tolist()
    with pytest.raises(ValueError, match="needs the prior"):
        grpo.empathy_reward_function(scorer, chance_corrected=True)
    with pytest.raises(ValueError, match="does not use it"):
        grpo.empathy_reward_function(scorer, prior=PRIOR)


def test_two_grpo_steps_train_the_lora_adapter_and_leave_the_base_model(scorer, tmp_path):
    """trl's GRPOTrainer with a LoRA adapter on every linear layer of the tiny causal LM, loaded from a local
    folder as the real one is, with the KL term on (beta > 0: with an adapter, trl's reference is the model
    with the adapter disabled)."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = smollm2.tiny_random_causal_lm()
    folder = tmp_path / "policy"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], max_steps=2,
                      per_device_train_batch_size=4, num_generations=2, max_completion_length=8, beta=0.04,
                      learning_rate=0.05, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(folder), reward_funcs=grpo.empathy_reward_function(scorer), args=args,
                          train_dataset=grpo.prompt_dataset(CONTEXTS * 2, GOLD * 2, max_context_tokens=None),
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora = [name for name in before if "lora_" in name]
    assert len(lora) == 2 * 2 * 7  # A and B of q, k, v, o, gate, up, down in each of the 2 layers
    # B moves at the first step (A's gradient is 0 while B is), A at the second
    assert all(not torch.equal(before[name], after[name]) for name in lora)
    assert all(torch.equal(before[name], after[name]) for name in before if "lora_" not in name)
    logged = [entry for entry in trainer.state.log_history if "rewards/empathy_reward/mean" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["reward"]) for entry in logged)
    assert logged[1]["kl"] > 0  # the trained adapter has moved the policy from the reference
