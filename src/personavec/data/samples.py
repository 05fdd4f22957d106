"""Training samples streamed from disk, and rows written back in the input's own format.

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

import codecs
import csv
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from personavec._internal.files import atomic_path
from personavec.errors import ConfigError, DataError, PersonavecError

Message = dict[str, str]
Fate = str  # which output a row goes to when a dataset is split: "kept", "flagged", "skipped", ...


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


class _Format:
    """Reads raw rows of one file format and writes chosen rows back in it."""

    def __init__(self, path: Path):
        self.path = path

    def fields(self) -> list[str] | None:
        """The column names, where the format declares them up front."""
        return None

    def rows(self) -> Iterator[tuple[str, Any]]:
        """(where, parsed row), or (where, BadRow problem text) for rows that do not parse."""
        raise NotImplementedError

    def split(self, outputs: dict[str, Path], fates: Iterable[Fate]) -> dict[str, int]:
        """Write each row to ``outputs[fate]`` (same format); return the count per fate."""
        raise NotImplementedError


class _JsonLines(_Format):
    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number, raw bytes with the line ending) of each non-blank line; a BOM is dropped."""
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                if number == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8) :]
                if line.strip():  # blank lines are not rows
                    yield number, line

    def rows(self) -> Iterator[tuple[str, Any]]:
        for number, line in self._lines():
            where = f"{self.path}:{number}"
            try:
                yield where, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                yield where, _Unparsed(f"not UTF-8 (byte {error.start} of the line)")
            except json.JSONDecodeError as error:
                yield where, _Unparsed(f"not JSON ({error.msg})")

    def split(self, outputs: dict[str, Path], fates: Iterable[Fate]) -> dict[str, int]:
        counts = dict.fromkeys(outputs, 0)
        with _temporary(outputs) as tmp, ExitStack() as stack:
            files = {fate: stack.enter_context(open(path, "wb")) for fate, path in tmp.items()}
            for (_, line), fate in zip(self._lines(), fates, strict=True):
                files[fate].write(line if line.endswith(b"\n") else line + b"\n")  # the row as it was
                counts[fate] += 1
        return counts


@dataclass(frozen=True)
class _Unparsed:
    problem: str


class _Csv(_Format):
    def _records(self, f: IO[str]) -> Iterator[tuple[int, list[str]]]:
        """(first line number, fields) of each non-empty record, the header first."""
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents are ordinary training data
        reader = csv.reader(f)
        start = 1
        try:
            for fields in reader:
                if fields:
                    yield start, fields
                start = reader.line_num + 1
        except csv.Error as error:
            raise DataError(f"{self.path}:{start}: not valid CSV ({error})") from None
        except UnicodeDecodeError:
            raise DataError(f"{self.path}:{start}: not UTF-8 text") from None

    def _open(self) -> IO[str]:
        return open(self.path, newline="", encoding="utf-8-sig")  # Excel writes a BOM

    def fields(self) -> list[str]:
        with self._open() as f:
            return next(self._records(f), (0, []))[1]

    def rows(self) -> Iterator[tuple[str, Any]]:
        with self._open() as f:
            records = self._records(f)
            header = next(records, (0, []))[1]
            for number, fields in records:
                where = f"{self.path}:{number}"
                if len(fields) != len(header):
                    yield where, _Unparsed(f"has {len(fields)} fields; the header has {len(header)}")
                else:
                    yield where, dict(zip(header, fields, strict=True))

    def split(self, outputs: dict[str, Path], fates: Iterable[Fate]) -> dict[str, int]:
        counts = dict.fromkeys(outputs, 0)
        with _text_outputs(outputs, newline="") as files, self._open() as f:
            writers = {fate: csv.writer(out) for fate, out in files.items()}
            records = self._records(f)
            header = next(records, (0, []))[1]
            for writer in writers.values():
                writer.writerow(header)
            for (_, fields), fate in zip(records, fates, strict=True):
                writers[fate].writerow(fields)
                counts[fate] += 1
        return counts


def _arrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise PersonavecError(
            "Parquet and saved datasets need pyarrow: pip install 'personavec[data]'"
        ) from None
    return pyarrow


class _Parquet(_Format):
    BATCH = 1024

    def _file(self) -> Any:
        pa = _arrow()
        try:
            return pa.parquet.ParquetFile(self.path)
        except pa.ArrowException as error:
            raise DataError(f"{self.path} is not a readable Parquet file ({error})") from None

    def fields(self) -> list[str]:
        return list(self._file().schema_arrow.names)

    def rows(self) -> Iterator[tuple[str, Any]]:
        index = 0
        for batch in self._file().iter_batches(batch_size=self.BATCH):
            for row in batch.to_pylist():
                yield f"{self.path}: row {index}", row
                index += 1

    def split(self, outputs: dict[str, Path], fates: Iterable[Fate]) -> dict[str, int]:
        pa = _arrow()
        source = self._file()
        counts = dict.fromkeys(outputs, 0)
        fates = iter(fates)
        with _temporary(outputs) as tmp:
            writers = {
                fate: pa.parquet.ParquetWriter(path, source.schema_arrow) for fate, path in tmp.items()
            }
            try:
                for batch in source.iter_batches(batch_size=self.BATCH):
                    chosen = [next(fates) for _ in range(batch.num_rows)]
                    for fate, writer in writers.items():
                        rows = [i for i, f in enumerate(chosen) if f == fate]
                        if rows:
                            writer.write_table(pa.Table.from_batches([batch.take(rows)]))
                            counts[fate] += len(rows)
            finally:
                for writer in writers.values():
                    writer.close()
        return counts


class _Saved(_Format):
    """A dataset directory written by ``datasets.Dataset.save_to_disk`` (memory-mapped Arrow)."""

    def _dataset(self) -> Any:
        _arrow()
        try:
            from datasets import Dataset, load_from_disk
        except ImportError:
            raise PersonavecError(
                "saved datasets need the datasets package: pip install 'personavec[data]'"
            ) from None
        data = load_from_disk(str(self.path))
        if not isinstance(data, Dataset):
            raise ConfigError(
                f"{self.path} holds several splits ({', '.join(data)}); "
                f"pass one of them, e.g. {self.path / next(iter(data))}"
            )
        return data

    def fields(self) -> list[str]:
        return list(self._dataset().column_names)

    def rows(self) -> Iterator[tuple[str, Any]]:
        for index, row in enumerate(self._dataset()):
            yield f"{self.path}: row {index}", row

    def split(self, outputs: dict[str, Path], fates: Iterable[Fate]) -> dict[str, int]:
        chosen: dict[str, list[int]] = {fate: [] for fate in outputs}  # row numbers: 8 bytes a row
        for index, fate in enumerate(fates):
            chosen[fate].append(index)
        data = self._dataset()
        temporary = {fate: path.with_name(f".{path.name}.tmp") for fate, path in outputs.items()}
        for fate, tmp in temporary.items():  # every output written before any replaces its old self
            shutil.rmtree(tmp, ignore_errors=True)
            data.select(chosen[fate]).save_to_disk(str(tmp))
        for fate, path in outputs.items():
            shutil.rmtree(path, ignore_errors=True)
            os.replace(temporary[fate], path)
        return {fate: len(rows) for fate, rows in chosen.items()}


@contextmanager
def _temporary(outputs: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Temporary paths beside each output; all are renamed into place when the block succeeds."""
    with ExitStack() as stack:
        yield {fate: stack.enter_context(atomic_path(path)) for fate, path in outputs.items()}


@contextmanager
def _text_outputs(outputs: dict[str, Path], newline: str | None = None) -> Iterator[dict[str, IO[str]]]:
    """Each output open for writing text, through `_temporary`."""
    with _temporary(outputs) as tmp, ExitStack() as stack:
        yield {
            fate: stack.enter_context(open(path, "w", encoding="utf-8", newline=newline))
            for fate, path in tmp.items()
        }


SUFFIXES = {".jsonl": _JsonLines, ".csv": _Csv, ".parquet": _Parquet}


class DataFile:
    """A dataset on disk: its samples streamed in order, and splits of its rows written in its format."""

    def __init__(self, path: str | os.PathLike[str], columns: Columns = Columns()):
        self.path, self.columns = Path(path), columns
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist")
        if self.path.is_dir():
            if (
                not (self.path / "dataset_info.json").exists()
                and not (self.path / "dataset_dict.json").exists()
            ):
                raise DataError(f"{self.path} is a directory but not a dataset saved by `datasets`")
            self.format: _Format = _Saved(self.path)
        elif self.path.suffix.lower() in SUFFIXES:
            self.format = SUFFIXES[self.path.suffix.lower()](self.path)
        else:
            raise DataError(
                f"{self.path}: unknown format; use .jsonl, .csv, .parquet or a `datasets` directory"
            )
        self._check_columns()

    @property
    def suffix(self) -> str:
        """The name ending for files in this format ('' for a saved-dataset directory)."""
        return "" if isinstance(self.format, _Saved) else self.path.suffix.lower()

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
            if isinstance(row, _Unparsed):
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
