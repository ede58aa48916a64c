"""Every test the report uses is calibrated: on null inputs its false-positive rate at alpha is
at most about alpha over >= 20 seeds; on planted structure it has power. Plus the corrections."""

import numpy as np
import pytest

from neural_codec.analysis import calibration as cal
from neural_codec.analysis.stats import benjamini_hochberg, bootstrap_interval, clears, holm, interval

ALPHA = 0.05  # a larger alpha than the default 0.01 so that 20-40 seeds can see a miscalibration


pytestmark = pytest.mark.usefixtures("one_thread")


def test_holm_and_bh_match_hand_values():
    p = [0.01, 0.04, 0.03, 0.5]
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert (holm(p) >= np.asarray(p)).all() and (holm(p) <= np.minimum(4 * np.asarray(p), 1)).all()


def test_interval_and_clears():
    iv = interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and iv["n_seeds"] == 3 and iv["ci_low"] < 1.0 < 3.0 < iv["ci_high"]
    assert interval([5.0]) == {"mean": 5.0, "ci_low": 5.0, "ci_high": 5.0, "n_seeds": 1}
    assert interval([])["mean"] is None
    assert clears(interval([10, 11, 12]), interval([1, 2, 3])) is True
    assert clears(interval([1, 2, 3]), interval([2, 3, 4])) is False
    b = bootstrap_interval(np.random.default_rng(0).normal(0, 1, 2000))
    assert b["ci_low"] < 0 < b["ci_high"] and b["ci_high"] - b["ci_low"] < 0.2


# at most this many rejections out of n seeds at ALPHA: P(X > bound | p = ALPHA) < 0.005
BOUND = {20: 4, 40: 6}


@pytest.mark.parametrize(
    "name, n_seeds, min_power",
    [("mantel", 40, 0.9), ("circle permutation", 40, 0.8), ("line test (Holm over fractions)", 40, 0.9)],
)
def test_cheap_tests_are_calibrated_and_have_power(name, n_seeds, min_power):
    r = cal.calibrate(cal.TRIALS[name], n_seeds, ALPHA)
    assert r["n_false_positives"] <= BOUND[n_seeds], r
    assert r["power"] >= min_power, r


def test_logic_test_is_calibrated_on_heldout_rows_and_finds_planted_exclusion():
    r = cal.calibrate(cal.logic_trial, 20, ALPHA)
    assert r["n_false_positives"] <= BOUND[20], r
    assert r["power"] >= 0.9, r


def test_sparse_source_plants_exclusive_families():
    fam = np.array([0, 1, 2, 3])
    feats = cal.sparse_source(5000, 16, np.random.default_rng(0), [fam])
    on = np.zeros((len(feats), 16), bool)
    rows = np.repeat(np.arange(len(feats)), feats.idx.shape[1])
    keep = feats.val.ravel() > 0
    on[rows[keep], feats.idx.ravel()[keep]] = True
    assert on[:, fam].sum(1).max() == 1 and on[:, fam].any(1).mean() > 0.05
    assert on[:, 4:].sum(0).min() > 0
