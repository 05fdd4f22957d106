"""The `personavec` command line: a thin shell over the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from personavec.errors import PersonavecError
from personavec.version import __version__


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _models_inspect(args: argparse.Namespace) -> None:
    from personavec.models import inspect_model

    info = inspect_model(args.model, blocks=args.blocks)
    if args.json:
        _print_json(info)
        return
    for key, value in info.items():
        print(f"{key:>18}: {value}")


def _vectors_show(args: argparse.Namespace) -> None:
    from personavec.vectors import load_vectors

    vectors = load_vectors(args.file)
    summary = {
        kind: {
            **v.header(),
            "shape": list(v.tensor.shape),
            "norms": [round(float(n), 4) for n in v.tensor.norm(dim=1)],
        }
        for kind, v in vectors.items()
    }
    if args.json:
        _print_json(summary)
        return
    for kind, info in summary.items():
        model = info["metadata"].get("model") or {}
        norms = info["norms"]
        peak = max(range(len(norms)), key=norms.__getitem__)
        print(f"{info['trait']} [{kind}] shape {info['shape']}, chosen layer {info['layer']}")
        print(
            f"  model: {model.get('name', '?')} ({model.get('n_layers', '?')} blocks, "
            f"hidden {model.get('hidden_size', '?')})"
        )
        print(f"  norm per layer: largest {norms[peak]} at layer {peak}; layer 0..L: {norms}")


def _vectors_export_gguf(args: argparse.Namespace) -> None:
    from personavec.vectors import export_gguf, load_vector

    vector = load_vector(args.file, kind=args.kind)
    written = export_gguf(vector, args.out, layers=args.layer, coef=args.coef)
    names = ", ".join(f"direction.{n}" for n in written)
    print(f"wrote {args.out}: {names} (llama.cpp: --control-vector {args.out})")


def _vectors_import_pt(args: argparse.Namespace) -> None:
    from personavec.models import model_identity
    from personavec.vectors import import_official_pt, save_vectors

    vector = import_official_pt(args.file, args.trait, model_identity(args.model), kind=args.kind)
    save_vectors(args.out, [vector])
    print(
        f"wrote {args.out}: {args.trait} [{args.kind}], {vector.n_layers + 1} layers × {vector.hidden_size}"
    )


def _traits_list(args: argparse.Namespace) -> None:
    from personavec.traits import builtin_names, load_trait

    for name in builtin_names():
        print(f"{name:>14}: {load_trait(name).description}")


def _traits_show(args: argparse.Namespace) -> None:
    from personavec.traits import load_trait

    _print_json(load_trait(args.trait).to_dict())


def _traits_validate(args: argparse.Namespace) -> None:
    from personavec.traits import validate_trait_file

    for path in args.files:
        spec = validate_trait_file(path)
        print(f"{path}: valid trait {spec.name!r}")


def _demo(args: argparse.Namespace) -> None:
    from personavec.demo import run_demo

    run_demo(Path(args.out), model_ref=args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="personavec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"personavec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="offline demo on the bundled SmolLM2: capture, build a vector, steer"
    )
    demo.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    demo.add_argument("--model", default="smollm2", help="model to run it on (default: the bundled smollm2)")
    demo.set_defaults(run=_demo)

    models = commands.add_parser("models", help="inspect models").add_subparsers(
        dest="models_command", required=True, metavar="SUBCOMMAND"
    )
    inspect = models.add_parser(
        "inspect",
        help="blocks, hidden size, architecture, chat template (reads the config; loads no weights)",
    )
    inspect.add_argument("model", help="hub id, local directory, .gguf file or 'smollm2'")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--blocks", help="module path of the decoder blocks, for unknown architectures")
    inspect.set_defaults(run=_models_inspect)

    traits = commands.add_parser("traits", help="built-in and custom trait files").add_subparsers(
        dest="traits_command", required=True, metavar="SUBCOMMAND"
    )
    traits.add_parser("list", help="the built-in traits").set_defaults(run=_traits_list)
    show_trait = traits.add_parser("show", help="print a trait file (built-in name or path)")
    show_trait.add_argument("trait")
    show_trait.set_defaults(run=_traits_show)
    validate = traits.add_parser("validate", help="check trait files: fields, counts, overlap, rubric")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(run=_traits_validate)

    vectors = commands.add_parser("vectors", help="show, export and import persona vectors").add_subparsers(
        dest="vectors_command", required=True, metavar="SUBCOMMAND"
    )
    show = vectors.add_parser("show", help="what a vector file holds")
    show.add_argument("file")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_vectors_show)

    export = vectors.add_parser("export-gguf", help="write a llama.cpp control vector")
    export.add_argument("file")
    export.add_argument("out")
    export.add_argument(
        "--kind", default="response-avg", help="which vector of the file (default response-avg)"
    )
    export.add_argument(
        "--layer",
        type=int,
        action="append",
        help="personavec layer to export (repeatable; default: the vector's chosen layer)",
    )
    export.add_argument("--coef", type=float, default=1.0, help="scale baked into the file (default 1)")
    export.set_defaults(run=_vectors_export_gguf)

    imp = vectors.add_parser("import-pt", help="import a vector written by the paper's official code")
    imp.add_argument("file", help=".pt file holding a [L+1, hidden] tensor")
    imp.add_argument("out", help="output .safetensors")
    imp.add_argument("--model", required=True, help="the model it was extracted from (checks the shape)")
    imp.add_argument("--trait", required=True)
    imp.add_argument("--kind", default="response-avg", help="pooling it was made with (default response-avg)")
    imp.set_defaults(run=_vectors_import_pt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except PersonavecError as exc:
        print(f"personavec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable output path, a full disk, ...
        print(f"personavec: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("personavec: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
