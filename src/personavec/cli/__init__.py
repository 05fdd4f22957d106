"""The `personavec` command line: a thin shell over the library.

One module per command group; each handler parses, makes one library call and prints. Flags of the
long-running commands come from the config dataclasses' fields (`_options`), and those commands read
``--config FILE`` (JSON or YAML), the command line winning. The flags written by hand name what a
command runs on and writes (files, model, vector, judge, output format), which no config holds; the
shared ones are in `_options`. Building the parser imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from personavec.cli import data, demo, deploy, evaluate, extract, models, serve, training, traits, vectors
from personavec.cli._options import Parser, as_flags
from personavec.errors import PersonavecError
from personavec.version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="personavec", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"personavec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (demo, models, traits, extract, evaluate, deploy, serve, data, training, vectors):
        group.add(commands)
    return parser


def _warning_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """The library warns through `warnings`; the command line shows each as one line."""
    return f"personavec: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _warning_line
    args = None
    try:
        args = build_parser().parse_args(argv)  # reads --config FILE: its errors are a user's too
        run: Callable[[argparse.Namespace], None] = args.run
        run(args)
    except PersonavecError as exc:
        print(f"personavec: error: {as_flags(exc, args)}", file=sys.stderr)  # the fields it names as flags
        return 2
    except OSError as exc:  # an unwritable output path, a full disk, ...
        print(f"personavec: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("personavec: interrupted", file=sys.stderr)
        return 130
    return 0
