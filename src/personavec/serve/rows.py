"""What each row (request) of the server asks of the backend: the vectors served (`Watched`), and its
own steering and guard (`RowPlan`), turned into a backend request's edits, probes and guard.

Every served vector is read at its layer on every row, before any edit there. A row's steering adds
coef·v on every token (as `PersonaVector.apply` does); its guard pushes by −coef·v from the position
its projection first exceeds the threshold (as `Guard` does). A row that neither steers nor fires is
left bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from personavec.core.backend import Edit, GuardRule, Probe
from personavec.deploy.monitor import Watched


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

    def parts(
        self, watched: Sequence[Watched]
    ) -> tuple[tuple[Edit, ...], tuple[Probe, ...], tuple[GuardRule, ...]]:
        """The row as a backend request's parts: its steering edits, a probe per served vector (probe j
        reads vector j), and its guard."""
        edits = tuple(Edit(watched[j].layer, watched[j].direction, c) for j, c in self.steer.items() if c)
        probes = tuple(Probe(w.layer, w.unit) for w in watched)
        g = self.guard
        guards = (
            ()
            if g is None
            else (GuardRule(g.index, g.threshold, g.coef, watched[g.index].direction, g.per_token),)
        )
        return edits, probes, guards
