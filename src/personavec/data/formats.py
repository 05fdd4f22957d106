"""Dataset file formats: raw rows read from disk, and chosen rows written back in the same format.

One class per format (JSON lines, CSV, Parquet, a ``datasets`` directory), each reading rows lazily
and splitting them into several outputs atomically; `format_of` picks the class by path. What a row
means (a sample or a bad row) is samples.py's business.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from personavec._internal.files import atomic_path
from personavec.errors import ConfigError, DataError, PersonavecError

Fate = str  # which output a row goes to when a dataset is split: "kept", "flagged", "skipped", ...


class Format:
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


class _JsonLines(Format):
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
                yield where, Unparsed(f"not UTF-8 (byte {error.start} of the line)")
            except json.JSONDecodeError as error:
                yield where, Unparsed(f"not JSON ({error.msg})")

    def split(self, outputs: dict[str, Path], fates: Iterable[Fate]) -> dict[str, int]:
        counts = dict.fromkeys(outputs, 0)
        with _temporary(outputs) as tmp, ExitStack() as stack:
            files = {fate: stack.enter_context(open(path, "wb")) for fate, path in tmp.items()}
            for (_, line), fate in zip(self._lines(), fates, strict=True):
                files[fate].write(line if line.endswith(b"\n") else line + b"\n")  # the row as it was
                counts[fate] += 1
        return counts


@dataclass(frozen=True)
class Unparsed:
    problem: str


class _Csv(Format):
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
                    yield where, Unparsed(f"has {len(fields)} fields; the header has {len(header)}")
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


class _Parquet(Format):
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


class SavedDataset(Format):
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


def format_of(path: Path) -> Format:
    """The format of the dataset at `path` (which exists), by its name ending or directory layout."""
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise DataError(f"{path} is a directory but not a dataset saved by `datasets`")
        return SavedDataset(path)
    if path.suffix.lower() in SUFFIXES:
        return SUFFIXES[path.suffix.lower()](path)
    raise DataError(f"{path}: unknown format; use .jsonl, .csv, .parquet or a `datasets` directory")
