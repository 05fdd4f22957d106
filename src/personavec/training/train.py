"""Finetuning with an intervention in every training forward pass: preventative steering (the
"vaccine"), CAFT ablation, or a projection-regularisation loss (the Method page of the docs, step 11).

Training runs through transformers' `Trainer` (LoRA through PEFT, or every weight); the loss is on
the assistant's tokens only (`sft_data`). The intervention is entered around each training step's
forward pass and left right after it, so evaluation inside training runs without it (unless
`during_eval`), and the saved adapter or model holds no trace of it:

- ``steer``: h_ℓ ← h_ℓ + α·v_ℓ at one layer, or with ``all_layers`` the layer-incremental vectors
  α·(v_ℓ − v_{ℓ−1}) at every layer 1..L (their sum up to ℓ is α·(v_ℓ − v_0));
- ``ablate`` (CAFT): h_ℓ ← h_ℓ − (h_ℓ·v̂)v̂ at the layer;
- ``regularize``: loss += λ·mean over sequences of (p − p_base)², p the mean projection onto v̂ of the
  assistant tokens' residual at the layer, p_base the same with the LoRA adapter switched off.

Checkpoints are written every `save_steps`; rerunning the same command resumes from the last one.
Several GPUs or nodes: ``accelerate launch -m personavec.cli train ...`` (the Trainer's own DDP).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from personavec._internal.deprecation import renamed
from personavec._internal.files import write_json
from personavec.core.hooks import ResidualHooks, ablate, steer
from personavec.core.models import LoadedModel
from personavec.core.vectors import PersonaVector
from personavec.data.samples import DataFile
from personavec.errors import ConfigError, PersonavecError
from personavec.runs.readers import TrainingRun
from personavec.runs.rundir import RunDir
from personavec.training.config import TrainConfig, TrainIntervention
from personavec.training.sft_data import IGNORE, Collator, tokenize_dataset


def intervention_vectors(spec: TrainIntervention, vector: PersonaVector) -> dict[int, Tensor]:
    """Layer → vector added (steer) or projected out (ablate, regularize)."""
    if spec.all_layers:
        return {
            layer: vector.tensor[layer] - vector.tensor[layer - 1] for layer in range(1, vector.n_layers + 1)
        }
    layer = vector.resolve_layer(spec.layer)
    return {layer: vector.tensor[layer]}


class _Projections(ResidualHooks):
    """The projection onto v̂ of every token's residual at one layer, kept in the graph."""

    def __init__(self, model: nn.Module, layer: int, unit: Tensor):
        super().__init__(model, [layer])
        self.unit, self.values = unit, torch.empty(0)

    def edit(self, layer: int, hidden: Tensor) -> None:
        self.values = hidden.float() @ self.unit.to(hidden.device)

    def __enter__(self) -> _Projections:
        super().__enter__()
        return self

    def mean_over(self, mask: Tensor) -> Tensor:
        """Per sequence, the mean over the positions of `mask` ([batch, tokens] bool)."""
        weights = mask.to(self.values.dtype)
        return (self.values * weights).sum(-1) / weights.sum(-1).clamp(min=1)


class InterventionTrainer(Trainer):
    """A Trainer whose training forward passes run inside the intervention (see the module docstring)."""

    def __init__(self, *args: Any, spec: TrainIntervention, vector: PersonaVector | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.spec, self.vector = spec, vector
        self.vectors = (
            intervention_vectors(spec, vector) if vector is not None and spec.method != "none" else {}
        )
        self.steps_intervened = 0  # training forward passes run inside the intervention
        self.coef = spec.raw_coef(vector) if vector is not None and spec.method == "steer" else 0.0

    @contextmanager
    def _intervention(self, model: nn.Module) -> Iterator[None]:
        model = self.accelerator.unwrap_model(model)  # hooks go on the modules inside a DDP wrapper
        if self.spec.method == "steer":
            with steer(model, self.vectors, coef=self.coef):
                yield
        elif self.spec.method == "ablate":
            with ablate(model, self.vectors):
                yield
        else:
            yield

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Any:
        active = self.spec.method != "none" and (model.training or self.spec.during_eval)
        if self.spec.method == "regularize" and model.training:
            return self._regularized_loss(model, inputs, return_outputs, num_items_in_batch)
        with self._intervention(model) if active else nullcontext():
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.steps_intervened += active and model.training
        return result

    def _regularized_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool, num_items: Tensor | int | None
    ) -> Any:
        assert self.vector is not None
        (layer,) = self.vectors
        unit = self.vector.unit(layer)
        answer = inputs["labels"] != IGNORE
        inner = self.accelerator.unwrap_model(model)  # the PEFT model inside a DDP wrapper
        with torch.no_grad(), inner.disable_adapter(), _Projections(inner, layer, unit) as base:
            inner(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            reference = base.mean_over(answer)
        with _Projections(inner, layer, unit) as tuned:
            loss, outputs = super().compute_loss(model, inputs, True, num_items)
            shift = tuned.mean_over(answer) - reference
        penalty = self.spec.weight * (shift**2).mean()
        if num_items is not None:  # the loss is normalised over the accumulation window: so the penalty
            penalty = penalty / self.args.gradient_accumulation_steps
        self.steps_intervened += 1
        total = loss + penalty.to(loss.dtype)
        return (total, outputs) if return_outputs else total


class StepLog(TrainerCallback):
    """Appends every log of the Trainer (loss, learning rate, drift, ...) to a JSONL file."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs and state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def _lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise PersonavecError("LoRA needs PEFT: pip install 'personavec[peft]' (or pass --full)") from None
    targets: Any = list(config.target_modules) if config.target_modules else "all-linear"
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, use_rslora=config.rslora, lora_dropout=config.dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, lora)


@dataclass
class Trained:
    """Where the finetuned weights are, and how training went."""

    out: Path
    steps: int
    train_loss: float | None  # mean of the logged training losses
    truncated: int  # conversations trained on with their tail cut to max_length
    dropped: int  # conversations left out: no assistant token within max_length
    seconds: float  # of this invocation
    steps_intervened: int  # training forward passes run inside the intervention, this invocation


def _last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint (the Trainer writes trainer_state.json last)."""
    done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    checkpoints = sorted(done, key=lambda p: int(p.name.split("-")[1]))
    return str(checkpoints[-1]) if checkpoints else None


def train_model(
    loaded: LoadedModel,
    data: str | Path,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    vector: PersonaVector | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    eval_data: str | Path | None = None,
) -> Trained:
    """Finetune `loaded` on the chat JSONL `data`; write the adapter (or model) to ``out/final``.

    LoRA layers are injected into ``loaded.model`` itself (PEFT works in place): afterwards `loaded`
    is the finetuned model; load a fresh base model for comparisons. A run directory that holds a
    finished run returns its record without training again.
    """
    config.check(eval_data)
    spec = config.intervention
    spec.check(vector, loaded.identity.n_layers, config.lora)
    identity = _identity(loaded, data, eval_data, config, vector)
    outputs = {"training": (TrainingRun.LOG, TrainingRun.FINAL, TrainingRun.RECORD)}
    run = RunDir.open(out, TrainingRun.KIND, identity, outputs)
    out = run.path
    record = TrainingRun(out).record()
    if record is not None:
        return Trained(**{**record, "out": Path(record["out"])})
    tokenized = tokenize_dataset(loaded.tokenizer, data, config.max_length)
    if warning := tokenized.warning(config.max_length):
        warnings.warn(warning, stacklevel=2)
    held_out = tokenize_dataset(loaded.tokenizer, eval_data, config.max_length) if eval_data else None
    evaluation = held_out.examples if held_out else None
    model = _lora(loaded.model, config) if config.lora else loaded.model
    try:
        args = _arguments(out, config, model, loaded.device.type == "cpu", evaluation is not None)
    except (ValueError, RuntimeError) as error:  # e.g. an unknown or uninstalled --report-to
        raise ConfigError(f"training settings refused: {error}") from None
    trainer = InterventionTrainer(
        model=model, args=args, train_dataset=tokenized.examples, eval_dataset=evaluation,
        data_collator=Collator(int(loaded.tokenizer.pad_token_id)), processing_class=loaded.tokenizer,
        callbacks=[StepLog(out / TrainingRun.LOG), *callbacks], spec=spec, vector=vector,
    )  # fmt: skip
    for callback in callbacks:
        if hasattr(callback, "attach"):
            callback.attach(trainer)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=_last_checkpoint(out))
    trainer.save_model(str(out / TrainingRun.FINAL))
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]  # resumed runs included
    trained = Trained(
        out=out / TrainingRun.FINAL,
        steps=int(result.global_step),
        train_loss=sum(losses) / len(losses) if losses else None,
        truncated=tokenized.cut,
        dropped=tokenized.dropped,
        seconds=time.perf_counter() - started,
        steps_intervened=trainer.steps_intervened,
    )
    if trainer.is_world_process_zero():
        write_json(out / TrainingRun.RECORD, {**asdict(trained), "out": str(trained.out)})
        run.record("training", started, steps=trained.steps, train_loss=trained.train_loss)
    return trained


def _identity(
    loaded: LoadedModel,
    data: str | Path,
    eval_data: str | Path | None,
    config: TrainConfig,
    vector: PersonaVector | None,
) -> dict[str, Any]:
    """What a training run is: resuming it with anything here changed is refused."""
    reporting = ("save_steps", "logging_steps", "report_to")  # may change between a run and its resume
    return {
        "model": loaded.identity.to_dict(),
        "data": DataFile(data).sha256(),
        "eval_data": DataFile(eval_data).sha256() if eval_data else None,
        "config": {k: v for k, v in asdict(config).items() if k not in reporting},
        "vector": vector.fingerprint() if vector is not None else None,
    }


def _arguments(
    out: Path, config: TrainConfig, model: nn.Module, cpu: bool, evaluate: bool
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        warmup_steps=config.warmup_steps,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.logging_steps if evaluate else None,
        report_to=list(config.report_to) or "none",
        seed=config.seed,
        remove_unused_columns=False,
        bf16=next(model.parameters()).dtype == torch.bfloat16,
        use_cpu=cpu,
        disable_tqdm=False,
    )


__getattr__ = renamed(__name__, {"train": "train_model"})
