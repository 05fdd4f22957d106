"""Trait and coherence evaluation of a model, optionally steered, and the layers × coefficients sweep.

A *cell* is one setting (a layer and a coefficient, or none: unsteered): the evaluation questions
answered under it, judged for the trait and for coherence. Cells are files in a directory, written
atomically, so a sweep resumes after an interruption and never answers or judges a cell twice.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from personavec._internal.files import atomic_path, write_json
from personavec.core.backend import Backend, Model, as_backend
from personavec.core.generate import Request, generate_rows
from personavec.core.models import LoadedModel
from personavec.core.units import CoefUnits
from personavec.core.vectors import PersonaVector
from personavec.errors import ConfigError
from personavec.judges import COHERENCE_RUBRIC, Judge, JudgeCache
from personavec.pipeline.config import Sizes
from personavec.report.html import write_page
from personavec.report.pages import sweep_section
from personavec.runs.preflight import preflight
from personavec.runs.readers import EvaluationRun, SweepRun
from personavec.runs.results import Cell, Setting
from personavec.runs.rundir import RunDir
from personavec.runs.stats import mean_ci
from personavec.traits.spec import TraitSpec


def halfway_coefs(cells: Sequence[Cell], layer: int) -> dict[str, float | None]:
    """Per direction, the smallest |coef| at `layer` whose cell moves the trait (from the unsteered
    cell's) at least half as far as any coefficient of that direction does; None where unknown."""
    base = next((c.trait for c in cells if c.coef == 0), None)
    out: dict[str, float | None] = {"negative": None, "positive": None}
    if base is None:
        return out
    for name, sign in (("negative", -1.0), ("positive", 1.0)):
        side = sorted(
            (c for c in cells if c.layer == layer and c.coef * sign > 0 and c.trait is not None),
            key=lambda c: abs(c.coef),
        )
        shifts = [abs(c.trait - base) for c in side if c.trait is not None]
        out[name] = next((c.coef for c, s in zip(side, shifts, strict=True) if s >= max(shifts) / 2), None)
    return out


def evaluate(
    model: Backend | LoadedModel,
    trait: TraitSpec,
    judge: Judge,
    cache: JudgeCache,
    path: Path,
    vector: PersonaVector | None = None,
    setting: Setting = Setting(None, 0.0),
    sizes: Sizes = Sizes(),
    progress: bool = True,
) -> Cell:
    """Answer the evaluation questions (as many as `sizes` says) under `setting`, judge them.

    Answers go to `path` (JSONL, resumable); judgements through `cache`. Returns the cell: its setting,
    mean trait score with a 95 % interval, mean coherence (None when the judge measures none), counts.
    """
    if setting.coef != 0 and (vector is None or setting.layer is None):
        raise ConfigError("a steered setting needs a vector and a layer")
    sizes.check(trait)
    requests = [
        Request(f"q{q}-s{s}", question, None, (("question_id", q), ("sample", s)))
        for q, question in enumerate(trait.evaluation_questions[: sizes.questions])
        for s in range(sizes.samples)
    ]
    edits = [vector.edit(setting.coef, setting.layer)] if vector is not None and setting.coef != 0 else []
    rows = generate_rows(
        model, requests, path, sizes.sampling, progress=progress, desc=setting.name, edits=edits
    )
    items = [(r["question"], r["answer"]) for r in rows]
    trait_scores = cache.judge(judge, trait.rubric, items, f"{setting.name} trait", progress)
    mean, ci, n = mean_ci([s.value for s in trait_scores])
    coherence = None
    if judge.measures_coherence:
        coherence_scores = cache.judge(judge, COHERENCE_RUBRIC, items, f"{setting.name} coherence", progress)
        coherence = mean_ci([s.value for s in coherence_scores])[0]
    return Cell(setting.layer, setting.coef, mean, ci, coherence, n, len(rows))


def run_cells(
    model: Backend | LoadedModel,
    trait: TraitSpec,
    judge: Judge,
    cache: JudgeCache,
    cells: Path,
    vector: PersonaVector | None,
    settings: Sequence[Setting],
    sizes: Sizes,
    progress: bool = True,
) -> list[Cell]:
    """The cell of each setting (see `evaluate`), resumably: answers go to ``cells/<name>.jsonl``, a
    finished cell to ``cells/<name>.json`` (read back instead of evaluated again)."""
    found = []
    for setting in settings:
        done = cells / f"{setting.name}.json"
        if done.exists():
            found.append(Cell.from_dict(json.loads(done.read_text())))
            continue
        path = cells / f"{setting.name}.jsonl"
        cell = evaluate(model, trait, judge, cache, path, vector, setting, sizes, progress)
        write_json(done, cell.to_dict())
        found.append(cell)
    return found


def sweep(
    model: Model,
    trait: TraitSpec,
    judge: Judge,
    vector: PersonaVector,
    out: str | Path,
    layers: Sequence[int],
    coefs: Sequence[float],
    sizes: Sizes = Sizes(),
    progress: bool = True,
    units: CoefUnits = "raw",
) -> list[Cell]:
    """Every cell of the grid `layers` × `coefs` (coefficient 0 is one unsteered cell), resumably;
    `coefs` in `units`, each cell steered by its raw conversion at its layer (the coefficient it records).

    Writes the run directory `out` (`SweepRun`): ``cells/*.jsonl`` (answers), ``cells/*.json`` (each
    finished cell), the table ``sweep.json`` and ``sweep.csv``, and ``report.html``. A rerun may add layers or
    coefficients; one with another model, trait, vector, judge or size is refused.
    """
    if not layers or not coefs:
        raise ConfigError("a sweep needs at least one layer and one coefficient")
    for layer in layers:
        vector.resolve_layer(layer)
    sizes.check(trait)
    layers, coefs = list(dict.fromkeys(layers)), list(dict.fromkeys(float(c) for c in coefs))
    settings = [Setting(None, 0.0)] if 0 in coefs else []
    settings += [
        Setting(layer, vector.raw_coef(c, layer, units)) for layer in layers for c in coefs if c != 0
    ]
    preflight(judge=judge, out=out, vectors=[vector], model=model)
    model = as_backend(model)
    identity = {**run_identity(model, trait, judge, vector), **asdict(sizes)}
    outputs = {"sweep": (SweepRun.CELLS, SweepRun.TABLE, SweepRun.CSV)}
    run = RunDir.open(out, SweepRun.KIND, identity, outputs, derived=(SweepRun.REPORT,))
    started = time.perf_counter()
    cache = JudgeCache(run.path / "judge-cache.jsonl")
    cells = run_cells(
        model, trait, judge, cache, run.path / SweepRun.CELLS, vector, settings, sizes, progress
    )
    table = {"trait": trait.name, "judge": judge.describe(), "cells": [c.to_dict() for c in cells]}
    write_json(run.path / SweepRun.TABLE, table)
    with atomic_path(run.path / SweepRun.CSV) as tmp:
        tmp.write_text(table_csv(cells))
    run.record("sweep", started, cells=len(cells))
    title = f"Steering sweep: {trait.name}"
    write_page(run.path / SweepRun.REPORT, title, [sweep_section(cells)], judge.proxy)
    return cells


def evaluate_run(
    model: Backend | LoadedModel,
    trait: TraitSpec,
    judge: Judge,
    out: str | Path,
    sizes: Sizes = Sizes(),
    progress: bool = True,
) -> Cell:
    """The unsteered cell of `model` (see `evaluate`), in the run directory `out`, resumably: its
    answers in ``answers.jsonl``, judgements in ``judge-cache.jsonl``. Another model, trait, judge or
    size is refused."""
    sizes.check(trait)
    preflight(judge=judge, out=out)
    identity = {"model": model.identity.to_dict(), "trait_sha256": trait.sha256(), "judge": judge.name}
    outputs = {"answers": (EvaluationRun.ANSWERS,)}
    run = RunDir.open(out, EvaluationRun.KIND, {**identity, **asdict(sizes)}, outputs)
    started = time.perf_counter()
    cache = JudgeCache(run.path / EvaluationRun.JUDGE_CACHE)
    answers = run.path / EvaluationRun.ANSWERS
    cell = evaluate(model, trait, judge, cache, answers, sizes=sizes, progress=progress)
    run.record("answers", started, **cell.to_dict())
    return cell


def run_identity(
    model: Backend | LoadedModel, trait: TraitSpec, judge: Judge, vector: PersonaVector
) -> dict[str, Any]:
    """What a sweep's or a calibration's results depend on, besides their sizes."""
    return {
        "model": model.identity.to_dict(),
        "trait_sha256": trait.sha256(),
        "judge": judge.name,
        "vector": vector.fingerprint(),
    }


def table_csv(cells: Sequence[Cell]) -> str:
    """The cells as CSV: layer, coef, trait, trait_ci95, coherence, n_scored, n."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["layer", "coef", "trait", "trait_ci95", "coherence", "n_scored", "n"]
    )
    writer.writeheader()
    writer.writerows(cell.to_dict() for cell in cells)
    return buffer.getvalue()
