"""personavec: persona vectors for language models (Chen et al. 2025, arXiv 2507.21509).

The common path needs no deep import: the engine (``load_model``, ``capture``, ``steer``,
``PersonaVector``, ...) and the verbs (``extract``, ``screen``, ``train``, ``load_trait``,
``make_judge``, ``evaluate``, ...) are attributes of this package. They are imported on first use, so
``import personavec`` (and ``personavec --help``) does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from personavec.errors import PersonavecError
from personavec.version import __version__

# public name → the module that defines it
_EXPORTS = {
    # the engine
    "LoadedModel": "personavec.core.models",
    "ModelIdentity": "personavec.core.models",
    "format_chat": "personavec.core.models",
    "load_model": "personavec.core.models",
    "find_blocks": "personavec.core.layers",
    "set_blocks_path": "personavec.core.layers",
    "Capture": "personavec.core.hooks",
    "ablate": "personavec.core.hooks",
    "capture": "personavec.core.hooks",
    "steer": "personavec.core.hooks",
    "Pooled": "personavec.core.activations",
    "iter_pooled": "personavec.core.activations",
    "pooled_activations": "personavec.core.activations",
    "KINDS": "personavec.core.vectors",
    "PersonaVector": "personavec.core.vectors",
    "load_vector": "personavec.core.vectors",
    "load_vectors": "personavec.core.vectors",
    "save_vectors": "personavec.core.vectors",
    "generate": "personavec.core.generate",
    # traits and judges
    "TraitSpec": "personavec.traits.spec",
    "load_trait": "personavec.traits.spec",
    "make_judge": "personavec.judges",
    # the pipeline
    "ExtractConfig": "personavec.pipeline.config",
    "extract": "personavec.pipeline.extract",
    "Setting": "personavec.pipeline.evaluate",
    "Sizes": "personavec.pipeline.evaluate",
    "evaluate": "personavec.pipeline.evaluate",
    "sweep": "personavec.pipeline.evaluate",
    "calibrate": "personavec.pipeline.calibrate",
    # deployment
    "Guard": "personavec.deploy.guard",
    "LiveMonitor": "personavec.deploy.monitor",
    "project": "personavec.deploy.monitor",
    "Monitored": "personavec.deploy.monitor",
    "monitor_generation": "personavec.deploy.monitor",
    "Steering": "personavec.deploy.steering",
    "SteeredAnswers": "personavec.deploy.steering",
    "steer_answers": "personavec.deploy.steering",
    "steering": "personavec.deploy.steering",
    "score_steered": "personavec.deploy.capability",
    # data
    "DataFile": "personavec.data.samples",
    "ScreenConfig": "personavec.data.config",
    "Selection": "personavec.data.config",
    "screen": "personavec.data.screen",
    "ScreenResult": "personavec.data.screen",
    "screen_dataset": "personavec.data.screen",
    "KitConfig": "personavec.data.config",
    "make_trait_dataset": "personavec.data.datakit",
    # training
    "TrainConfig": "personavec.training.config",
    "TrainIntervention": "personavec.training.config",
    "DriftConfig": "personavec.training.config",
    "train": "personavec.training.train",
    "DriftAlarm": "personavec.training.drift",
    "finetuning_shift": "personavec.training.shift",
    "ShiftResult": "personavec.training.shift",
    "measure_shift": "personavec.training.shift",
    # the demo
    "run_demo": "personavec.demo",
}

__all__ = ["PersonavecError", "__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'personavec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and editors see
    from personavec.core.activations import Pooled, iter_pooled, pooled_activations
    from personavec.core.generate import generate
    from personavec.core.hooks import Capture, ablate, capture, steer
    from personavec.core.layers import find_blocks, set_blocks_path
    from personavec.core.models import LoadedModel, ModelIdentity, format_chat, load_model
    from personavec.core.vectors import KINDS, PersonaVector, load_vector, load_vectors, save_vectors
    from personavec.data.config import KitConfig, ScreenConfig, Selection
    from personavec.data.datakit import make_trait_dataset
    from personavec.data.samples import DataFile
    from personavec.data.screen import ScreenResult, screen, screen_dataset
    from personavec.demo import run_demo
    from personavec.deploy.capability import score_steered
    from personavec.deploy.guard import Guard
    from personavec.deploy.monitor import LiveMonitor, Monitored, monitor_generation, project
    from personavec.deploy.steering import SteeredAnswers, Steering, steer_answers, steering
    from personavec.judges import make_judge
    from personavec.pipeline.calibrate import calibrate
    from personavec.pipeline.config import ExtractConfig
    from personavec.pipeline.evaluate import Setting, Sizes, evaluate, sweep
    from personavec.pipeline.extract import extract
    from personavec.training.config import DriftConfig, TrainConfig, TrainIntervention
    from personavec.training.drift import DriftAlarm
    from personavec.training.shift import ShiftResult, finetuning_shift, measure_shift
    from personavec.training.train import train
    from personavec.traits.spec import TraitSpec, load_trait
