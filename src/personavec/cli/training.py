"""``personavec train`` and ``shift``: finetuning with an intervention, and what finetuning moved."""

from __future__ import annotations

import argparse
from typing import Any

from personavec.cli._options import (
    add_config,
    add_fields,
    endpoint_args,
    fmt,
    from_args,
    json_arg,
    judge_arg,
    model_args,
    out_arg,
    print_json,
    trait_arg,
)
from personavec.training.config import DriftConfig, ShiftConfig, TrainConfig, TrainIntervention


def _train(args: argparse.Namespace) -> None:
    from personavec._internal.dist import process_state
    from personavec.training.finetune import train

    config = from_args(TrainConfig, args, intervention=from_args(TrainIntervention, args))
    drift = from_args(DriftConfig, args)
    trained = train(
        args.model, args.data, args.out, config, args.vector, drift, args.eval_data, args.dtype,
        args.device, args.pooling,
    )  # fmt: skip
    if not process_state().is_main_process:
        return
    loss = f"{trained.train_loss:.4f}" if trained.train_loss is not None else "n/a"
    print(f"{trained.steps} steps in {trained.seconds:.0f} s, training loss {loss}: {trained.out}")


def _shift(args: argparse.Namespace) -> None:
    from personavec.cli._options import judged
    from personavec.core.vectors import load_vector
    from personavec.training.shift import measure_shift
    from personavec.traits import load_trait

    config = from_args(ShiftConfig, args)
    trait, judge = judged(args) if args.judge else (load_trait(args.trait), None)
    vectors = [load_vector(path, pooling=args.pooling) for path in args.vector]
    result = measure_shift(
        args.model, args.finetuned, vectors, trait, config.layer, args.dtype, args.device, judge, args.out,
        config.sampling,
    )  # fmt: skip
    if args.json:
        print_json({k: v for k, v in result.to_dict().items() if v is not None})
        return
    print(f"finetuning shift on {trait.name!r}'s {result.questions} evaluation questions (prompt-last):")
    for name, value in result.shift.items():
        print(f"  {name}: {value:+.4f}")
    if result.judged:
        j = result.judged
        print(
            f"judged {trait.name} after finetuning: {fmt(j['trait'])} ± {fmt(j['trait_ci95'])}, "
            f"coherence {fmt(j['coherence'])}"
        )


def add(commands: Any) -> None:
    train = commands.add_parser("train", help="finetune (LoRA or full) with preventative steering, CAFT, ...")
    train.add_argument("data", help="chat JSONL ({'messages': [...]}); the loss is on assistant tokens")
    model_args(train, vector=False, adapter=False, backend=False)
    out_arg(train, "run directory (rerun the command to resume)")
    train.add_argument("--vector", help="the persona vector the intervention uses")
    add_fields(train, TrainIntervention)
    add_fields(train, TrainConfig)
    train.add_argument("--eval-data", help="chat JSONL evaluated every logging interval (no intervention)")
    add_fields(train, DriftConfig)
    add_config(train)
    train.set_defaults(run=_train)

    shift = commands.add_parser("shift", help="finetuning shift along vectors: finetuned vs base model")
    model_args(shift, vector=False, adapter=False, backend=False)
    shift.add_argument("--finetuned", required=True, help="a LoRA adapter directory or a full model")
    shift.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    trait_arg(shift, "trait whose evaluation questions are the prompts")
    judge_arg(shift, "also judge the finetuned model's answers: openai:MODEL, hf:PATH, lexicon")
    endpoint_args(shift)
    out_arg(shift, "with --judge: where the answers and judgements go (resumable)", required=False)
    add_fields(shift, ShiftConfig)
    json_arg(shift)
    add_config(shift)
    shift.set_defaults(run=_shift)
