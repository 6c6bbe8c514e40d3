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
