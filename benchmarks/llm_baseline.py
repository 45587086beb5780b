"""Requests per second of ``emprl.llm.client.complete_all`` against a loopback chat-completions
server that answers every request after a fixed delay, with concurrency 1 (the reference: one
request after another, as before) and 8 (the default).

    python benchmarks/llm_baseline.py [--requests 160] [--delay 0.05] [--concurrency 1 8]

With a fixed server delay d the ceiling is c / d requests per second; the gap to it is the client's
own cost (threads, urllib, JSON, the cache append). Each configuration starts from an empty cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from emprl.llm import client as llm_baseline


class DelayedReply(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.05

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        reply = {"model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "That sounds hard. How are you holding up?"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--delay", type=float, default=0.05, help="server seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    DelayedReply.delay = args.delay
    server = ThreadingHTTPServer(("127.0.0.1", 0), DelayedReply)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = llm_baseline.LLMEndpoint(f"http://127.0.0.1:{server.server_port}/v1/chat/completions", "bench")
    shots = [("Speaker: I lost my keys.", "Oh no, did you find them?"), ("Speaker: I got a puppy!", "Cute!")]
    prompts = [llm_baseline.build_prompt(f"Speaker: test context {i}.", shots) for i in range(args.requests)]

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"loopback server, {args.delay * 1000:.0f} ms per request, {args.requests} requests each")
    rates = {}
    for concurrency in args.concurrency:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = llm_baseline.complete_all(prompts, endpoint, Path(tmp) / "cache.jsonl",
                                            concurrency=concurrency, progress=False)
            seconds = time.perf_counter() - start
            assert run.requested == args.requests and len(set(run.responses)) == 1
        rates[concurrency] = args.requests / seconds
        print(f"concurrency {concurrency}: {rates[concurrency]:.1f} requests/s ({seconds:.2f} s; "
              f"ceiling {concurrency / args.delay:.0f} requests/s)")
    if 1 in rates:
        for concurrency, rate in rates.items():
            if concurrency != 1:
                print(f"concurrency {concurrency} vs 1 (reference): {rate / rates[1]:.1f}x")
    server.shutdown()


if __name__ == "__main__":
    main()
