"""``personavec models``: what a model is, read from its config."""

from __future__ import annotations

import argparse
from typing import Any

from personavec.cli._options import MODEL_HELP, json_arg, print_json


def _inspect(args: argparse.Namespace) -> None:
    from personavec.core.models import inspect_model

    info = inspect_model(args.model, blocks=args.blocks)
    if args.json:
        print_json(info)
        return
    for key, value in info.items():
        print(f"{key:>18}: {value}")


def add(commands: Any) -> None:
    models = commands.add_parser("models", help="inspect models").add_subparsers(
        dest="models_command", required=True, metavar="SUBCOMMAND"
    )
    inspect = models.add_parser(
        "inspect",
        help="blocks, hidden size, architecture, chat template (reads the config; loads no weights)",
    )
    inspect.add_argument("model", help=MODEL_HELP)
    json_arg(inspect)
    inspect.add_argument("--blocks", help="module path of the decoder blocks, for unknown architectures")
    inspect.set_defaults(run=_inspect)
