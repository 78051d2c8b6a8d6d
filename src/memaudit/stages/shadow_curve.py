"""The ground truth's attacks (LiRA, RMIA) on the target, and the shadow curve: how many shadows an audit needs
before its memorized set stops changing (docs/method.md §5.7).

For each attack, k (a number of shadows besides the target) and draw (a seeded random subset of k shadows), the
target's members are scored against those k shadows only; the top members, as many as the all-shadows LiRA-online
memorized set holds, are compared with that set (``overlap``: the share of it recovered), the scores are ranked
against the all-shadows LiRA (``spearman``), and P-SMI is evaluated with them as the ground truth
(``psmi_fpr_at_tpr``). A member the drawn shadows cannot score as the attack defines it (an online attack without
an IN or an OUT model, an offline one without an OUT model) is counted in ``undefined_share``: LiRA scores it with
its population fallback (memaudit.metrics.lira), offline RMIA ranks it last. An online attack with every member
undefined (k = 1) is skipped and listed in the summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from memaudit.config import ExperimentConfig
from memaudit.metrics import Predictor, fit_offline_a, fpr_at_tpr, lira, rmia, spearman
from memaudit.stages.population import Population

CURVE_SEED = 17  # the draws of shadow subsets: np.random.default_rng([CURVE_SEED, k, draw])
OVERLAP_GOAL = 0.9  # the summary names the smallest k whose mean overlap reaches it


def ground_truth_label(cfg: ExperimentConfig, offline_a: float | None) -> str:
    """The chosen ground truth in words, e.g. "LiRA global" or "RMIA offline (a 0.35, γ 1)"."""
    ev = cfg.evaluation
    if ev.ground_truth == "lira":
        return f"LiRA {ev.lira_mode}"
    a = f"a {offline_a:g}, " if ev.rmia_mode == "offline" else ""
    return f"RMIA {ev.rmia_mode} ({a}γ {ev.rmia_gamma:g})"


def resolve_offline_a(cfg: ExperimentConfig, pop: Population) -> float:
    """``evaluation.rmia_offline_a``, or fitted on shadows 1 and 2 of the population when it is 'auto'."""
    a = cfg.evaluation.rmia_offline_a
    if a != "auto":
        return float(a)
    return fit_offline_a(pop.final_p[1:], pop.member[1:], gamma=cfg.evaluation.rmia_gamma)


def attack_scores(cfg: ExperimentConfig, pop: Population, attack: str, target: int, refs, offline_a: float):
    """Scores [N] of model ``target`` under ``attack`` against the models ``refs`` (rows of the population)."""
    ev = cfg.evaluation
    member = pop.member[refs]
    if attack.startswith("lira"):
        online, variance = attack == "lira_online", ev.lira_mode == "global"
        gaps = pop.final_gap
        return lira(gaps[target], gaps[refs], member, online=online, global_variance=variance, clip=ev.lira_clip)
    outside = np.flatnonzero(~pop.member[target])
    if attack == "rmia_online":
        return rmia(pop.final_p[target], pop.final_p[refs], member, outside, gamma=ev.rmia_gamma)
    scores = np.full(pop.member.shape[1], -np.inf)
    defined = (~member).any(axis=0)
    population = np.flatnonzero(defined & ~pop.member[target])
    kept = np.flatnonzero(defined)
    rank_in_kept = np.searchsorted(kept, population)
    p = pop.final_p
    scores[kept] = rmia(p[target, kept], p[refs][:, kept], member[:, kept], rank_in_kept, gamma=ev.rmia_gamma,
                        offline_a=offline_a)  # fmt: skip
    return scores


def undefined_share(attack: str, member_refs: np.ndarray, members: np.ndarray) -> float:
    """Share of the target's members the reference models cannot score as ``attack`` defines it."""
    has_in, has_out = member_refs.any(axis=0)[members], (~member_refs).any(axis=0)[members]
    if attack == "rmia_online":
        return 0.0
    lacking = ~(has_in & has_out) if attack == "lira_online" else ~has_out
    return float(lacking.mean())


def default_ks(others: int) -> list[int]:
    """1, 2, 4, 8, … below ``others``, then ``others`` itself."""
    ks = [1 << i for i in range(others.bit_length()) if 1 << i < others]
    return [*ks, others]


@dataclass
class CurveInputs:
    reference_flags: np.ndarray  # the all-shadows LiRA-online memorized set over the target's members
    reference_lira: np.ndarray  # the all-shadows LiRA-online scores of the target's members
    psmi: np.ndarray  # P-SMI at c_pred (best layer, sign-flipped: higher = memorized) over the target's members


def _row(cfg, pop: Population, inputs: CurveInputs, attack: str, refs: np.ndarray, a: float) -> dict[str, float]:
    members = pop.member[0]
    scores = attack_scores(cfg, pop, attack, 0, refs, a)[members]
    size = int(inputs.reference_flags.sum())
    top = np.zeros(scores.size, dtype=bool)
    top[np.argsort(-scores, kind="stable")[:size]] = True
    return {
        "overlap": float((top & inputs.reference_flags).sum() / size),
        "spearman": spearman(np.maximum(scores, np.finfo(np.float64).min), inputs.reference_lira),
        "psmi_fpr_at_tpr": fpr_at_tpr(top, inputs.psmi, cfg.evaluation.tpr_target),
        "undefined_share": undefined_share(attack, pop.member[refs], members),
    }


def _draw(others: int, k: int, draw: int) -> np.ndarray:
    """Population rows (1 … others) of the ``draw``-th random subset of ``k`` shadows, sorted."""
    return np.sort(np.random.default_rng([CURVE_SEED, k, draw]).choice(others, k, replace=False) + 1)


def shadow_curve(cfg: ExperimentConfig, pop: Population, inputs: CurveInputs, offline_a: float):
    """shadow_curve.parquet's rows (attack, k, draw, overlap, spearman, psmi_fpr_at_tpr, undefined_share) and the
    summary's facts about them."""
    ev, others = cfg.evaluation, len(pop.ids) - 1
    ks = sorted({k for k in (ev.shadow_curve_ks or default_ks(others)) if k <= others})
    rows, skipped = [], []
    draws = {k: [_draw(others, k, d) for d in range(ev.shadow_curve_draws)] for k in ks}
    for attack in ev.shadow_curve_attacks:
        for k in ks:
            if attack == "lira_online" and k < 2:
                skipped.append(f"{attack} at k={k}: an online attack needs an IN and an OUT model of each sample")
                continue
            for d, refs in enumerate(draws[k]):
                rows.append({"attack": attack, "k": k, "draw": d, **_row(cfg, pop, inputs, attack, refs, offline_a)})
    frame = pd.DataFrame(
        rows, columns=["attack", "k", "draw", "overlap", "spearman", "psmi_fpr_at_tpr", "undefined_share"]
    )
    return frame, _facts(frame, ks, others, offline_a, skipped, ev.shadow_curve_draws)


def smallest_k(frame: pd.DataFrame, goal: float = OVERLAP_GOAL) -> dict[str, int | None]:
    """Per attack, the smallest k whose mean overlap over the draws reaches ``goal`` (None when none does)."""
    means = frame.groupby(["attack", "k"])["overlap"].mean()
    out: dict[str, int | None] = {}
    for attack in frame["attack"].unique():
        reached = [int(k) for k, value in means[attack].items() if value >= goal - 1e-12]
        out[str(attack)] = min(reached) if reached else None
    return out


def _facts(frame, ks, others, offline_a, skipped, draws) -> dict[str, Any]:
    return {
        "reference": f"lira_online with all {others} shadows",
        "ks": ks,
        "draws": draws,
        "offline_a": offline_a,
        "goal": OVERLAP_GOAL,
        "smallest_k": smallest_k(frame),
        "skipped": skipped,
    }


def curve_inputs(pop: Population, reference: np.ndarray, flags: np.ndarray, psmi_name: str, values) -> CurveInputs:
    """What the curve compares with: ``reference`` (all-shadows LiRA online [N]), its memorized ``flags`` over the
    target's members and the best layer's P-SMI values [N] (raw)."""
    members = pop.member[0]
    return CurveInputs(flags, reference[members], Predictor.parse(psmi_name).sign * values[members])
