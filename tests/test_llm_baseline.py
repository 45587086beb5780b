"""LLM baseline against a small OpenAI-compatible server on 127.0.0.1 started by the test."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from emprl import llm_baseline as L

EXAMPLES = [("Speaker: I lost my keys.", "Oh no, did you find them?"), ("Speaker: I got a puppy!", "How fun! What breed?")]


class _Handler(BaseHTTPRequestHandler):
    requests: list = []
    mode = "ok"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).mode == "error":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "bad model"}}')
            return
        if type(self).mode == "flaky" and len(type(self).requests) == 1:
            self.send_response(503)
            self.end_headers()
            return
        prompt = body["messages"][0]["content"]
        reply = {"choices": [{"message": {"role": "assistant", "content": f"  reply to {len(prompt)} chars \n"}}]}
        if type(self).mode == "garbage":
            reply = {"nothing": 1}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.requests = []
    _Handler.mode = "ok"
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, _Handler
    httpd.shutdown()
    httpd.server_close()


def test_prompt_is_the_papers_two_shot_template():
    prompt = L.build_prompt("Speaker: I passed my exam!", EXAMPLES)
    assert prompt.startswith("Now generate a response (no more than 30 words) for the following context. There are two examples:")
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
    full = L.LLMEndpoint.from_env({"EMPRL_LLM_URL": "http://x/chat/completions", "EMPRL_LLM_MODEL": "m", "EMPRL_LLM_API_KEY": "k"})
    assert full.url == "http://x/chat/completions" and full.api_key == "k"


def test_generate_skips_when_env_unset(monkeypatch, capsys):
    for var in ("EMPRL_LLM_URL", "EMPRL_LLM_MODEL", "EMPRL_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert L.generate_responses(["Speaker: hi"], EXAMPLES) is None
    assert "LLM baseline skipped: set EMPRL_LLM_URL" in capsys.readouterr().out


def test_round_trip_against_local_server(server, monkeypatch):
    httpd, handler = server
    monkeypatch.setenv("EMPRL_LLM_URL", f"http://127.0.0.1:{httpd.server_port}/v1")
    monkeypatch.setenv("EMPRL_LLM_MODEL", "tiny-chat")
    monkeypatch.setenv("EMPRL_LLM_API_KEY", "secret")
    contexts = ["Speaker: I passed my exam!", "Speaker: My cat is sick. Listener: Oh no. Speaker: The vet is closed."]
    out = L.generate_responses(contexts, EXAMPLES, temperature=0.5)
    prompts = [L.build_prompt(c, EXAMPLES) for c in contexts]
    assert out == [f"reply to {len(p)} chars" for p in prompts]  # stripped, in order
    first = handler.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret"
    assert first["body"]["model"] == "tiny-chat" and first["body"]["temperature"] == 0.5
    assert first["body"]["messages"] == [{"role": "user", "content": prompts[0]}]


def test_errors_are_clear(server):
    httpd, handler = server
    ep = L.LLMEndpoint(url=f"http://127.0.0.1:{httpd.server_port}/v1/chat/completions", model="m")
    handler.mode = "error"
    with pytest.raises(L.LLMError, match="HTTP 400.*bad model"):
        L.chat_completion(ep, "hi", retries=0)
    handler.mode = "garbage"
    with pytest.raises(L.LLMError, match="not a chat-completions reply"):
        L.chat_completion(ep, "hi", retries=0)
    handler.mode, handler.requests = "flaky", []
    assert L.chat_completion(ep, "hi", retries=1).startswith("reply to")  # 503 then success
    assert len(handler.requests) == 2
    dead = L.LLMEndpoint(url="http://127.0.0.1:9/v1/chat/completions", model="m")  # discard port: refused
    with pytest.raises(L.LLMError, match="cannot connect"):
        L.chat_completion(dead, "hi", retries=0, timeout=2)


def test_pick_examples_seeded():
    ctx, resp = [f"c{i}" for i in range(10)], [f"r{i}" for i in range(10)]
    assert L.pick_examples(ctx, resp, seed=3) == L.pick_examples(ctx, resp, seed=3)
    a = L.pick_examples(ctx, resp, seed=3)
    assert len(a) == 2 and a[0] != a[1] and all(c[1:] == r[1:] for c, r in a)
