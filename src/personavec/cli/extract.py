"""``personavec extract``: the pipeline, trait → answers → judge → vectors → layer."""

from __future__ import annotations

import argparse
from typing import Any

from personavec.cli._options import MODEL_HELP, add_config, add_fields, from_args
from personavec.pipeline.config import ExtractConfig


def _extract(args: argparse.Namespace) -> None:
    from personavec.core.models import load_model
    from personavec.judges import make_judge
    from personavec.pipeline.extract import extract
    from personavec.pipeline.preflight import preflight
    from personavec.report.pages import write_report
    from personavec.traits import load_trait

    trait = load_trait(args.trait)
    config = from_args(ExtractConfig, args)
    config.check(trait)  # before minutes of loading (the layers are checked against the model after)
    judge = make_judge(args.judge, trait, base_url=args.base_url, concurrency=args.concurrency)
    if judge is not None and judge.proxy:
        print(f"judge: {judge.proxy}", flush=True)
    preflight(judge=judge, out=args.out)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    result = extract(loaded, trait, judge, args.out, config, force=args.force)
    report = write_report(result.dir)
    vector = result.vectors["response-avg"]
    filtered = result.manifest["stages"]["filter"]
    print(
        f"kept {filtered['kept_positive']} positive / {filtered['kept_negative']} negative answers; "
        f"chosen layer {vector.layer}"
    )
    print(f"wrote {result.dir / (trait.name + '.safetensors')} and {report}")


def add(commands: Any) -> None:
    from personavec.judges import JUDGE_SPECS

    extract = commands.add_parser("extract", help="the pipeline: trait → answers → judge → vectors → layer")
    extract.add_argument("--model", required=True, help=MODEL_HELP)
    extract.add_argument("--trait", required=True, help="built-in trait name or trait file")
    extract.add_argument("--judge", required=True, help=JUDGE_SPECS)
    extract.add_argument("--out", required=True, help="run directory (rerun the command to resume)")
    extract.add_argument("--base-url", help="judge endpoint (default: $OPENAI_BASE_URL or OpenAI)")
    extract.add_argument("--concurrency", type=int, default=8, help="judge requests at once (default 8)")
    add_fields(extract, ExtractConfig)
    extract.add_argument("--dtype", default="auto", help="model dtype (default: bf16 on GPU, fp32 on CPU)")
    extract.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    extract.add_argument("--force", action="store_true", help="start over a run directory made otherwise")
    add_config(extract)
    extract.set_defaults(run=_extract)
