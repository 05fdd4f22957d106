"""A drift alarm for finetuning: watch the persona move along persona vectors while the model trains.

    alarm = DriftAlarm(lm, [evil, sycophantic], probes, every=50, threshold=2.0, stop=True)
    train_model(lm, data, out, config, callbacks=[alarm])

Every `every` steps the alarm projects a fixed probe set (prompt-last, the model in eval mode, no
training intervention active) onto each vector and takes the mean; the shift is that mean minus its
value before the first step. Shifts are logged through the Trainer's own reporting as
``drift/<trait>`` (TensorBoard, W&B, ... when enabled), always to ``drift.csv`` beside the run, and a
shift beyond ±`threshold` warns (and with `stop`, ends training after that step).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from personavec._internal.files import write_json
from personavec.core.models import LoadedModel
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import project
from personavec.errors import ConfigError, RunDirError


class DriftAlarm(TrainerCallback):
    """A Trainer callback: per-trait projection shift of a probe set every `every` steps."""

    def __init__(
        self,
        loaded: LoadedModel,
        vectors: Sequence[PersonaVector],
        probes: Sequence[str],
        every: int = 50,
        threshold: float | None = None,
        stop: bool = False,
    ):
        if every < 1:
            raise ConfigError(f"the drift alarm's interval must be at least 1 step, got {every}")
        if not probes:
            raise ConfigError("the drift alarm needs probe prompts")
        if stop and threshold is None:
            raise ConfigError("stopping on drift needs a threshold")
        self.tokenizer, self.identity = loaded.tokenizer, loaded.identity
        self.vectors, self.every, self.threshold, self.stop = list(vectors), every, threshold, stop
        self.probes = [loaded.chat(p) for p in probes]
        self.trainer: Any = None
        self.baseline: list[float] | None = None
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, shift per trait)
        self.fired_at: int | None = None

    def attach(self, trainer: Any) -> None:
        """Give the alarm the trainer it reports through (`train` does this)."""
        self.trainer = trainer

    def _out(self, args: Any) -> Path:
        return Path(args.output_dir)

    def measure(self, model: Any) -> list[float]:
        """Mean prompt-last projection of the probes onto each vector, with `model` as it is now."""
        was_training = model.training
        model.eval()
        try:
            loaded = LoadedModel(model=model, tokenizer=self.tokenizer, identity=self.identity)
            values = project(loaded, self.vectors, self.probes, pooling="prompt-last", progress=False)
        finally:
            model.train(was_training)
        return [float(v) for v in values.mean(0)]

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        path = self._out(args) / "drift-baseline.json"
        watching = {"vectors": [v.fingerprint() for v in self.vectors], "probes": self.probes}
        if path.exists():  # a resumed run compares with the model before its first step
            saved = json.loads(path.read_text())
            if {k: saved.get(k) for k in watching} != watching:
                raise RunDirError(
                    f"{path} was measured with other vectors or probes; use another out", ("out",)
                )
            self.baseline = saved["baseline"]
            return
        self.baseline = self.measure(model)
        if state.is_world_process_zero:
            write_json(path, {**watching, "baseline": self.baseline})

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> Any:
        if state.global_step % self.every or self.baseline is None:
            return control
        values = self.measure(model)
        shifts = {
            v.trait: now - before for v, now, before in zip(self.vectors, values, self.baseline, strict=True)
        }
        self.history.append((state.global_step, shifts))
        if self.trainer is not None:
            should_log = control.should_log  # Trainer.log resets it: keep this step's loss log
            self.trainer.log({f"drift/{trait}": shift for trait, shift in shifts.items()})
            control.should_log = should_log
        if state.is_world_process_zero:
            self._write_csv(self._out(args) / "drift.csv", state.global_step, shifts)
        crossed = {t: s for t, s in shifts.items() if self.threshold is not None and abs(s) > self.threshold}
        if crossed:
            self.fired_at = self.fired_at or state.global_step
            listed = ", ".join(f"{t} {s:+.3g}" for t, s in crossed.items())
            warnings.warn(
                f"persona drift beyond ±{self.threshold} at step {state.global_step}: {listed}", stacklevel=1
            )
            if self.stop:
                control.should_training_stop = True
        return control

    def _write_csv(self, path: Path, step: int, shifts: dict[str, float]) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", *shifts])
            writer.writerow([step, *shifts.values()])
