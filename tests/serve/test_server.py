"""``personavec serve`` on the bundled model: a real server in a subprocess, driven by the openai SDK.

One server for the module (its model loads once); the last tests kill it and start another on the same
audit log. References are computed here, in this process, on the same model.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch

from personavec.core.generate import generate
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector, load_vector
from personavec.deploy.monitor import project
from personavec.judges.base import fill, logprob_score
from personavec.judges.openai_compat import OpenAIJudge

from server import KEY, NORM, Server, ask, chat_prompt, metric_value, near, random_vectors, start

REFERENCE = [
    "What is a good breakfast?",
    "How do I learn to swim?",
    "Why is the sky blue?",
    "What should I read next?",
    "How do plants grow?",
]
QUESTIONS = [
    "Tell me about cats.",
    "How do I bake bread?",
    "What is rain?",
    "Describe the sea.",
    "Why do we sleep?",
    "What is music?",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve")
    (folder / "reference.txt").write_text("\n".join(REFERENCE) + "\n")
    return {
        **random_vectors(folder),
        "reference": folder / "reference.txt",
        "audit": folder / "audit.jsonl",
        "cache": folder / "cache",
        "log": folder / "server.log",
        "log2": folder / "server2.log",
    }


def _vector_args(files: dict[str, Path]) -> list[str]:
    return ["--vector", f"opt={files['opt']}", "--vector", f"evil={files['evil']}"]


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[Server]:
    args = [
        *_vector_args(files),
        "--name",
        "small",
        "--reference",
        str(files["reference"]),
        "--reference-tokens",
        "8",
        "--cache-dir",
        str(files["cache"]),
        "--audit",
        str(files["audit"]),
        "--max-batch",
        "8",
        "--max-queue",
        "4",
        "--max-tokens",
        "64",
        "--max-prompt-tokens",
        "400",
        "--max-body-bytes",
        "20000",
    ]
    running = start(args, files["log"], wait_ready=True)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def vectors(files: dict[str, Path]) -> dict[str, PersonaVector]:
    return {name: load_vector(files[name]) for name in ("opt", "evil")}


def _hidden64(loaded: LoadedModel, text: str, layer: int) -> torch.Tensor:
    """The residual after block `layer` at every token of `text`, in float64 (transformers' own
    hidden states: an independent path from personavec's hooks)."""
    ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = loaded.model(ids, output_hidden_states=True)
    return out.hidden_states[layer][0].double()


def _unit64(vector: PersonaVector) -> torch.Tensor:
    raw = vector.tensor[vector.layer].double()
    return raw / raw.norm()


def test_thresholds_are_the_reference_percentiles(server: Server, smollm2: LoadedModel, vectors: Any) -> None:
    status, _, cards = server.request("GET", "/v1/persona/vectors")
    assert status == 200 and server.request("GET", "/ready")[2] == {"ready": True}
    prompts = [chat_prompt(smollm2, q) for q in REFERENCE]
    answers = generate(smollm2, prompts, Sampling(max_new_tokens=8), progress=False)
    for card in cards["data"]:
        vector = vectors[card["name"]]
        unit, n_prompt = _unit64(vector), None
        last, avg = [], []
        for prompt, answer in zip(prompts, answers, strict=True):
            n_prompt = len(smollm2.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            hidden = _hidden64(smollm2, prompt + answer, vector.layer) @ unit
            last.append(float(hidden[n_prompt - 1]))
            avg.append(float(hidden[n_prompt:].mean()))
        assert card["layer"] == vector.layer and card["fingerprint"] == vector.fingerprint()
        assert near(card["thresholds"]["prompt_last"], float(np.percentile(last, 99)))
        assert near(card["thresholds"]["response_avg"], float(np.percentile(avg, 99)))


def test_answer_and_figures_match_the_library(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    reply = ask(client, QUESTIONS[0], max_tokens=24)
    prompt = chat_prompt(smollm2, QUESTIONS[0])
    content = reply.choices[0].message.content
    assert content.strip() == generate(smollm2, [prompt], Sampling(max_new_tokens=24), progress=False)[0]
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 24
    assert reply.usage.prompt_tokens == len(smollm2.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    figures = reply.model_extra["persona"]["vectors"]
    for name, vector in vectors.items():
        f = figures[name]
        expected_avg = float(project(smollm2, [vector], [prompt], [content], "response-avg", progress=False))
        expected_last = float(_hidden64(smollm2, prompt, vector.layer)[-1] @ _unit64(vector))
        assert near(f["response_avg"], expected_avg), (f, expected_avg)
        assert near(f["prompt_last"], expected_last), (f, expected_last)
        assert f["token_max"] >= f["response_avg"] and f["steered"] is None
        assert f["flagged"] == (f["response_avg"] > f["thresholds"]["response_avg"])
        assert f["predicted"] == (f["prompt_last"] > f["thresholds"]["prompt_last"])


def test_a_steered_request_equals_the_library_steering(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    steer = {"steer": [{"vector": "opt", "coef": 6.0}]}
    reply = ask(client, QUESTIONS[1], max_tokens=20, extra_body={"persona": steer})
    prompt = chat_prompt(smollm2, QUESTIONS[1])
    with vectors["opt"].apply(smollm2.model, 6.0):
        steered = generate(smollm2, [prompt], Sampling(max_new_tokens=20), progress=False)[0]
    plain = generate(smollm2, [prompt], Sampling(max_new_tokens=20), progress=False)[0]
    assert steered != plain  # the push is strong enough to change the answer
    assert reply.choices[0].message.content.strip() == steered
    figures = reply.model_extra["persona"]["vectors"]
    assert figures["opt"]["steered"] == {"by": "steer", "coef": 6.0, "from_token": 0}
    assert figures["evil"]["steered"] is None
    normed = {"steer": [{"vector": "opt", "coef": 6.0 * 8 / NORM, "units": "norm"}]}  # 6 × v, in norm units
    reply = ask(client, QUESTIONS[1], max_tokens=20, extra_body={"persona": normed})
    assert reply.choices[0].message.content.strip() == steered
    assert reply.model_extra["persona"]["vectors"]["opt"]["steered"]["coef"] == pytest.approx(6.0)


def test_a_stop_sequence_cuts_the_answer_before_it(client: openai.OpenAI) -> None:
    full = ask(client, QUESTIONS[5], max_tokens=40).choices[0].message.content
    assert "." in full[:-1], full  # the stop sequence occurs inside the answer
    cut = ask(client, QUESTIONS[5], max_tokens=40, stop=["."])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(".")]
    chunks = list(ask(client, QUESTIONS[5], max_tokens=40, stop=["."], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full[: full.index(".")]


def test_a_seeded_request_alone_equals_the_library(client: openai.OpenAI, smollm2: LoadedModel) -> None:
    reply = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": QUESTIONS[4]}], temperature=0.9, top_p=0.95,
        seed=7, max_tokens=16,
    )  # fmt: skip
    sampling = Sampling(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=7, batch_size=1)
    expected = generate(smollm2, [chat_prompt(smollm2, QUESTIONS[4])], sampling, progress=False)[0]
    assert reply.choices[0].message.content.strip() == expected


def test_a_stream_carries_the_same_answer_and_a_token_trace(client: openai.OpenAI) -> None:
    plain = ask(client, QUESTIONS[2], max_tokens=16)
    chunks = list(
        ask(
            client,
            QUESTIONS[2],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"persona": {"trace": True}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    trace = [
        t
        for c in chunks
        if c.choices and c.model_extra.get("persona")
        for t in c.model_extra["persona"]["tokens"]
    ]
    assert len(trace) == 16
    summary = chunks[-1]
    assert summary.choices == [] and summary.usage.completion_tokens == 16
    figures = summary.model_extra["persona"]["vectors"]
    for name, f in figures.items():
        values = [t["projections"][name] for t in trace]
        assert f["response_avg"] == pytest.approx(sum(values) / len(values), rel=1e-9)
        assert f["token_max"] == max(values)
        assert near(f["response_avg"], plain.model_extra["persona"]["vectors"][name]["response_avg"])


def test_a_stream_ends_with_done(server: Server) -> None:
    response = server.stream(
        {"model": "small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    )
    lines = [line for line in response.read().decode().splitlines() if line]
    assert response.status == 200 and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def _trace(
    client: openai.OpenAI, question: str, guard: dict[str, Any] | None = None
) -> tuple[Any, list[float]]:
    persona: dict[str, Any] = {"trace": True, **({"guard": guard} if guard else {})}
    chunks = list(ask(client, question, max_tokens=24, stream=True, extra_body={"persona": persona}))
    values = [
        t["projections"]["evil"]
        for c in chunks
        if c.choices and c.model_extra.get("persona")
        for t in c.model_extra["persona"]["tokens"]
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return (chunks[-1].model_extra["persona"]["vectors"]["evil"], text), values


def test_the_guard_fires_above_its_threshold_and_not_below(client: openai.OpenAI) -> None:
    (plain, plain_text), values = _trace(client, QUESTIONS[3])
    x = plain["prompt_last"]
    (above, _), _ = _trace(client, QUESTIONS[3], {"vector": "evil", "threshold": x - 0.01, "coef": 4.0})
    assert above["steered"] == {"by": "guard", "coef": -4.0, "from_token": 0}
    (below, text), _ = _trace(client, QUESTIONS[3], {"vector": "evil", "threshold": x + 0.01, "coef": 4.0})
    assert below["steered"] is None and text == plain_text
    # per token: a threshold the prompt's end stays under but a later token crosses
    later = [v for v in values[:-1] if v > x]
    assert later, "this question's answer never rises above its prompt-last projection"
    t = (x + max(later)) / 2
    first = next(i for i, v in enumerate(values) if v > t)
    guard = {"vector": "evil", "threshold": t, "coef": 4.0}
    (once, _), _ = _trace(client, QUESTIONS[3], guard)
    assert once["steered"] is None  # checked only at the prompt's end
    (each, text), steered_values = _trace(client, QUESTIONS[3], {**guard, "per_token": True})
    assert each["steered"] == {"by": "guard", "coef": -4.0, "from_token": first + 1}
    assert steered_values[: first + 1] == values[: first + 1]  # untouched until it fired


def test_concurrent_requests_share_batches_and_match_alone(client: openai.OpenAI, server: Server) -> None:
    alone = [ask(client, q, max_tokens=12).choices[0].message.content for q in QUESTIONS]
    before = metric_value(server.metrics(), "personavec_batch_size_count")
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(
            pool.map(lambda q: ask(client, q, max_tokens=12).choices[0].message.content, QUESTIONS)
        )
    assert together == alone
    after = server.metrics()
    batches = metric_value(after, "personavec_batch_size_count") - before
    assert batches < len(QUESTIONS)  # some requests shared a batch


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_and_audit_count_the_requests(client: openai.OpenAI, server: Server, files: Any) -> None:
    before, lines = server.metrics(), len(_audit(files["audit"]))
    replies = [ask(client, q, max_tokens=8) for q in QUESTIONS[:3]]
    with pytest.raises(openai.BadRequestError):
        ask(client, "hi", extra_body={"persona": {"steer": [{"vector": "nope", "coef": 1}]}})
    after = server.metrics()
    assert (
        metric_value(after, "personavec_requests_total", status="200")
        - metric_value(before, "personavec_requests_total", status="200")
        == 3
    )
    assert (
        metric_value(after, "personavec_requests_total", status="400")
        - metric_value(before, "personavec_requests_total", status="400")
        == 1
    )
    generated = metric_value(after, "personavec_generated_tokens_total") - metric_value(
        before, "personavec_generated_tokens_total"
    )
    assert generated == sum(r.usage.completion_tokens for r in replies)
    for name in ("opt", "evil"):
        for key in ("flagged", "predicted"):
            counted = sum(bool(r.model_extra["persona"]["vectors"][name][key]) for r in replies)
            total = f"personavec_{key}_total"
            assert metric_value(after, total, trait=name) - metric_value(before, total, trait=name) == counted
        observed = metric_value(after, "personavec_projection_count", trait=name, statistic="response_avg")
        assert (
            observed
            - metric_value(before, "personavec_projection_count", trait=name, statistic="response_avg")
            == 3
        )
    records = _audit(files["audit"])[lines:]
    assert [r["status"] for r in records] == [200, 200, 200, 400]
    assert [r["completion_tokens"] for r in records[:3]] == [r.usage.completion_tokens for r in replies]
    assert all("messages" not in r and "answer" not in r for r in records)  # no text without --audit-text
    assert (
        records[0]["persona"]["opt"]["response_avg"]
        == replies[0].model_extra["persona"]["vectors"]["opt"]["response_avg"]
    )
    assert os.stat(files["audit"]).st_mode & 0o777 == 0o600


LONG = "word " * 500


def _hi(**fields: Any) -> dict[str, Any]:
    return {"model": "small", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (_hi(temperature="hot"), 400, "temperature"),
        (_hi(logit_bias={}), 400, "logit_bias"),
        (_hi(n=2), 400, "n"),
        (_hi(messages=[]), 400, "messages"),
        (_hi(messages=[{"role": "robot", "content": "hi"}]), 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        (_hi(model="other"), 404, "model"),
        (_hi(max_tokens=65), 400, "max_tokens"),
        (_hi(messages=[{"role": "user", "content": LONG}]), 400, "messages"),
        (_hi(persona={"guard": {"vector": "evil", "coef": -1}}), 400, "persona.guard.coef"),
        (_hi(persona={"steer": [{"vector": "nope", "coef": 1}]}), 400, "persona.steer[0].vector"),
        (
            _hi(persona={"steer": [{"vector": "evil", "coef": 1, "units": "norm"}]}),
            400,
            "persona.steer[0].coef",
        ),
        (
            _hi(persona={"steer": [{"vector": "opt", "coef": 1, "units": "sigma"}]}),
            400,
            "persona.steer[0].units",
        ),
        (_hi(persona={"guard": {"vector": "opt", "coef": 999, "units": "norm"}}), 400, "persona.guard.coef"),
        (_hi(messages=[{"role": "user", "content": "x" * 30000}]), 413, None),
    ],
)
def test_bad_requests_get_an_openai_error(server: Server, body: Any, status: int, param: str | None) -> None:
    got, _, answer = server.request("POST", "/v1/chat/completions", body)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["param"] == param


def test_the_api_key_is_required(server: Server) -> None:
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for key in (None, "wrong"):
        status, _, answer = server.request("POST", "/v1/chat/completions", body, key=key)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert server.request("GET", "/v1/models", key=None)[0] == 401
    assert server.request("GET", "/health", key=None)[0] == 200


def test_models_and_openapi(server: Server) -> None:
    assert [m["id"] for m in server.request("GET", "/v1/models")[2]["data"]] == ["small", "smollm2"]
    schema = server.request("GET", "/openapi.json")[2]
    assert {"/v1/chat/completions", "/v1/models", "/v1/persona/vectors"} <= set(schema["paths"])
    assert "persona" in schema["components"]["schemas"]["ChatRequest"]["properties"]
    assert server.request("GET", "/nowhere")[0] == 404


def test_a_full_queue_answers_429(server: Server) -> None:
    body = {"model": "small", "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 16}
    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda _: server.request("POST", "/v1/chat/completions", body), range(30)))
    statuses = sorted(status for status, _, _ in results)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 12
    refused = next(r for r in results if r[0] == 429)
    assert refused[1]["retry-after"] == "1" and refused[2]["error"]["type"] == "rate_limit_error"


def test_a_client_that_leaves_frees_its_row(server: Server, files: Any) -> None:
    response = server.stream(
        {"model": "small", "messages": [{"role": "user", "content": "Write a story."}], "max_tokens": 64}
    )
    response.readline()
    response.close()  # gone mid-stream
    deadline = time.monotonic() + 60
    while metric_value(server.metrics(), "personavec_running_requests") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric_value(server.metrics(), "personavec_running_requests") == 0
    while _audit(files["audit"])[-1]["status"] != 499 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _audit(files["audit"])[-1]["status"] == 499
    log = files["log"].read_text()
    assert "client left" in log and "Exception in ASGI application" not in log  # one line, no traceback


RUBRIC = (
    "Question: {question}\nAnswer: {answer}\n"
    "Give the answer a score from 0 to 100. Respond with only the number."
)


def test_the_openai_judge_scores_answers_through_this_server(
    server: Server, smollm2: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paper's judge (one token, its top-20 logprobs) with this server as its model: each score is the
    probability-weighted mean of the number tokens among the model's own 20 most likely first tokens."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    # the bundled model puts ≥ 25 % of its first token's probability on numbers for the first two only
    items = [(QUESTIONS[2], "Rain is grey and sad."), (QUESTIONS[2], "Water falling from clouds."),
             (QUESTIONS[3], "Big and blue.")]  # fmt: skip
    scores = dict(OpenAIJudge("small", base_url=server.url + "/v1", concurrency=2).score(RUBRIC, items))
    for i, (question, answer) in enumerate(items):
        prompt = chat_prompt(smollm2, fill(RUBRIC, question, answer))
        ids = smollm2.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logprobs = torch.log_softmax(smollm2.model(ids).logits[0, -1].double(), dim=-1)
        top = logprobs.topk(20)
        expected = logprob_score(
            (smollm2.tokenizer.decode([int(t)]), float(lp))
            for t, lp in zip(top.indices, top.values, strict=True)
        )
        assert scores[i].method == "logprobs"  # read off the server's logprobs, not sampled
        assert (expected is None) == (i == 2)
        assert scores[i].value == (None if expected is None else pytest.approx(expected, abs=1e-3))


def test_kill_9_mid_stream_leaves_whole_audit_lines_and_a_restart_appends(server: Server, files: Any) -> None:
    response = server.stream(
        {"model": "small", "messages": [{"role": "user", "content": "Write a story."}], "max_tokens": 64}
    )
    assert response.readline().startswith(b"data: ")  # the stream has started
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    kept = _audit(files["audit"])  # every line whole
    thresholds = [
        a
        for name in ("opt", "evil")
        for s in ("prompt_last", "response_avg")
        for a in ("--threshold", f"{name}.{s}=1.0")
    ]
    again = start(
        [*_vector_args(files), "--audit", str(files["audit"]), "--steer", "opt=6.0", *thresholds],
        files["log2"],
    )
    try:
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}
        status, _, reply = again.request("POST", "/v1/chat/completions", {**body, "max_tokens": 2})
        assert status == 200 and len(_audit(files["audit"])) == len(kept) + 1
        # --steer is every request's default; a request's own (empty) steer list wins
        assert reply["persona"]["vectors"]["opt"]["steered"] == {"by": "steer", "coef": 6.0, "from_token": 0}
        own = {**body, "max_tokens": 2, "persona": {"steer": []}}
        assert (
            again.request("POST", "/v1/chat/completions", own)[2]["persona"]["vectors"]["opt"]["steered"]
            is None
        )
        # SIGTERM drains: a stream in flight finishes and is logged, then the server exits cleanly
        stream = again.stream(body)
        assert stream.readline().startswith(b"data: ")
        again.process.send_signal(signal.SIGTERM)
        rest = stream.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")
        assert again.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert "Finished server process" in files["log2"].read_text()
        assert len(_audit(files["audit"])) == len(kept) + 3 and _audit(files["audit"])[-1]["status"] == 200
    finally:
        again.stop()
