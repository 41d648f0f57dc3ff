"""Error body shared by the service and its clients."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every non-2xx response: a machine-readable code, a human message and the offending field."""

    code: str = Field(description="Stable machine-readable code, e.g. 'invalid_input', 'conflict'.")
    message: str = Field(description="What went wrong and how to fix it.")
    field: str | None = Field(default=None, description="Dotted path of the offending input field.")
