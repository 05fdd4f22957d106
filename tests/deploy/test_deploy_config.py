import pytest

from personavec.deploy.config import CapabilityConfig, SteerConfig
from personavec.errors import PersonavecError


def test_capability_scores_the_steered_and_if_asked_the_unsteered_model() -> None:
    assert CapabilityConfig(coef=2.0).coefs(steered=True) == [2.0]
    assert CapabilityConfig(coef=2.0, compare=True).coefs(steered=True) == [0.0, 2.0]
    assert CapabilityConfig(coef=2.0).coefs(steered=False) == [0.0]


def test_steering_positions_are_checked_when_the_config_is_made() -> None:
    assert SteerConfig(positions="response").positions == "response"
    with pytest.raises(PersonavecError, match="positions must be one of all, prompt, response, got 'answer'"):
        SteerConfig(positions="answer")  # type: ignore[arg-type]
