"""Content fingerprints of a config: sha256 over the canonical JSON of the settings that change results."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

NOT_FINGERPRINTED = {"affects_results": False}  # json_schema_extra of a field that does not change results
FINGERPRINTED_WHEN_SET = {"affects_results": "when set"}  # left out at its default: older fingerprints stay valid


def result_content(model: BaseModel) -> dict[str, Any]:
    """The model's fields as JSON, without the fields marked ``affects_results=False`` (nor those marked
    ``FINGERPRINTED_WHEN_SET`` while they hold their default)."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        value = getattr(model, name)
        if extra == NOT_FINGERPRINTED or (extra == FINGERPRINTED_WHEN_SET and value == field.get_default()):
            continue
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


def content_sha256(data: bytes) -> str:
    """The sha256 hex digest of a file's bytes (``dataset.file_sha256``: the content of an own data file)."""
    return hashlib.sha256(data).hexdigest()


def digest(content: Any) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``content``."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
