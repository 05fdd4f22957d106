"""The offline demo (``make demo``) in a fresh run directory: its wall time (target ≤ 5 min; the model's
weights read from the cache that a machine's first load writes, whose one-time cost is timed apart), peak
RSS and seconds per stage, and the figures it reports — answers kept by the filter, the layer sweep's
mean trait per layer, the steering sweep at the chosen layer with its Spearman (target ≥ 0.9),
calibration over the graded prompts (target r ≥ 0.75) and smoke-set capability.

    python benchmarks/demo.py        # bundled SmolLM2 on the CPU, a few minutes
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from personavec.demo import DemoResult, run_demo
from personavec.runs.results import LayerChoice

from _common import Figure, report


def pipeline_figures(demo: DemoResult) -> list[Figure]:
    """The filter's counts, the layer sweep and the steering sweep at the chosen layer."""
    summary = demo.run.summary
    choice = LayerChoice.from_dict(json.loads((demo.run.dir / "sweep.json").read_text()))
    figures = [
        Figure("answers kept by the filter, eliciting side", summary.kept_positive),
        Figure("answers kept by the filter, suppressing side", summary.kept_negative),
    ]
    for cell in [choice.baseline, *choice.layers]:
        where = "unsteered" if cell.layer is None else f"layer {cell.layer}, coef {choice.coef:g}"
        if cell.trait is not None:
            figures.append(Figure(f"layer sweep, {where}: mean trait", cell.trait))
    figures.append(Figure("chosen layer", choice.chosen))
    for cell in demo.sweep:
        if cell.trait is not None:
            ci = f" (95 % interval ±{cell.trait_ci95:.1f})" if cell.trait_ci95 is not None else ""
            figures.append(
                Figure(f"steering at the chosen layer, coef {cell.coef:+g}: mean trait{ci}", cell.trait)
            )
    rho = demo.targets["spearman_trait_vs_coef"].value
    if rho is not None:
        figures.append(Figure("Spearman(trait, coef)", rho, "", "≥ 0.9"))
    auroc = demo.targets["held_out_auroc"].value
    if auroc is not None:
        figures.append(
            Figure("held-out separation AUROC (answers alone, unused questions)", auroc, "", "≥ 0.9")
        )
    return figures


def deploy_figures(demo: DemoResult) -> list[Figure]:
    """Calibration over the graded prompts and multiple-choice capability."""
    figures = []
    r = demo.targets["calibration_r_graded"].value
    if r is not None:
        figures.append(Figure("calibration r, graded system prompts", r, "", "≥ 0.75"))
    points = [p for p in demo.calibration.points if p.condition == "graded" and p.trait is not None]
    for level in sorted({p.level for p in points}):
        judged = [p.trait for p in points if p.level == level and p.trait is not None]
        figures.append(
            Figure(f"calibration, graded level {level}: mean judged trait", sum(judged) / len(judged))
        )
    for setting, score in demo.capability.items():
        figures.append(Figure(f"smoke-set capability, {setting}", 100 * score["accuracy"], "%"))
        figures.append(Figure(f"smoke-set log p(correct letter), {setting}", score["correct_logprob"]))
    return figures


CONVERT = "from personavec.core.models import checkpoint_dir; checkpoint_dir('smollm2', 'float32')"


def first_load_seconds(tmp: Path) -> float:
    """The one-time de-quantisation of the bundled GGUF that a machine's first load pays, into an empty
    cache, in a process of its own (the demo's peak memory stays its own); then the user's cache is
    made warm, as every run after the first finds it."""
    started = time.perf_counter()
    empty = {**os.environ, "PERSONAVEC_CACHE": str(tmp)}
    subprocess.run([sys.executable, "-c", CONVERT], env=empty, check=True)
    seconds = time.perf_counter() - started
    subprocess.run([sys.executable, "-c", CONVERT], check=True)
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conversion = first_load_seconds(Path(tmp) / "cache")
        started = time.perf_counter()
        demo = run_demo(Path(tmp) / "demo", progress=False)
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        figures = [
            Figure("wall time, fresh run directory (model cache warm)", wall, "s", "≤ 300"),
            Figure(
                "first load on a machine: GGUF conversion, a fresh process with its imports", conversion, "s"
            ),
            Figure("peak RSS", peak, "MiB"),
            *(Figure(f"stage: {stage}", s, "s") for stage, s in demo.seconds.items() if stage != "total"),
            *pipeline_figures(demo),
            *deploy_figures(demo),
        ]
    report("demo", figures)


if __name__ == "__main__":
    main()
