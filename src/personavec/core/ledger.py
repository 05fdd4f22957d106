"""Per-request steering, probes, guard and pooling over the tokens of one forward step, laid out flat.

A runtime serving many requests at once runs each forward step over one ``[num_tokens, hidden]``
tensor per layer: the scheduled requests' tokens back to back, request r's at rows
``[offset_r, offset_r + length_r)`` and at absolute positions ``[start_r, start_r + length_r)`` of
its sequence (a `Segment`). A prompt may arrive over several steps (chunked prefill), start past
position 0 (its first tokens served from a prefix cache), or arrive again from position 0 (recomputed
after a preemption). The `Ledger` keeps each request's state by absolute position, so that none of
these changes what it edits or reads:

- an edit applies at each of its positions every time that position is computed (``prompt``:
  positions below the prompt's length; ``response``: the others);
- a probe reads each position's projection the first time the position is computed, before the
  layer's edits; a position never computed here (skipped by a prefix cache) reads NaN;
- each guard checks the prompt's last position (with ``per_token``, every later one too) the first
  time each is computed; from its first crossing on, that position and every later one is pushed;
- pooling (prompt-last, prompt-avg, response-avg, the mean norm after the first position) counts each
  position once, and refuses a request whose positions were not all computed.

The transformers backend uses it too (its pads dropped), so both runtimes share this one account.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from personavec.core.backend import Edit, GuardRule, Probe
from personavec.errors import ConfigError, DataError


@dataclass(frozen=True)
class Segment:
    """Request `key`'s tokens in this step: `length` of them from absolute position `start`."""

    key: Hashable
    start: int
    length: int


@dataclass(frozen=True)
class Plan:
    """What to do for one request: its prompt's length (in tokens), edits, probes, guards, and the
    layers to pool (over the positions ``[0, pool_length)``, prompt then response)."""

    prompt_len: int
    edits: tuple[Edit, ...] = ()
    probes: tuple[Probe, ...] = ()
    guards: tuple[GuardRule, ...] = ()
    pool_layers: tuple[int, ...] = ()
    pool_length: int = 0

    @property
    def layers(self) -> set[int]:
        return {e.layer for e in self.edits} | {p.layer for p in self.probes} | set(self.pool_layers)


@dataclass
class _Sums:
    prompt: Tensor
    response: Tensor
    last: Tensor
    norm: Tensor  # the sum of ‖h‖ over the positions after the first


@dataclass
class _Row:
    plan: Plan
    seen: int = 0  # positions [0, seen) have been computed at least once ...
    complete: bool = True  # ... each of them (no position was skipped)
    readings: list[list[float]] = field(default_factory=list)  # [position][probe], NaN until read
    fired: list[int | None] = field(default_factory=list)  # the position each guard fired at
    sums: dict[int, _Sums] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fired = [None] * len(self.plan.guards)


@dataclass(frozen=True)
class _Placed:
    """A segment in this step: its rows in the flat tensor, and the first position new to it."""

    row: _Row
    offset: int
    start: int
    length: int
    new_from: int


class Ledger:
    """The per-request account (see the module docstring). Per forward step: `begin` with the step's
    segments, `at_layer` at each layer in `layers`, `end` after the step."""

    def __init__(self) -> None:
        self._rows: dict[Hashable, _Row] = {}
        self._step: list[_Placed] = []
        self._values: list[tuple[Tensor, list[tuple[_Placed, int, int]]]] = []  # read at end()
        self._columns: dict[int, tuple[Tensor, dict[tuple[int, int], int]]] = {}  # this step's, by layer

    def open(self, key: Hashable, plan: Plan) -> None:
        if key in self._rows:
            raise ConfigError(f"request {key!r} is already open")
        self._rows[key] = _Row(plan)

    def close(self, key: Hashable) -> None:
        del self._rows[key]

    @property
    def layers(self) -> set[int]:
        """The layers some open request edits, reads or pools at."""
        return set().union(*(row.plan.layers for row in self._rows.values()))

    def begin(self, segments: Sequence[Segment]) -> None:
        """Lay out a step: `segments` in the order of the flat tensor's rows (requests not opened
        pass through)."""
        self._step, self._values, self._columns, offset = [], [], {}, 0
        for segment in segments:
            row = self._rows.get(segment.key)
            if row is None:  # a request with nothing to edit, read or pool: its tokens pass through
                offset += segment.length
                continue
            if segment.start > row.seen:  # positions [seen, start) were never computed here
                row.complete = False
            new_from = max(segment.start, row.seen)
            self._step.append(_Placed(row, offset, segment.start, segment.length, new_from))
            offset += segment.length

    def at_layer(self, layer: int, hidden: Tensor) -> Tensor | None:
        """The step's residual at `layer`, ``[num_tokens, hidden]``, edited (None: left as it is)."""
        self._read(layer, hidden)
        out = hidden
        for placed in self._step:
            plan = placed.row.plan
            if layer in plan.pool_layers:
                self._pool(layer, placed, hidden)
            edits = [e for e in plan.edits if e.layer == layer]
            guards = [j for j, g in enumerate(plan.guards) if plan.probes[g.probe].layer == layer]
            if not edits and not guards:
                continue
            rows = slice(placed.offset, placed.offset + placed.length)
            segment = out[rows]
            positions = torch.arange(placed.start, placed.start + placed.length, device=hidden.device)
            for edit in edits:
                segment = _apply(edit, segment, positions, plan.prompt_len)
            for j in guards:
                segment = self._guard(layer, placed, j, segment, positions)
            if segment is not out[rows]:
                out = out.clone() if out is hidden else out
                out[rows] = segment
        return None if out is hidden else out

    def end(self) -> None:
        """Close the step: its probe readings move to the requests (one copy to the CPU per layer)."""
        for values, targets in self._values:
            host = values.cpu()
            for placed, probe, column in targets:
                readings, skip = placed.row.readings, placed.new_from - placed.start
                for i, value in enumerate(host[placed.offset + skip : placed.offset + placed.length, column]):
                    position = placed.new_from + i
                    while len(readings) <= position:
                        readings.append([float("nan")] * len(placed.row.plan.probes))
                    readings[position][probe] = float(value)
        for placed in self._step:
            placed.row.seen = max(placed.row.seen, placed.start + placed.length)
        self._step, self._values, self._columns = [], [], {}

    def plan(self, key: Hashable) -> Plan:
        return self._rows[key].plan

    def seen(self, key: Hashable) -> int:
        """How many of request `key`'s positions, from 0, have been computed."""
        return self._rows[key].seen

    def readings(self, key: Hashable) -> list[list[float]]:
        """Request `key`'s probe readings by position (``[position][probe]``)."""
        return self._rows[key].readings

    def fired(self, key: Hashable) -> list[int | None]:
        """The position each of request `key`'s guards fired at (None: never)."""
        return self._rows[key].fired

    def by_step(self, key: Hashable, answer_len: int) -> tuple[list[list[float]], list[int]]:
        """Request `key`'s readings and guard firings by answer step, for an answer of `answer_len`
        tokens: step 0 is the prompt's last position, step i the i-th answer token (−1: the guard
        never fired, or only past the answer)."""
        row = self._rows[key]
        last_prompt = row.plan.prompt_len - 1
        readings = row.readings[last_prompt : last_prompt + answer_len + 1] if row.plan.probes else []
        fired = [-1 if at is None or at - last_prompt >= answer_len else at - last_prompt for at in row.fired]
        return readings, fired

    def pooled(self, key: Hashable) -> dict[int, tuple[Tensor, Tensor, Tensor | None, Tensor]]:
        """Request `key`'s (prompt-last, prompt-avg, response-avg, mean ‖h‖ after the first position)
        by pooled layer, float32."""
        row = self._rows[key]
        plan = row.plan
        if not row.complete or row.seen < plan.pool_length:
            raise DataError(
                f"request {key!r}: not every position was computed (a prefix cache skipped some?); "
                "pooled activations need all of them"
            )
        n_response, n_norm = plan.pool_length - plan.prompt_len, max(plan.pool_length - 1, 1)
        return {
            layer: (
                s.last, s.prompt / plan.prompt_len, s.response / n_response if n_response else None,
                s.norm / n_norm,
            )
            for layer, s in row.sums.items()
        }  # fmt: skip

    def _read(self, layer: int, hidden: Tensor) -> None:
        """Project every token onto the probes at `layer` (one product for all requests)."""
        columns: dict[int, int] = {}
        units: list[Tensor] = []
        targets: list[tuple[_Placed, int, int]] = []
        for placed in self._step:
            if placed.new_from >= placed.start + placed.length:
                continue  # nothing new to read in this segment
            for j, probe in enumerate(placed.row.plan.probes):
                if probe.layer == layer:
                    if id(probe.unit) not in columns:
                        columns[id(probe.unit)] = len(units)
                        units.append(probe.unit)
                    targets.append((placed, j, columns[id(probe.unit)]))
        if targets:
            matrix = torch.stack(units, dim=1).to(hidden.device)
            values = hidden.float() @ matrix
            self._values.append((values, targets))
            self._columns[layer] = (values, {(id(placed), j): column for placed, j, column in targets})

    def _probe_values(self, layer: int, placed: _Placed, probe: int, first: int, end: int) -> Tensor:
        """Probe `probe`'s values at the segment's new positions [first, end): the very numbers its
        readings keep."""
        values, columns = self._columns[layer]
        rows = slice(placed.offset + first - placed.start, placed.offset + end - placed.start)
        return values[rows, columns[id(placed), probe]]

    def _guard(self, layer: int, placed: _Placed, j: int, segment: Tensor, positions: Tensor) -> Tensor:
        """Check guard `j` at the segment's new positions; push the positions from its firing on."""
        row, last_prompt = placed.row, placed.row.plan.prompt_len - 1
        guard = row.plan.guards[j]
        if row.fired[j] is None:
            first = max(placed.new_from, last_prompt)
            end = (
                placed.start + placed.length
                if guard.per_token
                else min(placed.start + placed.length, last_prompt + 1)
            )
            if first < end:
                values = self._probe_values(layer, placed, guard.probe, first, end)
                over = (values > guard.threshold).nonzero()
                if len(over):
                    row.fired[j] = first + int(over[0])
        fired = row.fired[j]
        if fired is None or fired >= placed.start + placed.length:
            return segment
        push = (-guard.coef * guard.direction).to(device=segment.device, dtype=segment.dtype)
        mask = (positions >= fired).to(segment.dtype).unsqueeze(-1)
        return segment + push * mask

    def _pool(self, layer: int, placed: _Placed, hidden: Tensor) -> None:
        """Add the segment's new positions to the request's sums at `layer`."""
        plan, row = placed.row.plan, placed.row
        first, end = placed.new_from, min(placed.start + placed.length, plan.pool_length)
        if first >= end:
            return
        h = hidden[placed.offset + first - placed.start : placed.offset + end - placed.start].float()
        if layer not in row.sums:
            zero = torch.zeros(h.shape[-1], device=h.device)
            row.sums[layer] = _Sums(zero, zero.clone(), zero.clone(), torch.zeros((), device=h.device))
        sums, split = row.sums[layer], min(max(plan.prompt_len - first, 0), end - first)
        sums.prompt = sums.prompt + h[:split].sum(0)
        sums.response = sums.response + h[split:].sum(0)
        sums.norm = sums.norm + h[max(1 - first, 0) :].norm(dim=-1).sum()
        if first <= plan.prompt_len - 1 < end:
            sums.last = h[plan.prompt_len - 1 - first]


def _apply(edit: Edit, segment: Tensor, positions: Tensor, prompt_len: int) -> Tensor:
    """`edit` on a request's tokens at absolute `positions`, out of place."""
    if edit.positions == "all":
        mask = torch.ones_like(positions, dtype=torch.bool)
    else:
        in_prompt = positions < prompt_len
        mask = in_prompt if edit.positions == "prompt" else ~in_prompt
    if not bool(mask.any()):
        return segment
    if edit.op == "steer":
        vector = edit.coef * edit.vector.to(device=segment.device, dtype=segment.dtype)
        return segment + vector * mask.to(segment.dtype).unsqueeze(-1)
    unit = edit.vector.to(segment.device)
    along = (segment.float() @ unit).unsqueeze(-1) * unit
    return segment - (along * mask.unsqueeze(-1)).to(segment.dtype)
