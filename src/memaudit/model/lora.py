"""LoRA adapters: attach them to the base model, save them, and swap a checkpoint's weights in place."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from memaudit.config import LoraSettings
from memaudit.errors import MemauditError


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


def _contiguous_input(_module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def contiguous_output_input(model) -> None:
    """Make the output layer's input contiguous (see :func:`apply_lora`); every LoRA wrapper of a base model
    does it, so that adapters loaded either way give the same logits."""
    model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)


def apply_lora(model, lora_cfg: LoraSettings, seed: int):
    """Wrap ``model`` in a peft LoRA model (r, alpha, dropout, targets, bias none), initialised from ``seed``.

    With tied embeddings (Gemma) a LoRA on ``lm_head`` changes the output projection only: the shared weight stays
    frozen and the input embeddings untouched, as in the authors' code. peft's warning about merging such an
    adapter is silenced: memaudit never merges adapters. The output layer gets its input made contiguous: with its
    weight frozen, torch would otherwise copy that weight once per batch row for the answer-position slice
    (``logits_to_keep``) on the CPU, which with a 256000-token vocabulary costs seconds per batch.
    """
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
    contiguous_output_input(model)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*a tied layer is part of the adapter.*", category=UserWarning)
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
