"""The vaccine experiment's rules, fixed before the evaluation: which dose to keep, and when a
difference between two variants is an effect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from personavec.runs.stats import paired_bootstrap

DOSE_RULE = (
    "the candidate whose mean judged trait on the validation questions is closest to the base "
    "model's there (the aim is an unchanged persona: an overshoot counts as much as a shortfall); "
    "on a tie, the smaller dose"
)


def choose_dose(base: float, candidates: Mapping[float, float]) -> float:
    """The dose (key of `candidates`, value: its validation trait) chosen by `DOSE_RULE`."""
    if not candidates:
        raise ValueError("no candidate doses")
    return min(candidates, key=lambda dose: (round(abs(candidates[dose] - base), 9), abs(dose)))


INTERVALS = (
    "95 % intervals of paired differences: the same questions (or text windows) for both models, a "
    "bootstrap over them (10 000 resamples, seed 0, percentile interval), each question's figure the "
    "mean of its sampled answers"
)


@dataclass(frozen=True)
class Difference:
    """a − b over paired items, with the [low, high] 95 % interval of a bootstrap over the items."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def within_noise(self) -> bool:
        """True when 0 lies inside the interval: no effect may be named."""
        return self.low <= 0 <= self.high

    def text(self, digits: int = 1) -> str:
        verdict = (
            "within the 95 % interval: no effect shown" if self.within_noise else "outside the 95 % interval"
        )
        return f"{self.value:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] ({verdict})"


def difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """The mean of a − b over paired items (a question's mean answer score, a window's loss)."""
    return Difference(*paired_bootstrap(a, b))
