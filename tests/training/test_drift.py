import csv
import json

import pytest
import torch

from personavec import PersonavecError
from personavec.core.vectors import PersonaVector
from personavec.training.drift import DriftAlarm
from personavec.training.train import TrainConfig, train_model

from tiny import tiny_loaded

PROBES = ["How are you today?", "Tell me about bread."]


def data(tmp_path, n: int = 24):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}"},
                {"role": "assistant", "content": "gloomy " * 4},
            ]
        }
        for i in range(n)
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def vectors(loaded) -> list[PersonaVector]:
    generator = torch.Generator().manual_seed(1)
    return [PersonaVector(f"t{i}", torch.randn(4, 64, generator=generator), layer=2) for i in range(2)]


CONFIG = TrainConfig(batch_size=4, learning_rate=1e-2, save_steps=100, logging_steps=1)


def test_logs_the_shift_at_every_nth_step(tmp_path) -> None:
    loaded = tiny_loaded()
    watched = vectors(loaded)
    alarm = DriftAlarm(loaded, watched, PROBES, every=2)
    before = alarm.measure(loaded.model)
    train_model(loaded, data(tmp_path), tmp_path / "run", CONFIG, callbacks=[alarm])
    assert [step for step, _ in alarm.history] == [2, 4, 6]
    after = alarm.measure(loaded.model)
    last = alarm.history[-1][1]
    assert [last["t0"], last["t1"]] == pytest.approx(
        [a - b for a, b in zip(after, before, strict=True)], abs=1e-4
    )
    assert abs(last["t0"]) > 1e-4  # training did move the persona
    with open(tmp_path / "run" / "drift.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "t0", "t1"] and [r[0] for r in rows[1:]] == ["2", "4", "6"]
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs if "drift/t0" in log] == [2, 4, 6]
    assert [log["step"] for log in logs if "loss" in log] == [1, 2, 3, 4, 5, 6]  # the Trainer's own logs kept


def test_warns_and_stops_training_when_asked(tmp_path) -> None:
    loaded = tiny_loaded()
    alarm = DriftAlarm(loaded, vectors(loaded), PROBES, every=2, threshold=1e-9, stop=True)
    with pytest.warns(UserWarning, match="persona drift beyond ±1e-09 at step 2"):
        result = train_model(loaded, data(tmp_path), tmp_path / "run", CONFIG, callbacks=[alarm])
    assert result.steps == 2 and alarm.fired_at == 2


def test_bad_settings() -> None:
    loaded = tiny_loaded()
    with pytest.raises(PersonavecError, match="needs a threshold"):
        DriftAlarm(loaded, vectors(loaded), PROBES, stop=True)
    with pytest.raises(PersonavecError, match="at least 1 step"):
        DriftAlarm(loaded, vectors(loaded), PROBES, every=0)


def test_a_resumed_run_keeps_the_baseline_of_the_model_before_training(tmp_path) -> None:
    from types import SimpleNamespace

    loaded = tiny_loaded()
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(is_world_process_zero=True)
    first = DriftAlarm(loaded, vectors(loaded), PROBES)
    first.on_train_begin(args, state, None, model=loaded.model)
    with torch.no_grad():  # "trained" since: a resumed run must not measure its baseline again
        for p in loaded.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    resumed = DriftAlarm(loaded, vectors(loaded), PROBES)
    resumed.on_train_begin(args, state, None, model=loaded.model)
    assert resumed.baseline == first.baseline != resumed.measure(loaded.model)
