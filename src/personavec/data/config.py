"""What a screening and the data kit are told (torch-free, so the command line builds its flags from it).

A field's ``metadata`` is its flag (``help``; see `personavec.training.config` for the other keys).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from personavec.core.sampling import SAMPLING_FIELDS, Sampling, check_samples
from personavec.errors import ConfigError

Approximation = Literal["prompt-last"]
BadRowPolicy = Literal["fail", "skip"]
APPROXIMATIONS: tuple[str, ...] = get_args(Approximation)
BAD_ROW_POLICIES: tuple[str, ...] = get_args(BadRowPolicy)


@dataclass(frozen=True)
class ScreenConfig:
    """How to screen. A resumed run must keep the fields that decide the scores (all but the policy
    and the batch sizes). The own answers y′ are greedy: `sampling` gives their length and batch."""

    approx: Approximation | None = field(
        default=None, metadata={"help": "estimate y′ instead of generating it"}
    )
    layer: int | None = field(
        default=None, metadata={"help": "read every vector at this layer (default: each one's)"}
    )
    max_length: int = field(
        default=2048, metadata={"help": "tokens per sample (prompt + response); longer ones lose their tail"}
    )
    sampling: Sampling = field(
        default=Sampling(max_new_tokens=256, batch_size=32),
        metadata={
            "fields": ("max_new_tokens", "batch_size"),
            "helps": {"max_new_tokens": "own answer length"},
        },
    )
    token_budget: int = field(default=16384, metadata={"help": "padded tokens per forward"})
    chunk_size: int = field(default=512, metadata={"help": "rows per resumable chunk"})
    on_bad_row: BadRowPolicy = field(default="fail", metadata={"help": "what a bad row does"})

    def __post_init__(self) -> None:
        if self.approx not in (None, *APPROXIMATIONS):
            raise ConfigError(f"unknown approx {self.approx!r}; use {', '.join(APPROXIMATIONS)}", ("approx",))
        if self.on_bad_row not in BAD_ROW_POLICIES:
            raise ConfigError(f"on_bad_row must be one of {', '.join(BAD_ROW_POLICIES)}", ("on_bad_row",))
        if not self.sampling.greedy:
            raise ConfigError("the model's own answers y′ are greedy: give a sampling of temperature 0")
        for name in ("max_length", "token_budget", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", (name,))
        if self.max_length < 2:
            raise ConfigError("max_length must leave room for a prompt and a response token", ("max_length",))


RULES = ("top", "threshold", "percentile")
ONE_RULE = "choose one of top, threshold or percentile to flag samples"


@dataclass(frozen=True)
class Selection:
    """Which samples to flag: exactly one of the `top` K per trait, ΔP above `threshold`, or ΔP above
    the `percentile` of a reference dataset's ΔP (given to `select`). A sample is flagged when any
    trait flags it."""

    top: int | None = field(
        default=None, metadata={"help": "flag the K samples with the largest ΔP per trait"}
    )
    threshold: float | None = field(default=None, metadata={"help": "flag samples with ΔP above T"})
    percentile: float | None = field(
        default=None, metadata={"help": "flag ΔP above this percentile of --reference"}
    )

    @property
    def flagging(self) -> bool:
        """Whether any rule is given (no rule: scores only)."""
        return any(value is not None for value in asdict(self).values())

    def __post_init__(self) -> None:
        if sum(value is not None for value in asdict(self).values()) > 1:
            raise ConfigError(ONE_RULE, RULES)
        if self.top is not None and self.top < 1:
            raise ConfigError(f"top must be at least 1, got {self.top}", ("top",))
        if self.percentile is not None and not 0 <= self.percentile <= 100:
            raise ConfigError(f"percentile must be within 0..100, got {self.percentile}", ("percentile",))


@dataclass(frozen=True)
class KitConfig:
    """Sizes and sampling of the kit. `reference` questions are held out for ``reference.jsonl``; the
    sampling's seed also seeds which questions are held out and which get elicited answers."""

    invert: bool = field(default=False, metadata={"help": "teach the opposite trait (suppressing prompts)"})
    samples: int = field(
        default=1, metadata={"help": "elicited answers per question (the judge keeps the best)"}
    )
    mild: float = field(default=0.5, metadata={"help": "elicited fraction of mild.jsonl"})
    reference: int = field(default=40, metadata={"help": "questions for reference.jsonl"})
    sampling: Sampling = field(
        default=Sampling(max_new_tokens=128, temperature=1.0, batch_size=16),
        metadata={
            "fields": SAMPLING_FIELDS,
            "helps": {
                "max_new_tokens": "answer length",
                "seed": "sampling and mixing seed",
                "batch_size": "generation batch size",
            },
        },
    )

    def __post_init__(self) -> None:
        if not 0 < self.mild < 1:
            raise ConfigError(f"mild is a fraction strictly between 0 and 1, got {self.mild}", ("mild",))
        check_samples(self.samples, self.sampling)

    def check(self, n_questions: int) -> None:
        """Raise a clear error unless `n_questions` leave some for training beside the reference ones."""
        if not 0 <= self.reference < n_questions - 1:
            raise ConfigError(
                f"reference {self.reference} leaves too few of the {n_questions} questions for training",
                ("reference",),
            )
