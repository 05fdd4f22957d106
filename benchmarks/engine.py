"""Generation on an engine (``--engine``) vs generation here, for the two bulk stages that take it.

python benchmarks/engine.py     # bundled SmolLM2 here, llama.cpp's server (`make engines`) on the same CPU

In one run, like for like (the same requests, sampling and answer length):
- extraction's generation stage at the demo's settings (`personavec.demo.DEMO_CONFIG`: 200 answers of
  48 tokens, temperature 0.7): `generate_rows` here (batch 32) vs through the engine, answers/s;
- screening's full ΔP (own answers y′ generated greedily, then the prefill scoring) of 64 chat rows,
  here vs with the engine writing y′ (chunk k + 1's while chunk k is scored), rows/s.

No target: on a small CPU the engine and the local model compete for the same cores (and the engine
runs the GGUF's 4-bit weights, this process their float32 de-quantisation). The engine is
llama-cpp-python's server at its default batch settings, started with ``--interrupt_requests False``.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

from personavec.core.engine import RemoteEngine
from personavec.core.generate import generate_rows
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.data.config import ScreenConfig
from personavec.data.samples import DataFile
from personavec.data.scoring import score_samples
from personavec.demo import DEMO_CONFIG, DEMO_TRAIT
from personavec.pipeline.extract import contrastive_requests
from personavec.traits import load_trait

from _common import Figure, free_port, llama_server, load, parser, report

ALIAS = "bench"
SCREEN_ROWS = 64


def extraction(loaded: LoadedModel, engine: RemoteEngine, folder: Path) -> tuple[float, float]:
    """Answers/s of the demo extraction's generation stage, here and through the engine."""
    requests = contrastive_requests(load_trait(DEMO_TRAIT), DEMO_CONFIG)
    rates = []
    for name, generator in (("local", None), ("engine", engine)):
        started = time.perf_counter()
        generate_rows(
            loaded, requests, folder / f"{name}.jsonl", DEMO_CONFIG.sampling,
            chunk_size=4 * DEMO_CONFIG.sampling.batch_size, progress=False, engine=generator,
        )  # fmt: skip
        rates.append(len(requests) / (time.perf_counter() - started))
        print(f"extraction answers, {name}: {rates[-1]:.2f} answers/s ({len(requests)} answers)")
    return rates[0], rates[1]


def screening(loaded: LoadedModel, engine: RemoteEngine, folder: Path) -> tuple[float, float]:
    """Rows/s of a full ΔP screening (y′ generated), here and with the engine writing y′."""
    data = folder / "data.jsonl"
    chats = [
        [{"role": "user", "content": f"Tell me about the number {i}."},
         {"role": "assistant", "content": f"The number {i} is wonderful and full of promise."}]
        for i in range(SCREEN_ROWS)
    ]  # fmt: skip
    data.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
    n, hidden = loaded.identity.n_layers, loaded.identity.hidden_size
    identity = {"model": loaded.identity.to_dict()}
    vector = PersonaVector("t", torch.randn(n + 1, hidden), layer=n // 2, metadata=identity)
    config = ScreenConfig(chunk_size=16, sampling=Sampling(max_new_tokens=48, batch_size=16))
    rates = []
    for name, generator in (("local", None), ("engine", engine)):
        started = time.perf_counter()
        score_samples(loaded, [vector], DataFile(data), folder / f"screen-{name}", config, False, generator)
        rates.append(SCREEN_ROWS / (time.perf_counter() - started))
        print(f"screening, {name}: {rates[-1]:.2f} rows/s ({SCREEN_ROWS} rows)")
    return rates[0], rates[1]


def main() -> None:
    p = parser(__doc__ or "")
    args = p.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("needs llama.cpp's server: `make engines` builds it")
    loaded = load(args.gpu_7b)
    port = free_port()
    server = llama_server(port, ALIAS)
    try:
        engine = RemoteEngine(f"http://127.0.0.1:{port}/v1", ALIAS, concurrency=4)
        with tempfile.TemporaryDirectory() as tmp:
            local_x, engine_x = extraction(loaded, engine, Path(tmp))
            local_s, engine_s = screening(loaded, engine, Path(tmp))
    finally:
        server.kill()
    figures = [
        Figure("extraction's answers (demo settings): engine / here, answers/s", engine_x / local_x, "×"),
        Figure("extraction's answers here", local_x, "answers/s"),
        Figure("screening, full ΔP of 64 rows: with the engine / here, rows/s", engine_s / local_s, "×"),
        Figure("screening here", local_s, "rows/s"),
    ]
    report("engine", figures, args.gpu_7b)


if __name__ == "__main__":
    main()
