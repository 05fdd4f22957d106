"""Which process this is, when a command runs as several (``accelerate launch``, ``torchrun``)."""

from __future__ import annotations

from typing import Any

import torch


def process_state() -> Any:
    """accelerate's process state: one process normally, several under ``accelerate launch`` or
    ``torchrun`` (on a machine without GPUs, CPU processes joined by gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def process_device(device: str) -> str:
    """`device`, or this process's own GPU when launched as several (``accelerate launch``, ``torchrun``)
    and `device` leaves the choice open (``auto``, ``cuda``)."""
    state = process_state()
    return str(state.device) if state.num_processes > 1 and device in ("auto", "cuda") else device
