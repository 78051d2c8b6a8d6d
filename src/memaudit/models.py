"""Base models: loading (Hub id or local folder, bf16/fp32 or 4-bit NF4), the tiny Llama of the demo, LoRA.

The tiny model (``model.name = "tiny-llama"``) has no Hub id: :func:`ensure_base_model` builds it from a
word-level tokenizer trained on a corpus, pre-trains it briefly as a causal LM and caches it in a folder keyed by
the digest of its settings and corpus. That folder is then loaded by :func:`load_base_model` /
:func:`load_tokenizer` like any other local model, so the demo and the tests exercise the users' loading code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from transformers.utils import logging as hf_logging

from memaudit.config import ExperimentConfig, LoraSettings, ModelConfig, TinyModelConfig
from memaudit.errors import MemauditError
from memaudit.tokenization import build_word_tokenizer, left_pad

TINY_NAME = "tiny-llama"
BUILT_MARKER = "MEMAUDIT_BUILT"  # written last into a built tiny-model folder
_TINY_FORMAT = 1  # bump when the builder changes what it produces
_PRETRAIN_BATCH = 16
_PRETRAIN_MAX_TOKENS = 256
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

hf_logging.disable_progress_bar()  # per-shard loading bars: memaudit shows its own progress per stage


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → the first CUDA device when present, else the CPU; a CUDA device without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MemauditError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MemauditError(f"device {device!r} requested but CUDA is not available", "use --device cpu or auto")
    return dev


def _source(model_cfg: ModelConfig, path: str | Path | None) -> tuple[str, str | None]:
    """Where to load from: a local folder (``path`` wins over ``model.local_path``) or the Hub id and revision."""
    folder = path if path is not None else model_cfg.local_path
    if folder is not None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MemauditError(
                f"model folder {folder} not found or holds no config.json",
                "pass a folder written by save_pretrained (model.local_path or --base-model)",
            )
        return str(folder), None
    if model_cfg.name == TINY_NAME:
        raise MemauditError(
            "model 'tiny-llama' is built locally and has no Hub id",
            "pass --base-model with the folder built by the prepare stage (memaudit.models.ensure_base_model)",
        )
    return model_cfg.name, model_cfg.revision


def _hub_error(what: str, source: str, exc: Exception) -> MemauditError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(source).is_dir():
        return MemauditError(
            f"cannot load the {what} from folder {source} ({first})",
            "point model.local_path / --base-model at a complete folder written by save_pretrained",
        )
    return MemauditError(
        f"cannot load the {what} of {source!r} ({first})",
        "check the name and network access, or download the model and set model.local_path to its folder",
    )


def load_tokenizer(model_cfg: ModelConfig, path: str | Path | None = None):
    """The model's tokenizer, padding and truncating on the left; pad = EOS when it has no pad token."""
    from transformers import AutoTokenizer

    source, revision = _source(model_cfg, path)
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, padding_side="left", truncation_side="left")
    except (OSError, ValueError) as exc:
        raise _hub_error("tokenizer", source, exc) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise MemauditError(f"the tokenizer of {source!r} has neither pad nor EOS token", "use another model")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    tok.truncation_side = "left"
    return tok


def num_layers(model) -> int:
    """Number of transformer blocks (``hidden_states`` has this many + 1 entries)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


def check_layers(layers: Sequence[int], n_layers: int, source: str) -> None:
    """Raise when a configured hidden-state layer does not exist in the model."""
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad:
        raise MemauditError(
            f"model.layers {bad} out of range for {source!r}, which has {n_layers} layers",
            f"use layers between 0 (embeddings) and {n_layers} (last block)",
        )


def load_base_model(model_cfg: ModelConfig, path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The base causal LM in ``model.dtype`` (or 4-bit NF4) on ``device``, in eval mode, without KV cache."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    source, revision = _source(model_cfg, path)
    kwargs: dict = {"revision": revision, "dtype": _DTYPES[model_cfg.dtype]}
    if model_cfg.quantization == "nf4":
        kwargs.update(_nf4_kwargs(dev))
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        raise _hub_error("weights", source, exc) from None
    check_layers(model_cfg.layers, num_layers(model), source)
    if model_cfg.quantization == "none":
        model.to(dev)
    model.config.use_cache = False
    model.eval()
    return model


def _nf4_kwargs(dev: torch.device) -> dict:
    """``from_pretrained`` arguments for 4-bit NF4 (bitsandbytes, CUDA only; compute in bf16)."""
    if dev.type != "cuda":
        raise MemauditError(
            f"model.quantization 'nf4' needs a CUDA device (got {dev})", "set model.quantization=none on CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MemauditError(
            "model.quantization 'nf4' needs bitsandbytes, which is not installed",
            "pip install 'memaudit[gpu]' or set model.quantization=none",
        ) from None
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": quant, "device_map": {"": dev.index or 0}}


# ------------------------------------------------------------------------------------------------ tiny model


def build_tiny_model(tiny_cfg: TinyModelConfig, tokenizer, out_dir: str | Path):
    """A randomly initialised (seeded) Llama from ``tiny_cfg`` and the tokenizer's vocabulary, saved with
    its tokenizer to ``out_dir``; returns the model (fp32, CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny_cfg.hidden_size % tiny_cfg.num_attention_heads:
        raise MemauditError(
            f"tiny model hidden_size {tiny_cfg.hidden_size} is not a multiple of its "
            f"{tiny_cfg.num_attention_heads} attention heads",
            "change model.tiny.hidden_size or model.tiny.num_attention_heads",
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny_cfg.hidden_size,
        intermediate_size=tiny_cfg.intermediate_size,
        num_hidden_layers=tiny_cfg.num_hidden_layers,
        num_attention_heads=tiny_cfg.num_attention_heads,
        num_key_value_heads=tiny_cfg.num_attention_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny_cfg.seed)
        model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def pretrain_causal_lm(model, tokenizer, texts: Sequence[str], steps: int, lr: float, seed: int) -> list[float]:
    """Brief causal-LM pre-training on ``texts`` (seeded batches of 16, AdamW, warmup + linear decay,
    pad positions masked); returns the loss per step."""
    eos = tokenizer.eos_token_id
    rows = [
        np.asarray([*ids, eos][:_PRETRAIN_MAX_TOKENS], dtype=np.int64) for ids in tokenizer(list(texts))["input_ids"]
    ]
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    losses: list[float] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            pick = rng.choice(len(rows), size=min(_PRETRAIN_BATCH, len(rows)), replace=False)
            batch = left_pad([rows[i] for i in pick], tokenizer.pad_token_id)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    model.eval()
    return losses


def tiny_model_digest(tiny_cfg: TinyModelConfig, corpus_texts: Sequence[str]) -> str:
    """16 hex digits over the builder version, the tiny settings and the corpus."""
    h = hashlib.sha256(json.dumps({"format": _TINY_FORMAT, "tiny": tiny_cfg.model_dump()}, sort_keys=True).encode())
    for text in corpus_texts:
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:16]


def ensure_base_model(model_cfg: ModelConfig, corpus_texts: Sequence[str], cache_dir: str | Path) -> Path:
    """The folder of the tiny model for ``model_cfg`` and the corpus: reused when already built, else built.

    Builds in a temporary folder next to the final one and renames it into place, so a killed build leaves
    nothing half-written and two processes racing for it both end up using one complete folder.
    """
    if model_cfg.name != TINY_NAME or model_cfg.tiny is None:
        raise MemauditError(
            f"model {model_cfg.name!r} is not built locally (only 'tiny-llama' is)",
            "load it with load_base_model (Hub id or model.local_path)",
        )
    texts = [t for t in corpus_texts if t and t.strip()]
    if not texts:
        raise MemauditError("the corpus for the tiny model is empty", "pass the pool's texts (prompts and labels)")
    cache_dir = Path(cache_dir)
    final = cache_dir / f"tiny-llama-{tiny_model_digest(model_cfg.tiny, texts)}"
    if (final / BUILT_MARKER).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{final.name}."))
    try:
        tokenizer = build_word_tokenizer(texts)
        model = build_tiny_model(model_cfg.tiny, tokenizer, tmp)
        tiny = model_cfg.tiny
        losses = pretrain_causal_lm(model, tokenizer, texts, tiny.pretrain_steps, tiny.pretrain_lr, tiny.seed)
        model.save_pretrained(tmp)
        info = {"digest": final.name, "n_texts": len(texts), "pretrain_loss": _loss_summary(losses)}
        (tmp / BUILT_MARKER).write_text(json.dumps(info, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / BUILT_MARKER).is_file():  # a stale, incomplete folder: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _loss_summary(losses: list[float]) -> dict[str, float]:
    if not losses:
        return {}
    k = max(1, len(losses) // 10)
    return {"first": float(np.mean(losses[:k])), "last": float(np.mean(losses[-k:]))}


# ------------------------------------------------------------------------------------------------------ LoRA


def _targeted_linears(model, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """Modules whose name is a target or ends with ``.<target>`` and that are (or wrap) ``nn.Linear``."""
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        layer = getattr(module, "base_layer", module)
        if isinstance(layer, nn.Linear):
            found[name] = layer
    return found


def lora_parameter_count(model, lora_cfg: LoraSettings) -> int:
    """Trainable LoRA parameters: Σ r·(in + out) over the targeted Linear layers (bias none)."""
    layers = _targeted_linears(model, lora_cfg.target_modules)
    return sum(lora_cfg.r * (layer.in_features + layer.out_features) for layer in layers.values())


def apply_lora(model, lora_cfg: LoraSettings, seed: int):
    """Wrap ``model`` in a peft LoRA model (r, alpha, dropout, targets, bias none), initialised from ``seed``."""
    from peft import LoraConfig, get_peft_model

    layers = _targeted_linears(model, lora_cfg.target_modules)
    missing = [t for t in lora_cfg.target_modules if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing:
        raise MemauditError(
            f"LoRA target module(s) {missing} are not Linear layers of this model",
            "set lora.target_modules to module names the model has (e.g. q_proj, v_proj, lm_head)",
        )
    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        bias="none",
    )
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def save_adapter(peft_model, out_dir: str | Path) -> Path:
    """Save only the LoRA weights and the adapter config (never full embedding / lm_head weights)."""
    peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)
    return Path(out_dir)


def load_adapter_weights(peft_model, adapter_dir: str | Path, lora_cfg: LoraSettings) -> None:
    """Load a saved adapter into ``peft_model`` in place (same base, new LoRA weights).

    The adapter must have been trained with ``lora_cfg`` (r and targets) and hold exactly the model's LoRA
    tensors; otherwise :class:`MemauditError`.
    """
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise MemauditError(
            f"adapter {adapter_dir} has no readable adapter_config.json", "re-run the finetune stage for it"
        ) from None
    if saved.get("r") != lora_cfg.r or sorted(saved.get("target_modules") or []) != sorted(lora_cfg.target_modules):
        raise MemauditError(
            f"adapter {adapter_dir} was trained with r={saved.get('r')} on {saved.get('target_modules')}, "
            f"the config says r={lora_cfg.r} on {list(lora_cfg.target_modules)}",
            "score with the config the shadow was trained with",
        )
    device = next(peft_model.parameters()).device
    try:
        weights = load_peft_weights(str(adapter_dir), device=str(device))
    except Exception as exc:  # safetensors raises several types for a truncated file
        raise MemauditError(
            f"adapter weights in {adapter_dir} are unreadable ({type(exc).__name__})",
            "delete that checkpoint and re-run the finetune stage (it resumes)",
        ) from None
    expected = {k for k in peft_model.state_dict() if "lora_" in k}
    result = set_peft_model_state_dict(peft_model, weights)
    missing = {k for k in result.missing_keys if "lora_" in k}
    if result.unexpected_keys or missing or not expected:
        raise MemauditError(
            f"adapter {adapter_dir} does not match the model ({len(missing)} LoRA tensors missing, "
            f"{len(result.unexpected_keys)} unexpected)",
            "score with the base model and config the shadow was trained with",
        )


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """A CPU copy of the LoRA tensors (for tests and comparisons)."""
    return {k: v.detach().cpu().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}


def tiny_model_corpus(cfg: ExperimentConfig, pool) -> list[str]:
    """Text the locally built tiny model is pre-trained on (and its tokenizer learns): fresh synthetic items
    (``model.tiny.pretrain_texts`` of them, from a stream disjoint from the pool's) for the synthetic dataset;
    otherwise the pool's prompts with their true labels (vocabulary coverage)."""
    if cfg.dataset.synthetic is not None:
        from memaudit.synthetic import pretraining_corpus

        return pretraining_corpus(
            cfg.dataset.synthetic, n_texts=cfg.model.tiny.pretrain_texts, seed=cfg.model.tiny.seed
        )
    return [p + opts[g] for p, opts, g in zip(pool["prompt"], pool["options"], pool["gold_index"], strict=True)]
