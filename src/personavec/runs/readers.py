"""Readers of run directories, one per run type: the only code that knows their file names.

The commands write through `RunDir` using the names here; reports, the demo and the CLI read through
these classes instead of opening files by name. Each reader checks the manifest first (see `rundir`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from personavec.errors import RunDirError
from personavec.runs.results import (
    Calibration,
    Cell,
    ExtractionSummary,
    KitManifest,
    LayerChoice,
    LayerRanking,
    Setting,
)
from personavec.runs.rundir import MANIFEST, read_manifest

if TYPE_CHECKING:
    from personavec.core.vectors import PersonaVector
    from personavec.traits.spec import TraitSpec

R = TypeVar("R", bound="RunReader")


class RunReader:
    """A finished or unfinished run directory of one kind, read."""

    KIND: ClassVar[str]

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, self.KIND)

    @classmethod
    def find(cls: type[R], path: str | Path) -> R | None:
        """The run in `path`, None when there is no manifest there (a fresh directory)."""
        return cls(path) if (Path(path) / MANIFEST).exists() else None

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """Stage → its record (seconds, counts), for the stages done."""
        stages: dict[str, dict[str, Any]] = self.manifest["stages"]
        return stages

    def file(self, name: str) -> Path:
        """The path of one of the run's files (``{key}`` filled from the manifest)."""
        return self.path / name.format_map(self.manifest)

    def _json(self, name: str) -> Any:
        path = self.file(name)
        return json.loads(path.read_text()) if path.exists() else None


class ExtractionRun(RunReader):
    """What `extract` writes: the trait, answers, judgements, filter, vectors and the layer sweep."""

    KIND = "extraction run"
    TRAIT = "trait.json"
    GENERATIONS = "generations.jsonl"
    JUDGE_CACHE = "judge-cache.jsonl"  # not a stage's output: kept when stages are redone
    JUDGEMENTS = "judgements.json"
    FILTER = "filter.json"
    VECTORS = "{trait}.safetensors"
    RANKING = "ranking.json"  # the judge-free layer ranking (`personavec.pipeline.ranking`)
    SWEEP_CELLS = "sweep"  # the sweep's cells (`evaluate.run_cells`)
    SWEEP = "sweep.json"
    REPORT = "report.html"
    OUTPUTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "generations": (GENERATIONS,),
        "judgements": (JUDGEMENTS,),
        "filter": (FILTER,),
        "vectors": (VECTORS,),
        "ranking": (RANKING,),
        "sweep": (SWEEP_CELLS, SWEEP),
    }

    @property
    def vector_path(self) -> Path:
        return self.file(self.VECTORS)

    def trait(self) -> TraitSpec:
        from personavec.traits.spec import parse_trait

        return parse_trait(self._json(self.TRAIT), str(self.file(self.TRAIT)))

    def rows(self) -> list[dict[str, Any]]:
        """The contrastive answers, in request order (empty before generation)."""
        from personavec.core.generate import read_rows

        path = self.file(self.GENERATIONS)
        return list(read_rows(path).values()) if path.exists() else []

    def judgements(self) -> dict[str, Any] | None:
        """``ids`` and, per metric, the score records of the answers; None before judging."""
        found: dict[str, Any] | None = self._json(self.JUDGEMENTS)
        return found

    def filtered(self) -> dict[str, Any] | None:
        """``kept`` (answer indices) and the counts per reason; None before filtering."""
        found: dict[str, Any] | None = self._json(self.FILTER)
        return found

    def summary(self) -> ExtractionSummary | None:
        """Settings, counts, chosen layer and stage times; None before the filter."""

        return ExtractionSummary.from_manifest(self.manifest) if "filter" in self.stages else None

    def kept_examples(self) -> list[tuple[str, str]]:
        """(question, answer) of the kept positive answers: examples that express the trait."""
        filtered = self.filtered()
        if filtered is None:
            raise RunDirError(f"{self.path} is not a filtered extraction run: run extract to the end")
        rows = self.rows()
        return [
            (rows[i]["question"], rows[i]["answer"]) for i in filtered["kept"] if rows[i]["polarity"] == "pos"
        ]

    def vectors(self) -> dict[str, PersonaVector] | None:
        """The vectors by kind; None before they are computed."""
        from personavec.core.vectors import load_vectors

        return load_vectors(self.vector_path) if self.vector_path.exists() else None

    def ranking(self) -> LayerRanking | None:
        """The judge-free layer ranking; None before it (or in a run without a layer sweep)."""
        found = self._json(self.RANKING)
        return None if found is None else LayerRanking.from_dict(found)

    @classmethod
    def ranking_of(cls, vector_file: str | Path) -> LayerRanking:
        """The layer ranking of the extraction run that wrote `vector_file` (its directory)."""
        folder = Path(vector_file).parent
        run = cls.find(folder)
        ranking = run.ranking() if run is not None else None
        skipped = run.stages.get("ranking", {}).get("skipped") if run is not None else None
        if skipped:  # too few kept answers: rerunning cannot rank
            raise RunDirError(f"no layer ranking in {folder}: {skipped}")
        if ranking is None:
            raise RunDirError(
                f"no layer ranking in {folder} (top:K ranks layers from the answers of the extraction run "
                "that wrote the vector): rerun `personavec extract` with a judge on that run directory (it "
                "ranks without generating or judging again)"
            )
        return ranking

    def sweep(self) -> LayerChoice | None:
        """The layer choice; None before the sweep."""

        found = self._json(self.SWEEP)
        return None if found is None else LayerChoice.from_dict(found)

    def sweep_answers(self, n: int = 3) -> dict[float, list[dict[str, Any]]]:
        """Coefficient (0: unsteered) → the first `n` sweep answers there, at the chosen layer."""
        from personavec.core.generate import read_rows

        sweep = self.sweep()
        if sweep is None:
            return {}
        cells = self.file(self.SWEEP_CELLS)
        settings = (Setting(None, 0.0), Setting(sweep.chosen, sweep.coef))
        return {s.coef: list(read_rows(cells / f"{s.name}.jsonl").values())[:n] for s in settings}


class SweepRun(RunReader):
    """What `evaluate.sweep` writes: cells of layers × coefficients."""

    KIND = "sweep"
    CELLS = "cells"
    TABLE = "sweep.json"
    CSV = "sweep.csv"
    REPORT = "report.html"

    def cells(self) -> list[Cell]:

        found = self._json(self.TABLE)
        return [Cell.from_dict(cell) for cell in found["cells"]] if found else []


class EvaluationRun(RunReader):
    """What `evaluate.evaluate_run` writes: one model's unsteered answers, judged."""

    KIND = "evaluation"
    ANSWERS = "answers.jsonl"
    JUDGE_CACHE = "judge-cache.jsonl"

    def cell(self) -> Cell | None:
        """The judged figures; None before the answers are judged."""
        record = self.stages.get("answers")
        return None if record is None else Cell.from_dict({k: v for k, v in record.items() if k != "seconds"})


class CalibrationRun(RunReader):
    """What `calibrate` writes: answers per prompt condition, the points and correlations."""

    KIND = "calibration"
    ANSWERS = "calibration"
    RESULT = "calibration.json"
    REPORT = "report.html"

    def result(self) -> Calibration | None:
        """The points and their correlations; None before the calibration finished."""

        found = self._json(self.RESULT)
        return None if found is None else Calibration.from_dict(found)


class ScreeningRun(RunReader):
    """What `screen` writes: chunk files, ``scores.jsonl`` and the summary; `select` adds its files."""

    KIND = "screening"
    CHUNKS = "chunks"
    SCORES = "scores.jsonl"
    SUMMARY = "summary.json"
    SELECTION = "selection.json"

    @property
    def data_sha256(self) -> str:
        """The screened data file's hash."""
        return str(self.manifest["data"]["sha256"])


class KitRun(RunReader):
    """What `make_trait_dataset` writes: the answers and the graded datasets."""

    KIND = "trait dataset"
    GENERATIONS = "generations.jsonl"
    JUDGE_CACHE = "judge-cache.jsonl"

    def summary(self) -> KitManifest | None:
        """What the datasets teach and, per file, its counts; None before they are written."""

        record = self.stages.get("datasets")
        return None if record is None else KitManifest.from_dict(record)


class TrainingRun(RunReader):
    """What `train` writes: checkpoints, the step log, ``final`` and the run's record."""

    KIND = "training run"
    LOG = "log.jsonl"
    FINAL = "final"
    RECORD = "trained.json"

    def record(self) -> dict[str, Any] | None:
        """The finished run's `Trained` as JSON; None before it finished."""
        found: dict[str, Any] | None = self._json(self.RECORD)
        return found if found is not None and self.file(self.FINAL).exists() else None
