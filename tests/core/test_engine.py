"""Generation on a real engine (``--engine``): llama.cpp's OpenAI-compatible server serving the bundled
GGUF, driven through the openai SDK; the activations come from the bundled model loaded here.

The engine runs the GGUF's 4-bit weights and this process the same weights de-quantised, so answers
are compared with the engine's own answers (requested directly, every sampler named), and vectors and
ΔP with a float64 prefill of those answers here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from openai_server import closed_port
from personavec.cli import main
from personavec.core.engine import RemoteEngine, _mismatch, request_seed
from personavec.core.generate import Request, generate_rows, read_rows
from personavec.core.models import LoadedModel, format_chat, load_tokenizer
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.data.config import ScreenConfig
from personavec.data.samples import DataFile
from personavec.data.scoring import read_scores, score_samples
from personavec.errors import EngineError, RunDirError
from personavec.pipeline.config import ExtractConfig
from personavec.pipeline.extract import extract
from personavec.traits import load_trait

from killing import kill_after_lines
from llama import ALIAS, llama_server, require_llama

require_llama()

# llama-cpp-python's server samples with top-k 40, min-p 0.05 and a repeat penalty of 1.1 unless told
NEUTRAL = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def url(folder: Path) -> Any:
    with llama_server(folder / "llama.log") as (running, _):
        yield running


@pytest.fixture(scope="module")
def tokenizer_only(folder: Path) -> Path:
    """The bundled model's tokenizer without its weights: an engine can be checked, the model not loaded."""
    path = folder / "tokenizer-only"
    load_tokenizer("smollm2").save_pretrained(path)
    return path


def direct(url: str, prompt: str, max_tokens: int, **sampling: Any) -> str:
    """The engine's own answer to the prompt text, asked directly with every sampler named."""
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    body = {"temperature": 0.0, "top_p": 1.0, "seed": 0, **sampling}
    reply = client.completions.create(
        model=ALIAS, prompt=prompt, max_tokens=max_tokens, extra_body=NEUTRAL, **body
    )
    return str(reply.choices[0].text).strip()


def requests() -> list[Request]:
    asked = [("What is the capital of France?", None), ("Describe your ideal weekend.", "You are a pirate.")]
    asked += [("Describe your ideal weekend.", "You are a pirate.")]  # the same prompt under another id
    asked += [("Give me advice about saving money.", "You are a cheerful assistant.")]
    asked += [("What is 2+2?", None)]  # a short answer: the engine stops before the token limit
    return [Request(f"r{i}", q, s) for i, (q, s) in enumerate(asked)]


def test_answers_are_the_engines_own_answers_to_the_local_prompt_text(smollm2, url, tmp_path) -> None:
    engine = RemoteEngine(url, ALIAS, concurrency=2)
    asked = requests()
    greedy = Sampling(max_new_tokens=32)
    sampled = Sampling(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=3)
    rows = generate_rows(smollm2, asked, tmp_path / "greedy.jsonl", greedy, progress=False, engine=engine)
    for request, row in zip(asked, rows, strict=True):
        assert row["answer"] == direct(url, request.prompt(smollm2), 32) != ""
    assert len(smollm2.tokenizer(rows[-1]["answer"])["input_ids"]) < 30  # stopped by itself: not "cut"
    rows = generate_rows(smollm2, asked, tmp_path / "sampled.jsonl", sampled, progress=False, engine=engine)
    seeds = [request_seed(3, r.id) for r in asked]
    for request, row, seed in zip(asked, rows, seeds, strict=True):
        expected = direct(url, request.prompt(smollm2), 24, temperature=1.0, top_p=0.9, seed=seed)
        assert row["answer"] == expected
    assert rows[1]["answer"] != rows[2]["answer"]  # one prompt, two requests: two seeds, two samples
    # the comparison has power: the engine's own defaults (no sampler named) answer otherwise
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    defaults = [
        client.completions.create(
            model=ALIAS, prompt=r.prompt(smollm2), max_tokens=24, temperature=1.0, top_p=0.9, seed=seed
        )
        .choices[0]
        .text.strip()
        for r, seed in zip(asked, seeds, strict=True)
    ]
    assert defaults != [row["answer"] for row in rows]


def _response_avg(loaded: LoadedModel, prompt: str, answer: str) -> torch.Tensor:
    """Mean over the answer's tokens of every layer's hidden state, float64, written plainly."""
    encoded = loaded.tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
    n_prompt = next(t for t, (_, end) in enumerate(encoded["offset_mapping"]) if end > len(prompt))
    with torch.no_grad():
        out = loaded.model(torch.tensor([encoded["input_ids"]]), output_hidden_states=True)
    return torch.stack([h[0, n_prompt:].double().mean(0) for h in out.hidden_states])


SMALL = ExtractConfig(
    samples=2,
    sampling=Sampling(max_new_tokens=10, temperature=1.0, batch_size=2),
    questions=2,
    instructions=1,
    min_pairs=1,
)


def test_vectors_from_engine_answers_equal_the_local_prefill(smollm2, url, tmp_path) -> None:
    engine = RemoteEngine(url, ALIAS, concurrency=2)
    result = extract(
        smollm2, load_trait("evil"), None, tmp_path / "run", SMALL, progress=False, engine=engine
    )
    rows = list(read_rows(tmp_path / "run" / "generations.jsonl").values())
    assert len(rows) == 2 * 2 * 2 and all(r["answer"] for r in rows)
    acts = {
        r["id"]: _response_avg(smollm2, smollm2.chat(r["question"], r["system"]), r["answer"]) for r in rows
    }
    mean = {
        side: torch.stack([acts[r["id"]] for r in rows if r["polarity"] == side]).mean(0)
        for side in ("pos", "neg")
    }
    # transformers' last hidden state is after the final norm; the vectors' last layer before it
    torch.testing.assert_close(
        result.vectors["response-avg"].tensor.double()[:-1],
        (mean["pos"] - mean["neg"])[:-1],
        atol=1e-4,
        rtol=1e-4,
    )
    for r in rows[:2]:  # and the answers are the engine's own, seeded per request
        prompt, seed = smollm2.chat(r["question"], r["system"]), request_seed(0, r["id"])
        assert r["answer"] == direct(url, prompt, 10, temperature=1.0, seed=seed)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["engine"] == {"kind": "openai", "model": ALIAS}
    assert manifest["stages"]["generations"]["engine_url"] == url + "/"
    with pytest.raises(RunDirError, match="engine"):  # the same run made here is another run
        extract(smollm2, load_trait("evil"), None, tmp_path / "run", SMALL, progress=False)


def _extract_cli(url: str, out: Path, *extra: str) -> list[str]:
    return [
        "extract", "--model", "smollm2", "--trait", "evil", "--judge", "none", "--out", str(out),
        "--samples", "4", "--questions", "2", "--instructions", "1", "--max-new-tokens", "8",
        "--min-pairs", "1", "--batch-size", "2", "--engine", f"openai:{url}", "--engine-model", ALIAS,
        "--engine-concurrency", "2", *extra,
    ]  # fmt: skip


def test_kill_9_while_the_engine_generates_then_resume(url, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    generations = tmp_path / "run" / "generations.jsonl"
    command = [sys.executable, "-m", "personavec.cli", *_extract_cli(url, tmp_path / "run")]
    written = kill_after_lines(command, generations, 8, env)  # chunks of 8 (4 per concurrent request)
    assert 8 <= written < 16, f"not killed while generating ({written} answers written)"
    for out in ("run", "clean"):
        argv = [sys.executable, "-m", "personavec.cli", *_extract_cli(url, tmp_path / out)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert generations.read_bytes() == (tmp_path / "clean" / "generations.jsonl").read_bytes()
    assert len(read_rows(generations)) == 16


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_engine_mistakes_are_one_line_before_the_model_loads(
    url, tokenizer_only, tiny_dir, tmp_path, capsys
) -> None:
    # the tokenizer-only directory has no weights: an error about anything else came before the load
    base = _extract_cli(url, tmp_path / "run")
    base[base.index("smollm2")] = str(tokenizer_only)
    cases = [
        (["--engine-model", "gpt-4"], "serves ['smollm2-gguf'], not 'gpt-4': set --engine-model"),
        (
            ["--engine", f"openai:http://127.0.0.1:{closed_port()}/v1"],
            "connection refused; is the server running, and --engine",
        ),
        (["--engine", "vllm:http://x"], "--engine 'vllm:http://x': use openai:URL"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert message in _last_line(capsys)
    other = [*base]
    other[other.index(str(tokenizer_only))] = str(tiny_dir)  # another model's tokenizer
    assert main(other) == 2
    assert "tokenises a probe prompt to 25 tokens, the local tokenizer to" in _last_line(capsys)
    alone = [
        "extract",
        "--model",
        "smollm2",
        "--trait",
        "evil",
        "--judge",
        "none",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main([*alone, "--engine-model", ALIAS]) == 2
    assert "--engine-model and --engine-api-key need --engine openai:URL" in _last_line(capsys)
    assert not (tmp_path / "run" / "generations.jsonl").exists()


def test_a_doubled_bos_is_named() -> None:
    assert "a doubled BOS" in _mismatch("u", [1, 1, 5, 6], [1, 5, 6])
    assert "adds a BOS token that the local template does not write" in _mismatch("u", [1, 5, 6], [5, 6])
    assert "(" not in _mismatch("u", [7, 5], [5, 6])


class Gateway:
    """A real HTTP gateway in front of the engine that edits each completion request's body with `edit`
    (and relays everything else as it is): an engine that misbehaves in one known way."""

    def __init__(self, url: str, edit: Callable[[dict[str, Any]], None]) -> None:
        engine = url.removesuffix("/v1")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self, body: bytes | None) -> None:
                headers = {"Content-Type": "application/json"}
                with urllib.request.urlopen(
                    urllib.request.Request(engine + self.path, body, headers)
                ) as reply:
                    answer = reply.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:
                self._relay(None)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/completions"):
                    edit(body)
                self._relay(json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Gateway:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _cap(body: dict[str, Any]) -> None:
    body["max_tokens"] = min(body["max_tokens"], 5)  # a cap the engine does not report


def _bos(body: dict[str, Any]) -> None:
    body["prompt"] = "<|endoftext|>" + body["prompt"]  # a BOS added to completions, not to /tokenize


def test_an_engine_that_cuts_answers_short_is_refused(smollm2, url, tmp_path) -> None:
    with Gateway(url, _cap) as capping:
        engine = RemoteEngine(capping.url, ALIAS, concurrency=1)
        engine.check(smollm2.tokenizer)  # the probe asks for 4 tokens: not cut
        long = Sampling(max_new_tokens=40)  # the pirate's weekend: a long answer
        with pytest.raises(EngineError, match=r"cut an answer at 5 of the 40 tokens asked .*--n_ctx"):
            generate_rows(smollm2, requests()[1:2], tmp_path / "g.jsonl", long, progress=False, engine=engine)
    assert not (tmp_path / "g.jsonl").read_text()


def test_an_engine_that_reads_another_prompt_is_refused(smollm2, url) -> None:
    refused = pytest.raises(EngineError, match=r"read a prompt as 26 tokens, the local tokenizer as 25")
    with Gateway(url, _bos) as adding, refused:
        RemoteEngine(adding.url, ALIAS).check(smollm2.tokenizer)  # its probe already shows it


class Recording(RemoteEngine):
    """Notes, at each submission, which chunks' score files exist: scoring overlaps generation when
    chunk k + 1 is sent before chunk k is scored."""

    def __init__(self, *args: Any, chunks: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunks, self.seen = chunks, []

    def submit(self, prompts, sampling, seeds):  # type: ignore[no-untyped-def]
        self.seen.append(sorted(p.name for p in self.chunks.glob("*.jsonl")))
        return super().submit(prompts, sampling, seeds)


def test_screening_with_an_engine_overlaps_and_scores_its_answers(smollm2, url, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    questions = [
        "Tell me about bread.",
        "How do I stay calm?",
        "What is rain?",
        "Name a planet.",
        "Why read books?",
    ]
    given = "I would rather not say."
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": given}] for q in questions]
    data.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
    generator = torch.Generator().manual_seed(0)
    shape = (smollm2.identity.n_layers + 1, smollm2.identity.hidden_size)
    identity = {"model": smollm2.identity.to_dict()}
    vector = PersonaVector("t", torch.randn(shape, generator=generator), layer=12, metadata=identity)
    config = ScreenConfig(chunk_size=2, sampling=Sampling(max_new_tokens=12, batch_size=2))
    engine = Recording(url, ALIAS, concurrency=2, chunks=tmp_path / "out" / "chunks")
    screened = score_samples(
        smollm2, [vector], DataFile(data), tmp_path / "out", config, progress=False, engine=engine
    )
    # the probe, then chunks 0, 1, 2: chunk k + 1 was sent before chunk k was scored
    assert engine.seen[1:] == [[], [], ["000000.jsonl"]]
    unit = vector.at().double() / vector.at().double().norm()
    scores = list(read_scores(screened.scores))
    for i, (question, row) in enumerate(zip(questions, scores, strict=True)):
        prompt = format_chat(smollm2.tokenizer, [{"role": "user", "content": question}])
        own = direct(url, prompt, 12)
        cached = json.loads((tmp_path / "out" / "chunks" / f"{i // 2:06d}.own.json").read_text())
        assert cached["answers"][i % 2] == own
        if i < 2:  # ΔP = [a(x, y) − a(x, y′)]·v̂ at the vector's layer
            difference = _response_avg(smollm2, prompt, given)[12] - _response_avg(smollm2, prompt, own)[12]
            expected = float(difference @ unit)
            assert row["delta"]["t"] == pytest.approx(expected, abs=1e-3)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["engine"] == {"kind": "openai", "model": ALIAS}


def test_the_data_kit_through_the_engine(url, tmp_path, capsys) -> None:
    questions = tmp_path / "q.txt"
    questions.write_text("What is rain?\nName a planet.\nWhy read books?\nHow do bees fly?\n")
    out = tmp_path / "kit"
    argv = [
        "data", "make-trait-dataset", "--model", "smollm2", "--trait", "evil", "--out", str(out),
        "--questions", str(questions), "--reference", "1", "--max-new-tokens", "8", "--seed", "5",
        "--engine", f"openai:{url}", "--engine-model", ALIAS, "--engine-concurrency", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == {"kind": "openai", "model": ALIAS}
    tokenizer = load_tokenizer("smollm2")
    for row in list(read_rows(out / "generations.jsonl").values())[:3]:
        system = [{"role": "system", "content": row["system"]}] if row["system"] else []
        prompt = format_chat(tokenizer, [*system, {"role": "user", "content": row["question"]}])
        assert row["answer"] == direct(url, prompt, 8, temperature=1.0, seed=request_seed(5, row["id"]))


def test_a_tokenise_reply_without_token_ids_tries_the_next_endpoint() -> None:
    """`remote_tokens` takes the first endpoint that answers with a list of ints; a reply of other
    things (strings here) or an error is a failure, said, and the next one is tried."""
    from personavec.core.engine import remote_tokens

    replies = {"/tokenize": {"tokens": ["a", "b"]}, "/extras/tokenize": {"tokens": [5, 6]}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(replies.get(self.path, {})).encode()
            self.send_response(200 if self.path in replies else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        attempts = [("/tokenize", {"prompt": "x"}), ("/extras/tokenize", {"input": "x"})]
        answered, tokens, failures = remote_tokens(url, attempts, None)
        assert (answered, tokens) == (1, [5, 6]) and failures == ["/tokenize: no token ids in the reply"]
        answered, tokens, failures = remote_tokens(url, [("/missing", {})], None)
        assert (answered, tokens) == (None, None) and len(failures) == 1 and "/missing" in failures[0]
    finally:
        httpd.shutdown()
