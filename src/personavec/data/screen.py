"""What ``personavec screen`` does in one call: check the settings and data, score the data (and a
reference dataset), flag samples by a rule, and write the report (see `personavec.data.scoring` for
ΔP, `personavec.data.flagging` for the rules)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personavec._internal.deprecation import renamed
from personavec._internal.dist import process_state
from personavec._internal.files import atomic_path
from personavec.core.backend import Model, as_backend
from personavec.core.engine import RemoteEngine
from personavec.core.vectors import PersonaVector
from personavec.data.config import ScreenConfig, Selection
from personavec.data.flagging import select, top_samples
from personavec.data.samples import DataFile
from personavec.data.scoring import Screened, check_engine, count_rows, deltas, score_samples
from personavec.errors import ConfigError
from personavec.runs.preflight import preflight
from personavec.runs.results import SelectionSummary


def write_screen_report(
    screened: Screened,
    data: DataFile,
    selection: SelectionSummary | None = None,
    reference: Screened | None = None,
) -> Path:
    """``report.html`` (ΔP histograms, dataset figures, the most flagged samples) and ``delta.png``."""
    from personavec.report.html import write_page
    from personavec.report.screening import screening_sections

    parts, png = screening_sections(
        asdict(screened),
        deltas(screened),
        deltas(reference) if reference else None,
        selection,
        top_samples(screened, data),
    )
    with atomic_path(screened.out / "delta.png") as tmp:
        tmp.write_bytes(png)
    return write_page(screened.out / "report.html", f"personavec screen: {data.path.name}", parts)


@dataclass
class ScreenResult:
    """What `screen` did: the screening, the reference's, the selection's summary (None: no
    rule given) and the report (None in the processes other than the main one)."""

    screened: Screened
    reference: Screened | None = None
    selection: SelectionSummary | None = None
    report: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        def plain(screened: Screened | None) -> dict[str, Any] | None:
            return None if screened is None else {**asdict(screened), "out": str(screened.out)}

        return {
            "screened": plain(self.screened),
            "reference": plain(self.reference),
            "selection": self.selection.to_dict() if self.selection else None,
            "report": str(self.report) if self.report else None,
        }


def check_screening(
    data: DataFile,
    config: ScreenConfig,
    selection: Selection,
    reference: DataFile | None = None,
    engine: RemoteEngine | None = None,
) -> None:
    """Raise a clear error for settings, rules and data files that cannot screen (no model needed)."""
    check_engine(config, engine)
    if (selection.percentile is None) != (reference is None):
        raise ConfigError("percentile and reference go together", ("percentile", "reference"))
    for checked in (data, reference):
        if checked is not None:
            count_rows(checked, config)


def screen(
    model: Model,
    vectors: Sequence[PersonaVector],
    data: DataFile,
    out: str | Path,
    config: ScreenConfig = ScreenConfig(),
    selection: Selection = Selection(),
    reference: DataFile | None = None,
    progress: bool = True,
    engine: RemoteEngine | None = None,
) -> ScreenResult:
    """What ``personavec screen`` does: score `data` into `out` (`score_samples`; the `reference`
    data into ``out/reference``), flag samples by `selection` if it holds a rule (`select`), and write
    the report; resumable. Every input is checked before `model` (a `ModelRef`) loads. An `engine`
    writes the own answers y′."""
    check_screening(data, config, selection, reference, engine)
    preflight(out=out, vectors=vectors, model=model, engine=engine)
    backend = as_backend(model)
    out = Path(out)
    screened = score_samples(backend, vectors, data, out, config, progress, engine)
    ordinary = (
        score_samples(backend, vectors, reference, out / "reference", config, progress, engine)
        if reference
        else None
    )
    if not process_state().is_main_process:
        return ScreenResult(screened, ordinary)
    summary = select(screened, data, selection, ordinary) if selection.flagging else None
    report = write_screen_report(screened, data, summary, ordinary)
    return ScreenResult(screened, ordinary, summary, report)


__getattr__ = renamed(__name__, {"screen_dataset": "screen"})
