import random
from itertools import pairwise
from typing import Any

import pytest
import torch

from personavec import PersonavecError
from personavec.core.backend import Edit
from personavec.core.hooks import steer
from personavec.deploy.text_loss import ordinary_text, text_windows, window_losses

from tiny import tiny_loaded

TEXT = " ".join(
    f"the {w} river runs past the old mill number {i}." for i, w in enumerate(["red", "wide"] * 40)
)


def _reference(loaded: Any, windows: list[tuple[int, ...]]) -> list[float]:
    """Mean token NLL written plainly: one unpadded float64 forward per window, cross-entropy of each
    token after the first."""
    model = loaded.model.double()
    out = []
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w])
            logits = model(input_ids=ids).logits[0, :-1].double()
            out.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))
    model.float()
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_window_losses_equal_the_float64_cross_entropy(arch: str) -> None:
    loaded = tiny_loaded(arch)
    ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    windows = [tuple(ids[0:9]), tuple(ids[20:44]), tuple(ids[50:52])]  # lengths differ: batches are padded
    got = window_losses(loaded, windows, batch_size=2)
    assert got == pytest.approx(_reference(loaded, windows), abs=1e-4)


def test_steering_edits_count_at_every_position() -> None:
    loaded = tiny_loaded("llama")
    windows = text_windows(loaded, TEXT, window=16, count=3)
    vector = torch.randn(loaded.identity.hidden_size, generator=torch.Generator().manual_seed(0))
    edited = window_losses(loaded, windows, edits=[Edit(1, vector, 4.0)])
    with steer(loaded.model, {1: vector}, coef=4.0):
        hooked = window_losses(loaded, windows)
    assert edited == pytest.approx(hooked, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(edited, window_losses(loaded, windows), strict=True)) > 1e-3


def test_windows_are_evenly_spaced_and_do_not_overlap() -> None:
    loaded = tiny_loaded("llama")
    rng = random.Random(0)  # no two windows of this text are alike, so each window's place is known
    text = " ".join(
        "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7))) for _ in range(200)
    )
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = text_windows(loaded, text, window=10, count=4)
    starts = [next(s for s in range(0, len(ids), 10) if tuple(ids[s : s + 10]) == w) for w in windows]
    assert starts[0] == 0 and all(b - a >= 10 for a, b in pairwise(starts))
    stride = len(ids) / 4
    assert all(abs(b - a - stride) <= 10 for a, b in pairwise(starts))  # evenly spaced
    assert starts[-1] >= len(ids) - stride - 10  # spread over the whole text
    available = len(ids) // 10
    with pytest.raises(PersonavecError, match="windows of 10 tokens"):
        text_windows(loaded, text, window=10, count=available + 1)
    with pytest.raises(PersonavecError, match="at least 2 tokens"):
        text_windows(loaded, TEXT, window=1)


def test_the_bundled_text_is_the_standard_library_topics() -> None:
    from pydoc_data.topics import topics

    text = ordinary_text()
    assert text.startswith(topics[sorted(topics)[0]].strip()) and len(text) > 100_000
    assert text == ordinary_text()
