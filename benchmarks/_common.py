"""Shared set-up for the benchmarks: the bundled model on the CPU, or a 7B-shaped random model on a GPU."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from personavec._internal.files import write_json
from personavec.core.models import LoadedModel, ModelIdentity, load_model, load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--gpu-7b",
        action="store_true",
        help="a Llama-7B-shaped model with random weights in bfloat16 on the GPU (speed does not "
        "depend on weight values); default: the bundled SmolLM2 on the CPU",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (the best is reported)")
    return p


def load(gpu_7b: bool) -> LoadedModel:
    if not gpu_7b:
        torch.set_num_threads(torch.get_num_threads())
        return load_model("smollm2", dtype="float32", device="cpu")
    tokenizer = load_tokenizer("smollm2")  # a real tokenizer; its vocabulary sizes the random model
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
    )
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    identity = ModelIdentity("random-llama-7b-shape", "llama", config.num_hidden_layers, config.hidden_size)
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llama_server(port: int, alias: str) -> subprocess.Popen[bytes]:
    """llama.cpp's server (``make engines``) serving the bundled GGUF as `alias` on `port`, started."""
    import openai

    from personavec.core.models import smollm2_path

    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--model_alias",
               alias, "--port", str(port), "--interrupt_requests", "False", "--n_ctx", "2048"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=5)
    for _ in range(240):
        try:
            probe.models.list()
            return process
        except openai.APIError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("llama.cpp's server did not start")


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs, in seconds (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def compare_generate(
    loaded: LoadedModel,
    wrapper: Callable[[], AbstractContextManager[object]],
    new_tokens: int,
    repeats: int,
    batch_sizes: tuple[int, ...] = (1, 16),
) -> list[float]:
    """Greedy `generate` plain and inside `wrapper()`, interleaved (noise hits both alike); print the
    throughput of each per batch size and return the ratios wrapped time / plain time."""
    model, tok = loaded.model, loaded.tokenizer
    ratios = []
    for batch_size in batch_sizes:
        prompts = [loaded.chat(f"Tell me a story about the number {i}.") for i in range(batch_size)]
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)

        def run(batch: Any = batch) -> None:
            with torch.inference_mode():
                model.generate(
                    **batch,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )

        def wrapped(run: Callable[[], None] = run) -> None:
            with wrapper():
                run()

        plain_t, wrapped_t = [], []
        for _ in range(repeats):
            plain_t.append(best_time(run, 1))
            wrapped_t.append(best_time(wrapped, 1))
        ratios.append(min(wrapped_t) / min(plain_t))
        tokens = batch_size * new_tokens
        print(
            f"batch {batch_size:2d}: plain {tokens / min(plain_t):8.1f} tok/s, "
            f"with it {tokens / min(wrapped_t):8.1f} tok/s, ratio {ratios[-1]:.3f}"
        )
    return ratios


@dataclass
class Figure:
    """One measured figure; ``target`` is ``"≥ X"``, ``"≤ X"`` or free text (then ``met`` stays None)."""

    name: str
    value: float
    unit: str = ""
    target: str | None = None
    met: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        bound = re.fullmatch(r"\s*([≥≤])\s*([-+0-9.eE]+)\s*[x×]?\s*", self.target or "")
        if bound:
            limit = float(bound.group(2))
            self.met = self.value >= limit if bound.group(1) == "≥" else self.value <= limit


def machine(on_gpu: bool) -> str:
    """``gpu-<model>`` (``gpu-h200``) for a run on the GPU, else ``cpu-<N>core``."""
    if on_gpu:
        return "gpu-" + torch.cuda.get_device_name().split()[-1].lower()
    return f"cpu-{os.cpu_count()}core"


def report(benchmark: str, figures: list[Figure], on_gpu: bool = False) -> Path:
    """Print the figures and write ``results/<benchmark>-<machine>.json``, which the docs'
    benchmarks page is generated from (a table per benchmark, a column per machine)."""
    where = machine(on_gpu)
    for f in figures:
        target = f"  (target {f.target}: {'met' if f.met else 'NOT met'})" if f.met is not None else ""
        print(f"{f.name}: {f.value:.4g} {f.unit}{target}".rstrip())
    record = {
        "benchmark": benchmark,
        "machine": where,
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "figures": [asdict(f) for f in figures],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{benchmark}-{where}.json"
    write_json(path, record)
    print(f"results: {path}")
    return path
