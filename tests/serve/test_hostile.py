"""``personavec serve`` under hostile and careless clients, on a tiny model served by uvicorn in a thread:
generated requests never reach a 5xx, every chat request leaves one audit line, gone clients free their
place, nothing non-finite is written, a disconnect is one log line, and ``logprobs`` are answered.

The model's forward can be held (the worker blocks until released), made to fail, or made to produce
NaN, so that every outcome is reached on purpose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openai_server import FakeOpenAI
from personavec.core.layers import find_blocks
from personavec.core.models import LoadedModel
from personavec.core.vectors import PersonaVector
from personavec.serve.app import build_app
from personavec.serve.config import MAX_COEF, MAX_THRESHOLD, Limits, ServeConfig
from personavec.serve.state import State

from server import KEY, threaded
from tiny import tiny_loaded

MODEL = "tiny-llama"
MARKER = "zebra-marker-in-the-prompt"  # prompt text that must not reach the audit log


@dataclass
class Rig:
    """A running server and the switches on its model's forward."""

    url: str
    state: State
    loaded: LoadedModel
    audit: Path
    hold: threading.Event = field(default_factory=threading.Event)  # set: forwards wait for `go`
    go: threading.Event = field(default_factory=threading.Event)
    fail: bool = False
    nan: bool = False

    def client(self, key: str | None = KEY, timeout: float = 60) -> httpx.Client:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @contextlib.contextmanager
    def held(self) -> Iterator[ThreadPoolExecutor]:
        """Forwards wait until `go` is set or the block ends; yields a pool for the clients."""
        self.hold.set()
        self.go.clear()
        pool = ThreadPoolExecutor(6)
        try:
            yield pool
        finally:
            self.hold.clear()
            self.go.set()
            pool.shutdown(wait=True)

    @contextlib.contextmanager
    def failing(self) -> Iterator[None]:
        """Every forward raises while the block runs."""
        self.fail = True
        try:
            yield
        finally:
            self.fail = False

    def lines(self) -> list[dict[str, Any]]:
        return [_strict(line) for line in self.audit.read_text().splitlines()] if self.audit.exists() else []

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.client().get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


def _strict(text: str | bytes) -> Any:
    """JSON as the standard defines it: NaN and Infinity refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"non-JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _switches(rig: Rig) -> list[Any]:
    """The hooks behind `hold`, `fail` and `nan`."""

    def before(_module: Any, _args: Any) -> None:
        if rig.hold.is_set():
            rig.go.wait(timeout=60)
        if rig.fail:
            raise RuntimeError("injected failure")

    def poison(_module: Any, _args: Any, output: Any) -> Any:
        if not rig.nan:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden * float("nan")
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    first = find_blocks(rig.loaded.model).layers[0]  # every path runs it: generation and scoring prefills
    return [first.register_forward_pre_hook(before), first.register_forward_hook(poison)]


def _vector(loaded: LoadedModel) -> PersonaVector:
    generator = torch.Generator().manual_seed(0)
    tensor = torch.randn(loaded.identity.n_layers + 1, loaded.identity.hidden_size, generator=generator)
    return PersonaVector("opt", tensor, layer=2, metadata={"model": loaded.identity.to_dict()})


VECTORS = (("opt", "opt.safetensors"),)
FIXED = (("opt", "prompt_last", 0.0), ("opt", "response_avg", 0.0))
LIMITS = Limits(max_tokens=4, max_batch=2, max_queue=1, max_body_bytes=20_000, request_timeout=6.0)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("hostile")
    loaded = tiny_loaded()
    audit = str(folder / "audit.jsonl")
    config = ServeConfig(VECTORS, api_key=KEY, thresholds=FIXED, audit=audit, limits=LIMITS)
    app = build_app(loaded, {"opt": _vector(loaded)}, config)
    with threaded(app) as url:
        running = Rig(url, app.state.persona, loaded, folder / "audit.jsonl")
        hooks = _switches(running)
        yield running
        running.go.set()
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module")
def upstream_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, FakeOpenAI]]:
    folder = tmp_path_factory.mktemp("hostile-upstream")
    loaded = tiny_loaded()
    with FakeOpenAI(lambda body: ("An answer.", None), hang=3.0) as engine:
        config = ServeConfig(
            VECTORS, api_key=KEY, thresholds=FIXED, audit=str(folder / "audit.jsonl"), limits=LIMITS,
            upstream=engine.url, upstream_model="engine-model", upstream_timeout=1.0,
        )  # fmt: skip
        app = build_app(loaded, {"opt": _vector(loaded)}, config)
        with threaded(app) as url:
            running = Rig(url, app.state.persona, loaded, folder / "audit.jsonl")
            hooks = _switches(running)
            yield running, engine
            for hook in hooks:
                hook.remove()


def _hi(**fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"hi {MARKER}"}],
        "max_tokens": 2,
        **fields,
    }


def _check(response: httpx.Response) -> None:
    """2xx with strict JSON (every SSE event too), or a 4xx with OpenAI's error body; never a 5xx."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = _strict(response.content)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] in ("[DONE]",) or "error" in _strict(events[-1]), events[-3:]
        for event in events[:-1]:
            _strict(event)
    else:
        _strict(response.content)


# --- generated requests ---------------------------------------------------------------------------------

_EDGE_INTS = [0, 1, -1, 2, 4, 5, 20, 21, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]
_EDGE_FLOATS = [
    0.0,
    -0.0,
    1.0,
    2.0,
    2.0000001,
    1e-300,
    1e308,
    -1e308,
    MAX_COEF,
    MAX_COEF * 1.0001,
    MAX_THRESHOLD,
]
_EDGE_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ud83d\ude00",
    "é",
    "<|im_end|>",
    "x" * 3000,
    MARKER,
]
_texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(_EDGE_TEXT),
    st.lists(st.sampled_from(_EDGE_TEXT), max_size=3).map("".join),
)
_ints = st.one_of(st.integers(-4, 8), st.sampled_from(_EDGE_INTS), st.integers(-(2**70), 2**70))
_floats = st.one_of(
    st.floats(0, 2), st.sampled_from(_EDGE_FLOATS), st.floats(allow_nan=True, allow_infinity=True)
)
_junk = st.one_of(
    st.none(), st.booleans(), _ints, _floats, _texts, st.just([None]), st.just({"a": None}), st.just([])
)


def _or_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `strategy`; sometimes a value of another type, a null or an edge value."""
    return st.one_of(strategy, strategy, strategy, _junk)


_content = _or_junk(
    st.one_of(
        _texts,
        st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _or_junk(_texts)}), max_size=2),
    )
)
_message = st.fixed_dictionaries(
    {
        "role": _or_junk(st.sampled_from(["system", "developer", "user", "assistant", "tool", ""])),
        "content": _content,
    },
    optional={"name": _or_junk(_texts)},
)
_steer = st.fixed_dictionaries(
    {"vector": _or_junk(st.sampled_from(["opt", "nope"])), "coef": _or_junk(_floats)}
)
_guard = st.fixed_dictionaries(
    {"vector": _or_junk(st.just("opt")), "coef": _or_junk(_floats)},
    optional={"threshold": _or_junk(_floats), "per_token": _or_junk(st.booleans())},
)
_persona = st.fixed_dictionaries(
    {},
    optional={
        "trace": _or_junk(st.booleans()),
        "steer": _or_junk(st.lists(_steer, max_size=2)),
        "guard": _or_junk(_guard),
    },
)
OPTIONAL = {
    "max_tokens": _or_junk(_ints),
    "max_completion_tokens": _or_junk(_ints),
    "temperature": _or_junk(_floats),
    "top_p": _or_junk(_floats),
    "seed": _or_junk(_ints),
    "stop": _or_junk(st.one_of(_texts, st.lists(_texts, max_size=5))),
    "stream": _or_junk(st.booleans()),
    "stream_options": _or_junk(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "n": _or_junk(_ints),
    "user": _or_junk(_texts),
    "logprobs": _or_junk(st.booleans()),
    "top_logprobs": _or_junk(_ints),
    "persona": _or_junk(_persona),
    "frequency_penalty": _floats,
}
REQUESTS = st.fixed_dictionaries(
    {"model": _or_junk(st.just(MODEL)), "messages": _or_junk(st.lists(_message, min_size=1, max_size=3))},
    optional=OPTIONAL,
)
FUZZ = settings(
    max_examples=250,
    derandomize=True,  # seeded: the same requests on every run
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


LOCAL = {
    "model": MODEL,
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "seed": 1, "stop": ["\n\n"], "user": "u",
    "logprobs": True, "top_logprobs": 2, "stream": False, "stream_options": {"include_usage": True},
    "persona": {"trace": True, "steer": [{"vector": "opt", "coef": 1.0}],
                "guard": {"vector": "opt", "coef": 1.0, "threshold": 0.0, "per_token": True}},
}  # fmt: skip
"""A request the local server answers (200), every field set: the one-bad-field requests start here."""
UPSTREAM = {
    **{k: v for k, v in LOCAL.items() if k not in ("logprobs", "top_logprobs")},
    "persona": {"trace": True},
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field of `value`, containers and leaves, as key paths."""
    children: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    return [path for key, item in children for path in [(*prefix, key), *_paths(item, (*prefix, key))]]


def _replaced(body: dict[str, Any], path: tuple[Any, ...], new: Any, stream: bool) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    *parents, last = path
    target = out
    for key in parents:
        target = target[key]
    target[last] = new
    return {**out, "stream": stream} if path != ("stream",) else out


def _at(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def _edges(original: Any) -> list[Any]:
    """The values at and beyond the bounds of `original`'s type (string, integer or float)."""
    if isinstance(original, str):
        return _EDGE_TEXT
    if isinstance(original, int) and not isinstance(original, bool):
        return _EDGE_INTS
    if isinstance(original, float):
        return [*_EDGE_FLOATS, float("nan"), float("inf"), -float("inf")]
    return []


def _fuzz(rig: Rig, body: dict[str, Any]) -> None:
    with rig.client() as client:
        _check(client.post("/v1/chat/completions", content=json.dumps(body)))


@pytest.mark.parametrize("mode", ["local", "upstream"])
@FUZZ
@given(data=st.data())
def test_generated_requests_never_reach_a_5xx(
    rig: Rig, upstream_rig: Any, mode: str, data: st.DataObject
) -> None:
    """Requests hostile anywhere (most are refused early)."""
    body = data.draw(REQUESTS)
    if mode == "upstream" and isinstance(body.get("persona"), dict):
        body = {**body, "persona": {"trace": True}}  # steering is refused upstream: reach further
    _fuzz(rig if mode == "local" else upstream_rig[0], body)


FIELDS = [("local", path) for path in _paths(LOCAL)] + [("upstream", path) for path in _paths(UPSTREAM)]
FIELD_IDS = [f"{mode}:{'.'.join(map(str, path))}" for mode, path in FIELDS]


@pytest.mark.parametrize(("mode", "path"), FIELDS, ids=FIELD_IDS)
def test_every_field_at_and_beyond_its_bounds_never_reaches_a_5xx(
    rig: Rig, upstream_rig: Any, mode: str, path: tuple[Any, ...]
) -> None:
    """A request the server answers, with this one field at each edge of its type, streamed or not."""
    template = LOCAL if mode == "local" else UPSTREAM
    for value in _edges(_at(template, path)):
        for stream in (False, True):
            _fuzz(rig if mode == "local" else upstream_rig[0], _replaced(template, path, value, stream))


@pytest.mark.parametrize(("mode", "path"), FIELDS, ids=FIELD_IDS)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_every_field_of_another_type_never_reaches_a_5xx(
    rig: Rig, upstream_rig: Any, mode: str, path: tuple[Any, ...], data: st.DataObject
) -> None:
    """The same with generated values of any type: nulls, wrong types, nested junk."""
    template = LOCAL if mode == "local" else UPSTREAM
    body = _replaced(template, path, data.draw(_junk), data.draw(st.booleans()))
    _fuzz(rig if mode == "local" else upstream_rig[0], body)


def test_the_fuzzed_templates_are_answered(rig: Rig, upstream_rig: tuple[Rig, FakeOpenAI]) -> None:
    for server, body in ((rig, LOCAL), (upstream_rig[0], UPSTREAM)):
        for stream in (False, True):
            with server.client() as client:
                answer = client.post("/v1/chat/completions", json={**body, "stream": stream})
                assert answer.status_code == 200, answer.text
                _check(answer)


@pytest.mark.parametrize("mode", ["local", "upstream"])
def test_the_500s_found_are_4xx_or_answered(rig: Rig, upstream_rig: Any, mode: str) -> None:
    server = rig if mode == "local" else upstream_rig[0]
    with server.client() as client:
        huge = client.post("/v1/chat/completions", json=_hi(seed=2**64))
        assert huge.status_code == 400 and huge.json()["error"]["param"] == "seed"
        lone = client.post(
            "/v1/chat/completions",
            content=json.dumps(_hi(messages=[{"role": "user", "content": "a\ud800b"}])),
        )
        assert lone.status_code == 200, lone.text
        tiny, greedy = (
            client.post("/v1/chat/completions", json=_hi(temperature=t, max_tokens=4)) for t in (1e-300, 0)
        )
        assert tiny.status_code == 200, tiny.text  # logits / 1e-300 overflowed to NaN: now greedy
        assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
        assert client.post("/v1/chat/completions", json=_hi()).status_code == 200


def test_coefficients_and_thresholds_are_bounded(rig: Rig) -> None:
    steer = {"persona": {"steer": [{"vector": "opt", "coef": MAX_COEF}]}}
    with rig.client() as client:
        assert client.post("/v1/chat/completions", json=_hi(**steer)).status_code == 200
        for persona, param in [
            ({"steer": [{"vector": "opt", "coef": MAX_COEF * 1.001}]}, "persona.steer[0].coef"),
            ({"steer": [{"vector": "opt", "coef": -1e30}]}, "persona.steer[0].coef"),
            ({"guard": {"vector": "opt", "coef": MAX_COEF * 1.001}}, "persona.guard.coef"),
            (
                {"guard": {"vector": "opt", "coef": 1.0, "threshold": MAX_THRESHOLD * 1.001}},
                "persona.guard.threshold",
            ),
        ]:
            answer = client.post("/v1/chat/completions", json=_hi(persona=persona))
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
        nan = client.post(
            "/v1/chat/completions",
            content=json.dumps(_hi(persona={"steer": [{"vector": "opt", "coef": float("nan")}]})),
        )
        assert nan.status_code == 400


# --- every request audited, gone clients, logs --------------------------------------------------------


def _in_thread(pool: ThreadPoolExecutor, rig: Rig, body: dict[str, Any], timeout: float = 60) -> Any:
    def send() -> int:
        with rig.client(timeout=timeout) as client:
            try:
                return client.post("/v1/chat/completions", json=body).status_code
            except httpx.ReadTimeout:
                return 499  # we left

    return pool.submit(send)


def _wait(condition: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_every_chat_request_leaves_one_audit_line(rig: Rig, upstream_rig: tuple[Rig, FakeOpenAI]) -> None:
    before = len(rig.lines())
    engine = rig.state.engine
    assert engine is not None
    sent: list[int] = []
    with rig.client() as client:
        for body, status in [
            (_hi(), 200), (_hi(temperature="hot"), 400), (_hi(model="other"), 404),
            (_hi(persona={"steer": [{"vector": "nope", "coef": 1}]}), 400),
            (_hi(messages=[{"role": "user", "content": "x" * 30_000}]), 413),
        ]:  # fmt: skip
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == status
            assert rig.lines()[-1]["id"] == answer.headers["x-request-id"]  # written before the answer ended
            sent.append(status)
        with client.stream("POST", "/v1/chat/completions", json=_hi(stream=True)) as stream:
            assert stream.read().decode().rstrip().endswith("[DONE]")
        sent.append(200)  # a streamed answer
        ids = [answer.headers["x-request-id"]]
        with rig.client(key=None) as anonymous:
            assert anonymous.post("/v1/chat/completions", json=_hi()).status_code == 401
        sent.append(401)
        for path in ("/metrics", "/health", "/ready", "/v1/models", "/dashboard/api/recent"):
            assert client.get(path).status_code == 200  # no line for these
        with rig.failing():
            assert client.post("/v1/chat/completions", json=_hi()).status_code == 500
            with client.stream("POST", "/v1/chat/completions", json=_hi(stream=True)) as stream:
                events = [
                    _strict(line[6:]) for line in stream.read().decode().splitlines() if line[6:7] == "{"
                ]
            assert events[-1]["error"]["type"] == "server_error"  # a failure mid-stream: an error event
        sent += [500, 500]
    # held worker: A runs, three wait (2 + 1), the next is refused; one leaves, the others time out
    with rig.held() as pool:
        running = _in_thread(pool, rig, _hi())
        _wait(lambda: engine.running == 1)
        leaving = _in_thread(pool, rig, _hi(), timeout=1.0)
        waiting = [_in_thread(pool, rig, _hi()) for _ in range(2)]
        _wait(lambda: engine.waiting == 3)
        with rig.client() as client:
            assert client.post("/v1/chat/completions", json=_hi()).status_code == 429
        statuses = [running.result(), leaving.result(), *(w.result() for w in waiting)]
    assert sorted(statuses) == [499, 504, 504, 504]
    sent += [429, 499, 504, 504, 504]
    _wait(lambda: len(rig.lines()) - before == len(sent))
    lines = rig.lines()[before:]
    assert Counter(line["status"] for line in lines) == Counter(sent)
    assert len({line["id"] for line in lines}) == len(lines) and ids[0] in {line["id"] for line in lines}
    assert all(line["error_type"] for line in lines if line["status"] >= 400), lines
    assert all("error_type" not in line for line in lines if line["status"] == 200)
    assert KEY not in rig.audit.read_text()
    assert MARKER not in json.dumps(lines)  # no prompt text without --audit-text
    # upstream mode: an engine that fails (502) or does not answer in time (504), a scoring that fails
    server, engine_ = upstream_rig
    before = len(server.lines())
    engine_.faults += ["500", "timeout"]
    with server.client() as client:
        assert [client.post("/v1/chat/completions", json=_hi()).status_code for _ in range(2)] == [502, 504]
        with server.failing():
            assert client.post("/v1/chat/completions", json=_hi()).status_code == 500
    lines = server.lines()[before:]
    assert [line["status"] for line in lines] == [502, 504, 500] and all(line["error_type"] for line in lines)


def test_gone_clients_free_their_place_at_once(rig: Rig) -> None:
    engine = rig.state.engine
    assert engine is not None
    with rig.held() as pool:
        running = _in_thread(pool, rig, _hi())
        _wait(lambda: engine.running == 1)
        burst = [_in_thread(pool, rig, _hi(), timeout=0.5) for _ in range(3)]  # they all leave
        assert [f.result() for f in burst] == [499] * 3
        _wait(lambda: engine.waiting == 0, seconds=3)
        late = _in_thread(pool, rig, _hi())
        _wait(lambda: engine.waiting == 1 or late.done(), seconds=3)
        assert not late.done()  # admitted: it waits for the held batch, not refused
        rig.go.set()
        assert late.result() == 200 and running.result() == 200


class _Lines(logging.Handler):
    """The records of the server's own logger and uvicorn's error logger, whatever logging configuration
    an earlier test left (uvicorn's own stops them reaching the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _Lines:
        for name in ("personavec", "uvicorn.error"):
            self.levels[name] = logging.getLogger(name).level
            logging.getLogger(name).addHandler(self)
            logging.getLogger(name).setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).removeHandler(self)
            logging.getLogger(name).setLevel(level)


def test_a_disconnect_is_one_info_line_and_a_failure_a_traceback(rig: Rig) -> None:
    with _Lines() as lines:
        with rig.held() as pool:
            assert _in_thread(pool, rig, _hi(), timeout=0.5).result() == 499
            _wait(lambda: any("client left" in r.getMessage() for r in lines.records), seconds=5)
        time.sleep(0.5)
        left = [r for r in lines.records if "client left" in r.getMessage()]
        assert len(left) == 1 and left[0].levelno == logging.INFO and left[0].exc_info is None, left
        assert not [r for r in lines.records if r.levelno >= logging.ERROR]
        with rig.failing(), rig.client() as client:
            assert client.post("/v1/chat/completions", json=_hi()).status_code == 500
        _wait(
            lambda: any(r.levelno >= logging.ERROR for r in lines.records), seconds=5
        )  # logged after the 500
        crashes = [r for r in lines.records if r.levelno >= logging.ERROR]
    assert crashes and crashes[0].exc_info is not None and "injected failure" in str(crashes[0].exc_info[1])


# --- nothing non-finite --------------------------------------------------------------------------------


def test_non_finite_figures_become_null_in_every_sink(rig: Rig) -> None:
    sinks = ("response", "stream", "audit", "dashboard")
    before = {sink: rig.metric("personavec_nonfinite_values_total", sink=sink) for sink in sinks}
    rig.nan = True
    try:
        with rig.client() as client:
            reply = client.post("/v1/chat/completions", json=_hi(temperature=0))
            _check(reply)
            figures = reply.json()["persona"]["vectors"]["opt"]
            assert figures["prompt_last"] is None and figures["response_avg"] is None
            with client.stream(
                "POST", "/v1/chat/completions", json=_hi(temperature=0, stream=True, persona={"trace": True})
            ) as stream:
                events = [
                    line[6:] for line in stream.read().decode().splitlines() if line.startswith("data: {")
                ]
            tokens = [t for e in map(_strict, events) for t in (e.get("persona") or {}).get("tokens", [])]
            assert tokens and all(t["projections"]["opt"] is None for t in tokens)
            recent = client.get("/dashboard/api/recent")
            assert (
                recent.status_code == 200
                and _strict(recent.content)["entries"][-1]["traits"]["opt"]["prompt_last"] is None
            )
            with client.stream("GET", "/dashboard/api/events") as events_stream:
                for line in events_stream.iter_lines():
                    if line.startswith("data: ") and '"stats"' not in line:
                        _strict(line[6:])
                    if line.startswith("event: entry") or line.startswith("event: reset"):
                        break
    finally:
        rig.nan = False
    assert rig.lines()[-1]["persona"]["opt"]["response_avg"] is None  # the audit line, read strictly
    for sink in ("response", "stream", "audit", "dashboard"):
        assert rig.metric("personavec_nonfinite_values_total", sink=sink) > before[sink], sink


# --- logprobs ------------------------------------------------------------------------------------------


def test_logprobs_as_openai_defines_them(rig: Rig) -> None:
    client = openai.OpenAI(base_url=rig.url + "/v1", api_key=KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "How do I bake bread?"}]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert reply.usage is not None and len(content) == reply.usage.completion_tokens == 4
    assert "".join(t.token for t in content).strip() == reply.choices[0].message.content.strip()
    for token in content:
        assert (
            len(token.top_logprobs) == 3 and token.top_logprobs[0].logprob >= token.logprob
        )  # greedy: the top one
        assert token.bytes == list(token.token.encode())
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            stream=True,
        )
    )
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert plain.choices[0].logprobs is None
    for bad in ({"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, **bad)


def test_upstream_logprobs_are_refused_when_the_engine_has_none(upstream_rig: tuple[Rig, FakeOpenAI]) -> None:
    server, engine = upstream_rig
    server.state.upstream_logprobs = None
    with server.client() as client:
        refused = client.post("/v1/chat/completions", json=_hi(logprobs=True))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"
        engine.reply = lambda body: ("An answer.", [("An", -0.1)])  # an engine that returns them
        server.state.upstream_logprobs = None
        answered = client.post("/v1/chat/completions", json=_hi(logprobs=True, top_logprobs=1))
        assert answered.status_code == 200 and answered.json()["choices"][0]["logprobs"]["content"]
        assert engine.requests[-1]["logprobs"] is True and engine.requests[-1]["top_logprobs"] == 1
    engine.reply = lambda body: ("An answer.", None)
