"""What the evaluation stages return (torch-free): a sweep's cells, extraction's layer choice and a
calibration's correlations. Each is written to its run directory as `to_dict()` and read back with
`from_dict`, so the files keep their JSON shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Cell:
    """One evaluation setting's result: mean trait score with its 95 % half-width, mean coherence (None
    when the judge measures none), answers judged (`n_scored`) of those given (`n`)."""

    layer: int | None
    coef: float
    trait: float | None
    trait_ci95: float | None
    coherence: float | None
    n_scored: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(**data)


@dataclass(frozen=True)
class LayerChoice:
    """Extraction's layer sweep: the unsteered `baseline` cell, one cell per candidate layer steered by
    `coef` × the `kind` vector, and the `chosen` layer (moving the trait furthest)."""

    coef: float
    kind: str
    baseline: Cell
    layers: list[Cell]
    chosen: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerChoice:
        cells = [Cell.from_dict(cell) for cell in data["layers"]]
        return cls(data["coef"], data["kind"], Cell.from_dict(data["baseline"]), cells, data["chosen"])


@dataclass(frozen=True)
class ConditionFit:
    """Pearson r of one calibration condition: overall, within each level, over `n` judged answers."""

    r: float | None
    r_within_level: dict[str, float | None]
    n: int


@dataclass(frozen=True)
class CalibrationSummary:
    """Pearson r of projection vs judged trait over every point and per condition."""

    r_overall: float | None
    conditions: dict[str, ConditionFit]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSummary:
        fits = {name: ConditionFit(**fit) for name, fit in data["conditions"].items()}
        return cls(data["r_overall"], fits)
