"""Batched generation: greedy answers equal plain `generate`, length buckets, seeds per chunk, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from personavec.core.generate import Request, generate, generate_rows, read_rows
from personavec.core.sampling import Sampling
from personavec.errors import PersonavecError

from tiny import tiny_loaded

QUESTIONS = [
    "Hi",
    "Tell me about the history of the Roman empire and its emperors, please.",
    "How do I bake bread?",
    "What a terrible, gloomy morning; will anything go right today?",
    "Numbers?",
    "Describe the weather.",
    "You are happy about the sunshine. Why?",
]


@pytest.fixture(scope="module")
def loaded():
    return tiny_loaded()


def plain_greedy(loaded, prompt: str, max_new_tokens: int) -> str:
    ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = loaded.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_greedy_answers_equal_plain_generate_one_prompt_at_a_time(loaded) -> None:
    prompts = [loaded.chat(q) for q in QUESTIONS]
    expected = [plain_greedy(loaded, p, 5) for p in prompts]
    assert all(expected)
    for batch_size in (1, 3, 16):
        assert generate(loaded, prompts, Sampling(5, batch_size=batch_size), progress=False) == expected


def test_prompts_are_batched_by_length(loaded, monkeypatch) -> None:
    prompts = [loaded.chat(q) for q in QUESTIONS]
    lengths = [len(loaded.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    widths: list[list[int]] = []
    original = loaded.model.generate

    def recording(**batch):
        widths.append(batch["attention_mask"].sum(1).tolist())
        return original(**batch)

    monkeypatch.setattr(loaded.model, "generate", recording)
    generate(loaded, prompts, Sampling(2, batch_size=3), progress=False)
    assert [len(w) for w in widths] == [3, 3, 1]
    assert [n for w in widths for n in w] == sorted(lengths)  # shortest first, neighbours together


def test_sampling_is_seeded(loaded) -> None:
    prompts = [loaded.chat(q) for q in QUESTIONS[:4]]

    def sample(seed: int) -> list[str]:
        return generate(
            loaded, prompts, Sampling(6, temperature=1.0, seed=seed, batch_size=2), progress=False
        )

    assert sample(3) == sample(3) != sample(4)
    assert sample(3) != generate(loaded, prompts, Sampling(6, batch_size=2), progress=False)


def test_max_new_tokens_below_one_is_refused() -> None:
    with pytest.raises(PersonavecError, match="max_new_tokens must be at least 1"):
        Sampling(max_new_tokens=0)


def requests(n: int = 10) -> list[Request]:
    return [
        Request(f"r{i}", QUESTIONS[i % len(QUESTIONS)], "Be brief." if i % 2 else None, (("n", i),))
        for i in range(n)
    ]


def rows_into(loaded, path: Path, reqs: list[Request] | None = None) -> list[dict]:
    reqs = reqs or requests()
    sampling = Sampling(max_new_tokens=4, temperature=1.0, seed=7, batch_size=2)
    return generate_rows(loaded, reqs, path, sampling, chunk_size=4, progress=False)


def test_chunk_k_is_sampled_with_seed_plus_k(loaded, tmp_path) -> None:
    reqs = requests()
    rows = rows_into(loaded, tmp_path / "rows.jsonl", reqs)
    assert [r["id"] for r in rows] == [r.id for r in reqs] and rows[3]["n"] == 3
    assert [r["system"] for r in rows[:2]] == [None, "Be brief."]
    for k in range(3):
        chunk = reqs[4 * k : 4 * k + 4]
        prompts = [r.prompt(loaded) for r in chunk]
        answers = generate(
            loaded, prompts, Sampling(4, temperature=1.0, seed=7 + k, batch_size=2), progress=False
        )
        assert [r["answer"] for r in rows[4 * k : 4 * k + 4]] == answers


def test_resume_after_a_crash_gives_the_same_file_byte_for_byte(loaded, tmp_path) -> None:
    clean = tmp_path / "clean.jsonl"
    rows_into(loaded, clean)
    lines = clean.read_text().splitlines(keepends=True)
    assert len(lines) == 10
    crashes = {
        "after chunk 0": "".join(lines[:4]),
        "torn line": "".join(lines[:4]) + lines[4][:17],
        "half a chunk": "".join(lines[:6]),  # a crash while the chunk's lines were being written
        "torn first line": lines[0][:5],
    }
    for name, text in crashes.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        resumed = rows_into(loaded, path)
        assert path.read_bytes() == clean.read_bytes(), name
        assert resumed == list(read_rows(clean).values())


def test_a_done_file_is_not_regenerated(loaded, tmp_path, monkeypatch) -> None:
    path = tmp_path / "rows.jsonl"
    first = rows_into(loaded, path)
    monkeypatch.setattr(loaded.model, "generate", lambda **_: pytest.fail("generated again"))
    assert rows_into(loaded, path) == first
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [r.id for r in requests()]
