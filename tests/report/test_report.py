import base64
import dataclasses
import hashlib
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.errors import MemauditError
from memaudit.metrics import METRICS
from memaudit.report.figures import (
    FIGURES,
    QUANTILES,
    all_models_figure,
    counterfactual_figure,
    dynamics_figure,
    fpr_by_quantile,
    label_noise_figure,
    layers_figure,
    lira_checkpoints_figure,
    lira_histogram_figure,
    png_bytes,
    quantile_figure,
    roc_figure,
    shadow_curve_figure,
    timeline_figure,
)
from memaudit.report.html import at_risk, render_report
from memaudit.report.outputs import load_aggregate
from memaudit.stages.aggregate import aggregate
from memaudit.testing import write_synthetic_scores

LAYERS = (1, 2, 3)


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    """Aggregate outputs of a small synthetic population with planted memorization (the demo preset's rules)."""
    root = tmp_path_factory.mktemp("population")
    synthetic = write_synthetic_scores(
        root / "scores", n_models=12, n_samples=300, n_checkpoints=6, layers=LAYERS, label_noise=0.08, seed=5
    )
    cfg = load_config(preset="demo")
    aggregate(cfg, synthetic.paths, synthetic.pool, root / "aggregate", progress=False)
    return cfg, root / "aggregate"


@pytest.fixture(scope="module")
def rendered(aggregated, tmp_path_factory):
    cfg, folder = aggregated
    paths = render_report(cfg, folder, tmp_path_factory.mktemp("report"))
    return paths, load_aggregate(cfg, folder)


class _Page(HTMLParser):
    """Every tag with its attributes, and every table row as (table class, row attributes, cells); a cell is its
    attributes plus its text under "text"."""

    def __init__(self):
        super().__init__()
        self.tags, self.table_rows = [], []
        self._table, self._cells, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("class") or attrs.get("id")
        elif tag == "tr":
            self._cells = []
            self.table_rows.append((self._table, attrs, self._cells))
        elif tag in ("td", "th"):
            self._cell = {**attrs, "text": ""}
            self._cells.append(self._cell)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    @property
    def rows(self) -> dict[str, list[dict]]:
        """The predictor table: predictor name → its cells."""
        return {attrs["data-predictor"]: cells for table, attrs, cells in self.table_rows if "data-predictor" in attrs}

    @property
    def facts(self) -> dict[str, str]:
        return {cells[0]["text"]: cells[1]["text"] for table, _, cells in self.table_rows if table == "facts"}


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _png_size(blob: bytes) -> tuple[int, int]:
    assert blob.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(blob)) as image:
        image.verify()
    with Image.open(io.BytesIO(blob)) as image:
        image.load()
        return image.size


def _by_gid(fig, gid):
    found = [a for a in fig.findobj() if a.get_gid() == gid]
    assert found, f"no artist with gid {gid!r}"
    return found


def test_html_is_self_contained_and_embeds_every_figure(rendered):
    paths, _ = rendered
    assert set(paths) == {"html", *FIGURES}
    page = _parse(paths["html"])
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(FIGURES)
    on_disk = {paths[name].read_bytes() for name in FIGURES}
    for src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        blob = base64.b64decode(src[len(prefix) :], validate=True)
        width, height = _png_size(blob)
        assert 400 <= width <= 2000 and 300 <= height <= 2000
        assert blob in on_disk
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{}]  # the at-risk table's few inline lines
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed")
        for key in ("src", "href", "srcset", "action"):
            assert key not in attrs or attrs[key].startswith("data:"), (tag, attrs)
    text = paths["html"].read_text().replace('http-equiv="Content-Security-Policy"', "")
    assert "url(" not in text and "@import" not in text and "http" not in text


def test_the_content_security_policy_admits_only_the_pages_own_script_and_stylesheet(rendered):
    paths, _ = rendered
    text = paths["html"].read_text()
    (policy,) = [
        a["content"] for t, a in _parse(paths["html"]).tags if a.get("http-equiv") == "Content-Security-Policy"
    ]
    rules = dict(rule.strip().split(" ", 1) for rule in policy.split(";"))

    def digest(inline: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode() + "'"

    script = text.split("<script>", 1)[1].split("</script>", 1)[0]
    style = text.split("<style>", 1)[1].split("</style>", 1)[0]
    assert rules["script-src"] == digest(script) and rules["style-src"] == digest(style)
    assert rules["default-src"] == "'none'" and rules["img-src"] == "data:" and rules["base-uri"] == "'none'"
    assert text.count("<script>") == 1 and " style=" not in text and " on" + "click=" not in text


def test_every_figure_file_decodes_and_matches_a_fresh_rendering(rendered):
    paths, data = rendered
    for name, (make, caption) in FIGURES.items():
        blob = paths[name].read_bytes()
        width, height = _png_size(blob)
        assert width >= 400 and height >= 300 and caption
        assert png_bytes(make(data)) == blob
        assert b"matplotlib" not in blob.lower()  # no Software tag or other metadata


def test_table_numbers_equal_the_summary(rendered, aggregated):
    paths, _ = rendered
    summary = json.loads((aggregated[1] / "summary.json").read_text())
    page = _parse(paths["html"])
    assert list(page.rows) == list(summary["predictors"])
    for name, cells in page.rows.items():
        entry = summary["predictors"][name]
        own, spread = cells[1:5], cells[5:9]
        for key, cell in zip(METRICS, own, strict=True):
            expected = entry["target"][key]
            assert float(cell["data-value"]) == expected
            assert abs(float(cell["text"]) - expected) <= 5e-5
        for key, cell in zip(METRICS, spread, strict=True):
            mean, std = (float(x) for x in cell["text"].split(" ± "))
            assert float(cell["data-mean"]) == entry["all_models"][key]["mean"]
            assert float(cell["data-std"]) == entry["all_models"][key]["std"]
            assert abs(mean - entry["all_models"][key]["mean"]) <= 5e-5
            assert abs(std - entry["all_models"][key]["std"]) <= 5e-5
        assert int(cells[9]["text"]) == entry["all_models"]["n_models"] == 12
    facts = page.facts
    assert facts["fingerprint"] == summary["fingerprint"]
    assert facts["evaluation fingerprint"] == summary["evaluation_fingerprint"]
    assert facts["dataset"] == "synthetic" and facts["preset"] == "demo"
    assert facts["shadow models (besides the target)"] == "11"
    c = summary["c_pred"]
    assert facts["prediction checkpoint c_pred"].startswith(f"step {c['step']}, epoch {c['epoch']:g}")
    assert facts["best P-SMI layer"].startswith(f"{summary['best_layer']['layer']} ")
    assert f"({summary['share_memorized']:.1%})" in facts["memorized"]
    enrich = summary["enrichment"]
    noisy = f"{enrich['share_memorized_noisy']:.1%} of {enrich['n_noisy_members']}"
    assert facts["memorized among random-label members"] == noisy


def test_roc_figure_draws_each_predictors_curve(rendered):
    _, data = rendered
    s = data.summary
    best = s["best_layer"]["layer"]  # Mahalanobis is shown at P-SMI's best layer, as the paper's appendix table
    expected = [f"psmi_L{best}", "loss", "logit_gap", f"mahalanobis_L{best}", "early_lira"]
    fig = roc_figure(data)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for name in expected:
        curve = data.roc[data.roc["predictor"] == name]
        (line,) = _by_gid(fig, name)
        np.testing.assert_array_equal(line.get_xdata(), curve["fpr"].to_numpy())
        np.testing.assert_array_equal(line.get_ydata(), curve["tpr"].to_numpy())
        numbers = s["predictors"][name]["target"]
        assert f"{numbers['fpr_at_tpr']:.3f}, AUC {numbers['auc']:.3f}" in line.get_label()
        assert line.get_label() in legend
    (cross,) = _by_gid(fig, "off_the_shelf")
    assert (cross.get_xdata()[0], cross.get_ydata()[0]) == (s["off_the_shelf"]["fpr"], s["off_the_shelf"]["tpr"])
    assert cross.get_marker() == "x"
    (chance,) = _by_gid(fig, "chance")
    assert list(chance.get_xdata()) == list(chance.get_ydata()) == [0, 1]


def test_histogram_threshold_sits_at_the_memorized_threshold(rendered):
    _, data = rendered
    samples = data.samples
    members = samples["member"].to_numpy()
    llr = samples["lira"].to_numpy()[members]
    threshold = np.quantile(llr, 0.9)  # demo preset: top 10 % of the target's members
    np.testing.assert_array_equal(llr >= threshold, samples["memorized"].to_numpy()[members])
    fig = lira_histogram_figure(data)
    (line,) = _by_gid(fig, "threshold")
    assert line.get_xdata()[0] == threshold == data.memorized_threshold
    bars = _by_gid(fig, "lira")
    assert sum(bar.get_height() for bar in bars) == members.sum()
    assert f"{data.summary['share_memorized']:.1%}" in fig.axes[0].get_title()


def test_timeline_and_layer_figures_plot_the_stored_numbers(rendered):
    _, data = rendered
    s, t = data.summary, data.timeline
    fig = timeline_figure(data)
    for name in (s["best_layer"]["predictor"], "loss", "logit_gap"):
        rows = t[t["predictor"] == name].sort_values("epoch")
        (line,) = _by_gid(fig, name)
        np.testing.assert_array_equal(line.get_xdata(), rows["epoch"].to_numpy())
        np.testing.assert_array_equal(line.get_ydata(), rows["fpr_at_tpr"].to_numpy())
    (loss,) = _by_gid(fig, "median_member_loss")
    np.testing.assert_allclose(loss.get_ydata(), s["c_pred"]["median_member_loss"], rtol=1e-12)
    (c_pred,) = _by_gid(fig, "c_pred")
    assert c_pred.get_xdata()[0] == s["c_pred"]["epoch"]
    (level,) = _by_gid(fig, "c_pred_level")  # the demo preset's rule: below 5 % of the first checkpoint's median
    assert level.get_ydata()[0] == 0.05 * s["c_pred"]["median_member_loss"][0]
    medians = np.array(s["c_pred"]["median_member_loss"])
    assert medians[s["c_pred"]["index"]] < level.get_ydata()[0] <= medians[: s["c_pred"]["index"]].min()

    fig = layers_figure(data)
    (psmi,) = _by_gid(fig, "psmi")
    assert list(psmi.get_xdata()) == list(LAYERS)
    expected = [s["predictors"][f"psmi_L{layer}"]["target"]["fpr_at_tpr"] for layer in LAYERS]
    assert list(psmi.get_ydata()) == expected
    (loss_ref,) = _by_gid(fig, "loss")
    assert loss_ref.get_ydata()[0] == s["predictors"]["loss"]["target"]["fpr_at_tpr"]
    assert loss_ref.get_linestyle() == "--"
    (best,) = _by_gid(fig, "best_layer")
    assert best.get_xdata()[0] == s["best_layer"]["layer"] == LAYERS[int(np.argmin(expected))]


def test_label_noise_and_all_models_figures(rendered):
    _, data = rendered
    s, samples = data.summary, data.samples
    members = samples[samples["member"]]
    randomized = members["label_randomized"].to_numpy()
    assert 0 < randomized.sum() < len(members)
    fig = label_noise_figure(data)
    bars = _by_gid(fig, "share_memorized")
    heights = [bar.get_height() for bar in bars[:2]]
    assert heights == [s["enrichment"]["share_memorized_clean"], s["enrichment"]["share_memorized_noisy"]]
    assert heights[1] == members["memorized"][randomized].mean()
    counts = [t.get_text() for t in fig.axes[0].texts]
    assert counts[1] == f"{members['memorized'][randomized].sum()} / {randomized.sum()}"
    histograms = {gid: _by_gid(fig, gid) for gid in ("memorized", "not_memorized")}
    assert all(histograms.values())

    fig = all_models_figure(data)
    names = data.headline()
    for key in ("fpr_at_tpr", "auc"):
        (mean_line,) = _by_gid(fig, f"{key}_mean")
        means = [s["predictors"][n]["all_models"][key]["mean"] for n in names]
        stds = [s["predictors"][n]["all_models"][key]["std"] for n in names]
        np.testing.assert_array_equal(mean_line.get_xdata(), means)
        (errors,) = _by_gid(fig, f"{key}_std")
        spans = np.array([[seg[0][0], seg[1][0]] for seg in errors.get_segments()])
        np.testing.assert_allclose(spans, np.c_[np.subtract(means, stds), np.add(means, stds)], rtol=1e-12)
        (own,) = _by_gid(fig, f"{key}_target")
        np.testing.assert_array_equal(own.get_xdata(), [s["predictors"][n]["target"][key] for n in names])


def test_quantile_figure_recomputes_fpr_for_each_definition_of_memorized(rendered):
    _, data = rendered
    members = data.samples[data.samples["member"]]
    llr = members["lira"].to_numpy()
    by_quantile = fpr_by_quantile(data)
    assert list(by_quantile) == data.headline()
    q = QUANTILES.index(0.1)  # the demo preset's own rule: the numbers of summary.json
    for name, values in by_quantile.items():
        assert values[q] == data.target_numbers(name)["fpr_at_tpr"]
    # by hand at 20 %: the flags of the top fifth by LiRA, the loss ranked high = memorized
    flags = llr >= np.quantile(llr, 0.8)
    loss = members["loss"].to_numpy()
    threshold_rank = np.sort(loss[flags])[::-1][int(np.floor(0.75 * flags.sum()))]  # first point with TPR > 0.75
    expected = (loss[~flags] >= threshold_rank).mean()
    assert by_quantile["loss"][QUANTILES.index(0.2)] == pytest.approx(expected)
    fig = quantile_figure(data)
    (line,) = _by_gid(fig, "loss")
    np.testing.assert_allclose(line.get_xdata(), 100 * np.array(QUANTILES))
    (mark,) = _by_gid(fig, "this_run")
    assert mark.get_xdata()[0] == pytest.approx(100 * data.summary["share_memorized"])


def test_shadow_curve_figure_plots_the_mean_overlap_per_attack_and_the_cost_of_k_shadows(rendered):
    _, data = rendered
    curve, ks = data.shadow_curve, data.summary["shadow_curve"]["ks"]
    fig = shadow_curve_figure(dataclasses.replace(data, shadow_cost=("2 CPU cores (measured)", 0.5)))
    for attack, rows in curve.groupby("attack"):
        (line,) = _by_gid(fig, attack)
        means = rows.groupby("k")["overlap"].mean()
        np.testing.assert_allclose(line.get_xdata(), means.index)
        np.testing.assert_allclose(line.get_ydata(), means.to_numpy())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in ks] and ax.get_xscale() == "log"
    top = next(a for a in fig.axes[0].child_axes)
    assert top.get_xlabel() == "device-hours on 2 CPU cores (measured)"
    assert [t.get_text() for t in top.get_xticklabels()] == [f"{k * 0.5:.2g}" for k in ks]
    assert not shadow_curve_figure(data).axes[0].child_axes  # no cost known: no top axis


def test_dynamics_output_and_its_figures(rendered):
    _, data = rendered
    d, s, samples = data.dynamics, data.summary, data.samples
    members = np.flatnonzero(samples["member"].to_numpy())
    assert len(d) == members.size * d["checkpoint"].nunique() == members.size * len(s["c_pred"]["median_member_loss"])
    final = d[d["checkpoint"] == d["checkpoint"].max()].set_index("sample")
    np.testing.assert_allclose(final.loc[members, "lira"], samples["lira"].to_numpy()[members], rtol=1e-12)
    at_c = d[d["checkpoint"] == s["c_pred"]["step"]].set_index("sample")
    np.testing.assert_allclose(at_c.loc[members, "psmi"], samples[s["best_layer"]["predictor"]].to_numpy()[members],
                               rtol=1e-6)  # fmt: skip
    medians = d.groupby("checkpoint")["loss"].median().to_numpy()
    np.testing.assert_allclose(medians, s["c_pred"]["median_member_loss"], rtol=1e-6)

    fig = lira_checkpoints_figure(data)
    panels = [a for a in fig.axes if a.get_visible()]
    assert len(panels) == d["checkpoint"].nunique()  # six checkpoints: every one has its panel
    last = _by_gid(fig, f"lira-{d['checkpoint'].max()}")
    assert sum(bar.get_height() for bar in last) == members.size
    (threshold,) = _by_gid(fig, "threshold")
    assert threshold.get_xdata()[0] == data.memorized_threshold

    fig = dynamics_figure(data)
    hard = samples["memorized"].to_numpy()[d["sample"].to_numpy()]
    (line,) = _by_gid(fig, "hard_lira")
    expected = d[hard].groupby("epoch")["lira"].median()
    np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())
    np.testing.assert_allclose(line.get_xdata(), expected.index.to_numpy())
    assert _by_gid(fig, "easy_psmi_iqr") and _by_gid(fig, "c_pred_loss")


def test_counterfactual_figure_reports_spearman_of_the_ranks(rendered):
    _, data = rendered
    from scipy.stats import spearmanr

    members = data.samples[data.samples["member"]]
    finite = members[np.isfinite(members["counterfactual"]) & np.isfinite(members["lira"])]
    assert len(finite) > 0 and members["counterfactual"].isna().any()  # a sample no model left out has none
    fig = counterfactual_figure(data)
    expected = spearmanr(finite["lira"], finite["counterfactual"]).statistic
    assert f"Spearman R = {expected:.3f}" in fig.axes[0].get_title()
    points = sum(len(c.get_offsets()) for c in _by_gid(fig, "memorized") + _by_gid(fig, "others"))
    assert points == len(finite)


def test_at_risk_table_lists_the_memorized_and_the_top_predicted(rendered):
    paths, data = rendered
    s = data.summary
    table = at_risk(data)
    members = data.samples[data.samples["member"]]
    k = int(members["memorized"].sum())
    psmi = members[s["best_layer"]["predictor"]].to_numpy()
    top = set(members["global_index"].to_numpy()[np.argsort(psmi, kind="stable")[:k]])  # lowest P-SMI: most at risk
    memorized_ids = set(members["global_index"][members["memorized"]])
    assert set(table["global_index"]) == top | memorized_ids
    assert set(table.loc[table["predicted"], "global_index"]) == top
    assert list(table["rank"]) == sorted(table["rank"]) and table["rank"].iloc[0] == 1
    page = _parse(paths["html"])
    rows = [cells for name, _, cells in page.table_rows if name == "at-risk"]
    head, body = rows[0], rows[1:]
    assert [c["data-key"] for c in head] == ["rank", "id", "prompt", "label", "noisy", "memorized", "predicted",
                                             "lira", "psmi"]  # fmt: skip
    assert head[0]["aria-sort"] == "ascending" and len(body) == len(table)
    assert all("data-value" in c for row in body for c in row)
    first = table.iloc[0]
    assert body[0][1]["text"] == str(first["global_index"]) and float(body[0][8]["data-value"]) == first["psmi"]
    assert body[0][2]["title"].startswith(" ".join(first["prompt"].split())[:40])
    assert any(tag == "input" and attrs.get("id") == "at-risk-filter" for tag, attrs in page.tags)


def test_a_prompt_with_markup_is_escaped_in_the_at_risk_table(aggregated, tmp_path):
    cfg, folder = aggregated
    copy = tmp_path / "aggregate"
    shutil.copytree(folder, copy)
    samples = pd.read_parquet(copy / "samples.parquet")
    memorized = samples.index[samples["memorized"]][0]
    samples.loc[memorized, "prompt"] = 'Q: <script>alert("x")</script> & "quotes" ' + "long " * 40
    samples.to_parquet(copy / "samples.parquet")
    text = render_report(cfg, copy, tmp_path / "report")["html"].read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in text
    cell = next(c for n, _, cells in _parse(tmp_path / "report" / "report.html").table_rows if n == "at-risk"
                for c in cells if c.get("title", "").startswith("Q: <script>"))  # fmt: skip
    assert cell["text"].endswith("…") and len(cell["text"]) == 100


def test_same_inputs_give_byte_identical_outputs(rendered, aggregated, tmp_path):
    paths, _ = rendered
    again = render_report(*aggregated, tmp_path)
    for name, path in paths.items():
        assert again[name].read_bytes() == path.read_bytes(), name


def test_other_rules_without_mahalanobis_or_label_noise(tmp_path):
    synthetic = write_synthetic_scores(
        tmp_path / "scores", n_models=6, n_samples=160, n_checkpoints=4, layers=(2,), label_noise=0.0,
        with_mahalanobis=False, seed=8,
    )  # fmt: skip
    rules = ["evaluation.memorized_rule=threshold", "evaluation.memorized_threshold=3", "evaluation.c_pred=40"]
    cfg = load_config(overrides=rules)
    aggregate(cfg, synthetic.paths, synthetic.pool, tmp_path / "aggregate", progress=False)
    paths = render_report(cfg, tmp_path / "aggregate", tmp_path / "report")
    data = load_aggregate(cfg, tmp_path / "aggregate")
    assert data.memorized_threshold == 3.0 and data.c_pred_level is None
    assert not [a for a in timeline_figure(data).findobj() if a.get_gid() == "c_pred_level"]
    assert data.headline() == ["psmi_L2", "loss", "logit_gap", "early_lira"]
    assert [bar.get_height() for bar in _by_gid(label_noise_figure(data), "share_memorized")] == [
        data.summary["share_memorized"]
    ]
    facts = _parse(paths["html"]).facts
    assert facts["memorized among random-label members"] == "n/a"
    assert "a log-likelihood ratio of at least 3" in paths["html"].read_text()


def _corrupt_summary(folder):
    (folder / "summary.json").write_text('{"fingerprint": ')


def _drop_column(folder):
    pd.read_parquet(folder / "timeline.parquet").drop(columns="fpr_at_tpr").to_parquet(folder / "timeline.parquet")


def _other_run_flags(folder):
    samples = pd.read_parquet(folder / "samples.parquet")
    samples.loc[samples.index[samples["member"]][:3], "memorized"] ^= True
    samples.to_parquet(folder / "samples.parquet")


def _other_run_dynamics(folder):
    dynamics = pd.read_parquet(folder / "dynamics.parquet")
    dynamics["sample"] += 1
    dynamics.to_parquet(folder / "dynamics.parquet")


def _swap_flags(folder):
    samples = pd.read_parquet(folder / "samples.parquet")
    members = samples[samples["member"]]
    first_in, first_out = members.index[members["memorized"]][0], members.index[~members["memorized"]][0]
    samples.loc[[first_in, first_out], "memorized"] = [False, True]
    samples.to_parquet(folder / "samples.parquet")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "roc.parquet").unlink(), "roc.parquet not found"),
        (lambda f: (f / "dynamics.parquet").unlink(), "dynamics.parquet not found"),
        (_other_run_dynamics, "dynamics.parquet and samples.parquet come from different runs"),
        (_corrupt_summary, "summary.json is corrupted"),
        (_drop_column, "timeline.parquet lacks column(s) fpr_at_tpr"),
        (_other_run_flags, "come from different runs"),
        (_swap_flags, "do not follow the config's memorization rule"),
    ],
)
def test_bad_aggregate_outputs(aggregated, tmp_path, damage, message):
    cfg, folder = aggregated
    copy = tmp_path / "aggregate"
    shutil.copytree(folder, copy)
    damage(copy)
    with pytest.raises(MemauditError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        render_report(cfg, copy, tmp_path / "report")
    assert "re-run the aggregate stage" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "report").exists()
    other = load_config(preset="demo", overrides=["evaluation.memorized_fraction=0.2"])
    with pytest.raises(MemauditError, match="evaluation fingerprint"):
        render_report(other, folder, tmp_path / "report")


def test_cli(aggregated, tmp_path, capsys):
    _, folder = aggregated
    out = tmp_path / "report"
    main(["stage", "plot", "--aggregate", str(folder), "--output", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"wrote {out / 'report.html'}", *(f"wrote {out / name}.png" for name in FIGURES)]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    for name, damage in (
        ("summary.json", lambda f: (f / "summary.json").unlink()),
        (
            "samples.parquet",
            lambda f: (f / "samples.parquet").write_bytes((folder / "samples.parquet").read_bytes()[:900]),
        ),
    ):
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(folder, broken)
        damage(broken)
        with pytest.raises(SystemExit) as exit_info:
            main(["stage", "plot", "--aggregate", str(broken), "--output", str(out)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: aggregate output {broken / name}") and "\n" not in err
        assert "re-run the aggregate stage" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier report is intact
