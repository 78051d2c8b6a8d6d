"""The headline of an audit (short metric names, step series, Markdown) and the cross-setup comparison."""

import math

import pytest

from memaudit.report.compare import MEAN_ROW, Audit, compare_figure, compare_html, compare_table, markdown
from memaudit.report.headline import FACTS, headline_markdown, headline_metrics, predictor_table


def _entry(fpr, auc, mean_fpr=None, std=0.01):
    target = None if fpr is None else {"fpr_at_tpr": fpr, "auc": auc, "tpr_at_fpr_1pct": 0.1, "tpr_at_fpr_0.1pct": 0.0}
    spread = None if mean_fpr is None else {"mean": mean_fpr, "std": std}
    return {
        "sign": -1,
        "target": target,
        "all_models": {"n_models": 4, "fpr_at_tpr": spread, "auc": spread and {"mean": 0.9, "std": 0.02},
                       "tpr_at_fpr_1pct": None, "tpr_at_fpr_0.1pct": None},
    }  # fmt: skip


SUMMARY = {
    "tpr_target": 0.75,
    "best_layer": {"layer": 2, "predictor": "psmi_L2", "fpr_at_tpr": 0.05},
    "predictors": {
        "psmi_L1": _entry(0.3, 0.8, 0.31),
        "psmi_L2": _entry(0.05, 0.95, 0.06),
        "loss": _entry(0.2, 0.85, 0.25),
        "logit_gap": _entry(0.25, 0.8, 0.3),
        "mahalanobis_L2": _entry(None, None),  # no finite number on the target, none over the models
        "early_lira": _entry(0.1, 0.9, 0.12),
    },
    "off_the_shelf": {"layer": 2, "fpr": 0.1, "tpr": 0.6},
    "c_pred": {"step": 13, "epoch": 1.2, "index": 6, "rule": "loss_ratio"},
    "share_memorized": 0.1,
    "n_memorized": 10,
    "n_members": 100,
    "n_shadows_used": 15,
    "lira_mode": "global",
    "ground_truth": {"attack": "rmia", "mode": "offline", "label": "RMIA offline (a 0.3, γ 1)"},
    "enrichment": {"share_memorized_noisy": 0.5, "share_memorized_clean": 0.0625},
    "shadow_curve": {
        "reference": "lira_online with all 15 shadows", "ks": [1, 2, 4, 8, 15], "goal": 0.9,
        "smallest_k": {"lira_online": 15, "lira_offline": None, "rmia_online": 8, "rmia_offline": 4},
    },
}  # fmt: skip


def test_headline_metrics_have_short_names_and_leave_missing_values_out():
    m = headline_metrics(SUMMARY)
    assert m["psmi_fpr"] == 0.05 and m["psmi_auc"] == 0.95 and m["psmi_fpr_all"] == 0.06  # the best layer's
    assert m["loss_fpr"] == 0.2 and m["early_lira_auc_all"] == 0.9
    assert not any(k.startswith("mahalanobis") for k in m)  # None is never logged
    assert m["noisy_enrichment"] == pytest.approx(8.0)  # 0.5 / 0.0625
    assert (m["ots_fpr"], m["ots_tpr"], m["c_pred_step"], m["best_layer"]) == (0.1, 0.6, 13, 2)
    assert (m["k90_rmia_offline"], m["k90_lira_online"]) == (4, 15) and "k90_lira_offline" not in m  # never reached
    assert set(FACTS) - {"k90_lira_offline"} <= set(m) and len(m) <= 32 and all(len(k) <= 24 for k in m)
    clean_zero = {**SUMMARY, "enrichment": {"share_memorized_noisy": 0.5, "share_memorized_clean": 0.0}}
    assert "noisy_enrichment" not in headline_metrics(clean_zero)


def test_headline_markdown_is_a_table_of_the_papers_predictors():
    text = headline_markdown(SUMMARY, "audit x")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| predictor | FPR@TPR=0.75 | AUC")
    assert rows[1].startswith("| P-SMI (layer 2) | 0.0500 | 0.950 | 0.0600 ± 0.0100")
    assert rows[4].startswith("| Mahalanobis (layer 2) | n/a | n/a | n/a") and rows[-1].startswith("| Early LiRA")
    assert "8.00×" in text and "step 13" in text and "10 of 100" in text
    assert "by RMIA offline (a 0.3, γ 1) over 15 shadows" in text
    assert (
        "90% overlap with the lira_online with all 15 shadows: lira_online 15, lira_offline >15, rmia_online 8" in text
    )


def test_predictor_table_has_one_row_per_predictor():
    table = predictor_table(SUMMARY)
    assert list(table["predictor"]) == list(SUMMARY["predictors"])
    row = table.set_index("predictor").loc["psmi_L1"]
    assert (row["layer"], row["fpr_at_tpr"], row["all_models_fpr_at_tpr_mean"]) == (1, 0.3, 0.31)
    assert math.isnan(table.set_index("predictor").loc["loss", "layer"])


def _audit(name, psmi, loss, **more):
    return Audit(name, f"{name:0>32}", "arc", "mistral", "arc-mistral", {"psmi_fpr": psmi, "loss_fpr": loss, **more})


def test_compare_table_rows_mean_and_missing_values():
    audits = [_audit("a", 0.1, 0.3, c_pred_step=40.0), _audit("b", 0.2, 0.5, share_memorized=0.1)]
    table = compare_table(audits)
    assert list(table["audit"]) == ["a", "b", MEAN_ROW]
    assert table.loc[2, "P-SMI FPR"] == pytest.approx(0.15)
    assert table.loc[2, "Loss FPR"] == pytest.approx(0.4)
    assert math.isnan(table.loc[0, "memorized"]) and table.loc[2, "memorized"] == pytest.approx(0.1)
    lines = markdown(table, 0.75).splitlines()
    assert lines[0].startswith("| audit | dataset | model | preset | P-SMI FPR | Loss FPR | Logit gap FPR")
    assert lines[-1].startswith("Predictor columns: FPR at TPR = 0.75")
    assert lines[2].startswith("| a | arc | mistral | arc-mistral | 0.1000 | 0.3000 | n/a")
    assert "| 40 |" in lines[2] and lines[4].startswith("| mean |")
    assert len(compare_table(audits[:1])) == 1  # no mean row for one audit


def test_compare_page_is_self_contained_and_escaped(tmp_path):
    audits = [_audit("<b>x</b>", 0.1, 0.3), _audit("y", 0.2, 0.4)]
    table = compare_table(audits)
    fig = compare_figure(table, 0.75)
    ax = fig.axes[0]
    bars = {a.get_gid(): a for a in ax.patches}
    assert bars["psmi/audit-0"].get_height() == pytest.approx(0.1)
    assert bars["loss/audit-1"].get_height() == pytest.approx(0.4)
    assert bars["psmi/audit-1"].get_x() > bars["psmi/audit-0"].get_x()
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["P-SMI", "Loss"]
    page = compare_html(table, b"\x89PNG", "sqlite:///x", 0.75)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "http" not in page and "href" not in page  # no external reference
    assert 'id="compare"' in page and "data:image/png;base64," in page
