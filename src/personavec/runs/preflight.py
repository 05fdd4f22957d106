"""Checks that a long command runs before it loads a model or generates anything: that what it needs
later is there. The vectors fit the model (read from its config alone), the output directory takes
files, the judge answers one probe request, and the engine stands in for the model (`RemoteEngine.check`,
against the model's tokenizer alone). (Input files are read by their own loaders before the
model loads: `DataFile`, `load_vector`, `load_trait`.)

Each failure is a `PersonavecError` of one line. The long verbs call `preflight` on entry, before a
`ModelRef` loads; where the CLI builds a judge ahead of the verb (sweep, calibrate, shift) it probes it
first, and the verb's second call costs nothing (a judge that has answered a probe is not asked
again, an engine checked against a tokenizer is not checked again).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from personavec.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from personavec.core.backend import Model
    from personavec.core.engine import RemoteEngine
    from personavec.core.models import ModelIdentity
    from personavec.core.vectors import PersonaVector
    from personavec.judges import Judge


def writable_dir(path: str | os.PathLike[str]) -> None:
    """Create `path` if need be and write a file in it; a `ConfigError` when either fails."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot write to the output directory {path}: {error.strerror or error}; choose another out",
            ("out",),
        ) from error


def preflight(
    *,
    judge: Judge | None = None,
    out: str | os.PathLike[str] | None = None,
    vectors: Sequence[PersonaVector] = (),
    model: Model | str | ModelIdentity | None = None,
    engine: RemoteEngine | None = None,
) -> None:
    """Fail before any expensive work: `vectors` fitting the `model` (a name or `ModelRef`, whose
    config alone is read, an identity, or the model), `out` writable, one probe of the `judge`, then
    the `engine` checked against the tokenizer of `model`."""
    if vectors and model is not None:
        identity = _identity(model)
        for vector in vectors:
            vector.check_model(identity)
    if out is not None:
        writable_dir(out)
    if judge is not None:
        judge.probe()
    if engine is not None:
        engine.check(_tokenizer(model))


def _identity(model: Model | str | ModelIdentity) -> ModelIdentity:
    from personavec.core.backend import identity_of
    from personavec.core.models import ModelIdentity, ModelRef

    if isinstance(model, ModelIdentity):
        return model
    return identity_of(ModelRef(model) if isinstance(model, str) else model)


def _tokenizer(model: Model | str | ModelIdentity | None) -> PreTrainedTokenizerBase:
    from personavec.core.backend import as_backend
    from personavec.core.hf import tokenizer_of
    from personavec.core.models import ModelIdentity, ModelRef

    if isinstance(model, str):
        model = ModelRef(model)
    if isinstance(model, ModelRef):
        return model.tokenizer()
    if model is None or isinstance(model, ModelIdentity):
        raise TypeError("checking an engine needs the model or its reference")
    return tokenizer_of(as_backend(model))
