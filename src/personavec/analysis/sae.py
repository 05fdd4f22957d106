"""What a vector is made of: its decomposition on a sparse autoencoder's features, through SAELens.

An SAE in SAELens' folder format (``cfg.json`` and ``sae_weights.safetensors``, as SAELens saves them:
Gemma Scope, Llama Scope and the like) reads the residual stream at one hook; `sae_layer` maps the
hook's name to personavec's layer numbering (`personavec.core.layers`: layer ℓ is the output of block
ℓ, the input of TransformerLens' 0-based ``blocks.ℓ``). For a vector v at that layer `decompose` gives

- the features whose **decoder directions** align best with v (the cosine of ``W_dec[f]`` and v);
- the vector's **encoding**, encode(h̄ + v) − encode(h̄), with h̄ the mean response-avg activation
  over the run's answers at that layer: the features that adding v to a typical activation switches on;

each with the run's own answers that activate it most (every answer pooled as extraction pools it,
response-avg after its system prompt and question, then encoded).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from personavec.core.activations import iter_pooled
from personavec.core.backend import Backend, Model, as_backend, user_turn
from personavec.core.layers import check_layer
from personavec.core.vectors import PersonaVector, load_vector
from personavec.errors import ConfigError, DataError, ModelError, RunDirError
from personavec.runs.preflight import preflight
from personavec.runs.readers import ExtractionRun

HOOKS = (
    (re.compile(r"blocks\.(\d+)\.hook_resid_pre"), 0),  # TransformerLens: the input of 0-based block N
    (re.compile(r"blocks\.(\d+)\.hook_resid_post"), 1),  # its output
    (re.compile(r"(?:model\.)?layers\.(\d+)"), 1),  # a Hugging Face decoder layer's output
)


def sae_layer(hook_name: str, n_layers: int) -> int:
    """personavec's layer of the residual-stream point an SAE's hook names, checked against the model."""
    for pattern, offset in HOOKS:
        if found := pattern.fullmatch(hook_name):
            return check_layer(int(found[1]) + offset, n_layers)
    raise ConfigError(
        f"the SAE reads {hook_name!r}, not a residual-stream point personavec numbers "
        "(blocks.N.hook_resid_pre, blocks.N.hook_resid_post, model.layers.N): give its layer (--layer)"
    )


def load_sae(path: str | Path, device: str = "cpu") -> Any:
    """An SAE from a local folder in SAELens' format (a `sae_lens.SAE`)."""
    try:
        from sae_lens import SAE
    except ImportError:
        raise ConfigError("SAE decomposition needs SAELens: pip install 'personavec[sae]'") from None
    folder = Path(path)
    if not (folder / "cfg.json").is_file():
        raise DataError(
            f"{folder} is not an SAE folder in SAELens' format (cfg.json, sae_weights.safetensors)"
        )
    try:
        return SAE.load_from_disk(str(folder), device=device)
    except Exception as error:  # SAELens raises KeyError, ValueError, ... for a malformed folder
        raise DataError(f"cannot load the SAE in {folder}: {type(error).__name__}: {error}") from None


def hook_name(sae: Any) -> str:
    """The hook an SAE was trained on (its config's metadata)."""
    name = sae.cfg.metadata.hook_name
    if not name:
        raise ConfigError("the SAE's cfg.json names no hook (metadata.hook_name): give its layer (--layer)")
    return str(name)


@dataclass(frozen=True)
class TopAnswer:
    """One of the run's answers, with a feature's activation on it."""

    question: str
    answer: str
    polarity: str
    activation: float


@dataclass(frozen=True)
class Feature:
    """An SAE feature: its decoder direction's `cosine` with the vector, the vector's `encoding` on it
    (encode(h̄ + v) − encode(h̄)), and the run's answers that activate it most."""

    index: int
    cosine: float
    encoding: float
    answers: tuple[TopAnswer, ...]


@dataclass(frozen=True)
class Decomposition:
    """A vector on an SAE's features at `layer`: the `top` by decoder cosine and by encoding."""

    trait: str
    layer: int
    hook_name: str
    d_sae: int
    n_answers: int
    by_cosine: tuple[Feature, ...]
    by_encoding: tuple[Feature, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """Both rankings as text, each feature with its best answer."""
        lines = [
            f"{self.trait} at layer {self.layer} on an SAE of {self.d_sae} features ({self.hook_name}); "
            f"answers: {self.n_answers}"
        ]
        for title, features in (("decoder cosine", self.by_cosine), ("encoding", self.by_encoding)):
            lines.append(f"top features by {title}:  feature  cosine  encoding  best answer")
            for f in features:
                best = f.answers[0].answer[:60].replace("\n", " ") if f.answers else ""
                lines.append(f"  {f.index:>7}  {f.cosine:+.3f}  {f.encoding:+9.3f}  {best!r}")
        return "\n".join(lines)


def check_sae(sae: Any, vector: PersonaVector, layer: int | None = None) -> tuple[str, int]:
    """The SAE's hook name and personavec layer (`layer` when given), checked against the vector."""
    name = hook_name(sae) if layer is None else f"layer {layer} (given)"
    layer = sae_layer(name, vector.n_layers) if layer is None else check_layer(layer, vector.n_layers)
    if sae.cfg.d_in != vector.hidden_size:
        width = f"{vector.trait!r} is {vector.hidden_size}-wide"
        raise ModelError(f"the SAE reads {sae.cfg.d_in}-wide activations; {width}: an SAE of another model?")
    return name, layer


def decompose_file(
    model: Model,
    vector_file: str | Path,
    sae_path: str | Path,
    pooling: str = "response-avg",
    layer: int | None = None,
    top: int = 10,
    answers: int = 3,
    progress: bool = True,
) -> Decomposition:
    """`decompose` the vector of a file an extraction run wrote, over that run's answers; the vector,
    the run, the SAE and the layer are checked before `model` (a `ModelRef`) loads."""
    vector = load_vector(vector_file, pooling)
    run = ExtractionRun.find(Path(vector_file).parent)
    if run is None:
        raise RunDirError(
            f"{vector_file} is not in an extraction run directory: the decomposition shows each feature's "
            "answers from the run that made the vector"
        )
    sae = load_sae(sae_path)
    check_sae(sae, vector, layer)
    preflight(vectors=[vector], model=model)
    return decompose(as_backend(model), vector, sae, run.rows(), layer, top, answers, progress=progress)


def plot_decomposition(decomposition: Decomposition, path: str | Path) -> Path:
    """Bar charts of the top features by decoder cosine and by encoding, to the PNG `path`."""
    import matplotlib.pyplot as plt

    from personavec.report.html import agg, save_png

    agg()
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(decomposition.by_cosine) + 1.5))
    parts = (("decoder cosine with v", "cosine", decomposition.by_cosine),
             ("encode(h̄ + v) − encode(h̄)", "encoding", decomposition.by_encoding))  # fmt: skip
    for ax, (title, key, features) in zip(axes, parts, strict=True):
        labels = [f"#{f.index}" for f in features][::-1]
        ax.barh(labels, [getattr(f, key) for f in features][::-1], color="tab:blue")
        ax.set(title=title, xlabel=key)
    figure.suptitle(
        f"{decomposition.trait} at layer {decomposition.layer} on an SAE of {decomposition.d_sae} features"
    )
    return save_png(figure, path)


def decompose(
    backend: Backend,
    vector: PersonaVector,
    sae: Any,
    rows: Sequence[dict[str, Any]],
    layer: int | None = None,
    top: int = 10,
    answers: int = 3,
    token_budget: int = 16384,
    progress: bool = True,
) -> Decomposition:
    """`vector` on `sae`'s features (see the module docstring), at `layer` (default: the SAE's hook's),
    with the `answers` of the run's generation `rows` that activate each feature most."""
    name, layer = check_sae(sae, vector, layer)
    if top < 1 or answers < 1:
        raise ConfigError(f"top and answers must be at least 1, got {top} and {answers}", ("top", "answers"))
    if not rows:
        raise DataError("the run has no answers to find each feature's examples in")
    v = vector.at(layer).double()
    acts = _activations(backend, rows, layer, token_budget, progress)
    decoder = sae.W_dec.detach().double().cpu()
    cosine = (decoder @ v) / (decoder.norm(dim=1) * v.norm()).clamp(min=1e-12)
    mean = acts.mean(0)
    encoded = _encode(sae, torch.stack([mean, mean + v]))
    encoding = encoded[1] - encoded[0]
    k = min(top, int(sae.cfg.d_sae))
    chosen = {"cosine": cosine.topk(k).indices.tolist(), "encoding": encoding.topk(k).indices.tolist()}
    wanted = sorted({i for indices in chosen.values() for i in indices})
    per_answer = torch.cat([_encode(sae, chunk)[:, wanted] for chunk in acts.split(256)])
    examples = {}
    for column, index in enumerate(wanted):
        best = per_answer[:, column].topk(min(answers, len(rows))).indices.tolist()
        examples[index] = tuple(
            TopAnswer(
                rows[j]["question"], rows[j]["answer"], rows[j]["polarity"], float(per_answer[j, column])
            )
            for j in best
        )

    def feature(i: int) -> Feature:
        return Feature(i, float(cosine[i]), float(encoding[i]), examples[i])

    return Decomposition(
        vector.trait, layer, name, int(sae.cfg.d_sae), len(rows),
        tuple(feature(i) for i in chosen["cosine"]), tuple(feature(i) for i in chosen["encoding"]),
    )  # fmt: skip


def _activations(
    backend: Backend, rows: Sequence[dict[str, Any]], layer: int, token_budget: int, progress: bool
) -> Tensor:
    """``[answers, hidden]`` float64: each answer's response-avg at `layer`, after its system prompt."""
    prompts = [user_turn(backend, r["question"], r.get("system")) for r in rows]
    out = torch.empty(len(rows), backend.identity.hidden_size, dtype=torch.float64)
    texts = [r["answer"] for r in rows]
    for indices, pooled in iter_pooled(
        backend, prompts, texts, token_budget, progress=progress, layers=[layer]
    ):
        out[torch.tensor(indices)] = pooled.tensor("response-avg")[:, 0].double()
    return out


def _encode(sae: Any, activations: Tensor) -> Tensor:
    """SAELens' encoding of ``[n, d_in]`` activations, float64 on the CPU."""
    weight = sae.W_dec
    with torch.no_grad():
        return sae.encode(activations.to(device=weight.device, dtype=weight.dtype)).double().cpu()
