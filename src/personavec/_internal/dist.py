"""Which process this is, when a command runs as several (``accelerate launch``, ``torchrun``)."""

from __future__ import annotations

from typing import Any

import torch


def process_state() -> Any:
    """accelerate's process state: one process normally, several under ``accelerate launch`` or
    ``torchrun`` (on a machine without GPUs, CPU processes joined by gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
