"""Exact number types for the wire contract: no string, float or boolean coercion, and only finite values.

Why: pydantic's default (lax) mode turns `"5"`, `5.0` and `true` into the integer 5 and accepts `1e999`
as infinity, so a caller's bug becomes a plan for the wrong input. These types accept Python (and numpy)
integers or reals only, and every float is finite. The JSON Schema is unchanged ("integer" / "number"),
with the bounds each field sets.
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

INTEGER_RULE = "must be an integer (not a string, a float or a boolean)"


def _exact_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(INTEGER_RULE)
    return int(value)


def _exact_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError("must be a number (not a string or a boolean)")
    return value


# Bounds go *before* these markers in `Annotated[int, Field(ge=..), AS_EXACT_INT]`: pydantic then keeps them
# in the number's own schema (JSON Schema `minimum`/`maximum`), which it cannot do for bounds set after a
# validator.
AS_FINITE_NUMBER = BeforeValidator(_exact_number)
"""Refuses strings and booleans before a float field validates."""


AS_EXACT_INT = BeforeValidator(_exact_int)
"""Refuses strings, floats and booleans before an integer (or IntEnum) field validates."""
ExactInt = Annotated[int, AS_EXACT_INT]
"""An integer given as an integer."""
FiniteFloat = Annotated[float, Field(allow_inf_nan=False), AS_FINITE_NUMBER]
"""A finite number given as a number."""
ExactBool = Annotated[bool, Field(strict=True)]
"""true or false, not 1, 0 or a string."""

MAX_STEP = 2**53
"""The largest integer every JSON parser holds exactly (a float-based client rounds beyond it: 2**62 sent as
4.611686018427388e18 is 4611686018427388000, above 2**62); far beyond any training run, and a signed 64-bit
database integer."""
MAX_SEQ_ID = 2**63 - 1
"""Sequence ids are signed 64-bit integers (what data loaders and torch use)."""
MAX_SEQUENCE_LENGTH = 2**40
"""About a trillion tokens: far beyond any context; keeps every cost-model sum finite."""
