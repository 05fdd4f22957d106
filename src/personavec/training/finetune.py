"""What ``personavec train`` does in one call: check the settings and data, load the model on this
process's device, set up the drift alarm, and train (see `personavec.training.train`)."""

from __future__ import annotations

from pathlib import Path

from personavec._internal.deprecation import renamed
from personavec._internal.dist import process_device
from personavec.core.models import load_model
from personavec.core.vectors import load_vector
from personavec.runs.preflight import preflight
from personavec.training.config import DriftConfig, TrainConfig
from personavec.training.drift import DriftAlarm
from personavec.training.sft_data import load_conversations
from personavec.training.train import Trained, train_model
from personavec.traits import load_trait


def train(
    model_ref: str,
    data: str | Path,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    vector: str | Path | None = None,
    drift: DriftConfig = DriftConfig(),
    eval_data: str | Path | None = None,
    dtype: str = "auto",
    device: str = "auto",
    pooling: str = "response-avg",
) -> Trained:
    """Finetune the model `model_ref` on the chat JSONL `data` into the run directory `out` (resumable),
    with the intervention of `config` using the `pooling` vector of the file `vector` and the drift alarm
    of `drift`. Settings, data rows and vector files are checked before the model loads; under
    ``accelerate launch`` each process loads the model on its own device."""
    config.check(eval_data)
    load_conversations(data)  # bad rows fail before the model loads
    steering = load_vector(vector, pooling=pooling) if vector else None
    watched = [load_vector(path, pooling=pooling) for path in drift.vectors]
    probes = load_trait(drift.trait).evaluation_questions if drift.trait else []
    preflight(out=out, vectors=[*([steering] if steering else []), *watched], model=model_ref)
    # the vector fits the model (preflight), so its blocks are the model's: checked before the model loads
    config.intervention.check(steering, steering.n_layers if steering else 0, config.lora)
    loaded = load_model(model_ref, dtype=dtype, device=process_device(device))
    alarms = (
        [DriftAlarm(loaded, watched, probes, drift.every, drift.threshold, drift.stop)] if drift.every else []
    )
    return train_model(loaded, data, out, config, steering, alarms, eval_data)


__getattr__ = renamed(__name__, {"finetune": "train"})
