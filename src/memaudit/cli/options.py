"""Options shared by the ``memaudit`` commands, and how they resolve into a config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memaudit.config import ExperimentConfig, load_config

PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="start from this preset (memaudit presets)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON config file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override one field: section.field=value (repeatable)")
]


def resolve_config(preset: str | None, config: Path | None, overrides: list[str] | None) -> ExperimentConfig:
    """The config from ``--preset``, ``--config`` and ``--set`` (the demo preset when none is given)."""
    if preset is None and config is None:
        preset = "demo"
    return load_config(preset=preset, path=config, overrides=overrides or [])
