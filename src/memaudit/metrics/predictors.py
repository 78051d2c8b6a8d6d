"""The name of a predictor (or of a per-layer sample column): a kind and, for hidden-state ones, a layer.

The string form ``<kind>`` or ``<kind>_L<layer>`` (``psmi_L29``, ``loss``) names columns of ``samples.parquet``, keys
of ``summary.json``, rows of ``roc.parquet``/``timeline.parquet`` and metric names; :meth:`Predictor.parse` is its
only parser. Orientation: every predictor is evaluated on ``sign × value``, so that higher means "more likely
memorized" (−P-SMI, +loss, −logit gap, +Mahalanobis, +early LiRA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SIGNS = {"psmi": -1.0, "loss": 1.0, "logit_gap": -1.0, "mahalanobis": 1.0, "early_lira": 1.0}
PER_LAYER = ("psmi", "mahalanobis", "psmi_slope", "psmi_std")  # kinds that carry a layer
_NAME = re.compile(r"^(?P<kind>[a-z][a-z_]*?)(?:_L(?P<layer>\d+))?$")


@dataclass(frozen=True)
class Predictor:
    """One predictor (``kind`` in :data:`SIGNS`) or per-layer column, e.g. ``Predictor("psmi", 29)``."""

    kind: str
    layer: int | None = None

    def __post_init__(self) -> None:
        if (self.layer is not None) != (self.kind in PER_LAYER):
            raise ValueError(f"predictor kind {self.kind!r} {'needs' if self.layer is None else 'takes no'} layer")

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}_L{self.layer}"

    @property
    def name(self) -> str:
        return str(self)

    @property
    def sign(self) -> float:
        """+1 or −1: the orientation that makes higher values mean "more likely memorized"."""
        return SIGNS[self.kind]

    @classmethod
    def parse(cls, name: str) -> Predictor:
        """The predictor a name stands for; raises ValueError for a name that is none."""
        match = _NAME.match(name)
        if match is None or (match["layer"] is not None) != (match["kind"] in PER_LAYER):
            raise ValueError(f"{name!r} is not a predictor name")
        return cls(match["kind"], None if match["layer"] is None else int(match["layer"]))


def predictor_names(layers: list[int], with_mahalanobis: bool) -> list[str]:
    """Every predictor the aggregate evaluates, in its order: P-SMI per layer, loss, logit gap, Mahalanobis per
    layer (when stored), early LiRA."""
    names = [Predictor("psmi", layer) for layer in layers] + [Predictor("loss"), Predictor("logit_gap")]
    if with_mahalanobis:
        names += [Predictor("mahalanobis", layer) for layer in layers]
    return [str(p) for p in [*names, Predictor("early_lira")]]
