"""ROC curves, AUC and cuts against hand-computed cases; the cut-based baselines."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lhccnn import physics, synthetic

Y = [0, 0, 1, 1]
S = [0.1, 0.4, 0.35, 0.8]


def test_auc_of_perfect_separation_is_one_and_reversed_is_zero():
    y = np.r_[np.zeros(50), np.ones(50)]
    s = np.arange(100.0)
    assert physics.roc_auc(y, s) == 1.0
    assert physics.roc_auc(y, -s) == 0.0


def test_auc_of_random_scores_is_one_half():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20000)
    assert physics.roc_auc(y, rng.random(20000)) == pytest.approx(0.5, abs=0.015)


def test_auc_hand_computed_example():
    # 4 signal-background pairs; signal wins 3 of them
    assert physics.roc_auc(Y, S) == pytest.approx(0.75)


def test_auc_counts_ties_as_one_half():
    assert physics.roc_auc([0, 1], [1.0, 1.0]) == pytest.approx(0.5)
    # pairs: (0.5 vs 0.5) tie, (0.5 vs 0.1) win, (0.9 vs 0.5) win, (0.9 vs 0.1) win
    assert physics.roc_auc([0, 1, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(3.5 / 4)


def test_weighted_auc_hand_computed_example():
    # w_sig * w_bkg summed over won pairs: 2*1 (0.35>0.1) + 1*1 (0.8>0.1) + 1*3 (0.8>0.4) = 6,
    # out of (2+1) * (1+3) = 12
    assert physics.roc_auc(Y, S, weight=[1, 3, 2, 1]) == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 5), st.integers(1, 4)), min_size=2, max_size=30
    )
)
def test_integer_weights_equal_repeated_events(rows):
    y, s, w = (np.array(c) for c in zip(*rows))
    if len(set(y)) < 2:
        return
    expected = physics.roc_auc(np.repeat(y, w), np.repeat(s, w))
    assert physics.roc_auc(y, s, w) == pytest.approx(expected)


def test_roc_curve_hand_computed_example():
    fpr, tpr, thr = physics.roc_curve(Y, S)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])


def test_best_cut_accuracy_hand_computed_examples():
    assert physics.best_cut_accuracy(Y, S) == (pytest.approx(0.75), 0.8)
    # heavy background weight: the best "cut" selects nothing
    acc, thr = physics.best_cut_accuracy([0, 1, 0], [0.2, 0.5, 0.9], weight=[1, 1, 10])
    assert acc == pytest.approx(11 / 12) and thr == np.inf


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both"):
        physics.roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        physics.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0 or 1"):
        physics.roc_auc([0, 2], [0.1, 0.2])


def test_total_energy_sums_each_image_with_or_without_channel_axis():
    h = np.zeros((2, 64, 64), np.float32)
    h[0, 3, 4], h[1, 10, 10], h[1, 0, 63] = 5.0, 1.5, 2.0
    np.testing.assert_allclose(physics.total_energy(h), [5.0, 3.5])
    np.testing.assert_allclose(physics.total_energy(h[..., None]), [5.0, 3.5])


def test_count_jets_counts_separated_maxima_and_wraps_in_phi():
    h = np.zeros((4, 64, 64), np.float32)
    h[0, 10, 10], h[0, 40, 40] = 100, 80  # two jets
    h[1, 20, 63], h[1, 20, 0] = 50, 50  # one jet split by the phi edge: a plateau, counted once
    h[2, 20, 20] = 30  # below threshold
    h[3, 0, 5] = 100  # at the eta edge
    np.testing.assert_array_equal(physics.count_jets(h, et_min=40.0), [2, 1, 0, 1])


def test_baseline_beats_energy_sum_on_synthetic_events():
    d = synthetic.generate(2048, 21)
    e = physics.roc_auc(d["y"], physics.total_energy(d["hist"]))
    b = physics.roc_auc(d["y"], physics.baseline_score(d["hist"]))
    assert b > e + 0.02
