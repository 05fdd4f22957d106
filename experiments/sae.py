"""The SAE figure of the docs' "Understanding a vector" page: the bundled model's 'optimistic' vector on
the features of a small SAE trained here (no public SAE covers SmolLM2-135M), read through SAELens.

    python experiments/sae.py --vector RUN/optimistic.safetensors

(the vector `python experiments/screening.py --kit-only` extracts with the demo's settings). The SAE is
trained (`_sae.train_sae`) on the residual stream at the vector's chosen layer over every token of the
run's answers and of ordinary text (Python's own documentation prose, `deploy.text_loss`), saved in
SAELens' folder format under ``--sae-dir``, loaded back through SAELens and used by
`personavec vectors decompose`'s library call. Writes ``docs/generated/sae.md`` and ``sae.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _fragment import write_fragment
from _sae import save, token_activations, train_sae
from personavec.analysis.sae import decompose, load_sae, plot_decomposition
from personavec.core.models import load_model
from personavec.core.vectors import load_vector
from personavec.deploy.text_loss import ordinary_text
from personavec.runs.readers import ExtractionRun

D_SAE, STEPS, TEXT_CHUNKS = 1024, 3000, 400


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--vector", required=True, help="an extraction's vector file, inside its run")
    args.add_argument("--sae-dir", default="experiments-out/sae", help="where the trained SAE is saved")
    args.add_argument("--fragment", default="docs/generated/sae.md", help="where the figures go")
    opts = args.parse_args()
    vector = load_vector(opts.vector)
    layer = vector.resolve_layer(None)
    rows = ExtractionRun(Path(opts.vector).parent).rows()
    loaded = load_model("smollm2", dtype="float32", device="cpu")
    text = ordinary_text()
    chunks = [text[i : i + 1000] for i in range(0, len(text), len(text) // TEXT_CHUNKS)][:TEXT_CHUNKS]
    texts = [r["question"] + " " + r["answer"] for r in rows] + chunks
    activations = token_activations(loaded, texts, layer)
    sae = load_sae(save(train_sae(activations, layer, d_sae=D_SAE, steps=STEPS), Path(opts.sae_dir)))
    found = decompose(loaded, vector, sae, rows, top=8, answers=2)
    fragment = Path(opts.fragment)
    image = plot_decomposition(found, fragment.with_suffix(".png"))
    intro = (
        f"The bundled model's '{vector.trait}' vector at its chosen layer {layer} on an SAE of {D_SAE} "
        f"features trained by `experiments/sae.py` ({STEPS} steps on {len(activations)} token activations "
        f"of the run's {len(rows)} answers and {len(chunks)} pieces of ordinary text), read through SAELens."
    )
    write_fragment(fragment, "experiments/sae.py", intro, image, "SAE decomposition", [found.table()])


if __name__ == "__main__":
    main()
