"""The base of every settings model (the spec's parts and each stage's ``Settings``): a leaf module,
so that the stage contract, the registry and the spec can all build on it without a circle."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
