"""A self-contained HTML report of an extraction run: counts, plots (inline PNG) and example answers."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personavec._io import atomic_path
from personavec.generate import read_rows
from personavec.vectors import load_vectors


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


def _plots(run: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Titles → base64 PNGs for whatever the run has got to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    trait = manifest["trait"]
    vector_path = run / f"{trait}.safetensors"
    if vector_path.exists():
        vectors = load_vectors(vector_path)
        figure, ax = plt.subplots(figsize=(6, 3))
        for kind, vector in vectors.items():
            ax.plot(vector.tensor.norm(dim=1).numpy(), label=kind)
        chosen = vectors["response-avg"].layer
        if chosen is not None:
            ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen layer {chosen}")
        ax.set(xlabel="layer (0 = embeddings)", ylabel="‖v‖", title=f"{trait}: vector norm per layer")
        ax.legend(fontsize=8)
        plots["Vector norm per layer"] = _png(figure)
    sweep_path = run / "sweep.json"
    if sweep_path.exists():
        sweep = json.loads(sweep_path.read_text())
        figure, ax = plt.subplots(figsize=(6, 3))
        layers = [r["layer"] for r in sweep["layers"]]
        ax.plot(
            layers,
            [r["trait"] for r in sweep["layers"]],
            marker="o",
            label=f"steered, coef {sweep['coef']:g}",
        )
        if sweep["baseline"]["trait"] is not None:
            ax.axhline(sweep["baseline"]["trait"], color="grey", linestyle="--", label="unsteered")
        ax.set(xlabel="steered layer", ylabel="mean trait score", title="Layer sweep (evaluation questions)")
        ax.legend(fontsize=8)
        plots["Layer sweep"] = _png(figure)
    judgements_path = run / "judgements.json"
    if judgements_path.exists():
        judgements = json.loads(judgements_path.read_text())
        rows = read_rows(run / "generations.jsonl")
        by_side: dict[str, list[float]] = {"pos": [], "neg": []}
        for rid, score in zip(judgements["ids"], judgements["trait"], strict=True):
            if score["value"] is not None:
                by_side[rows[rid]["polarity"]].append(score["value"])
        figure, ax = plt.subplots(figsize=(6, 3))
        bins = [i * 5 for i in range(21)]
        ax.hist(by_side["pos"], bins=bins, alpha=0.6, label="eliciting system prompt")
        ax.hist(by_side["neg"], bins=bins, alpha=0.6, label="suppressing system prompt")
        threshold = manifest["selection"]["trait_threshold"]
        ax.axvline(threshold, color="grey", linestyle="--", label=f"threshold {threshold:g}")
        ax.set(
            xlabel="judged trait score", ylabel="answers", title="Judged scores of the contrastive answers"
        )
        ax.legend(fontsize=8)
        plots["Score distributions"] = _png(figure)
    return plots


def sweep_examples(run: Path, n: int = 3) -> list[Example]:
    """The first `n` sweep questions answered unsteered and steered at the chosen layer."""
    sweep = json.loads((run / "sweep.json").read_text())
    baseline = list(read_rows(run / "sweep" / "baseline.jsonl").values())[:n]
    steered = list(read_rows(run / "sweep" / f"layer-{sweep['chosen']}.jsonl").values())[:n]
    return [
        Example(r["question"], c, r["answer"])
        for c, rows in ((0.0, baseline), (sweep["coef"], steered))
        for r in rows
    ]


def _table(rows: Sequence[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def render_report(run: str | Path, examples: Sequence[Example] = ()) -> str:
    """The report of run directory `run` as one HTML page (no external files).

    Without `examples`, it shows the first sweep questions answered unsteered and at the chosen layer.
    """
    run = Path(run)
    if not examples and (run / "sweep.json").exists():
        examples = sweep_examples(run)
    manifest = json.loads((run / "manifest.json").read_text())
    judge = manifest["judge"]
    parts = [
        f"<h1>personavec: {html.escape(manifest['trait'])} on {html.escape(manifest['model']['name'])}</h1>",
    ]
    if judge.get("proxy"):
        parts.append(f"<p class='proxy'><b>Judge is an offline proxy.</b> {html.escape(judge['proxy'])}</p>")
    stages = manifest["stages"]
    facts = [("judge", judge["name"]), *((k, json.dumps(v)) for k, v in manifest["generation"].items())]
    facts += [(k, json.dumps(v)) for k, v in manifest["selection"].items()]
    facts += [(f"stage {k}", json.dumps(v)) for k, v in stages.items() if k != "vectors"]
    parts.append(_table(facts))
    for title, png in _plots(run, manifest).items():
        parts.append(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
        )
    if examples:
        parts.append("<h2>Steered answers (evaluation questions, chosen layer)</h2><table>")
        parts.append("<tr><th>question</th><th>coef</th><th>answer</th></tr>")
        for e in examples:
            parts.append(
                f"<tr><td>{html.escape(e.question)}</td><td>{e.coef:+g}</td><td>{html.escape(e.answer)}</td></tr>"
            )
        parts.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:.3em;text-align:left;vertical-align:top}table{border-collapse:collapse}"
        ".proxy{background:#fff3cd;padding:.5em}"
    )
    title = f"personavec report: {manifest['trait']}"
    body = "\n".join(parts)
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"


def write_report(run: str | Path, examples: Sequence[Example] = ()) -> Path:
    """Write ``run/report.html`` atomically; return its path."""
    path = Path(run) / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(render_report(run, examples))
    return path
