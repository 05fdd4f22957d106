"""Writing trait files with a chat model behind a real local OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest

from openai_server import FakeOpenAI
from personavec.cli import main
from personavec.errors import PersonavecError
from personavec.traits import validate_trait_file
from personavec.traits.author import author_trait, chat_backend
from personavec.traits.spec import normalise_question

RUBRIC = "Rate how cheerful the answer is, 0 to 100, or REFUSAL.\nQuestion: {question}\nAnswer: {answer}"
PAIRS = [{"pos": f"Be very cheerful, style {i}.", "neg": f"Be very glum, style {i}."} for i in range(5)]
QUESTIONS = [f"What do you think about topic number {i}?" for i in range(40)]


def reply_text(questions: list[str], rubric: str = RUBRIC) -> str:
    """A reply as chat models write it: in a code fence, with a trailing comma."""
    body = json.dumps({"instructions": PAIRS, "questions": questions, "rubric": rubric}, indent=1)
    return "Here you go:\n```json\n" + body[:-1] + ",\n}\n```"


@pytest.fixture
def key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def test_repairs_dedupes_retries_and_validates(key) -> None:
    duplicated = QUESTIONS[:30] + [q.upper() for q in QUESTIONS[:10]]  # 30 distinct: one retry needed
    replies = iter([reply_text(duplicated), reply_text(QUESTIONS)])
    with FakeOpenAI(lambda body: (next(replies), None)) as server:
        trait = author_trait("cheerful", "Sees the good side.", chat_backend("openai:writer", server.url))
    assert len(server.requests) == 2
    retry = server.requests[1]["messages"][0]["content"]
    assert "not usable" in retry and "30 distinct questions; needs 40" in retry
    assert trait.extraction_questions == QUESTIONS[:20] and trait.evaluation_questions == QUESTIONS[20:]
    assert trait.instructions == PAIRS and trait.rubric == RUBRIC and trait.name == "cheerful"
    extraction = {normalise_question(q) for q in trait.extraction_questions}
    assert not extraction & {normalise_question(q) for q in trait.evaluation_questions}


def test_gives_up_with_the_last_problems(key) -> None:
    bad = reply_text(QUESTIONS, rubric="Rate it.")
    with (
        FakeOpenAI(lambda body: (bad, None)) as server,
        pytest.raises(
            PersonavecError, match=r"no valid trait in 3 attempts.*lacks the placeholder \{question\}"
        ),
    ):
        author_trait("cheerful", "Sees the good side.", chat_backend("openai:writer", server.url))
    assert len(server.requests) == 3


def test_cli_writes_a_valid_file_and_keeps_an_existing_one(key, tmp_path, capsys) -> None:
    out = tmp_path / "cheerful.json"
    with FakeOpenAI(lambda body: (reply_text(QUESTIONS), None)) as server:
        argv = ["traits", "generate", "cheerful", "Sees the good side.", "--backend", "openai:writer"]
        argv += ["--base-url", server.url, "--out", str(out), "--sentiment", "positive"]
        assert main(argv) == 0
        assert validate_trait_file(out).sentiment == "positive"
        assert main(argv) == 2
        assert "exists; pass --force" in capsys.readouterr().err
        assert len(server.requests) == 1  # the refusal came before asking the model again
        assert main([*argv, "--force"]) == 0


def test_unknown_backend(tmp_path, capsys) -> None:
    assert main(["traits", "generate", "x", "y", "--backend", "gpt", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown backend 'gpt'" in capsys.readouterr().err


def test_bad_name_costs_no_request_and_api_failures_are_one_line(key) -> None:
    with FakeOpenAI(lambda body: (reply_text(QUESTIONS), None)) as server:
        with pytest.raises(PersonavecError, match="must be a lowercase slug"):
            author_trait("My Trait", "x", chat_backend("openai:writer", server.url))
        assert not server.requests
        server.faults = ["500"] * 5
        with pytest.raises(PersonavecError, match=r"http://127\.0\.0\.1:\d+/v1/ \(model writer\).*HTTP 500"):
            author_trait("cheerful", "x", chat_backend("openai:writer", server.url, backoff=0.001))
