"""Reading a shadow population's score files for the aggregate stage: one pass, target first.

The target's file is read whole; of the others only the c_pred and final checkpoints (:func:`read_score_rows`).
What is kept is, per model, the final and c_pred logit gaps and the raw stored predictor values at c_pred
(float32), and the final probability of the labelled option (RMIA), plus the target's arrays: about
4·S·N·(2L + 9) bytes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.metrics import logit_gap, option_probability, prediction_checkpoint
from memaudit.stages.scorefile import PER_CHECKPOINT, read_score_rows, read_scores, shadow_id

_SAME_IN_EVERY_FILE = ("global_index", "label_index", "checkpoints", "layers")


@dataclass
class Population:
    """The population's values at c_pred and at the final checkpoint; row 0 of every array is the target."""

    ids: list[int]  # shadow id of each row
    target: dict[str, np.ndarray]  # the target's whole score file
    c_pred: int  # checkpoint index
    c_pred_rule: str  # forced, auto or fallback_lowest_median_loss
    medians: np.ndarray  # the target's median member loss per checkpoint
    with_mahalanobis: bool
    member: np.ndarray  # bool [M, N]
    final_gap: np.ndarray  # float64 [M, N]
    final_p: np.ndarray  # float64 [M, N]: probability of the labelled option at the final checkpoint (RMIA)
    early_gap: np.ndarray  # float64 [M, N], at c_pred
    stored: np.ndarray  # float32 [M, P_stored, N]: see stored_values

    @property
    def layers(self) -> np.ndarray:
        return self.target["layers"]


def stored_values(arrays: dict[str, np.ndarray], c: int, with_mahalanobis: bool) -> np.ndarray:
    """The predictors read from a score file at checkpoint index c, [P_stored, N]: P-SMI per layer, loss,
    Mahalanobis per layer (NaN when this file lacks it)."""
    parts = [arrays["psmi"][c], arrays["loss"][c][None]]
    if with_mahalanobis:
        maha = arrays.get("mahalanobis")
        parts.append(maha[c] if maha is not None else np.full_like(arrays["psmi"][c], np.nan))
    return np.concatenate(parts)


def _choose_c_pred(cfg: ExperimentConfig, target: dict[str, np.ndarray]) -> tuple[int, str, np.ndarray]:
    """(checkpoint index, how it was chosen, median member loss per checkpoint) from the target's arrays."""
    medians = np.median(target["loss"][:, target["member"]].astype(np.float64), axis=1)
    forced = cfg.evaluation.c_pred
    if forced is not None:
        hits = np.flatnonzero(target["checkpoints"] == forced)
        if not hits.size:
            raise MemauditError(
                f"evaluation.c_pred {forced} is not a stored checkpoint ({target['checkpoints'].tolist()})",
                "set it to one of them, or unset it for the automatic choice",
            )
        return int(hits[0]), "forced", medians
    index, found = prediction_checkpoint(medians, cfg.evaluation.c_pred_loss_ratio)
    return index, "auto" if found else "fallback_lowest_median_loss", medians


def _check_same(name: str, value: np.ndarray, reference: np.ndarray, path: Path) -> None:
    if value.shape != reference.shape or not np.array_equal(value, reference):
        raise MemauditError(
            f"score file {path} has a different {name} than the target's score file",
            "aggregate score files of one run only (same pool, same checkpoint schedule, same layers)",
        )


def _target_first(cfg: ExperimentConfig, paths: list[Path]) -> tuple[list[int], list[int]]:
    """Positions of ``paths`` in reading order (the target, then the others by shadow id) and their shadow ids."""
    ids = [shadow_id(p) for p in paths]
    if len(set(ids)) != len(ids):
        raise MemauditError(f"score files repeat shadow ids ({sorted(ids)})", "pass each shadow's file once")
    if cfg.shadows.target not in ids:
        raise MemauditError(
            f"no score file for the target shadow {cfg.shadows.target} (got {sorted(ids)})",
            "pass the target's score file or set shadows.target",
        )
    order = sorted(range(len(paths)), key=lambda k: (ids[k] != cfg.shadows.target, ids[k]))
    return order, [ids[k] for k in order]


def _empty(cfg: ExperimentConfig, target_path: Path, ids: list[int]) -> Population:
    """The population with the target read and the other rows still to fill."""
    target = read_scores(target_path, keys=("mahalanobis", "psmi_std", "test_loss"))
    c_pred, how, medians = _choose_c_pred(cfg, target)
    with_maha = "mahalanobis" in target
    n_models, n = len(ids), target["global_index"].shape[0]
    n_stored = target["layers"].shape[0] * (2 if with_maha else 1) + 1
    return Population(
        ids=ids,
        target=target,
        c_pred=c_pred,
        c_pred_rule=how,
        medians=medians,
        with_mahalanobis=with_maha,
        member=np.zeros((n_models, n), dtype=bool),
        final_gap=np.zeros((n_models, n)),
        final_p=np.zeros((n_models, n)),
        early_gap=np.zeros((n_models, n)),
        stored=np.zeros((n_models, n_stored, n), dtype=np.float32),
    )


def read_population(cfg: ExperimentConfig, paths: list[Path], progress: bool) -> Population:
    """One pass over the files, target first: gaps, membership and predictor values at c_pred of every model."""
    order, ids = _target_first(cfg, paths)
    pop = _empty(cfg, paths[order[0]], ids)
    target, n = pop.target, pop.member.shape[1]
    rows = [pop.c_pred, target["checkpoints"].shape[0] - 1]

    def load(row: int, k: int) -> None:  # fills row `row` of the population arrays from file k
        if row == 0:
            arrays = {key: value[rows] if key in PER_CHECKPOINT else value for key, value in target.items()}
        else:
            arrays = read_score_rows(paths[k], rows, keys=("mahalanobis",))
        for name in _SAME_IN_EVERY_FILE:
            _check_same(name, arrays[name], target[name], paths[k])
        gaps = logit_gap(arrays["option_logits"], np.broadcast_to(arrays["label_index"], (2, n)))
        pop.early_gap[row], pop.final_gap[row] = gaps
        pop.final_p[row] = option_probability(arrays["option_logits"][1], arrays["label_index"])
        pop.member[row] = arrays["member"]
        pop.stored[row] = stored_values(arrays, 0, pop.with_mahalanobis)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # file reads and numpy release the GIL
        jobs = [pool.submit(load, row, k) for row, k in enumerate(order)]
        for job in tqdm(jobs, desc="score files", disable=not progress):
            job.result()
    return pop
