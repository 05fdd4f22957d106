"""Guarded steering: steer a sequence away from a trait only once the monitor sees it drifting.

Inside one batched ``generate``: at the end of the prompt (and, with ``per_token=True``, at every new
token) the projection of the last position onto v̂ at the vector's layer is compared with a
threshold; a sequence above it gets −coef·v added at that layer from that position on. Sequences that
never cross stay untouched: their tokens are bit-identical to unsteered generation of the same batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from personavec.core.backend import GuardRule, Probe
from personavec.core.hf import LedgerHooks
from personavec.core.ledger import Ledger, Plan
from personavec.core.units import CoefUnits
from personavec.core.vectors import PersonaVector
from personavec.errors import ConfigError


class Guard(LedgerHooks):
    """Context manager: per-sequence steering by −coef·v, switched on when the projection > threshold.

    with Guard(model, evil, threshold=4.0, coef=1.5) as guard:
        model.generate(**batch)
    guard.fired        # [batch] bool: which sequences of the last generation were steered
    guard.fired_at     # [batch] step at which each fired (0 = end of prompt), -1 if never
    guard.steered, guard.seen   # sequences steered / seen over every generation while active

    It needs ``generate``'s KV cache (the default; a forward over an empty cache starts a generation) and
    left padding. Rows are generate's rows (batch × num_return_sequences); with beam search and
    ``per_token`` a row follows its slot, not a hypothesis. Each row is a request of the ledger
    (`personavec.core.ledger`) with one probe and one guard: the check and the push are the ones every
    backend runs.
    """

    def __init__(
        self,
        model: nn.Module,
        vector: PersonaVector,
        threshold: float,
        coef: float,
        layer: int | None = None,
        per_token: bool = False,
        units: CoefUnits = "raw",
    ) -> None:
        self.layer = vector.resolve_layer(layer)
        coef = vector.raw_coef(coef, self.layer, units)
        if coef <= 0:
            raise ConfigError(f"the guard's coefficient is the size of the push away: use > 0, got {coef}")
        self.threshold, self.per_token = float(threshold), per_token
        self.probe = Probe(self.layer, vector.unit(self.layer))
        self.rule = GuardRule(0, self.threshold, coef, vector.at(self.layer), per_token)
        super().__init__(model, Ledger(), [self.layer])
        self._prompt_lens: list[int] = []  # the last generation's rows
        self.steered = self.seen = 0

    @property
    def fired_at(self) -> Tensor:
        steps = [
            -1 if at is None else at - (n - 1)
            for r, n in enumerate(self._prompt_lens)
            for at in self.ledger.fired(r)
        ]
        return torch.tensor(steps, dtype=torch.long)

    @property
    def fired(self) -> Tensor:
        return self.fired_at >= 0

    @property
    def rate(self) -> float:
        """Fraction of the sequences of the last generation that were steered."""
        return float(self.fired.float().mean()) if self._prompt_lens else 0.0

    def _begin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.state.check_last_real()
        if self.state.offset == 0:  # an empty KV cache: a new generation, a request per row
            assert self.state.real is not None
            self._count()
            self._prompt_lens = self.state.real.sum(-1).tolist()
            for r, n in enumerate(self._prompt_lens):
                self.ledger.open(r, Plan(n, probes=(self.probe,), guards=(self.rule,)))
            self.seen += len(self._prompt_lens)
        super()._begin(module, args, kwargs)

    def _count(self) -> None:
        """Add the finished generation's fired sequences to `steered`; start an empty ledger."""
        self.steered += int(self.fired.sum())
        self.ledger, self._prompt_lens = Ledger(), []

    def __enter__(self) -> Guard:
        super().__enter__()
        self.steered = self.seen = 0
        self.ledger, self._prompt_lens = Ledger(), []
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        last = self.ledger, self._prompt_lens
        self._count()
        self.ledger, self._prompt_lens = last  # the last generation's stays readable
