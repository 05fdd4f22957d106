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
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from personavec._internal.files import atomic_path, open_append
from personavec.core.backend import (
    Backend,
    Edit,
    Generation,
    GenerationRequest,
    GuardRule,
    Probe,
    as_backend,
)
from personavec.core.engine import RemoteEngine, request_seed
from personavec.core.hf import tokenizer_of
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.errors import ConfigError

if TYPE_CHECKING:
    pass


def generate(
    model: Backend | LoadedModel,
    prompts: Sequence[str],
    sampling: Sampling = Sampling(),
    progress: bool = True,
    desc: str = "generate",
    edits: Sequence[Edit] = (),
) -> list[str]:
    """Answers to chat-formatted `prompts`, in order, generated as `sampling` says, under `edits`.

    On the transformers backend prompts are sorted by length and cut into batches of
    ``sampling.batch_size``, so little padding is run, and steering also applies when called inside
    an intervention (``with vector.apply(model, coef): ...``).
    """
    answers = generations(model, prompts, sampling, progress, desc, edits)
    return [answer.text.strip() for answer in answers]


def generations(
    model: Backend | LoadedModel,
    prompts: Sequence[str],
    sampling: Sampling = Sampling(),
    progress: bool = True,
    desc: str = "generate",
    edits: Sequence[Edit] = (),
    probes: Sequence[Probe] = (),
    guards: Sequence[GuardRule] = (),
) -> list[Generation]:
    """`generate`'s answers whole (token ids, finish reasons, the `probes`' readings per step and the
    step each of the `guards` fired at), every prompt with the same edits, probes and guards."""
    backend = as_backend(model)
    requests = [
        GenerationRequest(
            tuple(backend.encode(prompt)), sampling.max_new_tokens, sampling.temperature, sampling.top_p,
            edits=tuple(edits), probes=tuple(probes), guards=tuple(guards),
        )
        for prompt in prompts
    ]  # fmt: skip
    return backend.generate(requests, sampling.seed, sampling.batch_size, progress=progress, desc=desc)


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

    def prompt(self, model: Backend | LoadedModel) -> str:
        """The chat-formatted prompt text."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for user, assistant in self.history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": self.question})
        return as_backend(model).chat(messages)


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
    model: Backend | LoadedModel,
    requests: Sequence[Request],
    path: Path,
    sampling: Sampling = Sampling(),
    chunk_size: int = 128,
    progress: bool = True,
    desc: str = "generate",
    engine: RemoteEngine | None = None,
    edits: Sequence[Edit] = (),
) -> list[dict[str, Any]]:
    """Answer `requests` into the JSONL file `path`; one row per request, in the order of `requests`.

    Requests are answered in chunks of `chunk_size`, chunk k sampled with seed ``sampling.seed + k``;
    each chunk's rows are appended and flushed once it is done. Chunks already in the file are skipped
    (the rows of a chunk left half-written are dropped first), so a rerun after a crash resumes where it
    stopped and writes the same file as an uninterrupted run.

    With an `engine` (checked first), it writes the answers, each seeded by `request_seed`; chunks
    hold at least four requests per concurrent one. `edits` steer every answer (not on an engine).
    """
    backend = as_backend(model)
    chunk_size = chunk_size if engine is None else _check_engine(engine, backend, edits, chunk_size)
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
            prompts = [r.prompt(backend) for r in chunk]
            if engine is None:
                chunk_sampling = replace(sampling, seed=sampling.seed + k)
                answers = generate(backend, prompts, chunk_sampling, progress=False, edits=edits)
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
                    "model": backend.identity.name,
                }
                rows[request.id] = row
                out.write(json.dumps(row) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(chunk))
    bar.close()
    return [rows[r.id] for r in requests]


def _check_engine(engine: RemoteEngine, backend: Backend, edits: Sequence[Edit], chunk_size: int) -> int:
    """Check `engine` against the local tokenizer; the chunk size that keeps it busy."""
    if edits:
        raise ConfigError("a remote engine cannot steer: generate steered answers on the local model")
    engine.check(tokenizer_of(backend))
    return max(chunk_size, 4 * engine.concurrency)
