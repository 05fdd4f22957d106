import pytest

from personavec.errors import PersonavecError
from personavec.pipeline.config import ExtractConfig
from personavec.traits import load_trait


def test_the_pairing_is_checked_when_the_config_is_made() -> None:
    with pytest.raises(PersonavecError, match="pairing must be one of paired, per-side, got 'both'"):
        ExtractConfig(pairing="both")  # type: ignore[arg-type]
    ExtractConfig(pairing="per-side").check(load_trait("evil"))


def test_layers_are_checked_against_the_model_only_when_it_is_known() -> None:
    config = ExtractConfig(layers=(40,))
    config.check(load_trait("evil"))  # no model yet: nothing to check the layer against
    with pytest.raises(PersonavecError, match="layer 40"):
        config.check(load_trait("evil"), n_layers=30)


def test_several_samples_need_a_temperature() -> None:
    from personavec.core.sampling import Sampling

    with pytest.raises(PersonavecError, match="samples 10 needs a temperature > 0"):
        ExtractConfig(sampling=Sampling(max_new_tokens=256))
    ExtractConfig(samples=1, sampling=Sampling(max_new_tokens=256)).check(load_trait("evil"))


@pytest.mark.parametrize("name", ["questions", "instructions", "sweep_questions", "min_pairs"])
def test_sizes_below_one_are_refused_when_the_config_is_made(name: str) -> None:
    with pytest.raises(PersonavecError, match=f"^{name} must be at least 1, got 0"):
        ExtractConfig(**{name: 0})
