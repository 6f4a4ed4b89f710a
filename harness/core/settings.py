"""Base class for every settings object read from a suite: unknown keys are errors, never ignored.

Settings are also a cell's identity: ``cell_id`` hashes their serialized form. A key added after a
settings class first shipped is declared with :func:`new_key`, and is then serialized (so hashed) only
when its value differs from the default: a suite that does not use a new key keeps every cell id it
had, so ``--resume``, ``compare`` and ``history`` keep matching older runs.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

_WHEN_SET = "when-set"


def new_key(default: Any, **kwargs: Any) -> Any:
    """A ``Field`` left out of the serialized settings (and of cell ids) while it holds its default."""
    return Field(default, json_schema_extra={"cell_id": _WHEN_SET}, **kwargs)


def is_new_key(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and extra.get("cell_id") == _WHEN_SET


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _new_keys_left_out_at_default(self, handler):
        data = handler(self)
        if isinstance(data, dict):
            for name, field in type(self).model_fields.items():
                if name in data and is_new_key(type(self), name) and getattr(self, name) == field.default:
                    del data[name]
        return data
