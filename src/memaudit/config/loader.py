"""The one way a config is built, for the CLI, the pipeline tasks and the benchmarks alike.

A config is a preset (or the file's own ``preset:`` key), then a YAML/JSON document (a file, or the text a pipeline
run receives as its ``config_yaml`` parameter), then ``section.field=value`` overrides, in that order. Bad input
raises a one-line :class:`MemauditError` that names the field.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from memaudit.config.presets import PAPER_COMMON, PRESETS
from memaudit.config.settings import ExperimentConfig
from memaudit.errors import MemauditError

OVERRIDE_SEPARATOR = "; "  # joins overrides into one pipeline parameter (kfp copies defaults into a YAML comment)


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_descriptions() -> dict[str, str]:
    return {name: description for name, (description, _) in PRESETS.items()}


def preset_dict(name: str) -> dict[str, Any]:
    """The nested dict of a preset (defaults merged with its settings)."""
    if name not in PRESETS:
        raise MemauditError(f"unknown preset {name!r}", f"use one of: {', '.join(PRESETS)}")
    data: dict[str, Any] = {"preset": name}
    if name != "demo":
        data = deep_merge(data, PAPER_COMMON)
    return deep_merge(data, PRESETS[name][1])


def deep_merge(base: dict[str, Any], update: dict[str, Any], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Merge ``update`` into ``base`` section by section; any other value (a dict or list field such as
    ``run.gpu_node_selector``) is replaced, so a config can also remove entries a preset set."""
    model = model or ExperimentConfig
    out = copy.deepcopy(base)
    for key, value in update.items():
        field = model.model_fields.get(key)
        section = _model_of(field.annotation) if field is not None else None
        if section is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, section)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> ExperimentConfig:
    """Validate a nested dict into a config; a bad value raises a one-line :class:`MemauditError`."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        more = f" and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
        raise MemauditError(
            f"invalid {source}: {where}: {err['msg']}{got}{more}",
            "correct that field in the config file or --set it (memaudit config show prints all fields)",
        ) from None


def parse_config_text(text: str, source: str) -> dict[str, Any]:
    """A YAML or JSON document (JSON is a subset of YAML) as a dict; empty text is an empty config."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise MemauditError(f"{source}: not valid YAML/JSON{at}", "fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MemauditError(f"{source}: must hold a mapping at the top level", "write key: value pairs")
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise MemauditError(f"config file {path} not found", "pass an existing YAML or JSON file")
    return parse_config_text(path.read_text(), f"config file {path}")


def split_overrides(text: str) -> list[str]:
    """The override assignments of a pipeline parameter (one per line, or joined by ``OVERRIDE_SEPARATOR``)."""
    return [line.strip() for line in text.replace(OVERRIDE_SEPARATOR.strip(), "\n").splitlines() if line.strip()]


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``dotted.key=value`` override (value parsed as YAML) and return the new dict."""
    if "=" not in assignment:
        raise MemauditError(f"override {assignment!r} has no '='", "write --set section.field=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise MemauditError(f"override {assignment!r} has an empty key", "write --set section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    _check_path(parts, assignment)
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return deep_merge(data, nested)


def _check_path(parts: list[str], assignment: str) -> None:
    model: type[BaseModel] | None = ExperimentConfig
    for depth, part in enumerate(parts):
        if model is None:
            return  # inside a dict/list field: pydantic validates the value
        if part not in model.model_fields:
            where = ".".join(parts[: depth + 1])
            options = ", ".join(model.model_fields)
            raise MemauditError(f"unknown config key {where!r} in --set {assignment}", f"use one of: {options}")
        model = _model_of(model.model_fields[part].annotation)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    text: str | None = None,
    source: str | None = None,
) -> ExperimentConfig:
    """Build a config: preset (or the document's own ``preset:`` key), then the config file at ``path`` or the
    document ``text``, then the ``--set`` overrides. ``source`` names the input in error messages."""
    if text is not None:
        source = source or "config text"
        data = parse_config_text(text, source)
    else:
        source = source or (f"config file {path}" if path else "config")
        data = read_config_file(path) if path else {}
    base_preset = preset or data.get("preset")
    merged = deep_merge(preset_dict(base_preset) if base_preset else {}, data)
    if preset:
        merged["preset"] = preset
    for assignment in overrides:
        merged = apply_override(merged, assignment)
    return config_from_dict(merged, source=source)
