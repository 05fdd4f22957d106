import pytest

from personavec.errors import PersonavecError
from personavec.training.config import DriftConfig, TrainConfig, TrainIntervention


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainIntervention("steer"), "--intervention steer needs a nonzero --coef"),
        (
            lambda: TrainIntervention("steer", 2.0, layer=2, all_layers=True),
            "--all-layers steers every layer",
        ),
        (lambda: TrainIntervention("shout"), "unknown intervention 'shout'"),  # type: ignore[arg-type]
        (lambda: DriftConfig(stop=True), "the --drift-* options need --drift-every N"),
        (lambda: DriftConfig(threshold=1.0), "the --drift-* options need --drift-every N"),
        (lambda: DriftConfig(every=5, vectors=("v",)), "--drift-every needs --drift-vector"),
        (
            lambda: TrainConfig(intervention=TrainIntervention(during_eval=True)).check(),
            "--during-eval needs --eval-data",
        ),
        (lambda: TrainConfig(rank=0).check(), "rank must be at least 1"),
    ],
)
def test_settings_that_would_do_nothing_are_refused(make, message: str) -> None:
    with pytest.raises(PersonavecError, match=message.replace("*", r"\*")):
        make()


def test_good_settings_pass() -> None:
    TrainConfig(intervention=TrainIntervention(during_eval=True)).check(eval_data="eval.jsonl")
    assert DriftConfig(every=5, vectors=("v",), trait="evil").every == 5
    assert TrainIntervention("steer", 2.0, all_layers=True).all_layers
