"""What steering, monitoring, thresholds and the capability check are told (torch-free, so the command
line builds its flags from it). A field's ``metadata`` is its flag (see `personavec.pipeline.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from personavec.core.positions import TOKEN_POSITIONS, TokenPositions
from personavec.core.sampling import Sampling
from personavec.core.units import UNITS_HELP, CoefUnits, check_units
from personavec.errors import ConfigError

if TYPE_CHECKING:
    from personavec.core.vectors import PersonaVector

DECODING = ("max_new_tokens", "temperature", "top_p", "seed")
STATISTICS = ("prompt_last", "response_avg")
"""The statistics a threshold applies to: the prompt-last projection predicts, the answer's
response-average measures."""


@dataclass(frozen=True)
class SteerConfig:
    """How steered answers are made: a `guard` threshold T (each vector then steers by −|coef|·v only
    the answers whose projection exceeds T, checked per answer or `per_token`), whether to `compare`
    with the unsteered answers, the sampling (greedy by default) and the token `positions` steered."""

    guard: float | None = field(
        default=None,
        metadata={"help": "steer by −|COEF|·v only answers whose projection exceeds T", "metavar": "T"},
    )
    per_token: bool = field(default=False, metadata={"help": "with --guard: check at every token"})
    compare: bool = field(default=False, metadata={"help": "also print the unsteered answer"})
    sampling: Sampling = field(
        default=Sampling(max_new_tokens=128),
        metadata={"fields": DECODING, "helps": {"temperature": "0 (default) decodes greedily"}},
    )
    positions: TokenPositions = field(default="all", metadata={"help": "where to steer"})
    coef_units: CoefUnits = field(default="raw", metadata={"help": UNITS_HELP})

    def __post_init__(self) -> None:
        check_units(self.coef_units)
        if self.positions not in TOKEN_POSITIONS:
            raise ConfigError(
                f"positions must be one of {', '.join(TOKEN_POSITIONS)}, got {self.positions!r}"
            )


@dataclass(frozen=True)
class MonitorConfig:
    """Where a generation is watched (`layer`, default the vector's chosen one) and how it is sampled."""

    layer: int | None = field(default=None, metadata={"help": "default: the vector's chosen layer"})
    sampling: Sampling = field(default=Sampling(max_new_tokens=64), metadata={"fields": DECODING})


@dataclass(frozen=True)
class CapabilityConfig:
    """Multiple-choice scoring, steered by `coef` × the vector at `layer`; `compare` also scores the
    unsteered model; `batch_size` questions are scored per forward pass."""

    coef: float = field(default=1.0, metadata={"help": "steering coefficient"})
    coef_units: CoefUnits = field(default="raw", metadata={"help": UNITS_HELP})
    layer: int | None = field(default=None, metadata={"help": "default: the vector's chosen layer"})
    compare: bool = field(default=False, metadata={"help": "also score the unsteered model"})
    batch_size: int = field(default=16, metadata={"help": "questions scored at once"})

    def __post_init__(self) -> None:
        check_units(self.coef_units)

    def check(self, vector: PersonaVector | None) -> None:
        """Raise a clear error when `vector` cannot take the coefficient (norm units without its norm)."""
        if vector is not None:
            vector.raw_coef(self.coef, self.layer, self.coef_units)

    def coefs(self, steered: bool) -> list[float]:
        """The coefficients to score: the steered one (with a vector), and 0 without one or to compare."""
        return [*([0.0] if not steered or self.compare else []), *([self.coef] if steered else [])]


@dataclass(frozen=True)
class ThresholdCalibration:
    """Thresholds without hand-tuning: the `percentile` of a reference set's projections (the shipped
    everyday questions, or `reference`, one question per line); answers are greedy, `max_new_tokens` long,
    cached under `cache_dir` per model, vector and reference."""

    percentile: float = field(
        default=99.0, metadata={"help": "thresholds: this percentile of the reference set's projections"}
    )
    reference: str | None = field(
        default=None,
        metadata={"help": "reference questions, one per line (default: the shipped everyday questions)"},
    )
    max_new_tokens: int = field(
        default=64, metadata={"help": "length of the reference answers", "flag": "--reference-tokens"}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "where calibrations are cached (default ~/.cache/personavec/serve)"},
    )

    def __post_init__(self) -> None:
        if not 0 < self.percentile < 100:
            raise ConfigError(f"percentile must be in (0, 100), got {self.percentile}", ("percentile",))
        if self.max_new_tokens < 1:
            raise ConfigError(
                f"max_new_tokens must be at least 1, got {self.max_new_tokens}", ("max_new_tokens",)
            )
