"""``memaudit predict``: the early warning on this machine, the predict pipeline's two tasks run in this process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from memaudit.cli.options import ConfigOpt, DataOpt, PresetOpt, SetOpt, resolve_config
from memaudit.errors import MemauditError

OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="output folder (default runs/predict-<preset>)")]
AtStepOpt = Annotated[int | None, typer.Option("--at-step", help="predict at this checkpoint step instead of c_pred")]
LayerOpt = Annotated[int | None, typer.Option("--layer", help="read predictions at this hidden-state layer")]
LayerFromOpt = Annotated[
    str | None, typer.Option("--layer-from", help="use the best layer of this audit (run folder or s3:// URI)")
]
MembersOfOpt = Annotated[
    int | None, typer.Option("--members-of", help="train on this shadow's half (to validate against an audit)")
]
TopOpt = Annotated[int, typer.Option("--top", help="at-risk samples to print")]


def _environment(output: Path) -> dict[str, str]:
    from memaudit.tasks.results import RUN_STORE
    from memaudit.tasks.runtime import STORE_DIR_ENV, WORK_DIR_ENV
    from memaudit.tracking import tracking_uri

    return {
        STORE_DIR_ENV: str(output / RUN_STORE),
        WORK_DIR_ENV: str(output / "work"),
        "MLFLOW_TRACKING_URI": tracking_uri(output),
    }


def _run_tasks(cfg, output: Path, options, progress: bool) -> dict:
    """prepare, then predict, in the scratch folder ``output/work``; the two result files end up in ``output``."""
    work = output / "work"
    shutil.rmtree(work, ignore_errors=True)
    try:
        return _predict_in(cfg, work, output, options, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _predict_in(cfg, work: Path, output: Path, options, progress: bool) -> dict:
    from memaudit.stages.predict import PREDICT_SUMMARY, PREDICTIONS
    from memaudit.tasks.predict import predict_task
    from memaudit.tasks.prepare import prepare_task

    paths = {"pool_path": str(work / "pool.parquet"), "base_model_path": str(work / "base-model")}
    name = f"predict-{cfg.preset or 'custom'}-{cfg.fingerprint()[:8]}"
    parameters = {"preset": "", "overrides": "", "n_shadows": 0, "dataset": "", "model": "", "run_name": name}
    prepared = prepare_task(config_yaml=json.dumps(cfg.to_dict()), **parameters, **paths)
    folder = work / "prediction"
    predict_task(
        config_json=prepared.config_json,
        parent_run_id=prepared.parent_run_id,
        output_path=str(folder),
        options=options,
        progress=progress,
        **paths,
    )
    for file in (PREDICTIONS, PREDICT_SUMMARY):
        os.replace(folder / file, output / file)
    return json.loads((output / PREDICT_SUMMARY).read_text())


def _report(summary: dict, output: Path, top: int) -> None:
    import pandas as pd

    from memaudit.stages.predict import PREDICTIONS

    frame = pd.read_parquet(output / PREDICTIONS).sort_values("rank").head(top)
    c = summary["c_pred"]
    typer.echo(f"c_pred: step {c['step']} (epoch {c['epoch']:.2f}, {c['rule']}); layer {summary['layer']}")
    typer.echo(f"at risk ({summary['rule']}): {summary['n_at_risk']} of {summary['n_samples']} samples")
    for row in frame[frame["at_risk"]].itertuples():
        prompt = " ".join(str(row.prompt).split())
        typer.echo(f"  #{row.rank:<4} {row.id:<16} P-SMI {row.psmi:+.4f}  {prompt[:70]}")
    typer.echo(
        f"cost: {summary['train_steps']} training steps, {summary['cost_ratio']:.2%} of the "
        f"{summary['audit_train_steps']} a full audit of this config trains; wall time {summary['wall_time_s']:.0f} s"
    )
    typer.echo(f"wrote {output / PREDICTIONS} and {output / 'predict.json'}")


def predict(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    output: OutputOpt = None,
    at_step: AtStepOpt = None,
    layer: LayerOpt = None,
    layer_from: LayerFromOpt = None,
    members_of: MembersOfOpt = None,
    top: TopOpt = 10,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Predict which training samples a fine-tune will memorize, from one model trained only up to c_pred."""
    from memaudit.cli.app import check_output_dir
    from memaudit.environment import scoped_env
    from memaudit.tasks.predict import WHOLE_SET, PredictOptions

    cfg = resolve_config(preset, config, set_, data)
    if layer is not None and layer_from is not None:
        raise MemauditError("--layer and --layer-from both choose the layer", "pass only one of them")
    negative = next(
        (
            n
            for n, v in (("--at-step", at_step), ("--layer", layer), ("--members-of", members_of))
            if v is not None and v < 0
        ),
        None,
    )
    if negative:
        raise MemauditError(f"{negative} must be 0 or more", f"pass a non-negative {negative}")
    options = PredictOptions(
        members_of=WHOLE_SET if members_of is None else members_of,
        at_step=-1 if at_step is None else at_step,
        layer=-1 if layer is None else layer,
        layer_from=layer_from or "",
    )
    output = check_output_dir(output or Path("runs") / f"predict-{cfg.preset or 'custom'}").resolve()
    typer.echo(f"memaudit predict: preset {cfg.preset or '-'}, fingerprint {cfg.fingerprint()}, output {output}")
    with scoped_env(_environment(output)):
        summary = _run_tasks(cfg, output, options, progress)
    _report(summary, output, top)
