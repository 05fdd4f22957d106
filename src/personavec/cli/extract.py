"""``personavec extract``: the pipeline, trait → answers → judge → vectors → layer."""

from __future__ import annotations

import argparse
from typing import Any

from personavec.cli._options import (
    add_config,
    add_fields,
    engine_args,
    force_arg,
    from_args,
    judge_args,
    make_engine,
    model_args,
    model_ref,
)
from personavec.pipeline.config import ExtractConfig


def _extract(args: argparse.Namespace) -> None:
    from personavec.judges import make_judge
    from personavec.pipeline.extract import extract
    from personavec.traits import load_trait

    trait = load_trait(args.trait)
    config = from_args(ExtractConfig, args)
    judge = make_judge(args.judge, trait, base_url=args.base_url, concurrency=args.concurrency)
    if judge is not None and judge.proxy:
        print(f"judge: {judge.proxy}", flush=True)
    model, engine = model_ref(args), make_engine(args)
    result = extract(model, trait, judge, args.out, config, force=args.force, engine=engine)
    vector = result.vectors["response-avg"]
    summary = result.summary
    print(
        f"kept {summary.kept_positive} positive / {summary.kept_negative} negative answers; "
        f"chosen layer {vector.layer}"
    )
    print(f"wrote {result.dir / (trait.name + '.safetensors')} and {result.report}")


def add(commands: Any) -> None:
    extract = commands.add_parser("extract", help="the pipeline: trait → answers → judge → vectors → layer")
    model_args(extract, vector=False, adapter=False, pooling=False)
    judge_args(extract)
    add_fields(extract, ExtractConfig)
    engine_args(extract, "the contrastive answers")
    # what to do with an existing run directory, not a setting of the run (extract's `force` argument)
    force_arg(extract)
    add_config(extract)
    extract.set_defaults(run=_extract)
