"""Steered vs unsteered `generate` time at batch 1 and batch 16 (same prompts, same number of tokens).

python benchmarks/steering.py            # bundled SmolLM2, CPU
python benchmarks/steering.py --gpu-7b   # 7B-shaped random model, GPU
"""

from __future__ import annotations

import torch

from personavec import steer

from _common import Figure, compare_generate, load, parser, report


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    loaded = load(args.gpu_7b)
    layer = loaded.identity.n_layers // 2
    vector = torch.randn(loaded.identity.hidden_size) * 4
    new_tokens = 64 if args.gpu_7b else 24
    ratios = compare_generate(
        loaded, lambda: steer(loaded.model, {layer: vector}, coef=1.0), new_tokens, args.repeats
    )
    print(f"model: {loaded.identity.name} on {loaded.device}, layer {layer}, {new_tokens} new tokens")
    report(
        "steering",
        [
            Figure("steered / unsteered generate time, batch 1", ratios[0], "×", "≤ 1.03"),
            Figure("steered / unsteered generate time, batch 16", ratios[1], "×", "≤ 1.03"),
        ],
        args.gpu_7b,
    )


if __name__ == "__main__":
    main()
