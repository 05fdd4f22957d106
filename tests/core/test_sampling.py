import pytest

from personavec.core.sampling import SAMPLING_FIELDS, Sampling
from personavec.errors import PersonavecError


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"temperature": -0.5}, "temperature must be ≥ 0"),
        ({"temperature": float("inf")}, "temperature must be ≥ 0"),
        ({"top_p": 1.5}, "top_p in (0, 1]"),
    ],
)
def test_sampling_is_checked_when_made(change: dict, message: str) -> None:
    with pytest.raises(PersonavecError) as error:
        Sampling(**change)
    assert message in str(error.value)


def test_decoding_keywords() -> None:
    assert Sampling().greedy and Sampling().decoding()["do_sample"] is False
    assert Sampling(temperature=0.7, top_p=0.9).decoding() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    assert SAMPLING_FIELDS == ("max_new_tokens", "temperature", "top_p", "seed", "batch_size")


def test_several_samples_need_sampling_and_none_is_refused() -> None:
    from personavec.core.sampling import check_samples

    check_samples(1, Sampling())  # one greedy answer per prompt
    check_samples(2, Sampling(temperature=1.0))
    with pytest.raises(PersonavecError, match=r"^samples 2 needs a temperature > 0"):
        check_samples(2, Sampling())
    with pytest.raises(PersonavecError, match=r"^samples must be at least 1, got 0"):
        check_samples(0, Sampling(temperature=1.0))
