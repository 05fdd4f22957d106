"""The vaccine experiment's rules, fixed before the evaluation: which dose to keep, and when a
difference between two variants is an effect."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Difference:
    """a − b with the half-width of its 95 % interval (independent means: √(ci_a² + ci_b²))."""

    value: float
    ci95: float

    @property
    def within_noise(self) -> bool:
        """True when 0 lies inside the interval: no effect may be named."""
        return abs(self.value) <= self.ci95

    def text(self) -> str:
        verdict = (
            "within the 95 % interval: no effect shown" if self.within_noise else "outside the 95 % interval"
        )
        return f"{self.value:+.1f} ± {self.ci95:.1f} ({verdict})"


def difference(a: tuple[float, float], b: tuple[float, float]) -> Difference:
    """The difference of two means given as (mean, half-width of its 95 % interval)."""
    return Difference(a[0] - b[0], math.hypot(a[1], b[1]))
