import json
import os
import subprocess
import sys

import pytest

from personavec import PersonavecError
from personavec.cli import main
from personavec.core.sampling import Sampling
from personavec.data.datakit import KitConfig, make_trait_dataset
from personavec.traits import builtin_names, load_trait
from personavec.traits.questions import bundled_questions
from personavec.traits.spec import normalise_question

from killing import kill_after_lines
from tiny import tiny_loaded

QUESTIONS = [f"What do you think about {w} number {i}?" for i, w in enumerate(["bread", "rain", "math"] * 4)]
CONFIG = KitConfig(mild=0.25, reference=4, sampling=Sampling(max_new_tokens=5, temperature=1.0, batch_size=4))


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_graded_levels_from_the_models_own_answers(tmp_path) -> None:
    loaded, trait = tiny_loaded(), load_trait("optimistic")
    manifest = make_trait_dataset(loaded, trait, tmp_path / "kit", QUESTIONS, CONFIG, progress=False)
    generations = {}
    for line in (tmp_path / "kit" / "generations.jsonl").read_text().splitlines():
        row = json.loads(line)
        generations[(row["question"], row["system"])] = row["answer"]
    eliciting = {pair["pos"] for pair in trait.instructions}
    levels = {level: read(tmp_path / "kit" / f"{level}.jsonl") for level in ("normal", "mild", "severe")}
    reference = read(tmp_path / "kit" / "reference.jsonl")
    training = {r["messages"][0]["content"] for r in levels["normal"]}
    assert len(training) + len(reference) <= 12 and not training & {
        r["messages"][0]["content"] for r in reference
    }
    for level, fraction in (("normal", 0), ("mild", 0.25), ("severe", 1)):
        rows = levels[level]
        assert sum(r["elicited"] for r in rows) == round(fraction * 8) == manifest.files[level].elicited
        for row in rows:
            user, assistant = row["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")  # no system prompt stored
            systems = [
                s for (q, s), a in generations.items() if q == user["content"] and a == assistant["content"]
            ]
            assert systems, "every answer is one the model gave"
            assert (systems[0] in eliciting) == row["elicited"] or (
                not row["elicited"] and systems[0] is None
            )
    mild = {r["messages"][0]["content"] for r in levels["mild"] if r["elicited"]}
    assert mild <= {r["messages"][0]["content"] for r in levels["severe"] if r["elicited"]}
    assert not any(r["elicited"] for r in reference)

    again = make_trait_dataset(loaded, trait, tmp_path / "again", QUESTIONS, CONFIG, progress=False)
    assert again.files == manifest.files
    assert (tmp_path / "again" / "mild.jsonl").read_text() == (tmp_path / "kit" / "mild.jsonl").read_text()


def test_inverted_uses_the_suppressing_prompts(tmp_path) -> None:
    trait = load_trait("optimistic")
    sampling = Sampling(max_new_tokens=3, temperature=1.0, batch_size=4)
    config = KitConfig(invert=True, mild=0.5, reference=2, sampling=sampling)
    manifest = make_trait_dataset(tiny_loaded(), trait, tmp_path, QUESTIONS[:6], config, progress=False)
    systems = {
        json.loads(line)["system"] for line in (tmp_path / "generations.jsonl").read_text().splitlines()
    }
    assert systems - {None} <= {pair["neg"] for pair in trait.instructions}
    assert manifest.teaches == "the opposite of optimistic"


def test_bad_questions_and_sizes_are_refused(tmp_path) -> None:
    trait = load_trait("optimistic")
    with pytest.raises(PersonavecError, match="1 questions are 'optimistic''s evaluation questions"):
        make_trait_dataset(
            tiny_loaded(), trait, tmp_path, [*QUESTIONS, trait.evaluation_questions[0]], CONFIG
        )
    with pytest.raises(PersonavecError, match="given twice"):
        make_trait_dataset(tiny_loaded(), trait, tmp_path, [*QUESTIONS, QUESTIONS[0]], CONFIG)
    with pytest.raises(PersonavecError, match="mild is a fraction"):
        make_trait_dataset(tiny_loaded(), trait, tmp_path, QUESTIONS, KitConfig(mild=1.0))
    assert (
        main(["data", "make-trait-dataset", "--model", "x", "--trait", "nope", "--out", str(tmp_path)]) == 2
    )


def test_bundled_questions_are_distinct_and_not_any_traits_evaluation_questions() -> None:
    questions = bundled_questions()
    keys = {normalise_question(q) for q in questions}
    assert len(questions) == len(keys) == 240
    for name in builtin_names():
        trait = load_trait(name)
        assert not keys & {
            normalise_question(q) for q in trait.evaluation_questions + trait.extraction_questions
        }


def test_kill_9_while_generating_then_resume_gives_identical_files(tiny_dir, tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def command(out) -> list[str]:  # 240 bundled questions: 440 answers, chunks of 128
        return [
            sys.executable, "-m", "personavec.cli", "data", "make-trait-dataset", "--model", str(tiny_dir),
            "--trait", "optimistic", "--out", str(out), "--max-new-tokens", "12", "--batch-size", "16",
        ]  # fmt: skip

    generations = tmp_path / "run" / "generations.jsonl"
    written = kill_after_lines(command(tmp_path / "run"), generations, 128, env)
    assert 128 <= written < 440, f"not killed while generating ({written} answers written)"
    assert not (tmp_path / "run" / "severe.jsonl").exists()

    for out in ("run", "clean"):
        done = subprocess.run(command(tmp_path / out), env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    for name in ("generations.jsonl", "normal.jsonl", "mild.jsonl", "severe.jsonl", "reference.jsonl"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
