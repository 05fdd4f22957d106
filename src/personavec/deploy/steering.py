"""Several persona vectors steering one model at once, each added plainly or behind a guard.

    with steering(loaded, [Steering(evil, -1.5), Steering(sycophantic, -1.0, layer=14)]):
        generate(loaded, prompts)

`steer_answers` is the command line's ``personavec steer``: answers steered, optionally beside the
unsteered ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from personavec.core.generate import generate
from personavec.core.models import LoadedModel
from personavec.core.positions import TokenPositions
from personavec.core.vectors import PersonaVector
from personavec.deploy.config import SteerConfig
from personavec.deploy.guard import Guard
from personavec.errors import ConfigError


@dataclass(frozen=True)
class Steering:
    """coef × `vector` at `layer` (None: the vector's chosen layer)."""

    vector: PersonaVector
    coef: float
    layer: int | None = None


@contextmanager
def steering(
    loaded: LoadedModel,
    steerings: Sequence[Steering],
    positions: TokenPositions = "all",
    guard: float | None = None,
    per_token: bool = False,
) -> Iterator[list[Guard]]:
    """Every steering applied at once; with a `guard` threshold T each becomes a `Guard` (−|coef|·v on
    the answers whose projection exceeds T), and the guards are yielded (else an empty list)."""
    for s in steerings:
        s.vector.check_model(loaded.identity)
    guards: list[Guard] = []
    with ExitStack() as stack:
        for s in steerings:
            if guard is None:
                stack.enter_context(s.vector.apply(loaded.model, s.coef, s.layer, positions=positions))
            else:
                made = Guard(loaded.model, s.vector, guard, abs(s.coef), s.layer, per_token=per_token)
                guards.append(stack.enter_context(made))
        yield guards


@dataclass(frozen=True)
class GuardCount:
    """How many answers a guard at `layer` steered, of those it saw."""

    layer: int
    steered: int
    seen: int


@dataclass(frozen=True)
class SteeredAnswers:
    """The answers to `prompts` (user messages) steered, and unsteered when compared."""

    prompts: list[str]
    steered: list[str]
    unsteered: list[str] | None
    guards: list[GuardCount]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steer_answers(
    loaded: LoadedModel,
    prompts: Sequence[str],
    steerings: Sequence[Steering],
    system: str | None = None,
    config: SteerConfig = SteerConfig(),
) -> SteeredAnswers:
    """Answer each user message of `prompts` (with the `system` prompt) under `steerings`, at the token
    positions, guarded, compared and sampled as `config` says."""
    if not prompts:
        raise ConfigError("nothing to answer: give --prompt TEXT (repeatable) or --chat")
    chats = [loaded.chat(p, system) for p in prompts]
    with steering(loaded, steerings, config.positions, config.guard, config.per_token) as guards:
        steered = generate(loaded, chats, config.sampling, progress=False)
    counts = [GuardCount(g.layer, g.steered, g.seen) for g in guards]
    plain = generate(loaded, chats, config.sampling, progress=False) if config.compare else None
    return SteeredAnswers(list(prompts), steered, plain, counts)
