"""The plot stage (docs/design.md §2.6): the aggregate's outputs → one PNG per figure and a self-contained HTML page.

Outputs in ``output_dir``, each written atomically: ``<figure>.png`` for every figure of :mod:`memaudit.report.figures`
and ``report.html``, which embeds them as ``data:`` URIs with inline CSS and no external reference, so it renders
inside KFP's sandboxed iframe and as an MLflow artifact. Same inputs → byte-identical files.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from memaudit.config import ExperimentConfig
from memaudit.metrics import METRICS, Predictor
from memaudit.report.figures import FIGURES, png_bytes
from memaudit.report.outputs import AggregateOutputs, load_aggregate, pretty_name
from memaudit.store.atomic import write_bytes

REPORT = "report.html"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #1d1d1f; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th { background: #f4f4f6; } td:first-child, th:first-child { text-align: left; }
tr.headline td { font-weight: 600; } .facts td { text-align: left; }
figure { margin: 1.4em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #444; max-width: 900px; } .note { color: #555; font-size: 0.9em; }
#at-risk th { cursor: pointer; user-select: none; } #at-risk td, .predictors td { white-space: nowrap; }
#at-risk th[data-key=prompt] { text-align: left; }
#at-risk td.text { white-space: normal; text-align: left; min-width: 24em; }
#at-risk th[aria-sort=ascending]::after { content: " ▲"; } #at-risk th[aria-sort=descending]::after { content: " ▼"; }
"""

# Sorts the at-risk table on a header click (numbers as numbers, a second click reverses) and filters its rows.
_AT_RISK_SCRIPT = """
(() => {
  const table = document.getElementById("at-risk"), body = table.tBodies[0];
  const heads = [...table.tHead.rows[0].cells], filter = document.getElementById("at-risk-filter");
  const isNumber = (x) => x !== "" && !isNaN(x);
  heads.forEach((th, i) => th.addEventListener("click", () => {
    const up = th.getAttribute("aria-sort") !== "ascending";
    heads.forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    const key = (row) => row.cells[i].dataset.value;
    const rows = [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      const order = isNumber(x) && isNumber(y) ? x - y : x.localeCompare(y);
      return up ? order : -order;
    });
    body.append(...rows);
  }));
  filter.addEventListener("input", () => {
    const text = filter.value.toLowerCase();
    for (const row of body.rows) row.hidden = !row.textContent.toLowerCase().includes(text);
  });
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# nothing loads from anywhere; only this page's own stylesheet and at-risk script run (by hash), images are inline
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; img-src data:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_AT_RISK_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)
EXCERPT = 100  # characters of a prompt shown in the at-risk table (the whole prompt on hover)

_HOW_TO_READ = (
    "Each training sample of the target model gets a memorization score: the ground truth's attack (LiRA, or RMIA "
    "when chosen) compares the target's confidence on "
    "the sample with the confidences of shadow models that did or did not train on it. Training samples whose "
    "score passes the memorized threshold ({rule}) count as memorized: the ground truth. The predictors try to tell, "
    "early in training (at checkpoint c_pred), which samples will end up memorized; P-SMI needs only the target's "
    "own hidden states, while the ground truth needs the whole shadow population. A predictor is good when its "
    "FPR at TPR = {tpr:g} is low: to catch {pct:g} % of the memorized samples it wrongly flags that share of the "
    "others (a random guess flags {pct:g} %). AUC is 1 for a perfect ranking and 0.5 for chance. The last columns "
    "repeat the evaluation with every model of the population as the target in turn: a small spread means the "
    "result does not hinge on the one target."
)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return '<td data-value="">n/a</td>'
    return f'<td data-value="{value!r}">{value:.{digits}f}</td>'


def _spread(entry: dict[str, float] | None, digits: int = 4) -> str:
    if entry is None:
        return '<td data-mean="" data-std="">n/a</td>'
    mean, std = entry["mean"], entry["std"]
    return f'<td data-mean="{mean!r}" data-std="{std!r}">{mean:.{digits}f} ± {std:.{digits}f}</td>'


def _predictor_table(data: AggregateOutputs) -> str:
    tpr, headline = data.tpr_target, set(data.headline())
    head = (
        f"<tr><th>predictor</th><th>FPR@TPR={tpr:g}</th><th>AUC</th><th>TPR@1% FPR</th><th>TPR@0.1% FPR</th>"
        f"<th>all models: FPR@TPR={tpr:g}</th><th>all models: AUC</th><th>all models: TPR@1% FPR</th>"
        "<th>all models: TPR@0.1% FPR</th><th>models</th></tr>"
    )
    rows = []
    for name, entry in data.summary["predictors"].items():
        own, spread = entry["target"] or {}, entry["all_models"]
        cells = "".join(_number(own.get(key)) for key in METRICS)
        cells += "".join(_spread(spread.get(key)) for key in METRICS)
        css = ' class="headline"' if name in headline else ""
        per_layer = Predictor.parse(name).layer is not None
        label = html.escape(pretty_name(name)) + (" ★" if name in headline and per_layer else "")
        rows.append(
            f'<tr{css} data-predictor="{html.escape(name)}"><td>{label}</td>{cells}'
            f"<td>{int(spread['n_models'])}</td></tr>"
        )
    return f'<table class="predictors">{head}{"".join(rows)}</table>'


def at_risk(data: AggregateOutputs) -> pd.DataFrame:
    """The target's members that are memorized or among the K most at risk by P-SMI at the best layer (K = the
    number memorized), most at risk first; ``rank`` 1 is the most at risk of all members (no value: last)."""
    best = data.summary["best_layer"]["predictor"]
    members = data.samples[data.samples["member"].to_numpy(dtype=bool)].copy()
    risk = Predictor.parse(best).sign * members[best].to_numpy(dtype=np.float64)
    order = np.argsort(-np.nan_to_num(risk, nan=-np.inf), kind="stable")
    members["rank"] = np.empty(order.size, dtype=np.int64)
    members.iloc[order, members.columns.get_loc("rank")] = np.arange(1, order.size + 1)
    members["predicted"] = members["rank"] <= int(members["memorized"].sum())
    members["psmi"] = members[best]
    chosen = members[members["memorized"].to_numpy(dtype=bool) | members["predicted"].to_numpy(dtype=bool)]
    return chosen.sort_values("rank")


def _cell(value: object, shown: str, extra: str = "") -> str:
    """A table cell showing ``shown``, sorted by ``value`` (``extra``: more attributes, already escaped)."""
    return f'<td{extra} data-value="{html.escape(str(value))}">{html.escape(shown)}</td>'


def _number_cell(value: float, digits: int) -> str:
    finite = math.isfinite(value)
    return _cell(repr(value) if finite else "", f"{value:.{digits}f}" if finite else "n/a", ' class="n"')


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _at_risk_row(row: pd.Series) -> str:
    prompt = " ".join(str(row["prompt"]).split())
    excerpt = prompt if len(prompt) <= EXCERPT else prompt[: EXCERPT - 1] + "…"
    cells = [
        _cell(int(row["rank"]), str(int(row["rank"]))),
        _cell(int(row["global_index"]), str(int(row["global_index"]))),
        _cell(excerpt, excerpt, f' class="text" title="{html.escape(prompt)}"'),
        _cell(row["label"], str(row["label"])),
        _cell(_yes(row["label_randomized"]), _yes(row["label_randomized"])),
        _cell(_yes(row["memorized"]), _yes(row["memorized"])),
        _cell(_yes(row["predicted"]), _yes(row["predicted"])),
        _number_cell(float(row["lira"]), 3),
        _number_cell(float(row["psmi"]), 4),
    ]
    return f"<tr>{''.join(cells)}</tr>"


def _at_risk_table(data: AggregateOutputs) -> str:
    best = pretty_name(data.summary["best_layer"]["predictor"])
    heads = (("rank", "risk rank"), ("id", "id"), ("prompt", "prompt"), ("label", "trained label"),
             ("noisy", "random label"), ("memorized", "memorized"), ("predicted", "predicted"), ("lira", "LiRA"),
             ("psmi", best))  # fmt: skip
    initial = {"rank": ' aria-sort="ascending"'}  # the rows come most at risk first
    head = "".join(f'<th data-key="{k}"{initial.get(k, "")}>{html.escape(text)}</th>' for k, text in heads)
    rows = "".join(_at_risk_row(row) for _, row in at_risk(data).iterrows())
    return (
        '<p class="note">The memorized members (ground truth) and the members P-SMI ranks most at risk at c_pred, as '
        "many as are memorized. Click a header to sort; type to filter. "
        '<input id="at-risk-filter" type="search" placeholder="filter rows" aria-label="filter rows"></p>'
        f'<table id="at-risk"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        f"<script>{_AT_RISK_SCRIPT}</script>"
    )


def _share(value: float | None, count: int | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1%}" + (f" of {count}" if count is not None else "")


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _facts(cfg: ExperimentConfig, data: AggregateOutputs) -> list[tuple[str, str]]:
    s = data.summary
    c, best, ots, enrich = s["c_pred"], s["best_layer"], s["off_the_shelf"], s["enrichment"]
    return [
        ("dataset", cfg.dataset.name),
        ("model", cfg.model.name),
        ("preset", cfg.preset or "none"),
        ("fingerprint", s["fingerprint"]),
        ("evaluation fingerprint", s["evaluation_fingerprint"]),
        ("target model", str(s["target"])),
        ("shadow models (besides the target)", str(s["n_shadows_used"])),
        ("missing shadows (failed, left out)", ", ".join(map(str, s.get("missing_shadows", []))) or "none"),
        (
            "ground truth",
            f"{s['ground_truth']['label']}; memorized rule {s['memorized_rule']} "
            f"(score ≥ {data.memorized_threshold:.4g})",
        ),
        (
            "shadows for 90% of the set",
            ", ".join(f"{a} {k or 'more than all'}" for a, k in s["shadow_curve"]["smallest_k"].items()),
        ),
        ("prediction checkpoint c_pred", f"step {c['step']}, epoch {c['epoch']:g} ({c['rule']})"),
        ("best P-SMI layer", f"{best['layer']} (FPR@TPR={data.tpr_target:g}: {_fraction(best['fpr_at_tpr'])})"),
        ("memorized", f"{s['n_memorized']} of {s['n_members']} target members ({s['share_memorized']:.1%})"),
        ("memorized among random-label members", _share(enrich["share_memorized_noisy"], enrich["n_noisy_members"])),
        (
            "memorized among true-label members",
            _share(enrich["share_memorized_clean"], s["n_members"] - enrich["n_noisy_members"]),
        ),
        ("memorized among wrong-label members", _share(enrich["share_memorized_wrong"], enrich["n_wrong_members"])),
        ("off-the-shelf: P-SMI < 0", f"layer {ots['layer']}: FPR {ots['fpr']:.4f}, TPR {ots['tpr']:.4f}"),
    ]


def _rule_text(cfg: ExperimentConfig) -> str:
    ev = cfg.evaluation
    if ev.memorized_rule == "threshold":
        return f"a log-likelihood ratio of at least {ev.memorized_threshold:g}"
    return f"the top {ev.memorized_fraction:.0%} of the target's training samples"


def build_html(cfg: ExperimentConfig, data: AggregateOutputs, figures: dict[str, tuple[bytes, str]]) -> str:
    """The report page: facts, how to read it, the predictor table and every figure (PNG bytes, caption)."""
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _facts(cfg, data))
    blocks = []
    for name, (png, caption) in figures.items():
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        blocks.append(
            f'<figure id="fig-{name}"><img src="{uri}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    tpr = data.tpr_target
    how_to_read = _HOW_TO_READ.format(tpr=tpr, pct=100 * tpr, rule=_rule_text(cfg))
    title = f"memaudit report: {cfg.dataset.name} / {cfg.model.name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        '<p class="note">Memorization audit after Dentan et al., "Predicting and analysing memorization within '
        'fine-tuned LLMs" (2024): LiRA over a shadow population as ground truth, P-SMI as the early predictor.</p>'
        f"<h2>How to read this</h2><p>{html.escape(how_to_read)}</p>"
        f'<h2>Run</h2><table class="facts">{facts}</table>'
        f"<h2>Predictors at c_pred</h2>{_predictor_table(data)}"
        '<p class="note">★ best layer on the target. Mean ± std over models: each model of the population as the '
        "target, against the others (leave-one-out), at the same checkpoint and layer.</p>"
        f"<h2>Samples at risk</h2>{_at_risk_table(data)}"
        f"<h2>Figures</h2>{''.join(blocks)}</body></html>\n"
    )


def render_report(
    cfg: ExperimentConfig,
    aggregate_dir: str | Path,
    output_dir: str | Path,
    shadow_cost: tuple[str, float] | None = None,
) -> dict[str, Path]:
    """Render every figure and ``report.html`` from the aggregate outputs; returns {"html": path, <figure>: path}.
    ``shadow_cost``: (device, device-hours of one shadow), the shadow curve's top axis."""
    data = dataclasses.replace(load_aggregate(cfg, aggregate_dir), shadow_cost=shadow_cost)
    rendered = {name: (png_bytes(make(data)), caption) for name, (make, caption) in FIGURES.items()}
    page = build_html(cfg, data, rendered).encode("utf-8")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / REPORT}
    for name, (png, _) in rendered.items():
        paths[name] = out / f"{name}.png"
        write_bytes(paths[name], png)
    write_bytes(paths["html"], page)
    return paths
