"""The statistics of every stage's figures: means with 95 % intervals, paired bootstrap intervals, AUROC, rank
and linear correlation (with its interval)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_ci(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, 95 % confidence half-width (normal approximation) and count of the non-missing values."""
    found = [v for v in values if v is not None]
    if not found:
        return None, None, 0
    mean = sum(found) / len(found)
    if len(found) < 2:
        return mean, None, 1
    variance = sum((v - mean) ** 2 for v in found) / (len(found) - 1)
    return mean, 1.96 * math.sqrt(variance / len(found)), len(found)


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get average ranks); None with fewer than 3 points."""
    if len(x) < 3:
        return None

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else None


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than 3 points or a constant variable."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a − b over paired items (questions, windows), with the 95 % percentile interval of a
    bootstrap that resamples the items: (mean, low, high)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired samples need the same length ≥ 2; got {len(a)} and {len(b)}")
    differences = np.asarray(a, float) - np.asarray(b, float)
    draws = np.random.default_rng(seed).integers(0, len(differences), (resamples, len(differences)))
    means = differences[draws].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(differences.mean()), float(low), float(high)


def pearson_ci(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float] | None:
    """Pearson's r with its 95 % interval by Fisher's z (tanh(atanh r ± 1.96/√(n − 3))); None with
    fewer than 4 points or a constant variable."""
    r = pearson(x, y)
    if r is None or len(x) < 4:
        return None
    z, width = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), 1.96 / math.sqrt(len(x) - 3)
    return r, math.tanh(z - width), math.tanh(z + width)
