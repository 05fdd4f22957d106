"""What ``personavec serve`` is told (torch-free, so the command line builds its flags from it).

A field's ``metadata`` is its flag (see `personavec.cli._options`). `ServeConfig` checks itself in
``__post_init__``: a user's mistake fails before the model loads.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

from personavec.core.units import CoefUnits, check_units
from personavec.deploy.config import STATISTICS, ThresholdCalibration
from personavec.errors import ConfigError

OnFlag = Literal["pass", "annotate", "refuse"]
MAX_KEEP = 100_000
"""The most requests the dashboard may keep in memory (``--keep``)."""
MAX_COEF = 1000.0
"""The largest steering or guard coefficient, in multiples of the vector (a request's or a flag's): the
useful range is a few units, and a push 1000 times a persona vector already swamps any model's residual
stream; beyond it an answer is noise, or overflows to NaN."""
MAX_THRESHOLD = 1e6
"""The largest threshold, in magnitude: far beyond any projection of a real model's residual stream."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Limits:
    """What one request may ask and how much work the server takes on at once."""

    max_body_bytes: int = field(default=1_000_000, metadata={"help": "largest request body in bytes"})
    max_prompt_tokens: int = field(default=4096, metadata={"help": "longest prompt in tokens"})
    max_tokens: int = field(default=1024, metadata={"help": "most tokens one answer may ask for"})
    default_max_tokens: int | None = field(
        default=None,
        metadata={"help": "answer length when a request names none (default: 256, or --max-tokens if less)"},
    )
    max_batch: int = field(default=16, metadata={"help": "answers generated at once (one batch)"})
    max_queue: int = field(
        default=64, metadata={"help": "requests waiting for a batch before new ones get a 429"}
    )
    request_timeout: float = field(
        default=600.0, metadata={"help": "seconds a request may take before it is stopped (504)"}
    )

    @property
    def answer_tokens(self) -> int:
        """The answer length of a request that names none."""
        return self.default_max_tokens or min(256, self.max_tokens)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "default_max_tokens", "max_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", (name,))
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be at least 0, got {self.max_queue}", ("max_queue",))
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens:
            raise ConfigError(
                "default_max_tokens cannot exceed max_tokens", ("default_max_tokens", "max_tokens")
            )
        if not self.request_timeout > 0:
            raise ConfigError(
                f"request_timeout must be positive, got {self.request_timeout}", ("request_timeout",)
            )


KEY_VARIABLES = {"api_key": "PERSONAVEC_API_KEY", "upstream_api_key": "PERSONAVEC_UPSTREAM_API_KEY"}


@dataclass(frozen=True)
class ServeConfig:
    """A server: where it listens, who may call it, the vectors it measures (name → file), fixed
    `thresholds` ((name, statistic) → value; the rest calibrated), the audit log and the limits."""

    vectors: tuple[tuple[str, str], ...]
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (non-loopback needs a key)"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    api_key: str | None = field(
        default=None,
        metadata={"help": "require 'Authorization: Bearer KEY' (default $PERSONAVEC_API_KEY)"},
    )
    name: str | None = field(
        default=None, metadata={"help": "short model name clients may use (default: the model's name)"}
    )
    thresholds: tuple[tuple[str, str, float], ...] = ()
    audit: str | None = field(
        default=None, metadata={"help": "append one JSON line per request to this file (mode 0600)"}
    )
    audit_text: bool = field(default=False, metadata={"help": "with --audit: also log prompts and answers"})
    keep: int = field(
        default=200,
        metadata={"help": "the dashboard (/dashboard) keeps the last N requests in memory (0: no dashboard)",
                  "metavar": "N"},
    )  # fmt: skip
    keep_text: bool = field(
        default=False,
        metadata={"help": "the dashboard also keeps prompts, answers and per-token projections "
                          "(so does --audit-text)"},
    )  # fmt: skip
    steer: tuple[tuple[str, float], ...] = ()
    guard: str | None = field(
        default=None,
        metadata={
            "help": "guard every request with this vector (a request's own guard wins)",
            "metavar": "NAME",
        },
    )
    guard_threshold: float | None = field(
        default=None, metadata={"help": "with --guard: the threshold (default: the vector's prompt_last one)"}
    )
    guard_coef: float = field(default=2.0, metadata={"help": "with --guard: the push's coefficient"})
    coef_units: CoefUnits = field(
        default="raw",
        metadata={"help": "units of --steer and --guard-coef: raw (multiples of v) or norm (of the layer's "
                          "mean residual norm)"},
    )  # fmt: skip
    guard_per_token: bool = field(default=False, metadata={"help": "with --guard: check at every token"})
    upstream: str | None = field(
        default=None,
        metadata={"help": "forward chat requests to this OpenAI-compatible server (…/v1); score them here",
                  "metavar": "URL"},
    )  # fmt: skip
    upstream_model: str | None = field(
        default=None,
        metadata={"help": "with --upstream: the engine's model id, exactly as its /v1/models lists it"},
    )
    upstream_api_key: str | None = field(
        default=None, metadata={"help": "with --upstream: its key (default $PERSONAVEC_UPSTREAM_API_KEY)"}
    )
    upstream_timeout: float = field(
        default=600.0, metadata={"help": "with --upstream: seconds to wait for its answer"}
    )
    on_flag: OnFlag = field(
        default="annotate",
        metadata={"help": "with --upstream, a prompt predicted to show a trait is: forwarded (pass), "
                          "forwarded with an X-Persona-Predicted header (annotate), or refused with "
                          "finish_reason content_filter (refuse)"},
    )  # fmt: skip
    grace: float = field(
        default=30.0, metadata={"help": "seconds SIGTERM waits for in-flight requests to finish"}
    )
    limits: Limits = field(default=Limits(), metadata={"fields": tuple(f.name for f in fields(Limits))})
    calibration: ThresholdCalibration = field(
        default=ThresholdCalibration(),
        metadata={"fields": tuple(f.name for f in fields(ThresholdCalibration))},
    )

    def __post_init__(self) -> None:
        for name, variable in KEY_VARIABLES.items():  # a key not given comes from the environment
            if getattr(self, name) is None:
                object.__setattr__(self, name, os.environ.get(variable) or None)
        if not self.vectors:
            raise ConfigError("serve needs at least one vector: --vector NAME=FILE")
        names = [name for name, _ in self.vectors]
        for name in names:
            if not name or not name.replace("-", "_").isidentifier():
                raise ConfigError(
                    f"vector name {name!r}: use letters, digits, '_' or '-' (--vector NAME=FILE)"
                )
        if len(set(names)) != len(names):
            raise ConfigError(f"two vectors share a name: {names}; give each --vector its own NAME=")
        for vector, statistic, value in self.thresholds:
            if vector not in names:
                raise ConfigError(f"--threshold names {vector!r}, which is no --vector; use one of {names}")
            if statistic not in STATISTICS:
                raise ConfigError(f"--threshold statistic {statistic!r}: use one of {', '.join(STATISTICS)}")
            if not abs(value) <= MAX_THRESHOLD:
                raise ConfigError(f"--threshold {vector}.{statistic} must be within ±{MAX_THRESHOLD:g}")
        self._check_steering(names)
        if self.upstream is not None:
            if not self.upstream.startswith(("http://", "https://")):
                raise ConfigError(
                    f"upstream must be an http(s) URL ending in /v1, got {self.upstream!r}", ("upstream",)
                )
            if not self.upstream_model:
                raise ConfigError(
                    "upstream needs upstream_model: the engine's model id, from its /v1/models",
                    ("upstream", "upstream_model"),
                )
            if self.steer or self.guard:
                raise ConfigError(
                    "--steer and --guard need the model in-process: drop them, or drop --upstream"
                )
        if self.on_flag not in get_args(OnFlag):
            raise ConfigError(
                f"on_flag must be one of {', '.join(get_args(OnFlag))}, got {self.on_flag!r}", ("on_flag",)
            )
        if not self.upstream_timeout > 0:
            raise ConfigError(
                f"upstream_timeout must be positive, got {self.upstream_timeout}", ("upstream_timeout",)
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}", ("port",))
        if not _loopback(self.host) and not self.api_key:
            raise ConfigError(
                f"binding {self.host} exposes the server beyond this machine: set api_key or "
                "$PERSONAVEC_API_KEY, or bind 127.0.0.1",
                ("api_key",),
            )
        if self.audit_text and not self.audit:
            raise ConfigError("audit_text needs audit FILE", ("audit_text", "audit"))
        if not 0 <= self.keep <= MAX_KEEP:
            raise ConfigError(f"keep must be in 0..{MAX_KEEP}, got {self.keep}", ("keep",))
        if self.keep_text and not self.keep:
            raise ConfigError("keep_text needs the dashboard: drop keep 0", ("keep_text", "keep"))
        if self.grace < 0:
            raise ConfigError(f"grace must be at least 0, got {self.grace}", ("grace",))

    def _check_steering(self, names: list[str]) -> None:
        """--steer and --guard name served vectors, with coefficients and thresholds within bounds."""
        check_units(self.coef_units)
        for name, coef in self.steer:
            if name not in names or not abs(coef) <= MAX_COEF:
                raise ConfigError(
                    f"--steer {name}={coef}: use NAME=COEF with a --vector NAME and |COEF| ≤ {MAX_COEF:g}"
                )
        if self.guard is not None and self.guard not in names:
            raise ConfigError(f"--guard names {self.guard!r}, which is no --vector; use one of {names}")
        if not 0 < self.guard_coef <= MAX_COEF:
            raise ConfigError(
                f"guard_coef is the size of the push away: use 0 < COEF ≤ {MAX_COEF:g}, "
                f"got {self.guard_coef}",
                ("guard_coef",),
            )
        if self.guard_threshold is not None and not abs(self.guard_threshold) <= MAX_THRESHOLD:
            raise ConfigError(f"guard_threshold must be within ±{MAX_THRESHOLD:g}", ("guard_threshold",))

    def threshold(self, vector: str, statistic: str) -> float | None:
        """The fixed threshold of a vector's statistic, if one was given."""
        return next((v for n, s, v in self.thresholds if (n, s) == (vector, statistic)), None)

    def fixed_thresholds(self) -> dict[str, dict[str, float | None]]:
        """The thresholds given on the command line (None where a calibration must supply one)."""
        return {name: {s: self.threshold(name, s) for s in STATISTICS} for name, _ in self.vectors}
