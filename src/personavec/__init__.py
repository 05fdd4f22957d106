"""personavec: persona vectors for language models (Chen et al. 2025, arXiv 2507.21509).

The common path needs no deep import: the core (``load_model``, ``capture``, ``steer``,
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
    # the kinds of PersonavecError, for callers that tell them apart
    "ConfigError": "personavec.errors",
    "DataError": "personavec.errors",
    "EngineError": "personavec.errors",
    "JudgeError": "personavec.errors",
    "ModelError": "personavec.errors",
    "RunDirError": "personavec.errors",
    # the engine
    "LoadedModel": "personavec.core.models",
    "ModelIdentity": "personavec.core.models",
    "format_chat": "personavec.core.models",
    "load_model": "personavec.core.models",
    "ModelRef": "personavec.core.models",
    "find_blocks": "personavec.core.layers",
    "set_blocks_path": "personavec.core.layers",
    "Capture": "personavec.core.hooks",
    "ablate": "personavec.core.hooks",
    "capture": "personavec.core.hooks",
    "steer": "personavec.core.hooks",
    "TokenPositions": "personavec.core.positions",
    "POOLINGS": "personavec.core.pooling",
    "Pooled": "personavec.core.pooling",
    "Pooling": "personavec.core.pooling",
    "iter_pooled": "personavec.core.activations",
    "pooled_activations": "personavec.core.activations",
    "PersonaVector": "personavec.core.vectors",
    "load_vector": "personavec.core.vectors",
    "load_vectors": "personavec.core.vectors",
    "save_vectors": "personavec.core.vectors",
    "generate": "personavec.core.generate",
    "RemoteEngine": "personavec.core.engine",
    "Engine": "personavec.core.engine",  # deprecated: RemoteEngine
    "Sampling": "personavec.core.sampling",
    # the backend seam: what a model runtime answers
    "Backend": "personavec.core.backend",
    "as_backend": "personavec.core.backend",
    "Edit": "personavec.core.backend",
    "Probe": "personavec.core.backend",
    "GuardRule": "personavec.core.backend",
    "GenerationRequest": "personavec.core.backend",
    "Generation": "personavec.core.backend",
    "LogprobRequest": "personavec.core.backend",
    "Logprobs": "personavec.core.backend",
    "TransformersBackend": "personavec.core.hf",
    "generations": "personavec.core.generate",
    # traits and judges
    "TraitSpec": "personavec.traits.spec",
    "load_trait": "personavec.traits.spec",
    "make_judge": "personavec.judges",
    # the pipeline
    "ExtractConfig": "personavec.pipeline.config",
    "extract": "personavec.pipeline.extract",
    "Setting": "personavec.runs.results",
    "Sizes": "personavec.pipeline.config",
    "CalibrateConfig": "personavec.pipeline.config",
    "Cell": "personavec.runs.results",
    "evaluate": "personavec.pipeline.evaluate",
    "sweep": "personavec.pipeline.evaluate",
    "calibrate": "personavec.pipeline.calibrate",
    # deployment
    "Guard": "personavec.deploy.guard",
    "LiveMonitor": "personavec.deploy.monitor",
    "project": "personavec.deploy.monitor",
    "Monitored": "personavec.deploy.monitor",
    "monitor_generation": "personavec.deploy.monitor",
    "MonitorConfig": "personavec.deploy.config",
    "SteerConfig": "personavec.deploy.config",
    "Steering": "personavec.deploy.steering",
    "SteeredAnswers": "personavec.deploy.steering",
    "steer_answers": "personavec.deploy.steering",
    "steering": "personavec.deploy.steering",
    "score_steered": "personavec.deploy.capability",
    "ThresholdCalibration": "personavec.deploy.config",
    "calibrate_thresholds": "personavec.deploy.thresholds",
    # data
    "DataFile": "personavec.data.samples",
    "ScreenConfig": "personavec.data.config",
    "Selection": "personavec.data.config",
    "score_samples": "personavec.data.scoring",
    "select": "personavec.data.flagging",
    "ScreenResult": "personavec.data.screen",
    "screen": "personavec.data.screen",
    "screen_dataset": "personavec.data.screen",  # deprecated: screen
    "KitConfig": "personavec.data.config",
    "make_trait_dataset": "personavec.data.datakit",
    # training
    "TrainConfig": "personavec.training.config",
    "TrainIntervention": "personavec.training.config",
    "DriftConfig": "personavec.training.config",
    "ShiftConfig": "personavec.training.config",
    "train_model": "personavec.training.train",
    "train": "personavec.training.finetune",
    "finetune": "personavec.training.finetune",  # deprecated: train
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


if TYPE_CHECKING:  # what type checkers and editors see (`x as x`: an explicit re-export)
    from personavec.core.activations import (
        iter_pooled as iter_pooled,
    )
    from personavec.core.activations import (
        pooled_activations as pooled_activations,
    )
    from personavec.core.backend import Backend as Backend
    from personavec.core.backend import Edit as Edit
    from personavec.core.backend import Generation as Generation
    from personavec.core.backend import GenerationRequest as GenerationRequest
    from personavec.core.backend import GuardRule as GuardRule
    from personavec.core.backend import LogprobRequest as LogprobRequest
    from personavec.core.backend import Logprobs as Logprobs
    from personavec.core.backend import Probe as Probe
    from personavec.core.backend import as_backend as as_backend
    from personavec.core.engine import Engine as Engine
    from personavec.core.engine import RemoteEngine as RemoteEngine
    from personavec.core.generate import generate as generate
    from personavec.core.generate import generations as generations
    from personavec.core.hf import TransformersBackend as TransformersBackend
    from personavec.core.hooks import Capture as Capture
    from personavec.core.hooks import ablate as ablate
    from personavec.core.hooks import capture as capture
    from personavec.core.hooks import steer as steer
    from personavec.core.layers import find_blocks as find_blocks
    from personavec.core.layers import set_blocks_path as set_blocks_path
    from personavec.core.models import (
        LoadedModel as LoadedModel,
    )
    from personavec.core.models import (
        ModelIdentity as ModelIdentity,
    )
    from personavec.core.models import ModelRef as ModelRef
    from personavec.core.models import (
        format_chat as format_chat,
    )
    from personavec.core.models import (
        load_model as load_model,
    )
    from personavec.core.pooling import (
        POOLINGS as POOLINGS,
    )
    from personavec.core.pooling import (
        Pooled as Pooled,
    )
    from personavec.core.pooling import (
        Pooling as Pooling,
    )
    from personavec.core.positions import TokenPositions as TokenPositions
    from personavec.core.sampling import Sampling as Sampling
    from personavec.core.vectors import (
        PersonaVector as PersonaVector,
    )
    from personavec.core.vectors import (
        load_vector as load_vector,
    )
    from personavec.core.vectors import (
        load_vectors as load_vectors,
    )
    from personavec.core.vectors import (
        save_vectors as save_vectors,
    )
    from personavec.data.config import (
        KitConfig as KitConfig,
    )
    from personavec.data.config import (
        ScreenConfig as ScreenConfig,
    )
    from personavec.data.config import (
        Selection as Selection,
    )
    from personavec.data.datakit import make_trait_dataset as make_trait_dataset
    from personavec.data.flagging import select as select
    from personavec.data.samples import DataFile as DataFile
    from personavec.data.scoring import score_samples as score_samples
    from personavec.data.screen import (
        ScreenResult as ScreenResult,
    )
    from personavec.data.screen import screen as screen
    from personavec.data.screen import (
        screen_dataset as screen_dataset,
    )
    from personavec.demo import run_demo as run_demo
    from personavec.deploy.capability import score_steered as score_steered
    from personavec.deploy.config import MonitorConfig as MonitorConfig
    from personavec.deploy.config import SteerConfig as SteerConfig
    from personavec.deploy.config import ThresholdCalibration as ThresholdCalibration
    from personavec.deploy.guard import Guard as Guard
    from personavec.deploy.monitor import (
        LiveMonitor as LiveMonitor,
    )
    from personavec.deploy.monitor import (
        Monitored as Monitored,
    )
    from personavec.deploy.monitor import (
        monitor_generation as monitor_generation,
    )
    from personavec.deploy.monitor import (
        project as project,
    )
    from personavec.deploy.steering import (
        SteeredAnswers as SteeredAnswers,
    )
    from personavec.deploy.steering import (
        Steering as Steering,
    )
    from personavec.deploy.steering import (
        steer_answers as steer_answers,
    )
    from personavec.deploy.steering import (
        steering as steering,
    )
    from personavec.deploy.thresholds import calibrate_thresholds as calibrate_thresholds
    from personavec.errors import ConfigError as ConfigError
    from personavec.errors import DataError as DataError
    from personavec.errors import EngineError as EngineError
    from personavec.errors import JudgeError as JudgeError
    from personavec.errors import ModelError as ModelError
    from personavec.errors import RunDirError as RunDirError
    from personavec.judges import make_judge as make_judge
    from personavec.pipeline.calibrate import calibrate as calibrate
    from personavec.pipeline.config import CalibrateConfig as CalibrateConfig
    from personavec.pipeline.config import ExtractConfig as ExtractConfig
    from personavec.pipeline.config import Sizes as Sizes
    from personavec.pipeline.evaluate import (
        evaluate as evaluate,
    )
    from personavec.pipeline.evaluate import (
        sweep as sweep,
    )
    from personavec.pipeline.extract import extract as extract
    from personavec.runs.results import Cell as Cell
    from personavec.runs.results import Setting as Setting
    from personavec.training.config import (
        DriftConfig as DriftConfig,
    )
    from personavec.training.config import ShiftConfig as ShiftConfig
    from personavec.training.config import (
        TrainConfig as TrainConfig,
    )
    from personavec.training.config import (
        TrainIntervention as TrainIntervention,
    )
    from personavec.training.drift import DriftAlarm as DriftAlarm
    from personavec.training.finetune import finetune as finetune
    from personavec.training.finetune import train as train
    from personavec.training.shift import (
        ShiftResult as ShiftResult,
    )
    from personavec.training.shift import (
        finetuning_shift as finetuning_shift,
    )
    from personavec.training.shift import (
        measure_shift as measure_shift,
    )
    from personavec.training.train import train_model as train_model
    from personavec.traits.spec import TraitSpec as TraitSpec
    from personavec.traits.spec import load_trait as load_trait
