"""Content fingerprints: a short, stable hash of a model's canonical JSON."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def canonical_json(obj: BaseModel | dict[str, Any] | list[Any]) -> str:
    """JSON with sorted keys and no whitespace, so equal content gives equal bytes."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


FINGERPRINT_HEX_DIGITS = 16
"""Hex digits kept of a sha256 (64 bits): fingerprints and plan ids."""


def fingerprint(obj: BaseModel | dict[str, Any] | list[Any], length: int = FINGERPRINT_HEX_DIGITS) -> str:
    """sha256 of the canonical JSON, truncated to `length` hex digits."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]
