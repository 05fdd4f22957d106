"""The dashboard's memory: the last N requests the server answered, and the pages watching them.

Memory is bounded whatever the traffic: at most `size` entries (a few hundred bytes of figures each),
their text and per-token projections only when kept (each bounded by the server's body and answer-token
limits), and at most `BACKLOG` undelivered entries per watching page (a page that falls further behind
is told to reload the list instead).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from typing import Any

from personavec.serve.record import Record

BACKLOG = 256
"""Entries a watching page may have waiting before it is told to reload the list."""

_FIGURES = ("prompt_last", "response_avg", "flagged", "predicted", "steered", "thresholds")


def _text(content: Any) -> str:
    """A message's text: its string, or its text parts joined."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(str(part.get("text", "")) for part in parts if isinstance(part, dict))


class Watcher:
    """One page's event stream: entries not yet sent, and whether some were dropped."""

    def __init__(self) -> None:
        self.pending: deque[dict[str, Any]] = deque()
        self.overflowed = False
        self.wake = asyncio.Event()

    def push(self, entry: dict[str, Any]) -> None:
        if len(self.pending) >= BACKLOG:
            self.pending.clear()
            self.overflowed = True
        else:
            self.pending.append(entry)
        self.wake.set()


class Ring:
    """The last `size` requests: a summary of each (time, id, status, figures per trait, tokens,
    latency), and with `text` the prompt, the answer and its per-token projections. `boot` names this
    server's run, so that a page can tell a restart from a reconnect."""

    def __init__(self, size: int, text: bool, traits: list[str]) -> None:
        self.size, self.text, self.traits = size, text, traits
        self.boot = secrets.token_hex(6)
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)
        self.details: dict[int, dict[str, Any]] = {}
        self.seq = 0
        self.requests = 0
        self.tokens = 0
        self.watchers: set[Watcher] = set()

    def add(self, r: Record, latency: float) -> None:
        """Keep `r` (dropping the oldest beyond `size`) and push it to the watching pages. Called on the
        event loop."""
        self.seq += 1
        self.requests += 1
        self.tokens += r.completion_tokens
        figures = r.figures or {}
        entry = {
            "seq": self.seq, "time": time.time(), "id": r.id, "model": r.model, "status": r.status,
            "latency": latency, "prompt_tokens": r.prompt_tokens, "tokens": r.completion_tokens,
            "finish_reason": r.finish_reason, "error": r.error,
            "traits": {name: {k: f.get(k) for k in _FIGURES} for name, f in figures.items()},
            "text": self.text and (r.messages is not None or r.answer is not None),
        }  # fmt: skip
        if len(self.entries) == self.size:
            self.details.pop(self.entries[0]["seq"], None)
        self.entries.append(entry)
        if entry["text"]:
            self.details[self.seq] = self._detail(r)
        for watcher in self.watchers:
            watcher.push(entry)

    def _detail(self, r: Record) -> dict[str, Any]:
        messages = [
            {"role": str(m.get("role", "")), "content": _text(m.get("content"))} for m in r.messages or []
        ]
        tokens = r.tokens or []
        values = {name: [t.projections[j] for t in tokens] for j, name in enumerate(self.traits)}
        return {
            "messages": messages,
            "answer": r.answer,
            "tokens": [t.text for t in tokens],
            "values": values,
        }

    def detail(self, seq: int) -> dict[str, Any] | None:
        """The kept text and per-token projections of entry `seq`, if still kept."""
        return self.details.get(seq)

    def after(self, seq: int) -> list[dict[str, Any]] | None:
        """The entries after `seq`, or None when some of them are no longer kept."""
        if seq > self.seq:
            return None
        missed = [e for e in self.entries if e["seq"] > seq]
        return missed if len(missed) == self.seq - seq else None

    def watch(self) -> Watcher:
        watcher = Watcher()
        self.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
