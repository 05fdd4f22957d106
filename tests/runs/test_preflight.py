"""Failures found before expensive work: every long command checks what it will need later (the judge
answers a probe, the output directory takes files, the reference file is there, the lexicon judge's
trait has a sentiment, the vectors fit the model) before it loads a model or generates anything.

The judge failures run against real HTTP servers through the real OpenAI SDK. Where the command is
given a model that does not exist, an error about anything else proves it came before the load."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from openai_server import FakeOpenAI, closed_port, judge_reply
from personavec import PersonaVector, save_vectors
from personavec.cli import main
from personavec.core.sampling import Sampling
from personavec.errors import JudgeError
from personavec.judges.openai_compat import OpenAIJudge
from personavec.pipeline.config import ExtractConfig
from personavec.pipeline.extract import extract
from personavec.traits import load_trait

from tiny import N_LAYERS, tiny_loaded

SMALL = ExtractConfig(  # were the probe skipped, this run would judge within seconds, and fail
    samples=1, sampling=Sampling(max_new_tokens=4), questions=2, instructions=1, min_pairs=1
)


@pytest.fixture
def key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


@pytest.fixture
def config_only(tiny_dir, tmp_path) -> Path:
    """The tiny model's directory without its weights: its shape can be read, the model cannot load."""
    path = tmp_path / "config-only"
    path.mkdir()
    shutil.copy(tiny_dir / "config.json", path)
    return path


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, float]:
    """The exit code, the last line on stderr and the seconds `personavec argv` took."""
    capsys.readouterr()
    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return code, err.splitlines()[-1] if err else "", seconds


JUDGE_FAILURES = [
    ("401", "HTTP 401; a bad API key: check OPENAI_API_KEY", 1),
    ("404", "HTTP 404; an unknown model or a wrong path", 1),
    ("refused", "connection refused; is the server running, and --base-url right?", 0),
]


def judge_server(fault: str) -> tuple[FakeOpenAI, str]:
    """A server answering `fault` to every request, and the URL to give (a closed port for refused)."""
    server = FakeOpenAI(judge_reply)
    server.faults = [fault] * 100
    return server, server.url if fault != "refused" else f"http://127.0.0.1:{closed_port()}/v1"


@pytest.mark.parametrize(("fault", "cause", "requests"), JUDGE_FAILURES)
def test_extract_probes_the_judge_before_loading_the_model(
    key, tmp_path, capsys, fault: str, cause: str, requests: int
) -> None:
    server, url = judge_server(fault)
    out = tmp_path / "run"
    argv = ["extract", "--model", str(tmp_path / "no-model"), "--trait", "evil", "--out", str(out)]
    with server:
        code, line, seconds = run(capsys, [*argv, "--judge", "openai:judge-model", "--base-url", url])
    assert code == 2 and seconds < 10
    assert line.startswith(f"personavec: error: the endpoint {url}/ (model judge-model) cannot answer: ")
    assert cause in line
    assert len(server.requests) == requests  # no retry for what cannot pass
    assert not (out / "generations.jsonl").exists()


@pytest.mark.parametrize(("fault", "cause", "requests"), JUDGE_FAILURES[:2])
@pytest.mark.parametrize("command", ["sweep", "calibrate", "shift", "data make-trait-dataset"])
def test_every_command_with_a_judge_probes_it_first(
    key, tmp_path, capsys, command: str, fault: str, cause: str, requests: int
) -> None:
    server, url = judge_server(fault)
    argv = [*command.split(), "--model", str(tmp_path / "no-model"), "--trait", "evil"]
    argv += ["--out", str(tmp_path / "out"), "--judge", "openai:judge-model", "--base-url", url]
    argv += {"sweep": ["--vector", "v"], "calibrate": ["--vector", "v"], "shift": ["--vector", "v"]}.get(
        command, []
    )
    if command == "shift":
        argv += ["--finetuned", str(tmp_path / "no-adapter")]
    with server:
        code, line, seconds = run(capsys, argv)
    assert code == 2 and seconds < 10 and cause in line and url in line, line
    assert len(server.requests) == requests
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []  # nothing generated


def test_the_library_probes_before_generating(key, tmp_path) -> None:
    with FakeOpenAI(judge_reply) as server:
        server.faults = ["401"] * 10
        judge = OpenAIJudge("judge-model", base_url=server.url, backoff=5.0)
        with pytest.raises(JudgeError, match="HTTP 401"):
            extract(tiny_loaded(), load_trait("evil"), judge, tmp_path / "run", SMALL, progress=False)
    assert len(server.requests) == 1
    assert not (tmp_path / "run" / "generations.jsonl").exists()


def _chat_file(folder: Path) -> Path:
    """A one-conversation chat JSONL file."""
    data = folder / "d.jsonl"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data.write_text(json.dumps({"messages": chat}) + "\n")
    return data


@pytest.mark.parametrize(
    "command",
    [
        ["extract", "--trait", "evil", "--judge", "none"],
        ["data", "make-trait-dataset", "--trait", "optimistic"],
        ["sweep", "--trait", "optimistic", "--judge", "lexicon", "--vector", "v"],
        ["train", "{data}"],
        ["screen", "{data}", "--vector", "{vector}"],
    ],
)
def test_an_unwritable_output_directory_fails_before_the_model_loads(
    config_only, tmp_path, capsys, command: list[str]
) -> None:
    data = _chat_file(tmp_path)
    vector = tmp_path / "v.safetensors"
    save_vectors(vector, [PersonaVector("t", torch.randn(N_LAYERS + 1, 64), layer=1)])
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"  # under a file: no directory can be made there
    model = str(config_only) if command[0] == "screen" else str(tmp_path / "no-model")
    argv = [a.format(data=data, vector=vector) for a in command]
    code, line, _ = run(capsys, [*argv, "--model", model, "--out", str(out)])
    assert code == 2
    assert line.startswith(f"personavec: error: cannot write to the output directory {out}: "), line
    assert line.endswith("choose another --out")


@pytest.mark.parametrize("command", ["extract", "data make-trait-dataset"])
def test_the_lexicon_judge_needs_a_trait_with_a_sentiment_before_the_model_loads(
    tmp_path, capsys, command: str
) -> None:
    argv = [*command.split(), "--model", str(tmp_path / "no-model"), "--trait", "evil", "--judge", "lexicon"]
    code, line, _ = run(capsys, [*argv, "--out", str(tmp_path / "out")])
    assert code == 2 and "lexicon judge only scores sentiment-like traits; 'evil' has no 'sentiment'" in line
    assert "use --judge openai:MODEL or hf:PATH" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["sweep", "--trait", "optimistic", "--judge", "lexicon"],
        ["calibrate", "--trait", "optimistic", "--judge", "lexicon"],
        ["train", "{data}"],
        ["shift", "--trait", "optimistic", "--finetuned", "{tmp}/no-adapter"],
        ["screen", "{data}"],
    ],
)
def test_a_vector_with_more_layers_than_the_model_fails_before_the_model_loads(
    config_only, tmp_path, capsys, command: list[str]
) -> None:
    data = _chat_file(tmp_path)
    big = tmp_path / "big.safetensors"
    save_vectors(big, [PersonaVector("big", torch.randn(31, 64), layer=20)])  # 30 blocks; the model: 3
    argv = [a.format(data=data, tmp=tmp_path) for a in command]
    argv += ["--model", str(config_only), "--vector", str(big), "--out", str(tmp_path / "out")]
    code, line, _ = run(capsys, argv)
    assert code == 2 and "vector 'big' was made for another model (30 blocks" in line, line
    assert f"has {N_LAYERS} blocks" in line
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_screen_refuses_a_missing_reference_before_the_model_loads(tmp_path, capsys) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "x", "response": "y"}) + "\n")
    argv = ["screen", str(data), "--model", str(tmp_path / "no-model"), "--vector", "v"]
    argv += ["--out", str(tmp_path / "out"), "--percentile", "95", "--reference", str(tmp_path / "ref.jsonl")]
    code, line, _ = run(capsys, argv)
    assert code == 2 and line == f"personavec: error: {tmp_path / 'ref.jsonl'} does not exist"
