"""The screening report's sections: the dataset's figures, ΔP per trait, histograms, the top samples."""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Any

import numpy as np

from personavec.report.html import agg, grid, image, png, readable

if TYPE_CHECKING:
    from personavec.runs.results import SelectionSummary


def _delta_histograms(
    values: dict[str, Any], reference: dict[str, Any] | None, thresholds: dict[str, float]
) -> str:
    """One ΔP histogram per trait (beside the reference's, with the threshold), as a base64 PNG."""
    import matplotlib.pyplot as plt

    agg()
    figure, axes = plt.subplots(1, len(values), figsize=(4.5 * len(values), 3.2), squeeze=False)
    for ax, trait in zip(axes[0], values, strict=True):
        ax.hist(values[trait], bins=40, alpha=0.6, density=reference is not None, label="this dataset")
        if reference is not None:
            ax.hist(reference[trait], bins=40, alpha=0.6, density=True, label="reference")
        if trait in thresholds:
            ax.axvline(thresholds[trait], color="grey", linestyle="--", label="threshold")
        ylabel = "density" if reference is not None else "samples"
        ax.set(xlabel="ΔP (projection difference)", ylabel=ylabel, title=trait)
        ax.legend(fontsize=8)
    return png(figure)


def _rule(selection: SelectionSummary) -> str:
    """The flagging rule in words."""
    rule = selection.rule
    if "top" in rule:
        return f"the {rule['top']:g} samples with the largest ΔP per trait"
    if "threshold" in rule:
        return f"ΔP above {rule['threshold']:g}"
    if "percentile" in rule:
        where = f" of the reference screening {selection.reference}" if selection.reference else ""
        return f"ΔP above the {rule['percentile']:g}th percentile{where}"
    return readable(rule)


def screening_sections(
    summary: dict[str, Any],
    values: dict[str, Any],
    reference: dict[str, Any] | None,
    selection: SelectionSummary | None,
    top: dict[str, list[dict[str, Any]]],
) -> tuple[list[str], bytes]:
    """A screening's report sections and its ΔP histograms as PNG bytes.

    `values` (and `reference`) map each trait to its samples' ΔP; `summary` is a `Screened` as a dict.
    """
    traits = list(values)
    thresholds = (selection.thresholds if selection else None) or {}
    histograms = _delta_histograms(values, reference, thresholds)
    flagged = selection.flagged_per_trait if selection else {}
    rows = [
        (
            trait,
            summary["mean_delta"][trait],
            float(np.median(values[trait])) if len(values[trait]) else None,
            float(np.std(values[trait])) if len(values[trait]) else None,
            thresholds.get(trait),
            flagged.get(trait),
        )
        for trait in traits
    ]
    facts = [
        ("rows", summary["rows"]),
        ("scored", summary["scored"]),
        ("skipped", summary["skipped"]),
        ("truncated to max length", summary["truncated"]),
    ]
    if selection:
        facts += [
            ("flagging rule", _rule(selection)),
            *(("rows " + k, v) for k, v in selection.counts.items()),
        ]
    parts = [
        "<h2>Dataset</h2>" + grid(["", ""], facts),
        "<h2>Projection difference per trait</h2>"
        + grid(["trait", "mean ΔP", "median", "std", "threshold", "flagged"], rows),
        image("ΔP per sample", histograms),
    ]
    for trait, samples in top.items():
        parts.append(
            f"<h2>{html.escape(trait)}: the samples with the largest ΔP</h2>"
            + grid(
                ["ΔP", "where", "prompt (last user turn)", "response"],
                [(s["delta"], s["where"], s["prompt"][:300], s["response"][:600]) for s in samples],
            )
        )
    if summary["problems"]:
        parts.append(
            "<h2>Skipped rows (first 20)</h2>" + grid(["problem"], [(p,) for p in summary["problems"]])
        )
    return parts, base64.b64decode(histograms)
