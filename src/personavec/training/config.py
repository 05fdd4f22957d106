"""What a finetuning run is told: the intervention, the optimiser and adapter settings, the drift alarm;
and what a shift measurement is told.

Torch-free, so that the command line builds its flags from these fields without importing torch. A
field's ``metadata`` is its flag: ``help``, and ``flag`` where the flag is not the field's name,
``invert`` for a flag that switches a default-true field off, ``repeat`` for a repeatable option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from personavec.core.sampling import Sampling
from personavec.core.units import UNITS_HELP, CoefUnits, check_units
from personavec.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from personavec.core.vectors import PersonaVector

InterventionMethod = Literal["none", "steer", "ablate", "regularize"]
INTERVENTIONS: tuple[InterventionMethod, ...] = get_args(InterventionMethod)


@dataclass(frozen=True)
class TrainIntervention:
    """What happens to the residual stream (or the loss) in training steps."""

    method: InterventionMethod = field(
        default="none", metadata={"flag": "--intervention", "help": "in training steps"}
    )
    coef: float = field(default=0.0, metadata={"help": "steer: α (paper: up to 5 at one layer)"})
    coef_units: CoefUnits = field(default="raw", metadata={"help": UNITS_HELP})
    layer: int | None = field(
        default=None, metadata={"help": "steer/ablate/regularize layer (default: the vector's)"}
    )
    all_layers: bool = field(default=False, metadata={"help": "steer: v_ℓ − v_ℓ₋₁ at every layer"})
    weight: float = field(default=0.0, metadata={"help": "regularize: λ"})
    during_eval: bool = field(
        default=False, metadata={"help": "keep the intervention in evaluation too (needs --eval-data)"}
    )

    def __post_init__(self) -> None:
        """Settings that cannot work, or would silently do nothing, are refused."""
        if self.method not in INTERVENTIONS:
            raise ConfigError(
                f"unknown method {self.method!r}; use one of {', '.join(INTERVENTIONS)}", ("method",)
            )
        if self.method == "steer" and not self.coef:
            raise ConfigError("method steer needs a nonzero coef", ("method", "coef"))
        if self.all_layers and self.layer is not None:
            raise ConfigError("all_layers steers at each block: drop layer", ("all_layers", "layer"))
        check_units(self.coef_units)
        if self.all_layers and self.coef_units == "norm":
            raise ConfigError(
                "all_layers adds one α × (v_ℓ − v_ℓ₋₁) at every block, where a norm-unit coefficient "
                "has no single layer to be measured at: give α raw (coef_units raw)",
                ("all_layers", "coef_units"),
            )

    def check(self, vector: PersonaVector | None, n_layers: int, lora: bool) -> None:
        """Raise a clear error when the vector or the model cannot carry this intervention."""
        if self.method == "none":
            return
        if vector is None:
            raise ConfigError(f"method {self.method} needs a vector", ("method", "vector"))
        if vector.n_layers != n_layers:
            vector_model = vector.model.name if vector.model else "another model"
            raise ModelError(
                f"vector {vector.trait!r} was made for {vector_model} ({vector.n_layers} blocks); "
                f"this model has {n_layers}"
            )
        if not self.all_layers:
            vector.resolve_layer(self.layer)  # out of range or no chosen layer: a clear error
        if self.method == "steer" and not math.isfinite(self.coef):
            raise ConfigError(f"the steering coefficient must be a finite number, got {self.coef}")
        if self.method == "regularize" and (not lora or not self.weight > 0):
            raise ConfigError(
                "regularize needs LoRA (the base model is the adapter off) and weight > 0", ("weight",)
            )
        if self.all_layers and self.method != "steer":
            raise ConfigError("all_layers is for steer only", ("all_layers",))
        if self.method == "steer":
            self.raw_coef(vector)  # norm units need the vector's recorded residual norm

    def raw_coef(self, vector: PersonaVector) -> float:
        """steer's α as the multiple of v it adds (`coef` converted from `coef_units`)."""
        return vector.raw_coef(self.coef, None if self.all_layers else self.layer, self.coef_units)


@dataclass(frozen=True)
class TrainConfig:
    """Finetuning settings; the defaults are the paper's (LoRA r 32, α 64, rsLoRA, all projections,
    lr 1e-5, one epoch)."""

    lora: bool = field(
        default=True, metadata={"flag": "--full", "invert": True, "help": "train every weight, not a LoRA"}
    )
    rank: int = field(default=32, metadata={"help": "LoRA rank"})
    alpha: int = field(default=64, metadata={"help": "LoRA alpha"})
    rslora: bool = field(
        default=True,
        metadata={"flag": "--no-rslora", "invert": True, "help": "plain LoRA scaling instead of rsLoRA"},
    )
    dropout: float = field(default=0.0, metadata={"flag": "--lora-dropout", "help": "LoRA dropout"})
    target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "flag": "--target-module",
            "repeat": True,
            "help": "LoRA target (repeatable; default: every linear layer of the blocks)",
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"flag": "--lr", "help": "learning rate"})
    epochs: float = field(default=1.0, metadata={"help": "epochs"})
    batch_size: int = field(default=8, metadata={"help": "per device"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    max_length: int = field(default=1024, metadata={"help": "tokens per conversation"})
    warmup_steps: int = field(default=0, metadata={"help": "learning-rate warm-up"})
    seed: int = field(default=0, metadata={"help": "seed"})
    save_steps: int = field(default=100, metadata={"help": "checkpoint interval"})
    logging_steps: int = field(default=5, metadata={"help": "log interval in steps"})
    report_to: tuple[str, ...] = field(
        default=(), metadata={"repeat": True, "help": "tensorboard, wandb, ... (repeatable)"}
    )
    intervention: TrainIntervention = field(default_factory=TrainIntervention)

    def __post_init__(self) -> None:
        positive = ("rank", "alpha", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", (name,))
        if not self.learning_rate > 0 or not self.epochs > 0:
            raise ConfigError("learning_rate and epochs must be positive", ("learning_rate", "epochs"))

    def check(self, eval_data: object = None) -> None:
        """Raise a clear error for an intervention kept in evaluation that never runs (no evaluation
        data: `eval_data` None)."""
        if self.intervention.during_eval and not eval_data:
            raise ConfigError("during_eval needs eval_data", ("during_eval", "eval_data"))


@dataclass(frozen=True)
class DriftConfig:
    """The drift alarm of a training run: every `every` steps, the projections of `trait`'s evaluation
    questions onto the `vectors` are compared with the start's (0: off)."""

    every: int = field(
        default=0, metadata={"flag": "--drift-every", "help": "drift alarm interval in steps (0: off)"}
    )
    vectors: tuple[str, ...] = field(
        default=(),
        metadata={"flag": "--drift-vector", "repeat": True, "help": "vector the drift alarm watches"},
    )
    trait: str | None = field(
        default=None,
        metadata={"flag": "--drift-trait", "help": "trait whose evaluation questions are the drift probes"},
    )
    threshold: float | None = field(
        default=None,
        metadata={"flag": "--drift-threshold", "help": "warn when a projection shift exceeds ±T"},
    )
    stop: bool = field(
        default=False, metadata={"flag": "--drift-stop", "help": "stop training when the alarm fires"}
    )

    def __post_init__(self) -> None:
        """Drift settings without an interval would do nothing; an interval needs what to watch."""
        if not self.every and (self.threshold is not None or self.stop or self.vectors or self.trait):
            raise ConfigError(
                "the drift alarm's threshold, stop, vectors and trait need every N",
                ("threshold", "stop", "vectors", "trait", "every"),
            )
        if self.every and (not self.vectors or not self.trait):
            raise ConfigError(
                "a drift interval (every) needs vectors (what to watch) and a trait (probes)",
                ("every", "vectors", "trait"),
            )


@dataclass(frozen=True)
class ShiftConfig:
    """Where `measure_shift` reads the vectors (`layer`, default each one's chosen layer) and how the
    finetuned model's judged answers are generated (greedy)."""

    layer: int | None = field(
        default=None, metadata={"help": "read every vector at this layer (default: each one's)"}
    )
    sampling: Sampling = field(
        default=Sampling(max_new_tokens=128, batch_size=32),
        metadata={"fields": ("max_new_tokens",), "helps": {"max_new_tokens": "judged answer length"}},
    )
