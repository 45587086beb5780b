"""The LLM baseline against the real thing: llama-cpp-python's server with the SmolLM2-135M-Instruct GGUF.

    make llm-test
    # or: python -m pytest -q -m llm_server tests/llm

Needs llama-cpp-python (``pip install -e ".[llm]"``, built from source) and the verified GGUF
(``python -m emprl.download --llm smollm2``); without either the tests skip and say which is missing.
Not part of ``make test``. Each test starts its own server on a free port, one thread, and runs our
client on five contexts of the smoke sample: the shape of real replies, the cache (a rerun needs no
server), and a client killed with SIGKILL mid-run, then resumed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emprl import download
from emprl.llm import server as llm_server
from emprl.llm import client as L
from emprl.profiles import get_profile

pytestmark = pytest.mark.llm_server

REPO = Path(__file__).resolve().parents[2]


def missing() -> str | None:
    """What is missing for a real server, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return llm_server.INSTALL_HINT
    for module in ("fastapi", "uvicorn", "sse_starlette", "pydantic_settings"):  # the [server] extra
        if importlib.util.find_spec(module) is None:
            return f"llama-cpp-python's server extra is missing ({module}): pip install -e \".[llm]\""
    gguf = download.llm_path("smollm2")
    if not gguf.is_file():
        return f"no SmolLM2 GGUF at {gguf}: python -m emprl.download --llm smollm2"
    return None


@pytest.fixture
def real_server(tmp_path):
    why = missing()
    if why:
        pytest.skip(f"real LLM server test skipped: {why}")
    server = llm_server.for_llm("smollm2", port=llm_server.free_port(), threads=1, log=tmp_path / "server.log")
    with server:
        yield server


@pytest.fixture(scope="module")
def prompts():
    return L.split_prompts(get_profile("smoke"), limit=5)[1]


def test_real_replies_have_the_shape_and_are_cached(real_server, prompts, tmp_path):
    assert real_server.models() == [real_server.model]
    endpoint = L.LLMEndpoint.from_env(real_server.env())
    cache = tmp_path / "cache.jsonl"
    run = L.complete_all(prompts, endpoint, cache, concurrency=1, progress=False)
    assert (run.cached, run.requested, run.retries) == (0, 5, {})
    assert all(isinstance(r, str) and r and r == r.strip() for r in run.responses), run.responses
    assert set(run.finish_reasons) <= {"stop", "length"}
    assert run.served_models == [real_server.model] * 5  # the alias, never the GGUF's path
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [r["response"] for r in records] == run.responses  # one request at a time: in order
    real_server.stop()
    again = L.complete_all(prompts, endpoint, cache, concurrency=1, progress=False)  # no server needed now
    assert (again.cached, again.requested, again.responses) == (5, 0, run.responses)


CLIENT = """
import sys
from emprl.llm import client as L
url, model, cache = sys.argv[1:4]
prompts = sys.stdin.read().split("\\x00")
L.complete_all(prompts, L.LLMEndpoint(url + "/chat/completions", model), cache, concurrency=1, progress=False)
"""


def test_a_killed_client_resumes_against_the_real_server(real_server, prompts, tmp_path):
    cache = tmp_path / "cache.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, real_server.url, real_server.model, str(cache)],
                            env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("\x00".join(prompts))
    proc.stdin.close()
    deadline = time.monotonic() + 600  # torch import and two real replies on a loaded machine
    while not (cache.exists() and cache.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # its next request is in flight on the server
    proc.wait()
    proc.stderr.close()
    done = [json.loads(line) for line in cache.read_text().splitlines()]  # every line whole
    assert 2 <= len(done) < 5

    endpoint = L.LLMEndpoint(real_server.url + "/chat/completions", real_server.model)
    resumed = L.complete_all(prompts, endpoint, cache, concurrency=1, progress=False)
    assert (resumed.cached, resumed.requested) == (len(done), 5 - len(done))
    assert resumed.responses[: len(done)] == [r["response"] for r in done]  # kept, not asked again
    assert all(r for r in resumed.responses)
    assert len(cache.read_text().splitlines()) == 5  # each prompt answered once
