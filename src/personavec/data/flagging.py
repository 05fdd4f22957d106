"""Flagging screened samples: a rule (top K, a ΔP threshold or a reference's percentile) splits the
data into flagged, kept and skipped files; the samples with the largest ΔP for the report."""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from personavec._internal.files import atomic_path, write_json
from personavec.data.config import ONE_RULE, RULES, Selection
from personavec.data.formats import Fate
from personavec.data.samples import DataFile, Sample
from personavec.data.scoring import Screened, deltas, read_scores
from personavec.errors import ConfigError, RunDirError
from personavec.runs.readers import ScreeningRun
from personavec.runs.results import SelectionSummary


def _largest(screened: Screened, trait: str, n: int) -> list[tuple[float, int]]:
    """(ΔP, row index) of the `n` largest ΔP for `trait`, largest first; ties go to the earlier row."""
    ranked = ((row["delta"][trait], -row["index"]) for row in read_scores(screened.scores) if "delta" in row)
    return [(delta, -negative) for delta, negative in heapq.nlargest(n, ranked)]


def _rule(
    screened: Screened, selection: Selection, reference: Screened | None
) -> tuple[Callable[[dict[str, Any]], list[str]], dict[str, float] | None]:
    """A function from a scored row to the traits that flag it, and the ΔP thresholds if any."""
    if selection.top is not None:
        top: dict[str, set[int]] = {}
        for trait in screened.traits:
            top[trait] = {index for _, index in _largest(screened, trait, selection.top)}
        return (lambda row: [t for t in screened.traits if row["index"] in top[t]]), None
    if selection.threshold is not None:
        thresholds = dict.fromkeys(screened.traits, selection.threshold)
    else:
        percentile = selection.percentile
        assert percentile is not None  # Selection.check: exactly one rule is set
        if reference is None:
            raise ConfigError(
                "percentile needs reference: a dataset of ordinary samples", ("percentile", "reference")
            )
        missing = [t for t in screened.traits if t not in reference.traits]
        if missing:
            raise RunDirError(f"the reference was screened without {', '.join(missing)}")
        values = deltas(reference)
        if any(len(v) == 0 for v in values.values()):
            raise RunDirError(f"the reference {reference.out} has no scored samples")
        thresholds = {t: float(np.percentile(values[t], percentile)) for t in screened.traits}
    return (lambda row: [t for t in screened.traits if row["delta"][t] > thresholds[t]]), thresholds


def select(
    screened: Screened, data: DataFile, selection: Selection, reference: Screened | None = None
) -> SelectionSummary:
    """Flag samples; write ``flagged``, ``kept`` and ``skipped`` files in the input's format beside the
    scores (every row goes to one of them).

    Each scored row of ``scores.jsonl`` gets ``flagged``: the traits that flag it. Returns (and writes
    to ``selection.json``) the rule, thresholds and counts.
    """
    if not selection.flagging:
        raise ConfigError(ONE_RULE, RULES)
    if data.sha256() != ScreeningRun(screened.out).data_sha256:
        raise RunDirError(f"{data.path} changed since it was screened into {screened.out}; screen it again")
    flags, thresholds = _rule(screened, selection, reference)
    per_trait = dict.fromkeys(screened.traits, 0)

    def fates(marked: Path) -> Iterator[Fate]:
        with open(marked, "w") as out:
            for row in read_scores(screened.scores):
                fate = "skipped"
                if "delta" in row:
                    row["flagged"] = flags(row)
                    for trait in row["flagged"]:
                        per_trait[trait] += 1
                    fate = "flagged" if row["flagged"] else "kept"
                out.write(json.dumps(row) + "\n")
                yield fate

    names = {fate: screened.out / f"{fate}{data.suffix}" for fate in ("kept", "flagged", "skipped")}
    with atomic_path(screened.scores) as marked:
        counts = data.split(names, fates(marked))
    summary = SelectionSummary(
        rule={k: v for k, v in asdict(selection).items() if v is not None},
        reference=str(reference.out) if reference else None,
        thresholds=thresholds,
        counts=counts,
        flagged_per_trait=per_trait,
        files={fate: str(path) for fate, path in names.items()},
    )
    write_json(screened.out / ScreeningRun.SELECTION, summary.to_dict())
    return summary


def top_samples(screened: Screened, data: DataFile, n: int = 10) -> dict[str, list[dict[str, Any]]]:
    """Per trait, the `n` samples with the largest ΔP: their scores, last user message and response."""
    best: dict[str, list[tuple[float, int]]] = {}
    for trait in screened.traits:
        best[trait] = _largest(screened, trait, n)
    wanted = {index for ranked in best.values() for _, index in ranked}
    texts = {}
    for item in data.samples():
        if isinstance(item, Sample) and item.index in wanted:
            user = next(m["content"] for m in reversed(item.prompt) if m["role"] == "user")
            texts[item.index] = {"where": item.where, "prompt": user, "response": item.response}
    return {
        trait: [{"index": index, "delta": delta, **texts[index]} for delta, index in ranked]
        for trait, ranked in best.items()
    }
