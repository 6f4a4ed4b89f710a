"""Base class for every settings object read from a suite: unknown keys are errors, never ignored.

Settings are also a cell's identity: ``cell_id`` hashes their serialized form. A key added after a
settings class first shipped is declared with :func:`new_key`, and is then serialized (so hashed) only
when its value differs from the default: a suite that does not use a new key keeps every cell id it
had, so ``--resume``, ``compare`` and ``history`` keep matching older runs.
"""

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

_WHEN_SET = "when-set"


def new_key(default: Any, **kwargs: Any) -> Any:
    """A ``Field`` left out of the serialized settings (and of cell ids) while it holds its default."""
    return Field(default, json_schema_extra={"cell_id": _WHEN_SET}, **kwargs)


def is_new_key(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and extra.get("cell_id") == _WHEN_SET


def _admits(annotation: Any, kinds: tuple) -> bool:
    """Whether a field's type admits one of ``kinds`` as such (``int | None``, ``Annotated[float, ...]``)."""
    if annotation in kinds:
        return True
    return get_origin(annotation) is not Literal and any(_admits(arg, kinds) for arg in get_args(annotation))


class StrictModel(BaseModel):
    """Unknown keys are errors; so are ``.inf``/``.nan`` for a number (a timeout of ``.inf`` would reach
    run.json as ``Infinity``, which is not JSON) and ``true``/``false`` for a number (pydantic would read
    ``max_tokens: true`` as 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(value, bool) else None
                if field and _admits(field.annotation, (int, float)) and not _admits(field.annotation, (bool, Any)):
                    raise ValueError(f"{name}: expected a number, not {str(value).lower()}")
        return data

    @model_serializer(mode="wrap")
    def _new_keys_left_out_at_default(self, handler):
        data = handler(self)
        if isinstance(data, dict):
            for name, field in type(self).model_fields.items():
                if name in data and is_new_key(type(self), name) and getattr(self, name) == field.default:
                    del data[name]
        return data
