"""JSON that any client, file or engine takes: every string valid Unicode, every number finite.

JSON escapes may carry a lone surrogate (``"\\ud800"``), which no tokenizer or UTF-8 file accepts, and
Python's JSON reads and writes ``NaN`` and ``Infinity``, which JSON has not. `clean` turns the first into
U+FFFD (as a UTF-8 decoder turns an invalid byte) and the second into ``null``: requests are cleaned as
they are read, and everything the server writes (response bodies, stream chunks, the audit log, the
dashboard's events) goes through `Wire`, which counts each number it had to drop.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi.responses import Response

_SURROGATE = re.compile("[\ud800-\udfff]")
SINKS = ("response", "stream", "audit", "dashboard")
"""Where the server writes JSON: the label of ``personavec_nonfinite_values_total``."""


def clean(value: Any) -> tuple[Any, int]:
    """`value` (parsed JSON) with lone surrogates replaced by U+FFFD and non-finite numbers by None, and
    how many numbers were replaced."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value), 0
    if isinstance(value, float):
        return (value, 0) if math.isfinite(value) else (None, 1)
    if isinstance(value, dict):
        out, bad = {}, 0
        for key, item in value.items():
            out[_SURROGATE.sub("\ufffd", str(key))], n = clean(item)
            bad += n
        return out, bad
    if isinstance(value, (list, tuple)):
        items = [clean(item) for item in value]
        return [item for item, _ in items], sum(n for _, n in items)
    return value, 0


class Wire:
    """Writes the server's JSON (`clean`), counting the non-finite numbers it drops by sink on
    `counter` (a prometheus-client counter labelled ``sink``)."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def dumps(self, data: Any, sink: str) -> str:
        cleaned, bad = clean(data)
        if bad:
            self.counter.labels(sink).inc(bad)
        return json.dumps(cleaned, ensure_ascii=False, allow_nan=False)

    def sse(self, data: Any) -> str:
        """One server-sent event of a chat stream."""
        return f"data: {self.dumps(data, 'stream')}\n\n"

    def response(
        self, data: Any, status: int = 200, headers: dict[str, str] | None = None, sink: str = "response"
    ) -> Response:
        body = self.dumps(data, sink).encode()
        return Response(body, status_code=status, headers=headers, media_type="application/json")
