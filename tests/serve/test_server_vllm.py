"""``personavec serve --backend vllm``: the same server on vLLM's CPU build, in a subprocess, driven by
the openai SDK; its answers, persona figures, steering, streams and metrics held to the library on the
transformers backend in this process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from personavec.core.generate import generate
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector, load_vector
from personavec.deploy.monitor import project
from vllm_engine import SMALL, cpu_kv_cache, require_vllm

from server import KEY, Server, ask, chat_prompt, metric_value, near, random_vectors, start

require_vllm()

QUESTIONS = ["Tell me about cats.", "How do I bake bread?", "What is rain?", "Describe the sea."]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve-vllm")
    return {**random_vectors(folder), "log": folder / "server.log"}


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[Server]:
    engine = [a for key, value in SMALL.items() for a in ("--vllm-arg", f"{key}={value}")]
    args = [
        "--vector", f"opt={files['opt']}", "--vector", f"evil={files['evil']}", "--name", "small",
        "--threshold", "opt.prompt_last=0", "--threshold", "opt.response_avg=0",
        "--threshold", "evil.prompt_last=0", "--threshold", "evil.response_avg=0",
        "--max-batch", "8", "--max-tokens", "64", "--backend", "vllm", *engine,
    ]  # fmt: skip
    cpu_kv_cache()  # the server's process inherits it
    running = start(args, files["log"], wait_ready=True)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def vectors(files: dict[str, Path]) -> dict[str, PersonaVector]:
    return {name: load_vector(files[name]) for name in ("opt", "evil")}


def test_answers_and_figures_equal_the_library_on_transformers(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    """Four greedy requests at once (vLLM batches them): each answer is the transformers backend's, and
    each response average equals `project` on prompt + returned text."""
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda q: ask(client, q, max_tokens=24), QUESTIONS))
    prompts = [chat_prompt(smollm2, q) for q in QUESTIONS]
    want = generate(smollm2, prompts, Sampling(max_new_tokens=24), progress=False)
    for prompt, reply, answer in zip(prompts, replies, want, strict=True):
        content = reply.choices[0].message.content
        assert content.strip() == answer
        figures = reply.model_extra["persona"]["vectors"]
        for name, vector in vectors.items():
            expected = float(project(smollm2, [vector], [prompt], [content], "response-avg", progress=False))
            assert near(figures[name]["response_avg"], expected), (name, figures[name], expected)


def test_a_steered_request_equals_the_library_steering(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    steer = {"steer": [{"vector": "opt", "coef": 6.0}]}
    reply = ask(client, QUESTIONS[1], max_tokens=20, extra_body={"persona": steer})
    prompt = chat_prompt(smollm2, QUESTIONS[1])
    with vectors["opt"].apply(smollm2.model, 6.0):
        steered = generate(smollm2, [prompt], Sampling(max_new_tokens=20), progress=False)[0]
    plain = generate(smollm2, [prompt], Sampling(max_new_tokens=20), progress=False)[0]
    assert reply.choices[0].message.content.strip() == steered != plain
    assert reply.model_extra["persona"]["vectors"]["opt"]["steered"] is not None


def test_a_stream_carries_the_same_answer_and_a_token_trace(client: openai.OpenAI) -> None:
    plain = ask(client, QUESTIONS[2], max_tokens=16)
    chunks = list(
        ask(
            client, QUESTIONS[2], max_tokens=16, stream=True, stream_options={"include_usage": True},
            extra_body={"persona": {"trace": True}},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    trace = [
        t
        for c in chunks
        if c.choices and c.model_extra.get("persona")
        for t in c.model_extra["persona"]["tokens"]
    ]
    assert len(trace) == 16 and chunks[-1].usage.completion_tokens == 16
    for name, f in chunks[-1].model_extra["persona"]["vectors"].items():
        values = [t["projections"][name] for t in trace]
        assert f["response_avg"] == pytest.approx(sum(values) / len(values), rel=1e-9)
        assert near(f["response_avg"], plain.model_extra["persona"]["vectors"][name]["response_avg"])


def test_clients_that_leave_free_their_rows_in_the_workers(server: Server) -> None:
    """Eight streams closed after their first chunk: the server counts none running, and the next
    request answers as before."""
    body = {"model": "small", "messages": [{"role": "user", "content": "Write a story."}], "max_tokens": 64}
    for _ in range(8):
        response = server.stream(body)
        response.readline()
        response.close()
    deadline = time.monotonic() + 60
    while metric_value(server.metrics(), "personavec_running_requests") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric_value(server.metrics(), "personavec_running_requests") == 0
    status, _, reply = server.request("POST", "/v1/chat/completions", {**body, "max_tokens": 4})
    assert status == 200 and reply["usage"]["completion_tokens"] == 4
