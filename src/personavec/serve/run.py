"""``personavec serve``: check what the server needs, load the model, and listen."""

from __future__ import annotations

import copy
import importlib.util
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from personavec.core.vectors import PersonaVector, load_vector
from personavec.errors import ConfigError
from personavec.serve.config import MAX_COEF, ServeConfig


def _check_port(host: str, port: int) -> None:
    """Fail before the model loads when the address is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {error.strerror}; choose another port", ("port",)
            ) from None


def served_vectors(config: ServeConfig) -> dict[str, PersonaVector]:
    """The vectors of ``config.vectors``, each with a chosen layer."""
    vectors = {}
    for name, path in config.vectors:
        vector = load_vector(path)
        if vector.layer is None:
            raise ConfigError(
                f"{path} has no chosen layer; serve a vector file that `personavec extract` wrote"
            )
        vectors[name] = vector
    defaults = [*config.steer, *([(config.guard, config.guard_coef)] if config.guard else [])]
    for name, coef in defaults:
        if name in vectors and not abs(vectors[name].raw_coef(coef, None, config.coef_units)) <= MAX_COEF:
            raise ConfigError(f"{name}={coef} {config.coef_units} exceeds {MAX_COEF:g} × the vector")
    return vectors


def serve(
    config: ServeConfig,
    model: str,
    adapter: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    vllm_args: Mapping[str, Any] | None = None,
) -> None:
    """Serve `model` (with a LoRA `adapter`) as `config` says, until SIGINT or SIGTERM: on transformers,
    or with `vllm_args` (vLLM's engine settings, maybe none) on the vLLM backend."""
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"serve needs {', '.join(missing)}: pip install 'personavec[serve]'")
    vectors = served_vectors(config)  # bad files, a taken port, a wrong upstream fail before the model loads
    _check_port(config.host, config.port)
    if config.upstream:
        from personavec.core.models import load_tokenizer
        from personavec.serve.upstream import check

        check(config, load_tokenizer(model))
    if config.audit:
        Path(config.audit).parent.mkdir(parents=True, exist_ok=True)
    import uvicorn

    from personavec.core.models import load_finetuned, load_model
    from personavec.serve.app import build_app

    runtime: Any
    if vllm_args is not None:
        if config.upstream:
            raise ConfigError("--upstream and --backend vllm both generate: choose one")
        from personavec.core.models import ModelRef
        from personavec.core.vllm_backend import VllmBackend

        runtime = VllmBackend(ModelRef(model, dtype, device, adapter), vllm_args)
        runtime.start()  # here, before the first request
    else:
        runtime = load_model(model, dtype=dtype, device=device)
        if adapter:
            runtime = load_finetuned(model, adapter, base=runtime)
    key = f"{model}|{adapter or ''}|{runtime.identity.sha256 or runtime.identity.name}"
    app = build_app(runtime, vectors, config, model_name=model, model_key=key)
    logs = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)  # uvicorn's, with the server's own lines beside
    logs["loggers"]["personavec"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    uvicorn.run(
        app, host=config.host, port=config.port, timeout_graceful_shutdown=int(config.grace),
        log_level="info", log_config=logs,
    )  # fmt: skip
