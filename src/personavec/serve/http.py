"""HTTP plumbing shared by both modes: OpenAI-style errors, the body limit, the chat requests' ids and
their one record each, auth."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personavec.serve import protocol as p
from personavec.serve.wire import clean


class ClientError(HTTPException):
    """A request the server refuses: HTTP `status`, OpenAI error `kind`, `param` and `code`. (An
    HTTPException, so that FastAPI passes it through while it reads a body.)"""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(status, message, headers)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def __str__(self) -> str:
        return str(self.detail)

    def response(self) -> JSONResponse:
        body = clean(p.error_body(str(self), self.kind, self.param, self.code))[0]
        return JSONResponse(body, status_code=self.status, headers=self.headers)


INTERNAL = ClientError(500, "internal error; see the server's log", "server_error")  # what a failure answers


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(x) for x in loc if x != "body"]
    return "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in parts).lstrip(".")


def _validation_error(error: RequestValidationError) -> ClientError:
    first = error.errors()[0]
    where, kind = _loc(tuple(first.get("loc", ()))), first.get("type", "")
    if kind == "json_invalid":
        return ClientError(400, "the request body is not valid JSON")
    if kind == "extra_forbidden":
        return ClientError(
            400, f"unsupported field {where!r}: this server does not implement it", param=where
        )
    if where == "n":
        return ClientError(400, "only n=1 is supported", param="n")
    if kind == "missing":
        return ClientError(400, f"missing required field {where!r}", param=where)
    return ClientError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with a 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = ClientError(413, f"the request body exceeds {self.limit} bytes", code="body_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_big.response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_big
            return message

        await self.app(scope, counted, send)


CHAT = "/v1/chat/completions"
_CALL = "personavec.call"
_ERROR_BODY = 4096  # an error body longer than this is not read for its type
log = logging.getLogger("personavec.serve")


class ClientGone(Exception):
    """The client disconnected before its answer was complete: a 499, not an error."""


@dataclass
class Call:
    """One chat completion request as the server handles it: its id, when it came, the status it was
    answered with, the record its handler left (None: refused before one was made) and the type and
    message of the error it was answered with."""

    id: str
    start: float
    status: int | None = None
    record: Any = None
    error: tuple[str, str] | None = None


def call_of(request: Request) -> Call:
    """The `Call` of a chat completion request (set by `ChatRequests`)."""
    call = request.scope.get(_CALL)
    assert isinstance(call, Call), "the app was built without its ChatRequests middleware"
    return call


def _route(scope: Scope) -> str:
    """The request's path inside this app (without the prefix it is mounted at)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def _error_of(body: bytes) -> tuple[str, str] | None:
    try:
        error = json.loads(body)["error"]
        return str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return None


class ChatRequests:
    """Every chat completion request gets an id (also sent as ``X-Request-Id``) and, once it is over,
    whatever its outcome (answered, refused, failed, or left by its client), one call of `done`."""

    def __init__(self, app: ASGIApp, done: Callable[[Call], None]) -> None:
        self.app, self.done = app, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route(scope) != CHAT:
            await self.app(scope, receive, send)
            return
        call = scope[_CALL] = Call("chatcmpl-" + secrets.token_hex(12), time.monotonic())
        body = bytearray()
        settled = False

        def settle() -> None:  # once, before the client sees the end of the response
            nonlocal settled
            if not settled:
                settled = True
                call.status = 499 if call.status is None else call.status  # cancelled
                call.error = call.error or _error_of(bytes(body))
                self.done(call)

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                call.status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", call.id.encode())],
                }
            elif message["type"] == "http.response.body":
                if (call.status or 0) >= 400 and len(body) < _ERROR_BODY:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    settle()
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except (ClientGone, ClientDisconnect):
            call.status = 499  # logged by `done`, as one line
        except Exception as error:
            if call.status is not None:  # mid-response: the ASGI server ends the connection
                raise
            call.status, call.error = 500, ("server_error", f"{type(error).__name__}; see the server's log")
            # answered and logged here: re-raised, some ASGI servers (uvicorn on uvloop) reset the
            # connection, and a keep-alive client's next request on it fails
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=error)
            await INTERNAL.response()(scope, receive, watched)
        finally:
            settle()


def authorise(key: str | None, request: Request) -> None:
    """Raise a 401 unless the request carries ``Authorization: Bearer <key>`` (when a key is set)."""
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ClientError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers with OpenAI's error body; an unexpected one is a 500 without a traceback."""

    async def client(_request: Request, error: Exception) -> Response:
        assert isinstance(error, ClientError)
        return error.response()

    async def invalid(_request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return _validation_error(error).response()

    async def http(_request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return ClientError(error.status_code, str(error.detail), kind).response()

    async def internal(_request: Request, _error: Exception) -> Response:
        return INTERNAL.response()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ClientError: client, RequestValidationError: invalid, HTTPException: http, Exception: internal,
    }  # fmt: skip
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
