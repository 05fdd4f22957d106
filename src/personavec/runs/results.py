"""What the verbs return (torch-free): a sweep's cells, a figure's target, extraction's layer choice and
summary, the judge-free layer ranking, a calibration's points and correlations, held-out separation, a
screening selection's summary and the data kit's manifest; and `Setting`, the key of a sweep's cells.
Each is written to its run directory as `to_dict()` (and read back with `from_dict` where a reader
needs it), so the files keep their JSON shape; they sit below the stages and `report` so that all of
them can name them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from personavec.runs.stats import auroc, mean_ci, pearson


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
class Target:
    """A figure with a goal: what it measures, its `value` (None: not measured), the `goal` as text
    (``≥ 0.9``), whether it is `met`, and `reason`: why not, when it is missed."""

    name: str
    value: float | None
    goal: str
    met: bool
    reason: str = ""

    @classmethod
    def at_least(cls, name: str, value: float | None, goal: float, reason: str) -> Target:
        """A target of `value` ≥ `goal`; `reason` (why it is missed) is kept only when it is."""
        if value is None:
            return cls(name, None, f"≥ {goal:g}", False, "not measured")
        return cls(name, value, f"≥ {goal:g}", value >= goal, "" if value >= goal else reason)


def judged_order(coef: float, cells: Sequence[Cell]) -> list[int]:
    """The layers of steered `cells`, the one moving the judged trait furthest in `coef`'s direction
    first (ties: the lower layer), unscored ones last."""
    sign = 1.0 if coef > 0 else -1.0
    scored = [(sign * c.trait, c.layer) for c in cells if c.trait is not None and c.layer is not None]
    rest = [c.layer for c in cells if c.trait is None and c.layer is not None]
    return [layer for _, layer in sorted(scored, key=lambda x: (-x[0], x[1]))] + rest


@dataclass(frozen=True)
class LayerChoice:
    """Extraction's layer sweep: the unsteered `baseline` cell, one cell per candidate layer steered by
    `coef` × the `pooling` vector, and the `chosen` layer (moving the trait furthest)."""

    coef: float
    pooling: str
    baseline: Cell
    layers: list[Cell]
    chosen: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def judged_order(self) -> list[int]:
        """The swept layers, the chosen kind first (see `judged_order`)."""
        return judged_order(self.coef, self.layers)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerChoice:
        cells = [Cell.from_dict(cell) for cell in data["layers"]]
        return cls(data["coef"], data["pooling"], Cell.from_dict(data["baseline"]), cells, data["chosen"])


@dataclass(frozen=True)
class ExtractionSummary:
    """What an extraction run did, from its manifest: the `trait`, the `model` identity, the `judge`'s
    description, the `generation` and `selection` settings, the answers kept per side and `dropped` per
    reason, how many scores each judging method gave (`methods`; empty without a judge), the `chosen`
    layer (None without a sweep) and each stage's `seconds` (None when a crash lost it)."""

    trait: str
    model: dict[str, Any]
    judge: dict[str, Any]
    generation: dict[str, Any]
    selection: dict[str, Any]
    kept_positive: int
    kept_negative: int
    dropped: dict[str, int]
    methods: dict[str, int]
    chosen: int | None
    seconds: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ExtractionSummary:
        """From a filtered run's manifest (`personavec.runs.readers.ExtractionRun`)."""
        stages = manifest["stages"]
        kept = stages["filter"]
        return cls(
            trait=manifest["trait"],
            model=manifest["model"],
            judge=manifest["judge"],
            generation=manifest["generation"],
            selection=manifest["selection"],
            kept_positive=kept["kept_positive"],
            kept_negative=kept["kept_negative"],
            dropped=kept["dropped"],
            methods=stages.get("judgements", {}).get("methods", {}),
            chosen=stages.get("sweep", {}).get("chosen"),
            seconds={stage: record["seconds"] for stage, record in stages.items()},
        )


@dataclass(frozen=True)
class CalibrationPoint:
    """One calibration answer: its prompt `condition` (``graded`` or ``shots``) and `level` (the graded
    prompt's index, or k), the `question`, the prompt-last `projection` and the judged `trait` (None when
    unscored)."""

    condition: str
    level: int
    question: str
    projection: float
    trait: float | None


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


@dataclass(frozen=True)
class Setting:
    """What a cell is generated under: unsteered (layer None, coef 0) or coef × v at layer."""

    layer: int | None
    coef: float

    @property
    def name(self) -> str:
        return "unsteered" if self.coef == 0 else f"layer-{self.layer}_coef-{self.coef:+}"


@dataclass(frozen=True)
class Answer:
    """A held-out answer: its question, the text, and whether it came from the eliciting side."""

    question: str
    text: str
    positive: bool


@dataclass(frozen=True)
class Separation:
    """The projections of held-out answers (pooled without a system prompt) and their AUROC."""

    answers: list[Answer]
    projections: list[float]
    layer: int

    @property
    def auroc(self) -> float | None:
        """AUROC of the eliciting side's projections over the suppressing side's (None if a side is empty)."""
        pos = [p for p, a in zip(self.projections, self.answers, strict=True) if a.positive]
        neg = [p for p, a in zip(self.projections, self.answers, strict=True) if not a.positive]
        return auroc(pos, neg)

    def counts(self) -> tuple[int, int]:
        """Kept answers from the eliciting and from the suppressing side."""
        pos = sum(a.positive for a in self.answers)
        return pos, len(self.answers) - pos


@dataclass
class Calibration:
    """The calibration's points and their correlations (``calibration.json`` is `to_dict()`)."""

    points: list[CalibrationPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary().to_dict(), "points": [asdict(p) for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """From `to_dict`'s shape (the summary is recomputed from the points)."""
        return cls([CalibrationPoint(**point) for point in data["points"]])

    def r(self, condition: str | None = None, level: Any = None) -> float | None:
        """Pearson r over the points of `condition` (all if None), within one `level` if given."""
        chosen = [
            p
            for p in self.points
            if (condition is None or p.condition == condition)
            and (level is None or p.level == level)
            and p.trait is not None
        ]
        return pearson([p.projection for p in chosen], [p.trait for p in chosen if p.trait is not None])

    def target(self, goal: float = 0.75) -> Target:
        """r over the graded system prompts against `goal` (the paper's 7–8B figure); when missed, why:
        the prompts barely move the judged trait, or the projection does not follow it."""
        graded = [p for p in self.points if p.condition == "graded"]
        levels = sorted({p.level for p in graded})
        means = [
            mean_ci([p.trait for p in graded if p.level == level and p.trait is not None])[0]
            for level in levels
        ]
        found = [m for m in means if m is not None]
        listed = ", ".join("n/a" if m is None else f"{m:.0f}" for m in means)
        reason = f"the judged trait moves with the prompts ({listed}) but the projection does not follow it"
        if found and max(found) - min(found) < 30:
            reason = (
                "the model barely follows the graded prompts (mean judged trait per level, most suppressing "
                f"first: {listed}), so there is little for the projection to predict"
            )
        name = "Pearson r of prompt-last projection and judged trait over the graded system prompts"
        return Target.at_least(name, self.r("graded"), goal, reason)

    def summary(self) -> CalibrationSummary:
        """r overall, per condition, and within each level of each condition."""
        fits = {}
        for condition in sorted({p.condition for p in self.points}):
            levels = sorted({p.level for p in self.points if p.condition == condition})
            fits[condition] = ConditionFit(
                r=self.r(condition),
                r_within_level={str(level): self.r(condition, level) for level in levels},
                n=sum(p.condition == condition and p.trait is not None for p in self.points),
            )
        return CalibrationSummary(self.r(), fits)


FOLDS = 2  # the layer ranking's folds of the extraction questions


@dataclass(frozen=True)
class LayerRanking:
    """The judge-free layer ranking (`personavec.pipeline.ranking`): each layer's held-out AUROC
    (`auroc[j]` is layer `layers[j]`'s mean over the folds, `per_fold` the folds' own), over `n_answers`
    kept answers."""

    layers: tuple[int, ...]
    auroc: tuple[float, ...]
    per_fold: tuple[tuple[float, ...], ...]
    n_answers: int

    def order(self) -> list[int]:
        """The layers, best separating first (ties: the lower layer first)."""
        pairs = sorted(zip(self.auroc, self.layers, strict=True), key=lambda x: (-x[0], x[1]))
        return [layer for _, layer in pairs]

    def top(self, k: int) -> tuple[int, ...]:
        """The `k` best-separating layers, in layer order."""
        return tuple(sorted(self.order()[:k]))

    def rank(self, layer: int) -> int:
        """`layer`'s place in `order` (1: the best)."""
        return self.order().index(layer) + 1

    def score(self, layer: int) -> float:
        return self.auroc[self.layers.index(layer)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": f"{FOLDS}-fold held-out AUROC, answers pooled after their question alone",
            "layers": list(self.layers),
            "auroc": list(self.auroc),
            "per_fold": [list(f) for f in self.per_fold],
            "n_answers": self.n_answers,
            "order": self.order(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerRanking:
        return cls(
            tuple(data["layers"]),
            tuple(data["auroc"]),
            tuple(tuple(f) for f in data["per_fold"]),
            int(data["n_answers"]),
        )
