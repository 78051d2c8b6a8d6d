"""The figures of one run (docs/method.md §7), drawn from the aggregate stage's outputs.

Each figure function takes the checked :class:`memaudit.report.outputs.AggregateOutputs` and returns a matplotlib
:class:`~matplotlib.figure.Figure` built without pyplot (no global state) under matplotlib's default style, so the
result does not depend on the user's matplotlibrc. Plotted artists carry a ``gid`` naming what they show
(a predictor, ``threshold``, ``c_pred``…), so tests and readers can find them. :func:`png_bytes` renders with
the Agg backend and no metadata: same inputs → byte-identical PNGs.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from memaudit.metrics import Predictor, average_ranks, fpr_at_tpr, memorized, spearman
from memaudit.report.outputs import AggregateOutputs, kind_name, pretty_name

DPI = 110
_COLORS = {"psmi": "C0", "loss": "C1", "logit_gap": "C2", "mahalanobis": "C4", "early_lira": "C7"}
_RC = {"font.size": 9.5, "axes.titlesize": 10.5, "legend.fontsize": 8.5, "axes.grid": True, "grid.alpha": 0.3}


def _color(predictor: str) -> str:
    return _COLORS[Predictor.parse(predictor).kind]


def styled(make: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under matplotlib's defaults plus this module's few settings."""

    @functools.wraps(make)
    def wrapper(*args: Any) -> Figure:
        with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
            fig = make(*args)
            FigureCanvasAgg(fig)
            return fig

    return wrapper


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg, fixed DPI, no metadata)."""
    buffer = io.BytesIO()
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        FigureCanvasAgg(fig).print_figure(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _c_pred_text(data: AggregateOutputs) -> str:
    c = data.summary["c_pred"]
    return f"c_pred = step {c['step']} (epoch {c['epoch']:g})"


@styled
def roc_figure(data: AggregateOutputs) -> Figure:
    """Figure 1 / teaser: ROC of every headline predictor of the target at c_pred, chance diagonal, and the
    off-the-shelf point (P-SMI < 0 at the off-the-shelf layer)."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    tpr = data.tpr_target
    for name in data.headline():
        curve = data.roc[data.roc["predictor"] == name]
        numbers = data.target_numbers(name)
        label = f"{pretty_name(name)}: FPR@TPR={tpr:g} {numbers['fpr_at_tpr']:.3f}, AUC {numbers['auc']:.3f}"
        style = "--" if name == "early_lira" else "-"
        ax.plot(curve["fpr"], curve["tpr"], style, color=_color(name), lw=1.6, label=label, gid=name)
    ots = data.summary["off_the_shelf"]
    ax.plot(
        [ots["fpr"]],
        [ots["tpr"]],
        "x",
        color="C3",
        ms=11,
        mew=2.5,
        gid="off_the_shelf",
        label=f"P-SMI < 0, layer {ots['layer']} (off the shelf): FPR {ots['fpr']:.3f}, TPR {ots['tpr']:.3f}",
    )
    ax.plot([0, 1], [0, 1], ":", color="k", lw=1, label="chance", gid="chance")
    ax.axhline(tpr, color="0.5", lw=0.8, ls="-.", gid="tpr_target")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(f"Predicting memorized samples of model {data.summary['target']} at {_c_pred_text(data)}")
    ax.legend(loc="lower right")
    return fig


@styled
def lira_histogram_figure(data: AggregateOutputs) -> Figure:
    """ablation_memo_hist: the target members' LiRA log-likelihood ratios (final checkpoint) and the
    memorized threshold."""
    s = data.summary
    members = data.samples["member"].to_numpy(dtype=bool)
    llr = data.samples["ground_truth"].to_numpy(dtype=np.float64)[members]
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    above = llr >= data.memorized_threshold
    ax.hist(
        [llr[~above], llr[above]],
        bins=np.histogram_bin_edges(llr, bins=100),
        stacked=True,
        color=["C0", "C3"],
        alpha=0.8,
        label=["not memorized", "memorized"],
        gid="lira",
    )
    ax.axvline(
        data.memorized_threshold,
        color="k",
        ls="--",
        lw=1.2,
        gid="threshold",
        label=f"threshold: score ≥ {data.memorized_threshold:.3g}",
    )
    ax.set(xlabel=f"{data.summary['ground_truth']['label']} score (final checkpoint)", ylabel="target members")
    ax.set_title(
        f"Memorization of model {s['target']}: {s['n_memorized']} of {s['n_members']} members "
        f"({s['share_memorized']:.1%}) memorized"
    )
    ax.legend(loc="upper right")
    return fig


def _loss_axis(ax, data: AggregateOutputs):
    """A twin axis of the median member (and test) loss per checkpoint, with the c_pred rule's level."""
    twin = ax.twinx()
    twin.grid(False)
    steps = data.timeline.drop_duplicates("checkpoint").sort_values("epoch")
    style = {"ms": 3.5}
    twin.plot(steps["epoch"], steps["median_member_loss"], "s--", color="0.45", gid="median_member_loss",
              label="median member loss", **style)  # fmt: skip
    if steps["median_test_loss"].notna().any():
        twin.plot(steps["epoch"], steps["median_test_loss"], "^:", color="0.65", gid="median_test_loss",
                  label="median test loss", **style)  # fmt: skip
    if data.c_pred_level is not None:
        twin.axhline(data.c_pred_level, color="0.45", lw=0.8, ls="-.", gid="c_pred_level",
                     label="c_pred rule: median member loss below this")  # fmt: skip
    if (steps["median_member_loss"].to_numpy(dtype=np.float64) > 0).all():
        twin.set_yscale("log")
    twin.set_ylabel("median loss")
    return twin


@styled
def timeline_figure(data: AggregateOutputs) -> Figure:
    """perf_measure_timeline: FPR@TPR per checkpoint epoch of P-SMI (best layer), loss and logit gap; twin axis:
    median member loss (log scale, with the c_pred rule's level); vertical line at c_pred."""
    t, s = data.timeline, data.summary
    fig = Figure(figsize=(6.8, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for name in (s["best_layer"]["predictor"], "loss", "logit_gap"):
        rows = t[t["predictor"] == name].sort_values("epoch")
        ax.plot(rows["epoch"], rows["fpr_at_tpr"], "o-", color=_color(name), label=pretty_name(name), gid=name)
    ax.axvline(s["c_pred"]["epoch"], color="k", ls=":", lw=1.2, gid="c_pred", label=_c_pred_text(data))
    ax.set(xlabel="epoch", ylabel=f"FPR@TPR={data.tpr_target:g}", ylim=(0, 1.02))
    twin = _loss_axis(ax, data)
    lines, labels = ax.get_legend_handles_labels()
    more_lines, more_labels = twin.get_legend_handles_labels()
    ax.legend(lines + more_lines, labels + more_labels, loc="upper right")
    ax.set_title(f"Predictors of model {s['target']} along training")
    return fig


@styled
def layers_figure(data: AggregateOutputs) -> Figure:
    """ablation_layers: P-SMI FPR@TPR vs layer at c_pred (target, and mean ± std over all models), Mahalanobis
    when stored, the loss as a dashed reference."""
    s, tpr = data.summary, data.tpr_target
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for family, style in (("psmi", "o-"), ("mahalanobis", "s:")):
        layers = data.layers(family)
        if not layers:
            continue
        names = [str(Predictor(family, layer)) for layer in layers]
        own = [(data.target_numbers(n) or {}).get("fpr_at_tpr", np.nan) for n in names]
        ax.plot(layers, own, style, color=_COLORS[family], label=f"{kind_name(family)} (target)", gid=family)
        spreads = [s["predictors"][n]["all_models"]["fpr_at_tpr"] or {"mean": np.nan, "std": np.nan} for n in names]
        mean = np.array([x["mean"] for x in spreads])
        std = np.array([x["std"] for x in spreads])
        ax.fill_between(
            layers,
            mean - std,
            mean + std,
            color=_COLORS[family],
            alpha=0.15,
            lw=0,
            label=f"{kind_name(family)}, all models: mean ± std",
            gid=f"{family}_all_models",
        )
    loss = data.target_numbers("loss")
    if loss is not None:
        ax.axhline(loss["fpr_at_tpr"], color=_color("loss"), ls="--", label="Loss (target)", gid="loss")
    best = s["best_layer"]["layer"]
    ax.axvline(best, color="0.5", lw=0.8, ls="-.", gid="best_layer", label=f"best P-SMI layer {best}")
    ax.set(xlabel="layer", ylabel=f"FPR@TPR={tpr:g}", ylim=(0, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Memorization predicted from each layer, at {_c_pred_text(data)}")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return fig


def _share_bars(ax, flags: np.ndarray, groups: dict[str, np.ndarray], overall: float) -> None:
    """Bars of the memorized share per label group, annotated with counts, and the overall share."""
    names = [g for g, mask in groups.items() if mask.any()]
    shares = [float(flags[groups[g]].mean()) for g in names]
    bars = ax.bar(names, shares, color=["C0", "C1", "C3"][: len(names)], gid="share_memorized")
    for bar, g in zip(bars, names, strict=True):
        count = f"{int(flags[groups[g]].sum())} / {int(groups[g].sum())}"
        ax.annotate(count, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    bbox={"fc": "white", "ec": "none", "pad": 1})  # fmt: skip
    ax.axhline(overall, color="k", ls=":", lw=1, gid="share_overall", label=f"all members {overall:.1%}")
    ax.set(ylabel="share memorized (memorized / members)", ylim=(0, max([*shares, overall]) * 1.2))
    ax.set_title("Memorized share by label")
    ax.legend(loc="upper left")


@styled
def label_noise_figure(data: AggregateOutputs) -> Figure:
    """Memorization and label noise: share memorized among random-label vs true-label members (with counts), and
    the best-layer P-SMI distribution of memorized vs not-memorized members."""
    samples, s = data.samples, data.summary
    members = samples["member"].to_numpy(dtype=bool)
    flags = samples["memorized"].to_numpy(dtype=bool)[members]
    randomized = samples["label_randomized"].to_numpy(dtype=bool)[members]
    wrong = samples["label_wrong"].to_numpy(dtype=bool)[members]
    groups = {"true label": ~randomized, "random label": randomized, "of which wrong": wrong}
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.4))
    _share_bars(left, flags, groups, s["share_memorized"])
    best = s["best_layer"]["predictor"]
    psmi = samples[best].to_numpy(dtype=np.float64)[members]
    finite = np.isfinite(psmi)
    bins = np.histogram_bin_edges(psmi[finite], bins=40)
    for mask, label, color, gid in (
        (~flags, "not memorized", "C0", "not_memorized"),
        (flags, "memorized", "C3", "memorized"),
    ):
        right.hist(
            psmi[finite & mask],
            bins=bins,
            density=True,
            histtype="stepfilled",
            alpha=0.45,
            color=color,
            label=f"{label} ({int((finite & mask).sum())})",
            gid=gid,
        )
    right.axvline(0.0, color="k", ls=":", lw=1, gid="zero", label="P-SMI = 0")
    right.set(xlabel=f"{pretty_name(best)} at c_pred", ylabel="density")
    right.set_title("P-SMI of memorized and other members")
    right.legend(loc="upper left")
    return fig


@styled
def all_models_figure(data: AggregateOutputs) -> Figure:
    """Every model as the target (leave-one-out): mean ± std of FPR@TPR and AUC per headline predictor, with the
    target's own value."""
    s, tpr = data.summary, data.tpr_target
    names = data.headline()
    y = np.arange(len(names))[::-1]
    fig = Figure(figsize=(9.0, 0.55 * len(names) + 1.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, label, chance in ((axes[0], "fpr_at_tpr", f"FPR@TPR={tpr:g}", tpr), (axes[1], "auc", "AUC", 0.5)):
        spreads = [s["predictors"][n]["all_models"][key] or {"mean": np.nan, "std": np.nan} for n in names]
        mean = np.array([x["mean"] for x in spreads])
        std = np.array([x["std"] for x in spreads])
        bars = ax.errorbar(mean, y, xerr=std, fmt="o", color="k", capsize=4, label="all models: mean ± std")
        bars.lines[0].set_gid(f"{key}_mean")
        bars.lines[2][0].set_gid(f"{key}_std")
        own = [data.target_numbers(n)[key] for n in names]
        ax.plot(own, y, "x", color="C3", ms=8, mew=2, label=f"model {s['target']} (target)", gid=f"{key}_target")
        ax.axvline(chance, color="0.5", ls=":", lw=1, label="chance (FPR = TPR target; AUC 0.5)", gid=f"{key}_chance")
        ax.set(xlabel=label, xlim=(-0.02, 1.02), ylim=(-0.6, len(names) - 0.4))
    n_models = s["predictors"][names[0]]["all_models"]["n_models"] if names else 0
    axes[0].set_yticks(y, [pretty_name(n) for n in names])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    fig.suptitle(f"Each of the {n_models} models as the target, at {_c_pred_text(data)}")
    return fig


QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # shares of members called memorized
MAX_PANELS = 16


def fpr_by_quantile(data: AggregateOutputs, quantiles: tuple[float, ...] = QUANTILES) -> dict[str, list[float]]:
    """FPR@TPR of each headline predictor on the target's members when "memorized" is the top ``q`` of them by
    the ground truth's score, for each ``q`` (NaN where a predictor has no finite value)."""
    members = data.samples["member"].to_numpy(dtype=bool)
    llr = data.samples["ground_truth"].to_numpy(dtype=np.float64)[members]
    out: dict[str, list[float]] = {}
    for name in data.headline():
        score = Predictor.parse(name).sign * data.samples[name].to_numpy(dtype=np.float64)[members]
        finite = np.isfinite(score)
        flags = [memorized(llr, rule="top_fraction", fraction=q)[finite] for q in quantiles]
        out[name] = [fpr_at_tpr(f, score[finite], data.tpr_target) if 0 < f.sum() < f.size else np.nan for f in flags]
    return out


@styled
def quantile_figure(data: AggregateOutputs) -> Figure:
    """ablation_quantile: FPR@TPR of the headline predictors vs the share of members defining "memorized"."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for name, values in fpr_by_quantile(data).items():
        ax.plot(100 * np.array(QUANTILES), values, "o-", color=_color(name), label=pretty_name(name), gid=name)
    share = data.summary["share_memorized"]
    ax.axvline(100 * share, color="k", ls=":", lw=1.2, gid="this_run", label=f"this run: {share:.1%} memorized")
    ax.set(
        xlabel='members called "memorized" (top % by the ground truth)',
        ylabel=f"FPR@TPR={data.tpr_target:g}",
        ylim=(0, 1.02),
    )
    ax.set_title(f"Predictors at {_c_pred_text(data)} vs the definition of memorized")
    ax.legend(loc="best")
    return fig


def _panel_checkpoints(checkpoints: np.ndarray, most: int = MAX_PANELS) -> np.ndarray:
    """At most ``most`` checkpoints, evenly spread, the first and the last included."""
    if checkpoints.size <= most:
        return checkpoints
    return checkpoints[np.unique(np.linspace(0, checkpoints.size - 1, most).round().astype(int))]


def _member_flags(data: AggregateOutputs, samples: np.ndarray) -> np.ndarray:
    return data.samples["memorized"].to_numpy(dtype=bool)[samples]


@styled
def lira_checkpoints_figure(data: AggregateOutputs) -> Figure:
    """Appendix: the target members' LiRA at each checkpoint (against the other models' final checkpoint), the
    finally memorized ones in red, the memorized threshold on the last panel."""
    d = data.dynamics
    shown = _panel_checkpoints(np.sort(d["checkpoint"].unique()))
    cols = min(4, shown.size)
    rows = -(-shown.size // cols)
    fig = Figure(figsize=(2.6 * cols, 1.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    finite = d["lira"].to_numpy(dtype=np.float64)
    bins = np.histogram_bin_edges(finite[np.isfinite(finite)], bins=40)
    for ax, step in zip(axes, shown, strict=False):
        rows_c = d[d["checkpoint"] == step]
        llr, flags = rows_c["lira"].to_numpy(dtype=np.float64), _member_flags(data, rows_c["sample"].to_numpy())
        ax.hist([llr[~flags], llr[flags]], bins=bins, stacked=True, color=["C0", "C3"], alpha=0.8, gid=f"lira-{step}")
        ax.set_title(f"step {step} (epoch {rows_c['epoch'].iloc[0]:g})", fontsize=8.5)
        ax.tick_params(labelsize=7.5)
    axes[shown.size - 1].axvline(data.memorized_threshold, color="k", ls="--", lw=1, gid="threshold")
    for ax in axes[shown.size :]:
        ax.set_visible(False)
    fig.suptitle("LiRA of the target's members along training (red: memorized at the end)")
    fig.supxlabel("LiRA log-likelihood ratio", fontsize=9)
    return fig


def _band(ax, frame, column: str, color: str, label: str, gid: str) -> None:
    """Median and 25–75 % band of ``column`` per epoch."""
    q = frame.groupby("epoch")[column].quantile([0.25, 0.5, 0.75]).unstack()
    ax.plot(q.index, q[0.5], "-", color=color, lw=1.6, label=label, gid=gid)
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.2, lw=0, gid=f"{gid}_iqr")


@styled
def dynamics_figure(data: AggregateOutputs) -> Figure:
    """Figure 2: training dynamics of hard (memorized at the end) and easy (not memorized) target members: median
    and 25–75 % band of P-SMI at the best layer, LiRA and loss per epoch."""
    d, s = data.dynamics, data.summary
    hard = _member_flags(data, d["sample"].to_numpy())
    groups = (
        (~hard, "C0", f"easy: not memorized ({s['n_members'] - s['n_memorized']})", "easy"),
        (hard, "C3", f"hard: memorized ({s['n_memorized']})", "hard"),
    )
    fig = Figure(figsize=(11.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    panels = (("psmi", pretty_name(s["best_layer"]["predictor"])), ("lira", "LiRA"), ("loss", "loss"))
    for ax, (column, label) in zip(axes, panels, strict=True):
        for mask, color, legend, gid in groups:
            _band(ax, d[mask], column, color, legend, f"{gid}_{column}")
        ax.axvline(s["c_pred"]["epoch"], color="k", ls=":", lw=1, gid=f"c_pred_{column}")
        ax.set(xlabel="epoch", ylabel=label)
    if (d["loss"] > 0).all():
        axes[2].set_yscale("log")
    axes[0].legend(loc="best")
    fig.suptitle(f"Training dynamics of hard and easy samples (median and 25–75 %); dotted: {_c_pred_text(data)}")
    return fig


@styled
def counterfactual_figure(data: AggregateOutputs) -> Figure:
    """Appendix figure 6: ranks of counterfactual memorization (over the whole population) vs ranks of the target's
    LiRA, over the target's members, with Spearman's R."""
    members = data.samples["member"].to_numpy(dtype=bool)
    cm = data.samples["counterfactual"].to_numpy(dtype=np.float64)[members]
    llr = data.samples["lira"].to_numpy(dtype=np.float64)[members]
    flags = data.samples["memorized"].to_numpy(dtype=bool)[members]
    keep = np.isfinite(cm) & np.isfinite(llr)
    x, y = average_ranks(llr[keep]), average_ranks(cm[keep])
    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(x[~flags[keep]], y[~flags[keep]], s=7, color="C0", alpha=0.5, lw=0, label="not memorized", gid="others")
    ax.scatter(x[flags[keep]], y[flags[keep]], s=9, color="C3", alpha=0.8, lw=0, label="memorized", gid="memorized")
    ax.set(xlabel="rank of LiRA (target)", ylabel="rank of counterfactual memorization (population)")
    ax.set_title(f"Two definitions of memorization: Spearman R = {spearman(llr[keep], cm[keep]):.3f}")
    ax.legend(loc="upper left")
    return fig


_ATTACK_STYLE = {"lira_online": ("C3", "o-"), "lira_offline": ("C1", "s--"), "rmia_online": ("C0", "^-"),
                 "rmia_offline": ("C2", "v--")}  # fmt: skip


@styled
def shadow_curve_figure(data: AggregateOutputs) -> Figure:
    """How many shadows an audit needs: overlap (mean ± std over draws) of each attack's memorized set with k shadows
    against the all-shadows LiRA-online set, log-scaled k, with what k shadows cost on top when it is known."""
    curve, facts = data.shadow_curve, data.summary["shadow_curve"]
    fig = Figure(figsize=(6.6, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for attack, rows in curve.groupby("attack", sort=False):
        stats = rows.groupby("k")["overlap"].agg(["mean", "std"]).fillna(0.0)
        color, style = _ATTACK_STYLE.get(str(attack), ("k", "o-"))
        bars = ax.errorbar(stats.index.to_numpy(dtype=float), stats["mean"].to_numpy(), yerr=stats["std"].to_numpy(),
                           fmt=style, color=color, capsize=3, label=attack)  # fmt: skip
        bars.lines[0].set_gid(str(attack))
    ax.axhline(facts["goal"], color="k", ls=":", lw=1.0, label=f"{facts['goal']:.0%} overlap")
    ks = facts["ks"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="shadows used (k, besides the target)", ylabel="share of the all-shadows set recovered",
           ylim=(0, 1.05))  # fmt: skip
    if data.shadow_cost is not None:
        device, hours = data.shadow_cost
        top = ax.secondary_xaxis("top")
        top.set_xticks(ks, [f"{k * hours:.2g}" for k in ks])
        top.set_xlabel(f"device-hours on {device}")
    ax.set_title(f"Shadows needed: overlap with the {facts['reference']}")
    ax.legend(loc="lower right")
    return fig


FIGURES: dict[str, tuple[Callable[[AggregateOutputs], Figure], str]] = {
    "roc": (
        roc_figure,
        "ROC of each predictor of memorization on the target at c_pred (higher and further left is better; the "
        "dotted diagonal is chance). The × is P-SMI off the shelf: memorized iff P-SMI < 0 at its layer.",
    ),
    "lira_histogram": (
        lira_histogram_figure,
        "Distribution of the target members' LiRA scores at the end of training; samples right of the red line "
        "count as memorized (the ground truth the predictors are scored against).",
    ),
    "lira_checkpoints": (
        lira_checkpoints_figure,
        "The target members' LiRA score at each checkpoint (against the other models at the end of training); red: "
        "members memorized at the end. Memorization shows as the red mass moving right.",
    ),
    "timeline": (
        timeline_figure,
        "How well each predictor does when computed at each checkpoint (lower is better), with the median training "
        "loss of the target's members; c_pred is the first checkpoint whose median loss fell below the set share of "
        "the initial one.",
    ),
    "layers": (
        layers_figure,
        "P-SMI of each layer's hidden states at c_pred (lower is better); the band is the spread over all models "
        "as the target, the dashed line is the loss.",
    ),
    "quantile": (
        quantile_figure,
        'How well each predictor does when "memorized" means the top 1 % … 50 % of the members by LiRA (lower is '
        "better); the dotted line is this run's definition.",
    ),
    "dynamics": (
        dynamics_figure,
        "Hard samples (memorized at the end, red) and easy ones (blue) along training: median and 25–75 % band of "
        "P-SMI at the best layer, LiRA and loss. P-SMI separates them early, before the loss does.",
    ),
    "counterfactual": (
        counterfactual_figure,
        "Each member's rank by LiRA (the target against the shadows) and by counterfactual memorization (the "
        "population's logit gap when trained on it minus when not); Spearman's R measures their agreement.",
    ),
    "label_noise": (
        label_noise_figure,
        "Left: share of members memorized among those trained with their true label, a random label, or a wrong "
        "label (counts on the bars). Right: P-SMI at the best layer of memorized and other members.",
    ),
    "shadow_curve": (
        shadow_curve_figure,
        "How many shadows the ground truth needs: for k shadows drawn at random (mean ± std over draws), the share of "
        "the memorized set of LiRA online with every shadow that each attack recovers; above the dotted line the "
        "set has stopped changing much. The top axis is what k shadows cost, where the run's device is known.",
    ),
    "all_models": (
        all_models_figure,
        "Each model of the population taken as the target in turn: mean ± std of each predictor's FPR@TPR and AUC "
        "(dots and bars), and the reported target (×).",
    ),
}
