"""llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``, the ``[engines]`` extra) serving
the bundled GGUF, started on 127.0.0.1 by the tests that need a real engine.

`require_llama()` at a module's top: under CI (``CI=true``) a missing build fails the module; elsewhere
it is skipped, naming the command that builds it (``make engines``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from openai_server import closed_port
from personavec.core.models import smollm2_path

BUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF" '
    "pip install --no-cache-dir 'llama-cpp-python[server]==0.3.36'"
)
ALIAS = "smollm2-gguf"


def require_llama() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"llama.cpp's server is missing under CI; build it with: {BUILD}", pytrace=False)
        pytest.skip(f"needs llama.cpp's server; build it with: {BUILD}", allow_module_level=True)


@contextmanager
def llama_server(log: Path, n_ctx: int = 2048) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The server's base URL (``.../v1``) and process while it runs; it serves the bundled GGUF as `ALIAS`.

    ``--n_batch 1`` evaluates prompts token by token, as generation does: the server reuses the cached
    prefix of the request before, and with larger batches the numerics (and so a greedy answer) would
    depend on what was asked before.
    """
    port = closed_port()  # free now; the server takes it
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--model_alias", ALIAS,
        "--port", str(port), "--n_ctx", str(n_ctx), "--n_batch", "1", "--interrupt_requests", "False",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    probe = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=5)
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama.cpp's server exited:\n{log.read_text()[-2000:]}")
            try:
                probe.models.list()
                break
            except openai.APIError:
                if time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp's server did not start") from None
                time.sleep(0.5)
        yield url, process
    finally:
        process.kill()
        process.wait()
