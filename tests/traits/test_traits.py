import json

import pytest

from personavec import PersonavecError
from personavec.cli import main
from personavec.traits import builtin_names, load_trait, validate_trait_file
from personavec.traits.spec import normalise_question, parse_trait

BUILTINS = ["apathetic", "evil", "hallucinating", "humorous", "impolite", "optimistic", "sycophantic"]


def _valid() -> dict:
    return {
        "name": "gloomy",
        "description": "Expects the worst.",
        "instructions": [{"pos": f"Be gloomy {i}.", "neg": f"Be cheerful {i}."} for i in range(5)],
        "extraction_questions": [f"What about topic number {i}?" for i in range(20)],
        "evaluation_questions": [f"How do you see subject {i}?" for i in range(20)],
        "rubric": "Rate gloom 0 to 100 in the answer {answer} to {question}; say REFUSAL for refusals.",
    }


def test_every_builtin_validates() -> None:
    assert builtin_names() == BUILTINS
    for name in BUILTINS:
        spec = load_trait(name)
        assert spec.name == name and len(spec.instructions) == 5
        assert len(spec.extraction_questions) == len(spec.evaluation_questions) == 20
        extraction = {normalise_question(q) for q in spec.extraction_questions}
        assert not extraction & {normalise_question(q) for q in spec.evaluation_questions}
        assert "{question}" in spec.rubric and "{answer}" in spec.rubric
        assert spec.graded_prompts is not None and len(spec.graded_prompts) == 8
    assert load_trait("optimistic").sentiment == "positive"
    assert all(load_trait(n).sentiment is None for n in BUILTINS if n != "optimistic")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("rubric"), "missing field 'rubric'"),
        (lambda d: d.update(colour="blue"), "unknown field 'colour'"),
        (lambda d: d["instructions"].pop(), "'instructions' has 4 pairs; needs 5"),
        (lambda d: d["instructions"].__setitem__(2, {"pos": "x"}), r"'instructions'\[2\] must be"),
        (lambda d: d["extraction_questions"].pop(), "'extraction_questions' has 19 questions; needs 20"),
        (
            lambda d: d["evaluation_questions"].__setitem__(3, "what about TOPIC number 7"),
            r"'evaluation_questions'\[3\] repeats 'extraction_questions'\[7\]",
        ),
        (
            lambda d: d.update(rubric="Score it 0 to 100: {answer}. REFUSAL."),
            "lacks the placeholder {question}",
        ),
        (lambda d: d.update(rubric="Score {question} {answer} from 0 to 100."), "REFUSAL"),
        (lambda d: d.update(name="Gloomy Trait"), "must be a lowercase slug"),
        (lambda d: d.update(graded_prompts=["a"] * 7), "'graded_prompts' must be 8"),
        (lambda d: d.update(sentiment="sad"), "'sentiment' must be"),
    ],
)
def test_broken_files_give_precise_errors(tmp_path, change, message: str) -> None:
    data = _valid()
    change(data)
    path = tmp_path / "gloomy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PersonavecError, match=message):
        validate_trait_file(path)


def test_all_problems_in_one_error_and_bad_json(tmp_path) -> None:
    data = _valid()
    data.pop("name")
    data["extraction_questions"] = data["extraction_questions"][:3]
    with pytest.raises(PersonavecError, match="missing field 'name'; 'extraction_questions' has 3"):
        parse_trait(data)
    (tmp_path / "bad.json").write_text('{"name": "x",\n  "description": }')
    with pytest.raises(PersonavecError, match=r"not valid JSON \(line 2, column 18"):
        validate_trait_file(tmp_path / "bad.json")
    with pytest.raises(PersonavecError, match="unknown trait 'grumpy': built-ins are apathetic, evil"):
        load_trait("grumpy")


def test_cli(tmp_path, capsys) -> None:
    assert main(["traits", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in BUILTINS)
    assert main(["traits", "show", "evil"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "evil"
    good = tmp_path / "gloomy.json"
    good.write_text(json.dumps(_valid()))
    assert main(["traits", "validate", str(good)]) == 0
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps({**_valid(), "instructions": []}))
    assert main(["traits", "validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'instructions' has 0 pairs; needs 5" in err
