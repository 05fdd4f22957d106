"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, with injectable faults.

`reply(request_body) -> (content, top_logprobs or None)` decides each answer; `faults` is a queue of
failures served before answers: an HTTP status ("401", "404", "429", "500", ...), "timeout" (sleeps
past the client's timeout), "garbage" (a 200 whose body is not JSON) and "empty" (a 200 completion
without choices).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from personavec.judges.openai_compat import PROBE

Reply = Callable[[dict[str, Any]], tuple[str, list[tuple[str, float]] | None]]


def completion(model: str, content: str, top: list[tuple[str, float]] | None) -> dict[str, Any]:
    logprobs = None
    if top is not None:
        entries = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]
        logprobs = {"content": [{**entries[0], "top_logprobs": entries}]}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FakeOpenAI:
    def __init__(self, reply: Reply, delay: float = 0.0, hang: float = 2.0) -> None:
        self.reply, self.delay, self.hang = reply, delay, hang
        self.faults: list[str] = []
        self.requests: list[dict[str, Any]] = []  # every request received, faulty ones included
        self.answered = 0  # requests that got a real answer
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    fault = server.faults.pop(0) if server.faults else None
                time.sleep(server.delay)
                if fault is not None and fault.isdigit():
                    self._send(int(fault), b'{"error": {"message": "injected", "type": "test"}}')
                elif fault == "timeout":
                    time.sleep(server.hang)
                    self._send(500, b"{}")
                elif fault == "garbage":
                    self._send(200, b"<html>not json")
                elif fault == "empty":
                    self._send(
                        200, json.dumps({**completion(body["model"], "", None), "choices": []}).encode()
                    )
                else:
                    content, top = server.reply(body)
                    with server.lock:
                        server.answered += 1
                    self._send(200, json.dumps(completion(body["model"], content, top)).encode())

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up on a "timeout" fault

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def judgements(self) -> list[dict[str, Any]]:
        """The requests that asked for a judgement: all but the judges' probes."""
        return [r for r in self.requests if r["messages"][0]["content"] != PROBE]

    def __enter__(self) -> FakeOpenAI:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A port nothing listens on: a connection there is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def judge_reply(body: dict[str, Any]) -> tuple[str, list[tuple[str, float]]]:
    """A deterministic judge: coherence always 90; the trait 90 or 10 by a hash of the prompt."""
    prompt = body["messages"][0]["content"]
    if prompt.startswith("I am checking whether"):
        return "90", [("90", 0.0)]
    value = "90" if hashlib.sha256(prompt.encode()).digest()[0] < 128 else "10"
    return value, [(value, -0.01), ("REF", -4.6)]
