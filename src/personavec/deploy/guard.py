"""Guarded steering: steer a sequence away from a trait only once the monitor sees it drifting.

Inside one batched ``generate``: at the end of the prompt (and, with ``per_token=True``, at every new
token) the projection of the last position onto v̂ at the vector's layer is compared with a
threshold; a sequence above it gets −coef·v added at that layer from that position on. Sequences that
never cross stay untouched: their tokens are bit-identical to unsteered generation of the same batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from personavec.core.hooks import ResidualHooks
from personavec.core.vectors import PersonaVector
from personavec.errors import ConfigError


class Guard(ResidualHooks):
    """Context manager: per-sequence steering by −coef·v, switched on when the projection > threshold.

    with Guard(model, evil, threshold=4.0, coef=1.5) as guard:
        model.generate(**batch)
    guard.fired        # [batch] bool: which sequences of the last generation were steered
    guard.fired_at     # [batch] step at which each fired (0 = end of prompt), -1 if never
    guard.steered, guard.seen   # sequences steered / seen over every generation while active

    It needs ``generate``'s KV cache (the default; a forward over an empty cache starts a generation) and
    left padding. Rows are generate's rows (batch × num_return_sequences); with beam search and
    ``per_token`` a row follows its slot, not a hypothesis.
    """

    def __init__(
        self,
        model: nn.Module,
        vector: PersonaVector,
        threshold: float,
        coef: float,
        layer: int | None = None,
        per_token: bool = False,
    ) -> None:
        self.layer = vector.resolve_layer(layer)
        super().__init__(model, [self.layer])
        if coef <= 0:
            raise ConfigError(f"the guard's coefficient is the size of the push away: use > 0, got {coef}")
        self.unit = vector.unit(self.layer)
        self.push = -coef * vector.at(self.layer)
        self.threshold, self.per_token = float(threshold), per_token
        self.fired_at = torch.empty(0, dtype=torch.long)
        self._step = 0
        self.steered = self.seen = 0

    @property
    def fired(self) -> Tensor:
        return self.fired_at >= 0

    @property
    def rate(self) -> float:
        """Fraction of the sequences of the last generation that were steered."""
        return float(self.fired.float().mean()) if self.fired_at.numel() else 0.0

    def edit(self, layer: int, hidden: Tensor) -> Tensor | None:
        self.state.check_last_real()
        if self.state.offset == 0:  # prefill: a new generation
            self._count()
            self.fired_at = torch.full((hidden.shape[0],), -1, dtype=torch.long, device=hidden.device)
            self.seen += hidden.shape[0]
            self._step = 0
        else:
            self._step += 1
        if self._step == 0 or self.per_token:
            projection = hidden[:, -1].float() @ self.unit.to(hidden.device)
            crossing = (projection > self.threshold) & (self.fired_at < 0)
            self.fired_at = torch.where(crossing, self._step, self.fired_at)
        rows = (self.fired_at >= 0).nonzero().flatten()
        if rows.numel() == 0:
            return None
        edited = hidden.clone()
        edited[rows, -1] += self.push.to(device=hidden.device, dtype=hidden.dtype)
        return edited

    def _count(self) -> None:
        """Add the finished generation's fired sequences to `steered`."""
        self.steered += int(self.fired.sum())
        self.fired_at = self.fired_at[:0]

    def __enter__(self) -> Guard:
        super().__enter__()
        self.steered = self.seen = 0
        self.fired_at = self.fired_at[:0]
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        fired_at = self.fired_at
        self._count()
        self.fired_at = fired_at  # the last generation's stays readable
