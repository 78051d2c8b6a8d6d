"""``memaudit audit-model``: score a LoRA adapter trained outside memaudit against a finished run's shadow population
(docs/design.md §2.8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def summary_lines(facts: dict[str, Any], output: Path) -> list[str]:
    """What the command prints: the mode, the counts and where the outputs are."""
    members = "" if facts["n_members"] is None else f", {facts['n_members']} of them your members"
    return [
        f"memaudit audit-model: {facts['mode']} LiRA against {facts['n_reference_shadows']} shadows of run "
        f"{facts['fingerprint']} (base model {facts['base_model']})",
        f"{facts['n_samples']} samples scored{members}; {facts['n_memorized']} memorized "
        f"(score >= {facts['threshold']:.3f}, the run's memorized threshold)",
        f"outputs: {output}",
    ]


def audit_model(
    run: Annotated[Path, typer.Option("--run", help="output folder of a finished memaudit run")],
    adapter: Annotated[
        Path,
        typer.Option("--adapter", help="PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors)"),
    ],
    members: Annotated[
        Path | None,
        typer.Option(
            "--members",
            help="your model's training samples: one source_id or global_index per line, or a CSV/parquet 'id' "
            "column (online LiRA; without it: offline LiRA)",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="output folder (default RUN/model-audit)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: the run's scoring.device)")] = None,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Audit a LoRA adapter you trained on the run's base model and pool against the run's shadows."""
    from memaudit.tasks.audit_model import audit_model_task

    result = audit_model_task(run, adapter, members, output, device=device, progress=progress)
    for line in summary_lines(result.facts, result.output):
        typer.echo(line)
