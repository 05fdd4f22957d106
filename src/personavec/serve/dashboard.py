"""The live persona dashboard at ``/dashboard``: a page, its assets, the recent requests and their
server-sent events.

When the server has an API key, the page and its data need it too: a login form posts the key once and
gets an HttpOnly, SameSite=Strict session cookie (an event stream cannot send headers, and the key
never goes in a URL); API clients may send ``Authorization: Bearer KEY`` instead. The cookie is an HMAC
of its expiry under the key, so it survives a server restart (the page reconnects) and dies with a new
key. The page renders every prompt and answer as text, and its Content-Security-Policy allows only its
own scripts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from html import escape
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from personavec.serve.http import ClientError
from personavec.serve.ring import Ring
from personavec.serve.state import State
from personavec.serve.wire import Wire

STATIC = Path(__file__).parent / "static"
COOKIE = "personavec_dashboard"
SESSION_SECONDS = 12 * 3600
STREAM_SECONDS = 20.0
"""An event stream ends after this long and the page reconnects where it left off, so that a server
shutting down never waits on an open dashboard for longer."""
TICK_SECONDS = 2.0
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _sign(key: str, expires: int) -> str:
    return hmac.new(key.encode(), f"dashboard|{expires}".encode(), hashlib.sha256).hexdigest()


def session_cookie(key: str, now: float | None = None) -> str:
    """A session cookie's value for `key`: its expiry and the expiry's HMAC under the key."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{expires}.{_sign(key, expires)}"


def _valid(key: str, cookie: str) -> bool:
    expires, _, signature = cookie.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(signature.encode(), _sign(key, int(expires)).encode())


def allowed(key: str | None, request: Request) -> bool:
    """Whether `request` may see the dashboard: no key set, a valid session cookie, or the bearer key."""
    if not key:
        return True
    if _valid(key, request.cookies.get(COOKIE, "")):
        return True
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    return hmac.compare_digest(token.encode(), key.encode())


def _base(request: Request) -> str:
    """Where the dashboard is: ``/dashboard`` under the app's mount point."""
    return f"{request.scope.get('root_path', '')}/dashboard"


def _page(request: Request, name: str, status: int = 200, error: str = "") -> HTMLResponse:
    """A page of `STATIC` with its links under `_base` and the login's `error` (fixed text, no user data)."""
    html = (STATIC / name).read_text().replace("{{base}}", escape(_base(request))).replace("{{error}}", error)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _refused() -> ClientError:
    return ClientError(401, "log in at /dashboard first", code="invalid_api_key")


def _snapshot(state: State, ring: Ring) -> dict[str, object]:
    thresholds = {name: dict(t) for name, t in state.thresholds.items()}
    return {
        "boot": ring.boot, "seq": ring.seq, "keep": ring.size, "text": ring.text, "traits": ring.traits,
        "thresholds": thresholds, "entries": list(ring.entries), "stats": _stats(state, ring),
    }  # fmt: skip


def _stats(state: State, ring: Ring) -> dict[str, float]:
    engine = state.engine
    return {
        "time": time.time(), "requests": ring.requests, "tokens": ring.tokens,
        "queue": engine.waiting if engine else 0, "running": engine.running if engine else 0,
    }  # fmt: skip


def _event(wire: Wire, kind: str, data: object, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {wire.dumps(data, 'dashboard')}\n\n"


async def _events(state: State, ring: Ring, request: Request) -> AsyncIterator[str]:
    """The stream: missed entries (or a ``reset``: reload the list), then each new entry and the
    figures at a glance every `TICK_SECONDS`, for `STREAM_SECONDS`."""
    last = request.headers.get("last-event-id", "")
    boot, _, seq = last.partition(":")
    watcher = ring.watch()
    try:
        missed = ring.after(int(seq)) if boot == ring.boot and seq.isdigit() else None
        yield "retry: 1000\n\n"
        if missed is None:
            yield _event(state.wire, "reset", {"boot": ring.boot}, f"{ring.boot}:{ring.seq}")
        for entry in missed or []:
            yield _event(state.wire, "entry", entry, f"{ring.boot}:{entry['seq']}")
        end = time.monotonic() + STREAM_SECONDS
        while time.monotonic() < end and not await request.is_disconnected():
            yield _event(state.wire, "stats", _stats(state, ring))
            try:
                await asyncio.wait_for(watcher.wake.wait(), timeout=TICK_SECONDS)
            except asyncio.TimeoutError:
                continue
            watcher.wake.clear()
            if watcher.overflowed:
                watcher.overflowed = False
                yield _event(state.wire, "reset", {"boot": ring.boot}, f"{ring.boot}:{ring.seq}")
            while watcher.pending:
                entry = watcher.pending.popleft()
                yield _event(state.wire, "entry", entry, f"{ring.boot}:{entry['seq']}")
    finally:
        ring.unwatch(watcher)


def install(app: FastAPI, state: State) -> None:
    """Serve the dashboard on `app` (nothing when ``config.keep`` is 0)."""
    config = state.config
    if not config.keep:
        return
    ring = Ring(config.keep, config.keep_text or config.audit_text, [w.name for w in state.watched])
    state.ring = ring
    key = config.api_key
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")

    @app.get("/dashboard", include_in_schema=False)
    async def page(request: Request) -> Response:
        if not allowed(key, request):
            return _page(request, "login.html", 401)
        return _page(request, "dashboard.html")

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        given = (form.get("key") or [""])[0]
        if not key or not hmac.compare_digest(given.encode(), key.encode()):
            return _page(request, "login.html", 401, "wrong key" if key else "this server has no key")
        response = RedirectResponse(_base(request), status_code=303, headers=HEADERS)
        secure = request.url.scheme == "https"
        response.set_cookie(
            COOKIE, session_cookie(key), path=_base(request), httponly=True, samesite="strict", secure=secure
        )
        return response

    @app.get("/dashboard/api/recent", include_in_schema=False)
    async def recent(request: Request) -> Response:
        if not allowed(key, request):
            raise _refused()
        return state.wire.response(_snapshot(state, ring), headers=HEADERS, sink="dashboard")

    @app.get("/dashboard/api/requests/{seq}", include_in_schema=False)
    async def detail(seq: int, request: Request) -> Response:
        if not allowed(key, request):
            raise _refused()
        kept = ring.detail(seq)
        if kept is None:
            raise ClientError(404, f"request {seq} has no kept text (see --keep-text)", "not_found_error")
        return state.wire.response(kept, headers=HEADERS, sink="dashboard")

    @app.get("/dashboard/api/events", include_in_schema=False)
    async def events(request: Request) -> Response:
        if not allowed(key, request):
            raise _refused()
        headers = {**HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _events(state, ring, request), media_type="text/event-stream", headers=headers
        )
