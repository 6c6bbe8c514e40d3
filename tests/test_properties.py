"""Hypothesis: arbitrary shapes, dtypes and values never crash and match the twin."""

import numpy as np
from conftest import close, exact_loss
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastwb
import fastwb.reference as R

dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def arrays(draw, min_dims=0, max_dims=3, allow_special=True):
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=12))
    elements = st.floats(width=32 if dtype == np.float32 else 64, allow_nan=allow_special,
                         allow_infinity=allow_special, allow_subnormal=True)
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()) and a.ndim >= 1 and a.shape[-1] > 1:
        a = a[..., ::2]  # a strided view
    return a


@given(arrays(), st.sampled_from(["relu", "leaky_relu", "sigmoid", "tanh"]))
def test_elementwise_matches_twin(x, name):
    with np.errstate(all="ignore"):
        expected = getattr(R, name)(x)
        got = getattr(fastwb, name)(x)
        close(got, expected, x.dtype)
        g = np.ones_like(x)
        # both backward passes from the same y: their own forward outputs may differ by an ulp,
        # which 1 - y^2 or y (1 - y) would amplify
        close(getattr(fastwb, name + "_backward")(g, expected), getattr(R, name + "_backward")(g, expected), x.dtype)


@given(arrays(min_dims=1, allow_special=False))
def test_softmax_matches_twin(x):
    with np.errstate(all="ignore"):
        expected = R.softmax(x)
    close(fastwb.softmax(x), expected, x.dtype, ulps=16, scale=True)


@given(st.data(), dtypes, st.integers(0, 9), st.integers(0, 9), st.integers(0, 9),
       st.sampled_from(["identity", "relu", "leaky_relu", "sigmoid", "tanh"]))
def test_linear_matches_twin(data, dtype, n, k, m, act):
    el = st.floats(-100, 100, width=32 if dtype == np.float32 else 64)
    x = data.draw(hnp.arrays(dtype, (n, k), elements=el))
    W = data.draw(hnp.arrays(dtype, (k, m), elements=el))
    b = data.draw(hnp.arrays(dtype, (m,), elements=el))
    y = fastwb.linear(x, W, b, act)
    close(y, R.linear(x, W, b, act), dtype, ulps=16, scale=True)
    g = data.draw(hnp.arrays(dtype, (n, m), elements=st.floats(-10, 10, width=32 if dtype == np.float32 else 64)))
    for a, e in zip(fastwb.linear_backward(g, y, x, W, act), R.linear_backward(g, y, x, W, act)):
        close(a, e, dtype, ulps=64, scale=True)


@given(st.data(), dtypes, st.integers(0, 8), st.integers(0, 8))
def test_cross_entropy_valid_or_clear_error(data, dtype, n, c):
    z = data.draw(hnp.arrays(dtype, (n, c), elements=st.floats(-50, 50, width=32 if dtype == np.float32 else 64)))
    labels = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(-2, c + 1)))
    valid = n == 0 or (labels.min() >= 0 and labels.max() < c)
    if not valid:
        try:
            fastwb.softmax_cross_entropy(z, labels)
        except ValueError as e:
            assert "labels[" in str(e)
        else:
            raise AssertionError("invalid labels accepted")
        return
    assume(n > 0)
    loss, grad = fastwb.softmax_cross_entropy(z, labels)
    loss_r, grad_r = R.softmax_cross_entropy(z, labels)
    close(loss, exact_loss(z, labels), dtype, ulps=16)
    close(grad, grad_r, dtype, ulps=16, scale=True)


@given(arrays(max_dims=2), st.one_of(st.none(), st.integers(0, 3), st.text(max_size=3)))
def test_garbage_never_crashes(x, junk):
    """Wrong shapes, dtypes and names end in an exception or a result, never a crash."""
    for call in (
        lambda: fastwb.linear(x, x, junk),
        lambda: fastwb.linear(x, x.T, None, junk),
        lambda: fastwb.linear_backward(x, x, x, x, "relu"),
        lambda: fastwb.softmax_cross_entropy(x, junk),
        lambda: fastwb.relu(x, out=junk),
        lambda: fastwb.sigmoid_backward(x, x.T),
    ):
        try:
            with np.errstate(all="ignore"):
                call()
        except (TypeError, ValueError):
            pass
