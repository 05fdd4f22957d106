"""The kinds of PersonavecError: each kind of mistake raises its own, and the CLI treats all alike."""

from collections.abc import Iterator, Sequence

import pytest
import torch

import personavec
from personavec.cli import main
from personavec.core.models import ModelIdentity
from personavec.core.vectors import PersonaVector
from personavec.errors import ConfigError, DataError, JudgeError, ModelError, PersonavecError, RunDirError
from personavec.judges.base import Judge, Score
from personavec.judges.cache import JudgeCache
from personavec.runs.rundir import RunDir
from personavec.training.config import TrainIntervention
from personavec.traits import load_trait

KINDS = (ConfigError, DataError, ModelError, RunDirError, JudgeError)


def test_every_kind_is_a_personavec_error_and_exported() -> None:
    for kind in KINDS:
        assert issubclass(kind, PersonavecError)
        assert getattr(personavec, kind.__name__) is kind
    assert all(issubclass(k, ValueError) for k in (ConfigError, DataError, ModelError))


def test_settings_that_cannot_work_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a nonzero coef"):
        TrainIntervention("steer")


def test_a_bad_input_file_is_a_data_error(tmp_path) -> None:
    bad = tmp_path / "grumpy.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_trait(str(bad))


def test_a_vector_for_another_model_is_a_model_error() -> None:
    vector = PersonaVector("evil", torch.randn(5, 8))
    other = ModelIdentity(name="big", architecture="llama", n_layers=30, hidden_size=576)
    with pytest.raises(ModelError, match="was made for another model"):
        vector.check_model(other)


def test_a_run_directory_of_another_run_is_a_run_dir_error(tmp_path) -> None:
    RunDir.open(tmp_path, "toy run", {"size": 1}, {})
    with pytest.raises(RunDirError, match="not 'other run'"):
        RunDir.open(tmp_path, "other run", {"size": 1}, {})


class _Unreachable(Judge):
    name = "unreachable"

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> Iterator[tuple[int, Score]]:
        for i in range(len(items)):
            yield i, Score(None, "failed", error="connection refused")


def test_a_judge_that_always_fails_is_a_judge_error(tmp_path) -> None:
    cache = JudgeCache(tmp_path / "judge.jsonl")
    with pytest.raises(JudgeError, match="connection refused"):
        cache.judge(_Unreachable(), "rubric", [("q", "a")] * 3, progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_the_cli_prints_each_kind_as_one_line_and_exits_2(kind, monkeypatch, capsys) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise kind(f"a {kind.__name__} happened; fix it")

    monkeypatch.setattr("personavec.core.vectors.load_vectors", fail)
    assert main(["vectors", "show", "v.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err == f"personavec: error: a {kind.__name__} happened; fix it\n"
