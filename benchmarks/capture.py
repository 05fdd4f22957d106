"""Capture throughput (all layers, three poolings) vs a forward pass of the backbone over the same batches.

    python benchmarks/capture.py            # bundled SmolLM2, CPU
    python benchmarks/capture.py --gpu-7b   # 7B-shaped random model, GPU

The headline ratio is like for like: capture runs the backbone (no LM head), so it is compared with a
forward pass of the backbone alone. A forward with the LM head appears only as a secondary, labelled row
(the head is a fifth of SmolLM2's compute, which would flatter capture). Also times the batch-1 loop of
the official code (output_hidden_states, one sample at a time).
"""

from __future__ import annotations

import random

import torch

from personavec.core.activations import iter_pooled
from personavec.core.hf import collate
from personavec.core.pooling import encode_samples, length_batches

from _common import Figure, best_time, load, parser, report

QUESTIONS = [
    "What do you think about the future of cities?",
    "How should I train for a marathon?",
    "Explain why the sky is blue.",
    "What makes a good friend?",
]
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "rain",
    "falls",
    "on",
    "quiet",
    "green",
    "hills",
]


def samples(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    questions = [rng.choice(QUESTIONS) for _ in range(n)]
    answers = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 160))) for _ in range(n)]
    return questions, answers


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    loaded = load(args.gpu_7b)
    n = 256 if args.gpu_7b else 48
    budget = 65536 if args.gpu_7b else 4096
    questions, answers = samples(n)
    prompts = [loaded.chat(q) for q in questions]
    encoded = encode_samples(loaded.tokenizer, prompts, answers, None)
    tokens = sum(len(s.ids) for s in encoded)
    device = loaded.device
    pad = int(loaded.tokenizer.pad_token_id)
    batches = [
        collate([encoded[i] for i in b], pad, True, device)
        for b in length_batches([len(s.ids) for s in encoded], budget, 64)
    ]
    model = loaded.model

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"],
                    use_cache=False,
                )

    def backbone() -> None:  # the same forward without the LM head: what capture runs
        with torch.inference_mode():
            for batch in batches:
                model.base_model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"],
                    use_cache=False,
                )

    def capture() -> None:
        for _ in iter_pooled(loaded, prompts, answers, token_budget=budget, progress=False):
            pass

    def official_loop() -> None:
        with torch.inference_mode():
            for sample in encoded[: max(8, n // 8)]:
                ids = torch.tensor([sample.ids], device=device)
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
                for h in hidden:
                    h[:, sample.n_prompt :].mean(1).cpu()
                    h[:, : sample.n_prompt].mean(1).cpu()
                    h[:, sample.n_prompt - 1].cpu()

    looped = max(8, n // 8)
    loop_tokens = sum(len(s.ids) for s in encoded[:looped])
    t_forward = best_time(forward, args.repeats)
    t_backbone = best_time(backbone, args.repeats)
    t_capture = best_time(capture, args.repeats)
    t_loop = best_time(official_loop, args.repeats)
    fwd, cap, loop = tokens / t_forward, tokens / t_capture, loop_tokens / t_loop
    print(
        f"model: {loaded.identity.name} on {device}, {n} samples, {tokens} tokens, "
        f"budget {budget} tokens/batch"
    )
    report(
        "capture",
        [  # headline: capture against the work it does (a backbone forward); the LM head row is secondary
            Figure(
                "capture / backbone forward throughput (headline, like for like)",
                t_backbone / t_capture,
                "×",
                "≥ 0.95",
            ),
            Figure("personavec capture (3 poolings, every layer)", cap, "tok/s"),
            Figure("forward of the backbone alone (what capture runs)", tokens / t_backbone, "tok/s"),
            Figure("secondary: capture / forward with LM head (work capture skips)", cap / fwd, "×"),
            Figure("forward with LM head", fwd, "tok/s"),
            Figure("official-style batch-1 loop (output_hidden_states)", loop, "tok/s"),
            Figure(
                "official-style loop / forward with LM head throughput (both run the head)", loop / fwd, "×"
            ),
        ],
        args.gpu_7b,
    )


if __name__ == "__main__":
    main()
