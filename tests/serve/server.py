"""A real ``personavec serve`` on a free loopback port, in a subprocess, for the serve tests."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from openai_server import closed_port
from personavec.core.models import LoadedModel, format_chat, model_identity
from personavec.core.vectors import PersonaVector, save_vectors

KEY = "test-key"
NORM = 20.0  # the residual norm opt records at every layer (so 1 norm unit is 2.5 × its norm-8 vector)
TOL = 1e-3  # |server − reference| ≤ TOL·(1 + |reference|): KV-cached decode vs one prefill, fp32


def random_vectors(folder: Path) -> dict[str, Path]:
    """Two random vectors for the bundled model (norm 8 per layer), chosen layers 15 and 20; opt records
    a residual norm (NORM per layer), evil none."""
    identity = model_identity("smollm2").to_dict()
    generator = torch.Generator().manual_seed(0)
    files = {}
    for name, layer in (("opt", 15), ("evil", 20)):
        tensor = torch.randn(31, 576, generator=generator)
        tensor = tensor / tensor.norm(dim=1, keepdim=True) * 8
        files[name] = folder / f"{name}.safetensors"
        metadata = {"model": identity, **({"residual_norm": [NORM] * 31} if name == "opt" else {})}
        save_vectors(files[name], [PersonaVector(name, tensor, layer=layer, metadata=metadata)])
    return files


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        key: str | None = KEY,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body or text) of one plain HTTP request."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                status, head, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, head, raw = error.code, dict(error.headers), error.read()
        try:
            return status, head, json.loads(raw)
        except ValueError:
            return status, head, raw.decode()

    def stream(self, body: dict[str, Any]) -> http.client.HTTPResponse:
        """A raw streaming chat completion, to read line by line."""
        host, port = self.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
        connection.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}), headers)
        return connection.getresponse()

    def metrics(self) -> str:
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        return str(text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start(args: list[str], log: Path, wait_ready: bool = False) -> Server:
    """Start ``personavec serve`` on the bundled model with `args`; return once it answers /health."""
    port = closed_port()  # free now; the server takes it
    command = [
        sys.executable,
        "-m",
        "personavec.cli",
        "serve",
        "--model",
        "smollm2",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--port",
        str(port),
        *args,
    ]
    env = {**os.environ, "PERSONAVEC_API_KEY": KEY}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 600
    path = "/ready" if wait_ready else "/health"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if server.request("GET", path)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def threaded(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, in a thread of this process (its log records
    reach pytest's caplog); yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, log_level="info", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def chat_prompt(loaded: LoadedModel, question: str) -> str:
    return format_chat(loaded.tokenizer, [{"role": "user", "content": question}])


def near(value: float, reference: float) -> bool:
    return abs(value - reference) <= TOL * (1 + abs(reference))


def ask(client: openai.OpenAI, question: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": question}], temperature=0, **kwargs
    )


def metric_value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
