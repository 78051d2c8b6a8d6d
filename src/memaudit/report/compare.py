"""The paper's cross-setup table: audits as rows, their headline numbers (:mod:`memaudit.report.headline`) as
columns, as Markdown, CSV and a small self-contained HTML page with the comparing-predictors bar chart (FPR@TPR of
each predictor, a bar per audit and their mean).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from memaudit.report.figures import png_bytes, styled
from memaudit.report.headline import KINDS, fpr_key
from memaudit.report.outputs import kind_name
from memaudit.store.atomic import write_bytes

COMPARE_CSV, COMPARE_HTML, COMPARE_PNG = "compare.csv", "compare.html", "compare.png"
MEAN_ROW = "mean"
ID_COLUMNS = ("audit", "run_id", "dataset", "model", "preset")
FACT_COLUMNS = {
    "ots_fpr": "off-the-shelf FPR",
    "ots_tpr": "off-the-shelf TPR",
    "c_pred_step": "c_pred (step)",
    "best_layer": "best layer",
    "share_memorized": "memorized",
    "noisy_enrichment": "noisy-label enrichment",
}
_INTEGER = ("c_pred_step", "best_layer")


@dataclass(frozen=True)
class Audit:
    """One audit as tracked: its name and run id, what it audited, its headline metrics."""

    name: str
    run_id: str
    dataset: str
    model: str
    preset: str
    metrics: dict[str, float]


PREDICTOR_COLUMNS = {fpr_key(kind): f"{kind_name(kind)} FPR" for kind in KINDS}  # FPR@TPR, the paper's order


def caption(tpr_target: float | None) -> str:
    """What the predictor columns hold."""
    at = f"TPR = {tpr_target:g}" if tpr_target is not None else "each audit's TPR target"
    return f"Predictor columns: FPR at {at} on each audit's target model at its c_pred (lower is better)."


def compare_table(audits: list[Audit]) -> pd.DataFrame:
    """One row per audit (then their mean when there are several): the predictors' FPR@TPR on each target, the
    off-the-shelf point, c_pred, best layer, share memorized, noisy-label enrichment (NaN where a run lacks one)."""
    columns = {**PREDICTOR_COLUMNS, **FACT_COLUMNS}
    rows = [
        dict(zip(ID_COLUMNS, (a.name, a.run_id, a.dataset, a.model, a.preset), strict=True))
        | {header: a.metrics.get(key, math.nan) for key, header in columns.items()}
        for a in audits
    ]
    table = pd.DataFrame(rows, columns=[*ID_COLUMNS, *columns.values()])
    if len(audits) > 1:
        mean = {"audit": MEAN_ROW} | table[list(columns.values())].mean(numeric_only=True).to_dict()
        table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
    return table


def _text(column: str, value: object) -> str:
    """A cell as text: identifiers as they are (blank when missing), numbers to four decimals (whole numbers for
    steps and layers), ``n/a`` where a run has no value."""
    if column in ID_COLUMNS:
        return "" if pd.isna(value) else str(value)
    if math.isnan(value):
        return "n/a"
    if column in (FACT_COLUMNS[k] for k in _INTEGER):
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return f"{value:.4f}"


def _shown(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c != "run_id"]


def markdown(table: pd.DataFrame, tpr_target: float | None) -> str:
    """The table as GitHub Markdown (numbers right-aligned), then its caption."""
    shown = _shown(table)
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" if c in ID_COLUMNS else "---:" for c in shown) + "|"]
    lines += ["| " + " | ".join(_text(c, row[c]) for c in shown) + " |" for _, row in table.iterrows()]
    return "\n".join([*lines, "", caption(tpr_target)]) + "\n"


@styled
def compare_figure(table: pd.DataFrame, tpr_target: float | None) -> Figure:
    """The comparing-predictors bar chart: FPR@TPR of each predictor, one bar per audit, the mean as a black tick."""
    headers = PREDICTOR_COLUMNS
    audits = table[table["audit"] != MEAN_ROW]
    fig = Figure(figsize=(max(6.4, 1.6 * len(headers) + 0.25 * len(audits)), 4.4), layout="constrained")
    ax = fig.add_subplot()
    x, width = np.arange(len(headers)), 0.8 / max(len(audits), 1)
    for i, (_, row) in enumerate(audits.iterrows()):
        values = row[list(headers.values())].to_numpy(dtype=np.float64)
        bars = ax.bar(x - 0.4 + (i + 0.5) * width, values, width, label=str(row["audit"]))
        for bar, kind in zip(bars, KINDS, strict=True):
            bar.set_gid(f"{kind}/audit-{i}")
    if len(audits) > 1:
        mean = audits[list(headers.values())].mean().to_numpy(dtype=np.float64)
        ax.scatter(x, mean, marker="_", s=900, color="k", zorder=3, label="mean", gid="mean")
    if tpr_target is not None:
        ax.axhline(tpr_target, color="0.5", ls=":", lw=1, gid="chance", label=f"chance (FPR = {tpr_target:g})")
    ax.set_xticks(x, [kind_name(k) for k in KINDS])
    ax.set(ylabel="FPR@TPR" + (f"={tpr_target:g}" if tpr_target is not None else ""), ylim=(0, 1.02))
    ax.set_title("Predictors of memorization across audits (lower is better)")
    ax.legend(loc="upper left", fontsize=7.5, ncols=2 if len(audits) > 6 else 1)
    return fig


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #1d1d1f; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; }
th { background: #f4f4f6; } td { white-space: nowrap; } td.n { text-align: right; } tr.mean td { font-weight: 600; }
img { max-width: 100%; height: auto; } .note { color: #555; font-size: 0.9em; }
"""


_CELL_CLASS = {True: "", False: ' class="n"'}  # numbers right-aligned, never wrapped


def compare_html(table: pd.DataFrame, png: bytes, source: str, tpr_target: float | None) -> str:
    """The page: the bar chart, then the table (run ids in each row's title), self-contained."""
    shown = _shown(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    rows = []
    for _, row in table.iterrows():
        cells = "".join(f"<td{_CELL_CLASS[c in ID_COLUMNS]}>{html.escape(_text(c, row[c]))}</td>" for c in shown)
        css = ' class="mean"' if row["audit"] == MEAN_ROW else ""
        title = "" if pd.isna(row["run_id"]) else f' title="MLflow run {html.escape(str(row["run_id"]))}"'
        rows.append(f"<tr{css}{title}>{cells}</tr>")
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>memaudit: audits compared</title>'
        f"<style>{_CSS}</style></head><body><h1>Audits compared</h1>"
        f'<p class="note">{len(table) - (len(table) > 1)} audit(s) from {html.escape(source)}. '
        f"{html.escape(caption(tpr_target))}</p>"
        f'<figure><img src="{uri}" alt="predictors compared"></figure>'
        f'<table id="compare"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></body></html>\n'
    )


def write_compare(
    table: pd.DataFrame, tpr_target: float | None, output_dir: str | Path, source: str
) -> dict[str, Path]:
    """Write :func:`compare_table`'s ``table`` as ``compare.csv``, ``compare.png`` (the bar chart) and
    ``compare.html`` into ``output_dir``; returns their paths."""
    png = png_bytes(compare_figure(table, tpr_target))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / COMPARE_CSV, "png": out / COMPARE_PNG, "html": out / COMPARE_HTML}
    write_bytes(paths["csv"], table.to_csv(index=False, float_format="%.6g").encode())
    write_bytes(paths["png"], png)
    write_bytes(paths["html"], compare_html(table, png, source, tpr_target).encode())
    return paths
