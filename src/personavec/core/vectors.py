"""PersonaVector: one direction per residual layer, with its provenance; safetensors, .pt and GGUF I/O."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from personavec._internal.deprecation import renamed
from personavec._internal.files import atomic_path
from personavec.core.backend import Edit
from personavec.core.hooks import Intervention, ablate, steer
from personavec.core.layers import check_layer
from personavec.core.models import ModelIdentity
from personavec.core.pooling import POOLINGS, Pooling
from personavec.core.positions import TokenPositions
from personavec.core.units import CoefUnits, to_raw
from personavec.errors import ConfigError, DataError, ModelError
from personavec.version import __version__

VECTOR_FORMAT = "personavec/1"
RESIDUAL_NORM = "residual_norm"  # metadata: the mean ‖h‖ per layer over the extraction's answers


@dataclass
class PersonaVector:
    """A trait's direction at every residual layer: ``tensor[ℓ]`` for layer ℓ = 0..L (raw, not unit).

    `pooling` is how the activations were pooled (see activations.py); `layer` the layer chosen for steering
    (None until chosen); `metadata` holds the model identity under ``"model"`` and whatever the
    pipeline records (counts, thresholds, seed, the residual norm per layer under ``"residual_norm"``,
    ...).
    """

    trait: str
    tensor: Tensor
    pooling: Pooling = "response-avg"
    layer: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tensor, Tensor):
            self.tensor = torch.as_tensor(self.tensor)
        if self.tensor.dim() != 2:
            raise DataError(
                f"a persona vector is [layers, hidden]; got a tensor of rank {self.tensor.dim()} "
                f"(shape {tuple(self.tensor.shape)})"
            )
        if not torch.isfinite(self.tensor).all():
            bad = sorted({int(r) for r in (~torch.isfinite(self.tensor)).nonzero()[:, 0]})
            raise DataError(f"persona vector {self.trait!r} has NaN or inf values at layers {bad}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}")
        self.tensor = self.tensor.detach().float().cpu().contiguous()
        self.metadata = dict(self.metadata)  # never change the caller's dict
        if self.layer is not None:
            check_layer(self.layer, self.n_layers)
        self.metadata.setdefault("personavec_version", __version__)
        self.metadata.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def n_layers(self) -> int:
        """Number of blocks L of the model (the tensor has L + 1 rows)."""
        return self.tensor.shape[0] - 1

    @property
    def hidden_size(self) -> int:
        return self.tensor.shape[1]

    @property
    def model(self) -> ModelIdentity | None:
        data = self.metadata.get("model")
        return ModelIdentity.from_dict(data) if data else None

    def resolve_layer(self, layer: int | None) -> int:
        """`layer` checked against the model's blocks, or the chosen layer when None."""
        if layer is None:
            if self.layer is None:
                raise ConfigError(f"vector {self.trait!r} has no chosen layer; pass one explicitly")
            return self.layer
        return check_layer(layer, self.n_layers)

    def at(self, layer: int | None = None) -> Tensor:
        """The raw vector at `layer` (default: the chosen layer)."""
        return self.tensor[self.resolve_layer(layer)]

    def unit(self, layer: int | None = None) -> Tensor:
        """The unit vector v̂ at `layer`."""
        vector = self.at(layer)
        norm = vector.norm()
        if norm == 0:
            raise DataError(f"vector {self.trait!r} is zero at layer {self.resolve_layer(layer)}")
        return vector / norm

    def residual_norm(self, layer: int | None = None) -> float:
        """The mean residual norm at `layer` over the answers this vector was extracted from."""
        norms = self.metadata.get(RESIDUAL_NORM)
        if norms is None:
            raise ConfigError(
                f"vector {self.trait!r} records no residual norm, so coefficients in norm units cannot "
                "be converted: rerun `personavec extract` with the same arguments on its run directory "
                "(it measures the norm and changes nothing else), or give raw coefficients"
            )
        return float(norms[self.resolve_layer(layer)])

    def raw_coef(self, coef: float, layer: int | None = None, units: CoefUnits = "raw") -> float:
        """`coef` in `units` (`personavec.core.units`) as the multiple of v that steering at `layer`
        adds: raw as given; norm: ``coef · residual_norm(layer) / ‖v_layer‖``."""
        if units == "raw":
            return coef
        return to_raw(coef, units, self.residual_norm(layer), float(self.at(layer).norm()))

    def project(self, activations: Tensor, layer: int | None = None) -> Tensor:
        """Scalar projections a·v̂ of activations ``[..., hidden]`` (float32)."""
        return activations.float() @ self.unit(layer).to(activations.device)

    def fingerprint(self) -> str:
        """sha256 of the trait, pooling and tensor: what outputs made with this vector depend on."""
        digest = hashlib.sha256(f"{self.trait}/{self.pooling}/".encode())
        digest.update(self.tensor.numpy().tobytes())
        return digest.hexdigest()

    def check_model(self, identity: ModelIdentity) -> None:
        """Raise a clear error if this vector's shape does not fit the model."""
        if (identity.n_layers, identity.hidden_size) != (self.n_layers, self.hidden_size):
            made_for = self.model.name if self.model else "another model"
            raise ModelError(
                f"vector {self.trait!r} was made for {made_for} ({self.n_layers} blocks, hidden "
                f"{self.hidden_size}); {identity.name} has {identity.n_layers} blocks, "
                f"hidden {identity.hidden_size}"
            )

    def apply(
        self,
        model: nn.Module,
        coef: float,
        layer: int | None = None,
        positions: TokenPositions | Tensor = "all",
        units: CoefUnits = "raw",
    ) -> Intervention:
        """Context manager steering `model` with ``coef`` × this vector at `layer` (default: chosen),
        `coef` in `units` (see `raw_coef`)."""
        layer = self.resolve_layer(layer)
        coef = self.raw_coef(coef, layer, units)
        return steer(model, {layer: self.tensor[layer]}, coef=coef, positions=positions)

    def edit(
        self,
        coef: float,
        layer: int | None = None,
        positions: TokenPositions = "all",
        units: CoefUnits = "raw",
    ) -> Edit:
        """This vector's steering, ``coef`` × v at `layer` (default: chosen), as a backend request's
        edit; `coef` in `units` (see `raw_coef`)."""
        layer = self.resolve_layer(layer)
        return Edit(layer, self.tensor[layer], self.raw_coef(coef, layer, units), positions=positions)

    def ablate(
        self, model: nn.Module, layer: int | None = None, positions: TokenPositions | Tensor = "all"
    ) -> Intervention:
        """Context manager removing this vector's direction from `model`'s residual stream at `layer`."""
        layer = self.resolve_layer(layer)
        return ablate(model, {layer: self.tensor[layer]}, positions=positions)

    def negated(self, trait: str) -> PersonaVector:
        """The opposite direction −v as trait `trait` (e.g. pessimistic from optimistic), same layer."""
        metadata = {**self.metadata, "negated_from": self.trait}
        return PersonaVector(trait, -self.tensor, self.pooling, self.layer, metadata)

    def header(self) -> dict[str, Any]:
        """The vector's entry in a file's header (``kind`` is the file format's name for the pooling)."""
        return {"trait": self.trait, "kind": self.pooling, "layer": self.layer, "metadata": self.metadata}


def save_vectors(path: str | os.PathLike[str], vectors: Sequence[PersonaVector]) -> None:
    """Write vectors of one trait (one per pooling) to a safetensors file, atomically.

    Each tensor is stored under its pooling's name (``response-avg``, ...)."""
    if not vectors:
        raise ConfigError("nothing to save: no vectors given")
    poolings = [v.pooling for v in vectors]
    if len(set(poolings)) != len(poolings):
        raise ConfigError(f"one vector per pooling in a file; got poolings {poolings}")
    header = {v.pooling: v.header() for v in vectors}
    with atomic_path(path) as tmp:
        save_file(
            {v.pooling: v.tensor for v in vectors},
            str(tmp),
            metadata={"format": VECTOR_FORMAT, "personavec": json.dumps(header)},
        )


def load_vectors(
    path: str | os.PathLike[str], model: ModelIdentity | None = None
) -> dict[str, PersonaVector]:
    """Read every vector in a personavec safetensors file, by pooling; check them against `model` if given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"vector file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != VECTOR_FORMAT:
                raise DataError(f"{path} is not a personavec vector file (no {VECTOR_FORMAT!r} header)")
            header = json.loads(meta["personavec"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        vectors = {
            pooling: PersonaVector(
                trait=h["trait"],
                tensor=tensors[pooling],
                pooling=pooling,
                layer=h["layer"],
                metadata=h["metadata"],
            )
            for pooling, h in header.items()
        }
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read vector file {path}: {type(exc).__name__}: {exc}") from exc
    if model is not None:
        for vector in vectors.values():
            vector.check_model(model)
    return vectors


def load_vector(
    path: str | os.PathLike[str], pooling: str = "response-avg", model: ModelIdentity | None = None
) -> PersonaVector:
    """Read one vector (by default the response-avg one) from a personavec safetensors file."""
    vectors = load_vectors(path, model)
    if pooling not in vectors:
        raise ConfigError(f"{path} has no {pooling!r} vector; it has {', '.join(vectors)}")
    return vectors[pooling]


def import_official_pt(
    path: str | os.PathLike[str], trait: str, identity: ModelIdentity, pooling: Pooling = "response-avg"
) -> PersonaVector:
    """Read a vector written by the paper's official code (a ``[L + 1, hidden]`` tensor in a .pt file).

    Its rows come from ``output_hidden_states``: row L is *after* the model's final norm, unlike
    personavec's layer L (recorded in the metadata as ``last_row_after_final_norm``).
    """
    try:
        tensor = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DataError(f"vector file not found: {path}") from exc
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise DataError(f"cannot read {path} as a tensor file: {exc}") from exc
    if not isinstance(tensor, Tensor):
        raise DataError(f"{path} holds a {type(tensor).__name__}, not a tensor")
    vector = PersonaVector(
        trait=trait,
        tensor=tensor,
        pooling=pooling,
        metadata={
            "model": identity.to_dict(),
            "source": f"official .pt: {Path(path).name}",
            "last_row_after_final_norm": True,
        },
    )
    vector.check_model(identity)
    return vector


def export_gguf(
    vector: PersonaVector,
    out: str | os.PathLike[str],
    layers: Sequence[int] | None = None,
    coef: float = 1.0,
    units: CoefUnits = "raw",
) -> list[int]:
    """Write a llama.cpp control-vector GGUF with ``coef`` × the vector at `layers` (default: chosen),
    `coef` in `units` (converted per layer, see `PersonaVector.raw_coef`).

    llama.cpp adds ``direction.N`` to the output of its 0-based block N, which is personavec's layer
    N + 1; so personavec layer ℓ is written as ``direction.{ℓ-1}`` and layer 1 (like layer 0) cannot be
    exported. Every layer in the file is applied at once by llama.cpp, hence one layer by default.
    Returns the llama.cpp indices written.
    """
    import gguf

    if not math.isfinite(coef):
        raise ConfigError(f"the coefficient must be a finite number, got {coef}")
    chosen = sorted(set(layers)) if layers is not None else [vector.resolve_layer(None)]
    for layer in chosen:
        check_layer(layer, vector.n_layers)
        if layer < 2:
            raise ConfigError(f"layer {layer} cannot be expressed as a llama.cpp control vector (needs ≥ 2)")
    raw = {layer: vector.raw_coef(coef, layer, units) for layer in chosen}
    model = vector.model
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="controlvector")
        writer.add_string("controlvector.model_hint", model.architecture if model else "")
        writer.add_int32("controlvector.layer_count", len(chosen))
        for layer in chosen:
            writer.add_tensor(
                f"direction.{layer - 1}", (raw[layer] * vector.tensor[layer]).numpy().astype(np.float32)
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return [layer - 1 for layer in chosen]


def read_gguf(path: str | os.PathLike[str]) -> dict[int, Tensor]:
    """The directions of a llama.cpp control-vector GGUF, keyed by llama.cpp's ``direction.N`` index."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != "controlvector":
        raise DataError(f"{path} is not a llama.cpp control vector")
    return {
        int(t.name.split(".")[1]): torch.from_numpy(np.array(t.data, dtype=np.float32))
        for t in reader.tensors
        if t.name.startswith("direction.")
    }


__getattr__ = renamed(__name__, {"FORMAT": "VECTOR_FORMAT"})
