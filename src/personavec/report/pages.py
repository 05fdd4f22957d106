"""The extraction report (settings, stages, targets, plots, example answers) and the sections the demo
and the sweep and calibration reports add: steering sweep, calibration, capability, held-out separation.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personavec.report.html import agg, grid, image, png, readable, write_page
from personavec.report.settings import extraction_targets, settings_table, stages_table
from personavec.runs.readers import ExtractionRun
from personavec.runs.results import Target
from personavec.runs.stats import spearman

if TYPE_CHECKING:
    from personavec.runs.results import (
        CalibrationPoint,
        CalibrationSummary,
        Cell,
        LayerChoice,
        LayerRanking,
        Separation,
    )


@dataclass(frozen=True)
class SteeredExample:
    """One answer to show: the question, the steering coefficient it was generated with, the answer."""

    question: str
    coef: float
    answer: str


def _plots(run: ExtractionRun) -> dict[str, str]:
    """Titles → base64 PNGs for whatever the run has got to."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    agg()
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        plots["Vector norm per layer"] = png(figure)
    sweep = run.sweep()
    if sweep is not None:
        figure, ax = plt.subplots(figsize=(6, 3))
        layers = np.array([r.layer for r in sweep.layers], dtype=float)
        traits = np.array([r.trait for r in sweep.layers], dtype=float)  # None (unscored): NaN
        ax.plot(layers, traits, marker="o", label=f"steered, coef {sweep.coef:g}")
        if sweep.baseline.trait is not None:
            ax.axhline(sweep.baseline.trait, color="grey", linestyle="--", label="unsteered")
        ax.set(xlabel="steered layer", ylabel="mean trait score", title="Layer sweep (evaluation questions)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        plots["Layer sweep"] = png(figure)
    ranking = run.ranking()
    if ranking is not None:
        plots["Layer ranking"] = ranking_plot(ranking, sweep)
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
        plots["Score distributions"] = png(figure)
    return plots


def ranking_plot(ranking: LayerRanking, sweep: LayerChoice | None) -> str:
    """`ranking_figure` as a base64 PNG."""
    return png(ranking_figure(ranking, sweep))


def ranking_figure(ranking: LayerRanking, sweep: LayerChoice | None) -> Any:
    """The judge-free AUROC per layer, beside the judged sweep's trait where there is one (a matplotlib
    figure)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    agg()
    figure, ax = plt.subplots(figsize=(6, 3))
    label = "held-out AUROC (no judge)"
    lines = ax.plot(ranking.layers, ranking.auroc, ".-", color="tab:purple", label=label)
    ax.set(xlabel="layer", ylabel="held-out AUROC", title="Layer ranking (judge-free) and the judged sweep")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if sweep is not None:
        judged = ax.twinx()
        cells = [(c.layer, c.trait) for c in sweep.layers if c.trait is not None and c.layer is not None]
        label = f"judged trait, steered at coef {sweep.coef:g}"
        lines += judged.plot(*zip(*cells, strict=True), "o--", color="tab:orange", label=label)
        judged.set_ylabel("judged trait", color="tab:orange")
        chosen = f"judged choice {sweep.chosen}"
        lines.append(ax.axvline(sweep.chosen, color="grey", linestyle=":", label=chosen))
    ax.legend(handles=lines, fontsize=8, loc="lower right")
    return figure


def ranking_section(ranking: LayerRanking, sweep: LayerChoice) -> str:
    """The two rankings of the swept layers side by side, and whether they put the same layer first."""
    judged = sweep.judged_order()
    among = [layer for layer in ranking.order() if layer in judged]
    rows = [
        (c.layer, ranking.score(c.layer), ranking.rank(c.layer), c.trait, judged.index(c.layer) + 1)
        for c in sweep.layers
        if c.layer is not None
    ]
    rho = spearman([ranking.score(x) for x in judged], [-float(i) for i in range(len(judged))])
    verdict = "agree" if among[0] == judged[0] else "disagree"
    return (
        "<h2>Layer ranking</h2><p>Judge-free: per layer, the vector rebuilt on one half of the extraction "
        "questions and the AUROC of its projection on the other half's kept answers, each pooled with only "
        f"its question in context (mean of {len(ranking.per_fold)} folds, {ranking.n_answers} answers). Its "
        f"best layers: {html.escape(readable(ranking.order()[:5]))} (of {len(ranking.layers)}). Among the "
        f"swept layers it puts {among[0]} first and the judged sweep chose {judged[0]}: they <b>{verdict}</b>"
        f"; Spearman over the swept layers {html.escape(readable(rho))}.</p>"
        + grid(["layer", "held-out AUROC", "rank (no judge)", "judged trait", "rank (judged)"], rows)
    )


def sweep_examples(run: ExtractionRun, n: int = 3) -> list[SteeredExample]:
    """The first `n` sweep questions answered unsteered and steered at the chosen layer."""
    return [
        SteeredExample(r["question"], c, r["answer"])
        for c, rows in run.sweep_answers(n).items()
        for r in rows
    ]


def examples_section(examples: Sequence[SteeredExample], title: str) -> str:
    """A table of answers: question, coefficient, answer."""
    return f"<h2>{html.escape(title)}</h2>" + grid(
        ["question", "coef", "answer"], [(e.question, f"{e.coef:+g}", e.answer) for e in examples]
    )


def sweep_section(cells: Sequence[Cell]) -> str:
    """The steering sweep: trait (and coherence, when the judge measured any) against the coefficient,
    one line per layer; the table."""
    import matplotlib.pyplot as plt

    agg()
    unsteered = next((c for c in cells if c.coef == 0), None)
    layers = sorted({c.layer for c in cells if c.layer is not None})
    metrics = ["trait"] + (["coherence"] if any(c.coherence is not None for c in cells) else [])
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for layer in layers:
            line = sorted(
                [c for c in cells if c.layer == layer] + ([unsteered] if unsteered else []),
                key=lambda c: c.coef,
            )
            points = [(c.coef, getattr(c, metric)) for c in line if getattr(c, metric) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=f"layer {layer}")
        ax.set(xlabel="steering coefficient", ylabel=f"mean {metric} score", title=metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    header = ["layer", "coef", "trait", "± 95 %", *metrics[1:], "answers judged"]
    rows = [
        (
            "unsteered" if c.layer is None else c.layer,
            c.coef,
            c.trait,
            c.trait_ci95,
            *([c.coherence] if metrics[1:] else []),
            f"{c.n_scored} of {c.n}",
        )
        for c in cells
    ]
    return image("Steering sweep", png(figure)) + grid(header, rows)


def calibration_section(summary: CalibrationSummary, points: Sequence[CalibrationPoint]) -> str:
    """Scatter of prompt-last projection against the judged trait, one colour per condition; the r values."""
    import matplotlib.pyplot as plt

    agg()
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
            ", ".join(f"{k}: {v:.2f}" for k, v in fit.r_within_level.items() if v is not None)
            or "too few points per level",
        )
        for condition, fit in summary.conditions.items()
    ]
    table = grid(["condition", "r", "points", "r within each level"], rows)
    return image("Calibration: projection vs judged trait", png(figure)) + table


def capability_section(results: dict[str, dict[str, Any]]) -> str:
    """Multiple-choice accuracy per setting (and per subject)."""
    subjects = sorted({s for r in results.values() for s in r["per_subject"]})

    def percent(value: float | None) -> float | None:
        return None if value is None else 100 * value

    rows = [
        (name, r["n"], percent(r["accuracy"]), r["correct_logprob"],
         *(percent(r["per_subject"].get(s)) for s in subjects))
        for name, r in results.items()
    ]  # fmt: skip
    header = ["setting", "questions", "accuracy %", "log p(correct)", *(f"{s} %" for s in subjects)]
    return "<h2>Capability (multiple choice)</h2>" + grid(header, rows)


def targets_section(targets: Sequence[Target], title: str = "Targets") -> str:
    """Each target with its value and goal, and whether it is met; when missed, why."""

    def verdict(t: Target) -> str:
        if t.met:
            return "<td class='met'>met</td>"
        return f"<td class='missed'>missed: {html.escape(t.reason)}</td>"

    head = "".join(f"<th>{h}</th>" for h in ("target", "value", "goal", "met?"))
    rows = "".join(
        f"<tr><td>{html.escape(t.name)}</td><td class='num'>{html.escape(readable(t.value))}</td>"
        f"<td class='num'>{html.escape(t.goal)}</td>{verdict(t)}</tr>"
        for t in targets
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{rows}</table>"


def separation_section(held_out: Separation) -> str:
    """Held-out answers projected with no system prompt in context: per side, the count and projections."""
    sides = {True: "eliciting", False: "suppressing"}
    rows = []
    for positive, side in sides.items():
        found = [
            p for p, a in zip(held_out.projections, held_out.answers, strict=True) if a.positive == positive
        ]
        rows.append((side, len(found), *((float(np.mean(found)), min(found), max(found)) if found else ())))
    questions = len({a.question for a in held_out.answers})
    return (
        "<h2>Held-out separation</h2><p>Answers to questions that neither the extraction nor the sweeps "
        f"asked ({questions} questions), generated under the eliciting or the suppressing system prompt and "
        "kept by the filter's trait rule; each is pooled with <b>only its question in context</b> (no system "
        f"prompt) and projected on the vector at layer {held_out.layer}. "
        f"AUROC = <b>{html.escape(readable(held_out.auroc))}</b>.</p>"
        + grid(["system prompt", "answers kept", "mean projection", "lowest", "highest"], rows)
    )


def write_report(run: str | Path, examples: Sequence[SteeredExample] = (), extra: Sequence[str] = ()) -> Path:
    """Write the extraction run's ``run/report.html``, with `extra` sections at the end.

    Without `examples`, it shows the first sweep questions answered unsteered and at the chosen layer.
    """
    extraction = ExtractionRun(run)
    manifest = extraction.manifest
    examples = examples or sweep_examples(extraction)
    parts = [
        "<h2>Settings</h2>" + settings_table(manifest),
        "<h2>Stages</h2>" + stages_table(manifest),
        targets_section(extraction_targets(extraction), "Extraction checks"),
        *(image(title, data) for title, data in _plots(extraction).items()),
    ]
    ranking, sweep = extraction.ranking(), extraction.sweep()
    if ranking is not None and sweep is not None:
        parts.append(ranking_section(ranking, sweep))
    if examples:
        parts.append(examples_section(examples, "Steered answers (evaluation questions, chosen layer)"))
    title = f"personavec: {manifest['trait']} on {manifest['model']['name']}"
    return write_page(
        extraction.file(ExtractionRun.REPORT), title, [*parts, *extra], manifest["judge"].get("proxy")
    )
