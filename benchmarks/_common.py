"""Shared set-up for the benchmarks: the bundled model on the CPU, or a 7B-shaped random model on a GPU."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from personavec.models import LoadedModel, ModelIdentity, load_model, load_tokenizer


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
