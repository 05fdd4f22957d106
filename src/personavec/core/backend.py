"""What every stage needs from a model runtime: the `Backend` protocol and the requests it answers.

A backend formats and tokenises chat text, generates many requests at once (each with its own
sampling, length, stops, steering, guards and probes), or streams them token by token as they arrive
(`Backend.stream`: new requests admitted while others run, each cancellable), scores next-token
log-probabilities, and pools activations of prompt + answer pairs. Nothing here names transformers:
requests hold token ids, layers and directions; results hold ids, text and numbers. The transformers
backend (`personavec.core.hf`) runs them on a Hugging Face model; a runtime that feeds the model one
flat ``[num_tokens, hidden]`` tensor per step, as vLLM does, keeps its per-request state in
`personavec.core.ledger`, which these requests are written for: an edit says which *positions* of a
request's sequence it changes (not which rows of a padded batch), a probe reads every position.

Layers are numbered as everywhere in personavec (`personavec.core.layers`): 0 is the input of the
first block, ℓ the output of block ℓ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from personavec.core.models import LoadedModel, ModelIdentity, ModelRef
from personavec.core.pooling import Pooled
from personavec.core.positions import TOKEN_POSITIONS, TokenPositions
from personavec.errors import ConfigError, DataError

EditOp = Literal["steer", "ablate"]
FinishReason = Literal["stop", "length"]


def _direction(vector: Tensor, what: str) -> Tensor:
    """`vector` as a finite 1-D float32 tensor, detached."""
    vector = torch.as_tensor(vector)
    if vector.dim() != 1:
        raise ConfigError(f"{what} must be 1-D, got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise DataError(f"{what} contains NaN or inf")
    return vector.detach().float()


@dataclass(frozen=True, eq=False)
class Edit:
    """Change the residual stream at `layer`: add ``coef·vector`` (``steer``), or project the
    vector's direction out (``ablate``: h ← h − (h·v̂)v̂), at `positions` of the sequence (``prompt``:
    the prompt's positions, ``response``: the later ones, ``all``: both)."""

    layer: int
    vector: Tensor
    coef: float = 1.0
    op: EditOp = "steer"
    positions: TokenPositions = "all"

    def __post_init__(self) -> None:
        if not math.isfinite(self.coef):
            raise ConfigError(f"the steering coefficient must be a finite number, got {self.coef}")
        if self.op not in ("steer", "ablate"):
            raise ConfigError(f"unknown edit {self.op!r}; use steer or ablate")
        if self.positions not in TOKEN_POSITIONS:
            raise ConfigError(f"unknown positions {self.positions!r}; use one of {TOKEN_POSITIONS}")
        vector = _direction(self.vector, f"the vector for layer {self.layer}")
        if self.op == "ablate":
            if not vector.norm() > 0:
                raise DataError(f"cannot ablate a zero vector (layer {self.layer})")
            vector = vector / vector.norm()
        object.__setattr__(self, "vector", vector)


@dataclass(frozen=True, eq=False)
class Probe:
    """Read the projection onto `unit` (a unit vector) of the residual at `layer`, at every position,
    before any edit at that layer."""

    layer: int
    unit: Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", _direction(self.unit, f"the probe at layer {self.layer}"))


@dataclass(frozen=True, eq=False)
class GuardRule:
    """Push by ``−coef·direction`` at probe `probe`'s layer once that probe reads above `threshold`:
    checked at the prompt's last position (and, with `per_token`, at every later one); from the
    position it fires at, every later position is pushed."""

    probe: int
    threshold: float
    coef: float
    direction: Tensor
    per_token: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _direction(self.direction, "the guard's direction"))


@dataclass(frozen=True)
class GenerationRequest:
    """One answer to generate from `prompt_ids` (``temperature`` 0: greedy)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stops: tuple[str, ...] = ()
    edits: tuple[Edit, ...] = ()
    probes: tuple[Probe, ...] = ()
    guards: tuple[GuardRule, ...] = ()
    top_logprobs: int | None = None  # None: no log-probabilities; k: the token's and the k likeliest

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise DataError("a generation request needs a prompt")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        for guard in self.guards:
            if not 0 <= guard.probe < len(self.probes):
                raise ConfigError(f"a guard reads probe {guard.probe}; the request has {len(self.probes)}")

    @property
    def decoding(self) -> tuple[float, float]:
        """Requests with the same decoding can share a batch."""
        return (0.0, 1.0) if self.temperature == 0 else (self.temperature, self.top_p)


@dataclass(frozen=True)
class TokenScore:
    """A generated token's log-probability, and the likeliest tokens at its place (id, log-prob)."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Generation:
    """An answer: its token ids (no end-of-sequence token) and text (cut at a stop sequence).

    `readings[s]` holds the probes' projections at step s: step 0 is the prompt's last position,
    step i the i-th answer token's own residual (fed back). `fired_at[j]` is the step guard j fired
    at (−1: never).
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    readings: list[list[float]] = field(default_factory=list)
    fired_at: list[int] = field(default_factory=list)
    scores: list[TokenScore] | None = None


@dataclass(frozen=True)
class Admitted:
    """A request handed to a running backend: its caller's `key`, and the `seed` of the batch it
    starts (None: the backend's random state as it is)."""

    key: Hashable
    request: GenerationRequest
    seed: int | None = None


@dataclass(frozen=True)
class TokenEvent:
    """Answer token `index` (from 0) of request `key`, sent once its own residual has run (with the
    probes' `readings` at its position) or, for a request without probes, as soon as it is sampled."""

    key: Hashable
    index: int
    token_id: int
    readings: list[float]
    score: TokenScore | None = None


@dataclass(frozen=True)
class Finished:
    """Request `key` is over, with its whole answer (`cancelled`: ended early by the caller)."""

    key: Hashable
    generation: Generation
    cancelled: bool = False


@dataclass(frozen=True)
class LogprobRequest:
    """Log-probabilities after `prompt_ids`, under `edits`: of the `candidates` as the next token, the
    `top_k` likeliest next tokens, and of each token of `continuation` given everything before it."""

    prompt_ids: tuple[int, ...]
    candidates: tuple[int, ...] = ()
    top_k: int = 0
    continuation: tuple[int, ...] = ()
    edits: tuple[Edit, ...] = ()

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise DataError("a log-probability request needs a prompt")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be ≥ 0, got {self.top_k}")


@dataclass(frozen=True)
class Logprobs:
    """The answer to a `LogprobRequest`, in its order."""

    candidates: list[float]
    top: list[tuple[int, float]]
    continuation: list[float]


@runtime_checkable
class Backend(Protocol):
    """A model runtime. Stages take one (or a `LoadedModel` or model reference, resolved by
    `as_backend`)."""

    identity: ModelIdentity
    dtype: str  # the dtype the model computes in, as run identities record it (e.g. "torch.float32")

    def chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat-formatted prompt text of `messages`, ending with the assistant's header
        (`jinja2.TemplateError` when the chat template refuses them)."""
        ...

    def encode(self, text: str) -> list[int]:
        """The token ids of chat-formatted `text` (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        """The text of `ids`, special tokens skipped (kept as their text with `special`)."""
        ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[Generation]:
        """Answers to `requests`, in order. `seed` seeds the call (a backend may derive one seed per
        request from it); `batch_size` bounds the requests run at once."""
        ...

    def stream(
        self,
        take: Callable[[int], Sequence[Admitted]],
        emit: Callable[[TokenEvent | Finished], None],
        cancelled: Callable[[Hashable], bool],
        max_running: int = 16,
    ) -> None:
        """Run requests as they come, a token at a time: `take(n)` hands over up to n new requests
        whenever the backend has room (one that batches asks between batches, one that schedules per
        step, as vLLM does, at every step); `emit` gets each token as it is made and each request's
        end; a request for which `cancelled(key)` becomes true ends at its next step. Returns once
        nothing runs and `take` hands over nothing."""
        ...

    def logprobs(self, requests: Sequence[LogprobRequest], batch_size: int = 16) -> list[Logprobs]:
        """Next-token and continuation log-probabilities (log-softmax over the vocabulary), in order."""
        ...

    def pooled(
        self,
        prompts: Sequence[str],
        responses: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        token_budget: int = 16384,
        max_batch_size: int = 64,
        max_length: int | None = None,
        progress: bool = True,
    ) -> Iterator[tuple[list[int], Pooled]]:
        """``(indices, pooled)`` per batch of samples (see `personavec.core.activations`)."""
        ...


def user_turn(model: Backend | LoadedModel, user: str, system: str | None = None) -> str:
    """The prompt text for one user message (after the `system` prompt, if any), ready for generation."""
    messages = [{"role": "system", "content": system}] if system else []
    return as_backend(model).chat([*messages, {"role": "user", "content": user}])


Model = Backend | LoadedModel | ModelRef  # what a verb takes: a backend, or a model resolved to one


def as_backend(model: Model) -> Backend:
    """`model` as a backend: a `LoadedModel` runs on the transformers backend, a `ModelRef` is loaded
    onto it."""
    if isinstance(model, ModelRef):
        model = model.load()
    if isinstance(model, LoadedModel):
        from personavec.core.hf import TransformersBackend  # the backend imports this module

        return TransformersBackend(model)
    return model


def identity_of(model: Model) -> ModelIdentity:
    """`model`'s identity without loading anything (a `ModelRef`'s from its config)."""
    return model.identity() if isinstance(model, ModelRef) else model.identity
