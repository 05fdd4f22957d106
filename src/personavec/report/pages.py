"""A self-contained HTML report of an extraction run: counts, plots (inline PNG) and example answers."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personavec._internal.files import atomic_path
from personavec.pipeline.runs import ExtractionRun

if TYPE_CHECKING:
    from personavec.pipeline.results import CalibrationPoint, CalibrationSummary, Cell, SelectionSummary


@dataclass(frozen=True)
class Example:
    """One answer to show: the question, the steering coefficient it was generated with, the answer."""

    question: str
    coef: float
    answer: str


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _agg() -> None:
    """Plot without a display."""
    import matplotlib

    matplotlib.use("Agg")


def _plots(run: ExtractionRun) -> dict[str, str]:
    """Titles → base64 PNGs for whatever the run has got to."""
    import matplotlib.pyplot as plt

    _agg()

    plots = {}
    trait = run.manifest["trait"]
    vectors = run.vectors()
    if vectors is not None:
        figure, ax = plt.subplots(figsize=(6, 3))
        for kind, vector in vectors.items():
            ax.plot(vector.tensor.norm(dim=1).numpy(), label=kind)
        chosen = vectors["response-avg"].layer
        if chosen is not None:
            ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen layer {chosen}")
        ax.set(xlabel="layer (0 = embeddings)", ylabel="‖v‖", title=f"{trait}: vector norm per layer")
        ax.legend(fontsize=8)
        plots["Vector norm per layer"] = _png(figure)
    sweep = run.sweep()
    if sweep is not None:
        figure, ax = plt.subplots(figsize=(6, 3))
        layers = np.array([r.layer for r in sweep.layers], dtype=float)
        traits = np.array([r.trait for r in sweep.layers], dtype=float)  # None (unscored): NaN
        ax.plot(layers, traits, marker="o", label=f"steered, coef {sweep.coef:g}")
        if sweep.baseline.trait is not None:
            ax.axhline(sweep.baseline.trait, color="grey", linestyle="--", label="unsteered")
        ax.set(xlabel="steered layer", ylabel="mean trait score", title="Layer sweep (evaluation questions)")
        ax.legend(fontsize=8)
        plots["Layer sweep"] = _png(figure)
    judgements = run.judgements()
    if judgements is not None:
        rows = {row["id"]: row for row in run.rows()}
        by_side: dict[str, list[float]] = {"pos": [], "neg": []}
        for rid, score in zip(judgements["ids"], judgements["trait"], strict=True):
            if score["value"] is not None:
                by_side[rows[rid]["polarity"]].append(score["value"])
        figure, ax = plt.subplots(figsize=(6, 3))
        bins = [i * 5 for i in range(21)]
        ax.hist(by_side["pos"], bins=bins, alpha=0.6, label="eliciting system prompt")
        ax.hist(by_side["neg"], bins=bins, alpha=0.6, label="suppressing system prompt")
        threshold = run.manifest["selection"]["trait_threshold"]
        ax.axvline(threshold, color="grey", linestyle="--", label=f"threshold {threshold:g}")
        ax.set(
            xlabel="judged trait score", ylabel="answers", title="Judged scores of the contrastive answers"
        )
        ax.legend(fontsize=8)
        plots["Score distributions"] = _png(figure)
    return plots


def sweep_examples(run: ExtractionRun, n: int = 3) -> list[Example]:
    """The first `n` sweep questions answered unsteered and steered at the chosen layer."""
    return [Example(r["question"], c, r["answer"]) for c, rows in run.sweep_answers(n).items() for r in rows]


def _image(title: str, png: str) -> str:
    alt = html.escape(title)
    return f"<h2>{alt}</h2><img alt='{alt}' src='data:image/png;base64,{png}'>"


def _grid(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        text = f"{value:.3g}" if isinstance(value, float) else "" if value is None else str(value)
        return f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def examples_section(examples: Sequence[Example], title: str) -> str:
    """A table of answers: question, coefficient, answer."""
    return f"<h2>{html.escape(title)}</h2>" + _grid(
        ["question", "coef", "answer"], [(e.question, f"{e.coef:+g}", e.answer) for e in examples]
    )


def sweep_section(cells: Sequence[Cell]) -> str:
    """The steering sweep: trait (and coherence) against the coefficient, one line per layer; the table."""
    import matplotlib.pyplot as plt

    _agg()
    unsteered = next((c for c in cells if c.coef == 0), None)
    layers = sorted({c.layer for c in cells if c.layer is not None})
    figure, axes = plt.subplots(1, 2, figsize=(9, 3))
    for layer in layers:
        line = sorted(
            [c for c in cells if c.layer == layer] + ([unsteered] if unsteered else []),
            key=lambda c: c.coef,
        )
        for ax, metric in zip(axes, ("trait", "coherence"), strict=True):
            points = [(c.coef, getattr(c, metric)) for c in line if getattr(c, metric) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=f"layer {layer}")
    for ax, metric in zip(axes, ("trait", "coherence"), strict=True):
        ax.set(xlabel="steering coefficient", ylabel=f"mean {metric} score", title=metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    rows = [(c.layer, c.coef, c.trait, c.trait_ci95, c.coherence, c.n_scored) for c in cells]
    table = _grid(["layer", "coef", "trait", "± 95 %", "coherence", "judged"], rows)
    return _image("Steering sweep", _png(figure)) + table


def calibration_section(summary: CalibrationSummary, points: Sequence[CalibrationPoint]) -> str:
    """Scatter of prompt-last projection against the judged trait, one colour per condition; the r values."""
    import matplotlib.pyplot as plt

    _agg()
    conditions = sorted({p.condition for p in points})
    figure, axes = plt.subplots(1, len(conditions), figsize=(4.5 * len(conditions), 3.2), squeeze=False)
    for ax, condition in zip(axes[0], conditions, strict=True):
        chosen = [p for p in points if p.condition == condition and p.trait is not None]
        scatter = ax.scatter(
            [p.projection for p in chosen],
            [p.trait for p in chosen],
            c=[p.level for p in chosen],
            s=12,
        )
        figure.colorbar(scatter, ax=ax, label="shots" if condition == "shots" else "level")
        r = summary.conditions[condition].r
        ax.set(
            xlabel="prompt-last projection",
            ylabel="judged trait",
            title=f"{condition}: r = {r:.2f}" if r is not None else condition,
        )
    rows = [
        (
            condition,
            fit.r,
            fit.n,
            ", ".join(f"{k}: {v:.2f}" for k, v in fit.r_within_level.items() if v is not None),
        )
        for condition, fit in summary.conditions.items()
    ]
    table = _grid(["condition", "r", "points", "r within each level"], rows)
    return _image("Calibration: projection vs judged trait", _png(figure)) + table


def capability_section(results: dict[str, dict[str, Any]]) -> str:
    """Multiple-choice accuracy per setting (and per subject)."""
    subjects = sorted({s for r in results.values() for s in r["per_subject"]})
    rows = [
        (name, r["accuracy"], r["n"], *(r["per_subject"].get(s) for s in subjects))
        for name, r in results.items()
    ]
    return "<h2>Capability (multiple choice)</h2>" + _grid(
        ["setting", "accuracy", "questions", *subjects], rows
    )


def _delta_histograms(
    values: dict[str, Any], reference: dict[str, Any] | None, thresholds: dict[str, float]
) -> str:
    """One ΔP histogram per trait (beside the reference's, with the threshold), as a base64 PNG."""
    import matplotlib.pyplot as plt

    _agg()
    figure, axes = plt.subplots(1, len(values), figsize=(4.5 * len(values), 3.2), squeeze=False)
    for ax, trait in zip(axes[0], values, strict=True):
        ax.hist(values[trait], bins=40, alpha=0.6, density=reference is not None, label="this dataset")
        if reference is not None:
            ax.hist(reference[trait], bins=40, alpha=0.6, density=True, label="reference")
        if trait in thresholds:
            ax.axvline(thresholds[trait], color="grey", linestyle="--", label="threshold")
        ax.set(xlabel="ΔP (projection difference)", ylabel="samples", title=trait)
        ax.legend(fontsize=8)
    return _png(figure)


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
    png = _delta_histograms(values, reference, thresholds)
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
        facts += [("rule", json.dumps(selection.rule)), *selection.counts.items()]
    parts = [
        "<h2>Dataset</h2>" + _grid(["", ""], facts),
        "<h2>Projection difference per trait</h2>"
        + _grid(["trait", "mean ΔP", "median", "std", "threshold", "flagged"], rows),
        _image("ΔP per sample", png),
    ]
    for trait, samples in top.items():
        parts.append(
            f"<h2>{html.escape(trait)}: the samples with the largest ΔP</h2>"
            + _grid(
                ["ΔP", "where", "prompt (last user turn)", "response"],
                [(s["delta"], s["where"], s["prompt"][:300], s["response"][:600]) for s in samples],
            )
        )
    if summary["problems"]:
        parts.append(
            "<h2>Skipped rows (first 20)</h2>" + _grid(["problem"], [(p,) for p in summary["problems"]])
        )
    return parts, base64.b64decode(png)


STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;"
    "padding:.3em;text-align:left;vertical-align:top}table{border-collapse:collapse}"
    ".proxy{background:#fff3cd;padding:.5em}"
)


def page(title: str, parts: Sequence[str], proxy: str | None = None) -> str:
    """A self-contained HTML page; `proxy` (a judge's proxy note) is shown in a box at the top."""
    warning = f"<p class='proxy'><b>Judge is an offline proxy.</b> {html.escape(proxy)}</p>" if proxy else ""
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    body = f"<h1>{html.escape(title)}</h1>{warning}" + "\n".join(parts)
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"


def write_page(path: str | Path, title: str, parts: Sequence[str], proxy: str | None = None) -> Path:
    """Write `page(...)` to `path` atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page(title, parts, proxy))
    return path


def write_report(run: str | Path, examples: Sequence[Example] = (), extra: Sequence[str] = ()) -> Path:
    """Write the extraction run's ``run/report.html``, with `extra` sections at the end.

    Without `examples`, it shows the first sweep questions answered unsteered and at the chosen layer.
    """
    extraction = ExtractionRun(run)
    manifest = extraction.manifest
    examples = examples or sweep_examples(extraction)
    facts = [
        ("judge", manifest["judge"]["name"]),
        *((k, json.dumps(v)) for k, v in manifest["generation"].items()),
    ]
    facts += [(k, json.dumps(v)) for k, v in manifest["selection"].items()]
    facts += [(f"stage {k}", json.dumps(v)) for k, v in manifest["stages"].items() if k != "vectors"]
    parts = [
        _grid(["setting", "value"], facts),
        *(_image(title, png) for title, png in _plots(extraction).items()),
    ]
    if examples:
        parts.append(examples_section(examples, "Steered answers (evaluation questions, chosen layer)"))
    title = f"personavec: {manifest['trait']} on {manifest['model']['name']}"
    return write_page(
        extraction.file(ExtractionRun.REPORT), title, [*parts, *extra], manifest["judge"].get("proxy")
    )
