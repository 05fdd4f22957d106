"""``personavec sweep``, ``calibrate`` and ``eval capability``: what a vector does and predicts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from personavec.cli._options import (
    add_config,
    add_fields,
    fmt,
    from_args,
    judge_args,
    judged,
    load,
    model_and_vector,
    model_args,
    print_json,
)
from personavec.deploy.config import CapabilityConfig
from personavec.pipeline.config import CalibrateConfig, Sizes, SweepGrid


def _sweep(args: argparse.Namespace) -> None:
    from personavec.pipeline.evaluate import sweep
    from personavec.report.html import write_page
    from personavec.report.pages import sweep_section

    sizes, grid = from_args(Sizes, args), from_args(SweepGrid, args)
    trait, judge = judged(args)
    loaded, vector = model_and_vector(args)
    cells = sweep(loaded, trait, judge, vector, args.out, grid.layers_of(vector), grid.coefs, sizes)
    report = write_page(
        Path(args.out) / "report.html", f"Steering sweep: {trait.name}", [sweep_section(cells)], judge.proxy
    )
    print("layer  coef   trait  ±95%  coherence")
    for c in cells:
        scores = " ".join(fmt(value) for value in (c.trait, c.trait_ci95, c.coherence))
        print(f"{c.layer or '-':>5} {c.coef:+5g} {scores}")
    print(f"wrote {Path(args.out) / 'sweep.csv'} and {report}")


def _calibrate(args: argparse.Namespace) -> None:
    from personavec.pipeline.calibrate import calibrate
    from personavec.pipeline.runs import ExtractionRun
    from personavec.report.html import write_page
    from personavec.report.pages import calibration_section, targets_section

    config = from_args(CalibrateConfig, args, **({} if args.examples_from else {"shots": ()}))
    trait, judge = judged(args)
    examples = ExtractionRun(Path(args.examples_from)).kept_examples() if args.examples_from else []
    loaded, vector = model_and_vector(args)
    result = calibrate(loaded, trait, judge, vector, args.out, config, examples)
    summary = result.summary()
    parts = [calibration_section(summary, result.points)]
    if "graded" in summary.conditions:
        parts.insert(0, targets_section([result.target()], "Target"))
    report = write_page(Path(args.out) / "report.html", f"Calibration: {trait.name}", parts, judge.proxy)
    for condition, fit in summary.conditions.items():
        print(f"{condition}: r = {fit.r} over {fit.n} answers")
    print(f"wrote {Path(args.out) / 'calibration.json'} and {report}")


def _capability(args: argparse.Namespace) -> None:
    from personavec.core.vectors import load_vector
    from personavec.deploy import capability

    config = from_args(CapabilityConfig, args)
    questions = capability.load_questions(args.data)  # bad rows fail before the model loads
    vector = load_vector(args.vector, pooling=args.pooling) if args.vector else None
    loaded = load(args)
    coefs = config.coefs(steered=vector is not None)
    results = capability.score_steered(loaded, questions, vector, coefs, config.layer, config.batch_size)
    if args.json:
        print_json(
            {name: {k: v for k, v in r.to_dict().items() if k != "questions"} for name, r in results.items()}
        )
        return
    for name, score in results.items():
        r = score.to_dict()
        subjects = ", ".join(f"{s} {100 * a:.1f}" for s, a in r["per_subject"].items())
        print(f"{name}: {100 * r['accuracy']:.1f} % of {r['n']} ({subjects})")


def add(commands: Any) -> None:
    sweep = commands.add_parser("sweep", help="trait and coherence over a grid of layers × coefficients")
    model_args(sweep)
    judge_args(sweep)
    add_fields(sweep, SweepGrid)
    add_fields(sweep, Sizes)
    add_config(sweep)
    sweep.set_defaults(run=_sweep)

    calibrate = commands.add_parser("calibrate", help="does the prompt-last projection predict the trait?")
    model_args(calibrate)
    judge_args(calibrate)
    calibrate.add_argument(
        "--examples-from", help="an extraction run directory: its kept answers make k-shot prompts"
    )
    add_fields(calibrate, CalibrateConfig)
    add_config(calibrate)
    calibrate.set_defaults(run=_calibrate)

    evaluate = commands.add_parser("eval", help="evaluations").add_subparsers(
        dest="eval_command", required=True, metavar="SUBCOMMAND"
    )
    mc = evaluate.add_parser(
        "capability", help="multiple-choice accuracy (MMLU CSV layout), optionally steered"
    )
    model_args(mc, vector=False)
    mc.add_argument(
        "--data", default="smoke", help="directory of MMLU-layout CSVs, one CSV, or 'smoke' (default)"
    )
    mc.add_argument("--vector", help="steer with this vector file")
    add_fields(mc, CapabilityConfig)
    mc.add_argument("--json", action="store_true", help="print JSON")
    add_config(mc)
    mc.set_defaults(run=_capability)
