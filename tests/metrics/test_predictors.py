"""Predictor names: one value type with one string form and one parser."""

import pytest

from memaudit.metrics import Predictor, predictor_names


@pytest.mark.parametrize(
    ("name", "kind", "layer", "sign"),
    [("psmi_L29", "psmi", 29, -1.0), ("loss", "loss", None, 1.0), ("logit_gap", "logit_gap", None, -1.0),
     ("mahalanobis_L0", "mahalanobis", 0, 1.0), ("early_lira", "early_lira", None, 1.0)],
)  # fmt: skip
def test_names_parse_into_kind_layer_and_orientation(name, kind, layer, sign):
    p = Predictor.parse(name)
    assert (p.kind, p.layer, p.sign) == (kind, layer, sign)
    assert str(p) == p.name == name


def test_per_layer_columns_parse_but_carry_no_orientation():
    assert Predictor.parse("psmi_slope_L3") == Predictor("psmi_slope", 3)
    with pytest.raises(KeyError):
        _ = Predictor("psmi_std", 2).sign


@pytest.mark.parametrize("name", ["psmi", "loss_L3", "Psmi_L1", "psmi_L", "psmi_Lx", "", "mahalanobis"])
def test_non_names_are_refused(name):
    with pytest.raises(ValueError):
        Predictor.parse(name)


def test_a_layer_is_required_exactly_for_per_layer_kinds():
    with pytest.raises(ValueError):
        Predictor("psmi")
    with pytest.raises(ValueError):
        Predictor("loss", 3)


def test_the_aggregates_predictors_in_order():
    assert predictor_names([1, 2], False) == ["psmi_L1", "psmi_L2", "loss", "logit_gap", "early_lira"]
    with_maha = predictor_names([4], True)
    assert with_maha == ["psmi_L4", "loss", "logit_gap", "mahalanobis_L4", "early_lira"]
