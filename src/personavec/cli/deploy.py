"""``personavec steer`` and ``monitor``: a vector at work on a model's answers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from personavec.cli._options import add_fields, from_args, load, model_and_vector, model_args
from personavec.deploy.config import MonitorConfig, SteerConfig
from personavec.errors import ConfigError


def _steering(spec: str) -> tuple[str, float, int | None]:
    """``FILE:COEF[:LAYER]`` → (file, coef, layer or None for the vector's chosen layer)."""
    parts = spec.rsplit(":", 2) if spec.count(":") >= 2 else spec.rsplit(":", 1)
    try:
        if len(parts) == 3:
            return parts[0], float(parts[1]), int(parts[2])
        return parts[0], float(parts[1]), None
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected FILE:COEF or FILE:COEF:LAYER, got {spec!r}") from None


def _steer(args: argparse.Namespace) -> None:
    from personavec.core.vectors import load_vector
    from personavec.deploy.steering import Steering, chat, steer_answers

    config = from_args(SteerConfig, args)
    if not args.prompt and not args.chat:
        raise ConfigError("nothing to answer: give --prompt TEXT (repeatable) or --chat")
    steerings = [
        Steering(load_vector(f, pooling=args.pooling), coef, layer, config.coef_units)
        for f, coef, layer in args.vector
    ]
    if args.chat:
        chat(load(args), steerings, sys.stdin, args.system, config)
        return
    answers = steer_answers(load(args), args.prompt, steerings, args.system, config)
    for guard in answers.guards:
        print(f"guard at layer {guard.layer}: steered {guard.steered} of {guard.seen} answers")
    plain: list[str | None] = [*answers.unsteered] if answers.unsteered else [None] * len(answers.prompts)
    for question, answer, baseline in zip(answers.prompts, answers.steered, plain, strict=True):
        print(f"Q: {question}\nsteered: {answer}")
        if baseline is not None:
            print(f"unsteered: {baseline}")


def _monitor(args: argparse.Namespace) -> None:
    from personavec.deploy.monitor import monitor_generation

    config = from_args(MonitorConfig, args)
    model, vector = model_and_vector(args)
    watched = monitor_generation(model, vector, args.prompt, args.system, config.layer, config.sampling)
    print(
        f"projection onto {watched.trait} at layer {watched.layer} of the residual that produced each token:"
    )
    for token, value in zip(watched.tokens, watched.projections, strict=True):
        print(f"{value:+8.2f}  {token!r}")


def add(commands: Any) -> None:
    steer = commands.add_parser("steer", help="answer prompts with one or more vectors added")
    model_args(steer, vector=False)
    # the vectors and the messages are this command's input, not settings: hand-written, not in SteerConfig
    steer.add_argument(
        "--vector", type=_steering, action="append", required=True, help="FILE:COEF[:LAYER] (repeatable)"
    )
    steer.add_argument("--prompt", action="append", default=[], help="a user message (repeatable)")
    steer.add_argument("--system", help="a system prompt for every message")
    steer.add_argument("--chat", action="store_true", help="a conversation on standard input instead")
    add_fields(steer, SteerConfig)
    steer.set_defaults(run=_steer)

    monitor = commands.add_parser("monitor", help="generate and print each token's projection onto a vector")
    model_args(monitor)
    monitor.add_argument("--prompt", required=True)  # the input watched, not a setting (as steer's)
    monitor.add_argument("--system")
    add_fields(monitor, MonitorConfig)
    monitor.set_defaults(run=_monitor)
