from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# no hub is reachable in CI: fail fast instead of retrying the network for a minute
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # their helpers: _cache, _sae, …

from personavec.core.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its tokenizer saved as a model directory (loadable by path)."""
    from tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The bundled SmolLM2-135M-Instruct, loaded once for the whole session (CPU, float32)."""
    return load_model("smollm2", dtype="float32", device="cpu")
