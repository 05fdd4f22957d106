import pytest

from personavec.data.config import KitConfig, ScreenConfig, Selection
from personavec.errors import PersonavecError


def test_fixed_values_are_checked_when_the_config_is_made() -> None:
    with pytest.raises(PersonavecError, match="unknown approx 'last'"):
        ScreenConfig(approx="last")  # type: ignore[arg-type]
    with pytest.raises(PersonavecError, match="on_bad_row must be one of fail, skip"):
        ScreenConfig(on_bad_row="drop")  # type: ignore[arg-type]
    assert ScreenConfig(approx="prompt-last").approx == "prompt-last"


def test_a_selection_knows_whether_it_flags() -> None:
    assert not Selection().flagging and Selection(threshold=0.0).flagging
    with pytest.raises(PersonavecError, match="choose one of"):
        Selection(top=1, threshold=2.0)
    with pytest.raises(PersonavecError, match="strictly between 0 and 1"):
        KitConfig(mild=1.0)


def test_the_own_answers_of_a_screening_are_greedy() -> None:
    from personavec.core.sampling import Sampling

    with pytest.raises(PersonavecError, match="own answers y′ are greedy"):
        ScreenConfig(sampling=Sampling(temperature=1.0))
    assert ScreenConfig(sampling=Sampling(max_new_tokens=8)).sampling.max_new_tokens == 8


def test_several_kit_samples_need_a_temperature() -> None:
    from personavec.core.sampling import Sampling

    with pytest.raises(PersonavecError, match="samples 3 needs a temperature > 0"):
        KitConfig(samples=3, sampling=Sampling())
    KitConfig(samples=3).check(240)
