"""Where the figures go besides the response: Prometheus metrics and the audit log.

Metrics (prometheus-client, one registry per app; the docs' Serving page lists every name and label):
projection histograms per trait and statistic, flagged / predicted / steered counters per trait,
requests by status, latency and time to first token, tokens, queue depth and batch sizes.

The audit log appends one JSON line per request with a single ``write`` on a file opened ``O_APPEND``
(mode 0600), so lines never interleave; a torn last line left by a ``kill -9`` is cut off when the log
is reopened, so it never swallows the next one.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from personavec.deploy.config import STATISTICS
from personavec.serve.wire import Wire

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PROJECTION_BUCKETS = (-32, -16, -8, -4, -2, -1, 0, 1, 2, 4, 8, 16, 32)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.projection = Histogram(
            "personavec_projection", "Projection of an answer onto a persona vector",
            ["trait", "statistic"], buckets=PROJECTION_BUCKETS, registry=r,
        )  # fmt: skip
        self.flagged = Counter(
            "personavec_flagged", "Answers whose response-average exceeded the trait's threshold", ["trait"],
            registry=r,
        )  # fmt: skip
        self.predicted = Counter(
            "personavec_predicted", "Prompts whose prompt-last projection exceeded the trait's threshold",
            ["trait"], registry=r,
        )  # fmt: skip
        self.steered = Counter("personavec_steered", "Answers steered along the trait", ["trait"], registry=r)
        self.requests = Counter(
            "personavec_requests", "Chat completion requests by HTTP status", ["status"], registry=r
        )
        self.latency = Histogram(
            "personavec_request_seconds",
            "Time from request to last token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "personavec_time_to_first_token_seconds", "Time from request to first token",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("personavec_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("personavec_generated_tokens", "Answer tokens generated", registry=r)
        self.queue = Gauge("personavec_queue_depth", "Requests waiting for a batch", registry=r)
        self.running = Gauge("personavec_running_requests", "Requests in the running batch", registry=r)
        self.batch_size = Histogram(
            "personavec_batch_size", "Requests per generate batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.nonfinite = Counter(
            "personavec_nonfinite_values", "NaN or infinite numbers written as null, by where they went",
            ["sink"], registry=r,
        )  # fmt: skip

    def answer(self, figures: dict[str, dict[str, Any]]) -> None:
        """Count one answer's persona figures (the response's ``persona.vectors``)."""
        for trait, f in figures.items():
            for statistic in STATISTICS:
                if f[statistic] is not None and math.isfinite(f[statistic]):
                    self.projection.labels(trait, statistic).observe(f[statistic])
            for counter, key in ((self.flagged, "flagged"), (self.predicted, "predicted")):
                if f[key]:
                    counter.labels(trait).inc()
            if f["steered"] is not None:
                self.steered.labels(trait).inc()


class AuditLog:
    """Append-only JSON lines (see the module docstring)."""

    def __init__(self, path: str | Path, text: bool, wire: Wire) -> None:
        self.path, self.text, self.wire = Path(path), text, wire
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        size = os.fstat(self._fd).st_size
        if size:
            last = os.pread(self._fd, 1, size - 1)
            if last != b"\n":  # a torn line from a crash: keep whole lines only
                data = os.pread(self._fd, size, 0)
                os.ftruncate(self._fd, data.rfind(b"\n") + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.text:
            record = {k: v for k, v in record.items() if k not in ("messages", "answer")}
        line = (self.wire.dumps(record, "audit") + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
