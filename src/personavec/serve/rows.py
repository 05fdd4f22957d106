"""Per-row reading and steering inside one batched ``generate``: each row (request) of a shared batch
has its own steering coefficients and guard, and every row's projections are read.

At each watched layer and forward call, the hook first reads the last position's projection onto
each vector at that layer (the model's own state, before any edit there), then adds each row's
steering, coef·v on every real token (as `PersonaVector.apply` does), and each fired guard's push,
−coef·v at the last position from the step it fired on (as `Guard` does). A row that neither steers
nor fires is left bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from personavec.core.hooks import ResidualHooks
from personavec.core.vectors import PersonaVector


@dataclass(frozen=True)
class Watched:
    """A vector the server measures, read (and steered) at `layer`."""

    name: str
    vector: PersonaVector
    layer: int

    @property
    def unit(self) -> Tensor:
        return self.vector.unit(self.layer)

    @property
    def direction(self) -> Tensor:
        return self.vector.at(self.layer).float()


@dataclass(frozen=True)
class GuardPlan:
    """Push by −coef·v of vector `index` once its projection exceeds `threshold` (at the prompt's
    end, or at any token with `per_token`)."""

    index: int
    threshold: float
    coef: float
    per_token: bool = False


@dataclass(frozen=True)
class RowPlan:
    """One row's steering: coef per vector index, and an optional guard."""

    steer: dict[int, float] = field(default_factory=dict)
    guard: GuardPlan | None = None


class RowHooks(ResidualHooks):
    """Reads every vector at its layer and steers each row by its own plan.

    ``latest()`` is the last forward call's projections ``[batch, vectors]`` (step 0: the prompt's last
    token; step s: generated token s, fed back). ``fired_at[r]`` is the step row r's guard fired at (−1:
    never). Needs left padding and ``generate``'s dynamic cache, as the monitor does.
    """

    def __init__(self, model: nn.Module, watched: Sequence[Watched], plans: Sequence[RowPlan]) -> None:
        super().__init__(model, {w.layer for w in watched})
        batch = len(plans)
        self.watched = list(watched)
        self.units = [w.unit for w in watched]
        self.steer = {
            j: torch.tensor([p.steer.get(j, 0.0) for p in plans])
            for j in range(len(watched))
            if any(p.steer.get(j) for p in plans)
        }
        guarded = {p.guard.index for p in plans if p.guard is not None}
        self.guards = {j: self._guard_rows(plans, j) for j in guarded}
        self.batch = batch
        self.fired_at = torch.full((batch,), -1, dtype=torch.long)
        self.step = -1
        self._call = -1
        self._current: list[Tensor | None] = [None] * len(watched)
        self._placed: dict[tuple[str, int, torch.device, torch.dtype], Tensor] = {}

    @staticmethod
    def _guard_rows(plans: Sequence[RowPlan], j: int) -> tuple[Tensor, Tensor, Tensor]:
        """Thresholds (inf for unguarded rows), coefs and per-token flags of the rows guarding vector j."""
        mine = [p.guard if p.guard is not None and p.guard.index == j else None for p in plans]
        return (
            torch.tensor([g.threshold if g else float("inf") for g in mine]),
            torch.tensor([g.coef if g else 0.0 for g in mine]),
            torch.tensor([bool(g and g.per_token) for g in mine]),
        )

    def _on(self, kind: str, j: int, like: Tensor, make: Tensor) -> Tensor:
        key = (kind, j, like.device, like.dtype)
        if key not in self._placed:
            self._placed[key] = make.to(device=like.device, dtype=like.dtype)
        return self._placed[key]

    def edit(self, layer: int, hidden: Tensor) -> Tensor | None:
        self.state.check_last_real()
        if self._call != self.state.calls:  # the first watched layer of a new forward call
            self._call = self.state.calls
            self.step = 0 if self.state.offset == 0 else self.step + 1
            self._current = [None] * len(self.watched)
        last = hidden[:, -1].float()
        out = hidden
        for j, w in enumerate(self.watched):
            if w.layer != layer:
                continue
            value = last @ self._on("unit", j, last, self.units[j])
            self._current[j] = value
            if j in self.guards:
                self._check_guard(j, value)
            if j in self.steer:  # coef·v on every real token, as PersonaVector.apply does
                coefs = self._on("coef", j, hidden, self.steer[j]).view(-1, 1, 1)
                real = self.state.select("all").to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
                out = out + coefs * self._on("dir", j, hidden, w.direction) * real
            if j in self.guards:  # −coef·v at the last position of the rows that fired, as Guard does
                fired = (self.fired_at >= 0) & (self.guards[j][0] < float("inf"))
                if bool(fired.any()):
                    push = -self.guards[j][1].view(-1, 1) * w.direction
                    push = push * fired.view(-1, 1)
                    out = out.clone() if out is hidden else out
                    out[:, -1] = out[:, -1] + push.to(device=hidden.device, dtype=hidden.dtype)
        return None if out is hidden else out

    def _check_guard(self, j: int, value: Tensor) -> None:
        threshold, _, per_token = self.guards[j]
        watching = torch.ones_like(per_token) if self.step == 0 else per_token
        crossing = (value.cpu() > threshold) & (self.fired_at < 0) & watching
        self.fired_at = torch.where(crossing, self.step, self.fired_at)

    def __enter__(self) -> RowHooks:
        super().__enter__()
        return self

    def latest(self) -> Tensor:
        """The last forward call's projections, ``[batch, vectors]`` float32 on the CPU."""
        if not self.watched:
            return torch.zeros(self.batch, 0)
        return torch.stack([value.cpu() for value in self._current if value is not None], dim=-1)
