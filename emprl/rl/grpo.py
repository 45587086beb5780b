"""The empathy reward as a trl reward function, and the prompts it is computed on, for GRPO on an instruct LLM.

trl's GRPOTrainer samples several completions per prompt and calls each reward function with keyword
arguments: ``prompts``, ``completions``, ``completion_ids``, every other column of the training dataset
(repeated for each completion of its prompt), and ``trainer_state``, ``log_extra``, ``log_metric``. Each row of
``prompt_dataset`` carries what the reward needs beside the completion: the identifiers' text of its context
(``context``) and the gold levels of its human response (``gold_levels``), so that the reward is R_emp of
Eq. 2-3 as in PPO, or its chance-corrected form (``reward.chance_corrected_reward``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from emprl.data import context_texts
from emprl.rl.reward import chance_corrected_reward, empathy_reward

# The instruct model is told who it is in the dialogue (the contexts alternate "Speaker:" and "Listener:",
# the Listener replying last) and to keep it short, like the paper's ChatGPT prompt ("no more than 30 words").
SYSTEM_PROMPT = ("You are the Listener in this conversation. Reply to the Speaker's last message with empathy, "
                 "in no more than 30 words.")


def prompt_dataset(examples: Sequence, gold_levels, max_context_tokens: int | None):
    """A ``datasets.Dataset`` of conversational prompts for trl: "prompt" (the system message and the context as
    the user's message, cut to ``max_context_tokens`` words as the generator sees it), "context" (the whole
    context as the identifiers read it) and "gold_levels" (three ints). ``examples``: as ``data.context_texts``
    takes them; ``gold_levels`` [N, 3]: the identifiers' levels of their human responses
    (``scoring.gold_labels``)."""
    from datasets import Dataset

    generation_contexts, scoring_contexts = context_texts(examples, max_context_tokens)
    gold = np.asarray(gold_levels)
    if gold.shape != (len(scoring_contexts), 3):
        raise ValueError(f"gold_levels must be [{len(scoring_contexts)}, 3] (one triple per example), "
                         f"got shape {gold.shape}")
    prompts = [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": c}]
               for c in generation_contexts]
    return Dataset.from_dict({"prompt": prompts, "context": scoring_contexts, "gold_levels": gold.tolist()})


def empathy_reward_function(scorer, chance_corrected: bool = False, prior: torch.Tensor | None = None):
    """A trl reward function: R_emp (Eq. 2-3) of each completion against its row's gold levels, as floats.

    ``scorer``: the identifiers (``EmpathyScorer``), scoring (row's ``context``, completion). With
    ``chance_corrected``, ``reward.chance_corrected_reward`` with ``prior`` [27] (``best_of_n.level_prior`` of
    the training split). Completions are strings, or, with conversational prompts, lists of messages whose
    last is the assistant's reply. trl logs the reward under the function's ``__name__``."""
    if chance_corrected and prior is None:
        raise ValueError("the chance-corrected reward needs the prior: best_of_n.level_prior(gold of the "
                         "training split)")
    if prior is not None and not chance_corrected:
        raise ValueError("a prior was given for the plain empathy reward, which does not use it; pass "
                         "chance_corrected=True to subtract its expectation")

    def reward(completions: list, context: list[str], gold_levels: list[list[int]], **_) -> list[float]:
        responses = [c if isinstance(c, str) else _reply(c) for c in completions]
        logits = scorer.logits(list(context), responses)  # [B, 3, 3], Eq. 4
        gold = torch.tensor(gold_levels, dtype=torch.long)
        if chance_corrected:
            return chance_corrected_reward(logits, gold, prior).tolist()
        return empathy_reward(logits, gold).tolist()

    reward.__name__ = "chance_corrected_empathy_reward" if chance_corrected else "empathy_reward"
    return reward


def _reply(messages: list[dict]) -> str:
    """The text of a conversational completion: its last message, which must be the assistant's."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"a conversational completion must end with the assistant's reply, got {messages!r}")
    return messages[-1]["content"]
