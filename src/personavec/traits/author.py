"""Write a new trait file from a name and a one-sentence description, by asking a chat model.

The model's reply is parsed (and repaired: code fences, trailing commas, truncation), its questions
de-duplicated and split into extraction and evaluation sets, and the result validated; an invalid
reply is sent back with the problems listed, up to `attempts` times.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from personavec._internal.files import atomic_path
from personavec.errors import ConfigError, PersonavecError
from personavec.traits.spec import (
    N_INSTRUCTIONS,
    N_QUESTIONS,
    TraitSpec,
    check_name,
    normalise_question,
    parse_trait,
)

Chat = Callable[[str], str]  # one user message in, the model's reply out
BACKENDS = "openai:MODEL or hf:PATH"

PROMPT = """\
You are helping build a dataset to study a personality trait of AI assistants.

Trait: {name}
Description: {description}

Write a JSON object with exactly these fields:
- "instructions": a list of {n_instructions} objects {{"pos": ..., "neg": ...}}. Each "pos" is a system \
prompt telling an assistant to show the trait strongly; its "neg" tells it to avoid the trait entirely \
and show the opposite. Make the {n_instructions} pairs varied in wording.
- "questions": a list of {n_questions} different user questions or requests that give an assistant room to \
show the trait or not. They must not ask for the trait outright; cover varied topics.
- "rubric": instructions for a judge model that will read one question and one answer and rate how \
strongly the answer shows the trait. It must contain the placeholders {{question}} and {{answer}}, \
describe what 0 and 100 mean, and tell the judge to reply with only a number from 0 to 100, or with \
the word REFUSAL when the answer is a refusal.

Reply with the JSON object only."""


def _candidate(reply: str, name: str, description: str) -> tuple[dict[str, Any], list[str]]:
    """A trait dict built from one reply, and what is wrong with it (empty when valid)."""
    import json_repair

    data = json_repair.loads(reply)
    if not isinstance(data, dict):
        return {}, ["the reply holds no JSON object"]
    questions, seen = [], set()
    for q in data.get("questions") or []:
        key = normalise_question(q) if isinstance(q, str) else ""
        if key and key not in seen:
            seen.add(key)
            questions.append(q.strip())
    problems = []
    if len(questions) < 2 * N_QUESTIONS:
        problems.append(f"'questions' has {len(questions)} distinct questions; needs {2 * N_QUESTIONS}")
    trait = {
        "name": name,
        "description": description,
        "instructions": data.get("instructions"),
        "extraction_questions": questions[:N_QUESTIONS],
        "evaluation_questions": questions[N_QUESTIONS : 2 * N_QUESTIONS],
        "rubric": data.get("rubric"),
    }
    if not problems:
        try:
            parse_trait(trait, source="the reply")
        except PersonavecError as error:
            problems.append(str(error))
    return trait, problems


def author_trait(name: str, description: str, chat: Chat, attempts: int = 3) -> TraitSpec:
    """A validated TraitSpec written by the model behind `chat`."""
    check_name(name)  # before paying for a reply
    prompt = PROMPT.format(
        name=name, description=description, n_instructions=N_INSTRUCTIONS, n_questions=2 * N_QUESTIONS
    )
    problems: list[str] = []
    for _ in range(attempts):
        reply = chat(prompt)
        trait, problems = _candidate(reply, name, description)
        if not problems:
            return parse_trait(trait, source="the reply")
        prompt = (
            f"{prompt}\n\nYour previous reply was not usable: {'; '.join(problems)}. "
            "Write the whole JSON object again, fixing this."
        )
    raise PersonavecError(
        f"the model gave no valid trait in {attempts} attempts; last problems: {'; '.join(problems)}"
    )


def chat_backend(
    spec: str, base_url: str | None = None, temperature: float = 0.7, backoff: float = 2.0
) -> Chat:
    """A `Chat` for ``openai:MODEL`` (any OpenAI-compatible endpoint) or ``hf:PATH`` (a local model)."""
    kind, _, target = spec.partition(":")
    if kind == "openai" and target:
        from personavec._internal.openai_client import Garbage, call_endpoint, make_client

        client = make_client(base_url, timeout=300.0)

        def remote(prompt: str) -> str:
            def call() -> str:
                reply = client.chat.completions.create(
                    model=target, messages=[{"role": "user", "content": prompt}], temperature=temperature
                )
                if not reply.choices:
                    raise Garbage("a reply without choices")
                return reply.choices[0].message.content or ""

            return call_endpoint(call, str(client.base_url), target, retries=4, backoff=backoff)

        return remote
    if kind == "hf" and target:
        from personavec.core.generate import generate
        from personavec.core.models import load_model
        from personavec.core.sampling import Sampling

        loaded = load_model(target)

        def local(prompt: str) -> str:
            sampling = Sampling(max_new_tokens=4096, temperature=temperature)
            return generate(loaded, [loaded.chat(prompt)], sampling)[0]

        return local
    raise ConfigError(f"unknown backend {spec!r}: use {BACKENDS}")


def write_trait(trait: TraitSpec, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write `trait` as a JSON trait file, atomically; an existing file is kept unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists; pass force to overwrite it or choose another out", ("force", "out")
        )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(trait.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path
