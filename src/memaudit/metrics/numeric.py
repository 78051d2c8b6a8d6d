"""Numeric helpers shared by the metrics: float64 tensors on a device."""

from __future__ import annotations

import numpy as np
import torch


def as_float64(features: np.ndarray | torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
    """float64 tensor on ``device`` (None: where the features are, CPU for numpy; "auto": CUDA when present)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(features, torch.Tensor):
        return features.detach().to(device=device or features.device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(features), dtype=torch.float64, device=device or "cpu")


def shares_memory(x: torch.Tensor, source: np.ndarray | torch.Tensor) -> bool:
    """Whether ``x`` is a view of ``source`` (then it must not be modified in place)."""
    if isinstance(source, torch.Tensor):
        return x.data_ptr() == source.data_ptr()
    return isinstance(source, np.ndarray) and x.device.type == "cpu" and np.shares_memory(x.numpy(), source)
