"""Held-out loss: the mean token negative log-likelihood of ordinary text that no model variant wrote or
trained on, a capability measure that a small model shows where its multiple-choice accuracy sits at
chance (a finetuned or steered model that has lost general ability predicts ordinary text worse).

The bundled text is the prose that ships with Python's standard library: ``pydoc_data.topics``, the
language reference's topics as ``help()`` shows them (technical English with some code; it differs
between Python versions, so record `text_sha256` beside a result). Any other text works the same way.
It stands for "the model still models ordinary text", not for knowledge or reasoning (MMLU, from a
user's CSV through ``personavec eval capability``, is the paper's measure).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from personavec.core.backend import Backend, Edit, LogprobRequest, as_backend
from personavec.core.models import LoadedModel
from personavec.errors import ConfigError, DataError


def ordinary_text() -> str:
    """The standard library's ``pydoc_data.topics``, topics in name order, blank-line separated."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics))


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def text_windows(
    model: Backend | LoadedModel, text: str, window: int = 128, count: int = 64
) -> list[tuple[int, ...]]:
    """`count` non-overlapping windows of `window` tokens of `text`, evenly spaced over it."""
    if window < 2 or count < 1:
        raise ConfigError(f"a window needs at least 2 tokens and count ≥ 1; got {window} and {count}")
    ids = as_backend(model).encode(text)
    available = len(ids) // window
    if available < count:
        raise DataError(f"the text holds {available} windows of {window} tokens; {count} were asked for")
    starts = [window * (i * available // count) for i in range(count)]
    return [tuple(ids[s : s + window]) for s in starts]


def window_losses(
    model: Backend | LoadedModel,
    windows: Sequence[Sequence[int]],
    edits: Sequence[Edit] = (),
    batch_size: int = 16,
) -> list[float]:
    """Per window, the mean negative log-likelihood (nats) of its tokens after the first, each given
    those before it, under `edits`."""
    if any(len(w) < 2 for w in windows):
        raise DataError("every window needs at least 2 tokens")
    requests = [LogprobRequest(tuple(w[:1]), continuation=tuple(w[1:]), edits=tuple(edits)) for w in windows]
    results = as_backend(model).logprobs(requests, batch_size)
    return [-sum(r.continuation) / len(r.continuation) for r in results]
