"""A local LLM for the baseline: llama-cpp-python's OpenAI-compatible server on loopback, serving the
GGUF that ``python -m emprl.download --llm smollm2`` fetched and verified.

    python -m emprl.llm.server        # waits until the model answers, prints EMPRL_LLM_URL and
                                      # EMPRL_LLM_MODEL, serves until Ctrl-C or SIGTERM, then stops it

llama-cpp-python is the optional extra ``pip install -e ".[llm]"`` (it compiles llama.cpp: 20 min on
two busy cores). This module only starts and stops the server; ``emprl.llm.client`` stays the one
way to ask an LLM.

The port is fixed by default (``DEFAULT_PORT``) because the client's cache key holds the URL: the same
URL on every start keeps the cached replies valid for the CLI and notebooks 05, 07 and 09. One thread
and one request at a time by default: llama-cpp-python's server answers one request at a time, and on
a small shared CPU a second thread mostly competes with the other jobs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from emprl import download

DEFAULT_PORT = 8734
HOST = "127.0.0.1"  # loopback only: the server has no key
INSTALL_HINT = ('llama-cpp-python is not installed in this environment: pip install -e ".[llm]" '
                "(it compiles llama.cpp from source, 20 min on two busy cores)")


class ServerError(RuntimeError):
    """The local server could not be started or died; the message says why and where its log is."""


def llama_cpp_available(python: str = sys.executable) -> bool:
    """Whether ``python`` can import llama_cpp (checked without importing it here when it is ours)."""
    if python == sys.executable:
        return importlib.util.find_spec("llama_cpp") is not None
    return subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LocalServer:
    """``python -m llama_cpp.server`` on ``HOST:port`` with one GGUF under the name ``model``.

    ``start`` returns once ``/v1/models`` lists the model (or raises ServerError with the log's last
    lines); ``stop`` sends SIGTERM (uvicorn finishes the request in progress), then SIGKILL after
    ``grace`` seconds. Also a context manager. The server's output goes to ``log``.
    """

    def __init__(self, gguf: str | os.PathLike, model: str, port: int = DEFAULT_PORT, threads: int = 1,
                 n_ctx: int = 2048, log: str | os.PathLike | None = None, python: str = sys.executable,
                 startup_timeout: float = 300.0, grace: float = 20.0):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.gguf, self.model, self.port, self.threads, self.n_ctx = Path(gguf), model, port, threads, n_ctx
        self.log = Path(log) if log else download.llm_cache_dir() / f"server-{port}.log"
        self.python, self.startup_timeout, self.grace = python, startup_timeout, grace
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def env(self) -> dict[str, str]:
        """The variables the client (``emprl.llm.client``) and the notebooks read."""
        return {"EMPRL_LLM_URL": self.url, "EMPRL_LLM_MODEL": self.model}

    def command(self) -> list[str]:
        # n_threads_batch too: its default is every core, which would take the other jobs' core
        return [self.python, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", self.model,
                "--host", HOST, "--port", str(self.port), "--n_threads", str(self.threads),
                "--n_threads_batch", str(self.threads), "--n_ctx", str(self.n_ctx), "--verbose", "False"]

    def start(self) -> "LocalServer":
        if not self.gguf.is_file():
            raise ServerError(f"no GGUF at {self.gguf}: run python -m emprl.download --llm smollm2 first")
        if not llama_cpp_available(self.python):
            raise ServerError(INSTALL_HINT)
        if port_in_use(self.port):
            raise ServerError(f"{HOST}:{self.port} is already in use (another server?): stop it, or choose "
                              "another --port (a new URL is a new cache key: replies are asked again)")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            # its own session: a Ctrl-C in the terminal reaches us, and we stop the server in order
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited with code {self.proc.returncode} before answering; "
                                  f"its log {self.log} ends with:\n{self.log_tail()}")
            if self.model in (self.models() or []):
                return
            if time.monotonic() > deadline:
                raise ServerError(f"the server did not answer {self.url}/models within {self.startup_timeout:g}"
                                  f" s; its log {self.log} ends with:\n{self.log_tail()}")
            time.sleep(0.5)

    def models(self) -> list[str] | None:
        """The model names ``/v1/models`` lists, None while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=5) as response:
                return [m["id"] for m in json.loads(response.read())["data"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """Stop the server; returns its exit code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def for_llm(name: str = "smollm2", **kwargs) -> LocalServer:
    """A LocalServer for a local LLM of ``download.LLMS``, its GGUF re-checked against the published hash."""
    spec = download.llm_spec(name)
    gguf = download.llm_path(name)
    if not gguf.is_file() or download.sha256_of(gguf) != spec.gguf_sha256:
        raise ServerError(f"{gguf} is missing or does not match its published sha256 {spec.gguf_sha256}: "
                          f"run python -m emprl.download --llm {name}")
    return LocalServer(gguf, spec.model, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emprl.llm.server",
        description="Serve a local LLM (llama-cpp-python, OpenAI-compatible) on 127.0.0.1 for the LLM "
                    "baseline: waits until it answers, prints EMPRL_LLM_URL and EMPRL_LLM_MODEL, serves "
                    "until Ctrl-C or SIGTERM.")
    parser.add_argument("--llm", choices=sorted(download.LLMS), default="smollm2",
                        help="which local LLM (python -m emprl.download --llm NAME fetches it; its sha256 is "
                             "checked before serving)")
    parser.add_argument("--gguf", default=None, help="serve this GGUF instead (your file: no hash to check)")
    parser.add_argument("--model", default=None, help="with --gguf: the name it answers to (EMPRL_LLM_MODEL)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; the URL is part of the replies' "
                             "cache key)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of llama.cpp (default 1)")
    parser.add_argument("--ctx", type=int, default=2048, help="context window in tokens (default 2048)")
    parser.add_argument("--log", default=None,
                        help="the server's log (default ~/.cache/emprl/llm/server-PORT.log)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if (args.gguf is None) != (args.model is None):
        parser.error("--gguf and --model go together")
    options = dict(port=args.port, threads=args.threads, n_ctx=args.ctx, log=args.log)
    try:
        if args.gguf:
            server = LocalServer(args.gguf, args.model, **options)
        else:
            server = for_llm(args.llm, **options)
        print(f"starting {server.model} on {server.url} ({args.threads} thread(s)); log: {server.log}",
              file=sys.stderr, flush=True)
        server.start()
    except (ServerError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for key, value in server.env().items():
        print(f"export {key}={value}", flush=True)
    print("serving; Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        if not server.running():
            print(f"error: the server exited with code {server.proc.returncode}; its log {server.log} ends "
                  f"with:\n{server.log_tail()}", file=sys.stderr)
            return 1
    code = server.stop()
    print(f"stopped (exit code {code})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
