"""``memaudit stage <name>``: one pipeline stage on explicit input and output paths.

The KFP components call the same library functions; these commands are for running, debugging or re-running a
single stage by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memaudit.cli.options import ConfigOpt, DataOpt, PresetOpt, SetOpt, resolve_config
from memaudit.config.presets import TINY_MODEL
from memaudit.errors import MemauditError

stage_app = typer.Typer(no_args_is_help=True, help="Run one pipeline stage on explicit input and output paths.")


@stage_app.command("prepare")
def stage_prepare(
    output: Annotated[Path, typer.Option("--output", "-o", help="pool file to write (parquet)")],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="local copy of the dataset in its upstream layout (no Hub)")
    ] = None,
    base_model: Annotated[
        Path | None,
        typer.Option(
            "--base-model", help="tiny-llama: build (or reuse) it in this folder; a GGUF model: dequantize it there"
        ),
    ] = None,
) -> None:
    """Build the pool (sources, hold-out, templates, label noise) and write pool.parquet."""
    from memaudit.data.pool import build_pool, pool_summary
    from memaudit.data.poolfile import write_pool

    cfg = resolve_config(preset, config, set_, data)
    if base_model is not None and cfg.model.name != TINY_MODEL and cfg.model.gguf_file is None:
        raise MemauditError(f"--base-model builds tiny-llama or a GGUF model, not {cfg.model.name}", "drop it")
    pool = build_pool(cfg, data_dir=data_dir)
    write_pool(pool, output)
    if base_model is not None:
        built = _build_base_model(cfg, pool, base_model)
        typer.echo(f"base model: {built} (pass it as --base-model to stage finetune and score)")
    summary = pool_summary(pool)
    options = ", ".join(f"{k}: {v}" for k, v in summary["options_per_sample"].items())
    typer.echo(f"wrote {output}: dataset {cfg.dataset.name}, {summary['n_train']} train + {summary['n_test']} test")
    typer.echo(
        f"random labels {summary['share_random_labels']:.2%}, wrong labels {summary['share_wrong_labels']:.2%} "
        f"of train; options per sample {{{options}}}"
    )


def _build_base_model(cfg, pool, folder: Path) -> Path:
    if cfg.model.gguf_file is not None:
        from memaudit.model.gguf import save_dequantized

        return save_dequantized(cfg.model, folder)
    from memaudit.data.synthetic import tiny_model_corpus
    from memaudit.model.tiny import ensure_base_model

    return ensure_base_model(cfg.model, tiny_model_corpus(cfg, pool), folder)


@stage_app.command("split")
def stage_split(
    pool: Annotated[Path, typer.Option("--pool", help="pool file from memaudit stage prepare")],
    output: Annotated[Path, typer.Option("--output", "-o", help="membership matrix to write (.npy)")],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
) -> None:
    """Draw which train-pool samples each shadow trains on and write the membership matrix."""
    from memaudit.data.poolfile import read_pool, train_pool
    from memaudit.data.splits import membership_for, write_membership

    cfg = resolve_config(preset, config, set_, data)
    n_samples = len(train_pool(read_pool(pool)))
    shadows = cfg.shadows
    member = membership_for(cfg, n_samples)
    write_membership(member, output)
    per_model, per_sample = member.sum(axis=1), member.sum(axis=0)
    typer.echo(f"wrote {output}: {shadows.n_shadows} models x {n_samples} samples, scheme {shadows.scheme}")
    typer.echo(
        f"members per model {per_model.min()}-{per_model.max()}; "
        f"memberships per sample min {per_sample.min()}, max {per_sample.max()}, mean {per_sample.mean():.2f}"
    )


PoolOpt = Annotated[Path, typer.Option("--pool", help="pool.parquet written by the prepare stage")]
MembersOpt = Annotated[Path, typer.Option("--members", help="member.npy (bool [S, N]) written by the split stage")]
ShadowOpt = Annotated[int, typer.Option("--shadow", help="shadow id: row of member.npy")]
BaseModelOpt = Annotated[
    Path | None, typer.Option("--base-model", help="folder of the base model (required for tiny-llama)")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="torch device (default: scoring.device)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _stage_inputs(preset, config, set_, data, pool: Path, members: Path, shadow: int):
    from memaudit.data.splits import shadow_members

    return resolve_config(preset, config, set_, data), *shadow_members(pool, members, shadow)


@stage_app.command("finetune")
def stage_finetune(
    pool: PoolOpt,
    members: MembersOpt,
    shadow: ShadowOpt,
    output: Annotated[Path, typer.Option("--output", help="folder of this shadow's checkpoints")],
    base_model: BaseModelOpt = None,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option(help="continue from the last complete checkpoint")] = True,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """LoRA fine-tune one shadow on its members (checkpoints under --output)."""
    from memaudit.stages.finetune import finetune

    cfg, df, member = _stage_inputs(preset, config, set_, data, pool, members, shadow)
    log = finetune(
        cfg,
        df,
        member,
        shadow,
        base_model,
        output,
        device=device or cfg.scoring.device,
        resume=resume,
        progress=not quiet,
    )
    last = log["loss"][-1]["loss"] if log["loss"] else float("nan")
    speed = f", {log['tokens_per_s']:.0f} tokens/s" if log.get("tokens_per_s") else ""
    typer.echo(f"shadow {shadow}: {log['total_steps']} steps, final loss {last:.4f}{speed} -> {output}")


@stage_app.command("score")
def stage_score(
    pool: PoolOpt,
    members: MembersOpt,
    shadow: ShadowOpt,
    checkpoints: Annotated[Path, typer.Option("--checkpoints", help="folder written by stage finetune")],
    output: Annotated[Path, typer.Option("--output", help="score file to write (.npz)")],
    base_model: BaseModelOpt = None,
    device: DeviceOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Forward values and P-SMI of one shadow at every checkpoint (one score file)."""
    from memaudit.stages.score import score_shadow

    cfg, df, member = _stage_inputs(preset, config, set_, data, pool, members, shadow)
    device = device or cfg.scoring.device
    path = score_shadow(cfg, df, member, shadow, base_model, checkpoints, output, device=device, progress=not quiet)
    typer.echo(f"shadow {shadow}: scores -> {path}")


def _score_paths(scores: list[Path] | None, more: list[Path] | None, scores_list: Path | None) -> list[Path]:
    paths = [*(scores or []), *(more or [])]
    if scores_list is not None:
        if not scores_list.is_file():
            raise MemauditError(f"scores list {scores_list} not found", "pass a file with one score path per line")
        lines = [line.strip() for line in scores_list.read_text().splitlines()]
        paths += [Path(line) for line in lines if line and not line.startswith("#")]
    if not paths:
        raise MemauditError("no score files given", "pass --scores a.npz b.npz ... or --scores-list FILE")
    return paths


@stage_app.command("aggregate")
def stage_aggregate(
    pool: Annotated[Path, typer.Option("--pool", help="pool.parquet of the run")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for summary.json and the five tables")],
    scores: Annotated[list[Path] | None, typer.Option("--scores", help="score files (one per shadow)")] = None,
    more_scores: Annotated[list[Path] | None, typer.Argument(help="more score files", show_default=False)] = None,
    scores_list: Annotated[Path | None, typer.Option("--scores-list", help="file with one score path a line")] = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Ground truth (LiRA or RMIA), predictors, their evaluation and the shadow curve from all shadows' score files
    (prints the summary)."""
    from memaudit.data.poolfile import read_pool
    from memaudit.report.outputs import OUTPUT_FILES, format_summary
    from memaudit.stages.aggregate import aggregate

    cfg = resolve_config(preset, config, set_, data)
    paths = _score_paths(scores, more_scores, scores_list)
    summary = aggregate(cfg, paths, read_pool(pool), output, progress=not quiet)
    typer.echo(format_summary(summary))
    typer.echo(f"wrote {', '.join(str(output / name) for name in OUTPUT_FILES)}")


@stage_app.command("plot")
def stage_plot(
    aggregate_dir: Annotated[Path, typer.Option("--aggregate", "-a", help="output folder of memaudit stage aggregate")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for report.html and the figures")],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
) -> None:
    """Figures and a self-contained HTML report from the aggregate stage's outputs (prints the paths)."""
    from memaudit.report.html import render_report

    cfg = resolve_config(preset, config, set_, data)
    for path in render_report(cfg, aggregate_dir, output).values():
        typer.echo(f"wrote {path}")
