"""``personavec vectors``: show, compare, export, import and negate vector files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from personavec.cli._options import json_arg, model_args, model_ref, pooling_arg, print_json, trait_arg
from personavec.core.units import COEF_UNITS, UNITS_HELP


def _show(args: argparse.Namespace) -> None:
    from personavec.core.vectors import load_vectors

    vectors = load_vectors(args.file)
    summary = {
        pooling: {
            **v.header(),
            "shape": list(v.tensor.shape),
            "norms": [round(float(n), 4) for n in v.tensor.norm(dim=1)],
        }
        for pooling, v in vectors.items()
    }
    if args.json:
        print_json(summary)
        return
    for pooling, info in summary.items():
        model = info["metadata"].get("model") or {}
        norms = info["norms"]
        peak = max(range(len(norms)), key=norms.__getitem__)
        print(f"{info['trait']} [{pooling}] shape {info['shape']}, chosen layer {info['layer']}")
        print(
            f"  model: {model.get('name', '?')} ({model.get('n_layers', '?')} blocks, "
            f"hidden {model.get('hidden_size', '?')})"
        )
        print(f"  norm per layer: largest {norms[peak]} at layer {peak}; layer 0..L: {norms}")


def _export_gguf(args: argparse.Namespace) -> None:
    from personavec.core.vectors import export_gguf, load_vector

    vector = load_vector(args.file, pooling=args.pooling)
    written = export_gguf(vector, args.out, layers=args.layer, coef=args.coef, units=args.coef_units)
    names = ", ".join(f"direction.{n}" for n in written)
    print(f"wrote {args.out}: {names} (llama.cpp: --control-vector {args.out})")


def _import_pt(args: argparse.Namespace) -> None:
    from personavec.core.models import model_identity
    from personavec.core.vectors import import_official_pt, save_vectors

    vector = import_official_pt(args.file, args.trait, model_identity(args.model), pooling=args.pooling)
    save_vectors(args.out, [vector])
    print(
        f"wrote {args.out}: {args.trait} [{args.pooling}], "
        f"{vector.n_layers + 1} layers × {vector.hidden_size}"
    )


def _compare(args: argparse.Namespace) -> None:
    from personavec.analysis.geometry import SPAN, compare, plot
    from personavec.core.vectors import load_vector

    vectors = [load_vector(path, pooling=args.pooling) for path in args.files]
    labels = [v.trait for v in vectors]
    if len(set(labels)) < len(labels):  # the same trait twice (two runs, two poolings): name the files
        labels = [f"{v.trait} ({Path(path).stem})" for v, path in zip(vectors, args.files, strict=True)]
    geometry = compare(vectors, labels)
    if args.plot:
        plot(geometry, args.plot, args.layer)
    if args.json:
        print_json(geometry.to_dict())
        return
    print(geometry.table(args.layer))
    for i, (label, chosen) in enumerate(zip(geometry.labels, geometry.chosen, strict=True)):
        if chosen is not None:
            low, high = geometry.span(i, chosen)
            print(f"{label}: layers {low}..{high} keep a cosine ≥ {SPAN} with its chosen layer {chosen}")
    if args.plot:
        print(f"wrote {args.plot}")


def _decompose(args: argparse.Namespace) -> None:
    from personavec.analysis.sae import decompose_file, plot_decomposition

    found = decompose_file(
        model_ref(args), args.file, args.sae, args.pooling, args.layer, args.top, args.answers
    )
    if args.plot:
        plot_decomposition(found, args.plot)
    if args.json:
        print_json(found.to_dict())
        return
    print(found.table())
    if args.plot:
        print(f"wrote {args.plot}")


def _negate(args: argparse.Namespace) -> None:
    from personavec.core.vectors import load_vectors, save_vectors
    from personavec.traits.spec import check_name

    vectors = load_vectors(args.file)
    save_vectors(args.out, [v.negated(check_name(args.trait)) for v in vectors.values()])
    print(f"wrote {args.out}: {args.trait} = −{next(iter(vectors.values())).trait} ({', '.join(vectors)})")


def add(commands: Any) -> None:
    vectors = commands.add_parser("vectors", help="show, export and import persona vectors").add_subparsers(
        dest="vectors_command", required=True, metavar="SUBCOMMAND"
    )
    show = vectors.add_parser("show", help="what a vector file holds")
    show.add_argument("file")
    json_arg(show)
    show.set_defaults(run=_show)

    export = vectors.add_parser("export-gguf", help="write a llama.cpp control vector")
    export.add_argument("file")
    export.add_argument("out")
    pooling_arg(export)
    # the conversions' options are `export_gguf`'s arguments, for a one-off command: no config dataclass
    export.add_argument(
        "--layer",
        type=int,
        action="append",
        help="personavec layer to export (repeatable; default: the vector's chosen layer)",
    )
    export.add_argument("--coef", type=float, default=1.0, help="scale baked into the file (default 1)")
    export.add_argument("--coef-units", choices=COEF_UNITS, default="raw", help=UNITS_HELP)
    export.set_defaults(run=_export_gguf)

    imp = vectors.add_parser("import-pt", help="import a vector written by the paper's official code")
    imp.add_argument("file", help=".pt file holding a [L+1, hidden] tensor")
    imp.add_argument("out", help="output .safetensors")
    imp.add_argument("--model", required=True, help="the model it was extracted from (checks the shape)")
    trait_arg(imp, "the trait it was extracted for")
    pooling_arg(imp, "pooling it was made with")
    imp.set_defaults(run=_import_pt)

    compare = vectors.add_parser("compare", help="cosine similarity between vectors and across layers")
    compare.add_argument("files", nargs="+", help="vector files of one model")
    pooling_arg(compare)
    compare.add_argument("--layer", type=int, help="layer of the table (default: the first chosen layer)")
    compare.add_argument("--plot", help="write the heat maps to this PNG")
    json_arg(compare)
    compare.set_defaults(run=_compare)

    decompose = vectors.add_parser("decompose", help="the vector on a sparse autoencoder's features")
    decompose.add_argument("file", help="a vector file inside its extraction run directory")
    decompose.add_argument("--sae", required=True, help="an SAE folder in SAELens' format (cfg.json, …)")
    model_args(decompose, vector=False, backend=False)
    decompose.add_argument("--layer", type=int, help="the SAE's layer (default: from its hook name)")
    decompose.add_argument("--top", type=int, default=10, help="features listed per ranking (default 10)")
    decompose.add_argument("--answers", type=int, default=3, help="answers shown per feature (default 3)")
    decompose.add_argument("--plot", help="write the two rankings' bar charts to this PNG")
    json_arg(decompose)
    decompose.set_defaults(run=_decompose)

    negate = vectors.add_parser("negate", help="write −v as the opposite trait (e.g. pessimistic)")
    negate.add_argument("file")
    negate.add_argument("out", help="output .safetensors")
    trait_arg(negate, "name of the opposite trait")
    negate.set_defaults(run=_negate)
