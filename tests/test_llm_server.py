"""emprl.llm.server's start, wait, stop and command line, against a stand-in ``llama_cpp.server`` package
(a few lines of http.server): no llama-cpp-python needed. The real server: tests/llm (make llm-test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emprl import download
from emprl.llm import server as llm_server
from emprl.llm import client as L

REPO = Path(__file__).resolve().parents[1]

FAKE_SERVER = textwrap.dedent('''
    """Stands in for ``python -m llama_cpp.server``: the same options, /v1/models and chat completions."""
    import argparse, json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    parser = argparse.ArgumentParser()
    for option in ("--model", "--model_alias", "--host", "--port", "--n_threads", "--n_threads_batch", "--n_ctx",
                   "--verbose"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    if os.environ.get("FAKE_LLAMA_FAIL"):
        print("llama_load_model_from_file: failed to load model", flush=True)
        sys.exit(3)

    class Handler(BaseHTTPRequestHandler):
        def _json(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._json({"object": "list", "data": [{"id": args.model_alias}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = f"threads {args.n_threads}/{args.n_threads_batch}, ctx {args.n_ctx}, seed {request.get('seed')}"
            self._json({"model": request["model"], "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text}}]})

        def log_message(self, *a):
            pass

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving {args.model} as {args.model_alias}", flush=True)
    HTTPServer((args.host, int(args.port)), Handler).serve_forever()
''')


@pytest.fixture
def fake_llama(tmp_path, monkeypatch):
    """A ``llama_cpp`` package whose ``server`` is FAKE_SERVER, importable here and in subprocesses."""
    pkg = tmp_path / "site" / "llama_cpp"
    (pkg / "server").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "server" / "__init__.py").write_text("")
    (pkg / "server" / "__main__.py").write_text(FAKE_SERVER)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), str(REPO)]))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    return gguf


def test_start_waits_until_the_model_answers_then_stops(fake_llama, tmp_path):
    port = llm_server.free_port()
    with llm_server.LocalServer(fake_llama, "tiny", port=port, threads=1, log=tmp_path / "s.log") as server:
        assert server.models() == ["tiny"]
        assert server.env() == {"EMPRL_LLM_URL": f"http://127.0.0.1:{port}/v1", "EMPRL_LLM_MODEL": "tiny"}
        endpoint = L.LLMEndpoint.from_env(server.env())  # what the client reads
        reply = L.chat_completion(endpoint, "hello", L.Sampling(seed=7), retries=0)
        # one thread for single and batch evaluation: the default batch count is every core
        assert reply.text == "threads 1/1, ctx 2048, seed 7" and reply.served_model == "tiny"
        assert llm_server.port_in_use(port)
    assert server.proc.returncode == 0 and not llm_server.port_in_use(port)
    assert "serving" in (tmp_path / "s.log").read_text() and str(fake_llama) in (tmp_path / "s.log").read_text()


def test_start_errors_say_what_is_missing(fake_llama, tmp_path, monkeypatch):
    with pytest.raises(llm_server.ServerError, match="no GGUF at .*python -m emprl.download --llm smollm2"):
        llm_server.LocalServer(tmp_path / "absent.gguf", "tiny", port=llm_server.free_port()).start()
    monkeypatch.setattr(llm_server, "llama_cpp_available", lambda python=None: False)
    with pytest.raises(llm_server.ServerError, match=r'pip install -e "\.\[llm\]".*20 min'):
        llm_server.LocalServer(fake_llama, "tiny", port=llm_server.free_port()).start()
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(fake_llama.parent / "site"))
    monkeypatch.setenv("PYTHONPATH", str(fake_llama.parent / "site"))
    monkeypatch.setenv("FAKE_LLAMA_FAIL", "1")
    server = llm_server.LocalServer(fake_llama, "tiny", port=llm_server.free_port(), log=tmp_path / "f.log")
    with pytest.raises(llm_server.ServerError, match=r"(?s)exited with code 3 before answering.*failed to load"):
        server.start()
    monkeypatch.delenv("FAKE_LLAMA_FAIL")
    with llm_server.LocalServer(fake_llama, "tiny", port=llm_server.free_port(), log=tmp_path / "a.log") as first:
        with pytest.raises(llm_server.ServerError, match="already in use.*another --port"):
            llm_server.LocalServer(fake_llama, "tiny", port=first.port).start()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        llm_server.LocalServer(fake_llama, "tiny", threads=0)


def test_for_llm_checks_the_gguf_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("EMPRL_CACHE_DIR", str(tmp_path))
    with pytest.raises(llm_server.ServerError, match="missing or does not match.*download --llm smollm2"):
        llm_server.for_llm("smollm2")
    download.llm_path("smollm2").parent.mkdir(parents=True)
    download.llm_path("smollm2").write_bytes(b"not the model")
    with pytest.raises(llm_server.ServerError, match="does not match its published sha256"):
        llm_server.for_llm("smollm2")


def test_cli_prints_the_variables_and_stops_on_sigterm(fake_llama, tmp_path):
    port = llm_server.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "emprl.llm.server", "--gguf", str(fake_llama), "--model", "tiny",
                             "--port", str(port), "--log", str(tmp_path / "c.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # printed only once the model answers
        second = proc.stdout.readline()
        assert first == f"export EMPRL_LLM_URL=http://127.0.0.1:{port}/v1\n", proc.stderr.read()
        assert second == "export EMPRL_LLM_MODEL=tiny\n"
        assert llm_server.port_in_use(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped (exit code 0)" in proc.stderr.read()
    with pytest.raises(SystemExit):  # --gguf needs the name the server answers to
        llm_server.main(["--gguf", str(fake_llama)])
    deadline = time.monotonic() + 10
    while llm_server.port_in_use(port) and time.monotonic() < deadline:  # the server's socket closes with it
        time.sleep(0.1)
    assert not llm_server.port_in_use(port)
