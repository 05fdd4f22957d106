"""Pooled residual-stream activations of (prompt, response) pairs at every layer, in one forward pass.

Three poolings per sample and layer (the Method page of the docs, step 5):

- ``prompt-last``: the last prompt token;
- ``prompt-avg``: the mean over the prompt tokens;
- ``response-avg``: the mean over the response tokens.

The text of a sample is ``prompt + response`` (the prompt already chat-formatted, ending with the
assistant header), tokenised once. A token belongs to the response when its character span reaches
past the end of the prompt text, so a token that merges across the boundary counts as response (the
official code tokenises the prompt separately, which miscounts in that case).

Sums are accumulated in float32 inside the hooks, batch by batch; full hidden states are never kept.
The forward pass runs the model's backbone only (no LM head, no logits).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor
from tqdm.auto import tqdm

from personavec.core.hooks import ResidualHooks
from personavec.core.models import LoadedModel
from personavec.errors import ConfigError, DataError, ModelError

Pooling = Literal["response-avg", "prompt-avg", "prompt-last"]
POOLINGS: tuple[Pooling, ...] = get_args(Pooling)


@dataclass
class Pooled:
    """Pooled activations, each ``[samples, len(layers), hidden]`` float32 on the CPU.

    Row j of the layer axis is layer ``layers[j]``; by default every layer 0..L, so row = layer.
    """

    prompt_last: Tensor
    prompt_avg: Tensor
    response_avg: Tensor | None  # None when no responses were given
    truncated: Tensor  # [samples] bool: the sample lost its tail to max_length
    layers: tuple[int, ...]

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())

    def tensor(self, pooling: Pooling) -> Tensor:
        """The activations of one pooling: prompt-last, prompt-avg or response-avg."""
        tensor = {"prompt-last": self.prompt_last, "prompt-avg": self.prompt_avg}.get(pooling)
        if pooling == "response-avg":
            tensor = self.response_avg
        if tensor is None:
            raise ConfigError(
                f"no {pooling!r} activations here (unknown pooling, or no responses were given)"
            )
        return tensor


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    n_prompt: int
    truncated: bool


class _Pooler(ResidualHooks):
    """Hooks on every layer that reduce each batch's hidden states to the three poolings."""

    def __init__(self, loaded: LoadedModel, layers: Sequence[int]):
        super().__init__(loaded.model, layers)
        self.row = {layer: j for j, layer in enumerate(layers)}
        self.prompt_weights = self.response_weights = self.last = self.pad = torch.empty(0)
        self.out: dict[str, Tensor] = {}

    def start_batch(self, prompt_w: Tensor, response_w: Tensor, last: Tensor, hidden: int) -> None:
        batch, device = prompt_w.shape[0], prompt_w.device
        self.prompt_weights, self.response_weights, self.last = prompt_w, response_w, last
        self.pad = ((prompt_w + response_w) == 0).unsqueeze(-1)  # pad tokens (and cut-off ones)
        shape = (batch, len(self.layers), hidden)
        self.out = {
            k: torch.empty(shape, device=device) for k in ("prompt-last", "prompt-avg", "response-avg")
        }

    def edit(self, layer: int, hidden: Tensor) -> None:
        device = hidden.device  # under a multi-GPU device map, blocks sit on different devices
        prompt_w, response_w = self.prompt_weights.to(device), self.response_weights.to(device)
        # zero pad positions first: a weight of 0 does not hide a NaN or inf there
        h = hidden.float().masked_fill(self.pad.to(device), 0.0)
        out_device = self.out["prompt-avg"].device
        row = self.row[layer]
        self.out["prompt-avg"][:, row] = torch.einsum("bt,bth->bh", prompt_w, h).to(out_device)
        self.out["response-avg"][:, row] = torch.einsum("bt,bth->bh", response_w, h).to(out_device)
        last = h[torch.arange(h.shape[0], device=device), self.last.to(device)]
        self.out["prompt-last"][:, row] = last.to(out_device)


def _encode(
    loaded: LoadedModel, prompts: Sequence[str], responses: Sequence[str] | None, max_length: int | None
) -> list[_Encoded]:
    tokenizer = loaded.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("pooled activations need a fast tokenizer (character offsets)")
    texts = (
        [p + r for p, r in zip(prompts, responses, strict=True)] if responses is not None else list(prompts)
    )
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    samples = []
    for i, (prompt, ids, offsets) in enumerate(
        zip(prompts, encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ):
        boundary = len(prompt)
        n_prompt = next((t for t, (_, end) in enumerate(offsets) if end > boundary), len(ids))
        if n_prompt == 0:
            raise DataError(f"sample {i}: the prompt is empty")
        if responses is not None and n_prompt == len(ids):
            raise DataError(f"sample {i}: the response is empty")
        # a truncated sample must keep its whole prompt and, when there is one, a response token
        if max_length is not None and n_prompt + (responses is not None) > max_length:
            raise ConfigError(
                f"sample {i}: its prompt has {n_prompt} tokens; max_length={max_length} is too small"
            )
        cut = max_length is not None and len(ids) > max_length
        samples.append(_Encoded(ids=list(ids[:max_length] if cut else ids), n_prompt=n_prompt, truncated=cut))
    return samples


def _batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped longest first, each batch's padded size (count × longest) within the budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_batch_size:
            longest = lengths[batches[-1][0]]
            if (len(batches[-1]) + 1) * longest <= token_budget:
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def _collate(samples: list[_Encoded], pad_id: int, left: bool, device: torch.device) -> dict[str, Tensor]:
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    prompt_w = torch.zeros((len(samples), width))
    response_w = torch.zeros((len(samples), width))
    last = torch.zeros(len(samples), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.ids)
        start = width - n if left else 0
        ids[row, start : start + n] = torch.tensor(sample.ids)
        mask[row, start : start + n] = 1
        prompt_w[row, start : start + sample.n_prompt] = 1.0 / sample.n_prompt
        if n > sample.n_prompt:
            response_w[row, start + sample.n_prompt : start + n] = 1.0 / (n - sample.n_prompt)
        last[row] = start + sample.n_prompt - 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    extra = {"prompt_w": prompt_w, "response_w": response_w, "last": last}
    return {k: v.to(device) for k, v in {**batch, **extra}.items()}


def _check_layers(loaded: LoadedModel, layers: Sequence[int] | None) -> tuple[int, ...]:
    n = loaded.identity.n_layers
    if layers is None:
        return tuple(range(n + 1))
    if not layers or len(set(layers)) != len(layers) or not all(0 <= x <= n for x in layers):
        raise ConfigError(f"layers must be distinct, within 0..{n}, and at least one; got {list(layers)}")
    return tuple(layers)


def iter_pooled(
    loaded: LoadedModel,
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
    layers = _check_layers(loaded, layers)
    if responses is not None and len(responses) != len(prompts):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
    samples = _encode(loaded, prompts, responses, max_length)
    device = loaded.device  # where the embeddings are, also under a multi-GPU device map
    pad_id = int(loaded.tokenizer.pad_token_id)
    left = loaded.tokenizer.padding_side == "left"
    hidden = loaded.identity.hidden_size
    pooler = _Pooler(loaded, layers)
    bar = tqdm(total=len(samples), desc="activations", unit="sample", disable=not progress)
    for indices in _batches([len(s.ids) for s in samples], token_budget, max_batch_size):
        batch = _collate([samples[i] for i in indices], pad_id, left, device)
        pooler.start_batch(batch.pop("prompt_w"), batch.pop("response_w"), batch.pop("last"), hidden)
        with torch.inference_mode(), pooler:  # hooks on only while the batch runs, not across the yield
            pooler.blocks.backbone(**batch, use_cache=False)
            out = {k: v.cpu() for k, v in pooler.out.items()}
        bar.update(len(indices))
        yield (
            indices,
            Pooled(
                prompt_last=out["prompt-last"],
                prompt_avg=out["prompt-avg"],
                response_avg=out["response-avg"] if responses is not None else None,
                truncated=torch.tensor([samples[i].truncated for i in indices], dtype=torch.bool),
                layers=layers,
            ),
        )
    bar.close()


def pooled_activations(
    loaded: LoadedModel,
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    token_budget: int = 16384,
    max_batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = True,
    layers: Sequence[int] | None = None,
) -> Pooled:
    """All samples' pooled activations in input order (see `iter_pooled` for the arguments)."""
    layers = _check_layers(loaded, layers)
    shape = (len(prompts), len(layers), loaded.identity.hidden_size)
    out = {k: torch.empty(shape) for k in ("prompt_last", "prompt_avg", "response_avg")}
    truncated = torch.zeros(len(prompts), dtype=torch.bool)
    batches = iter_pooled(
        loaded, prompts, responses, token_budget, max_batch_size, max_length, progress, layers
    )
    for indices, pooled in batches:
        index = torch.tensor(indices)
        out["prompt_last"][index] = pooled.prompt_last
        out["prompt_avg"][index] = pooled.prompt_avg
        if pooled.response_avg is not None:
            out["response_avg"][index] = pooled.response_avg
        truncated[index] = pooled.truncated
    return Pooled(
        prompt_last=out["prompt_last"],
        prompt_avg=out["prompt_avg"],
        response_avg=out["response_avg"] if responses is not None else None,
        truncated=truncated,
        layers=layers,
    )
