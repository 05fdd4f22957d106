"""Calibration: does the prompt-last projection predict the trait of the answer that follows?

Prompts that push the persona by degrees, two kinds (the paper's section 4): the trait's 8 graded
system prompts (strongly suppressing → strongly eliciting), and k-shot conversations with k = 0, 5,
10, 15, 20 earlier answers that express the trait. Each evaluation question is answered under each
prompt and judged; the projection of the prompt's last token onto v̂ is set against the judged trait:
Pearson r overall and within each condition. Resumable like the sweep: answers and judgements are
files in the output directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personavec._internal.files import write_json
from personavec.core.backend import Backend, as_backend
from personavec.core.generate import Request, generate_rows
from personavec.core.models import LoadedModel
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import project
from personavec.errors import ConfigError
from personavec.judges import Judge, JudgeCache
from personavec.pipeline.config import CalibrateConfig
from personavec.pipeline.evaluate import mean_ci, run_identity
from personavec.pipeline.preflight import preflight
from personavec.pipeline.results import CalibrationPoint, CalibrationSummary, ConditionFit, Target
from personavec.pipeline.rundir import RunDir
from personavec.pipeline.runs import CalibrationRun
from personavec.traits.spec import TraitSpec


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than 3 points or a constant variable."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


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


def _requests(
    trait: TraitSpec, questions: int, shots: Sequence[int], examples: Sequence[tuple[str, str]]
) -> dict[tuple[str, int], list[Request]]:
    """The prompts of each (condition, level)."""
    asked = trait.evaluation_questions[:questions]
    out: dict[tuple[str, int], list[Request]] = {}
    for level, system in enumerate(trait.graded_prompts or []):
        out["graded", level] = [Request(f"q{q}", question, system) for q, question in enumerate(asked)]
    if shots and max(shots) > len(examples):
        raise ConfigError(
            f"{max(shots)}-shot prompts need {max(shots)} example answers; {len(examples)} given"
        )
    for k in shots:
        out["shots", k] = [
            Request(f"q{q}", question, None, history=tuple(examples[:k])) for q, question in enumerate(asked)
        ]
    return out


def calibrate(
    model: Backend | LoadedModel,
    trait: TraitSpec,
    judge: Judge,
    vector: PersonaVector,
    out: str | Path,
    config: CalibrateConfig = CalibrateConfig(),
    examples: Sequence[tuple[str, str]] = (),
    progress: bool = True,
) -> Calibration:
    """Answer, judge and project every calibration prompt; write ``out/calibration.json``.

    `examples` are (question, answer) pairs that express the trait, for the k-shot prompts (e.g. the
    kept positive answers of an extraction run); with ``config.shots`` empty only graded prompts are
    used.
    """
    config.check(trait)
    backend = as_backend(model)
    preflight(judge=judge, out=out, vectors=[vector], model=backend.identity)
    sizes = {"questions": config.questions, "sampling": asdict(config.sampling)}
    examples_hash = hashlib.sha256(json.dumps(list(examples)).encode()).hexdigest()
    identity = {**run_identity(backend, trait, judge, vector), **sizes, "examples": examples_hash}
    outputs = {"calibration": (CalibrationRun.ANSWERS, CalibrationRun.RESULT)}
    run = RunDir.open(out, CalibrationRun.KIND, identity, outputs)
    started = time.perf_counter()
    cache = JudgeCache(run.path / "judge-cache.jsonl")
    result = Calibration()
    for (condition, level), requests in _requests(trait, config.questions, config.shots, examples).items():
        name = f"{condition}-{level}"
        path = run.path / CalibrationRun.ANSWERS / f"{name}.jsonl"
        rows = generate_rows(backend, requests, path, config.sampling, progress=progress, desc=name)
        scores = cache.judge(
            judge, trait.rubric, [(r["question"], r["answer"]) for r in rows], name, progress
        )
        prompts = [request.prompt(backend) for request in requests]
        projections = project(backend, [vector], prompts, progress=False)[:, 0].tolist()
        for row, score, projection in zip(rows, scores, projections, strict=True):
            result.points.append(CalibrationPoint(condition, level, row["question"], projection, score.value))
    write_json(run.path / CalibrationRun.RESULT, result.to_dict())
    run.record("calibration", started, points=len(result.points), r_overall=result.r())
    return result
