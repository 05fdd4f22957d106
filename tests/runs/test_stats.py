import math

import numpy as np
import pytest

from personavec.runs.stats import auroc, paired_bootstrap, pearson_ci


def test_the_paired_bootstrap_matches_the_normal_interval_of_the_differences() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 30, 400)
    b = a + rng.normal(-2, 10, 400)  # a shared per-item part (a): pairing removes it
    mean, low, high = paired_bootstrap(list(a), list(b))
    d = a - b
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert mean == pytest.approx(d.mean())
    assert low == pytest.approx(d.mean() - half, abs=0.06)  # 90 % instead of 95 % would be 0.16 off
    assert high == pytest.approx(d.mean() + half, abs=0.06)
    unpaired = 1.96 * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert (high - low) / 2 < unpaired / 2  # far narrower than treating the samples as independent


def test_the_paired_bootstrap_is_seeded_and_refuses_unpaired_samples() -> None:
    a, b = [1.0, 5.0, 2.0, 8.0, 3.5, 7.25, 0.5, 6.0], [0.0, 1.0, 3.0, 2.0, 1.5, 2.0, 2.5, 1.0]
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)
    assert paired_bootstrap(a, b, seed=1) != paired_bootstrap(a, b)
    mean, low, high = paired_bootstrap(a, b)
    assert low <= mean <= high and low >= min(x - y for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(a, b[:3])


def test_pearson_interval_is_fishers_z() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=28)
    y = x + rng.normal(size=28)
    r, low, high = pearson_ci(list(x), list(y))  # type: ignore[misc]
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    z, se = 0.5 * math.log((1 + r) / (1 - r)), 1 / math.sqrt(28 - 3)
    assert low == pytest.approx(math.tanh(z - 1.96 * se)) and high == pytest.approx(math.tanh(z + 1.96 * se))
    assert pearson_ci([1.0, 2.0, 3.0], [2.0, 1.0, 4.0]) is None  # too few points for an interval


def test_auroc_counts_ties_half_and_needs_both_sides() -> None:
    # pairs (p, n): (1, 1) tie, (1, 3) loss, (2, 1) win, (2, 3) loss, (4, 1) win, (4, 3) win
    assert auroc([1.0, 2.0, 4.0], [1.0, 3.0]) == pytest.approx((0.5 + 0 + 1 + 0 + 1 + 1) / 6)
    assert auroc([1.0], []) is None and auroc([], [1.0]) is None
