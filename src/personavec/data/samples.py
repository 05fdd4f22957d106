"""Training samples streamed from disk, and rows written back in the input's own format (formats.py).

Formats, by path:

- ``.jsonl``: one JSON object per line, a conversation ``{"messages": [...]}`` or prompt/response fields;
- ``.csv``: a header row, then prompt/response columns;
- ``.parquet``: a messages column (a list of role/content structs) or prompt/response columns;
- a directory written by Hugging Face ``datasets`` (``Dataset.save_to_disk``), with either layout.

In a conversation the **last assistant turn is the response** and every message before it is the
prompt (messages after it are ignored). Content may be text, a list of parts (the text parts are
used) or null (a tool-call turn, rendered empty). A prompt/response row may name a system column.
Rows are read lazily, so memory does not grow with the file. Parquet and saved datasets need the
``datasets`` extra (``pip install personavec[data]``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from personavec.data.formats import Fate, Format, SavedDataset, Unparsed, format_of
from personavec.errors import DataError

Message = dict[str, str]


@dataclass(frozen=True)
class Columns:
    """Field names: `messages` for conversations; `prompt`, `response` and optional `system` otherwise."""

    messages: str = field(
        default="messages", metadata={"flag": "--messages-column", "help": "conversation field"}
    )
    prompt: str = field(default="prompt", metadata={"flag": "--prompt-column", "help": "prompt field"})
    response: str = field(
        default="response", metadata={"flag": "--response-column", "help": "response field"}
    )
    system: str | None = field(
        default=None,
        metadata={"flag": "--system-column", "help": "system-prompt field of prompt/response rows"},
    )


@dataclass(frozen=True)
class Sample:
    """One training sample: the prompt as chat messages and the response that follows them."""

    index: int  # 0-based among the input's rows
    where: str  # file and line (or row) for messages
    prompt: tuple[Message, ...]
    response: str


@dataclass(frozen=True)
class BadRow:
    """A row that is not a usable sample, and why."""

    index: int
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _content(value: Any) -> str | None:
    """A message's text: a string, None (a tool-call turn: empty), or the text parts of a list."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(part, dict) for part in value):
        return "".join(str(part.get("text", "")) for part in value if part.get("type") == "text")
    return None


def to_sample(index: int, where: str, row: Any, columns: Columns) -> Sample | BadRow:
    """The sample a parsed row holds, or what is wrong with it."""

    def bad(problem: str) -> BadRow:
        return BadRow(index, where, problem)

    if not isinstance(row, dict):
        return bad("not a JSON object")
    if row.get(columns.messages) is not None:
        messages = row[columns.messages]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return bad(f"{columns.messages!r} is not a list of {{role, content}} messages")
        texts = [_content(m.get("content")) for m in messages]
        if not all(_text(m.get("role")) for m in messages) or None in texts:
            return bad(f"{columns.messages!r} has a message without a role or with content that is not text")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            return bad("the conversation has no assistant turn")
        last = turns[-1]
        prompt = tuple(
            {"role": m["role"], "content": t or ""}
            for m, t in zip(messages[:last], texts[:last], strict=True)
        )
        if not any(m["role"] == "user" for m in prompt):
            return bad("no user message before the last assistant turn")
        response = texts[last]
    elif columns.prompt in row and columns.response in row:
        user, response = row[columns.prompt], row[columns.response]
        if not _text(user) or not user.strip():
            return bad(f"{columns.prompt!r} is empty or not text")
        prompt = ({"role": "user", "content": user},)
        if columns.system and row.get(columns.system):
            if not _text(row[columns.system]):
                return bad(f"{columns.system!r} is not text")
            prompt = ({"role": "system", "content": row[columns.system]}, *prompt)
    else:
        return bad(f"no {columns.messages!r} field and no {columns.prompt!r}/{columns.response!r} fields")
    if not isinstance(response, str) or not response.strip():
        return bad("the response is empty")
    return Sample(index, where, prompt, response)


@dataclass(frozen=True)
class Census:
    """How many rows a dataset has, how many are bad, and the first bad one."""

    rows: int
    bad: int
    first_bad: BadRow | None


class DataFile:
    """A dataset on disk: its samples streamed in order, and splits of its rows written in its format."""

    def __init__(self, path: str | os.PathLike[str], columns: Columns = Columns()):
        self.path, self.columns = Path(path), columns
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist")
        self.format: Format = format_of(self.path)
        self._check_columns()

    @property
    def suffix(self) -> str:
        """The name ending for files in this format ('' for a saved-dataset directory)."""
        return "" if isinstance(self.format, SavedDataset) else self.path.suffix.lower()

    def _check_columns(self) -> None:
        """A column that does not exist fails here, before any model work."""
        fields = self.format.fields()
        if fields is None:  # JSONL: the first row that parses tells
            first = next((row for _, row in self.format.rows() if isinstance(row, dict)), None)
            fields = list(first) if first is not None else None
        if fields is None:
            return
        c = self.columns
        wanted = (
            [c.messages]
            if c.messages in fields
            else [c.prompt, c.response, *([c.system] if c.system else [])]
        )
        missing = [name for name in wanted if name not in fields]
        if missing:
            raise DataError(
                f"{self.path}: no column {missing[0]!r} (columns: {', '.join(fields)}); "
                "name the right ones with --messages-column / --prompt-column / --response-column"
            )

    def samples(self) -> Iterator[Sample | BadRow]:
        """Every row in order, as a sample or a bad row."""
        for index, (where, row) in enumerate(self.format.rows()):
            if isinstance(row, Unparsed):
                yield BadRow(index, where, row.problem)
            else:
                yield to_sample(index, where, row, self.columns)

    def split(self, outputs: dict[str, Path], fates: Iterable[Fate]) -> dict[str, int]:
        """Write row i to ``outputs[fates[i]]``, in this file's format; return the count per output."""
        return self.format.split(outputs, fates)

    @cached_property
    def census(self) -> Census:
        """The rows counted and the bad ones found, in one pass (done once per `DataFile`)."""
        rows, bad, first = 0, 0, None
        for item in self.samples():
            rows += 1
            if isinstance(item, BadRow):
                bad, first = bad + 1, first or item
        return Census(rows, bad, first)

    def sha256(self) -> str:
        """Hash of the file's bytes (of every file, for a directory): what results depend on."""
        digest = hashlib.sha256()
        files = sorted(p for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else [self.path]
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        return digest.hexdigest()
