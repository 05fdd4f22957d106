"""``personavec serve``: an OpenAI-compatible server that measures every answer's persona."""

from __future__ import annotations

import argparse
from typing import Any

from personavec.cli._options import add_config, add_fields, from_args, model_args, vllm_settings
from personavec.deploy.config import STATISTICS
from personavec.serve.config import ServeConfig


def _named(text: str) -> tuple[str, str]:
    """``NAME=FILE`` → (name, file)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, path


def _steer(text: str) -> tuple[str, float]:
    """``NAME=COEF`` → (name, coef)."""
    name, sep, coef = text.partition("=")
    try:
        if sep and name:
            return name, float(coef)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected NAME=COEF, got {text!r}")


def _threshold(text: str) -> tuple[str, str, float]:
    """``NAME.STATISTIC=VALUE`` → (name, statistic, value)."""
    key, sep, value = text.partition("=")
    name, dot, statistic = key.rpartition(".")
    try:
        if sep and dot and statistic in STATISTICS:
            return name, statistic, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"expected NAME.STATISTIC=VALUE with STATISTIC one of {', '.join(STATISTICS)}, got {text!r}"
    )


def _serve(args: argparse.Namespace) -> None:
    from personavec.serve.run import serve

    config = from_args(
        ServeConfig, args, vectors=tuple(args.vector), thresholds=tuple(args.threshold),
        steer=tuple(args.steer),
    )  # fmt: skip
    serve(config, args.model, args.adapter, args.dtype, args.device, vllm_settings(args))


def add(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible server reporting each answer's persona (pip install 'personavec[serve]')",
    )
    model_args(serve, vector=False, pooling=False)
    serve.add_argument(
        "--vector", type=_named, action="append", required=True, metavar="NAME=FILE",
        help="a vector to measure (repeatable), read at its chosen layer",
    )  # fmt: skip
    serve.add_argument(
        "--threshold", type=_threshold, action="append", default=[], metavar="NAME.STATISTIC=VALUE",
        help="a fixed threshold (repeatable; prompt_last or response_avg); the rest are calibrated",
    )  # fmt: skip
    serve.add_argument(
        "--steer", type=_steer, action="append", default=[], metavar="NAME=COEF",
        help="steer every request by COEF × the vector (repeatable; a request's own steer list wins)",
    )  # fmt: skip
    add_fields(serve, ServeConfig)
    add_config(serve)
    serve.set_defaults(run=_serve)
