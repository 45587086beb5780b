"""The paper's ChatGPT baseline (Sec. IV-C): its 2-shot prompt sent to any OpenAI-compatible
chat-completions endpoint, standard library only (urllib and threads).

The endpoint comes from the environment:

* ``EMPRL_LLM_URL``: the API base (``https://host/v1``) or the full ``.../chat/completions`` URL;
* ``EMPRL_LLM_MODEL``: the model name (the paper: ``gpt-3.5-turbo``);
* ``EMPRL_LLM_API_KEY``: the bearer token (optional for local servers). It is read from the
  environment only and never written to logs, outputs, exceptions or the cache.

When URL or model is unset, ``LLMEndpoint.from_env()`` returns None and callers skip the baseline
with ``SKIP_MESSAGE``.

``complete_all`` sends the prompts with a bounded number of threads (default 8). Each reply is
appended to a JSONL cache (``ResponseCache``) the moment it arrives, keyed by a hash of endpoint,
model, prompt and sampling settings, so a rerun or a run resumed after a kill asks only for what
is missing. 429 and 5xx are retried with exponential back-off that honours ``Retry-After``; so are
timeouts, dropped connections and unparsable replies. A missing or invalid key, a wrong URL or a
reply that is not a chat completion stops the run with an error that says what to fix; the
replies received so far stay in the cache. Replies cut by ``max_tokens`` are kept and counted.

Command line (the test split of a profile, as notebook 05 evaluates it)::

    python -m emprl.llm.client --profile offline --dry-run   # request count and the first prompt
    python -m emprl.llm.client --profile offline             # OUT/generations/llm_<model>_test.csv
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import email.utils
import http.client
import json
import os
import random
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from emprl.progress import bar as progress_bar

try:
    import fcntl  # POSIX: the cache's writer lock
except ImportError:  # Windows: no lock
    fcntl = None

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
CACHE_NAME = "llm_responses.jsonl"  # under OUT/cache: one file for every model, endpoint and notebook
RETRY_STATUS = {408, 409, 429}  # and every 5xx


def build_prompt(context: str, examples: Sequence[tuple[str, str]]) -> str:
    """The paper's 2-shot prompt for one (format_context) context; ``examples``: two (context, response)
    pairs."""
    if len(examples) != 2:
        raise ValueError(f"the paper's prompt is 2-shot: pass exactly two (context, response) examples, "
                         f"got {len(examples)}")
    shots = [f"Context: {c}\nResponse: {r}" for c, r in examples]
    return PROMPT_TEMPLATE.format(example_1=shots[0], example_2=shots[1], context=f"Context: {context}")


def pick_examples(contexts: Sequence[str], responses: Sequence[str], seed: int = 0) -> list[tuple[str, str]]:
    """Two (context, response) demonstrations drawn from the training split, seeded."""
    if len(contexts) < 2:
        raise ValueError("need at least two training examples for the 2-shot prompt")
    i, j = random.Random(seed).sample(range(len(contexts)), 2)
    return [(contexts[i], responses[i]), (contexts[j], responses[j])]


def paper_shots(profile, data_dir=None) -> list[tuple[str, str]]:
    """The run's two demonstrations: drawn from the profile's training split with its seed (the paper's
    are not published)."""
    from emprl import data

    train = data.load_split(profile, "train", data_dir)
    return pick_examples([data.format_context(ex.context) for ex in train], [ex.response for ex in train],
                         profile.seed)


@dataclass(frozen=True)
class LLMEndpoint:
    url: str  # full chat-completions URL
    model: str
    api_key: str | None = field(default=None, repr=False)  # repr=False: never printed with the endpoint

    @classmethod
    def from_env(cls, environ=None) -> "LLMEndpoint | None":
        """The endpoint from EMPRL_LLM_URL / EMPRL_LLM_MODEL / EMPRL_LLM_API_KEY, or None when URL or
        model is unset."""
        env = os.environ if environ is None else environ
        url, model = env.get("EMPRL_LLM_URL", "").strip(), env.get("EMPRL_LLM_MODEL", "").strip()
        if not url or not model:
            return None
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"EMPRL_LLM_URL must be an http(s) URL such as https://api.openai.com/v1 or "
                             f"http://127.0.0.1:8000/v1, got {url!r}")
        if not url.rstrip("/").endswith("/chat/completions"):
            url = url.rstrip("/") + "/chat/completions"
        return cls(url=url, model=model, api_key=env.get("EMPRL_LLM_API_KEY", "").strip() or None)

    @property
    def public_url(self) -> str:
        """The URL without query string or credentials, for outputs and labels."""
        p = urllib.parse.urlparse(self.url)
        return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}{p.path}"


@dataclass(frozen=True)
class Sampling:
    """The request's sampling settings; they are part of the cache key. The paper does not give
    ChatGPT's; temperature 0.9 is its generator's. ``max_tokens`` is a ceiling, not a length target: a
    model that answers in the 30 words asked for stops long before it. SmolLM2-135M-Instruct, served
    locally, often runs on: on the first offline test contexts 60 cut 23 of 60 replies, 128 cut 10 of
    60, 256 cut 6 of 140 in tuning but 19 of the first 306 of the full run (6.2%), 384 cut 3 of 100.
    Its length tail falls by about a quarter every 32 tokens past 128, so 384 keeps the cut share
    near 2-3%, under the 5% we allow, for a few percent more time.
    ``seed``: sent only when set (the playground's seed; OpenAI and llama.cpp honour it)."""

    temperature: float = 0.9
    max_tokens: int = 384
    seed: int | None = None

    def key_fields(self) -> dict:
        """The settings that go into the cache key: an unset seed is left out, so that the keys of
        replies asked without one do not depend on the field's existence."""
        return {k: v for k, v in asdict(self).items() if not (k == "seed" and v is None)}


class LLMError(RuntimeError):
    """The endpoint failed or answered something that is not a chat completion."""


class LLMAuthError(LLMError):
    """HTTP 401/403: the API key is missing, invalid or not allowed to use the model."""


class _Retryable(Exception):
    """A fault worth another attempt: 429, 5xx, timeout, dropped connection, unparsable reply."""

    def __init__(self, cause: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.cause, self.retry_after = cause, retry_after


class _Stopped(Exception):
    """The run is being aborted; a worker waiting to retry gives up."""


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None  # "length": cut by max_tokens
    served_model: str | None  # the "model" field of the reply (e.g. the dated snapshot)
    retry_causes: tuple[str, ...] = ()  # one per failed attempt before this reply


def _redact(text: str, endpoint: LLMEndpoint) -> str:
    """``text`` with the API key (which some servers echo in error bodies) replaced by ***."""
    return text.replace(endpoint.api_key, "***") if endpoint.api_key else text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unparsable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _http_error(err: urllib.error.HTTPError, endpoint: LLMEndpoint) -> Exception:
    """The exception for an HTTP error status: _Retryable, or an LLMError that says what to fix."""
    try:
        detail = _redact(err.read().decode(errors="replace")[:300], endpoint)
    except (OSError, http.client.HTTPException):
        detail = ""
    where = f"{endpoint.public_url} (model {endpoint.model})"
    if err.code in (401, 403):
        key = "EMPRL_LLM_API_KEY is set but was refused" if endpoint.api_key else "EMPRL_LLM_API_KEY is not set"
        return LLMAuthError(f"HTTP {err.code} from {where}: the API key is missing, invalid or not allowed "
                            f"this model ({key}). Server said: {detail}")
    if err.code == 429 and "insufficient_quota" in detail:  # OpenAI: no credit left; waiting does not help
        return LLMError(f"HTTP 429 from {where}: the account has no quota left. Server said: {detail}")
    if err.code in RETRY_STATUS or err.code >= 500:
        return _Retryable(f"HTTP {err.code}", f"HTTP {err.code} from {where}: {detail}",
                          _retry_after(err.headers.get("Retry-After") if err.headers else None))
    if err.code == 404:
        return LLMError(f"HTTP 404 from {where}: no such endpoint or model. EMPRL_LLM_URL is the API base "
                        f"(https://host/v1) or the full .../chat/completions URL. Server said: {detail}")
    return LLMError(f"HTTP {err.code} from {where}: {detail}")


def _parse_reply(raw: bytes, content_type: str, endpoint: LLMEndpoint) -> Reply:
    where = endpoint.public_url
    if "html" in content_type:
        raise LLMError(f"{where} answered an HTML page, not a chat-completions API: check EMPRL_LLM_URL")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _Retryable("bad JSON", f"{where}: the reply is not JSON ({err}); first bytes: "
                         f"{_redact(raw[:120].decode(errors='replace'), endpoint)!r}") from None
    try:
        choice = payload["choices"][0]
        message, finish = choice["message"], choice.get("finish_reason")
        text = message.get("content")
        if text is None and finish == "length":  # a reasoning model spent max_tokens before answering
            text = ""
        if not isinstance(text, str):
            raise TypeError("message.content is not text")
    except (KeyError, IndexError, TypeError, AttributeError):
        choices = payload.get("choices") if isinstance(payload, dict) else None
        legacy = bool(choices) and isinstance(choices, list) and "text" in (choices[0] or {})
        hint = " (a legacy /completions reply: point EMPRL_LLM_URL at .../chat/completions)" if legacy else ""
        raise LLMError(f"{where}: not a chat-completions reply{hint}: "
                       f"{_redact(json.dumps(payload)[:300], endpoint)}") from None
    served = payload.get("model") if isinstance(payload.get("model"), str) else None
    return Reply(text.strip(), finish, served)


def chat_completion(endpoint: LLMEndpoint, prompt: str, sampling: Sampling = Sampling(), timeout: float = 60.0,
                    retries: int = 6, backoff: float = 1.0, max_wait: float = 60.0,
                    stop: threading.Event | None = None) -> Reply:
    """One chat-completions request with a single user message; the reply text is stripped.

    ``timeout``: seconds the socket may wait (to connect, or for the next bytes of the reply). A
    retryable fault (429, 408, 5xx, timeout, refused or dropped connection, unparsable reply) is
    retried up to ``retries`` times after ``Retry-After`` seconds when the server sends it, else
    ``backoff * 2**attempt`` with jitter; waits are capped at ``max_wait``.
    """
    request_body = {"model": endpoint.model, "messages": [{"role": "user", "content": prompt}],
                    "temperature": sampling.temperature, "max_tokens": sampling.max_tokens}
    if sampling.seed is not None:
        request_body["seed"] = sampling.seed
    body = json.dumps(request_body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    causes: list[str] = []
    for attempt in range(retries + 1):
        request = urllib.request.Request(endpoint.url, data=body, headers=headers, method="POST")
        try:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    reply = _parse_reply(response.read(), response.headers.get("Content-Type", ""), endpoint)
                return Reply(reply.text, reply.finish_reason, reply.served_model, tuple(causes))
            except urllib.error.HTTPError as err:
                raise _http_error(err, endpoint) from None
            except (TimeoutError, socket.timeout):
                raise _Retryable("timeout", f"{endpoint.public_url}: no reply within {timeout:g} s") from None
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    raise _Retryable("timeout", f"{endpoint.public_url}: no connection within {timeout:g} s") \
                        from None
                raise _Retryable("unreachable", f"cannot reach {endpoint.public_url}: {err.reason}") from None
            except (ConnectionError, http.client.HTTPException) as err:
                raise _Retryable("dropped", f"{endpoint.public_url}: connection dropped "
                                            f"({type(err).__name__}: {err})") from None
        except _Retryable as fault:
            causes.append(fault.cause)
            if attempt == retries:
                raise LLMError(f"{fault} (gave up after {retries + 1} attempts)") from None
            wait = fault.retry_after
            if wait is None:
                wait = backoff * 2**attempt * random.uniform(0.5, 1.0)  # jitter: threads do not retry in step
            if (stop.wait if stop is not None else time.sleep)(min(wait, max_wait)):  # True: the run stops
                raise _Stopped() from None
    raise AssertionError("unreachable: the last attempt returns or raises")


class ResponseCache:
    """Append-only JSONL of replies, one line each, written with one ``os.write`` as it arrives.

    A kill can leave at most the last line torn; it is cut off when the cache is opened (that one
    reply is asked again). Lines are flushed to the OS, not fsynced: a killed process loses
    nothing, a power cut may lose the last lines. One process writes a cache at a time (an exclusive
    ``flock``, released when it closes or dies): a second one, such as a notebook run during a long
    collection, would cut a line the first is writing and ask the same prompts again, so it is refused
    with an LLMError. ``read`` looks without writing.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise LLMError(f"{self.path} is being written by another process (a collection still running?): "
                           "wait until it ends, or give this run another cache file") from None
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        self.torn = int(len(complete) < len(raw))
        if self.torn:  # a torn last line: cut it so the next line starts clean
            os.ftruncate(self._fd, len(complete))
        self.entries, self.corrupt = self._parse(complete)
        if self.corrupt:
            print(f"warning: {self.corrupt} unreadable line(s) in {self.path} skipped "
                  "(their prompts are asked again)", file=sys.stderr)
        self._lock = threading.Lock()

    @staticmethod
    def _parse(complete: bytes) -> tuple[dict[str, dict], int]:
        entries, corrupt = {}, 0
        for line in complete.splitlines():
            try:
                record = json.loads(line)
                entries[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                corrupt += 1
        return entries, corrupt

    @classmethod
    def read(cls, path) -> dict[str, dict]:
        """The complete entries of a cache, without locking or cutting it (a run may be writing it)."""
        raw = Path(path).read_bytes() if Path(path).exists() else b""
        return cls._parse(raw[: raw.rfind(b"\n") + 1])[0]

    def add(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            self.entries[record["key"]] = record

    def close(self) -> None:
        os.close(self._fd)


def cache_key(endpoint: LLMEndpoint, prompt: str, sampling: Sampling, sample: int = 0) -> str:
    """sha256 of endpoint URL, model, prompt, sampling settings and ``sample`` (k-th copy of the same
    prompt in one run, so repeated contexts get their own samples). Never the key."""
    from emprl.checkpoint import key_digest

    return key_digest({"url": endpoint.url, "model": endpoint.model, "prompt": prompt,
                       "sampling": sampling.key_fields(), "sample": sample})


@dataclass
class Completions:
    """The replies of a run, in prompt order, and what it took."""

    responses: list[str]
    finish_reasons: list[str | None]
    served_models: list[str | None]
    dates: list[str]  # UTC ISO time each reply arrived
    cached: int  # replies taken from the cache
    requested: int  # replies requested in this run
    retries: dict[str, int]  # failed attempts by cause
    seconds: float

    @property
    def truncated(self) -> int:
        """Replies cut by max_tokens (finish_reason "length")."""
        return sum(r == "length" for r in self.finish_reasons)

    def date_label(self) -> str:
        days = sorted({d[:10] for d in self.dates})
        return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"

    def model_label(self, endpoint: LLMEndpoint) -> str:
        served = sorted({m for m in self.served_models if m})
        if not served or served == [endpoint.model]:
            return endpoint.model
        return f"{endpoint.model} ({', '.join(served)})"


def _plan(endpoint: LLMEndpoint, prompts: Sequence[str], sampling: Sampling) -> list[str]:
    seen: collections.Counter = collections.Counter()
    keys = []
    for p in prompts:
        keys.append(cache_key(endpoint, p, sampling, seen[p]))
        seen[p] += 1
    return keys


def complete_all(prompts: Sequence[str], endpoint: LLMEndpoint, cache_path, sampling: Sampling = Sampling(),
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 6, backoff: float = 1.0,
                 max_wait: float = 60.0, progress: bool = True) -> Completions:
    """The reply to every prompt: from the cache, else requested with ``concurrency`` threads.

    Each reply is appended to the cache as it arrives. A fatal error stops new requests, waits for
    those in flight (their replies are cached) and is raised; rerunning resumes.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    keys = _plan(endpoint, prompts, sampling)
    cache = ResponseCache(cache_path)
    todo = {k: p for k, p in zip(keys, prompts) if k not in cache.entries}
    n_cached = len(set(keys)) - len(todo)
    retry_counts: collections.Counter = collections.Counter()
    stop = threading.Event()
    start = time.perf_counter()

    def work(key: str, prompt: str) -> Reply:
        if stop.is_set():
            raise _Stopped()
        try:
            reply = chat_completion(endpoint, prompt, sampling, timeout, retries, backoff, max_wait, stop)
        except LLMError:
            stop.set()  # before this thread takes the next prompt
            raise
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        cache.add({"key": key, "response": reply.text, "finish_reason": reply.finish_reason,
                   "model": endpoint.model, "served_model": reply.served_model, "at": now})
        return reply

    print(f"LLM {endpoint.model} at {endpoint.public_url}: {len(keys)} prompts, {n_cached} in the cache, "
          f"{len(todo)} to request (concurrency {concurrency})", file=sys.stderr)
    bar = progress_bar(total=len(todo), desc=f"LLM {endpoint.model}", unit="req",
                       disable=not progress or not todo)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm")
    futures = [pool.submit(work, k, p) for k, p in todo.items()]
    try:
        truncated = 0
        for future in as_completed(futures):
            reply = future.result()  # a fatal error is raised here
            retry_counts.update(reply.retry_causes)
            truncated += reply.finish_reason == "length"
            bar.update(1)
            if retry_counts or truncated:
                bar.set_postfix(retries=sum(retry_counts.values()), cut=truncated, refresh=False)
    except BaseException as err:
        stop.set()
        for f in futures:
            f.cancel()
        in_flight = sum(f.running() for f in futures)
        if in_flight:
            print(f"stopping: waiting for {in_flight} request(s) in flight (their replies are cached)",
                  file=sys.stderr)
        pool.shutdown(wait=True)
        bar.close()
        cache.close()
        if isinstance(err, LLMError):
            raise type(err)(f"{err}\n{len(cache.entries)} replies are in the cache {cache.path}; "
                            "fix the cause and rerun to resume") from None
        raise
    pool.shutdown(wait=True)
    bar.close()
    cache.close()
    records = [cache.entries[k] for k in keys]
    out = Completions([r["response"] for r in records], [r.get("finish_reason") for r in records],
                      [r.get("served_model") for r in records], [r["at"] for r in records], n_cached,
                      len(todo), dict(retry_counts), time.perf_counter() - start)
    print(summary(out, sampling, endpoint), file=sys.stderr)
    return out


def summary(run: Completions, sampling: Sampling, endpoint: LLMEndpoint) -> str:
    """One paragraph: counts, rate, retries by cause and replies cut by max_tokens."""
    rate = f", {run.requested / run.seconds:.2f} req/s" if run.requested and run.seconds > 0 else ""
    text = (f"LLM {run.model_label(endpoint)}: {len(run.responses)} replies ({run.cached} from the cache, "
            f"{run.requested} requested in {run.seconds:.1f} s{rate})")
    if run.retries:
        text += "; retried: " + ", ".join(f"{c} x{n}" for c, n in sorted(run.retries.items()))
    if run.truncated:
        text += (f"\nwarning: {run.truncated} of {len(run.responses)} replies were cut by max_tokens="
                 f"{sampling.max_tokens} (finish_reason 'length'); they are kept as cut. Raise --max-tokens "
                 "(a new cache key) to avoid it.")
    return text


def generate_responses(contexts: Sequence[str], examples: Sequence[tuple[str, str]], cache_path,
                       endpoint: LLMEndpoint | None = None, **kwargs) -> list[str] | None:
    """The LLM's response to each context with the 2-shot prompt; None (and SKIP_MESSAGE printed)
    when no endpoint is configured. ``cache_path``: the JSONL cache (OUT/cache/CACHE_NAME in the
    notebooks); ``kwargs`` go to ``complete_all``."""
    endpoint = endpoint or LLMEndpoint.from_env()
    if endpoint is None:
        print(SKIP_MESSAGE)
        return None
    prompts = [build_prompt(c, examples) for c in contexts]
    return complete_all(prompts, endpoint, cache_path, **kwargs).responses


# --------------------------------------------------------------------------- a profile's test split


def split_prompts(profile, data_dir=None, split: str = "test", limit: int | None = None):
    """(examples, prompts): the split's examples as notebook 05 evaluates them (the first
    ``evaluation.max_examples``) and the 2-shot prompt of each, on the untruncated context."""
    from emprl import data

    examples = data.load_split(profile, split, data_dir)[: profile.evaluation.max_examples][:limit]
    shots = paper_shots(profile, data_dir)
    return examples, [build_prompt(data.format_context(ex.context), shots) for ex in examples]


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-") or "model"


def save_generations(out, examples, run: Completions, endpoint: LLMEndpoint, sampling: Sampling,
                     split: str = "test") -> Path:
    """OUT/generations/llm_<model>_<split>.csv (one row per example, with the dataset's text: not
    committed), OUT/generations/llm_<model>_<split>_responses.jsonl.gz (the replies alone, in the schema
    of our systems' ``evaluation.write_generations``, system ``LLM (<model>)``: committed) and
    OUT/metrics/llm_<model>_<split>.json (model, endpoint, date, settings, counts). No key, no paths."""
    import csv
    import io

    from emprl import data
    from emprl.checkpoint import atomic_write_bytes
    from emprl.eval.evaluation import write_generations

    name = f"llm_{_slug(endpoint.model)}_{split}"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["example_index", "conv_id", "context", "gold", "response", "finish_reason"])
    for i, (ex, text, finish) in enumerate(zip(examples, run.responses, run.finish_reasons)):
        writer.writerow([i, ex.conv_id, data.format_context(ex.context), ex.response, text, finish or ""])
    path = Path(out) / "generations" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue().encode())
    write_generations(path.with_name(f"{name}_responses.jsonl.gz"), [ex.id for ex in examples],
                      {f"LLM ({endpoint.model})": run.responses})
    meta = {"model": endpoint.model, "served_models": sorted({m for m in run.served_models if m}),
            "endpoint": endpoint.public_url, "date": run.date_label(), "split": split, "n": len(run.responses),
            "prompt": "2-shot, paper Sec. IV-C", "sampling": asdict(sampling), "truncated": run.truncated,
            "cached": run.cached, "requested": run.requested, "retries": run.retries, "seconds": run.seconds}
    (Path(out) / "metrics").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out) / "metrics" / f"{name}.json", (json.dumps(meta, indent=1) + "\n").encode())
    return path


def evaluate(run: Completions, score_contexts: Sequence[str], gold, scorer, eval_cfg, seed: int = 0) -> dict:
    """The LLM's Table II row through the metrics call of our systems, ``evaluation.score_responses`` (no
    PPL: the paper has none for ChatGPT). Returns {"row", "responses", "levels"} like evaluate_system."""
    from emprl.eval.evaluation import score_responses

    result = score_responses(run.responses, score_contexts, gold, scorer, eval_cfg, seed)
    result["row"]["truncated"] = run.truncated
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emprl.llm.client",
        description="The paper's 2-shot LLM baseline over a profile's test split, with any OpenAI-compatible "
                    "chat-completions endpoint. Endpoint: EMPRL_LLM_URL, EMPRL_LLM_MODEL (or --url/--model); "
                    "the key only from EMPRL_LLM_API_KEY. Replies are cached in OUT/cache/" + CACHE_NAME +
                    ": a rerun asks only for what is missing.")
    parser.add_argument("--profile", default="smoke", help="profile name (default smoke)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (draws the two demonstrations)")
    parser.add_argument("--data-dir", default=None, help="data directory (default $EMPRL_DATA_DIR)")
    parser.add_argument("--out", default=None,
                        help="output folder (default $EMPRL_OUTPUT_DIR or outputs/<profile>)")
    parser.add_argument("--url", default=None, help="overrides EMPRL_LLM_URL")
    parser.add_argument("--model", default=None, help="overrides EMPRL_LLM_MODEL")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait for bytes")
    parser.add_argument("--retries", type=int, default=6, help="retries per request on 429/5xx/timeouts")
    parser.add_argument("--backoff", type=float, default=1.0, help="first back-off in seconds (doubles)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="longest wait between attempts, seconds")
    parser.add_argument("--temperature", type=float, default=Sampling.temperature)
    parser.add_argument("--max-tokens", type=int, default=Sampling.max_tokens)
    parser.add_argument("--limit", type=int, default=None, help="only the first N test examples")
    parser.add_argument("--cache", default=None, help=f"cache file (default OUT/cache/{CACHE_NAME})")
    parser.add_argument("--dry-run", action="store_true", help="print the request count and the first prompt; "
                                                               "send nothing")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from emprl.profiles import get_profile
    from emprl.run import resolve_output_dir

    env = dict(os.environ)
    if args.url:
        env["EMPRL_LLM_URL"] = args.url
    if args.model:
        env["EMPRL_LLM_MODEL"] = args.model
    try:
        endpoint = LLMEndpoint.from_env(env)
    except ValueError as err:
        parser.error(str(err))
    if endpoint is None and not args.dry_run:
        print(SKIP_MESSAGE, file=sys.stderr)
        return 2
    profile = get_profile(args.profile, seed=args.seed)
    out = resolve_output_dir(profile.name, args.out)
    sampling = Sampling(args.temperature, args.max_tokens)
    examples, prompts = split_prompts(profile, args.data_dir, limit=args.limit)
    cache_path = Path(args.cache) if args.cache else out / "cache" / CACHE_NAME

    if args.dry_run:
        cached = 0
        if endpoint is not None:
            entries = ResponseCache.read(cache_path)  # also while a run writes it
            cached = sum(k in entries for k in _plan(endpoint, prompts, sampling))
        chars = sum(len(p) for p in prompts)
        print(f"profile {profile.name}, test split: {len(prompts)} requests ({cached} already cached, "
              f"{len(prompts) - cached} to send) to "
              f"{endpoint.public_url + ' model ' + endpoint.model if endpoint else '(no endpoint set)'}")
        print(f"prompt text: {chars} characters, about {chars // 4} input tokens (characters / 4); "
              f"at most {len(prompts) * sampling.max_tokens} output tokens (max_tokens {sampling.max_tokens})")
        print(f"\nthe first prompt:\n{prompts[0] if prompts else '(none)'}")
        return 0
    try:
        run = complete_all(prompts, endpoint, cache_path, sampling, args.concurrency, args.timeout,
                           args.retries, args.backoff, args.max_wait, progress=not args.no_progress)
    except LLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    path = save_generations(out, examples, run, endpoint, sampling)
    print(f"wrote {path.relative_to(out)} and metrics/{path.stem}.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
