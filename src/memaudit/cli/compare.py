"""``memaudit compare``: the cross-setup table of tracked audits (Markdown on stdout, CSV and an HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memaudit.errors import MemauditError

RunsArg = Annotated[list[str] | None, typer.Argument(help="audit run ids or run names (a name means its latest run)")]
ExperimentOpt = Annotated[
    list[str] | None, typer.Option("--experiment", "-e", help="every finished audit of this MLflow experiment")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow to read (default: MLFLOW_TRACKING_URI, else --runs' mlflow.db)"),
]
RunsDirOpt = Annotated[Path, typer.Option("--runs", help="a memaudit run's output folder, whose mlflow.db is read")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="folder for compare.csv, compare.png, compare.html")]


def _uri(tracking_uri: str | None, runs: Path) -> str:
    import os

    from memaudit.tracking import tracking_uri as default_uri

    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return tracking_uri or default_uri(runs)
    if not (runs / "mlflow.db").is_file():
        raise MemauditError(
            f"no MLflow database at {runs / 'mlflow.db'}",
            "pass --runs with the output folder of a memaudit run, or --tracking-uri / MLFLOW_TRACKING_URI",
        )
    return default_uri(runs)


def _audit(run):
    """The run as an audit: its headline from its summary.json (any memaudit version), else from its headline
    metrics; None for a run that is not an audit."""
    from memaudit.report.compare import Audit
    from memaudit.report.headline import fpr_key, headline_metrics

    if run.summary is not None and "predictors" in run.summary:
        metrics = headline_metrics(run.summary)
    elif fpr_key("psmi") in run.metrics:
        metrics = run.metrics
    else:
        return None
    tags = run.tags
    return Audit(run.name, run.run_id, tags.get("dataset", ""), tags.get("model", ""), tags.get("preset", ""), metrics)


def compare(
    runs: RunsArg = None,
    experiment: ExperimentOpt = None,
    tracking_uri: TrackingOpt = None,
    runs_dir: RunsDirOpt = Path("runs/demo"),
    output: OutputOpt = Path("runs/compare"),
) -> None:
    """Compare audits: one row per audit, the paper's predictors' FPR@TPR, off-the-shelf point, c_pred, best layer,
    share memorized and noisy-label enrichment. With no run and no experiment: every audit of the default
    experiment (run.experiment)."""
    from memaudit.cli.app import check_output_dir
    from memaudit.config import RunConfig
    from memaudit.redact import redact_url
    from memaudit.report.compare import compare_table, markdown, write_compare
    from memaudit.tracking import find_runs

    uri = _uri(tracking_uri, runs_dir)
    experiments = experiment or ([] if runs else [RunConfig.model_fields["experiment"].default])
    found = find_runs(uri, runs or [], experiments)
    if not found:
        raise MemauditError(f"no finished audit in experiment(s) {', '.join(experiments)}", "run an audit first")
    audits = [a for r in found if (a := _audit(r)) is not None]
    skipped = [r.name for r in found if _audit(r) is None]
    if skipped:
        typer.echo(f"left out (not audits: predictions or unfinished): {', '.join(skipped)}", err=True)
    if not audits:
        raise MemauditError("none of the runs is a finished audit", "pass audit runs (memaudit run / submit)")
    targets = {r.params.get("evaluation.tpr_target") for r in found if _audit(r) is not None}
    tpr = float(targets.pop()) if len(targets) == 1 and None not in targets else None
    table = compare_table(audits)
    paths = write_compare(table, tpr, check_output_dir(output), redact_url(uri))
    typer.echo(markdown(table, tpr), nl=False)
    typer.echo(f"wrote {paths['csv']}, {paths['html']}", err=True)
