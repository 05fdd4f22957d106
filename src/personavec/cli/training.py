"""``personavec train`` and ``shift``: finetuning with an intervention, and what finetuning moved."""

from __future__ import annotations

import argparse
from typing import Any

from personavec.cli._options import add_config, add_fields, fmt, from_args, model_args, print_json
from personavec.training.config import DriftConfig, TrainConfig, TrainIntervention


def _train(args: argparse.Namespace) -> None:
    from personavec._internal.dist import process_device, process_state
    from personavec.core.models import load_model
    from personavec.core.vectors import load_vector
    from personavec.training.drift import DriftAlarm
    from personavec.training.sft_data import load_conversations
    from personavec.training.train import train
    from personavec.traits import load_trait

    spec = from_args(TrainIntervention, args)
    config = from_args(TrainConfig, args, intervention=spec)
    drift = from_args(DriftConfig, args)
    config.check(args.eval_data)
    load_conversations(args.data)  # bad rows fail before the model loads
    vector = load_vector(args.vector, pooling=args.pooling) if args.vector else None
    watched = [load_vector(path, pooling=args.pooling) for path in drift.vectors]
    probes = load_trait(drift.trait).evaluation_questions if drift.trait else []
    loaded = load_model(args.model, dtype=args.dtype, device=process_device(args.device))
    for checked in [*([vector] if vector else []), *watched]:
        checked.check_model(loaded.identity)
    spec.check(vector, loaded.identity.n_layers, config.lora)
    alarms = (
        [DriftAlarm(loaded, watched, probes, drift.every, drift.threshold, drift.stop)] if drift.every else []
    )
    trained = train(loaded, args.data, args.out, config, vector, alarms, args.eval_data)
    if not process_state().is_main_process:
        return
    loss = f"{trained.train_loss:.4f}" if trained.train_loss is not None else "n/a"
    print(f"{trained.steps} steps in {trained.seconds:.0f} s, training loss {loss}: {trained.out}")


def _shift(args: argparse.Namespace) -> None:
    from personavec.cli._options import judged
    from personavec.core.vectors import load_vector
    from personavec.training.shift import measure_shift
    from personavec.traits import load_trait

    trait, judge = judged(args) if args.judge else (load_trait(args.trait), None)
    vectors = [load_vector(path, pooling=args.pooling) for path in args.vector]
    result = measure_shift(
        args.model, args.finetuned, vectors, trait, args.layer, args.dtype, args.device, judge, args.out,
        args.max_new_tokens,
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
    model_args(train, vector=False, adapter=False)
    train.add_argument("--out", required=True, help="run directory (rerun the command to resume)")
    train.add_argument("--vector", help="the persona vector the intervention uses")
    add_fields(train, TrainIntervention)
    add_fields(train, TrainConfig)
    train.add_argument("--eval-data", help="chat JSONL evaluated every logging interval (no intervention)")
    add_fields(train, DriftConfig)
    add_config(train)
    train.set_defaults(run=_train)

    shift = commands.add_parser("shift", help="finetuning shift along vectors: finetuned vs base model")
    model_args(shift, vector=False, adapter=False)
    shift.add_argument("--finetuned", required=True, help="a LoRA adapter directory or a full model")
    shift.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    shift.add_argument("--trait", required=True, help="trait whose evaluation questions are the prompts")
    shift.add_argument(
        "--judge", help="also judge the finetuned model's answers: openai:MODEL, hf:PATH, lexicon"
    )
    shift.add_argument("--base-url", help="judge endpoint (default: $OPENAI_BASE_URL or OpenAI)")
    shift.add_argument("--concurrency", type=int, default=8, help="judge requests at once (default 8)")
    shift.add_argument("--out", help="with --judge: where the answers and judgements go (resumable)")
    shift.add_argument("--max-new-tokens", type=int, default=128, help="judged answer length (default 128)")
    shift.add_argument("--layer", type=int, help="read every vector at this layer (default: each one's)")
    shift.add_argument("--json", action="store_true", help="print JSON")
    add_config(shift)
    shift.set_defaults(run=_shift)
