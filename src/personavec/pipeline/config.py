"""What an extraction run, a sweep's cells and a calibration are told (torch-free, so the command line
builds its flags from it).

A field's ``metadata`` is its flag (``help``; see `personavec.training.config` for the other keys); a
`Sampling` field's ``fields`` are the sampling flags of the command, its default that command's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from personavec.core.sampling import SAMPLING_FIELDS, Sampling, check_samples
from personavec.core.units import UNITS_HELP, CoefUnits, check_units
from personavec.errors import ConfigError

if TYPE_CHECKING:
    from personavec.core.vectors import PersonaVector
    from personavec.runs.results import LayerRanking
    from personavec.traits.spec import TraitSpec

Pairing = Literal["paired", "per-side"]
PAIRINGS: tuple[str, ...] = get_args(Pairing)
GENERATION_FIELDS = ("samples", "questions", "instructions")  # with `sampling`: what the answers depend on
SHOTS = (0, 5, 10, 15, 20)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that changes a run's results.

    A run directory is tied to its generation settings (`sampling` and `GENERATION_FIELDS`); changing
    the filter or sweep settings in a rerun reuses the answers and judgements and redoes the stages
    after them.
    """

    samples: int = field(default=10, metadata={"help": "answers per question × instruction × side"})
    sampling: Sampling = field(
        default=Sampling(max_new_tokens=256, temperature=1.0, batch_size=32),
        metadata={
            "fields": SAMPLING_FIELDS,
            "helps": {
                "temperature": "sampling temperature of the contrastive answers",
                "batch_size": "generation batch size",
            },
        },
    )
    questions: int = field(default=20, metadata={"help": "extraction questions used, of 20"})
    instructions: int = field(default=5, metadata={"help": "instruction pairs used, of 5"})
    trait_threshold: float = field(default=50.0, metadata={"help": "positive answers need ≥, negative <"})
    coherence_threshold: float = field(default=50.0, metadata={"help": "answers need coherence ≥"})
    pairing: Pairing = field(
        default="paired",
        metadata={"help": "keep a pair only if both sides pass (paired), or each side alone (per-side)"},
    )
    min_pairs: int = field(default=10, metadata={"help": "fewest kept answers per side"})
    layers: tuple[int, ...] | str | None = field(
        default=None,
        metadata={
            "help": "sweep candidates, e.g. 12,16,20; top:K, the K layers the judge-free ranking puts first; "
            "or 'none' (default: 8 over the middle half)",
            "top": True,
        },
    )
    coef: float = field(default=2.0, metadata={"help": "steering coefficient of the layer sweep"})
    coef_units: CoefUnits = field(default="raw", metadata={"help": UNITS_HELP})
    sweep_questions: int = field(default=20, metadata={"help": "evaluation questions per sweep layer, of 20"})

    def __post_init__(self) -> None:
        check_units(self.coef_units)
        if self.pairing not in PAIRINGS:
            raise ConfigError(
                f"pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}", ("pairing",)
            )
        check_samples(self.samples, self.sampling)
        check_top(self.layers)
        for name in ("questions", "instructions", "sweep_questions", "min_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", (name,))
        if not math.isfinite(self.coef) or self.coef == 0:
            raise ConfigError(
                f"coef (the sweep's) must be a finite non-zero number, got {self.coef}", ("coef",)
            )

    def check(self, trait: TraitSpec, n_layers: int | None = None) -> None:
        """Raise a clear error for sizes the trait (or layers the model, given its `n_layers`) cannot
        satisfy."""
        limits = {
            "questions": len(trait.extraction_questions),
            "instructions": len(trait.instructions),
            "sweep_questions": len(trait.evaluation_questions),
        }
        for name, high in limits.items():
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be between 1 and {high}, got {getattr(self, name)}", (name,))
        if n_layers is not None:
            from personavec.core.layers import check_layer  # torch; only with a model at hand

            top = top_k(self.layers)
            if top is not None and top > n_layers:
                raise ConfigError(f"layers top:{top}: the model has {n_layers} layers", ("layers",))
            for layer in () if top else self.layers or ():
                check_layer(int(layer), n_layers)


def top_k(layers: tuple[int, ...] | str | None) -> int | None:
    """K of candidate layers ``top:K`` (the K best of the judge-free ranking), else None."""
    found = re.fullmatch(r"top:([1-9][0-9]*)", layers) if isinstance(layers, str) else None
    return int(found[1]) if found else None


def check_top(layers: tuple[int, ...] | str | None) -> None:
    """Raise a clear error for a string of candidate layers other than ``top:K`` with K ≥ 1."""
    if isinstance(layers, str) and top_k(layers) is None:
        message = f"layers: use layer numbers, 'none' or top:K with K ≥ 1, got {layers!r}"
        raise ConfigError(message, ("layers",))


def check_questions(questions: int, trait: TraitSpec) -> None:
    """Raise a clear error unless 1 ≤ `questions` ≤ the trait's evaluation questions."""
    if not 1 <= questions <= len(trait.evaluation_questions):
        raise ConfigError(
            f"questions must be between 1 and {len(trait.evaluation_questions)}, got {questions}",
            ("questions",),
        )


@dataclass(frozen=True)
class Sizes:
    """How much each evaluation cell answers: the first `questions` evaluation questions × `samples`,
    generated as `sampling` says (greedy by default)."""

    questions: int = field(default=20, metadata={"help": "evaluation questions, of 20"})
    samples: int = field(default=1, metadata={"help": "answers per question and cell"})
    sampling: Sampling = field(
        default=Sampling(max_new_tokens=128, batch_size=32),
        metadata={
            "fields": SAMPLING_FIELDS,
            "helps": {
                "max_new_tokens": "answer length",
                "temperature": "0 (default): greedy; > 0 for --samples > 1",
            },
        },
    )

    def __post_init__(self) -> None:
        check_samples(self.samples, self.sampling)

    def check(self, trait: TraitSpec) -> None:
        """Raise a clear error for more questions than the trait has."""
        check_questions(self.questions, trait)


@dataclass(frozen=True)
class SweepGrid:
    """A sweep's grid: the steered `layers` (none: the vector's chosen layer) × the `coefs` (0: one
    unsteered cell)."""

    layers: tuple[int, ...] | str = field(
        default=(),
        metadata={
            "help": "e.g. 12,16,20, or top:K: the K best of the vector's run's judge-free layer ranking "
            "(default: the vector's chosen layer)",
            "top": True,
        },
    )
    coefs: tuple[float, ...] = field(
        default=(-2.0, -1.0, 0.0, 1.0, 2.0),
        metadata={"help": "e.g. --coefs=-2,-1,0,1,2 (the default; note the =)"},
    )
    coef_units: CoefUnits = field(default="raw", metadata={"help": UNITS_HELP})

    def __post_init__(self) -> None:
        check_units(self.coef_units)
        check_top(self.layers)

    def layers_of(self, vector: PersonaVector, ranking: LayerRanking | None = None) -> list[int]:
        """The layers to steer `vector` at: `layers`; for top:K those of `ranking` (the vector's run's);
        none given, its chosen layer."""
        top = top_k(self.layers)
        if top is not None:
            if ranking is None:
                message = f"layers top:{top} needs the layer ranking of the vector's run"
                raise ConfigError(message, ("layers",))
            return list(ranking.top(top))
        return [int(layer) for layer in self.layers] or [vector.resolve_layer(None)]


@dataclass(frozen=True)
class CalibrateConfig:
    """How much a calibration answers: the first `questions` evaluation questions under each graded
    prompt and each k-shot prompt of `shots` (greedy answers)."""

    questions: int = field(default=20, metadata={"help": "evaluation questions, of 20"})
    shots: tuple[int, ...] = field(default=SHOTS, metadata={"help": "k of the k-shot prompts"})
    sampling: Sampling = field(
        default=Sampling(max_new_tokens=128, batch_size=32),
        metadata={"fields": ("max_new_tokens", "batch_size"), "helps": {"max_new_tokens": "answer length"}},
    )

    def check(self, trait: TraitSpec) -> None:
        check_questions(self.questions, trait)
        if any(k < 0 for k in self.shots):
            raise ConfigError(f"shots must be ≥ 0, got {list(self.shots)}")
        if not trait.graded_prompts and not self.shots:
            raise ConfigError(f"trait {trait.name!r} has no graded_prompts and no shots were asked for")
