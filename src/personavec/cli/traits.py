"""``personavec traits``: the built-in traits, and checking and writing trait files."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from personavec.cli._options import endpoint_args, force_arg, out_arg, print_json
from personavec.errors import ConfigError


def _list(args: argparse.Namespace) -> None:
    from personavec.traits import builtin_names, load_trait

    for name in builtin_names():
        print(f"{name:>14}: {load_trait(name).description}")


def _show(args: argparse.Namespace) -> None:
    from personavec.traits import load_trait

    print_json(load_trait(args.trait).to_dict())


def _validate(args: argparse.Namespace) -> None:
    from personavec.traits import validate_trait_file

    for path in args.files:
        spec = validate_trait_file(path)
        print(f"{path}: valid trait {spec.name!r}")


def _generate(args: argparse.Namespace) -> None:
    from personavec.traits.author import author_trait, chat_backend, write_trait

    out = Path(args.out or f"{args.name}.json")
    if out.exists() and not args.force:  # before paying for the model
        raise ConfigError(f"{out} exists; pass --force to overwrite it or choose another --out")
    trait = author_trait(args.name, args.description, chat_backend(args.backend, args.base_url))
    if args.sentiment:
        trait = replace(trait, sentiment=args.sentiment)
    write_trait(trait, out, force=args.force)
    print(f"wrote {out}: trait {trait.name!r} (check it, then: personavec extract --trait {out} ...)")


def add(commands: Any) -> None:
    traits = commands.add_parser("traits", help="built-in and custom trait files").add_subparsers(
        dest="traits_command", required=True, metavar="SUBCOMMAND"
    )
    traits.add_parser("list", help="the built-in traits").set_defaults(run=_list)
    show = traits.add_parser("show", help="print a trait file (built-in name or path)")
    show.add_argument("trait")
    show.set_defaults(run=_show)
    validate = traits.add_parser("validate", help="check trait files: fields, counts, overlap, rubric")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(run=_validate)

    generate = traits.add_parser("generate", help="write a new trait file with a chat model")
    generate.add_argument("name", help="trait name (a lowercase slug)")
    generate.add_argument("description", help="one sentence saying what the trait is")
    generate.add_argument("--backend", required=True, help="openai:MODEL or hf:PATH")
    endpoint_args(
        generate, concurrency=False, help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL or OpenAI)"
    )
    generate.add_argument("--sentiment", choices=("positive", "negative"), help="mark it lexicon-judgeable")
    out_arg(generate, "trait file to write (default: NAME.json)", required=False)
    force_arg(generate, "overwrite an existing file")
    generate.set_defaults(run=_generate)
