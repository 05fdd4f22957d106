"""A judge that is a local Hugging Face chat model: the same top-20 logprob rule, batched forwards."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from personavec.core.models import LoadedModel, load_model
from personavec.judges.base import Judge, Score, fill, logprob_score
from personavec.judges.openai_compat import TOP_LOGPROBS


class LocalJudge(Judge):
    """Scores from the next-token distribution of a local model after the filled rubric (one forward)."""

    def __init__(self, model: str | LoadedModel, batch_size: int = 8) -> None:
        self.loaded = load_model(model) if isinstance(model, str) else model
        identity = self.loaded.identity
        self.name = f"hf:{identity.name}" + (
            f"@{identity.revision or identity.sha256}" if identity.revision or identity.sha256 else ""
        )
        self.batch_size = batch_size

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> Iterator[tuple[int, Score]]:
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        prompts = [self.loaded.chat(fill(rubric, q, a)) for q, a in items]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = tokenizer(
                [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.loaded.device)
            with torch.inference_mode():
                logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
            top = torch.log_softmax(logits, dim=-1).topk(TOP_LOGPROBS, dim=-1)
            for row, i in enumerate(chunk):
                pairs = [
                    (str(tokenizer.decode([int(t)])), float(lp))
                    for t, lp in zip(top.indices[row], top.values[row], strict=True)
                ]
                yield i, Score(logprob_score(pairs), "logprobs")
