"""Steered vs unsteered `generate` time at batch 1 and batch 16 (same prompts, same number of tokens).

python benchmarks/steering.py            # bundled SmolLM2, CPU
python benchmarks/steering.py --gpu-7b   # 7B-shaped random model, GPU
"""

from __future__ import annotations

import torch

from personavec import steer

from _common import best_time, load, parser


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    loaded = load(args.gpu_7b)
    model, tok = loaded.model, loaded.tokenizer
    layer = loaded.identity.n_layers // 2
    vector = torch.randn(loaded.identity.hidden_size) * 4
    new_tokens = 64 if args.gpu_7b else 24
    ratios = []
    for batch_size in (1, 16):
        prompts = [loaded.chat(f"Tell me a story about the number {i}.") for i in range(batch_size)]
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)

        def run(batch=batch) -> None:
            with torch.inference_mode():
                model.generate(
                    **batch,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )

        def steered(run=run) -> None:
            with steer(model, {layer: vector}, coef=1.0):
                run()

        # interleave the two so that machine noise hits both alike
        plain_t, steer_t = [], []
        for _ in range(args.repeats):
            plain_t.append(best_time(run, 1))
            steer_t.append(best_time(steered, 1))
        ratio = min(steer_t) / min(plain_t)
        ratios.append(ratio)
        tokens = batch_size * new_tokens
        print(
            f"batch {batch_size:2d}: unsteered {tokens / min(plain_t):8.1f} tok/s, "
            f"steered {tokens / min(steer_t):8.1f} tok/s, ratio {ratio:.3f}"
        )
    print(f"model: {loaded.identity.name} on {loaded.device}, layer {layer}, {new_tokens} new tokens")
    print(f"steered/unsteered: {max(ratios):.2f}")


if __name__ == "__main__":
    main()
