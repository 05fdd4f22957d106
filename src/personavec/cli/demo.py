"""``personavec demo``: the offline demo on the bundled SmolLM2."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from personavec.cli._options import add_config


def _demo(args: argparse.Namespace) -> None:
    from personavec.demo import run_demo, summary

    print(summary(run_demo(Path(args.out), model_ref=args.model, force=args.force)))


def add(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="offline demo on the bundled SmolLM2: extract 'optimistic' with a lexicon judge, steer"
    )
    demo.add_argument("--out", default="demo-out", help="run directory (default: demo-out)")
    demo.add_argument("--model", default="smollm2", help="model to run it on (default: the bundled smollm2)")
    demo.add_argument("--force", action="store_true", help="start over a run directory made otherwise")
    add_config(demo)
    demo.set_defaults(run=_demo)
