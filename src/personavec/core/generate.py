"""Batched answer generation with a Hugging Face model (greedy or sampled), prompts bucketed by length.

`generate` answers a list of prompts; `generate_rows` answers many requests (questions × system prompts ×
samples) into a JSONL file, chunk by chunk, so that a crash loses at most one chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationMixin

from personavec._internal.files import atomic_path, open_append
from personavec.core.engine import Engine, request_seed
from personavec.core.layers import unwrap
from personavec.core.models import LoadedModel, format_chat, token_counts
from personavec.core.sampling import Sampling
from personavec.errors import ModelError


def generate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    sampling: Sampling = Sampling(),
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Answers to chat-formatted `prompts`, in order, generated as `sampling` says.

    Prompts are sorted by length and cut into batches of ``sampling.batch_size``, so little padding is
    run. Steering applies when called inside an intervention (``with vector.apply(model, coef): ...``).
    """
    tokenizer, model = loaded.tokenizer, loaded.model
    if not isinstance(unwrap(model), GenerationMixin):  # a PEFT model generates through its base
        raise ModelError(f"{type(model).__name__} cannot generate text (not a causal LM)")
    generator: Any = model
    lengths = token_counts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(prompts)
    decoding = sampling.decoding()
    batch_size, max_new_tokens = sampling.batch_size, sampling.max_new_tokens
    torch.manual_seed(sampling.seed)
    bar = tqdm(total=len(prompts), desc=desc, unit="answer", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer(
            [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        )
        batch = batch.to(loaded.device)
        with torch.inference_mode():
            out = generator.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **decoding
            )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(chunk, texts, strict=True):
            answers[i] = text.strip()
        bar.update(len(chunk))
    bar.close()
    return answers


@dataclass(frozen=True)
class Request:
    """One answer to produce: `id` names it in the output; `fields` are copied into its row.

    `history` holds earlier (user, assistant) turns of the conversation, for many-shot prompts.
    """

    id: str
    question: str
    system: str | None = None
    fields: tuple[tuple[str, Any], ...] = ()
    history: tuple[tuple[str, str], ...] = ()

    def prompt(self, loaded: LoadedModel) -> str:
        """The chat-formatted prompt text."""
        if not self.history:
            return loaded.chat(self.question, self.system)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for user, assistant in self.history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": self.question})
        return format_chat(loaded.tokenizer, messages)


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a JSONL file by id (the last one wins); a torn last line from a crash is ignored."""
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows[row["id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return rows


def generate_rows(
    loaded: LoadedModel,
    requests: Sequence[Request],
    path: Path,
    sampling: Sampling = Sampling(),
    chunk_size: int = 128,
    progress: bool = True,
    desc: str = "generate",
    engine: Engine | None = None,
) -> list[dict[str, Any]]:
    """Answer `requests` into the JSONL file `path`; one row per request, in the order of `requests`.

    Requests are answered in chunks of `chunk_size`, chunk k sampled with seed ``sampling.seed + k``;
    each chunk's rows are appended and flushed once it is done. Chunks already in the file are skipped
    (the rows of a chunk left half-written are dropped first), so a rerun after a crash resumes where it
    stopped and writes the same file as an uninterrupted run.

    With an `engine`, it writes the answers (checked first; `Engine.check`), each request seeded by
    `request_seed` from ``sampling.seed`` and its id, and chunks hold at least four requests per
    concurrent one; ``sampling.batch_size`` is then unused.
    """
    if engine is not None:
        engine.check(loaded.tokenizer)
        chunk_size = max(chunk_size, 4 * engine.concurrency)
    rows = read_rows(path)
    chunks = [requests[i : i + chunk_size] for i in range(0, len(requests), chunk_size)]
    todo = [k for k, chunk in enumerate(chunks) if any(r.id not in rows for r in chunk)]
    partial = [r.id for k in todo for r in chunks[k] if r.id in rows]
    if partial:  # a crash while a chunk's lines were written: keep whole chunks only, each row once
        for rid in partial:
            del rows[rid]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows.values()))
    bar = tqdm(total=len(requests), desc=desc, unit="answer", disable=not progress)
    bar.update(len(requests) - sum(len(chunks[k]) for k in todo))
    with open_append(path) as out:
        for k in todo:
            chunk = chunks[k]
            prompts = [r.prompt(loaded) for r in chunk]
            if engine is None:
                answers = generate(loaded, prompts, replace(sampling, seed=sampling.seed + k), progress=False)
            else:
                seeds = [request_seed(sampling.seed, r.id) for r in chunk]
                answers = engine.submit(prompts, sampling, seeds).result()
            for request, answer in zip(chunk, answers, strict=True):
                row = {
                    "id": request.id,
                    **dict(request.fields),
                    "system": request.system,
                    "question": request.question,
                    "answer": answer,
                    "model": loaded.identity.name,
                }
                rows[request.id] = row
                out.write(json.dumps(row) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(chunk))
    bar.close()
    return [rows[r.id] for r in requests]
