"""The per-request account over flat tokens, against the definitions written plainly (float64), and
unchanged by how a sequence reaches it: in one piece, in chunks, recomputed, or partly skipped."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from personavec.core.backend import Edit, GuardRule, Probe
from personavec.core.ledger import Ledger, Plan, Segment
from personavec.errors import DataError

H = 8
torch.manual_seed(0)
STATES = {key: torch.randn(12, H) for key in ("a", "b")}  # each request's residual by position
V = torch.randn(H)
U = torch.randn(H)
U = U / U.norm()


def run(ledger: Ledger, steps: list[list[Segment]], layer: int = 3) -> list[Tensor]:
    """Feed `steps` of segments (their tokens taken from STATES); each step's edited tensor."""
    outs = []
    for segments in steps:
        flat = torch.cat([STATES[str(g.key)][g.start : g.start + g.length] for g in segments])
        ledger.begin(segments)
        new = ledger.at_layer(layer, flat)
        ledger.end()
        outs.append(flat if new is None else new)
    return outs


def per_position(outs: list[Tensor], steps: list[list[Segment]], key: str) -> dict[int, Tensor]:
    """Request `key`'s edited residual by absolute position (the last computation of each wins)."""
    found = {}
    for out, segments in zip(outs, steps, strict=True):
        offset = 0
        for g in segments:
            if g.key == key:
                for i in range(g.length):
                    found[g.start + i] = out[offset + i]
            offset += g.length
    return found


ONE_PIECE = [[Segment("a", 0, 12), Segment("b", 0, 12)]]
CHUNKED = [
    [Segment("a", 0, 5)],
    [Segment("b", 0, 7), Segment("a", 5, 4)],
    [Segment("a", 9, 3), Segment("b", 7, 5)],
]
RECOMPUTED = [  # b is computed up to 9, dropped, and recomputed from 0
    [Segment("a", 0, 12), Segment("b", 0, 9)],
    [Segment("b", 0, 6)],
    [Segment("b", 6, 6)],
]


@pytest.mark.parametrize(
    "steps", [ONE_PIECE, CHUNKED, RECOMPUTED], ids=["one-piece", "chunked", "recomputed"]
)
def test_edits_probes_and_pools_follow_positions_not_steps(steps: list[list[Segment]]) -> None:
    prompt_len = 5
    ledger = Ledger()
    pooled = {"probes": (Probe(3, U),), "pool_layers": (3,), "pool_length": 12}
    plans = {
        "a": Plan(prompt_len, (Edit(3, V, 2.0, positions="response"),), **pooled),  # type: ignore[arg-type]
        "b": Plan(prompt_len, (Edit(3, V, op="ablate", positions="prompt"),), **pooled),  # type: ignore[arg-type]
    }
    for key, plan in plans.items():
        ledger.open(key, plan)
    outs = run(ledger, steps)
    v64, u64 = V.double(), U.double()
    v_hat = v64 / v64.norm()
    for key in ("a", "b"):
        h = STATES[key].double()
        edited = per_position(outs, steps, key)
        assert sorted(edited) == list(range(12))
        for p in range(12):
            if key == "a":
                want = h[p] + 2.0 * v64 if p >= prompt_len else h[p]
            else:
                want = h[p] - (h[p] @ v_hat) * v_hat if p < prompt_len else h[p]
            assert torch.allclose(edited[p].double(), want, atol=1e-5), (key, p)
        readings = ledger.readings(key)
        assert [r[0] for r in readings] == pytest.approx((h @ u64).tolist(), abs=1e-5)  # before the edit
        last, prompt_avg, response_avg, norm = ledger.pooled(key)[3]
        assert float(norm) == pytest.approx(float(h[1:].norm(dim=-1).mean()), abs=1e-5)  # first excluded
        assert torch.allclose(last.double(), h[prompt_len - 1], atol=1e-6)
        assert torch.allclose(prompt_avg.double(), h[:prompt_len].mean(0), atol=1e-6)
        assert response_avg is not None
        assert torch.allclose(response_avg.double(), h[prompt_len:].mean(0), atol=1e-6)


def test_skipped_positions_read_nan_and_refuse_pooling() -> None:
    ledger = Ledger()
    ledger.open("a", Plan(6, probes=(Probe(3, U),), pool_layers=(3,), pool_length=12))
    run(ledger, [[Segment("a", 4, 8)]])  # positions 0-3 came from a prefix cache
    readings = ledger.readings("a")
    assert all(math.isnan(r[0]) for r in readings[:4])
    assert readings[5][0] == pytest.approx(float(STATES["a"][5] @ U), abs=1e-6)
    with pytest.raises(DataError, match="not every position"):
        ledger.pooled("a")


def test_unopened_requests_pass_through_untouched() -> None:
    ledger = Ledger()
    ledger.open("b", Plan(3, (Edit(3, V, 1.0),)))
    (out,) = run(ledger, [[Segment("a", 0, 4), Segment("b", 0, 4)]])
    assert torch.equal(out[:4], STATES["a"][:4])
    assert torch.allclose(out[4:], STATES["b"][:4] + V)


@pytest.mark.parametrize("per_token", [False, True])
def test_the_guard_fires_once_and_pushes_from_there_on(per_token: bool) -> None:
    prompt_len = 4
    values = STATES["a"] @ U
    threshold = float(values[prompt_len:].max()) - 1e-4  # crossed at the response's highest position
    if not per_token:
        threshold = float(values[prompt_len - 1]) - 1e-4  # crossed at the prompt's end
    crossing = next(p for p in range(prompt_len - 1, 12) if values[p] > threshold)
    if not per_token:
        assert crossing == prompt_len - 1
    steps = [[Segment("a", 0, prompt_len)]] + [[Segment("a", p, 1)] for p in range(prompt_len, 12)]
    steps += [[Segment("a", 0, 12)]]  # recomputed: fires nowhere new, pushes the same positions
    ledger = Ledger()
    ledger.open(
        "a", Plan(prompt_len, probes=(Probe(3, U),), guards=(GuardRule(0, threshold, 1.5, V, per_token),))
    )
    outs = run(ledger, steps)
    assert ledger.fired("a") == [crossing]
    for p in range(12):
        pushed = STATES["a"][p] - 1.5 * V if p >= crossing else STATES["a"][p]
        assert torch.allclose(per_position(outs[:-1], steps[:-1], "a")[p], pushed, atol=1e-6)
        assert torch.allclose(outs[-1][p], pushed, atol=1e-6)


def test_a_guard_above_every_reading_never_fires() -> None:
    ledger = Ledger()
    ledger.open("a", Plan(4, probes=(Probe(3, U),), guards=(GuardRule(0, 1e9, 1.5, V, per_token=True),)))
    outs = run(ledger, [[Segment("a", 0, 12)]])
    assert ledger.fired("a") == [None]
    assert torch.equal(outs[0], STATES["a"])


def test_guards_fire_each_on_its_own_and_by_step_counts_from_the_prompts_end() -> None:
    prompt_len = 4
    values = STATES["a"] @ U
    later = prompt_len + int((-values[prompt_len:]).argmax())  # where the second guard's reading peaks
    at_end = GuardRule(0, float(values[prompt_len - 1]) - 1e-4, 1.5, V)
    per_token = GuardRule(1, float(-values[later]) - 1e-4, 9.0, -V, per_token=True)
    ledger = Ledger()
    ledger.open("a", Plan(prompt_len, probes=(Probe(3, U), Probe(3, -U)), guards=(at_end, per_token)))
    steps = [[Segment("a", 0, prompt_len)], [Segment("a", prompt_len, 8)]]
    outs = run(ledger, steps)
    first_cross = next(p for p in range(prompt_len - 1, 12) if -values[p] > per_token.threshold)
    assert ledger.fired("a") == [prompt_len - 1, first_cross]
    for p, got in per_position(outs, steps, "a").items():  # each guard pushes from its own crossing
        want = STATES["a"][p] - 1.5 * V * (p >= prompt_len - 1) + 9.0 * V * (p >= first_cross)
        assert torch.allclose(got, want, atol=1e-5)
    readings, fired = ledger.by_step("a", 3)
    assert len(readings) == 4 and fired[0] == 0
    assert readings[0] == pytest.approx(
        [float(values[prompt_len - 1]), -float(values[prompt_len - 1])], abs=1e-5
    )
    step = first_cross - (prompt_len - 1)
    assert step >= 1
    # step i reads the i-th answer token as input; an answer's last token is never read
    assert ledger.by_step("a", step + 1)[1] == [0, step]
    assert ledger.by_step("a", step)[1] == [0, -1]
