"""``personavec demo``: the offline demo on the bundled SmolLM2."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from personavec.cli._options import add_config, force_arg, out_arg


def _demo(args: argparse.Namespace) -> None:
    from personavec.demo import run_demo, summary

    print(summary(run_demo(Path(args.out), model_ref=args.model, force=args.force)))


def add(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="offline demo on the bundled SmolLM2: extract 'optimistic' with a lexicon judge, steer"
    )
    out_arg(demo, "run directory (default: demo-out)", required=False, default="demo-out")
    demo.add_argument("--model", default="smollm2", help="model to run it on (default: the bundled smollm2)")
    force_arg(demo)
    add_config(demo)
    demo.set_defaults(run=_demo)
