"""The is_lens rule: parsed from text, applied column-wise, NaN never counts as a lens."""

import numpy as np
import pytest

from lensfinder.labels import DEFAULT_LABEL_RULE, LabelRule, label_rule


def test_default_rule_is_the_challenge_two_rule():
    rule = label_rule()
    cat = {
        "n_source_im": np.array([1, 0, 2, 1, 1, np.nan]),
        "mag_eff": np.array([2.0, 3.0, 1.6, 1.7, 5.0, 3.0]),
        "n_pix_source": np.array([21, 50, 50, 20, 100, 50]),
    }
    # strict inequalities: mag_eff 1.6 and n_pix_source 20 are not enough; NaN is not a lens
    assert rule.apply(cat).tolist() == [1, 0, 0, 0, 1, 0]
    assert str(rule) == DEFAULT_LABEL_RULE


def test_alternative_rule_and_round_trip():
    rule = LabelRule.parse("n_sources > 0 & mag_eff >= 1.5")
    assert rule.columns == ("n_sources", "mag_eff")
    assert LabelRule.parse(str(rule)) == rule
    out = rule.apply({"n_sources": np.array([1, 1, 0]), "mag_eff": np.array([1.5, 1.4, 9])})
    assert out.tolist() == [1, 0, 0]


@pytest.mark.parametrize("text", ["", "mag_eff >", "mag_eff ~ 3", "__import__('os') > 1", "a > b"])
def test_bad_rules_are_refused(text):
    with pytest.raises(ValueError, match="label rule"):
        LabelRule.parse(text)


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="n_pix_source"):
        label_rule().apply({"n_source_im": np.ones(2), "mag_eff": np.ones(2)})
