"""Checks that a long command runs before it loads a model or generates anything: that what it needs
later is there. The vectors fit the model (read from its config alone), the output directory takes
files, the input files can be read, and the judge answers one probe request.

Each failure is a `PersonavecError` of one line. The CLI calls `preflight` before loading the model;
the library's long verbs call it again on entry, which costs nothing more (a judge that has answered
a probe is not asked again).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from personavec.errors import ConfigError, DataError

if TYPE_CHECKING:
    from personavec.core.models import ModelIdentity
    from personavec.core.vectors import PersonaVector
    from personavec.judges import Judge


def writable_dir(path: str | os.PathLike[str]) -> Path:
    """`path`, created if need be, once a file could be written in it; else a `ConfigError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot write to the output directory {path}: {error.strerror or error}; choose another --out"
        ) from error
    return path


def readable_file(path: str | os.PathLike[str], what: str) -> Path:
    """`path` once it can be opened for reading; else a `DataError` naming `what` it is for."""
    path = Path(path)
    try:
        with path.open("rb"):
            pass
    except IsADirectoryError:
        return path  # a saved dataset is a directory
    except OSError as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror or error}") from error
    return path


def preflight(
    *,
    judge: Judge | None = None,
    out: str | os.PathLike[str] | None = None,
    vectors: Sequence[PersonaVector] = (),
    model: str | ModelIdentity | None = None,
    reads: Sequence[tuple[str | os.PathLike[str], str]] = (),
) -> None:
    """Fail before any expensive work: `reads` ((path, what it is)) readable, `vectors` fitting the
    `model` (a reference, whose config alone is read, or an identity), `out` writable, then one probe
    of the `judge`."""
    for path, what in reads:
        readable_file(path, what)
    if vectors and model is not None:
        if isinstance(model, str):
            from personavec.core.models import model_identity

            model = model_identity(model)
        for vector in vectors:
            vector.check_model(model)
    if out is not None:
        writable_dir(out)
    if judge is not None:
        judge.probe()
