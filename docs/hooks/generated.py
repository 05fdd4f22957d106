"""MkDocs hook: the pages generated at build time.

- ``cli.md``: the command-line reference, from ``personavec.cli.build_parser()`` (so it cannot drift
  from the commands), in place of the marker ``<!-- cli-reference -->``;
- ``benchmarks.md``: one table per benchmark from ``benchmarks/results/*.json`` (written by the
  benchmark scripts), a column per machine, in place of ``<!-- benchmark-results -->``;
- ``architecture.md``: the package map (each module's line count and the first line of its docstring)
  in place of ``<!-- package-map -->``;
- ``api/*.md``: the top-level names (``personavec._EXPORTS``) in place of ``<!-- exports -->``, and a
  mkdocstrings block per public module under the dotted prefixes of ``<!-- api: PREFIX ... -->``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PACKAGE = ROOT / "src" / "personavec"
CLI_MARKER = "<!-- cli-reference -->"
BENCH_MARKER = "<!-- benchmark-results -->"
MAP_MARKER = "<!-- package-map -->"
EXPORTS_MARKER = "<!-- exports -->"
MODULES_MARKER = re.compile(r"<!-- api: ([\w. ]+) -->")
NOT_API = ("personavec.cli", "personavec.version")  # the CLI has its own page; the version is one string


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Fill the generated parts of the CLI reference and the benchmarks page."""
    if sys.path[0] != str(PACKAGE.parent):  # this checkout's personavec, as mkdocstrings reads it
        sys.path.insert(0, str(PACKAGE.parent))
    if CLI_MARKER in markdown:
        from personavec.cli import build_parser

        os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: the same on every machine
        markdown = markdown.replace(CLI_MARKER, cli_reference(build_parser()))
    if BENCH_MARKER in markdown:
        markdown = markdown.replace(BENCH_MARKER, benchmark_tables(load_results(RESULTS)))
    if MAP_MARKER in markdown:
        markdown = markdown.replace(MAP_MARKER, package_map(PACKAGE))
    if EXPORTS_MARKER in markdown:
        markdown = markdown.replace(EXPORTS_MARKER, exports_table())
    markdown = MODULES_MARKER.sub(lambda m: api_modules(PACKAGE, m[1].split()), markdown)
    return markdown


# --- the package map and the top-level names ----------------------------------------------------


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def package_map(root: Path) -> str:
    """A text tree of the package: every module with its line count and docstring summary."""
    lines = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if path.name == "__init__.py":
            rel = rel.parent
            if not _summary(path):
                lines.append(f"{rel.as_posix() + '/':<42}")
                continue
        n = len(path.read_text(encoding="utf-8").splitlines())
        lines.append(
            f"{rel.as_posix() + ('/' if path.name == '__init__.py' else ''):<42}{n:>5}  {_summary(path)}"
        )
    return "```text\n" + "\n".join(line.rstrip() for line in lines) + "\n```\n"


def public_modules(root: Path) -> list[str]:
    """Dotted names of the modules without a private part, outside `NOT_API`, with a docstring."""
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        name = ".".join(parts)
        if any(p.startswith("_") for p in parts) or name == "personavec" or name.startswith(NOT_API):
            continue
        if path.name != "__init__.py" or _summary(path):
            names.append(name)
    return names


def covered(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def api_modules(root: Path, prefixes: list[str]) -> str:
    """A mkdocstrings block per public module under `prefixes`, each module a section."""
    names = [name for name in public_modules(root) if covered(name, prefixes)]
    return "\n".join(f"::: {name}\n    options:\n      heading_level: 2\n" for name in names)


def exports_table() -> str:
    """The names ``import personavec`` offers, each linked to its reference entry."""
    from personavec import _EXPORTS

    rows = [f"| [`personavec.{name}`][{module}.{name}] | `{module}` |" for name, module in _EXPORTS.items()]
    return "| name | defined in |\n|---|---|\n" + "\n".join(rows) + "\n"


# --- the command line ---------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name, "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _options_table(parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(f"`{o}`" for o in action.option_strings)
        else:
            name = f"`{action.metavar or action.dest}`"
        if action.nargs != 0 and action.option_strings:
            metavar = formatter._format_args(action, action.dest.upper())
            name += f" `{metavar}`"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
        help_text = formatter._expand_help(action) if action.help else ""
        if action.required and action.option_strings:
            help_text = f"**required.** {help_text}"
        rows.append(f"| {_cell(name)} | {_cell(shown)} | {_cell(help_text)} |")
    if not rows:
        return ""
    return "| argument | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def cli_reference(parser: argparse.ArgumentParser, prefix: str = "personavec", depth: int = 2) -> str:
    """Markdown for every command under ``parser``: usage, description, options (recursively)."""
    parts = []
    for name, sub, help_text in _subcommands(parser):
        command = f"{prefix} {name}"
        parts.append(f"{'#' * depth} `{command}`\n")
        if help_text:
            parts.append(f"{help_text[0].upper()}{help_text[1:].rstrip('.')}.\n")
        if sub.description and sub.description != help_text:
            parts.append(f"{sub.description}\n")
        children = list(_subcommands(sub))
        if children:
            parts.append(cli_reference(sub, command, min(depth + 1, 4)))
            continue
        usage = sub.format_usage().removeprefix("usage: ").strip()
        parts.append(f"```text\n{usage}\n```\n")
        parts.append(_options_table(sub))
    return "\n".join(parts)


# --- benchmarks ---------------------------------------------------------------------------------


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every result record under ``folder``: a file holds one record or a list of them."""
    records: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for record in data if isinstance(data, list) else [data]:
            records.append({**record, "file": path.relative_to(ROOT).as_posix()})
    return records


def _value(figure: dict[str, Any]) -> str:
    value = figure["value"]
    text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    unit = figure.get("unit") or ""
    return f"{text} {unit}".strip() + (" ✗" if figure.get("met") is False else "")


def benchmark_tables(records: list[dict[str, Any]]) -> str:
    """One section per benchmark: a row per figure, a column per machine, then the target."""
    if not records:
        return "*No results files yet: run `make bench`.*\n"
    by_benchmark: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_benchmark.setdefault(record["benchmark"], []).append(record)
    parts = []
    for benchmark, runs in by_benchmark.items():
        runs.sort(key=lambda r: (not r["machine"].startswith("cpu"), r["machine"]))
        machines = list(dict.fromkeys(r["machine"] for r in runs))
        names = list(dict.fromkeys(f["name"] for r in runs for f in r["figures"]))
        cells: dict[tuple[str, str], str] = {}
        targets: dict[str, str] = {}
        for run in runs:
            for figure in run["figures"]:
                cells[(figure["name"], run["machine"])] = _value(figure)
                if figure.get("target"):
                    targets[figure["name"]] = figure["target"]
        parts.append(f"## {benchmark}\n")
        parts.append(
            "\n".join(f"- {r['machine']}, {r['date']}: `{r['command']}` (`{r['file']}`)" for r in runs) + "\n"
        )
        header = "| figure | " + " | ".join(machines) + " | target |"
        rule = "|---|" + "---|" * len(machines) + "---|"
        rows = [
            f"| {_cell(name)} | "
            + " | ".join(cells.get((name, m), "") for m in machines)
            + f" | {_cell(targets.get(name, ''))} |"
            for name in names
        ]
        parts.append("\n".join([header, rule, *rows]) + "\n")
    return "\n".join(parts)
