"""The paper's ChatGPT baseline (Sec. IV-C): its 2-shot prompt sent to any OpenAI-compatible
chat-completions endpoint, standard library only.

The endpoint comes from the environment:

* ``EMPRL_LLM_URL``: the API base (``https://host/v1``) or the full ``.../chat/completions`` URL;
* ``EMPRL_LLM_MODEL``: the model name (the paper: ``gpt-3.5-turbo``);
* ``EMPRL_LLM_API_KEY``: the bearer token (optional for local servers).

When URL or model is unset, ``LLMEndpoint.from_env()`` returns None and callers skip the baseline
with ``SKIP_MESSAGE``.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Sequence

from emprl.progress import bar

# Sec. IV-C, verbatim apart from the bracketed slots, which are filled with "Context: ...\nResponse: ...".
PROMPT_TEMPLATE = (
    "Now generate a response (no more than 30 words) for the following context. There are two examples:\n\n"
    "{example_1}\n\n"
    "{example_2}\n\n"
    "{context}\n\n"
    "Response:"
)

SKIP_MESSAGE = (
    "LLM baseline skipped: set EMPRL_LLM_URL (e.g. https://api.openai.com/v1) and EMPRL_LLM_MODEL "
    "(e.g. gpt-3.5-turbo), and EMPRL_LLM_API_KEY if the endpoint needs one."
)


def build_prompt(context: str, examples: Sequence[tuple[str, str]]) -> str:
    """The paper's 2-shot prompt for one (format_context) context; ``examples`` are two (context, response) pairs."""
    if len(examples) != 2:
        raise ValueError(f"the paper's prompt is 2-shot: pass exactly two (context, response) examples, got {len(examples)}")
    shots = [f"Context: {c}\nResponse: {r}" for c, r in examples]
    return PROMPT_TEMPLATE.format(example_1=shots[0], example_2=shots[1], context=f"Context: {context}")


def pick_examples(contexts: Sequence[str], responses: Sequence[str], seed: int = 0) -> list[tuple[str, str]]:
    """Two (context, response) demonstrations drawn from the training split, seeded."""
    if len(contexts) < 2:
        raise ValueError("need at least two training examples for the 2-shot prompt")
    i, j = random.Random(seed).sample(range(len(contexts)), 2)
    return [(contexts[i], responses[i]), (contexts[j], responses[j])]


@dataclass(frozen=True)
class LLMEndpoint:
    url: str  # full chat-completions URL
    model: str
    api_key: str | None = None

    @classmethod
    def from_env(cls, environ=None) -> "LLMEndpoint | None":
        """The endpoint from EMPRL_LLM_URL / EMPRL_LLM_MODEL / EMPRL_LLM_API_KEY, or None when URL or model is unset."""
        env = os.environ if environ is None else environ
        url, model = env.get("EMPRL_LLM_URL", "").strip(), env.get("EMPRL_LLM_MODEL", "").strip()
        if not url or not model:
            return None
        if not url.rstrip("/").endswith("/chat/completions"):
            url = url.rstrip("/") + "/chat/completions"
        return cls(url=url, model=model, api_key=env.get("EMPRL_LLM_API_KEY") or None)


class LLMError(RuntimeError):
    """The endpoint failed or answered something that is not a chat completion."""


def chat_completion(endpoint: LLMEndpoint, prompt: str, temperature: float = 0.9, max_tokens: int = 60,
                    timeout: float = 60.0, retries: int = 2) -> str:
    """One chat-completions request with a single user message; returns the reply text, stripped.

    Retries (with 1 s, 2 s, ... back-off) on connection errors, HTTP 429 and 5xx.
    """
    body = json.dumps({
        "model": endpoint.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": temperature,
        "max_tokens": max_tokens,
    }).encode()
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    for attempt in range(retries + 1):
        request = urllib.request.Request(endpoint.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                payload = json.loads(reply.read().decode())
            break
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300]
            if (err.code == 429 or err.code >= 500) and attempt < retries:
                time.sleep(attempt + 1)
                continue
            raise LLMError(f"{endpoint.url}: HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt < retries:
                time.sleep(attempt + 1)
                continue
            raise LLMError(f"{endpoint.url}: cannot connect: {err}") from err
        except json.JSONDecodeError as err:
            raise LLMError(f"{endpoint.url}: the reply is not JSON: {err}") from err
    try:
        return payload["choices"][0]["message"]["content"].strip()
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise LLMError(f"{endpoint.url}: not a chat-completions reply: {str(payload)[:300]}") from err


def generate_responses(contexts: Sequence[str], examples: Sequence[tuple[str, str]], endpoint: LLMEndpoint | None = None,
                       **request_kwargs) -> list[str] | None:
    """The LLM's response to each context with the 2-shot prompt; None (and SKIP_MESSAGE printed) when no endpoint is configured."""
    endpoint = endpoint or LLMEndpoint.from_env()
    if endpoint is None:
        print(SKIP_MESSAGE)
        return None
    return [chat_completion(endpoint, build_prompt(c, examples), **request_kwargs)
            for c in bar(contexts, desc=f"LLM {endpoint.model}", leave=False)]
