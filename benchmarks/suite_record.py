"""The GPU suite's record: each figure printed and written to the JSON file(s) as soon as it is measured,
so a run cut short still reports; sections run under a wall-time budget, one failure not stopping the rest.

A figure is ``{"name", "value", "unit", "target", "met"}`` (plus ``"note"`` when there is one):
``target`` is ``">= x"``, ``"<= x"``, ``"== x"`` or null (a figure reported, not judged); ``met`` is
null when there is no target or no value. A section that raises records its unmeasured figures with
value null, met false and note ``"error: ..."``; one skipped for time, note ``"skipped: ..."``.
Figures named ``check.*`` are correctness checks: their value is an error measure against a reference.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from personavec._internal.files import write_json

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    "==": lambda value, bound: value == bound,
}


def judge(value: float | None, target: str | None) -> bool | None:
    """Whether `value` meets `target` (e.g. ``">= 0.95"``); None when either is missing."""
    if target is None or value is None:
        return None
    operator, bound = target.split()
    return _OPERATORS[operator](value, float(bound))


class Record:
    """Figures of one run, rewritten to every path in `paths` after each one."""

    def __init__(self, paths: Sequence[Path], header: dict[str, Any], budget_s: float) -> None:
        self.paths = list(paths)
        self.header = header
        self.budget_s = budget_s
        self.started = time.perf_counter()
        self.figures: list[dict[str, Any]] = []
        self._write()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def names(self) -> set[str]:
        return {f["name"] for f in self.figures}

    def add(
        self, name: str, value: float | None, unit: str, target: str | None = None, note: str | None = None
    ) -> None:
        value = None if value is None else float(f"{float(value):.6g}")
        figure: dict[str, Any] = {
            "name": name, "value": value, "unit": unit, "target": target, "met": judge(value, target)
        }  # fmt: skip
        if note:
            figure["note"] = note
        self.figures.append(figure)
        verdict = {True: "ok", False: "FAIL", None: ""}[figure["met"]]
        shown = "—" if value is None else f"{value:.4g}"
        extra = f"  ({note})" if note else ""
        print(
            f"[{self.elapsed():6.1f}s] {name:36s} {shown:>10s} {unit:10s} {target or '':8s} {verdict}{extra}"
        )
        self._write()

    def section(self, names: Sequence[str], estimate_s: float, run: Callable[[], None]) -> None:
        """Run one section, which records `names`; skip it when it would overrun the budget."""
        if self.elapsed() + estimate_s > self.budget_s:
            for name in names:
                self.add(name, None, "", note=f"skipped: {self.elapsed():.0f} s spent of {self.budget_s:.0f}")
            return
        try:
            run()
        except Exception as error:  # any failure is a result here: record it and go on
            traceback.print_exc()
            why = f"error: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
            for name in names:
                if name not in self.names():
                    self.add(name, None, "", note=why)
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for name in names:
            if name not in self.names():
                self.add(name, None, "", note="error: the section did not measure it")

    def failures(self) -> list[dict[str, Any]]:
        """Errored figures and failed correctness checks (slow figures are not failures)."""
        return [
            f
            for f in self.figures
            if str(f.get("note", "")).startswith("error")
            or (f["name"].startswith("check.") and f["met"] is False)
        ]

    def _write(self) -> None:
        for path in self.paths:
            write_json(path, {**self.header, "figures": self.figures})
