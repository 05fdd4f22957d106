"""Read and edit the residual stream with context managers.

    with capture(model, layers=[10, 20]) as cap:
        model(**batch)
    cap[20]                                  # [batch, tokens, hidden]

    with steer(model, {20: v}, coef=-1.5, positions="response"):
        model.generate(**batch)

Layer ℓ is the output of block ℓ (1-based); layer 0 is the input of the first block (see layers.py).
Pad positions (attention mask 0) are never edited. `positions` (a ``TokenPositions`` name or a mask;
not to be confused with the poolings of activations.py) chooses the other ones:

- ``"all"``: every non-pad token;
- ``"prompt"``: tokens of the first forward pass over a sequence (the prompt, in ``generate``), i.e.
  absolute positions below the length seen when the KV cache was empty; in a plain forward pass that
  is every token;
- ``"response"``: the tokens after it (the generated ones, in ``generate`` with a KV cache);
- a boolean tensor ``[batch, seq]`` over absolute positions (``True`` = edit), for a plain forward
  pass over prompt + response; positions beyond it are not edited.

Hooks are removed on exit, also after an exception. Interventions nest and compose: each adds its
own hooks, which run in the order they were entered (a capture entered after a steer sees the edit).
Edits are out of place, so gradients flow through them in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from personavec._internal.deprecation import renamed
from personavec.core.backend import EditOp
from personavec.core.layers import Blocks, check_layer, find_blocks, unwrap
from personavec.core.positions import TOKEN_POSITIONS, TokenPositions
from personavec.errors import ConfigError, DataError, ModelError


class _CallState:
    """What the backbone was called with: which tokens are real, and where they sit in the sequence."""

    def __init__(self) -> None:
        self.real: Tensor | None = None  # [batch, tokens] bool, False on pad tokens; None if unknown
        self.offset = 0  # tokens already in the KV cache
        self.prompt_len = 0  # length of the sequence when the cache was empty
        self.calls = 0  # backbone forward calls seen

    def observe(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        inputs = ids if ids is not None else embeds
        if inputs is None:
            raise ModelError("personavec hooks need the model called with input_ids or inputs_embeds")
        batch, tokens = inputs.shape[0], inputs.shape[1]
        self.calls += 1
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        get_len = getattr(cache, "get_seq_length", None)
        self.offset = int(get_len()) if callable(get_len) else 0
        if self.offset == 0:
            self.prompt_len = tokens
        mask = kwargs.get("attention_mask")
        if mask is None:
            self.real = torch.ones(batch, tokens, dtype=torch.bool, device=inputs.device)
        elif isinstance(mask, Tensor) and mask.dim() == 2:
            self.real = mask[:, -tokens:].bool()
        else:  # a 4-D mask (static caches build one): pad tokens cannot be told apart
            self.real = None

    def check_last_real(self) -> None:
        """Raise unless every row's last token in this call is a real one (left padding, 2-D mask)."""
        if self.real is None or not bool(self.real[:, -1].all()):
            raise ConfigError(
                "per-sequence monitoring needs left padding and generate's default dynamic cache: "
                "the last position of a row is a pad token here"
            )

    def select(self, positions: TokenPositions | Tensor) -> Tensor:
        """Boolean [batch, tokens] of the current call's tokens that `positions` selects."""
        if self.real is None:
            raise ConfigError(
                "interventions need a 2-D attention mask to leave pad tokens alone; this call passed a "
                "4-D one (a static KV cache does): use generate's default dynamic cache"
            )
        real = self.real
        if isinstance(positions, Tensor):
            batch, tokens = real.shape
            if positions.shape[0] not in (1, batch):
                raise ConfigError(f"the positions mask has {positions.shape[0]} rows; this batch has {batch}")
            chosen = torch.zeros_like(real)
            window = positions[:, self.offset : self.offset + tokens].to(real.device).bool()
            chosen[:, : window.shape[1]] = window
            return real & chosen
        if positions == "all":
            return real
        absolute = torch.arange(real.shape[1], device=real.device) + self.offset
        in_prompt = absolute < self.prompt_len
        return real & (in_prompt if positions == "prompt" else ~in_prompt)


def _check_positions(positions: TokenPositions | Tensor) -> None:
    if isinstance(positions, Tensor):
        if positions.dim() != 2:
            raise ConfigError(f"a positions mask must be [batch, seq], got shape {tuple(positions.shape)}")
    elif positions not in TOKEN_POSITIONS:
        raise ConfigError(f"unknown positions {positions!r}; use one of {TOKEN_POSITIONS} or a bool mask")


class ResidualHooks:
    """Base context manager: calls `self.edit(layer, hidden)` on the residual stream at `layers`.

    `edit` returns a replacement tensor or None (read only). Subclasses override it.
    """

    def __init__(self, model: nn.Module, layers: Iterable[int]):
        self.blocks: Blocks = find_blocks(model)
        self.layers = sorted({check_layer(layer, self.blocks.n_layers) for layer in layers})
        self.state = _CallState()
        self._handles: list[RemovableHandle] = []

    def edit(self, layer: int, hidden: Tensor) -> Tensor | None:
        raise NotImplementedError

    def __enter__(self) -> ResidualHooks:
        if self._handles:
            raise RuntimeError("these hooks are already active")
        try:
            self._register()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _register(self) -> None:
        def observe(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.state.observe(args, kwargs)

        self._handles.append(self.blocks.backbone.register_forward_pre_hook(observe, with_kwargs=True))
        for layer in self.layers:
            if layer == 0:
                hook = self.blocks.layers[0].register_forward_pre_hook(self._input_hook(), with_kwargs=True)
            else:
                hook = self.blocks.layers[layer - 1].register_forward_hook(self._output_hook(layer))
            self._handles.append(hook)

    def _input_hook(self) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                new = self.edit(0, args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = self.edit(0, kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return hook

    def _output_hook(self, layer: int) -> Callable[..., Any]:
        def hook(_m: nn.Module, _args: Any, output: Any) -> Any:
            if isinstance(output, Tensor):
                return self.edit(layer, output)
            new = self.edit(layer, output[0])
            return None if new is None else (new, *output[1:])

        return hook


class Capture(ResidualHooks):
    """Records the residual stream at chosen layers, one tensor per forward call (detached)."""

    def __init__(self, model: nn.Module, layers: Iterable[int], to_cpu: bool = False):
        super().__init__(model, layers)
        self.to_cpu = to_cpu
        self.calls: dict[int, list[Tensor]] = {layer: [] for layer in self.layers}

    def edit(self, layer: int, hidden: Tensor) -> None:
        kept = hidden.detach()
        self.calls[layer].append(kept.cpu() if self.to_cpu else kept)

    def __getitem__(self, layer: int) -> Tensor:
        """All tokens seen at `layer`, calls joined along the sequence (prefill + each decode step)."""
        if layer not in self.calls:
            raise ConfigError(f"layer {layer} was not captured; captured layers: {self.layers}")
        return torch.cat(self.calls[layer], dim=1)

    def __enter__(self) -> Capture:
        super().__enter__()
        return self


class Intervention(ResidualHooks):
    """Adds coef·v (`op` "steer") or removes the component along v̂ ("ablate") at each layer's vector."""

    def __init__(
        self,
        model: nn.Module,
        vectors: Mapping[int, Tensor],
        op: EditOp,
        coef: float = 1.0,
        positions: TokenPositions | Tensor = "all",
    ):
        super().__init__(model, vectors)
        _check_positions(positions)
        if not math.isfinite(coef):
            raise ConfigError(f"the steering coefficient must be a finite number, got {coef}")
        hidden_size = _hidden_size(model)
        self.vectors = {layer: _check_vector(vectors[layer], hidden_size, layer) for layer in self.layers}
        if op == "ablate":
            zero = [layer for layer, v in self.vectors.items() if not v.norm() > 0]
            if zero:
                raise DataError(f"cannot ablate a zero vector (layers {zero})")
            self.vectors = {layer: v / v.norm() for layer, v in self.vectors.items()}
        self.op, self.coef, self.positions = op, float(coef), positions
        self._placed: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
        self._masks: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._masks_call = -1

    @property
    def calls(self) -> int:
        """Forward calls of the model while the intervention was active (each one edited)."""
        return self.state.calls

    def _mask(self, like: Tensor) -> Tensor:
        """The positions to edit in this forward call, [batch, tokens, 1] in `like`'s dtype and device.

        Worked out once per call (and device), not once per layer.
        """
        if self._masks_call != self.state.calls:
            self._masks.clear()
            self._masks_call = self.state.calls
        dtype = like.dtype if self.op == "steer" else torch.float32
        key = (like.device, dtype)
        if key not in self._masks:
            selected = self.state.select(self.positions)
            self._masks[key] = selected.to(device=like.device, dtype=dtype).unsqueeze(-1)
        return self._masks[key]

    def _vector(self, layer: int, like: Tensor) -> Tensor:
        """The layer's edit vector (coef·v to add, or v̂ to ablate) on `like`'s device, cached."""
        key = (layer, like.device, like.dtype if self.op == "steer" else torch.float32)
        if key not in self._placed:
            with torch.inference_mode(False):  # a normal tensor, usable in training forwards too
                vector = self.vectors[layer].to(device=like.device)
                self._placed[key] = self.coef * vector.to(key[2]) if self.op == "steer" else vector
        return self._placed[key]

    def edit(self, layer: int, hidden: Tensor) -> Tensor:
        mask, vector = self._mask(hidden), self._vector(layer, hidden)
        if self.op == "steer":
            return hidden + vector * mask
        along = (hidden.float() @ vector).unsqueeze(-1) * vector
        return hidden - (along * mask).to(hidden.dtype)

    def __enter__(self) -> Intervention:
        super().__enter__()
        return self


def _hidden_size(model: nn.Module) -> int:
    config: Any = unwrap(model).config
    text = getattr(config, "text_config", None) or config
    return int(text.hidden_size)


def _check_vector(vector: Tensor, hidden_size: int, layer: int) -> Tensor:
    if not isinstance(vector, Tensor):
        vector = torch.as_tensor(vector)
    if vector.dim() != 1 or vector.shape[0] != hidden_size:
        raise ModelError(
            f"vector for layer {layer} has shape {tuple(vector.shape)}; this model needs ({hidden_size},)"
        )
    if not torch.isfinite(vector).all():
        raise DataError(f"vector for layer {layer} contains NaN or inf")
    return vector.detach().float()


def capture(model: nn.Module, layers: Iterable[int], to_cpu: bool = False) -> Capture:
    """Record the residual stream at `layers` while the block runs."""
    return Capture(model, layers, to_cpu=to_cpu)


def steer(
    model: nn.Module,
    vectors: Mapping[int, Tensor],
    coef: float = 1.0,
    positions: TokenPositions | Tensor = "all",
) -> Intervention:
    """Add ``coef * vectors[ℓ]`` to the residual stream at each layer ℓ (coef < 0 suppresses)."""
    return Intervention(model, vectors, "steer", coef=coef, positions=positions)


def ablate(
    model: nn.Module, vectors: Mapping[int, Tensor], positions: TokenPositions | Tensor = "all"
) -> Intervention:
    """Project the direction of ``vectors[ℓ]`` out of the residual stream: h ← h − (h·v̂)v̂."""
    return Intervention(model, vectors, "ablate", positions=positions)


__getattr__ = renamed(__name__, {"Edit": "EditOp"})
