"""Base class for every settings object read from a suite: unknown keys are errors, never ignored."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
