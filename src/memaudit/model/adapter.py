"""A LoRA adapter trained outside memaudit (``memaudit audit-model``): read its folder, check that it was trained on
the run's base model, and load it with peft onto that model with its own LoRA settings (rank, alpha, targets),
not the run's.

The folder is what peft's ``save_pretrained`` writes: ``adapter_config.json`` and ``adapter_model.safetensors``.
Pickled ``adapter_model.bin`` weights are refused: loading a pickle can run code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from memaudit.config import ModelConfig
from memaudit.config.presets import TINY_MODEL
from memaudit.errors import MemauditError
from memaudit.model.lora import contiguous_output_input

_REFIT = "pass the folder peft's save_pretrained wrote for a LoRA adapter of the run's base model"


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` after checking the folder: a LoRA adapter with safetensors weights."""
    from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

    folder = Path(folder)
    if not folder.is_dir():
        raise MemauditError(f"adapter folder {folder} not found", _REFIT)
    try:
        saved = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        raise MemauditError(f"adapter {folder} has no readable {CONFIG_NAME}", _REFIT) from None
    if not isinstance(saved, dict) or saved.get("peft_type") != "LORA":
        kind = saved.get("peft_type") if isinstance(saved, dict) else None
        raise MemauditError(f"adapter {folder} is not a LoRA adapter (peft_type {kind!r})", _REFIT)
    if not (folder / SAFETENSORS_WEIGHTS_NAME).is_file():
        if (folder / WEIGHTS_NAME).is_file():
            raise MemauditError(
                f"adapter {folder} holds pickled {WEIGHTS_NAME} weights, which memaudit does not load",
                f"save it as {SAFETENSORS_WEIGHTS_NAME} (peft's save_pretrained does by default)",
            )
        raise MemauditError(f"adapter {folder} has no {SAFETENSORS_WEIGHTS_NAME}", _REFIT)
    return saved


def _same_base(name: Any, model_cfg: ModelConfig) -> bool:
    """Whether ``base_model_name_or_path`` names the run's model: its id, its ``model.local_path`` folder, or, for
    the locally built tiny model (which has no id), any absolute folder path."""
    if not isinstance(name, str) or not name:
        return False
    if name == model_cfg.name:
        return True
    if model_cfg.local_path is not None and Path(name).resolve() == Path(model_cfg.local_path).resolve():
        return True
    return model_cfg.name == TINY_MODEL and Path(name).is_absolute()


def check_base_model(saved: dict[str, Any], model_cfg: ModelConfig, folder: str | Path) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` / ``revision`` differ from the run's model (a revision
    the adapter does not record is not checked: peft records one only when asked to)."""
    name, revision = saved.get("base_model_name_or_path"), saved.get("revision")
    if _same_base(name, model_cfg) and revision in (None, model_cfg.revision):
        return
    run = model_cfg.name + (f"@{model_cfg.revision}" if model_cfg.revision else "")
    raise MemauditError(
        f"adapter {folder} was trained on {name}{f'@{revision}' if revision else ''}, the run on {run}",
        "audit it against a run of the same base model and revision (or, if the adapter's base is that model, "
        "set base_model_name_or_path and revision in its adapter_config.json to the run's)",
    )


def load_adapter(base_model, folder: str | Path):
    """Wrap ``base_model`` in a peft LoRA model built from the adapter's own config and load its weights; every
    LoRA tensor of the model must come from the file (else :class:`MemauditError`)."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    folder = Path(folder)
    try:
        config = LoraConfig.from_pretrained(str(folder))
        config.inference_mode = False  # trainable, as the score stage builds them: frozen ones gave other CPU logits
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*base_model_name_or_path. was renamed", category=UserWarning)
            contiguous_output_input(base_model)
            model = get_peft_model(base_model, config)
        device = next(model.parameters()).device
        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device=str(device)))
    except (ValueError, TypeError, RuntimeError, KeyError, OSError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MemauditError(f"adapter {folder} does not fit the run's base model ({first})", _REFIT) from None
    expected = {k for k in model.state_dict() if "lora_" in k}
    missing = {k for k in result.missing_keys if "lora_" in k}
    if result.unexpected_keys or missing or not expected:
        raise MemauditError(
            f"adapter {folder} does not match the run's base model ({len(missing)} LoRA tensors missing, "
            f"{len(result.unexpected_keys)} unexpected)",
            _REFIT,
        )
    model.eval()
    return model
