"""How answers are generated: one frozen `Sampling` shared by every stage that generates (torch-free, so
the command line builds its flags from it).

A config holds it as a field whose default is that command's sampling (extraction samples at
temperature 1, a sweep decodes greedily, ...) and whose ``metadata["fields"]`` names the fields that
are flags of that command (see `personavec.cli._options.add_fields`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from personavec.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """Answer length, decoding and batching of a generation; ``temperature=0`` decodes greedily."""

    max_new_tokens: int = field(default=64, metadata={"help": "answer length in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0 decodes greedily"})
    top_p: float = field(
        default=1.0, metadata={"help": "nucleus sampling: the likeliest tokens holding this probability"}
    )
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    batch_size: int = field(default=16, metadata={"help": "answers generated at once"})

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", (name,))
        if not (math.isfinite(self.temperature) and self.temperature >= 0) or not 0 < self.top_p <= 1:
            raise ConfigError(
                f"temperature must be ≥ 0 and top_p in (0, 1]; got {self.temperature} and {self.top_p}",
                ("temperature", "top_p"),
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def decoding(self) -> dict[str, Any]:
        """The keywords of a Hugging Face ``generate`` call that decode this way (seed it separately)."""
        if self.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Sampling))


def check_samples(samples: int, sampling: Sampling) -> None:
    """`samples` answers per prompt: at least 1, and more than 1 only when sampling (greedy answers
    repeat)."""
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}", ("samples",))
    if samples > 1 and sampling.greedy:
        raise ConfigError(
            f"samples {samples} needs a temperature > 0 (greedy answers repeat)", ("samples", "temperature")
        )
