"""Values the KFP backend accepts: artifact metadata and metrics without null or non-finite numbers.

The launcher converts artifact metadata to a protobuf Struct and rejects null values; NaN and ±inf break
protojson in metrics. Every component passes what it hands to KFP through :func:`kfp_metadata` or
:func:`kfp_metrics`; ROC curves go through :func:`downsample_curve` so the UI stays responsive.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

MAX_CURVE_POINTS = 200  # points per ROC curve logged to KFP; the HTML report keeps the full curve


def _clean(value: Any) -> Any:
    """``value`` with None dropped and non-finite floats written as strings ("nan", "inf", "-inf")."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value if v is not None]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def kfp_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Artifact metadata the launcher accepts: no None anywhere, non-finite floats as strings."""
    return _clean(dict(metadata))


def kfp_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics protojson can encode: None and non-finite values are left out."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def downsample_curve(*columns: Sequence[float], max_points: int = MAX_CURVE_POINTS) -> tuple[list[float], ...]:
    """At most ``max_points`` evenly spaced rows of equal-length columns, first and last row kept."""
    n = len(columns[0])
    if n <= max_points:
        return tuple(list(map(float, c)) for c in columns)
    keep = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return tuple([float(c[i]) for i in keep] for c in columns)
