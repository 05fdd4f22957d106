"""Options shared by the commands: flags generated from the config dataclasses, ``--config FILE``, the
model / vector / judge options and the list parsers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from personavec.errors import ConfigError, PersonavecError

T = TypeVar("T")
MODEL_HELP = "hub id, local directory, .gguf file or 'smollm2'"


def integers(text: str) -> tuple[int, ...]:
    """``12,16,20`` → (12, 16, 20); ``none`` → ()."""
    if text == "none":
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers or 'none', got {text!r}"
        ) from None


def candidate_layers(text: str) -> tuple[int, ...] | str:
    """``top:K`` as it is; otherwise `integers`."""
    return text if text.startswith("top:") else integers(text)


def numbers(text: str) -> tuple[float, ...]:
    """``-2,0,2`` → (-2.0, 0.0, 2.0)."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


# --- flags from config dataclasses -------------------------------------------------------------------


def _flag(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("flag", "--" + field.name.replace("_", "-")))


def _remember(parser: Any, field: dataclasses.Field[Any]) -> None:
    """Note on `parser` (as the default of ``field_flags``) a field whose flag is not --field-name."""
    if "flag" in field.metadata:
        flags = dict(parser.get_default("field_flags") or {})
        assert flags.get(field.name, _flag(field)) == _flag(field), f"{field.name}: two flags"
        parser.set_defaults(field_flags={**flags, field.name: _flag(field)})


def as_flags(error: PersonavecError, args: argparse.Namespace | None) -> str:
    """`error`'s message with the fields and arguments it names written as the command's flags."""
    message, flags = str(error), getattr(args, "field_flags", None) or {}
    named = error.fields if isinstance(error.fields, Mapping) else {name: name for name in error.fields}
    for word, name in named.items():
        flag = flags.get(name, "--" + name.replace("_", "-"))
        message = re.sub(rf"(?<![\w./-]){re.escape(word)}(?![\w/-]|\.\w)", flag, message)  # not in a path
    return message


def _dest(field: dataclasses.Field[Any]) -> str:
    return _flag(field).lstrip("-").replace("-", "_")


def _flagged(config: type) -> list[dataclasses.Field[Any]]:
    """The fields of `config` that are flags (those with a ``help``)."""
    return [f for f in dataclasses.fields(config) if "help" in f.metadata]


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _argument(
    field: dataclasses.Field[Any], hint: Any, default: Any = dataclasses.MISSING, text: str | None = None
) -> dict[str, Any]:
    """argparse keywords for a field: type from the annotation, default from the field (or `default`,
    a command's own), help from its metadata (or `text`)."""
    meta = field.metadata
    default = _default(field) if default is dataclasses.MISSING else default
    text = str(meta["help"]) if text is None else text
    if "default" not in text and default not in (None, False, ()):
        text += f" (default {default})"
    base = next(a for a in get_args(hint) if a is not type(None)) if _is_union(hint) else hint
    if base is bool:
        if default is not bool(meta.get("invert")):
            raise TypeError(f"{field.name}: a flag switches a boolean away from its default")
        return {"action": "store_true", "help": text}
    if get_origin(base) is Literal:
        return {"choices": get_args(base), "default": default, "help": text}
    if meta.get("top"):
        return {"type": candidate_layers, "default": default, "help": text}
    if get_origin(base) is tuple:
        item = get_args(base)[0]
        if meta.get("repeat"):
            return {"action": "append", "type": item, "default": [], "help": text}
        return {"type": integers if item is int else numbers, "default": default, "help": text}
    keywords = {"type": base, "default": default, "help": text}
    return {**keywords, "metavar": meta["metavar"]} if "metavar" in meta else keywords


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType)


def _nested(field: dataclasses.Field[Any]) -> list[dataclasses.Field[Any]]:
    """The flagged fields of a nested config (a field with ``metadata["fields"]``, e.g. a `Sampling`):
    those its metadata names, with this command's defaults (the field's default)."""
    if "fields" not in field.metadata:
        return []
    return [f for f in dataclasses.fields(_default(field)) if f.name in field.metadata["fields"]]


def add_fields(parser: Any, config: type, exclude: Sequence[str] = ()) -> None:
    """One flag per field of the dataclass `config` with a ``help`` in its metadata, and one per field
    that a nested config's ``fields`` metadata names, defaulting to the nested default's value and
    helped by its ``helps`` metadata where given (`parser` may be an argument group)."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        if field.name in exclude:
            continue
        if "help" in field.metadata:
            _remember(parser, field)
            parser.add_argument(_flag(field), dest=_dest(field), **_argument(field, hints[field.name]))
        inner, helps = _default(field), field.metadata.get("helps", {})
        for sub in _nested(field):
            keywords = _argument(
                sub,
                typing.get_type_hints(type(inner))[sub.name],
                getattr(inner, sub.name),
                helps.get(sub.name),
            )
            _remember(parser, sub)
            parser.add_argument(_flag(sub), dest=_dest(sub), **keywords)


def from_args(config: Callable[..., T], args: argparse.Namespace, **values: Any) -> T:
    """An instance of the dataclass `config` from the flags `add_fields` made (and `values`)."""
    assert isinstance(config, type)
    for field in _flagged(config):
        value = getattr(args, _dest(field), _default(field))
        if field.metadata.get("invert"):
            value = not value
        elif isinstance(value, list):  # a repeatable option: none given means the field's default
            value = tuple(value) if value else field.default
        values.setdefault(field.name, value)
    for field in dataclasses.fields(config):
        if "fields" in field.metadata and field.name not in values:
            inner = _default(field)
            given = {sub.name: getattr(args, _dest(sub), getattr(inner, sub.name)) for sub in _nested(field)}
            values[field.name] = dataclasses.replace(inner, **given)
    return config(**values)


# --- --config FILE -----------------------------------------------------------------------------------


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help='JSON or YAML file of option values, e.g. {"seed": 1}; options on the command line win',
    )


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            settings = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = " ".join(str(error).split())  # one line
            raise ConfigError(f"cannot read the config file {path}: {problem}") from None
    else:
        try:
            settings = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"cannot read the config file {path}: {error}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path} must hold an object (a mapping) of option names and values")
    return settings


def _value(action: argparse.Action, value: Any, where: str) -> Any:
    """A config file's value as the option would have parsed it."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_one(action, item, where) for item in items]
    if isinstance(value, list) and action.type in (integers, numbers, candidate_layers):
        value = ",".join(str(item) for item in value)
    return _one(action, value, where)


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    convert = action.type if callable(action.type) else None
    try:
        if convert is not None and value is not None and not isinstance(value, bool):
            value = convert(value if isinstance(value, str) else str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise ConfigError(f"{where}: {error}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set[str]) -> None:
    """Set the options of the file ``args.config`` (keyed by option name, ``batch-size``, ``batch_size``
    or ``--batch-size``) that the command line (the destinations in `given`) did not set."""
    path = Path(args.config)
    by_name: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "config"):
            for option in action.option_strings:
                by_name[option.lstrip("-")] = by_name[option.lstrip("-").replace("-", "_")] = action
    for key, value in _read_settings(path).items():
        found = by_name.get(str(key).lstrip("-"))
        if found is None:
            raise ConfigError(f"{path}: unknown setting {key!r}; use the options of `{parser.prog}`")
        if found.dest not in given:
            setattr(args, found.dest, _value(found, value, f"{path}: {key}"))


class Parser(argparse.ArgumentParser):
    """An argument parser whose commands with a ``--config`` option read it while parsing."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        if getattr(parsed, "config", None) and any(a.dest == "config" for a in self._actions):
            apply_config(self, parsed, self._given(args))
        return parsed, rest

    def _given(self, args: Sequence[str] | None) -> set[str]:
        """The destinations the command line sets: a second parse with every default suppressed."""
        saved = [(action, action.default) for action in self._actions]
        try:
            for action, _ in saved:
                action.default = argparse.SUPPRESS
            probe, _ = super().parse_known_args(args, argparse.Namespace())
        finally:
            for action, default in saved:
                action.default = default
        return set(vars(probe)) & {action.dest for action, _ in saved}


# --- options several commands share ------------------------------------------------------------------
# These name a command's inputs, outputs, model and judge (what to run on, not how): no config dataclass
# holds them, so they are written here once for every command that takes them.


def model_args(
    parser: argparse.ArgumentParser,
    vector: bool = True,
    adapter: bool = True,
    pooling: bool = True,
    backend: bool = True,
) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    device_args(parser)
    if backend:
        backend_args(parser)
    if pooling:
        pooling_arg(parser)
    if vector:
        parser.add_argument("--vector", required=True, help="a personavec vector file (.safetensors)")
    if adapter:
        parser.add_argument(
            "--adapter", help="a LoRA adapter on --model (a finetuned model, e.g. train's OUT/final)"
        )


def pooling_arg(parser: argparse.ArgumentParser, text: str = "which vector of the file") -> None:
    parser.add_argument(
        "--pooling",
        dest="pooling",
        default="response-avg",
        help=f"{text}: its pooling (default response-avg)",
    )
    parser.add_argument(
        "--kind", dest="pooling", default="response-avg", help="deprecated spelling of --pooling"
    )


def device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", help="model dtype (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")


def backend_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime", "what runs the model (generation and activations alike)")
    group.add_argument(
        "--backend", choices=("transformers", "vllm"), default="transformers",
        help="transformers (default) or vllm: generation, activations and steering inside vLLM",
    )  # fmt: skip
    group.add_argument(
        "--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
        help="a vLLM engine setting (repeatable), e.g. tensor_parallel_size=2, gpu_memory_utilization=0.8",
    )  # fmt: skip


def endpoint_args(
    parser: argparse.ArgumentParser,
    concurrency: bool = True,
    help: str = "judge endpoint (default: $OPENAI_BASE_URL or OpenAI)",
) -> None:
    """The judge's endpoint (and how many requests it gets at once)."""
    parser.add_argument("--base-url", help=help)
    if concurrency:
        parser.add_argument("--concurrency", type=int, default=8, help="judge requests at once (default 8)")


def engine_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--engine`` and its settings: an OpenAI-compatible server that writes `what`."""
    group = parser.add_argument_group("engine", f"generate {what} on an OpenAI-compatible server")
    group.add_argument(
        "--engine", metavar="openai:URL", help=f"the server that writes {what} (default: here)"
    )
    group.add_argument("--engine-model", help="the model id the engine serves (one of its /v1/models)")
    group.add_argument(
        "--engine-concurrency", type=int, default=16, help="engine requests at once (default 16)"
    )
    group.add_argument(
        "--engine-api-key", help="the engine's key (default: $PERSONAVEC_ENGINE_API_KEY; not the judge's)"
    )


def make_engine(args: argparse.Namespace) -> Any:
    """The `RemoteEngine` of ``--engine`` (None without it); ``--engine-*`` alone is a mistake."""
    from personavec.core.engine import RemoteEngine

    if args.engine is None:
        if args.engine_model or args.engine_api_key:
            raise ConfigError("--engine-model and --engine-api-key need --engine openai:URL")
        return None
    return RemoteEngine.from_spec(
        args.engine, args.engine_model, args.engine_concurrency, args.engine_api_key
    )


def trait_arg(parser: Any, help: str = "built-in trait name or trait file") -> None:
    parser.add_argument("--trait", required=True, help=help)


def out_arg(
    parser: Any, help: str = "output directory (rerun the command to resume)", **keywords: Any
) -> None:
    parser.add_argument("--out", help=help, **({"required": True} | keywords))


def json_arg(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def force_arg(parser: Any, help: str = "start over a run directory made otherwise") -> None:
    parser.add_argument("--force", action="store_true", help=help)


def judge_args(parser: argparse.ArgumentParser) -> None:
    from personavec.judges import JUDGE_SPECS

    trait_arg(parser)
    judge_arg(parser, JUDGE_SPECS, required=True)
    endpoint_args(parser)
    out_arg(parser)


def judge_arg(parser: Any, help: str, required: bool = False) -> None:
    parser.add_argument("--judge", required=required, help=help)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.1f}"


def model_ref(args: argparse.Namespace, device: str | None = None) -> Any:
    """The model of --model, --dtype, --device (or `device`) and --adapter, not loaded yet: a `ModelRef`,
    or with ``--backend vllm`` a `VllmBackend` (its engine starts on first use)."""
    from personavec.core.models import ModelRef

    adapter = getattr(args, "adapter", None)
    ref = ModelRef(args.model, dtype=args.dtype, device=device or args.device, adapter=adapter)
    settings = vllm_settings(args)
    if settings is None:
        return ref
    if getattr(args, "engine", None):
        raise ConfigError(
            "--engine and --backend vllm both generate: choose one (vLLM computes activations too)"
        )
    from personavec.core.vllm_backend import VllmBackend

    return VllmBackend(ref, settings)


def vllm_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """vLLM's engine settings from --vllm-arg with ``--backend vllm`` (None: the transformers backend)."""
    if getattr(args, "backend", "transformers") != "vllm":
        if getattr(args, "vllm_arg", None):
            raise ConfigError("--vllm-arg needs --backend vllm")
        return None
    from personavec.core.vllm_backend import parse_engine_args

    return parse_engine_args(args.vllm_arg)


def load(args: argparse.Namespace) -> Any:
    """The model of --model (with the LoRA adapter of --adapter on it), loaded: on transformers, or the
    vLLM backend of ``--backend vllm``."""
    model = model_ref(args)
    return model.load() if hasattr(model, "load") else model


def model_and_vector(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model of --model (and --adapter), not loaded yet, and the vector of --vector."""
    from personavec.core.vectors import load_vector

    return model_ref(args), load_vector(args.vector, pooling=args.pooling)


def judged(args: argparse.Namespace) -> tuple[Any, Any]:
    """The trait of --trait and the judge of --judge (which must judge and answer a probe), --out
    checked writable."""
    from personavec.judges import make_judge
    from personavec.runs.preflight import preflight
    from personavec.traits import load_trait

    trait = load_trait(args.trait)
    judge = make_judge(args.judge, trait, base_url=args.base_url, concurrency=args.concurrency)
    if judge is None:
        raise ConfigError("this command needs a judge: --judge openai:MODEL, hf:PATH or lexicon")
    if judge.proxy:
        print(f"judge: {judge.proxy}", flush=True)
    preflight(judge=judge, out=args.out)
    return trait, judge
