"""Loading the base model and its tokenizer: a Hub id or a local folder, bf16/fp32 weights or 4-bit NF4 on CUDA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers.utils import logging as hf_logging

from memaudit.config import ModelConfig
from memaudit.config.presets import TINY_MODEL
from memaudit.errors import MemauditError
from memaudit.model.gguf import gguf_source
from memaudit.model.tokenization import use_chat_template

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


def _source(model_cfg: ModelConfig, path: str | Path | None) -> tuple[str, dict]:
    """Where to load from and how: a local folder (``path`` wins over ``model.local_path``; a dequantized GGUF model
    is such a folder), the GGUF file, or the Hub id and revision."""
    folder = path if path is not None else model_cfg.local_path
    if folder is not None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MemauditError(
                f"model folder {folder} not found or holds no config.json",
                "pass a folder written by save_pretrained (model.local_path or --base-model)",
            )
        return str(folder), {}
    if model_cfg.gguf_file is not None:
        return gguf_source(model_cfg)
    if model_cfg.name == TINY_MODEL:
        raise MemauditError(
            "model 'tiny-llama' is built locally and has no Hub id",
            "pass --base-model with the folder built by the prepare stage (memaudit.model.loading.ensure_base_model)",
        )
    return model_cfg.name, {"revision": model_cfg.revision}


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

    source, where = _source(model_cfg, path)
    try:
        tok = AutoTokenizer.from_pretrained(source, **where, padding_side="left", truncation_side="left")
    except (OSError, ValueError) as exc:
        raise _hub_error("tokenizer", source, exc) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise MemauditError(f"the tokenizer of {source!r} has neither pad nor EOS token", "use another model")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    tok.truncation_side = "left"
    if model_cfg.chat_template:
        use_chat_template(tok)
    return tok


def num_layers(model) -> int:
    """Number of transformer blocks (``hidden_states`` has this many + 1 entries)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


def resolve_layers(layers: Sequence[int] | str, n_layers: int, source: str) -> list[int]:
    """The hidden-state layers to use: ``all`` is 1..L; a configured layer the model lacks raises."""
    if layers == "all":
        return list(range(1, n_layers + 1))
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad:
        raise MemauditError(
            f"model.layers {bad} out of range for {source!r}, which has {n_layers} layers",
            f"use layers between 0 (embeddings) and {n_layers} (last block), or model.layers=all",
        )
    return list(layers)


def load_base_model(model_cfg: ModelConfig, path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The base causal LM in ``model.dtype`` (or 4-bit NF4) on ``device``, in eval mode, without KV cache."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    source, where = _source(model_cfg, path)
    kwargs: dict = {**where, "dtype": _DTYPES[model_cfg.dtype]}
    if "gguf_file" not in where:  # never unpickle weights: a .bin file can run code when it is loaded
        kwargs["use_safetensors"] = True
    if model_cfg.quantization == "nf4":
        kwargs.update(_nf4_kwargs(dev))
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        if "safetensors" in str(exc) and "gguf_file" not in where:
            raise MemauditError(
                f"{source} has no safetensors weights (memaudit does not load pickled .bin weights)",
                "save the model with save_pretrained(safe_serialization=True), or pick a model.revision that has "
                "model.safetensors",
            ) from None
        raise _hub_error("weights", source, exc) from None
    resolve_layers(model_cfg.layers, num_layers(model), source)
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
