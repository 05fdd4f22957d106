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
from dataclasses import asdict
from pathlib import Path

from personavec._internal.files import write_json
from personavec.core.backend import Model, as_backend
from personavec.core.generate import Request, generate_rows
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import project
from personavec.errors import ConfigError
from personavec.judges import Judge, JudgeCache
from personavec.pipeline.config import CalibrateConfig
from personavec.pipeline.evaluate import run_identity
from personavec.report.html import write_page
from personavec.report.pages import calibration_section, targets_section
from personavec.runs.preflight import preflight
from personavec.runs.readers import CalibrationRun
from personavec.runs.results import Calibration, CalibrationPoint
from personavec.runs.rundir import RunDir
from personavec.traits.spec import TraitSpec


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
    model: Model,
    trait: TraitSpec,
    judge: Judge,
    vector: PersonaVector,
    out: str | Path,
    config: CalibrateConfig = CalibrateConfig(),
    examples: Sequence[tuple[str, str]] = (),
    progress: bool = True,
) -> Calibration:
    """Answer, judge and project every calibration prompt; write ``out/calibration.json`` and the
    report ``out/report.html``.

    `examples` are (question, answer) pairs that express the trait, for the k-shot prompts (e.g. the
    kept positive answers of an extraction run); with ``config.shots`` empty only graded prompts are
    used.
    """
    config.check(trait)
    preflight(judge=judge, out=out, vectors=[vector], model=model)
    backend = as_backend(model)
    sizes = {"questions": config.questions, "sampling": asdict(config.sampling)}
    examples_hash = hashlib.sha256(json.dumps(list(examples)).encode()).hexdigest()
    identity = {**run_identity(backend, trait, judge, vector), **sizes, "examples": examples_hash}
    outputs = {"calibration": (CalibrationRun.ANSWERS, CalibrationRun.RESULT)}
    run = RunDir.open(out, CalibrationRun.KIND, identity, outputs, derived=(CalibrationRun.REPORT,))
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
    write_calibration_report(run.path / CalibrationRun.REPORT, trait, judge, result)
    return result


def write_calibration_report(path: Path, trait: TraitSpec, judge: Judge, result: Calibration) -> Path:
    """The calibration's page: its target (with graded prompts), the points and correlations."""
    summary = result.summary()
    parts = [calibration_section(summary, result.points)]
    if "graded" in summary.conditions:
        parts.insert(0, targets_section([result.target()], "Target"))
    return write_page(path, f"Calibration: {trait.name}", parts, judge.proxy)
