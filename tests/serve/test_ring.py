"""The dashboard's ring of recent requests and its session cookie, without a model or a browser."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from personavec.serve.dashboard import COOKIE, allowed, session_cookie
from personavec.serve.engine import Token
from personavec.serve.record import Record
from personavec.serve.ring import BACKLOG, Ring

FIGURES = {"evil": {"prompt_last": 1.0, "response_avg": 2.0, "token_max": 3.0, "flagged": True,
                    "predicted": False, "steered": None, "thresholds": {}, "layer": 20}}  # fmt: skip


def _record(i: int, text: bool = True) -> Record:
    tokens = [Token(7, "Hi", [0.5]), Token(8, "!", [-0.25])]
    messages = [{"role": "user", "content": [{"type": "text", "text": f"<b>{i}</b>"}]}] if text else None
    return Record(f"chatcmpl-{i}", "m", 200, time.monotonic(), 3, 2, "stop", FIGURES, messages, "Hi!",
                  tokens=tokens if text else None)  # fmt: skip


def test_the_ring_keeps_the_last_n_and_their_text_only() -> None:
    ring = Ring(3, True, ["evil"])
    for i in range(10):
        ring.add(_record(i), 0.1)
    assert [e["id"] for e in ring.entries] == ["chatcmpl-7", "chatcmpl-8", "chatcmpl-9"]
    assert sorted(ring.details) == [8, 9, 10]  # text leaves with its entry
    assert ring.requests == 10 and ring.tokens == 20
    entry = ring.entries[-1]
    assert entry["traits"]["evil"]["flagged"] is True and "token_max" not in entry["traits"]["evil"]
    assert ring.detail(10) == {
        "messages": [{"role": "user", "content": "<b>9</b>"}], "answer": "Hi!", "tokens": ["Hi", "!"],
        "values": {"evil": [0.5, -0.25]},
    }  # fmt: skip
    assert ring.detail(7) is None


def test_without_keep_text_the_ring_holds_figures_alone() -> None:
    ring = Ring(5, False, ["evil"])
    ring.add(_record(0), 0.1)
    assert ring.entries[0]["text"] is False and ring.details == {}


def test_a_reconnecting_page_gets_what_it_missed_or_a_reset() -> None:
    ring = Ring(3, False, ["evil"])
    for i in range(5):
        ring.add(_record(i), 0.1)
    assert [e["seq"] for e in ring.after(3) or []] == [4, 5]
    assert ring.after(5) == []
    assert ring.after(1) is None  # entry 2 is gone: reload the list
    assert ring.after(9) is None  # another run's numbering


def test_a_slow_page_is_told_to_reload_instead_of_growing() -> None:
    async def run() -> None:
        ring = Ring(10, False, ["evil"])
        watcher = ring.watch()
        for i in range(BACKLOG + 5):
            ring.add(_record(i), 0.1)
        assert watcher.overflowed and len(watcher.pending) <= BACKLOG
        ring.unwatch(watcher)
        ring.add(_record(0), 0.1)
        assert not ring.watchers

    asyncio.run(run())


def _request(cookie: str = "", authorization: str = "") -> Request:
    headers = [(b"cookie", f"{COOKIE}={cookie}".encode())] if cookie else []
    if authorization:
        headers.append((b"authorization", authorization.encode()))
    return Request({"type": "http", "method": "GET", "path": "/dashboard", "headers": headers})


def test_the_session_cookie_is_signed_by_the_key_and_expires() -> None:
    cookie = session_cookie("k1")
    assert "k1" not in cookie
    assert allowed("k1", _request(cookie)) and allowed(None, _request())
    assert not allowed("k2", _request(cookie))  # a new key ends old sessions
    assert not allowed("k1", _request(session_cookie("k1", now=time.time() - 13 * 3600)))
    expires, _, signature = cookie.partition(".")
    assert not allowed("k1", _request(f"{int(expires) + 1000}.{signature}"))  # a forged expiry
    assert not allowed("k1", _request()) and allowed("k1", _request(authorization="Bearer k1"))
