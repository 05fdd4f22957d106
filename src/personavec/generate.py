"""Batched answer generation with a Hugging Face model (greedy or sampled), prompts bucketed by length."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationMixin

from personavec.errors import PersonavecError
from personavec.models import LoadedModel


def generate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Answers to chat-formatted `prompts`, in order. ``temperature=0`` decodes greedily.

    Prompts are sorted by length and cut into batches of `batch_size`, so little padding is run.
    Steering applies when called inside an intervention (``with vector.apply(model, coef): ...``).
    """
    if max_new_tokens < 1:
        raise PersonavecError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    tokenizer, model = loaded.tokenizer, loaded.model
    if not isinstance(model, GenerationMixin):
        raise PersonavecError(f"{type(model).__name__} cannot generate text (not a causal LM)")
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(prompts)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    torch.manual_seed(seed)
    bar = tqdm(total=len(prompts), desc="generate", unit="answer", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer(
            [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        )
        batch = batch.to(loaded.device)
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(chunk, texts, strict=True):
            answers[i] = text.strip()
        bar.update(len(chunk))
    bar.close()
    return answers
