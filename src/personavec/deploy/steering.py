"""Several persona vectors steering one model at once, each added plainly or behind a guard.

    with steering(loaded, [Steering(evil, -1.5), Steering(sycophantic, -1.0, layer=14)]):
        generate(loaded, prompts)

`steering` puts hooks on a transformers model, for any ``generate`` run inside it. `steer_answers` (the
command line's ``personavec steer``) and `chat` run on any backend: each steering reaches the model as a
request's edit, or as a guard reading the vector's projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from personavec.core import generate as gen
from personavec.core.backend import Backend, Edit, GuardRule, Probe, as_backend, user_turn
from personavec.core.models import LoadedModel
from personavec.core.positions import TokenPositions
from personavec.core.units import CoefUnits
from personavec.core.vectors import PersonaVector
from personavec.deploy.config import SteerConfig
from personavec.deploy.guard import Guard
from personavec.errors import ConfigError


@dataclass(frozen=True)
class Steering:
    """coef × `vector` at `layer` (None: the vector's chosen layer), `coef` in `units`
    (`personavec.core.units`)."""

    vector: PersonaVector
    coef: float
    layer: int | None = None
    units: CoefUnits = "raw"

    def __post_init__(self) -> None:
        self.vector.raw_coef(self.coef, self.layer, self.units)  # units it cannot convert: refused here

    @property
    def at(self) -> int:
        """The layer it steers at."""
        return self.vector.resolve_layer(self.layer)

    @property
    def raw(self) -> float:
        """The coefficient as the multiple of the vector added."""
        return self.vector.raw_coef(self.coef, self.layer, self.units)


@dataclass(frozen=True)
class Parts:
    """Steerings as request parts: plain edits, or guards (guard j reads probe j)."""

    edits: tuple[Edit, ...] = ()
    probes: tuple[Probe, ...] = ()
    guards: tuple[GuardRule, ...] = ()

    @classmethod
    def of(
        cls,
        steerings: Sequence[Steering],
        positions: TokenPositions = "all",
        guard: float | None = None,
        per_token: bool = False,
    ) -> Parts:
        """Each steering as an edit at `positions`, or with a `guard` threshold T as a push by −|coef|·v
        from where its projection first exceeds T (see `personavec.deploy.guard`)."""
        if guard is None:
            return cls(edits=tuple(s.vector.edit(s.raw, s.at, positions) for s in steerings))
        if any(s.coef == 0 for s in steerings):
            raise ConfigError("the guard's coefficient is the size of the push away: use a nonzero COEF")
        return cls(
            probes=tuple(Probe(s.at, s.vector.unit(s.at)) for s in steerings),
            guards=tuple(
                GuardRule(j, guard, abs(s.raw), s.vector.at(s.at), per_token) for j, s in enumerate(steerings)
            ),
        )


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
                stack.enter_context(s.vector.apply(loaded.model, s.raw, s.layer, positions=positions))
            else:
                made = Guard(loaded.model, s.vector, guard, abs(s.raw), s.layer, per_token=per_token)
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


def _checked(model: Backend | LoadedModel, steerings: Sequence[Steering]) -> Backend:
    backend = as_backend(model)
    for s in steerings:
        s.vector.check_model(backend.identity)
    return backend


def steer_answers(
    model: Backend | LoadedModel,
    prompts: Sequence[str],
    steerings: Sequence[Steering],
    system: str | None = None,
    config: SteerConfig = SteerConfig(),
) -> SteeredAnswers:
    """Answer each user message of `prompts` (with the `system` prompt) under `steerings`, at the token
    positions, guarded, compared and sampled as `config` says."""
    if not prompts:
        raise ConfigError("nothing to answer: give at least one prompt")
    backend = _checked(model, steerings)
    parts = Parts.of(steerings, config.positions, config.guard, config.per_token)
    chats = [user_turn(backend, p, system) for p in prompts]
    steered = gen.generations(
        backend, chats, config.sampling, False, "generate", parts.edits, parts.probes, parts.guards
    )
    counts = [
        GuardCount(s.at, sum(g.fired_at[j] >= 0 for g in steered), len(steered))
        for j, s in enumerate(steerings)
        if parts.guards
    ]
    plain = gen.generate(backend, chats, config.sampling, progress=False) if config.compare else None
    return SteeredAnswers(list(prompts), [g.text.strip() for g in steered], plain, counts)


def chat(
    model: Backend | LoadedModel,
    steerings: Sequence[Steering],
    lines: Iterable[str],
    system: str | None = None,
    config: SteerConfig = SteerConfig(),
    write: Callable[[str], None] = lambda text: print(text, flush=True),
) -> list[tuple[str, str]]:
    """A steered conversation: each of `lines` is a user message (blank ones skipped; ``exit`` ends
    it), answered with the turns so far in context and written as ``assistant: …``. The turns."""
    backend = _checked(model, steerings)
    parts = Parts.of(steerings, config.positions, config.guard, config.per_token)
    history: list[tuple[str, str]] = []
    write("chat with the steered model; end with 'exit' or Ctrl-D")
    for line in lines:
        message = line.strip()
        if message == "exit":
            break
        if not message:
            continue
        prompt = gen.Request("chat", message, system, history=tuple(history)).prompt(backend)
        (answer,) = gen.generations(
            backend, [prompt], config.sampling, False, "generate", parts.edits, parts.probes, parts.guards
        )
        history.append((message, answer.text.strip()))
        write(f"assistant: {history[-1][1]}")
    return history
