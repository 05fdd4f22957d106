"""Pooled residual-stream activations of (prompt, response) pairs at chosen layers, on any backend.

The poolings and the sample rules are `personavec.core.pooling`'s. Sums are accumulated in float32,
batch by batch; full hidden states are never kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from personavec.core.backend import Backend, as_backend
from personavec.core.models import LoadedModel
from personavec.core.pooling import Pooled, check_layers


def iter_pooled(
    model: Backend | LoadedModel,
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    token_budget: int = 16384,
    max_batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = True,
    layers: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], Pooled]]:
    """Yield ``(indices, pooled)`` per length-bucketed batch: streaming, memory bounded by one batch.

    `prompts` are chat-formatted (e.g. ``loaded.chat(question, system)``); `responses` the answers
    that follow them, or None for prompt poolings only. Samples longer than `max_length` tokens lose
    their tail (``pooled.truncated``). `layers` limits the work to those layers (default: all).
    """
    backend = as_backend(model)
    return backend.pooled(prompts, responses, layers, token_budget, max_batch_size, max_length, progress)


def pooled_activations(
    model: Backend | LoadedModel,
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    token_budget: int = 16384,
    max_batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = True,
    layers: Sequence[int] | None = None,
) -> Pooled:
    """All samples' pooled activations in input order (see `iter_pooled` for the arguments)."""
    backend = as_backend(model)
    layers = check_layers(backend.identity.n_layers, layers)
    shape = (len(prompts), len(layers), backend.identity.hidden_size)
    out = {k: torch.empty(shape) for k in ("prompt_last", "prompt_avg", "response_avg")}
    truncated = torch.zeros(len(prompts), dtype=torch.bool)
    norm = torch.empty(len(prompts), len(layers))
    batches = iter_pooled(
        backend, prompts, responses, token_budget, max_batch_size, max_length, progress, layers
    )
    for indices, pooled in batches:
        index = torch.tensor(indices)
        out["prompt_last"][index] = pooled.prompt_last
        out["prompt_avg"][index] = pooled.prompt_avg
        if pooled.response_avg is not None:
            out["response_avg"][index] = pooled.response_avg
        truncated[index] = pooled.truncated
        norm[index] = pooled.norm
    return Pooled(
        prompt_last=out["prompt_last"],
        prompt_avg=out["prompt_avg"],
        response_avg=out["response_avg"] if responses is not None else None,
        truncated=truncated,
        layers=layers,
        norm=norm,
    )
