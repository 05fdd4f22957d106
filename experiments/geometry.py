"""The figure of the docs' "Understanding a vector" page: how the three poolings of the bundled model's
'optimistic' vector relate, and how each one's direction turns across the layers.

    python experiments/geometry.py --vector RUN/optimistic.safetensors

(the vector `python experiments/screening.py --kit-only` extracts with the demo's settings). Writes
``docs/generated/geometry.md`` and ``docs/generated/geometry.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _fragment import write_fragment
from personavec.analysis.geometry import compare, plot
from personavec.core.vectors import load_vectors


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--vector", required=True, help="an extraction's vector file (every pooling)")
    args.add_argument("--fragment", default="docs/generated/geometry.md", help="where the figures go")
    opts = args.parse_args()
    vectors = load_vectors(opts.vector)
    geometry = compare(list(vectors.values()), [f"{v.trait} {pooling}" for pooling, v in vectors.items()])
    fragment = Path(opts.fragment)
    image = plot(geometry, fragment.with_suffix(".png"))
    layer = geometry.default_layer()
    intro = (
        f"The bundled model's '{geometry.labels[0].split()[0]}' vector, its three poolings, extracted with "
        f"the demo's settings (chosen layer {layer}; `{Path(opts.vector).name}`)."
    )
    spans = [
        f"{label}: layers {low}..{high} keep a cosine ≥ 0.9 with layer {layer}"
        for label, (low, high) in ((g, geometry.span(i, layer)) for i, g in enumerate(geometry.labels))
    ]
    write_fragment(
        fragment, "experiments/geometry.py", intro, image, "vector geometry", [geometry.table(layer), *spans]
    )


if __name__ == "__main__":
    main()
