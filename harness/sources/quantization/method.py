"""The base of every quantization method under a model's ``quantize:`` key, and the parser of that key.

A method is a :class:`QuantMethod` subclass in a module of its own (``harness/sources/quantization/NAME.py``,
imported by the package's ``__init__``), registered by the default of its ``method: Literal["NAME"]`` field as
lm-eval registers tasks. Its fields are the suite's settings; beside them it declares (stable interface):

- ``produces`` (ClassVar): ``"gguf"`` (a file llama.cpp loads) or ``"hf"`` (a directory the hf backend loads);
- ``libraries`` (ClassVar): the distributions whose versions key the cache (torch and transformers always do);
- ``extra`` (ClassVar): the pip extra that installs them (a missing one is named in one line);
- ``modules`` (ClassVar): their import names, which ``check_available()`` finds before a run (``validate``);
- ``calibration_key`` (ClassVar): the key holding ``dataset`` (``imatrix`` for GGUF, ``calibration`` else);
- ``label``: what the model's source string shows after ``#quantize=``;
- ``identity()``: the settings that key the cache (all fields, by default);
- ``calibration_dataset``: the suite dataset whose text calibrates it, or None; the run's plan resolves that
  text into a :class:`Calibration` (and warns when a cell evaluates the same text);
- for ``produces = "hf"``: ``quantize(source_dir, target, calibration, threads)``, run in a child process
  (:mod:`harness.sources.quantization.derive`): load the full-precision HF model in ``source_dir``, quantize
  it, save it into the existing empty folder ``target`` (the tokenizer and ``quantize.json`` are added by the
  caller); by default ``quantized_model(source_dir, calibration, threads)`` (the model in memory, which tests
  compare with the reloaded one) then ``save(model, target)`` (``save_pretrained``); and
  ``load(directory, kwargs)``: the model back from that folder as a user would load it (transformers
  ``from_pretrained`` with the hf backend's ``kwargs`` unless overridden).

``parse_quantize`` reads the key: a string is the GGUF shorthand (``quantize: Q4_K_M``, kept as the string so
cell ids stay as they were), a mapping is dispatched on ``method`` with "did you mean" for an unknown method
or key, and every error is one line naming the key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

from harness.core.errors import ensure_available
from harness.core.settings import StrictModel

#: the unquantized layers of every HF method: the token embedding and the output head (tied to it in most small
#: models) stay in the source's precision, as bitsandbytes and llama.cpp's defaults leave the embedding wide
KEEP_UNQUANTIZED = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class Calibration:
    """A calibration text resolved from the suite's dataset, with its fingerprint."""

    text: str
    sha256: str


class QuantMethod(StrictModel):
    """One way of deriving a quantized model from a full-precision source (see the module docstring)."""

    #: method name -> class, filled as subclasses are defined
    registry: ClassVar[dict[str, type[QuantMethod]]] = {}
    produces: ClassVar[Literal["gguf", "hf"]]
    libraries: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    modules: ClassVar[tuple[str, ...]] = ()
    calibration_key: ClassVar[str] = "calibration"

    method: str

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "method" not in cls.__dict__.get("__annotations__", {}):  # a base methods share (GPT-QModel's), not a method
            return
        name = cls.model_fields["method"].default
        if not isinstance(name, str):
            raise TypeError(f"{cls.__name__}: declare method: Literal['NAME'] = 'NAME'")
        QuantMethod.registry[name] = cls

    @property
    def label(self) -> str:
        """What the model's source string shows after ``#quantize=``: the method and its settings."""
        settings = ",".join(f"{k}={v}" for k, v in self.model_dump(mode="json", exclude={"method"}).items()
                            if v is not None and not isinstance(v, dict))
        return f"{self.method}:{settings}" if settings else self.method

    def identity(self) -> dict:
        """The settings the derived model depends on (its cache key, with the source and the versions)."""
        return self.model_dump(mode="json")

    @property
    def calibration_dataset(self) -> str | None:
        """The suite dataset that calibrates the method, or None."""
        section = getattr(self, self.calibration_key, None)
        return getattr(section, "dataset", None)

    def check_available(self) -> None:
        """MissingDependency naming ``extra`` where a module of the method is not installed (nothing imported)."""
        for module in self.modules:
            ensure_available(module, self.extra, f"quantize: {{method: {self.method}}}")

    def quantize(self, source_dir: Path, target: Path, calibration: Calibration | None, threads: int) -> None:
        """Quantize the HF model in ``source_dir`` into the folder ``target`` (runs in the child process): by
        default :meth:`quantized_model`, then :meth:`save`."""
        self.save(self.quantized_model(source_dir, calibration, threads), target)

    def quantized_model(self, source_dir: Path, calibration: Calibration | None, threads: int):
        """The quantized model in memory (what the saved-and-reloaded one must equal)."""
        raise NotImplementedError(f"{self.method} produces {self.produces}, made elsewhere")

    def save(self, model, target: Path) -> None:
        """Write :meth:`quantized_model`'s result into the folder ``target``."""
        model.save_pretrained(target)

    def load(self, directory: Path, kwargs: dict):
        """The saved model, loaded as a user would (``kwargs``: the hf backend's ``from_pretrained`` arguments)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(directory, **kwargs)


def method_names() -> list[str]:
    import harness.sources.quantization  # noqa: F401  (the package imports every method module)

    return sorted(QuantMethod.registry)


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_quantize(value):
    """A suite's ``quantize:`` value: the GGUF shorthand string as it is, a mapping as its method's settings;
    a wrong one as one ValueError naming its key."""
    if value is None or isinstance(value, (str, QuantMethod)):
        return value
    names = method_names()
    if not isinstance(value, dict):
        raise ValueError("expected a GGUF type (Q4_K_M) or a mapping {method: NAME, ...} with NAME one of "
                         + ", ".join(names))
    name = value.get("method", "gguf")
    if name not in QuantMethod.registry:
        raise ValueError(f"method: unknown quantization method {name!r}{_did_you_mean(name, names)}; "
                         f"expected one of {', '.join(names)}")
    cls = QuantMethod.registry[name]
    for key in value:
        if key not in cls.model_fields:  # before the missing ones: a misspelt key is both
            owners = sorted(n for n, other in QuantMethod.registry.items() if key in other.model_fields)
            hint = f" (a key of method {', '.join(owners)})" if owners else _did_you_mean(key, cls.model_fields)
            raise ValueError(f"{key}: unknown key for method {name}{hint}; expected "
                             + ", ".join(cls.model_fields))
    try:
        return cls.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ").removeprefix("quantize: ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        raise ValueError(f"{where}: {message}" if where else message) from None
