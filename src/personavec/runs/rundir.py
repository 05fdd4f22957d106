"""Run directories: one mechanism under every resumable command.

A run directory holds one run's outputs and ``manifest.json``::

    {"format": "personavec-run/2", "kind": "sweep", <identity and later settings>, "versions": {...},
     "stages": {"<stage>": {"seconds": ..., <counts>}, ...}}

The *identity* is what the outputs depend on: reopening the directory with another identity is refused
with one line naming the keys that differ (or, where the command has ``--force``, starts it over). A
*later setting* only invalidates the stages from a given one on (extraction: another judge redoes the
judgements and what follows, but keeps the answers). Each stage names its output files; a stage found
done on disk but missing its record (a crash between the two writes) is recorded on resume.

A directory without our manifest but with a stage's output, one whose manifest is unreadable or not
ours, one made by an earlier release (``personavec-run/1`` manifests, ``settings.json``) or for
another kind of run is refused, never misread.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from personavec._internal.files import write_json
from personavec.errors import RunDirError
from personavec.version import __version__

RUN_FORMAT = "personavec-run/2"
MANIFEST = "manifest.json"
RESERVED = ("format", "kind", "versions", "stages")
_EARLIER = (
    "an earlier personavec release made it ({}); this release does not read it: rerun with a fresh --out"
)


def _normal(value: Any) -> Any:
    """JSON-normalised (tuples become lists), so stored and given values compare equal."""
    return json.loads(json.dumps(value))


def read_manifest(path: str | Path, kind: str) -> dict[str, Any]:
    """The manifest of the run directory `path`, checked to be this release's and of `kind`."""
    found = _existing_manifest(Path(path), kind)
    if found is None:
        raise RunDirError(f"{path} holds no personavec {kind} ({MANIFEST} is missing)")
    return found


def _existing_manifest(path: Path, kind: str) -> dict[str, Any] | None:
    """The manifest, None when there is none; raise for anything that must not be read as ours."""
    manifest = path / MANIFEST
    if not manifest.exists():
        if (path / "settings.json").exists():
            raise RunDirError(f"{path}: " + _EARLIER.format("settings.json"))
        return None
    try:
        found = json.loads(manifest.read_text())
    except (ValueError, OSError) as error:  # ValueError: bad JSON or bad UTF-8
        found = {"error": str(error)}
    fmt = found.get("format") if isinstance(found, dict) else None
    if fmt == "personavec-run/1":
        raise RunDirError(f"{path}: " + _EARLIER.format(f"{MANIFEST} format {fmt}"))
    if not isinstance(fmt, str) or not fmt.startswith("personavec-run/"):
        raise RunDirError(
            f"{manifest} is not a personavec run manifest (unreadable or foreign): choose another out, "
            "or delete it if the directory is yours to reuse",
            ("out",),
        )
    if fmt != RUN_FORMAT:
        raise RunDirError(
            f"{manifest} has format {fmt}, not {RUN_FORMAT}: use that release or another out", ("out",)
        )
    assert isinstance(found, dict)
    if found.get("kind") != kind:
        raise RunDirError(
            f"{path} holds a personavec run of kind {found.get('kind')!r}, not {kind!r}: use another out",
            ("out",),
        )
    return found


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"personavec": __version__}
    for package in ("torch", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


@dataclass
class RunDir:
    """An open run directory (see the module docstring); make one with `RunDir.open`."""

    path: Path
    manifest: dict[str, Any]
    outputs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # stage → files, in stage order
    derived: tuple[str, ...] = ()  # files made from the stages (a report): removed on any reset

    @classmethod
    def open(
        cls,
        path: str | Path,
        kind: str,
        identity: Mapping[str, Any],
        outputs: Mapping[str, Sequence[str]] = {},
        later: Mapping[str, tuple[str, Any]] = {},
        derived: Sequence[str] = (),
        force: bool | None = None,
    ) -> RunDir:
        """Start or resume the run of `kind` in `path`.

        `outputs`: stage → its files (relative to `path`, ``{key}`` filled from the manifest), in
        pipeline order. `later`: setting → (first stage it invalidates, value). `force` None: the
        command has no --force, so another identity is refused; False: refused with --force named as
        a fix; True: start over.
        """
        path = Path(path)
        run = cls(path, {}, {k: tuple(v) for k, v in outputs.items()}, tuple(derived))
        given: dict[str, Any] = _normal(dict(identity))
        settings = {k: (stage, _normal(v)) for k, (stage, v) in later.items()}
        if clash := set(RESERVED) & (given.keys() | settings.keys()):
            raise ValueError(f"reserved manifest keys used as settings: {sorted(clash)}")
        old = _existing_manifest(path, kind)
        if old is None:
            run._refuse_strays(kind, given)
        else:
            keys = given.keys() | (old.keys() - set(RESERVED) - settings.keys())
            differs = sorted(k for k in keys if old.get(k) != given.get(k))
            if differs and not force:
                fix = "use another out" + (", or force to start it over" if force is False else "")
                listed = ", ".join(differs)
                raise RunDirError(
                    f"{path} holds {_a(kind)} made with other settings (differs in {listed}): {fix}",
                    ("out", "force"),
                )
            run.manifest = old
            if differs:  # start over: outputs first, the manifest last (a kill meanwhile leaves it refused)
                if run.outputs:
                    run.reset(next(iter(run.outputs)))
                (path / MANIFEST).unlink()
                run.manifest = {}
        if not run.manifest:
            run.manifest = {
                "format": RUN_FORMAT,
                "kind": kind,
                **given,
                "versions": _versions(),
                "stages": {},
            }
        for key, (stage, value) in settings.items():
            if key in run.manifest and run.manifest[key] != value:
                run.reset(stage)
            run.manifest[key] = value
        run.save()
        return run

    def _refuse_strays(self, kind: str, identity: dict[str, Any]) -> None:
        """Refuse a directory with a stage's output but no manifest: whose files they are is unknown."""
        for files in self.outputs.values():
            for name in (name.format_map(identity) for name in files):
                if (self.path / name).exists():
                    raise RunDirError(
                        f"{self.path} holds {name} but no {MANIFEST}: not a personavec {kind} of this "
                        "release; use another out",
                        ("out",),
                    )

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """Stage → its record (seconds, counts), for the stages done."""
        stages: dict[str, dict[str, Any]] = self.manifest["stages"]
        return stages

    def save(self) -> None:
        """Write the manifest (atomically)."""
        write_json(self.path / MANIFEST, self.manifest)

    def record(self, stage: str, started: float | None, **info: Any) -> None:
        """Record a finished stage; `started` (a `time.perf_counter()`) None when its time is unknown."""
        seconds = None if started is None else round(time.perf_counter() - started, 2)
        self.stages[stage] = {"seconds": seconds, **_normal(info)}
        self.save()

    def found(self, stage: str, started: float | None = None, **info: Any) -> None:
        """Record a stage unless it is: one resumed, or whose output exists but whose record a crash
        between the two writes lost (`started` None: its time is unknown)."""
        if stage not in self.stages:
            self.record(stage, started, **info)

    def reset(self, first: str) -> None:
        """Delete the outputs and records of stage `first` and of every later one, and the derived files."""
        stages = list(self.outputs)
        for name in self.derived:
            (self.path / name).unlink(missing_ok=True)
        for stage in stages[stages.index(first) :]:
            for name in self.outputs[stage]:
                target = self.path / name.format_map(self.manifest)
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            self.stages.pop(stage, None)
        if self.manifest:
            self.save()
