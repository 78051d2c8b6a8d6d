"""Content fingerprints of a config: sha256 over the canonical JSON of the settings that change results."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

NOT_FINGERPRINTED = {"affects_results": False}  # json_schema_extra of a field that does not change results


def result_content(model: BaseModel) -> dict[str, Any]:
    """The model's fields as JSON, without the fields marked ``affects_results=False``."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra == NOT_FINGERPRINTED:
            continue
        value = getattr(model, name)
        out[name] = _result_value(value)
    return out


def _result_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return result_content(value)
    if isinstance(value, list | tuple):
        return [_result_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _result_value(v) for k, v in value.items()}
    return value


def digest(content: Any) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``content``."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
