"""The empathy reward as a trl reward function, the prompts, GRPO with LoRA on the tiny causal LM (trl directly
and through train_grpo: the adapter, resume, the placebo's gold), the grpo profile section, sample_replies and
the command."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from emprl import data
from emprl.eval import evaluation
from emprl.models import encoders, identifiers, scoring, smollm2
from emprl.profiles import GRPOSettings, IdentifierConfig, get_profile
from emprl.rl import grpo
from emprl.rl.best_of_n import level_prior
from emprl.rl.ppo_train import placebo_order
from emprl.rl.reward import chance_corrected_reward, empathy_reward
from test_identifiers import tiny_identifier

torch.set_num_threads(1)
MECHS = ("emotional_reactions", "interpretations", "explorations")  # the emprl.data contract
CONTEXTS = [["I lost my job today and I do not know what to do."],
            ["My dog died last week.", "Oh no, I am so sorry.", "He was fourteen."]]
GOLD = [[2, 0, 1], [1, 1, 0]]
# four training contexts with four different gold triples, so that a placebo's gold is never a context's own
TRAIN = CONTEXTS + [["I passed my driving test!"], ["My sister is visiting next week.", "That sounds lovely."]]
TRAIN_GOLD = GOLD + [[0, 2, 2], [0, 0, 1]]
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


def test_the_grpo_section_checks_its_values_by_name():
    with pytest.raises(ValueError, match=r"^grpo.lora_r must be > 0, got 0$"):
        GRPOSettings(lora_r=0)
    with pytest.raises(ValueError, match="grpo.model must be one of"):
        GRPOSettings(model="gpt2")
    with pytest.raises(ValueError, match="grpo.dtype must be one of"):
        GRPOSettings(dtype="float16")
    with pytest.raises(ValueError, match=r"grpo.lora_dropout must be in \[0, 1\)"):
        GRPOSettings(lora_dropout=1.0)
    with pytest.raises(ValueError, match="grpo.num_generations must be at least 2"):
        GRPOSettings(num_generations=1)
    with pytest.raises(ValueError, match="grpo.steps must be int"):
        GRPOSettings(steps=2.5)
    with pytest.raises(ValueError, match=r"grpo.snapshot_every must be a multiple of grpo.save_steps \(25\), got 30"):
        GRPOSettings(save_steps=25, snapshot_every=30)
    with pytest.raises(ValueError, match=r"profile 'smoke': grpo.lr must be > 0"):
        get_profile("smoke", {"grpo.lr": 0})
    assert get_profile("smoke").grpo.model == "tiny-random"
    assert {get_profile(p).grpo.model for p in ("offline", "gpu", "paper")} == {"smollm2"}


class CountingScorer:
    """The scorer, counting the completions it scores."""

    def __init__(self, scorer):
        self.scorer, self.dtype, self.scored = scorer, scorer.dtype, 0

    def logits(self, contexts, responses):
        self.scored += len(responses)
        return self.scorer.logits(contexts, responses)


def test_train_grpo_saves_an_adapter_that_moves_the_model_and_a_rerun_resumes(scorer, tmp_path):
    cfg = get_profile("smoke").grpo  # 2 steps of 2 prompts x 2 replies of 8 tokens
    folder = tmp_path / "grpo" / "empathy_seed0"
    counting = CountingScorer(scorer)
    run = grpo.train_grpo(cfg, TRAIN, TRAIN_GOLD, counting, folder, progress=False)
    assert run["global_step"] == 2 and run["resumed_from"] is None and counting.scored == 2 * 4
    assert (run["adapter"] / "adapter_model.safetensors").is_file()
    assert run["log"]["step"].tolist() == [1, 2] and run["log_path"].read_text().startswith("step,")
    assert run["log"]["reward"].notna().all() and run["log"]["kl"].iloc[1] > 0

    # the saved adapter loads back onto the base model, is the one trained, and changes its output
    base, tokenizer = grpo.load_policy("tiny-random")
    ids = tokenizer("I am so tired of everything.", return_tensors="pt")["input_ids"]
    before = base(ids).logits
    trained, _ = grpo.load_policy("tiny-random", adapter=run["adapter"])
    after = trained(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(after, run["model"].eval()(ids).logits, atol=1e-6)
    assert len(grpo.sample_replies(trained, tokenizer, ["Speaker: hello"], 2, 4, 1.0)) == 2

    # the same settings: resumed from the last checkpoint, nothing trained again; more steps: continued
    again = grpo.train_grpo(cfg, TRAIN, TRAIN_GOLD, counting, folder, progress=False)
    assert (again["resumed_from"], again["global_step"], counting.scored) == (2, 2, 8)
    assert again["log"]["step"].tolist() == [1, 2]
    longer = grpo.train_grpo(dataclasses.replace(cfg, steps=3), TRAIN, TRAIN_GOLD, counting, folder,
                             progress=False)
    assert (longer["resumed_from"], longer["global_step"], counting.scored) == (2, 3, 12)
    assert longer["log"]["step"].tolist() == [1, 2, 3]
    # the adapter of every step is kept (smoke: snapshot_every 1), though trl keeps its last two checkpoints only
    assert list(longer["snapshots"]) == [1, 2, 3] and not (folder / "checkpoint-1").exists()
    at_two, _ = grpo.load_policy("tiny-random", adapter=longer["snapshots"][2])
    assert torch.equal(at_two(ids).logits, after)  # step 2's snapshot is the adapter the 2-step run saved
    assert grpo.snapshots(folder / "nowhere") == {}
    # other settings: an error naming what differs
    with pytest.raises(ValueError, match=r"different run configuration.*grpo.lr \(saved 0.01, now 0.001\)"):
        grpo.train_grpo(dataclasses.replace(cfg, lr=1e-3), TRAIN, TRAIN_GOLD, scorer, folder, progress=False)


def test_the_placebo_rewards_each_context_against_the_gold_of_placebo_order(scorer, tmp_path, monkeypatch):
    seen = []  # (context, gold levels) as the reward function receives them
    real = grpo.empathy_reward_function

    def spying(*args, **kwargs):
        reward = real(*args, **kwargs)

        def spy(completions, context, gold_levels, **rest):
            seen.extend(zip(context, map(tuple, gold_levels)))
            return reward(completions=completions, context=context, gold_levels=gold_levels, **rest)

        spy.__name__ = reward.__name__
        return spy

    monkeypatch.setattr(grpo, "empathy_reward_function", spying)
    cfg = dataclasses.replace(get_profile("smoke").grpo, steps=2)
    grpo.train_grpo(cfg, TRAIN, TRAIN_GOLD, scorer, tmp_path / "placebo", "placebo", seed=3, progress=False)
    order = placebo_order(len(TRAIN), 3)
    contexts = grpo.prompt_dataset(TRAIN, TRAIN_GOLD, None)["context"]
    placebo = {contexts[i]: tuple(TRAIN_GOLD[order[i]]) for i in range(len(TRAIN))}
    assert len(seen) == 2 * 4 and all(placebo[c] == gold for c, gold in seen)
    assert all(gold != tuple(TRAIN_GOLD[contexts.index(c)]) for c, gold in seen)  # never the context's own


def test_sample_replies_are_seeded_and_laid_out_in_m_blocks_of_n(monkeypatch):
    model, tokenizer = grpo.load_policy("tiny-random")
    contexts = ["alpha bravo charlie", "delta", "echo foxtrot"]  # three lengths: length-sorted batches

    def sample(seed):
        return grpo.sample_replies(model, tokenizer, contexts, 2, 6, 1.0, seed=seed, batch_size=2)

    first = sample(0)
    assert len(first) == 2 * 3 and first == sample(0) and first != sample(1)

    # where each reply lands: a generate that answers with its prompt and the number of the sample (its rows are
    # each prompt repeated m = 2 times, as generate's own copies would be)
    def echo(input_ids, attention_mask, **_):
        number = [tokenizer.convert_tokens_to_ids(str(k % 2)) for k in range(len(input_ids))]
        return torch.cat([input_ids, input_ids, torch.tensor(number)[:, None]], 1)

    monkeypatch.setattr(model, "generate", echo)
    echoed = sample(0)
    for j in range(2):
        for i, context in enumerate(contexts):
            reply = echoed[j * len(contexts) + i]
            assert [c for c in contexts if c in reply] == [context] and reply.endswith(f" {j}")


def test_a_prompt_encoded_once_samples_what_generate_samples_from_m_copies():
    """The reference: generate with num_return_sequences, which encodes every copy of a left-padded prompt, under
    the same seed per batch; the replies must be the same, sample for sample (float32, prompts of other lengths)."""
    model, tokenizer = grpo.load_policy("tiny-random")
    torch.manual_seed(0)
    with torch.no_grad():  # a random model whose next token depends on the whole prompt and its positions
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    contexts = ["alpha bravo charlie delta echo", "foxtrot", "golf hotel india", "juliett kilo"]
    m, new_tokens, seed = 3, 7, 5
    ours = grpo.sample_replies(model, tokenizer, contexts, m, new_tokens, 1.0, seed=seed, batch_size=2)

    prompts = [tokenizer.apply_chat_template(grpo.chat_prompt(c), add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for c in contexts]
    pad, eos = tokenizer.pad_token_id, [tokenizer.eos_token_id]
    reference = [""] * (m * len(contexts))
    for b, idx in enumerate(data.length_sorted_batches([len(p) for p in prompts], 2)):
        torch.manual_seed(seed + b)
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
        tokens = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                top_p=1.0, max_new_tokens=new_tokens, num_return_sequences=m, pad_token_id=pad,
                                eos_token_id=eos)
        for k, text in enumerate(tokenizer.batch_decode(tokens[:, width:], skip_special_tokens=True)):
            reference[(k % m) * len(contexts) + idx[k // m]] = text.strip()
    assert ours == reference and len(set(ours)) > m  # the same replies, and not one reply repeated


def test_cached_replies_are_the_sampled_ones_and_a_changed_model_or_seed_samples_again(tmp_path, monkeypatch):
    model, tokenizer = grpo.load_policy("tiny-random")
    contexts = ["alpha bravo", "charlie"]
    uncached = grpo.sample_replies(model, tokenizer, contexts, 2, 5, 1.0, seed=0, batch_size=2)
    assert grpo.sample_replies(model, tokenizer, contexts, 2, 5, 1.0, seed=0, batch_size=2,
                               cache_dir=tmp_path) == uncached  # the first call samples and stores
    calls = []
    real_generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(1) or real_generate(**kw))
    assert grpo.sample_replies(model, tokenizer, contexts, 2, 5, 1.0, seed=0, batch_size=2,
                               cache_dir=tmp_path) == uncached and not calls  # the second reads them back
    grpo.sample_replies(model, tokenizer, contexts, 2, 5, 1.0, seed=1, batch_size=2, cache_dir=tmp_path)
    assert calls  # another seed is another entry
    calls.clear()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    grpo.sample_replies(model, tokenizer, contexts, 2, 5, 1.0, seed=0, batch_size=2, cache_dir=tmp_path)
    assert calls  # other weights: sampled again, not the stale entry
    assert len(list(tmp_path.glob("replies_*.json"))) == 3


def test_the_command_trains_then_writes_m_replies_to_each_validation_context(scorer, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("EMPRL_DATA_DIR", raising=False)  # smoke: the bundled sample
    for m in MECHS:
        identifiers.save_identifier(scorer.identifiers[m], scorer.tokenizer,
                                    tmp_path / "checkpoints" / "identifiers" / m,
                                    IdentifierConfig(max_context_len=24, max_response_len=12))
    assert grpo.main(["--profile", "smoke", "--variant", "placebo", "--seed", "1", "--out", str(tmp_path)]) == 0
    run = tmp_path / "checkpoints" / "grpo" / "placebo_seed1"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "log.csv").is_file()
    P = get_profile("smoke")
    valid = data.load_split(P, "valid")[: P.evaluation.study_max_examples]
    rows = evaluation.read_generations(evaluation.generations_path(
        tmp_path / "generations", "grpo_valid", grpo.system_name("tiny-random", "placebo", 1)))
    m = P.evaluation.samples_per_context
    assert [(r["id"], r["sample"]) for r in rows] == [(ex.id, j) for j in range(m) for ex in valid]


def test_a_finished_run_of_whole_epochs_trains_no_step_more(scorer, tmp_path):
    # 4 contexts = one epoch of the smoke steps (2 prompts x 2 replies): HF's loop, resumed at an epoch's end,
    # would train the next epoch's first step before looking at max_steps
    cfg = dataclasses.replace(get_profile("smoke").grpo, steps=1)
    four, gold = TRAIN[:4], TRAIN_GOLD[:4]
    runs = [grpo.train_grpo(cfg, four, gold, scorer, tmp_path / "run", progress=False) for _ in range(3)]
    assert [(r["resumed_from"], r["global_step"]) for r in runs] == [(None, 1), (1, 1), (1, 1)]
    assert all(r["log"]["step"].tolist() == [1] for r in runs)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(runs[2]["model"].eval()(ids).logits, runs[0]["model"].eval()(ids).logits, atol=1e-6)


@pytest.mark.parametrize("end_of_turn", [False, True])
def test_reference_nll_is_the_models_own_loss_on_each_reply(end_of_turn):
    model, tokenizer = grpo.load_policy("tiny-random")
    if end_of_turn:  # as ChatML: each turn closed by the end-of-turn token, then a newline that is no part of it
        tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}[SEP]\n{% endfor %}"
                                   "{% if add_generation_prompt %}assistant:{% endif %}")
    contexts = ["Speaker: I lost my job today.", "Speaker: My dog died. Listener: Oh no. Speaker: He was old.",
                "Speaker: I passed!"]
    references = ["That is so hard, I am sorry.", "I am sorry for your loss, he had a long life with you.", "Wow!"]
    nll, tokens = grpo.reference_nll(model, tokenizer, contexts, references, batch_size=2)  # padded batches
    for i, (context, reply) in enumerate(zip(contexts, references)):
        # the reference: the prompt, then the reply's own tokens (and the end-of-turn token), one unpadded row,
        # scored by transformers' own loss (the mean over the labelled tokens)
        prompt = tokenizer.apply_chat_template(grpo.chat_prompt(context), add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
        target = tokenizer(" " + reply, add_special_tokens=False)["input_ids"]
        target += [tokenizer.sep_token_id] if end_of_turn else []
        ids = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        assert tokens[i] == len(target)
        assert nll[i] == pytest.approx(loss * len(target), rel=1e-5)
