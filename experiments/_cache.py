"""An experiment's results cache, keyed by its full configuration.

Everything an experiment writes (trained adapters, answers, judgements, ``results.json``) lives in
``OUT/config-KEY/``, where KEY is a hash of the configuration the results depend on (model, data and
vector fingerprints, every training and sampling setting, the question splits, the dose rule). A
changed configuration starts fresh under its own key, leaving the other keys' results untouched; a
``results.json`` whose stored configuration is not the one asked for is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from personavec._internal.files import write_json
from personavec.errors import PersonavecError


def canonical(config: Mapping[str, Any]) -> Any:
    """The configuration as JSON reads it back (tuples become lists, keys sorted)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_key(config: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of the canonical JSON of `config`."""
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Results:
    """``OUT/config-KEY/results.json``: named results, written atomically after each one."""

    def __init__(self, out: Path, config: Mapping[str, Any]) -> None:
        self.config = canonical(config)
        self.key = config_key(config)
        self.dir = out / f"config-{self.key}"
        self.path = self.dir / "results.json"
        self.values: dict[str, Any] = {}
        if self.path.exists():
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            if stored.get("key") != self.key or stored.get("config") != self.config:
                raise PersonavecError(
                    f"{self.path} holds results of another configuration (key {stored.get('key')!r}, "
                    f"this one {self.key!r}); delete that folder or pass another --out"
                )
            self.values = stored["results"]
        elif out.is_dir():
            others = sorted(p.name for p in out.glob("config-*"))
            if others:
                print(f"the configuration changed: starting fresh in {self.dir} (kept: {', '.join(others)})")

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def record(self, name: str, value: Any) -> None:
        """Store `value` under `name` and rewrite the file (so a rerun resumes after it)."""
        self.values[name] = value
        write_json(self.path, {"key": self.key, "config": self.config, "results": self.values})
        print(name, json.dumps(brief(value)), flush=True)


def brief(value: Any) -> Any:
    """`value` as the run's log shows it: a list of more than 8 numbers as its mean and count."""
    if isinstance(value, dict):
        return {k: brief(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 8 and all(isinstance(v, (int, float)) for v in value):
        return f"mean {sum(value) / len(value):.4g} of {len(value)}"
    return value
