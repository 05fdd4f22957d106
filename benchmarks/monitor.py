"""Live monitor overhead: `generate` watched by LiveMonitor (3 vectors at 3 layers) vs plain `generate`.

python benchmarks/monitor.py            # bundled SmolLM2, CPU
python benchmarks/monitor.py --gpu-7b   # 7B-shaped random model, GPU
"""

from __future__ import annotations

import torch

from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import LiveMonitor

from _common import Figure, compare_generate, load, parser, report


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    loaded = load(args.gpu_7b)
    n = loaded.identity.n_layers
    shape = (n + 1, loaded.identity.hidden_size)
    vectors = [
        PersonaVector(f"t{i}", torch.randn(shape), layer=layer)
        for i, layer in enumerate((n // 3, n // 2, 2 * n // 3))
    ]
    new_tokens = 64 if args.gpu_7b else 24
    ratios = compare_generate(loaded, lambda: LiveMonitor(loaded.model, vectors), new_tokens, args.repeats)
    print(
        f"model: {loaded.identity.name} on {loaded.device}, {len(vectors)} vectors, {new_tokens} new tokens"
    )
    report(
        "monitor",
        [
            Figure("monitored (3 vectors) / plain generate time, batch 1", ratios[0], "×", "≤ 1.05"),
            Figure("monitored (3 vectors) / plain generate time, batch 16", ratios[1], "×", "≤ 1.05"),
        ],
        args.gpu_7b,
    )


if __name__ == "__main__":
    main()
