"""Poolings of residual-stream activations, and the samples they are computed over (model-free).

Three poolings per sample and layer (the Method page of the docs, step 5):

- ``prompt-last``: the last prompt token;
- ``prompt-avg``: the mean over the prompt tokens;
- ``response-avg``: the mean over the response tokens.

Beside them, each sample's mean residual norm ‖h‖ over its tokens after the first (the first token's
residual is an outlier many models share; its norm is excluded): what coefficients in norm units are
measured against (`personavec.core.vectors.PersonaVector.raw_coef`).

The text of a sample is ``prompt + response`` (the prompt already chat-formatted, ending with the
assistant header), tokenised once. A token belongs to the response when its character span reaches
past the end of the prompt text, so a token that merges across the boundary counts as response (the
official code tokenises the prompt separately, which miscounts in that case).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor

from personavec._internal.deprecation import renamed
from personavec.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
    norm: Tensor  # [samples, len(layers)]: the mean ‖h‖ over the sample's tokens after its first

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


PooledRecord = dict[int, tuple[Any, Any, Any, Any]]
"""One sample's (prompt-last, prompt-avg, response-avg or None, mean norm) by layer, as the ledger pools
them (`personavec.core.ledger.Ledger.pooled`; tensors or arrays)."""


def from_records(
    records: Sequence[PooledRecord], layers: tuple[int, ...], truncated: Sequence[bool], responses: bool
) -> Pooled:
    """Samples' ledger records as one `Pooled` (`responses`: whether responses were given)."""

    def stack(k: int) -> Tensor:
        return torch.stack([torch.stack([torch.as_tensor(r[layer][k]) for layer in layers]) for r in records])

    return Pooled(
        prompt_last=stack(0),
        prompt_avg=stack(1),
        response_avg=stack(2) if responses else None,
        truncated=torch.tensor(list(truncated), dtype=torch.bool),
        layers=layers,
        norm=stack(3),
    )


@dataclass(frozen=True)
class EncodedSample:
    """A tokenised sample: its ids, how many of them are the prompt's, and whether its tail was cut."""

    ids: list[int]
    n_prompt: int
    truncated: bool


def encode_samples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str] | None,
    max_length: int | None,
) -> list[EncodedSample]:
    """Each prompt (+ response) tokenised once, with its prompt's token count (see the docstring)."""
    if responses is not None and len(responses) != len(prompts):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
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
        samples.append(
            EncodedSample(ids=list(ids[:max_length] if cut else ids), n_prompt=n_prompt, truncated=cut)
        )
    return samples


def length_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> list[list[int]]:
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


def check_layers(n: int, layers: Sequence[int] | None) -> tuple[int, ...]:
    """`layers` checked against a model of `n` blocks (layers 0..n); None: every layer."""
    if layers is None:
        return tuple(range(n + 1))
    if not layers or len(set(layers)) != len(layers) or not all(0 <= x <= n for x in layers):
        raise ConfigError(f"layers must be distinct, within 0..{n}, and at least one; got {list(layers)}")
    return tuple(layers)


__getattr__ = renamed(__name__, {"Sample": "EncodedSample"})
