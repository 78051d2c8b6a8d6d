"""Time and GPU-hours of an audit on a named device, from its exact counts (:mod:`memaudit.cost.counts`).

Work is FLOPs: fine-tuning with LoRA costs about 4 × parameters per token (the forward pass and the gradients
through the frozen weights; the adapter's own are negligible), scoring 2 × parameters per token. Tokens are the
samples times the dataset's mean encoded length (:data:`MEAN_TOKENS`). A device turns FLOPs into seconds at its
effective rate: measured where this project measured it (:data:`DEVICES` says so), else its peak bf16 rate times
:data:`UTILISATION`, labelled "estimated from FLOPs".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memaudit.config import TINY_MODEL, ExperimentConfig
from memaudit.cost.counts import AuditCounts, audit_counts, early_warning_counts
from memaudit.errors import MemauditError

UTILISATION = 0.35  # share of a GPU's peak that a LoRA fine-tune of a 7B model reaches (stated, not measured here)
TRAIN_FLOPS_PER_PARAM, SCORE_FLOPS_PER_PARAM = 4, 2
MEAN_TOKENS = {  # encoded prompt + label, SmolLM2's tokenizer, measured on the local copies (../shared/data)
    "arc": 82.9,  # ARC-Challenge train + test, the whole pool
    "ethics": 217.7,  # commonsense cm_test (the local copy has no train split; same distribution)
    "mmlu": 97.0,  # test split (auxiliary_train is not in the local copy; its RACE passages are longer)
    "synthetic": 20.0,  # the demo's templated keyword questions
    "file": 100.0,  # an own data file: not measured, a round guess
}


@dataclass(frozen=True)
class Device:
    name: str
    train_flops: float  # effective FLOP/s while fine-tuning
    score_flops: float  # effective FLOP/s while scoring
    source: str
    measured: dict[str, tuple[float, float, str]] = field(default_factory=dict)  # model: (samples/s, rows/s, how)


def _peak(name: str, tflops: float) -> Device:
    rate = tflops * 1e12 * UTILISATION
    return Device(name, rate, rate, f"estimated from FLOPs: {tflops:g} TFLOP/s bf16 peak × {UTILISATION:.0%}")


DEVICES = {
    "h100": _peak("NVIDIA H100 SXM", 989),
    "a100": _peak("NVIDIA A100", 312),
    "l4": _peak("NVIDIA L4", 121),
    # benchmarks/results/gpu-cpu.json: SmolLM2-135M fine-tune 106 tokens/s, scoring 48 rows of 94 tokens in 14.7 s
    "cpu": Device(
        "2 CPU cores", 4 * 134_515_008 * 106, 2 * 134_515_008 * 48 * 94 / 14.7,
        "measured: benchmarks/gpu.py on 2 CPU cores (SmolLM2-135M), scaled by parameters",
        # benchmarks/demo_profile.py, second run (warm worker, 2 tasks at once on 2 cores): 16 fine-tunes of 7,462
        # samples in 368.3 s of kfp task time, 16 scorings of 19 checkpoints × 1,200 rows in 212.5 s
        {TINY_MODEL: (16 * 7462 / 368.3, 16 * 19 * 1200 / 212.5, "measured: make demo on 2 CPU cores")},
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    counts: AuditCounts
    device: Device
    source: str  # where the device's rates come from
    mean_tokens: float
    train_s: float  # all shadows' fine-tunes, one after another
    score_s: float
    early_warning_s: float  # one model to c_pred, with its probes

    @property
    def device_hours(self) -> float:
        return (self.train_s + self.score_s) / 3600


def estimate(cfg: ExperimentConfig, device: str) -> Estimate:
    """The audit's counts and its time on ``device`` (a key of :data:`DEVICES`)."""
    if device not in DEVICES:
        raise MemauditError(f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    counts, dev = audit_counts(cfg), DEVICES[device]
    tokens = MEAN_TOKENS[cfg.dataset.name]
    train_rate, score_rate, source = _rates(dev, cfg.model.name, tokens, counts.shape.params)
    trained, probed = early_warning_counts(counts)
    return Estimate(counts, dev, source, tokens, counts.samples_trained / train_rate,
                    counts.scoring_rows / score_rate, trained / train_rate + probed / score_rate)  # fmt: skip


def _rates(dev: Device, model: str, tokens: float, params: int) -> tuple[float, float, str]:
    """Samples/s fine-tuning, rows/s scoring, and where they come from."""
    if model in dev.measured:
        return dev.measured[model]
    per_sample = tokens * params
    train = dev.train_flops / (TRAIN_FLOPS_PER_PARAM * per_sample)
    return train, dev.score_flops / (SCORE_FLOPS_PER_PARAM * per_sample), dev.source
