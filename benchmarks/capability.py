"""Capability scoring throughput on the smoke set vs a plain forward pass over the same batches.

    python benchmarks/capability.py            # bundled SmolLM2, CPU
    python benchmarks/capability.py --gpu-7b   # 7B-shaped random model, GPU

The plain forward runs the already tokenised batches with ``logits_to_keep=1`` (what ``score`` runs:
the LM head at the last position only); the ratio is the cost of everything else in ``score``
(prompt formatting, tokenising, letter log-likelihoods). The forward with the LM head over every
position is printed too.
"""

from __future__ import annotations

import torch

from personavec.deploy.capability import SMOKE, load_questions, prompt_text, score

from _common import Figure, best_time, load, parser, report


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    loaded = load(args.gpu_7b)
    device, model, tokenizer = loaded.device, loaded.model, loaded.tokenizer
    questions = load_questions(SMOKE)
    prompts = [prompt_text(loaded, q) for q in questions]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    batches = []
    for start in range(0, len(order), args.batch_size):
        batch = tokenizer(
            [prompts[i] for i in order[start : start + args.batch_size]],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        batches.append({**batch, "position_ids": positions})
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def forward(logits_to_keep: int) -> None:
        with torch.inference_mode():
            for batch in batches:
                model(**batch, use_cache=False, logits_to_keep=logits_to_keep)

    result = score(loaded, questions, batch_size=args.batch_size, progress=False)
    n = len(questions)
    t_last = best_time(lambda: forward(1), args.repeats)
    t_full = best_time(lambda: forward(0), args.repeats)  # 0 keeps every position
    t_score = best_time(
        lambda: score(loaded, questions, batch_size=args.batch_size, progress=False), args.repeats
    )
    print(
        f"model: {loaded.identity.name} on {device}, smoke set: {n} questions, {sum(lengths)} tokens, "
        f"batch size {args.batch_size}, accuracy {result.accuracy:.3f}"
    )
    report(
        "capability",
        [
            Figure("plain forward (LM head at every position)", n / t_full, "questions/s"),
            Figure("plain forward (logits_to_keep=1)", n / t_last, "questions/s"),
            Figure("personavec capability score", n / t_score, "questions/s"),
            Figure("capability score / plain forward (logits_to_keep=1) throughput", t_last / t_score, "×"),
        ],
        args.gpu_7b,
    )


if __name__ == "__main__":
    main()
