"""LLM baseline against an OpenAI-compatible server on 127.0.0.1, started by the tests, that
misbehaves on purpose: slow replies, 429 with Retry-After, 500, malformed JSON, dropped
connections, 401, replies cut by max_tokens; and a client killed with SIGKILL, then resumed."""

import collections
import csv
import gzip
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emprl.llm import client as L
from emprl.eval.evaluation import read_generations

EXAMPLES = [("Speaker: I lost my keys.", "Oh no, did you find them?"),
            ("Speaker: I got a puppy!", "How fun! What breed?")]
KEY = "sk-test-0123456789SECRET"
REPO = Path(__file__).resolve().parents[1]


def tag_of(prompt: str) -> str:
    """The context a prompt ends with (the whole prompt when it is not the paper's template)."""
    return prompt.rsplit("Context: ", 1)[-1].removesuffix("\n\nResponse:")


def reply_of(prompt: str) -> str:
    return f"reply to [{tag_of(prompt)}]"


class FakeLLM:
    """The server's state. ``plan[tag]``: faults for the successive requests of that context (then
    normal replies). ``hold_after``: answer that many requests, hold every later one unanswered
    until ``release`` is set, then drop it."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.plan: dict[str, list[str]] = {}
        self.received: collections.Counter = collections.Counter()  # requests per context
        self.answered: collections.Counter = collections.Counter()  # normal replies sent per context
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self.hold_after: int | None = None
        self.granted = self.held = self.in_flight = self.max_in_flight = 0
        self.release = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _leave(self):
        """The request stops counting as in flight. Called before the reply is written (and on every
        way out), so that the client's next request, which can only follow the reply, never overlaps it
        in the count."""
        if not getattr(self, "_left", True):
            fake: FakeLLM = self.server.fake
            with fake.lock:
                fake.in_flight -= 1
            self._left = True

    def _send(self, status: int, body: bytes, content_type="application/json", headers=None):
        self._leave()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        fake: FakeLLM = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        tag = tag_of(prompt)
        auth = self.headers.get("Authorization")
        with fake.lock:
            n = fake.received[tag]
            fake.received[tag] += 1
            fake.times[tag].append(time.monotonic())
            fake.bodies.append(body)
            fake.auth.append(auth)
            fake.in_flight += 1
            self._left = False
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            faults = fake.plan.get(tag, [])
            fault = faults[n] if n < len(faults) else "ok"
            hold = fake.hold_after is not None and fake.granted >= fake.hold_after
            if fake.hold_after is not None and not hold:
                fake.granted += 1
            fake.held += hold
        try:
            if hold:
                fake.release.wait()
                self.close_connection = True
                return
            time.sleep(fake.delay)
            self._fault_or_reply(fault, fake, tag, prompt, body, auth)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._leave()  # a dropped or held request: before the connection closes, so before any retry

    def _fault_or_reply(self, fault, fake, tag, prompt, body, auth):
        echo = f"bad request from {auth}".encode()  # servers that echo the key; the client must redact it
        if fault == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', headers={"Retry-After": "0.3"})
        elif fault == "500":
            self._send(500, b'{"error": "oops: ' + echo + b'"}')
        elif fault in ("401", "403"):
            self._send(int(fault), b'{"error": {"message": "invalid api key ' + echo + b'"}}')
        elif fault == "404":
            self._send(404, b'{"error": {"message": "model not found"}}')
        elif fault == "badjson":
            self._send(200, b'{"choices": [{"message": ')
        elif fault == "html":
            self._send(200, b"<html><body>Welcome</body></html>", content_type="text/html")
        elif fault == "notchat":
            self._send(200, b'{"object": "list", "data": []}')
        elif fault == "legacy":
            self._send(200, b'{"object": "text_completion", "choices": [{"text": "hi", "index": 0}]}')
        elif fault == "drop":
            self.close_connection = True  # no status line at all
        elif fault == "slow":  # well past the client's timeout even on a loaded machine
            time.sleep(4.5)
            self._send(200, json.dumps({"choices": [{"message": {"content": "too late"}}]}).encode())
        else:
            finish = "length" if fault == "length" else "stop"
            reply = {"object": "chat.completion", "model": body["model"] + "-2026-01-01",
                     "choices": [{"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": f"  {reply_of(prompt)} \n"}}]}
            with fake.lock:
                fake.answered[tag] += 1
            self._send(200, json.dumps(reply).encode())


@pytest.fixture
def server():
    fake = FakeLLM()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.fake = fake
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base = f"http://127.0.0.1:{httpd.server_port}/v1"
    fake.endpoint = L.LLMEndpoint(url=fake.base + "/chat/completions", model="tiny-chat", api_key=KEY)
    yield fake
    fake.release.set()
    httpd.shutdown()
    httpd.server_close()


# timeout 3 s: only the "slow" fault (4.5 s) times out, not a plain reply on a busy CI machine
FAST = {"timeout": 3.0, "backoff": 0.01, "max_wait": 2.0, "progress": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- prompt and endpoint


def test_prompt_is_the_papers_two_shot_template():
    prompt = L.build_prompt("Speaker: I passed my exam!", EXAMPLES)
    assert prompt.startswith("Now generate a response (no more than 30 words) for the following context. "
                             "There are two examples:")
    assert prompt.endswith("Context: Speaker: I passed my exam!\n\nResponse:")
    assert "Context: Speaker: I lost my keys.\nResponse: Oh no, did you find them?" in prompt
    assert prompt.index("I lost my keys") < prompt.index("I got a puppy") < prompt.index("I passed")
    with pytest.raises(ValueError, match="2-shot"):
        L.build_prompt("x", EXAMPLES[:1])


def test_endpoint_from_env():
    assert L.LLMEndpoint.from_env({}) is None
    assert L.LLMEndpoint.from_env({"EMPRL_LLM_URL": "http://x/v1"}) is None
    ep = L.LLMEndpoint.from_env({"EMPRL_LLM_URL": "http://x/v1/", "EMPRL_LLM_MODEL": "m"})
    assert ep.url == "http://x/v1/chat/completions" and ep.api_key is None
    full = L.LLMEndpoint.from_env({"EMPRL_LLM_URL": "http://x:8000/chat/completions?k=1",
                                   "EMPRL_LLM_MODEL": "m", "EMPRL_LLM_API_KEY": KEY})
    assert full.api_key == KEY and KEY not in repr(full) and KEY not in str(full)
    assert full.public_url == "http://x:8000/chat/completions"
    with pytest.raises(ValueError, match="EMPRL_LLM_URL must be an http"):
        L.LLMEndpoint.from_env({"EMPRL_LLM_URL": "api.openai.com/v1", "EMPRL_LLM_MODEL": "m"})


def test_retry_after_header_forms():
    assert L._retry_after("2") == 2.0 and L._retry_after("0.25") == 0.25
    assert L._retry_after(None) is None and L._retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= L._retry_after(future) <= 31


def test_cache_key_covers_endpoint_model_prompt_sampling():
    ep = L.LLMEndpoint("http://a/v1/chat/completions", "m", KEY)
    base = L.cache_key(ep, "p", L.Sampling())
    others = [L.cache_key(L.LLMEndpoint("http://b/v1/chat/completions", "m"), "p", L.Sampling()),
              L.cache_key(L.LLMEndpoint(ep.url, "m2"), "p", L.Sampling()), L.cache_key(ep, "q", L.Sampling()),
              L.cache_key(ep, "p", L.Sampling(temperature=0.5)), L.cache_key(ep, "p", L.Sampling(max_tokens=9)),
              L.cache_key(ep, "p", L.Sampling(), sample=1)]
    assert len({base, *others}) == 7
    assert L.cache_key(L.LLMEndpoint(ep.url, "m", "other-key"), "p", L.Sampling()) == base  # key-free
    seeded = L.cache_key(ep, "p", L.Sampling(seed=3))
    assert seeded not in {base, *others} and seeded != L.cache_key(ep, "p", L.Sampling(seed=4))
    # without a seed, the key is the one computed before the field existed: caches stay valid
    blob = json.dumps({"url": ep.url, "model": "m", "prompt": "p", "sampling": {"temperature": 0.9,
                       "max_tokens": L.Sampling.max_tokens}, "sample": 0}, sort_keys=True)
    assert base == hashlib.sha256(blob.encode()).hexdigest()


def test_generate_skips_when_env_unset(monkeypatch, capsys, tmp_path):
    for var in ("EMPRL_LLM_URL", "EMPRL_LLM_MODEL", "EMPRL_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert L.generate_responses(["Speaker: hi"], EXAMPLES, tmp_path / "c.jsonl") is None
    assert "LLM baseline skipped: set EMPRL_LLM_URL" in capsys.readouterr().out
    assert not (tmp_path / "c.jsonl").exists()


# --------------------------------------------------------------------------- requests


def test_round_trip_against_local_server(server, monkeypatch, tmp_path):
    monkeypatch.setenv("EMPRL_LLM_URL", server.base)
    monkeypatch.setenv("EMPRL_LLM_MODEL", "tiny-chat")
    monkeypatch.setenv("EMPRL_LLM_API_KEY", KEY)
    contexts = ["Speaker: I passed my exam!",
                "Speaker: My cat is sick. Listener: Oh no. Speaker: The vet is closed."]
    out = L.generate_responses(contexts, EXAMPLES, tmp_path / "c.jsonl", sampling=L.Sampling(0.5),
                               progress=False)
    prompts = [L.build_prompt(c, EXAMPLES) for c in contexts]
    assert out == [reply_of(p) for p in prompts]  # stripped, in order
    assert server.auth[0] == f"Bearer {KEY}"
    body = server.bodies[0]
    assert body["model"] == "tiny-chat" and body["temperature"] == 0.5 and body["max_tokens"] == 384
    assert body["messages"] in ([{"role": "user", "content": p}] for p in prompts)
    assert "seed" not in body  # sent only when set
    L.chat_completion(server.endpoint, "seeded", L.Sampling(seed=5))
    assert server.bodies[-1]["seed"] == 5


def test_faults_are_retried_and_counted(server, capsys, tmp_path):
    prompts = [f"Speaker: case {i}" for i in range(8)]
    server.plan = {prompts[0]: ["429"], prompts[1]: ["500"], prompts[2]: ["badjson"], prompts[3]: ["drop"],
                   prompts[4]: ["slow"], prompts[5]: ["length"], prompts[6]: ["500", "429", "500"]}
    run = L.complete_all(prompts, server.endpoint, tmp_path / "c.jsonl", concurrency=8, retries=3, **FAST)
    assert run.responses == [reply_of(p) for p in prompts]
    assert run.retries == {"HTTP 429": 2, "HTTP 500": 3, "bad JSON": 1, "dropped": 1, "timeout": 1}
    assert run.truncated == 1 and run.finish_reasons[5] == "length"
    assert (run.cached, run.requested) == (0, 8)
    assert [server.received[p] for p in prompts] == [2, 2, 2, 2, 2, 1, 4, 1]
    # Retry-After (0.3 s) is honoured although the back-off would wait about 0.01 s
    assert server.times[prompts[0]][1] - server.times[prompts[0]][0] >= 0.29
    err = capsys.readouterr().err
    assert "1 of 8 replies were cut by max_tokens=384" in err and "HTTP 429 x2" in err
    assert run.model_label(server.endpoint) == "tiny-chat (tiny-chat-2026-01-01)"


def test_concurrency_is_bounded_and_progress_shows_rate_and_eta(server, tmp_path, capsys):
    # 0.2 s per reply: long enough that the three threads' requests overlap even when threads start late
    server.delay = 0.2
    prompts = [f"Speaker: {i}" for i in range(12)]
    L.complete_all(prompts, server.endpoint, tmp_path / "c.jsonl", concurrency=3, **{**FAST, "progress": True})
    assert server.max_in_flight == 3
    assert sum(server.received.values()) == 12
    err = capsys.readouterr().err
    # elapsed<ETA and the rate; tqdm writes s/req instead of req/s when a request takes over a second
    assert re.search(r"12/12 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(req/s|s/req)\]", err), err
    assert re.search(r"12 requested in [\d.]+ s, [\d.]+ req/s", err)


def test_fatal_errors_are_clear_and_keep_what_arrived(server, tmp_path):
    ep = server.endpoint
    for fault, error, pattern in [("401", L.LLMAuthError, "HTTP 401.*API key is missing, invalid.*was refused"),
                                  ("403", L.LLMAuthError, "HTTP 403.*API key is missing, invalid.*was refused"),
                                  ("404", L.LLMError, "HTTP 404.*EMPRL_LLM_URL is the API base"),
                                  ("notchat", L.LLMError, "not a chat-completions reply"),
                                  ("legacy", L.LLMError, "legacy /completions reply"),
                                  ("html", L.LLMError, "HTML page, not a chat-completions API")]:
        server.plan = {"hi": [fault]}
        server.received.clear()
        with pytest.raises(error, match=pattern) as info:
            L.chat_completion(ep, "hi", retries=3, backoff=0.01)
        assert server.received["hi"] == 1, f"{fault} must not be retried"
        assert KEY not in str(info.value)
    server.plan = {"no key": ["401"]}
    with pytest.raises(L.LLMAuthError, match="EMPRL_LLM_API_KEY is not set"):
        L.chat_completion(L.LLMEndpoint(ep.url, "m"), "no key", retries=0)
    server.plan = {"junk": ["badjson"] * 3}
    with pytest.raises(L.LLMError, match=r"not JSON.*gave up after 3 attempts"):
        L.chat_completion(ep, "junk", retries=2, backoff=0.01)
    dead = L.LLMEndpoint(url=f"http://127.0.0.1:{free_port()}/v1/chat/completions", model="m")
    with pytest.raises(L.LLMError, match="cannot reach http://127.0.0.1:.*gave up after 2 attempts"):
        L.chat_completion(dead, "hi", retries=1, backoff=0.01, timeout=2)

    # a 401 in the middle of a run stops it; the replies received before stay in the cache
    prompts = [f"Speaker: {i}" for i in range(6)]
    server.plan = {prompts[4]: ["401"]}
    with pytest.raises(L.LLMAuthError, match=r"replies are in the cache .*rerun to resume"):
        L.complete_all(prompts, ep, tmp_path / "c.jsonl", concurrency=1, **FAST)
    cached = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["response"] for r in cached] == [reply_of(p) for p in prompts[:4]]
    run = L.complete_all(prompts, ep, tmp_path / "c.jsonl", concurrency=4, **FAST)  # the key works again
    assert run.responses == [reply_of(p) for p in prompts] and (run.cached, run.requested) == (4, 2)


def test_api_key_never_leaks(server, tmp_path, monkeypatch, capfd):
    """Errors that echo the Authorization header, a run, the CLI: the key is nowhere."""
    server.plan = {"Speaker: 1": ["500", "500", "500"], "Speaker: 2": ["401"]}
    texts = []
    for prompt in ("Speaker: 1", "Speaker: 2"):
        with pytest.raises(L.LLMError) as info:
            L.complete_all([prompt], server.endpoint, tmp_path / "c.jsonl", retries=2, **FAST)
        texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
    assert "Bearer ***" in texts[0]  # the server's echo, redacted
    monkeypatch.setenv("EMPRL_LLM_URL", server.base)
    monkeypatch.setenv("EMPRL_LLM_MODEL", "tiny-chat")
    monkeypatch.setenv("EMPRL_LLM_API_KEY", KEY)
    assert L.main(["--profile", "smoke", "--out", str(tmp_path / "out"), "--limit", "3", "--no-progress"]) == 0
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]
    texts += [gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
              for p in tmp_path.rglob("*") if p.is_file()]
    assert server.auth[-1] == f"Bearer {KEY}"  # it was sent...
    assert not [t for t in texts if KEY in t]  # ...and never written anywhere


# --------------------------------------------------------------------------- cache, kill and resume


def test_torn_last_line_is_tolerated(server, tmp_path):
    cache = tmp_path / "c.jsonl"
    prompts = [f"Speaker: {i}" for i in range(4)]
    L.complete_all(prompts[:3], server.endpoint, cache, **FAST)
    cache.write_bytes(cache.read_bytes() + b'{"key": "abc", "respo')  # a kill in the middle of a write
    run = L.complete_all(prompts, server.endpoint, cache, **FAST)
    assert run.responses == [reply_of(p) for p in prompts] and (run.cached, run.requested) == (3, 1)
    lines = cache.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["key"] for line in lines)
    assert sum(server.received.values()) == 4


def test_one_writer_at_a_time_and_reading_while_it_writes(server, tmp_path):
    cache = tmp_path / "c.jsonl"
    L.complete_all(["Speaker: 1"], server.endpoint, cache, **FAST)
    writer = L.ResponseCache(cache)  # e.g. a long collection in another process
    with pytest.raises(L.LLMError, match="being written by another process.*another cache file"):
        L.complete_all(["Speaker: 1", "Speaker: 2"], server.endpoint, cache, **FAST)
    assert sum(server.received.values()) == 1  # refused before asking anything
    writer.add({"key": "k2", "response": "r"})
    os.write(writer._fd, b'{"key": "k3", "resp')  # a line being written
    before = cache.read_bytes()
    assert set(L.ResponseCache.read(cache)) == set(writer.entries)  # a look sees the complete lines...
    assert cache.read_bytes() == before  # ...and cuts nothing
    writer.close()
    run = L.complete_all(["Speaker: 1", "Speaker: 2"], server.endpoint, cache, **FAST)  # the writer is gone
    assert (run.cached, run.requested) == (1, 1)


CLIENT = """
import sys
from emprl.llm import client as L
from emprl.eval.evaluation import read_generations
url, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = [f"Speaker: context {i}" for i in range(n)]
L.complete_all(prompts, L.LLMEndpoint(url, "tiny-chat", "k"), cache, concurrency=4, timeout=30, progress=False)
"""


def test_killed_run_resumes_from_the_cache(server, tmp_path):
    n, answered_before_kill = 20, 7
    prompts = [f"Speaker: context {i}" for i in range(n)]
    cache = tmp_path / "c.jsonl"
    server.hold_after = answered_before_kill  # later requests hang until the client is dead
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, server.endpoint.url, str(cache), str(n)], env=env,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120  # the client imports torch (through emprl): slow on a loaded machine
    while not (cache.exists() and cache.read_text().count("\n") == answered_before_kill and server.held == 4):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # 7 replies cached, 4 requests in flight
    proc.wait()
    proc.stderr.close()
    server.release.set()  # the 4 held requests are dropped, unanswered
    before = [json.loads(line) for line in cache.read_text().splitlines()]  # intact
    assert len(before) == answered_before_kill
    answered_first = set(server.answered)
    received_first = collections.Counter(server.received)

    server.hold_after = None
    resumed = L.complete_all(prompts, L.LLMEndpoint(server.endpoint.url, "tiny-chat", "k"), cache, **FAST)
    asked_again = {p for p in prompts if server.received[p] > received_first[p]}
    assert asked_again == set(prompts) - answered_first  # only the missing ones: no answered prompt again
    assert all(server.answered[p] == 1 for p in prompts)  # every prompt answered exactly once overall
    assert (resumed.cached, resumed.requested) == (answered_before_kill, n - answered_before_kill)

    fresh = L.complete_all(prompts, L.LLMEndpoint(server.endpoint.url, "tiny-chat", "k"), tmp_path / "u.jsonl",
                           **FAST)
    assert resumed.responses == fresh.responses == [reply_of(p) for p in prompts]
    assert len(cache.read_text().splitlines()) == n


# --------------------------------------------------------------------------- command line


def test_cli_help_dry_run_and_run(server, tmp_path, monkeypatch, capsys):
    for var in ("EMPRL_LLM_URL", "EMPRL_LLM_MODEL", "EMPRL_LLM_API_KEY", "EMPRL_OUTPUT_DIR"):
        monkeypatch.delenv(var, raising=False)
    help_text = subprocess.run([sys.executable, "-m", "emprl.llm.client", "--help"], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert "--concurrency" in help_text and "--dry-run" in help_text and "EMPRL_LLM_API_KEY" in help_text

    out = tmp_path / "out"
    assert L.main(["--profile", "smoke", "--out", str(out)]) == 2  # no endpoint: the skip message
    assert "LLM baseline skipped" in capsys.readouterr().err
    assert L.main(["--profile", "smoke", "--out", str(out), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    examples, prompts = L.split_prompts(__import__("emprl.profiles").profiles.get_profile("smoke"))
    assert f"{len(prompts)} requests (0 already cached" in dry
    assert "the first prompt:\n" + prompts[0] in dry and not server.received

    monkeypatch.setenv("EMPRL_LLM_URL", server.base)
    monkeypatch.setenv("EMPRL_LLM_MODEL", "tiny-chat")
    assert L.main(["--profile", "smoke", "--out", str(out), "--no-progress", "--concurrency", "4"]) == 0
    rows = list(csv.DictReader((out / "generations" / "llm_tiny-chat_test.csv").open()))
    assert [r["response"] for r in rows] == [reply_of(p) for p in prompts]
    assert [r["gold"] for r in rows] == [ex.response for ex in examples]
    committed = read_generations(out / "generations" / "llm_tiny-chat_test_responses.jsonl.gz")  # no dataset text
    assert committed == [{"id": ex.id, "system": "LLM (tiny-chat)", "sample": 0, "response": reply_of(p)}
                         for ex, p in zip(examples, prompts)]
    meta = json.loads((out / "metrics" / "llm_tiny-chat_test.json").read_text())
    assert meta["n"] == len(prompts) and meta["requested"] == len(prompts) and meta["model"] == "tiny-chat"
    assert meta["endpoint"] == server.endpoint.url and len(meta["date"]) == 10
    assert L.main(["--profile", "smoke", "--out", str(out), "--dry-run"]) == 0
    assert f"{len(prompts)} requests ({len(prompts)} already cached, 0 to send)" in capsys.readouterr().out
    assert L.main(["--profile", "smoke", "--out", str(out), "--no-progress"]) == 0  # a rerun asks nothing
    assert sum(server.received.values()) == len(prompts)
