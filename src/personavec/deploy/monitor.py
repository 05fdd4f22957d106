"""Watch a persona: projections of activations onto persona vectors, batched or live during generation.

`project` scores many prompts (or prompt + answer pairs) against many vectors in one pass.
`monitor_generation` answers a message on any backend with, for each token, the projection of the
residual that produced it: step 0 is the last prompt token (prompt-last, which predicts the first
answer token), step i the i-th generated token as it is fed back. `LiveMonitor` records the same
during a transformers model's own ``generate``; its values stay on the model's device until read, so
watching costs one dot product per layer per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from personavec.core.activations import iter_pooled
from personavec.core.backend import Backend, Model, Probe, as_backend, identity_of, user_turn
from personavec.core.generate import generations
from personavec.core.hooks import ResidualHooks
from personavec.core.models import LoadedModel
from personavec.core.pooling import POOLINGS, Pooling
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.errors import ConfigError, PersonavecError


def _layers(vectors: Sequence[PersonaVector], layer: int | None) -> list[int]:
    """The layer each vector is read at: `layer` for all, or each one's chosen layer."""
    if not vectors:
        raise ConfigError("no vectors given")
    return [v.resolve_layer(layer) for v in vectors]


@dataclass(frozen=True)
class Watched:
    """A vector the server measures, read (and steered) at `layer`."""

    name: str
    vector: PersonaVector
    layer: int

    @property
    def unit(self) -> Tensor:
        return self.vector.unit(self.layer)

    @property
    def direction(self) -> Tensor:
        return self.vector.at(self.layer).float()


@dataclass(frozen=True)
class Readout:
    """How pooled activations become projections: the `layers` to pool (sorted, distinct), and for
    vector j its row ``rows[j]`` among them and its unit vector ``units[j]``."""

    layers: list[int]
    rows: list[int]
    units: Tensor  # [vectors, hidden]

    @classmethod
    def of(cls, vectors: Sequence[PersonaVector], layer: int | None = None) -> Readout:
        """Each vector read at `layer`, or at its own chosen layer."""
        per_vector = _layers(vectors, layer)
        layers = sorted(set(per_vector))
        units = torch.stack([v.unit(x) for v, x in zip(vectors, per_vector, strict=True)])
        return cls(layers=layers, rows=[layers.index(x) for x in per_vector], units=units)

    def project(self, pooled: Tensor) -> Tensor:
        """``[samples, len(layers), hidden]`` pooled activations → ``[samples, vectors]`` projections."""
        return (pooled[:, self.rows] * self.units).sum(-1)


def project(
    model: Backend | LoadedModel,
    vectors: Sequence[PersonaVector],
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    pooling: Pooling = "prompt-last",
    layer: int | None = None,
    token_budget: int = 16384,
    progress: bool = True,
) -> Tensor:
    """Projections ``[len(prompts), len(vectors)]`` (float32) of pooled activations onto each v̂.

    `prompts` are chat-formatted; `pooling` is how activations are pooled (``response-avg`` needs
    `responses`). Each vector is read at `layer`, or at its own chosen layer. One forward pass serves
    every vector.
    """
    if not prompts:
        raise ConfigError("no prompts to project")
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if pooling == "response-avg" and responses is None:
        raise ConfigError("response-avg projections need the responses")
    for vector in vectors:
        vector.check_model(model.identity)
    readout = Readout.of(vectors, layer)
    out = torch.empty(len(prompts), len(vectors))
    for indices, pooled in iter_pooled(
        model, prompts, responses, token_budget=token_budget, progress=progress, layers=readout.layers
    ):
        out[torch.tensor(indices)] = readout.project(pooled.tensor(pooling))
    return out


class LiveMonitor(ResidualHooks):
    """Projections of each new token's residual onto persona vectors, while the model generates.

        with LiveMonitor(model, [evil, sycophantic]) as watch:
            model.generate(**batch)
        watch.trace()     # [batch, steps, 2]: step 0 = end of prompt, step i = generated token i

    `callback(step, values)` is called after each forward with ``values`` [batch, len(vectors)] on the
    model's device (reading it, e.g. ``.tolist()``, synchronises a GPU). It needs left padding (the
    default here) and ``generate``'s KV cache: a forward over an empty cache starts a new trace.
    """

    def __init__(
        self,
        model: nn.Module,
        vectors: Sequence[PersonaVector],
        layer: int | None = None,
        callback: Callable[[int, Tensor], None] | None = None,
    ) -> None:
        layers = _layers(vectors, layer)
        super().__init__(model, layers)
        self.callback = callback
        self.units = [(layer, v.unit(layer)) for v, layer in zip(vectors, layers, strict=True)]
        self._placed: dict[tuple[int, torch.device], Tensor] = {}
        self._values: list[Tensor] = []  # one [batch, k] per forward call
        self._current: dict[int, Tensor] = {}  # this call's projections by vector index
        self._call = -1

    def edit(self, layer: int, hidden: Tensor) -> None:
        self.state.check_last_real()
        if self._call != self.state.calls:  # the first watched layer of a new forward call
            self._call, self._current = self.state.calls, {}
            if self.state.offset == 0:  # an empty KV cache: a new generation
                self._values.clear()
        last = hidden[:, -1].float()
        for j, (vector_layer, unit) in enumerate(self.units):
            if vector_layer == layer:
                key = (j, last.device)
                if key not in self._placed:
                    self._placed[key] = unit.to(last.device)
                self._current[j] = last @ self._placed[key]
        if len(self._current) == len(self.units):
            values = torch.stack([self._current[j] for j in range(len(self.units))], dim=-1)
            self._values.append(values)
            if self.callback is not None:
                self.callback(len(self._values) - 1, values)

    def trace(self) -> Tensor:
        """``[batch, steps, len(vectors)]`` float32 on the CPU, for the last generation."""
        if not self._values:
            raise PersonavecError("the monitor has seen no forward pass yet")
        return torch.stack(self._values, dim=1).cpu()

    def __enter__(self) -> LiveMonitor:
        super().__enter__()
        return self


@dataclass(frozen=True)
class Monitored:
    """A greedy answer token by token, each with the projection onto the vector of the residual that
    produced it (at `layer`)."""

    trait: str
    layer: int
    tokens: list[str]
    projections: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "layer": self.layer,
            "tokens": self.tokens,
            "projections": self.projections,
        }


def monitor_generation(
    model: Model,
    vector: PersonaVector,
    prompt: str,
    system: str | None = None,
    layer: int | None = None,
    sampling: Sampling = Sampling(),
) -> Monitored:
    """Answer the user message `prompt` as `sampling` says (greedily by default), watching each new
    token's projection onto `vector` at `layer` (default: the vector's chosen layer)."""
    vector.check_model(identity_of(model))  # before a `ModelRef` loads
    at = vector.resolve_layer(layer)
    backend = as_backend(model)
    (answer,) = generations(
        backend,
        [user_turn(backend, prompt, system)],
        sampling,
        progress=False,
        probes=[Probe(at, vector.unit(at))],
    )
    tokens = [backend.decode([token]) for token in answer.token_ids]
    values = [step[0] for step in answer.readings[: len(tokens)]]  # the residual that produced each token
    return Monitored(vector.trait, at, tokens, values)
