"""The ``memaudit`` command.

Every stage has a sub-command with explicit input and output paths (the KFP components call the same library
functions). Problems with the user's input end with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import ClickException  # typer 0.29 vendors click: not the click package

from memaudit.cli.audit import audit_model
from memaudit.cli.compare import compare
from memaudit.cli.estimate import estimate, estimate_line
from memaudit.cli.options import ConfigOpt, DataOpt, PresetOpt, SetOpt, data_overrides, resolve_config
from memaudit.cli.predict import predict
from memaudit.cli.stages import stage_app
from memaudit.config import OVERRIDE_SEPARATOR, preset_descriptions, read_config_file
from memaudit.errors import Interrupted, MemauditError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Audit a fine-tuned LLM for memorized training samples and predict them early (LiRA + P-SMI).",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configurations.")
app.add_typer(stage_app, name="stage")
app.add_typer(config_app, name="config")
app.command()(predict)
app.command("audit-model")(audit_model)
app.command()(compare)
app.command()(estimate)
PipelineOpt = Annotated[str, typer.Option(help="audit (the shadow audit) or predict (the early warning)")]


@app.command()
def presets() -> None:
    """List the presets."""
    names = preset_descriptions()
    width = max(map(len, names))
    for name, description in names.items():
        typer.echo(f"{name:<{width}}  {description}")


@config_app.command("show")
def config_show(preset: PresetOpt = None, config: ConfigOpt = None, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Print the resolved config as YAML, with its fingerprints."""
    cfg = resolve_config(preset, config, set_, data)
    typer.echo(f"# fingerprint: {cfg.fingerprint()}  evaluation: {cfg.evaluation_fingerprint()}")
    typer.echo(cfg.to_yaml(), nl=False)


def _config_inputs(config: Path | None, overrides: list[str] | None) -> tuple[str, str]:
    """The config file (as one-line JSON) and the overrides (joined by '; '): the pipeline parameters' defaults.

    One line each, because kfp copies parameter defaults into the compiled file's header comment, where a
    newline would end the comment and make the YAML invalid.
    """
    data = read_config_file(config) if config else {}
    return (json.dumps(data) if data else ""), OVERRIDE_SEPARATOR.join(overrides or [])


@app.command()
def run(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="output folder (default runs/<preset>)")] = None,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Run the whole pipeline on this machine (kfp.local), then print the summary and the report's path."""
    cfg = resolve_config(preset, config, set_, data)
    from memaudit.pipelines.local import run_local, stage_table
    from memaudit.report.outputs import format_summary
    from memaudit.tracking import runs_page, tracking_uri

    output = check_output_dir(output or Path("runs") / (cfg.preset or "custom"))
    typer.echo(f"memaudit run: preset {cfg.preset or '-'}, fingerprint {cfg.fingerprint()}, output {output}")
    typer.echo(estimate_line(cfg, "cpu"))
    result = run_local(cfg, output, progress=progress)
    typer.echo(stage_table(result.events))
    typer.echo("")
    typer.echo(format_summary(result.summary))
    typer.echo(f"report: {result.report}")
    try:
        typer.echo(f"MLflow: {runs_page(tracking_uri(output), cfg.run.experiment)}")
    except MemauditError as exc:  # the audit is done and stored; tracking is told, not fatal
        typer.echo(f"MLflow: {exc}")
    typer.echo(f"wall time {result.wall_s:.0f} s; task logs: {result.log}")


@app.command("compile")
def compile_cmd(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    output: Annotated[Path | None, typer.Option(help="IR YAML to write (default: the committed one)")] = None,
    kubernetes_manifest: Annotated[
        Path | None, typer.Option(help="also write Pipeline/PipelineVersion resources (pipelines.kubeflow.org)")
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="namespace of the Kubernetes resources")] = None,
    pipeline: PipelineOpt = "audit",
) -> None:
    """Compile a pipeline to KFP IR YAML (upload it in the KFP UI)."""
    cfg = resolve_config(preset, config, set_, data)
    from memaudit.pipelines.compile import compile_pipeline

    config_yaml, overrides = _config_inputs(config, [*data_overrides(data), *(set_ or [])])
    written = compile_pipeline(
        cfg,
        output,
        pipeline=pipeline,
        config_yaml=config_yaml,
        overrides=overrides,
        kubernetes_manifest=kubernetes_manifest,
        namespace=namespace,
    )
    for path in written:
        typer.echo(f"wrote {path}")


@app.command()
def submit(
    host: Annotated[
        str, typer.Option(help="KFP API endpoint, e.g. http://localhost:8080", envvar="KF_PIPELINES_ENDPOINT")
    ],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    experiment: Annotated[str | None, typer.Option(help="KFP experiment (default: run.experiment)")] = None,
    run_name: Annotated[str | None, typer.Option(help="name of the run")] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            help="profile namespace of a multi-user install (default: $KF_PIPELINES_NAMESPACE, else the kube context's)"
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="bearer token (default: the projected token at $KF_PIPELINES_SA_TOKEN_PATH when present)",
            envvar="KF_PIPELINES_TOKEN",
        ),
    ] = None,
    pipeline: PipelineOpt = "audit",
    device: Annotated[str, typer.Option(help="GPU of the cluster, for the estimate: h100, a100 or l4")] = "h100",
) -> None:
    """Compile the pipeline for this config, upload it to a KFP API and start a run."""
    cfg = resolve_config(preset, config, set_, data)
    if pipeline == "audit":
        typer.echo(estimate_line(cfg, device))
    import contextlib
    import io

    from memaudit.pipelines.submit import submit_run

    with contextlib.redirect_stdout(io.StringIO()):  # kfp.Client prints links of its own
        result = submit_run(
            cfg,
            host=host,
            experiment=experiment,
            run_name=run_name,
            namespace=namespace,
            token=token,
            pipeline=pipeline,
        )
    typer.echo(f"run {result.run_id} started (pipeline version {result.version_id})")
    typer.echo(f"follow it at {result.run_url}")


_OS_FIXES = {
    errno.ENOSPC: "free some disk space and run it again (writes are atomic: nothing was left half-written)",
    errno.EEXIST: "pass a path that is not an existing file",
    errno.ENOTDIR: "pass a path whose folders are folders, not files",
    errno.EISDIR: "pass a file path, not a folder",
    errno.EACCES: "pass a path you may write (or fix its permissions)",
    errno.EPERM: "pass a path you may write (or fix its permissions)",
    errno.EROFS: "pass a path on a writable file system",
    errno.ENOENT: "check the path",
}


def os_problem(exc: OSError) -> str:
    """One line for a file-system error: the path, the system's reason and a fix."""
    where = f" {exc.filename}" if exc.filename else ""
    fix = _OS_FIXES.get(exc.errno, "check the path and the disk")
    return f"cannot use{where}: {exc.strerror or exc}; fix: {fix}"


def check_output_dir(path: Path) -> Path:
    """An output folder that exists (created when missing) and can be written, else a one-line error."""
    if path.exists() and not path.is_dir():
        raise MemauditError(f"output {path} is a file", "pass a folder path (it is created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".memaudit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MemauditError(
            f"output folder {path} cannot be written ({exc.strerror})", "pass a folder you may write"
        ) from None
    return path


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning :class:`MemauditError` into one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False, prog_name="memaudit")
    except MemauditError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Interrupted as exc:
        typer.echo(str(exc), err=True)
        sys.exit(exc.code)
    except OSError as exc:  # a path that cannot be read or written, a full disk: one line, never a traceback
        typer.echo(f"error: {os_problem(exc)}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except ClickException as exc:  # usage errors: unknown option, missing or bad argument
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx else "memaudit"
        typer.echo(f"error: {exc.format_message().rstrip('.')} (see '{command} --help')", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
