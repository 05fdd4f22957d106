"""The command line's contract: every command, option and default of the release before the redesign stays
(options may be added, none removed or changed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from personavec.cli import build_parser

BEFORE = json.loads((Path(__file__).parent / "fixtures" / "cli_options.json").read_text())
SKIPPED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _options(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """Each leaf command's options as the fixture records them (made by the same walk)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(path)] = {
                (" ".join(a.option_strings) or a.dest): {
                    "action": type(a).__name__,
                    "required": bool(a.required),
                    "choices": list(a.choices) if a.choices else None,
                    "nargs": a.nargs,
                    "default": json.loads(json.dumps(a.default, default=repr)),
                }
                for a in p._actions
                if not isinstance(a, SKIPPED)
            }
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*path, name])

    walk(parser, [])
    return found


def test_every_command_and_option_of_the_release_stays() -> None:
    now = _options(build_parser())
    assert set(BEFORE) <= set(now), sorted(set(BEFORE) - set(now))  # commands may be added, none removed
    for command, options in BEFORE.items():
        assert set(options) <= set(now[command]), (command, sorted(set(options) - set(now[command])))
        for flag, old in options.items():
            new = now[command][flag]
            for key in ("action", "required", "choices", "nargs"):
                assert new[key] == old[key], (command, flag, key)
            # a default the release wrote must stay; one it left to the library may now be spelled out
            if old["default"] is not None:
                assert new["default"] == old["default"], (command, flag)


LONG_RUNNING = (
    "extract", "sweep", "calibrate", "screen", "data make-trait-dataset", "train", "shift",
    "eval capability", "demo", "serve",
)  # fmt: skip


def test_every_long_running_command_reads_a_config_file() -> None:
    now = _options(build_parser())
    for command in LONG_RUNNING:
        assert now[command]["--config"]["action"] == "_StoreAction", command
