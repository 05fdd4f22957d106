"""Chat conversations as token ids for supervised finetuning, with the loss on the assistant's tokens.

A conversation is rendered once with the model's chat template. A token is trained on (its label is
its id) when its characters fall inside an assistant turn: from where the template's generation
prompt ends to where that turn's rendering ends, so the turn's closing tokens (end of turn, EOS) are
learned too, where the template writes any (the plain fallback template of models without one does
not). Every other token (system, user, tool turns, template scaffolding) gets label -100.
This needs a template whose rendering of a conversation starts with its rendering of every shorter
prefix of it, which holds for the usual templates; one that does not is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from torch import Tensor

from personavec.core.models import format_chat
from personavec.data.samples import BadRow, DataFile
from personavec.errors import ConfigError, DataError, ModelError, PersonavecError

IGNORE = -100  # the label that torch's cross-entropy (and transformers' loss) skips


@dataclass(frozen=True)
class Example:
    """One tokenised conversation: its ids and labels (IGNORE outside assistant turns)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    text = format_chat(tokenizer, list(messages), add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = format_chat(tokenizer, list(messages[:i]), add_generation_prompt=True)
        rendered = format_chat(tokenizer, list(messages[: i + 1]), add_generation_prompt=False)
        if not (text.startswith(rendered) and rendered.startswith(prompt)):
            raise ModelError(
                "the chat template renders a conversation differently from its beginning (it rewrites "
                "earlier turns), so assistant tokens cannot be found; use a model with a plainer template"
            )
        spans.append((len(prompt), len(rendered)))
    return text, spans


def encode(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> Example:
    """Token ids and labels of one conversation, cut to `max_length` tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = list(encoded["input_ids"]), []
    for token, (begin, end) in zip(ids, encoded["offset_mapping"], strict=True):
        inside = any(begin < stop and end > start for start, stop in spans)
        labels.append(token if inside else IGNORE)
    truncated = len(ids) > max_length
    return Example(ids[:max_length], labels[:max_length], truncated)


def load_conversations(path: str | Path) -> list[tuple[str, list[dict[str, str]]]]:
    """(where, messages) of every row of a chat dataset; the first bad row fails with its line."""
    conversations = []
    for item in DataFile(path).samples():
        if isinstance(item, BadRow):
            raise DataError(f"{item}; fix the row (training data is not skipped)")
        conversations.append((item.where, [*item.prompt, {"role": "assistant", "content": item.response}]))
    if not conversations:
        raise DataError(f"{path} has no conversations")
    return conversations


@dataclass(frozen=True)
class Tokenized:
    """A chat dataset encoded: the `examples` kept, of `total` conversations; `cut` of the kept ones
    lost their tail to ``max_length``; `dropped` ones kept no assistant token within it."""

    examples: list[Example]
    total: int
    cut: int
    dropped: int

    def warning(self, max_length: int) -> str | None:
        """One line saying what ``max_length`` did to the data, or None when it changed nothing."""
        what = (
            [f"{self.cut} of {self.total} conversations cut to --max-length {max_length}"] if self.cut else []
        )
        if self.dropped:
            what.append(
                f"{self.dropped} of {self.total} conversations dropped "
                f"(no assistant token within --max-length {max_length})"
            )
        return "; ".join(what) or None


def tokenize_dataset(tokenizer: Any, path: str | Path, max_length: int) -> Tokenized:
    """The conversations of `path` encoded and cut to `max_length`; those left with no assistant token
    after the cut are dropped."""
    examples = []
    for where, messages in load_conversations(path):
        try:
            examples.append(encode(tokenizer, messages, max_length))
        except (PersonavecError, TemplateError) as error:
            raise DataError(f"{where}: {error}") from None
    kept = [e for e in examples if any(label != IGNORE for label in e.labels)]
    if not kept:
        raise ConfigError(
            f"{path}: no conversation keeps an assistant token within max_length {max_length}",
            ("max_length",),
        )
    return Tokenized(kept, len(examples), sum(e.truncated for e in kept), len(examples) - len(kept))


class Collator:
    """Pads a batch (right padding; labels padded with IGNORE) for the Trainer."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Example]) -> dict[str, Tensor]:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row.input_ids)
            ids[i, :n] = torch.tensor(row.input_ids)
            labels[i, :n] = torch.tensor(row.labels)
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
