"""Answer generation: batched (length-bucketed) vs one prompt at a time, same prompts, greedy.

python benchmarks/generate.py            # bundled SmolLM2, CPU: 16 prompts × up to 48 new tokens
python benchmarks/generate.py --gpu-7b   # 7B-shaped random model, GPU: batch 128 × 128 new tokens,
                                         # also as a fraction of the decode floor (weight bytes / bandwidth)
"""

from __future__ import annotations

import time

import torch

from personavec.core.generate import generate
from personavec.core.sampling import Sampling
from personavec.traits import load_trait

from _common import Figure, load, parser, report


def bandwidth_bytes_per_s() -> float:
    """Device memory bandwidth measured by copying 2 GiB (read + write)."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * 10 * a.numel() / (time.perf_counter() - start)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    loaded = load(args.gpu_7b)
    trait = load_trait("optimistic")
    questions = trait.extraction_questions + trait.evaluation_questions
    n, new_tokens = (128, 128) if args.gpu_7b else (16, 48)
    prompts = [loaded.chat(questions[i % len(questions)]) for i in range(n)]

    def tokens(answers: list[str]) -> int:
        return sum(len(ids) for ids in loaded.tokenizer(answers, add_special_tokens=False)["input_ids"])

    def timed(batch_size: int) -> float:
        warm_up = prompts[:batch_size]
        generate(loaded, warm_up, Sampling(max_new_tokens=4, batch_size=batch_size), progress=False)
        start = time.perf_counter()
        sampling = Sampling(max_new_tokens=new_tokens, batch_size=batch_size)
        answers = generate(loaded, prompts, sampling, progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return tokens(answers) / (time.perf_counter() - start)

    batched = timed(n)
    figures = [Figure("batched (every prompt at once)", batched, "new tok/s")]
    if args.gpu_7b:
        weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        floor = n * bandwidth_bytes_per_s() / weight_bytes
        figures.append(Figure("decode floor at that batch (weight bytes / bandwidth)", floor, "tok/s"))
        figures.append(Figure("batched / decode floor", batched / floor, "×"))
    single = timed(1)
    figures.append(Figure("one at a time", single, "new tok/s"))
    figures.append(Figure("batched / one at a time", batched / single, "×"))
    print(f"model: {loaded.identity.name} on {loaded.device}, {n} prompts, up to {new_tokens} new tokens")
    report("generate", figures, args.gpu_7b)


if __name__ == "__main__":
    main()
