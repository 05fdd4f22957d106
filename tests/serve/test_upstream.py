"""Upstream mode against a real engine: llama.cpp's OpenAI-compatible server (llama-cpp-python[server])
serving the bundled GGUF, with ``personavec serve --upstream`` in front of it, driven by the openai SDK.

Under CI (``CI=true``) a missing llama.cpp build fails these tests; elsewhere they skip, naming the
command that builds it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from openai_server import closed_port
from personavec.cli import main
from personavec.core.models import LoadedModel, format_chat
from personavec.core.vectors import load_vector
from personavec.deploy.monitor import project

from llama import ALIAS, llama_server, require_llama
from server import KEY, Server, random_vectors, start

TOL = 1e-3

require_llama()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("upstream")
    return {**random_vectors(folder), "audit": folder / "audit.jsonl", "folder": folder}


@pytest.fixture(scope="module")
def engine(files: dict[str, Path]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with llama_server(files["folder"] / "llama.log") as running:
        yield running


def _args(files: dict[str, Path], url: str, *extra: str) -> list[str]:
    thresholds = [
        "--threshold",
        "opt.prompt_last=-1000",
        "--threshold",
        "opt.response_avg=1000",
        "--threshold",
        "evil.prompt_last=1000",
        "--threshold",
        "evil.response_avg=-1000",
    ]
    return [
        "--vector",
        f"opt={files['opt']}",
        "--vector",
        f"evil={files['evil']}",
        "--upstream",
        url,
        "--upstream-model",
        ALIAS,
        *thresholds,
        *extra,
    ]


@pytest.fixture(scope="module")
def server(files: dict[str, Path], engine: tuple[str, Any]) -> Iterator[Server]:
    running = start(_args(files, engine[0], "--audit", str(files["audit"])), files["folder"] / "serve.log")
    yield running
    running.stop()


def _ask(client: openai.OpenAI, question: str, **kwargs: Any) -> Any:
    # llama.cpp's own sampler defaults differ from OpenAI's: send them explicitly
    sampler = {"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.0}
    return client.chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=16,
        extra_body={**sampler, **kwargs.pop("extra_body", {})},
        **kwargs,
    )


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def test_the_start_up_checks_the_tokenisation(server: Server) -> None:
    log = server.log.read_text()
    assert "the same tokens as here" in log or "other tokens than the local template" in log


def test_a_forwarded_answer_is_scored_by_prefill(
    client: openai.OpenAI, smollm2: LoadedModel, files: Any
) -> None:
    reply = _ask(client, "Tell me about cats.")
    content = reply.choices[0].message.content
    assert content and reply.model == ALIAS and reply.usage.completion_tokens > 0
    prompt = format_chat(smollm2.tokenizer, [{"role": "user", "content": "Tell me about cats."}])
    figures = reply.model_extra["persona"]["vectors"]
    for name in ("opt", "evil"):
        vector = load_vector(files[name])
        last = float(project(smollm2, [vector], [prompt], progress=False))
        avg = float(project(smollm2, [vector], [prompt], [content], "response-avg", progress=False))
        assert abs(figures[name]["prompt_last"] - last) <= TOL * (1 + abs(last))
        assert abs(figures[name]["response_avg"] - avg) <= TOL * (1 + abs(avg))
        assert figures[name]["token_max"] is None and figures[name]["steered"] is None
    assert figures["opt"]["predicted"] is True and figures["evil"]["flagged"] is True
    assert figures["evil"]["predicted"] is False and figures["opt"]["flagged"] is False


def test_a_stream_is_relayed_then_scored(
    client: openai.OpenAI, server: Server, smollm2: LoadedModel, files: Any
) -> None:
    chunks = list(_ask(client, "What is rain?", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and any(c.choices and c.choices[0].finish_reason for c in chunks)
    summary = chunks[-1]
    assert summary.choices == [] and set(summary.model_extra["persona"]["vectors"]) == {"opt", "evil"}
    # the relayed text is the text scored (llama.cpp's answers vary between calls, so no second call)
    prompt = format_chat(smollm2.tokenizer, [{"role": "user", "content": "What is rain?"}])
    avg = float(
        project(smollm2, [load_vector(files["evil"])], [prompt], [text], "response-avg", progress=False)
    )
    assert abs(summary.model_extra["persona"]["vectors"]["evil"]["response_avg"] - avg) <= TOL * (
        1 + abs(avg)
    )
    raw = server.stream({"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert raw.getheader("X-Persona-Predicted") == "opt"  # --on-flag annotate (the default)
    assert raw.read().decode().rstrip().endswith("data: [DONE]")


def test_tools_and_other_fields_reach_the_engine(client: openai.OpenAI) -> None:
    reply = _ask(client, "Say yes.", extra_body={"logit_bias": {}, "presence_penalty": 0.0})
    assert reply.choices[0].message.content is not None


def test_steering_is_refused_upstream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="measure but not steer"):
        _ask(client, "Hi", extra_body={"persona": {"steer": [{"vector": "evil", "coef": -1}]}})


def test_on_flag_refuse_answers_content_filter_without_forwarding(
    files: Any, engine: tuple[str, Any]
) -> None:
    refusing = start(_args(files, engine[0], "--on-flag", "refuse"), files["folder"] / "refuse.log")
    try:
        status, _, reply = refusing.request(
            "POST", "/v1/chat/completions", {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}]}
        )
        assert status == 200 and reply["choices"][0]["finish_reason"] == "content_filter"
        assert reply["choices"][0]["message"]["content"] == "" and "opt" in reply["persona"]["refused"]
        assert reply["usage"]["completion_tokens"] == 0
    finally:
        refusing.stop()


def test_a_wrong_upstream_model_or_a_dead_upstream_fails_at_start(
    files: Any, engine: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["serve", "--model", "smollm2", "--vector", f"opt={files['opt']}", "--port", str(closed_port())]
    assert main([*base, "--upstream", engine[0], "--upstream-model", "gpt-4"]) == 2
    assert ALIAS in capsys.readouterr().err
    start_t = time.monotonic()
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    assert main([*base, "--upstream", dead, "--upstream-model", ALIAS]) == 2
    assert "does not answer" in capsys.readouterr().err and time.monotonic() - start_t < 15


def test_a_client_leaving_a_relayed_stream_is_logged(server: Server, files: Any) -> None:
    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 300,
    }
    response = server.stream(body)
    assert response.readline().startswith(b"data: ")
    response.close()  # gone mid-stream: the relay stops the engine's generation and logs a 499
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        last = json.loads(files["audit"].read_text().splitlines()[-1])
        if last["status"] == 499:
            break
        time.sleep(0.2)
    assert last["status"] == 499


def test_the_upstream_going_away_mid_stream(server: Server, engine: tuple[str, Any], files: Any) -> None:
    response = server.stream(
        {
            "model": ALIAS,
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 500,
            "top_k": 1,
        }
    )
    assert response.readline().startswith(b"data: ")
    engine[1].kill()
    engine[1].wait()
    events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    last = json.loads(events[-1][6:])
    assert "error" in last and "mid-stream" in last["error"]["message"]
    status, _, answer = server.request(
        "POST", "/v1/chat/completions", {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert status == 502 and "does not answer" in answer["error"]["message"]
    statuses = [json.loads(line)["status"] for line in files["audit"].read_text().splitlines()]
    assert statuses[-2:] == [502, 502]
