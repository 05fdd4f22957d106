import pytest

from personavec.errors import PersonavecError
from personavec.training.config import DriftConfig, TrainConfig, TrainIntervention


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainIntervention("steer"), "^method steer needs a nonzero coef"),
        (
            lambda: TrainIntervention("steer", 2.0, layer=2, all_layers=True),
            "^all_layers steers at each block",
        ),
        (lambda: TrainIntervention("shout"), "unknown method 'shout'"),  # type: ignore[arg-type]
        (lambda: DriftConfig(stop=True), "threshold, stop, vectors and trait need every N"),
        (lambda: DriftConfig(threshold=1.0), "threshold, stop, vectors and trait need every N"),
        (lambda: DriftConfig(every=5, vectors=("v",)), r"interval \(every\) needs vectors"),
        (
            lambda: TrainConfig(intervention=TrainIntervention(during_eval=True)).check(),
            "^during_eval needs eval_data",
        ),
        (lambda: TrainConfig(rank=0), "^rank must be at least 1"),
    ],
)
def test_settings_that_would_do_nothing_are_refused(make, message: str) -> None:
    with pytest.raises(PersonavecError, match=message):
        make()


def test_good_settings_pass() -> None:
    TrainConfig(intervention=TrainIntervention(during_eval=True)).check(eval_data="eval.jsonl")
    assert DriftConfig(every=5, vectors=("v",), trait="evil").every == 5
    assert TrainIntervention("steer", 2.0, all_layers=True).all_layers
