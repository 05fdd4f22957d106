"""Renamed public names, kept for one release behind a module's ``__getattr__`` (PEP 562)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def renamed(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of `module` for its renamed `names` (old → new): the new object, with a
    `DeprecationWarning` naming the new name."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = names[name]
        warnings.warn(f"{name} is now {new} (the old name goes in the next release)", DeprecationWarning, 2)
        return getattr(sys.modules[module], new)

    return __getattr__
