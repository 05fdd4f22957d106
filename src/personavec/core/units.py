"""Units of a steering coefficient (torch-free, so configs and the server's requests name them).

- ``"raw"``: a multiple of the vector, as the method defines steering (h ← h + α·v);
- ``"norm"``: a multiple of the mean residual norm at the vector's layer, ‖h‖ averaged over the
  extraction run's own answers (every token after the first), so that the same coefficient means the
  same relative push on any model and layer: α = c·‖h‖ / ‖v‖.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from personavec.errors import ConfigError

CoefUnits = Literal["raw", "norm"]
COEF_UNITS: tuple[CoefUnits, ...] = get_args(CoefUnits)
UNITS_HELP = "units of the coefficients: raw (multiples of v) or norm (of the layer's mean residual norm)"


def check_units(units: str) -> None:
    """Raise a clear error for units other than raw and norm."""
    if units not in COEF_UNITS:
        raise ConfigError(f"coefficient units must be one of {', '.join(COEF_UNITS)}, got {units!r}")


def to_raw(coef: float, units: CoefUnits, residual_norm: float, vector_norm: float) -> float:
    """`coef` in `units` as the multiple of v it stands for (a vector of norm `vector_norm` at a layer
    whose mean residual norm is `residual_norm`)."""
    check_units(units)
    if units == "raw":
        return coef
    if not (vector_norm > 0 and math.isfinite(residual_norm)):
        raise ConfigError(f"cannot convert a norm-unit coefficient: vector norm {vector_norm}")
    return coef * residual_norm / vector_norm
