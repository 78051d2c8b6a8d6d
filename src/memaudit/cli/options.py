"""Options shared by the ``memaudit`` commands, and how they resolve into a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memaudit.config import ExperimentConfig, load_config
from memaudit.errors import MemauditError

PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="start from this preset (memaudit presets)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON config file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override one field: section.field=value (repeatable)")
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="own classification data (JSONL, CSV or parquet: prompt, options, label, optional id); "
        "short for --set dataset.name=file --set dataset.path=FILE",
    ),
]


def data_overrides(data: Path | None) -> list[str]:
    """``--data FILE`` as its two overrides, the path made absolute; a missing file raises."""
    if data is None:
        return []
    if not data.is_file():
        raise MemauditError(f"--data file {data} not found", "pass an existing JSONL, CSV or parquet file")
    return ["dataset.name=file", f"dataset.path={json.dumps(str(data.absolute()))}"]


def resolve_config(
    preset: str | None, config: Path | None, overrides: list[str] | None, data: Path | None = None
) -> ExperimentConfig:
    """The config from ``--preset``, ``--config``, ``--data`` and ``--set`` (the demo preset when none is given).

    An own data file (dataset ``file``) that can be read here is validated now, before any stage runs.
    """
    if preset is None and config is None:
        preset = "demo"
    cfg = load_config(preset=preset, path=config, overrides=[*data_overrides(data), *(overrides or [])])
    if cfg.dataset.name == "file" and Path(cfg.dataset.path).is_file():
        from memaudit.data.userfile import read_user_file

        read_user_file(cfg.dataset.path, cfg.dataset.file_sha256)
    return cfg
