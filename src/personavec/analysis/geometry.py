"""How persona vectors relate: the cosine similarity between vectors at every layer they share (trait ×
trait, as the paper compares its traits), and between the layers of each vector (layer × layer: where
its direction turns).

A layer where a vector is zero (the embeddings' row of a vector from differences of means is often
not) has no direction: its cosines are NaN (``null`` in JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personavec.core.vectors import PersonaVector
from personavec.errors import ConfigError, ModelError

SPAN = 0.9  # the cosine a vector's direction keeps over the layers its span reports


@dataclass(frozen=True)
class Geometry:
    """Cosines of `labels`' vectors: ``across_vectors[ℓ, i, j]`` between vectors i and j at layer ℓ
    (layers 0..L), ``across_layers[i, ℓ, m]`` between layers ℓ and m of vector i; `chosen` their
    chosen layers."""

    labels: list[str]
    chosen: list[int | None]
    across_vectors: np.ndarray
    across_layers: np.ndarray

    @property
    def n_layers(self) -> int:
        return self.across_vectors.shape[0] - 1

    def default_layer(self) -> int:
        """The layer a summary shows: the first vector's chosen layer (of those that have one), else the
        middle one."""
        chosen = [c for c in self.chosen if c is not None]
        return chosen[0] if chosen else self.n_layers // 2

    def span(self, index: int, layer: int, threshold: float = SPAN) -> tuple[int, int]:
        """The run of layers around `layer` whose direction in vector `index` keeps a cosine of at
        least `threshold` with its direction at `layer`: where the vector holds steady."""
        row = self.across_layers[index, layer]
        low = high = layer
        while low > 0 and row[low - 1] >= threshold:
            low -= 1
        while high < self.n_layers and row[high + 1] >= threshold:
            high += 1
        return low, high

    def to_dict(self) -> dict[str, Any]:
        def listed(a: np.ndarray) -> Any:
            return [listed(x) for x in a] if a.ndim > 1 else [None if np.isnan(x) else float(x) for x in a]

        return {
            "labels": self.labels,
            "chosen_layers": self.chosen,
            "across_vectors": listed(self.across_vectors),
            "across_layers": listed(self.across_layers),
        }

    def table(self, layer: int | None = None) -> str:
        """The vector × vector cosines at `layer` (default: `default_layer`) as a text table."""
        layer = self.default_layer() if layer is None else layer
        if not 0 <= layer <= self.n_layers:
            raise ConfigError(f"layer {layer} is out of range 0..{self.n_layers}")
        names = [f"[{i + 1}] {label}" for i, label in enumerate(self.labels)]
        width = max(len(name) for name in names)
        rows = [" " * width + "".join(f"{f'[{i + 1}]':>8}" for i in range(len(names)))]
        for name, row in zip(names, self.across_vectors[layer], strict=True):
            rows.append(f"{name:<{width}}" + "".join(f"{x:>8.3f}" for x in row))
        return f"cosine at layer {layer}\n" + "\n".join(rows)


def _cosines(rows: np.ndarray) -> np.ndarray:
    """Cosine between every pair of `rows` ([n, hidden], float64); NaN where a row is zero."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(norms > 0, rows / norms, np.nan)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def compare(vectors: Sequence[PersonaVector], labels: Sequence[str] | None = None) -> Geometry:
    """The `Geometry` of `vectors` (labelled by trait, or by `labels`), which must come from one model."""
    if not vectors:
        raise ConfigError("nothing to compare: give at least one vector")
    labels = list(labels) if labels is not None else [v.trait for v in vectors]
    if len(labels) != len(vectors):
        raise ConfigError(f"{len(labels)} labels for {len(vectors)} vectors")
    first = vectors[0]
    for label, v in zip(labels[1:], vectors[1:], strict=True):
        ours, theirs = first.model, v.model
        same = (v.n_layers, v.hidden_size) == (first.n_layers, first.hidden_size) and (
            ours is None or theirs is None or (ours.name, ours.sha256) == (theirs.name, theirs.sha256)
        )
        if not same:
            raise ModelError(
                f"{label!r} belongs to {_model(v)}, {labels[0]!r} to {_model(first)}: "
                "compare vectors of one model"
            )
    stacked = np.stack([v.tensor.double().numpy() for v in vectors])  # [vectors, layers, hidden]
    across_vectors = np.stack([_cosines(stacked[:, layer]) for layer in range(stacked.shape[1])])
    across_layers = np.stack([_cosines(stacked[i]) for i in range(len(vectors))])
    return Geometry(labels, [v.layer for v in vectors], across_vectors, across_layers)


def _model(v: PersonaVector) -> str:
    name = v.model.name if v.model else "an unnamed model"
    return f"{name} ({v.n_layers} blocks, hidden {v.hidden_size})"


def plot(geometry: Geometry, path: str | Path, layer: int | None = None) -> Path:
    """A PNG of heat maps: vector × vector at `layer` (with several vectors), and each vector's
    layer × layer cosines. Written atomically; returns the path."""
    from personavec.report.html import agg, save_png

    agg()
    import matplotlib.pyplot as plt

    layer = geometry.default_layer() if layer is None else layer
    panels = (len(geometry.labels) > 1) + len(geometry.labels)
    figure, axes = plt.subplots(
        1, panels, figsize=(3.2 * panels + 1, 3.8), squeeze=False, layout="constrained"
    )
    cells = list(axes[0])
    if len(geometry.labels) > 1:
        ax = cells.pop(0)
        image = ax.imshow(geometry.across_vectors[layer], vmin=-1, vmax=1, cmap="RdBu_r")
        ticks = range(len(geometry.labels))
        ax.set_xticks(ticks, geometry.labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, geometry.labels, fontsize=7)
        ax.set_title(f"vector × vector\nat layer {layer}", fontsize=9)
    for ax, label, grid in zip(cells, geometry.labels, geometry.across_layers, strict=True):
        image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu_r", origin="lower")
        ax.set_title(f"{label}\nlayer × layer", fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8, label="cosine")
    return save_png(figure, path)
