"""fastwb.metrics against its NumPy twin and scikit-learn (skipped without it)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastwb import metrics
from fastwb.reference import metrics as twin

REL = 1e-12


def _sklearn():
    return pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")


def _regression_data(rng, shape, constant_columns=()):
    y = rng.standard_normal(shape)
    yhat = y + rng.standard_normal(shape) * 0.5
    if len(shape) == 2:
        for j in constant_columns:
            y[:, j] = 2.0
    return y, yhat


# ---------------------------------------------------------------------------
# against the twin and scikit-learn
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 50])
def test_accuracy(n, rng):
    y = rng.integers(0, 4, n)
    p = rng.integers(0, 4, n)
    got = metrics.accuracy(y, p)
    assert got == twin.accuracy(y, p) == np.mean(y == p)
    assert metrics.accuracy(y.astype(np.int32), p.astype(np.uint8)) == got
    assert metrics.accuracy(y, y) == 1.0
    assert got == _sklearn().accuracy_score(y, p)


@pytest.mark.parametrize("shape", [(2,), (40,), (40, 1), (40, 3)])
def test_regression_metrics(shape, rng):
    sk = _sklearn()
    y, yhat = _regression_data(rng, shape)
    for mine, ref, theirs in ((metrics.mean_squared_error, twin.mean_squared_error, sk.mean_squared_error),
                              (metrics.r2_score, twin.r2_score, sk.r2_score)):
        got = mine(y, yhat)
        assert isinstance(got, float)
        assert got == pytest.approx(ref(y, yhat), rel=REL)
        assert got == pytest.approx(theirs(y, yhat), rel=REL)


@pytest.mark.parametrize("exact", [False, True])
def test_r2_constant_targets_as_sklearn(exact, rng):
    """A constant target column: R^2 is 1 when predicted exactly, else 0 (sklearn's force_finite)."""
    sk = _sklearn()
    y, yhat = _regression_data(rng, (30, 3), constant_columns=(1,))
    if exact:
        yhat[:, 1] = y[:, 1]
    got = metrics.r2_score(y, yhat)
    assert got == pytest.approx(sk.r2_score(y, yhat), rel=REL)
    assert got == pytest.approx(twin.r2_score(y, yhat), rel=REL)
    per_output = sk.r2_score(y, yhat, multioutput="raw_values")
    assert per_output[1] == (1.0 if exact else 0.0)
    assert metrics.r2_score(y[:, 1], y[:, 1]) == 1.0
    assert metrics.r2_score(y[:, 1], y[:, 1] + 1) == 0.0
    assert metrics.r2_score(y[:, 1], y[:, 1] + 1) == sk.r2_score(y[:, 1], y[:, 1] + 1)


def test_r2_perfect_prediction_and_mean_prediction(rng):
    y = rng.standard_normal((25, 2))
    assert metrics.r2_score(y, y) == 1.0
    assert metrics.r2_score(y, np.broadcast_to(y.mean(axis=0), y.shape)) == pytest.approx(0.0, abs=1e-15)


def test_regression_metrics_accept_integers_and_float32(rng):
    y = rng.integers(-5, 5, (20, 2))
    yhat = rng.standard_normal((20, 2)).astype(np.float32)
    assert metrics.mean_squared_error(y, yhat) == pytest.approx(twin.mean_squared_error(y, yhat), rel=REL)
    assert metrics.r2_score(y, yhat) == pytest.approx(twin.r2_score(y, yhat), rel=REL)


@pytest.mark.parametrize("threshold", [0.5, 0.1, 0.9, 0.0, 1.0])
def test_binary_accuracy(threshold, rng):
    z = rng.standard_normal((64, 5)) * 3
    t = (rng.random((64, 5)) < 0.4).astype(np.float64)
    got = metrics.binary_accuracy(t, z, threshold)
    assert got == twin.binary_accuracy(t, z, threshold)
    # Keras' definition, on probabilities
    prob = 1 / (1 + np.exp(-z))
    assert got == np.mean((prob > threshold) == (t == 1))
    assert metrics.binary_accuracy(t.astype(bool), z.astype(np.float32), threshold) == got


def test_binary_accuracy_edges():
    t = np.array([[1.0, 0.0, 1.0, 0.0]])
    z = np.array([[0.0, 0.0, 1e4, -1e4]])
    assert metrics.binary_accuracy(t, z) == 0.75                   # sigmoid(0) = 0.5 is not > 0.5
    assert metrics.binary_accuracy([[0.7, 0.2]], [[3.0, -3.0]]) == 1.0   # soft targets count as 1 above 0.5
    assert metrics.binary_accuracy(t, z, threshold=1.0) == 0.5     # nothing is above probability 1


def test_empty_inputs_score_nan():
    assert math.isnan(metrics.accuracy(np.zeros(0, int), np.zeros(0, int)))
    assert math.isnan(metrics.mean_squared_error(np.zeros((0, 2)), np.zeros((0, 2))))
    assert math.isnan(metrics.r2_score(np.zeros(0), np.zeros(0)))
    assert math.isnan(metrics.r2_score([1.0], [2.0]))               # one sample: R^2 undefined
    assert math.isnan(metrics.binary_accuracy(np.zeros((0, 3)), np.zeros((0, 3))))
    for fn in (twin.accuracy, twin.mean_squared_error, twin.r2_score, twin.binary_accuracy):
        assert math.isnan(fn(np.zeros(0, int), np.zeros(0, int)))


def test_r2_one_sample_matches_sklearn():
    sk = _sklearn()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(sk.r2_score([1.0], [2.0]))


@given(n=st.integers(2, 12), k=st.integers(1, 3), constant=st.sets(st.integers(0, 2)), seed=st.integers(0, 2**32 - 1),
       exact=st.sets(st.integers(0, 2)))
def test_regression_metrics_generated(n, k, constant, exact, seed):
    """Generated targets with constant and exactly predicted columns: fastwb, twin and
    scikit-learn agree."""
    rng = np.random.default_rng(seed)
    y, yhat = _regression_data(rng, (n, k), constant_columns=[j for j in constant if j < k])
    for j in exact:
        if j < k:
            yhat[:, j] = y[:, j]
    got_r2, got_mse = metrics.r2_score(y, yhat), metrics.mean_squared_error(y, yhat)
    assert got_r2 == pytest.approx(twin.r2_score(y, yhat), rel=REL, abs=1e-15)
    assert got_mse == pytest.approx(twin.mean_squared_error(y, yhat), rel=REL, abs=1e-300)
    try:
        from sklearn.metrics import mean_squared_error, r2_score
    except ImportError:
        return
    assert got_r2 == pytest.approx(r2_score(y, yhat), rel=REL, abs=1e-15)
    assert got_mse == pytest.approx(mean_squared_error(y, yhat), rel=REL, abs=1e-300)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

BAD = [
    (lambda: metrics.accuracy([0, 1, 2], [0, 1]), ValueError, r"y_true has shape \(3,\) but y_pred has shape \(2,\)"),
    (lambda: metrics.accuracy([0.0, 1.0], [0, 1]), TypeError, "y_true must hold integer class labels"),
    (lambda: metrics.accuracy([0, 1], np.zeros((2, 3))), TypeError, "y_pred must hold integer class labels"),
    (lambda: metrics.accuracy(np.zeros((2, 3), int), np.zeros((2, 3), int)), ValueError, "y_true must be 1-D"),
    (lambda: metrics.mean_squared_error(np.zeros((4, 1)), np.zeros(4)), ValueError, r"y_true has shape \(4, 1\) but y_pred has shape \(4,\)"),
    (lambda: metrics.r2_score(np.zeros((4, 2)), np.zeros((2, 4))), ValueError, "y_true has shape"),
    (lambda: metrics.r2_score(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))), ValueError, "y_true must be 1-D or 2-D"),
    (lambda: metrics.mean_squared_error(["a"], ["b"]), TypeError, "y_true must hold real numbers"),
    (lambda: metrics.binary_accuracy(np.zeros((2, 3)), np.zeros((3, 2))), ValueError, r"targets has shape \(2, 3\) but logits"),
    (lambda: metrics.binary_accuracy(np.array([[0.0, 2.0]]), np.zeros((1, 2))), ValueError, r"targets must be 0/1 labels"),
    (lambda: metrics.binary_accuracy(np.array([[0.0, np.nan]]), np.zeros((1, 2))), ValueError, r"targets must be 0/1"),
    (lambda: metrics.binary_accuracy(np.zeros(2), np.zeros(2), threshold=1.5), ValueError, "threshold must be <= 1"),
    (lambda: metrics.binary_accuracy(np.zeros(2), np.zeros(2), threshold=float("nan")), ValueError, "threshold must be finite"),
    (lambda: metrics.binary_accuracy(np.zeros(2), np.zeros(2), threshold=None), TypeError, "threshold must be a real number"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# scores of probabilities: NLL, Brier, ECE, reliability diagram, AUROC
# ---------------------------------------------------------------------------

P2 = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
Y2 = np.array([0, 1])

# four rows of two classes whose confidences sit on the edges of 4 bins: 0.5, 0.75, 1.0 (and 0.6)
P_EDGES = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0], [0.4, 0.6]])
Y_EDGES = np.array([0, 0, 0, 1])          # right, wrong, right, right (argmax of [0.5, 0.5] is 0)


def _dirichlet(rng, n, k, alpha=0.5):
    return rng.dirichlet(np.full(k, alpha), n)


def test_nll_and_brier_by_hand():
    assert metrics.nll(Y2, P2) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2, rel=1e-15)
    # (0.3^2 + 0.2^2 + 0.1^2 + 0.1^2 + 0.7^2 + 0.6^2) / 2 = (0.14 + 0.86) / 2
    assert metrics.brier_score(Y2, P2) == pytest.approx(0.5, rel=1e-15)
    assert metrics.brier_score([0], [[1.0, 0.0]]) == 0.0 and metrics.brier_score([1], [[1.0, 0.0]]) == 2.0
    # a true class of probability 0 costs -log(NLL_EPS), not infinity
    assert metrics.NLL_EPS == 1e-12
    assert metrics.nll([1], [[1.0, 0.0]]) == pytest.approx(-math.log(1e-12), rel=1e-15)
    assert metrics.nll([1], [[1.0, 0.0]], eps=1e-3) == pytest.approx(-math.log(1e-3), rel=1e-15)
    assert metrics.nll(Y2, P2.astype(np.float32)) == pytest.approx(metrics.nll(Y2, P2), rel=1e-7)


def test_ece_and_reliability_by_hand_right_closed_bins():
    """Bins (lo, hi] as torchmetrics' bucketize: a confidence on an edge belongs to the
    bin below it.  With 4 bins: 0.5 is in (0.25, 0.5], 0.75 in (0.5, 0.75], 1.0 in the last."""
    d = metrics.reliability_diagram(Y_EDGES, P_EDGES, n_bins=4)
    np.testing.assert_array_equal(d["edges"], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(d["count"], [0, 1, 2, 1])
    np.testing.assert_allclose(d["confidence"], [np.nan, 0.5, 0.675, 1.0], rtol=1e-15)
    np.testing.assert_allclose(d["accuracy"], [np.nan, 1.0, 0.5, 1.0], rtol=1e-15)
    # (1 * |1 - 0.5| + 2 * |0.5 - 0.675| + 1 * 0) / 4; left-closed bins [lo, hi) would give 0.4125
    assert metrics.expected_calibration_error(Y_EDGES, P_EDGES, n_bins=4) == pytest.approx(0.2125, rel=1e-14)
    # 15 bins (the default): 0.7 (right) in (0.6667, 0.7333], 0.6 (wrong) in (0.5333, 0.6]
    assert metrics.expected_calibration_error(Y2, P2) == pytest.approx((0.3 + 0.6) / 2, rel=1e-15)
    for fn in (metrics.reliability_diagram, twin.reliability_diagram):
        d = fn(Y2, P2)
        assert d["count"].sum() == 2 and d["count"][10] == 1 and d["count"][8] == 1


def _torchmetrics_ece(y, proba, n_bins):
    """torchmetrics' _binning_bucketize and _ce_compute (norm "l1"), written out with
    torch.bucketize (boundaries in float64 here, as fastwb compares)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    p = torch.as_tensor(proba, dtype=torch.float64)
    confidences, predictions = p.max(dim=1)
    accuracies = predictions.eq(torch.as_tensor(y)).to(torch.float64)
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    indices = torch.bucketize(confidences, boundaries) - 1
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, indices, torch.ones_like(confidences))
    conf = torch.nan_to_num(torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, indices, confidences) / count)
    acc = torch.nan_to_num(torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, indices, accuracies) / count)
    return float(torch.sum(torch.abs(acc - conf) * count / count.sum()))


@pytest.mark.parametrize("n_bins", [1, 4, 15, 40])
def test_ece_matches_torchmetrics_convention(n_bins, rng):
    for k in (2, 10):
        p = _dirichlet(rng, 500, k)
        y = rng.integers(0, k, 500)
        assert metrics.expected_calibration_error(y, p, n_bins) == pytest.approx(_torchmetrics_ece(y, p, n_bins),
                                                                                 rel=1e-12, abs=1e-15)
    assert metrics.expected_calibration_error(Y_EDGES, P_EDGES, 4) == pytest.approx(
        _torchmetrics_ece(Y_EDGES, P_EDGES, 4), rel=1e-14)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_probability_scores_against_twin_and_sklearn(k, rng):
    p = _dirichlet(rng, 300, k)
    y = rng.integers(0, k, 300)
    for name in ("nll", "brier_score", "expected_calibration_error"):
        got = getattr(metrics, name)(y, p)
        assert isinstance(got, float)
        assert got == pytest.approx(getattr(twin, name)(y, p), rel=1e-12), name
    d, t = metrics.reliability_diagram(y, p, 10), twin.reliability_diagram(y, p, 10)
    np.testing.assert_array_equal(d["count"], t["count"])
    np.testing.assert_allclose(d["confidence"], t["confidence"], rtol=1e-12)
    np.testing.assert_allclose(d["accuracy"], t["accuracy"], rtol=1e-12)
    sk = _sklearn()
    assert metrics.nll(y, p) == pytest.approx(sk.log_loss(y, p, labels=list(range(k))), rel=1e-12)
    assert metrics.brier_score(y, p) == pytest.approx(
        sk.brier_score_loss(y, p, labels=list(range(k)), scale_by_half=False), rel=1e-12)


def test_ece_of_a_calibrated_predictor_is_near_zero(rng):
    """Labels drawn from the predicted probabilities themselves: calibrated by
    construction, so the ECE is only the sampling noise of finite bins (about
    0.003 for 200000 rows); sharpening the same probabilities makes it large."""
    n, k = 200_000, 10
    p = _dirichlet(rng, n, k, alpha=0.3)
    u = rng.random(n)
    y = np.minimum((np.cumsum(p, axis=1) < u[:, None]).sum(axis=1), k - 1)
    ece = metrics.expected_calibration_error(y, p)
    assert ece < 0.01
    sharp = p ** 3 / np.sum(p ** 3, axis=1, keepdims=True)        # overconfident, same argmax
    assert metrics.expected_calibration_error(y, sharp) > 0.05
    d = metrics.reliability_diagram(y, p)
    used = d["count"] > 1000
    np.testing.assert_allclose(d["accuracy"][used], d["confidence"][used], atol=0.03)


def test_auroc_by_hand_and_against_twin_and_sklearn(rng):
    # pairs (pos, neg): 1 beats 0; 2 beats 0 and 1.5, ties 2; 3 beats all three: (1 + 2.5 + 3) / 9
    assert metrics.auroc([1, 2, 3], [0, 2, 1.5]) == pytest.approx(6.5 / 9, rel=1e-15)
    assert metrics.auroc([5, 6], [1, 2, 3]) == 1.0 and metrics.auroc([1, 2], [5, 6]) == 0.0
    assert metrics.auroc([3.0, 3.0], [3.0]) == 0.5
    assert twin.auroc([1, 2, 3], [0, 2, 1.5]) == pytest.approx(6.5 / 9, rel=1e-15)
    sk = _sklearn()
    for n_pos, n_neg, levels in ((50, 70, None), (200, 30, 5), (1, 1, None)):
        pos, neg = rng.standard_normal(n_pos) + 0.5, rng.standard_normal(n_neg)
        if levels:      # many ties
            pos, neg = np.round(pos * levels) / levels, np.round(neg * levels) / levels
        got = metrics.auroc(pos, neg)
        assert got == pytest.approx(twin.auroc(pos, neg), rel=1e-12)
        labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        assert got == pytest.approx(sk.roc_auc_score(labels, np.r_[pos, neg]), rel=1e-12)
    assert metrics.auroc(np.arange(5, dtype=np.int32), np.arange(5.0) - 0.5) == pytest.approx(
        twin.auroc(np.arange(5), np.arange(5.0) - 0.5))


@given(n=st.integers(1, 40), k=st.integers(1, 5), bins=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_probability_scores_generated(n, k, bins, seed):
    """Generated probabilities, some rows one-hot (confidence exactly 1) or uniform:
    fastwb and the twin agree; the scores stay in their ranges."""
    rng = np.random.default_rng(seed)
    p = _dirichlet(rng, n, k, alpha=1.0)
    p[rng.random(n) < 0.2] = np.eye(k)[rng.integers(0, k)]
    p[rng.random(n) < 0.2] = 1.0 / k
    y = rng.integers(0, k, n)
    ece = metrics.expected_calibration_error(y, p, bins)
    assert ece == pytest.approx(twin.expected_calibration_error(y, p, bins), rel=1e-12, abs=1e-15)
    assert 0 <= ece <= 1
    assert 0 <= metrics.brier_score(y, p) <= 2
    assert metrics.nll(y, p) == pytest.approx(twin.nll(y, p), rel=1e-12)
    assert metrics.reliability_diagram(y, p, bins)["count"].sum() == n


def test_probability_scores_of_empty_inputs_are_nan():
    empty_p, empty_y = np.zeros((0, 3)), np.zeros(0, int)
    for fn in (metrics.nll, metrics.brier_score, metrics.expected_calibration_error,
               twin.nll, twin.brier_score, twin.expected_calibration_error):
        assert math.isnan(fn(empty_y, empty_p))
    assert math.isnan(metrics.auroc([], [1.0])) and math.isnan(metrics.auroc([1.0], []))
    assert math.isnan(twin.auroc([], [1.0]))
    assert metrics.reliability_diagram(empty_y, empty_p, 3)["count"].tolist() == [0, 0, 0]


BAD_PROBA = [
    (lambda: metrics.nll([0, 1], [[2.0, -1.0], [0.5, 0.5]]), ValueError, r"proba\[0\] has values outside \[0, 1\].*not logits"),
    (lambda: metrics.brier_score([0], [[0.5, 0.6]]), ValueError, r"proba\[0\] has a sum of 1.1"),
    (lambda: metrics.nll([0], [[np.nan, 1.0]]), ValueError, r"proba\[0\] has values outside"),
    (lambda: metrics.nll([0, 1, 0], P2), ValueError, r"y has shape \(3,\) but proba has shape \(2, 3\)"),
    (lambda: metrics.nll([0, 3], P2), ValueError, r"y\[1\] = 3 is not a class index in \[0, 3\)"),
    (lambda: metrics.nll([0, -1], P2), ValueError, r"y\[1\] = -1 is not a class index"),
    (lambda: metrics.nll([0.0, 1.0], P2), TypeError, "y must hold integer class labels"),
    (lambda: metrics.nll(Y2, P2.astype(int)), TypeError, "proba must hold probabilities"),
    (lambda: metrics.nll(Y2, P2[0]), ValueError, r"proba must be 2-D \(n, classes\)"),
    (lambda: metrics.nll(Y2, P2, eps=0), ValueError, "eps must be > 0"),
    (lambda: metrics.expected_calibration_error(Y2, P2, n_bins=0), ValueError, "n_bins must be >= 1"),
    (lambda: metrics.reliability_diagram(Y2, P2, n_bins=2.5), TypeError, "n_bins must be an integer"),
    (lambda: metrics.auroc([1.0, np.nan], [0.0]), ValueError, r"scores_pos\[1\] = nan is not finite"),
    (lambda: metrics.auroc([1.0], [[0.0]]), ValueError, r"scores_neg must be 1-D"),
    (lambda: metrics.auroc(["a"], [0.0]), TypeError, "scores_pos must hold real numbers"),
]


@pytest.mark.parametrize("call,exc,match", BAD_PROBA)
def test_bad_probabilities_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_plot_reliability_is_a_headless_figure(rng, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    from fastwb import plots

    p = _dirichlet(rng, 400, 10)
    y = rng.integers(0, 10, 400)
    fig = plots.plot_reliability(y, p, n_bins=10)
    top, bottom = fig.axes[:2]
    assert "ECE" in top.get_title() and f"{metrics.expected_calibration_error(y, p, 10):.4f}" in top.get_title()
    assert sum(patch.get_height() for patch in bottom.patches) == 400       # one bar per bin: the counts
    fig.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 1000
