"""The judge's probe: one request before any expensive work; a failure is one line naming the endpoint,
the model, the cause and the fix; only what may pass (429, 5xx, timeouts) is retried."""

from __future__ import annotations

import time

import pytest

from openai_server import FakeOpenAI, closed_port, judge_reply
from personavec.errors import JudgeError
from personavec.judges.lexicon import LexiconJudge
from personavec.judges.openai_compat import OpenAIJudge


@pytest.fixture
def key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def judge_at(url: str, **kwargs) -> OpenAIJudge:
    return OpenAIJudge("judge-model", base_url=url, timeout=2.0, **{"backoff": 0.01, **kwargs})


def test_a_working_judge_costs_one_request_however_often_probed(key) -> None:
    with FakeOpenAI(judge_reply) as server:
        judge = judge_at(server.url)
        judge.probe()
        judge.probe()
    assert len(server.requests) == 1
    request = server.requests[0]  # shaped like a judgement
    assert (request["model"], request["max_tokens"], request["logprobs"]) == ("judge-model", 1, True)


@pytest.mark.parametrize(
    ("status", "fix"),
    [
        ("400", "check the model name"),
        ("401", "bad API key: check OPENAI_API_KEY"),
        ("403", "may not use this model"),
        ("404", "unknown model or a wrong path"),
    ],
)
def test_a_status_no_retry_can_fix_fails_after_one_request(key, status: str, fix: str) -> None:
    with FakeOpenAI(judge_reply) as server:
        server.faults = [status] * 10
        judge = judge_at(server.url, backoff=5.0)  # a retry would sleep seconds
        started = time.perf_counter()
        with pytest.raises(JudgeError) as raised:
            judge.probe()
    message = str(raised.value)
    assert len(server.requests) == 1 and time.perf_counter() - started < 2
    said = " (injected)" if status == "400" else ""  # a 400 quotes the server's message: what was wrong
    assert f"{server.url}/ (model judge-model)" in message and f"HTTP {status}{said};" in message
    assert fix in message and "\n" not in message and "retries" not in message


def test_a_refused_connection_fails_at_once(key) -> None:
    judge = judge_at(f"http://127.0.0.1:{closed_port()}/v1", backoff=5.0)
    started = time.perf_counter()
    with pytest.raises(
        JudgeError,
        match=r"127\.0\.0\.1:\d+/v1/ \(model judge-model\).*connection refused; is the server running, "
        r"and base_url right\?$",  # the library's word; the command line writes --base-url
    ):
        judge.probe()
    assert time.perf_counter() - started < 2  # no retry (each would sleep seconds)
    assert not judge.probed


@pytest.mark.parametrize("fault", ["429", "500", "503", "timeout"])
def test_what_may_pass_is_retried_until_it_does(key, fault: str) -> None:
    with FakeOpenAI(judge_reply, hang=1.0) as server:
        server.faults = [fault] * 2
        judge = judge_at(server.url, retries=3)
        judge.client = judge.client.with_options(timeout=0.3)
        judge.probe()
    assert len(server.requests) == 3 and judge.probed


@pytest.mark.parametrize(("fault", "cause"), [("500", "HTTP 500"), ("429", "HTTP 429"), ("garbage", "")])
def test_what_keeps_failing_is_one_line_after_the_retries(key, fault: str, cause: str) -> None:
    with FakeOpenAI(judge_reply) as server:
        server.faults = [fault] * 10
        with pytest.raises(JudgeError, match=f"{cause}.* after 2 retries; ") as raised:
            judge_at(server.url, retries=2).probe()
    assert len(server.requests) == 3 and "\n" not in str(raised.value)


def test_a_reply_without_choices_fails_the_probe(key) -> None:
    with FakeOpenAI(judge_reply) as server:
        server.faults = ["empty"] * 3
        with pytest.raises(JudgeError, match="without choices after 1 retries"):
            judge_at(server.url, retries=1).probe()
    assert len(server.requests) == 2


def test_a_judge_without_an_endpoint_has_nothing_to_probe() -> None:
    LexiconJudge("optimistic", "positive").probe()  # no error, no request
