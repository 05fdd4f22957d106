"""What an extraction run is told (torch-free, so the command line builds its flags from it).

A field's ``metadata`` is its flag (``help``; see `personavec.training.config` for the other keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from personavec.errors import ConfigError

if TYPE_CHECKING:
    from personavec.traits.spec import TraitSpec

Pairing = Literal["paired", "per-side"]
PAIRINGS: tuple[str, ...] = get_args(Pairing)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that changes a run's results.

    A run directory is tied to its generation settings (`GENERATION_FIELDS`); changing the filter or
    sweep settings in a rerun reuses the answers and judgements and redoes the stages after them.
    """

    samples: int = field(default=10, metadata={"help": "answers per question × instruction × side"})
    max_new_tokens: int = field(default=256, metadata={"help": "answer length in tokens"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature of the contrastive answers"}
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    questions: int = field(default=20, metadata={"help": "extraction questions used, of 20"})
    instructions: int = field(default=5, metadata={"help": "instruction pairs used, of 5"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    batch_size: int = field(default=32, metadata={"help": "generation batch size"})
    trait_threshold: float = field(default=50.0, metadata={"help": "positive answers need ≥, negative <"})
    coherence_threshold: float = field(default=50.0, metadata={"help": "answers need coherence ≥"})
    pairing: Pairing = field(
        default="paired",
        metadata={"help": "keep a pair only if both sides pass (paired), or each side alone (per-side)"},
    )
    min_pairs: int = field(default=10, metadata={"help": "fewest kept answers per side"})
    layers: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "sweep candidates, e.g. 12,16,20, or 'none' (default: 8 over the middle half)"},
    )
    coef: float = field(default=2.0, metadata={"help": "steering coefficient of the layer sweep"})
    sweep_questions: int = field(default=20, metadata={"help": "evaluation questions per sweep layer, of 20"})

    def __post_init__(self) -> None:
        if self.pairing not in PAIRINGS:
            raise ConfigError(f"pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}")

    def check(self, trait: TraitSpec, n_layers: int | None = None) -> None:
        """Raise a clear error for settings the trait (or the model, given its `n_layers`) cannot satisfy."""
        limits = {
            "samples": (self.samples, 1, None),
            "max_new_tokens": (self.max_new_tokens, 1, None),
            "questions": (self.questions, 1, len(trait.extraction_questions)),
            "instructions": (self.instructions, 1, len(trait.instructions)),
            "sweep_questions": (self.sweep_questions, 1, len(trait.evaluation_questions)),
            "batch_size": (self.batch_size, 1, None),
            "min_pairs": (self.min_pairs, 1, None),
        }
        for name, (value, low, high) in limits.items():
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ConfigError(f"{name} must be {bound}, got {value}")
        if not self.temperature >= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(
                f"temperature must be ≥ 0 and top_p in (0, 1]; got {self.temperature} and {self.top_p}"
            )
        if not math.isfinite(self.coef) or self.coef == 0:
            raise ConfigError(f"the sweep's coefficient must be a finite non-zero number, got {self.coef}")
        if n_layers is not None:
            from personavec.core.layers import check_layer  # torch; only with a model at hand

            for layer in self.layers or ():
                check_layer(layer, n_layers)
