"""``memaudit estimate``: an audit's exact counts and its time on a device, before anything runs."""

from __future__ import annotations

from typing import Annotated

import typer

from memaudit.cli.options import ConfigOpt, DataOpt, PresetOpt, SetOpt, resolve_config

DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="h100, a100, l4 or cpu")]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return ""


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g}"


def _time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def describe(cfg, est) -> list[str]:
    """The estimate as labelled lines."""
    c, d = est.counts, est.device
    steps = [s for s, _ in c.checkpoints]
    total = est.train_s + est.score_s
    parallel = min(cfg.run.parallelism, c.n_shadows)
    hidden = _size(c.hidden_bytes()) if cfg.scoring.store_hidden else "not stored (scoring.store_hidden=false)"
    return [
        f"model      {cfg.model.name}: {_count(c.shape.params)} parameters, {c.layers} layers scored",
        f"pool       {c.train_pool:,} train + {c.test_rows:,} held-out rows; {c.members:,} members per shadow",
        f"training   {c.steps_per_epoch:,} steps/epoch × {c.epochs} epochs = {c.steps_per_shadow:,} steps per shadow; "
        f"{c.n_shadows} shadows: {c.steps_per_shadow * c.n_shadows:,} steps, {c.samples_trained:,} samples",
        f"tokens     {est.mean_tokens:g} per sample on average: {c.samples_trained * est.mean_tokens / 1e6:,.1f} M "
        f"trained, {c.scoring_rows * est.mean_tokens / 1e6:,.1f} M scored",
        f"checkpoints {len(steps)} per shadow (steps {', '.join(map(str, steps[:4]))}, …, {steps[-1]})",
        f"scoring    {c.scoring_rows:,} forward passes ({len(steps)} checkpoints × "
        f"{c.train_pool + c.test_rows:,} rows × {c.n_shadows} shadows)",
        f"stored     adapters {_size(c.adapter_bytes(cfg.lora.target_modules, cfg.lora.r))}, score files "
        f"{_size(c.score_bytes(4, cfg.scoring.mahalanobis_components > 0))}, hidden states {hidden}",
        f"time       fine-tune {_time(est.train_s)} + scoring {_time(est.score_s)} = {est.device_hours:,.1f} "
        f"device-hours on {d.name}; ~{_time(total / parallel)} wall with {parallel} at once (run.parallelism)",
        f"source     {est.source}",
        f"early warning  one model to c_pred (at most its first epoch): {_time(est.early_warning_s)}, "
        f"{est.early_warning_s / total:.1%} of the audit",
    ]


def estimate_line(cfg, device: str) -> str:
    """The estimate printed before a run or a submit (what stops it, when it cannot be made)."""
    from memaudit.cost.estimate import estimate
    from memaudit.errors import MemauditError

    try:
        est = estimate(cfg, device)
    except MemauditError as exc:
        return f"estimate: none ({exc.problem})"
    c = est.counts
    return (f"estimate: {c.n_shadows} shadows × {c.steps_per_shadow:,} steps, {c.scoring_rows:,} scoring passes; "
            f"~{est.device_hours:,.2f} device-hours on {est.device.name} ({est.source.split(':')[0]})")  # fmt: skip


def estimate(
    preset: PresetOpt = None, config: ConfigOpt = None, set_: SetOpt = None, data: DataOpt = None,
    device: DeviceOpt = "h100",
) -> None:  # fmt: skip
    """Count an audit's work exactly (steps, samples, checkpoints, forward passes, stored bytes) and estimate its
    time and device-hours, with the early-warning path beside it."""
    from memaudit.cost.estimate import estimate as estimate_cost

    cfg = resolve_config(preset, config, set_, data)
    est = estimate_cost(cfg, device)
    typer.echo(f"memaudit estimate: preset {cfg.preset or '-'}, fingerprint {cfg.fingerprint()}, device {device}")
    for line in describe(cfg, est):
        typer.echo("  " + line)
