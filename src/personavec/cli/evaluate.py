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
    json_arg,
    judge_args,
    judged,
    load,
    model_and_vector,
    model_args,
    print_json,
)
from personavec.deploy.config import CapabilityConfig
from personavec.pipeline.config import CalibrateConfig, Sizes, SweepGrid, top_k


def _sweep(args: argparse.Namespace) -> None:
    from personavec.pipeline.evaluate import sweep
    from personavec.runs.readers import ExtractionRun, SweepRun

    sizes, grid = from_args(Sizes, args), from_args(SweepGrid, args)
    ranking = ExtractionRun.ranking_of(args.vector) if top_k(grid.layers) else None
    trait, judge = judged(args)
    model, vector = model_and_vector(args)
    layers = grid.layers_of(vector, ranking)
    cells = sweep(model, trait, judge, vector, args.out, layers, grid.coefs, sizes, units=grid.coef_units)
    if grid.coef_units == "norm":
        print("coefficients in norm units, steered (and shown) as their raw conversions at each layer")
    print("layer  coef   trait  ±95%  coherence")
    for c in cells:
        scores = " ".join(fmt(value) for value in (c.trait, c.trait_ci95, c.coherence))
        print(f"{c.layer or '-':>5} {c.coef:+5g} {scores}")
    run = SweepRun(args.out)
    print(f"wrote {run.file(run.CSV)} and {run.file(run.REPORT)}")


def _calibrate(args: argparse.Namespace) -> None:
    from personavec.pipeline.calibrate import calibrate
    from personavec.runs.readers import CalibrationRun, ExtractionRun

    config = from_args(CalibrateConfig, args, **({} if args.examples_from else {"shots": ()}))
    trait, judge = judged(args)
    examples = ExtractionRun(Path(args.examples_from)).kept_examples() if args.examples_from else []
    model, vector = model_and_vector(args)
    result = calibrate(model, trait, judge, vector, args.out, config, examples)
    for condition, fit in result.summary().conditions.items():
        print(f"{condition}: r = {fit.r} over {fit.n} answers")
    run = CalibrationRun(args.out)
    print(f"wrote {run.file(run.RESULT)} and {run.file(run.REPORT)}")


def _capability(args: argparse.Namespace) -> None:
    from personavec.core.vectors import load_vector
    from personavec.deploy import capability

    config = from_args(CapabilityConfig, args)
    questions = capability.load_questions(args.data)  # bad rows fail before the model loads
    vector = load_vector(args.vector, pooling=args.pooling) if args.vector else None
    config.check(vector)  # before the model loads
    c = config
    results = capability.score_steered(
        load(args), questions, vector, c.coefs(vector is not None), c.layer, c.batch_size, c.coef_units
    )
    if args.json:
        print_json(
            {name: {k: v for k, v in r.to_dict().items() if k != "questions"} for name, r in results.items()}
        )
        return
    for name, score in results.items():
        r = score.to_dict()
        subjects = ", ".join(f"{s} {100 * a:.1f}" for s, a in r["per_subject"].items())
        print(
            f"{name}: {100 * r['accuracy']:.1f} % of {r['n']} ({subjects}); "
            f"mean log-probability of the correct letter {r['correct_logprob']:.3f}"
        )


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
    json_arg(mc)
    add_config(mc)
    mc.set_defaults(run=_capability)
