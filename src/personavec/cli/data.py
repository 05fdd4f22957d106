"""``personavec screen`` and ``data make-trait-dataset``: training data, screened and made."""

from __future__ import annotations

import argparse
from typing import Any

from personavec.cli._options import (
    add_config,
    add_fields,
    endpoint_args,
    engine_args,
    from_args,
    judge_arg,
    make_engine,
    model_args,
    model_ref,
    out_arg,
    trait_arg,
)
from personavec.data.config import KitConfig, ScreenConfig, Selection
from personavec.data.samples import Columns


def _screen(args: argparse.Namespace) -> None:
    from personavec._internal.dist import process_device
    from personavec.core.vectors import load_vector
    from personavec.data.samples import DataFile
    from personavec.data.screen import screen

    config, selection = from_args(ScreenConfig, args), from_args(Selection, args)
    engine = make_engine(args)
    columns = from_args(Columns, args)
    data = DataFile(args.data, columns)  # bad paths, columns and rows fail before the model loads
    reference = DataFile(args.reference, columns) if args.reference else None
    vectors = [load_vector(path, pooling=args.pooling) for path in args.vector]
    model = model_ref(args, device=process_device(args.device))
    result = screen(model, vectors, data, args.out, config, selection, reference, engine=engine)
    if result.report is not None:  # the main process
        _print_screening(result)


def _print_screening(result: Any) -> None:
    screened, ordinary = result.screened, result.reference
    print(
        f"{screened.rows} rows: {screened.scored} scored, {screened.skipped} skipped, "
        f"{screened.truncated} truncated to --max-length"
    )
    for trait, mean in screened.mean_delta.items():
        ref = f" (reference {ordinary.mean_delta[trait]:+.4g})" if ordinary else ""
        print(f"  {trait}: dataset ΔP {mean:+.4g}{ref}")
    if result.selection:
        counts = result.selection.counts
        print(
            f"flagged {counts['flagged']}, kept {counts['kept']}, skipped {counts['skipped']}: "
            f"{result.selection.files['flagged']}"
        )
    print(f"scores: {screened.scores}\nreport: {result.report}")


def _make_trait_dataset(args: argparse.Namespace) -> None:
    from personavec.data.datakit import make_trait_dataset
    from personavec.judges import make_judge
    from personavec.traits import load_trait
    from personavec.traits.questions import read_questions

    trait = load_trait(args.trait)
    questions = read_questions(args.questions) if args.questions else None
    config = from_args(KitConfig, args)
    judge = make_judge(args.judge, trait, base_url=args.base_url) if args.judge else None
    model, engine = model_ref(args), make_engine(args)
    manifest = make_trait_dataset(model, trait, args.out, questions, config, judge, engine=engine)
    for level, info in manifest.files.items():
        judged = f", judged {trait.name} {info.judged_trait:.1f}" if info.judged_trait is not None else ""
        print(f"{args.out}/{level}.jsonl: {info.rows} rows, {info.elicited} elicited{judged}")
    print(f"these teach {manifest.teaches}")


def add(commands: Any) -> None:
    screen = commands.add_parser(
        "screen", help="projection difference ΔP of training data: rank, flag and filter samples"
    )
    screen.add_argument("data", help=".jsonl (chat or prompt/response), .csv, .parquet or a `datasets` dir")
    model_args(screen, vector=False, adapter=False)
    screen.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    out_arg(screen)
    add_fields(screen, ScreenConfig)
    add_fields(screen.add_mutually_exclusive_group(), Selection)
    screen.add_argument("--reference", help="ordinary data for --percentile (the paper: 95th of 20k chats)")
    add_fields(screen, Columns)
    engine_args(screen, "the model's own answers y′")
    add_config(screen)
    screen.set_defaults(run=_screen)

    data = commands.add_parser("data", help="datasets for experiments").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    kit = data.add_parser(
        "make-trait-dataset", help="normal / mild / severe trait-inducing chat datasets answered by the model"
    )
    model_args(kit, vector=False, adapter=False, pooling=False)
    trait_arg(kit)
    out_arg(kit)
    kit.add_argument("--questions", help="one question per line (default: 240 bundled everyday questions)")
    judge_arg(kit, "keep the elicited sample showing the trait most: lexicon, openai:M, hf:P")
    endpoint_args(kit, concurrency=False)
    add_fields(kit, KitConfig)
    engine_args(kit, "the answers")
    add_config(kit)
    kit.set_defaults(run=_make_trait_dataset)
