"""What the data verbs return (torch-free): a selection's summary and the data kit's manifest. Each is
written to its run directory as `to_dict()`, so the files keep their JSON shape."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SelectionSummary:
    """What `select` flagged: the rule given, the `reference` screening's directory (for a percentile),
    the ΔP thresholds per trait (None for a top-K rule), the rows per fate (``flagged``, ``kept``,
    ``skipped``), the flags per trait and the file each fate went to."""

    rule: dict[str, float]
    reference: str | None
    thresholds: dict[str, float] | None
    counts: dict[str, int]
    flagged_per_trait: dict[str, int]
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KitFile:
    """One dataset of the kit: its rows, how many are elicited, empty answers left out, and the mean
    judged trait score (None without a judge)."""

    rows: int
    elicited: int
    empty: int
    judged_trait: float | None


@dataclass(frozen=True)
class KitManifest:
    """What `make_trait_dataset` made: the trait, what the datasets teach, the model and judge names,
    each file by level (``normal``, ``mild``, ``severe``, ``reference``) and the kit's config."""

    trait: str
    teaches: str
    model: str
    judge: str | None
    files: dict[str, KitFile]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KitManifest:
        """From `to_dict`'s shape (other keys, like a stage record's ``seconds``, are ignored)."""
        files = {level: KitFile(**info) for level, info in data["files"].items()}
        return cls(data["trait"], data["teaches"], data["model"], data["judge"], files, data["config"])
