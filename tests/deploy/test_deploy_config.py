from personavec.deploy.config import CapabilityConfig


def test_capability_scores_the_steered_and_if_asked_the_unsteered_model() -> None:
    assert CapabilityConfig(coef=2.0).coefs(steered=True) == [2.0]
    assert CapabilityConfig(coef=2.0, compare=True).coefs(steered=True) == [0.0, 2.0]
    assert CapabilityConfig(coef=2.0).coefs(steered=False) == [0.0]
