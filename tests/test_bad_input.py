"""Bad input gets a clear exception naming the argument; nothing crashes."""

import numpy as np
import pytest

import fastwb

f32, f64 = np.float32, np.float64


def _x(shape=(4, 3), dtype=f32):
    return np.ones(shape, dtype)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fastwb.linear(_x(), _x((4, 2))), ValueError, r"x.shape\[1\] must equal W.shape\[0\]"),
    (lambda: fastwb.linear(_x((4,)), _x((4, 2))), ValueError, "x must be 2-D"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), _x((3,))), ValueError, r"b has shape \(3,\), expected \(2,\)"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), _x((2, 1))), ValueError, "b must be 1-D"),
    (lambda: fastwb.linear(_x(dtype=np.int64), _x((3, 2))), TypeError, "x must have dtype float32 or float64, got int64"),
    (lambda: fastwb.linear(_x(), _x((3, 2), f64)), TypeError, "mixed dtypes"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), _x((2,), f64)), TypeError, "mixed dtypes"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), activation="swish"), ValueError,
     "unknown activation 'swish'; valid names are 'identity', 'relu', 'leaky_relu', 'sigmoid', 'tanh'"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), activation=None), ValueError, "unknown activation None"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), activation="leaky_relu", alpha=-0.1), ValueError, "alpha must be >= 0"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), activation="leaky_relu", alpha=float("nan")), ValueError, "alpha"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), activation="leaky_relu", alpha="x"), TypeError, "alpha must be a real number"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), out=np.empty((4, 3), f32)), ValueError, r"out has shape \(4, 3\), expected \(4, 2\)"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), out=np.empty((4, 2), f64)), TypeError, "out has dtype float64, expected float32"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), out=np.empty((2, 4), f32).T), ValueError, "out must be C-contiguous"),
    (lambda: fastwb.linear(_x(), _x((3, 2)), out=[[0, 0]] * 4), TypeError, "out must be a NumPy array"),
    (lambda: fastwb.linear("abc", _x((3, 2))), TypeError, "x must have dtype"),
    (lambda: fastwb.linear_backward(_x((4, 2)), _x((4, 3)), _x(), _x((3, 2)), "relu"), ValueError, "grad_y has shape"),
    (lambda: fastwb.linear_backward(_x((4, 2)), _x((4, 2)), _x((5, 3)), _x((3, 2)), "relu"), ValueError, r"x has shape \(5, 3\)"),
    (lambda: fastwb.linear_backward(_x((4, 2)), _x((4, 2)), _x(), _x((3, 5)), "relu"), ValueError, "W has shape"),
    (lambda: fastwb.linear_backward(_x((4, 2)), None, _x(), _x((3, 2)), "relu"), TypeError, "y must have dtype"),
    (lambda: fastwb.linear_backward(_x((4, 2)), _x((4, 2)), _x(), _x((3, 2)), out=(None, None)), TypeError, "out must be a tuple"),
    (lambda: fastwb.linear_backward(_x((4, 2)), _x((4, 2)), _x(), _x((3, 2)), "relu", work=np.empty((4, 3), f32)), ValueError, "work has shape"),
    (lambda: fastwb.relu(np.arange(5)), TypeError, "x must have dtype float32 or float64, got int64"),
    (lambda: fastwb.relu(np.ones(3, np.float16)), TypeError, "float16"),
    (lambda: fastwb.relu(np.ones(3, ">f4")), TypeError, "x must have dtype"),
    (lambda: fastwb.relu(np.ones(3, np.complex128)), TypeError, "complex128"),
    (lambda: fastwb.relu(np.ones(3, f32), out=np.ones(4, f32)), ValueError, "out has shape"),
    (lambda: fastwb.sigmoid_backward(_x(), _x((4, 2))), ValueError, "grad_y has shape"),
    (lambda: fastwb.sigmoid_backward(_x(), _x(dtype=f64)), TypeError, "mixed dtypes"),
    (lambda: fastwb.leaky_relu(_x(), alpha=-1), ValueError, "alpha must be >= 0"),
    (lambda: fastwb.softmax(np.float32(3.0)), ValueError, "at least one dimension"),
    (lambda: fastwb.softmax_cross_entropy(_x((4, 3)), [0, 1, 2]), ValueError, r"labels has shape \(3,\), expected \(4,\)"),
    (lambda: fastwb.softmax_cross_entropy(_x((4, 3)), [0, 1, 2, 3]), ValueError, r"labels\[3\] = 3 is not a class index in \[0, 3\)"),
    (lambda: fastwb.softmax_cross_entropy(_x((4, 3)), [0, -1, 2, 1]), ValueError, r"labels\[1\] = -1"),
    (lambda: fastwb.softmax_cross_entropy(_x((2, 3)), np.array([0, 2**63 + 5], np.uint64)), ValueError, r"labels\[1\]"),
    (lambda: fastwb.softmax_cross_entropy(_x((4, 3)), [0.0, 1.0, 2.0, 1.0]), TypeError, "labels must be integer class indices"),
    (lambda: fastwb.softmax_cross_entropy(_x((4, 3)), np.array([True] * 4)), TypeError, "labels must be integer"),
    (lambda: fastwb.softmax_cross_entropy(_x((4, 0)), [0, 0, 0, 0]), ValueError, r"not a class index in \[0, 0\)"),
    (lambda: fastwb.softmax_cross_entropy(_x((4,)), [0]), ValueError, "logits must be 2-D"),
])
def test_bad_input_raises_clearly(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_out_rejected():
    out = np.empty((4, 2), f32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fastwb.linear(_x(), _x((3, 2)), out=out)


def test_read_only_inputs_are_fine():
    x = _x()
    x.flags.writeable = False
    W = _x((3, 2))
    W.flags.writeable = False
    y = fastwb.linear(x, W, None, "relu")
    g = np.ones_like(y)
    g.flags.writeable = False
    y.flags.writeable = False
    fastwb.linear_backward(g, y, x, W, "relu")
    fastwb.linear_backward(g, y, x, W, "identity")
    fastwb.softmax_cross_entropy(y, np.zeros(4, np.int64))
    fastwb.relu_backward(g, y)


def test_inputs_not_modified(rng):
    x = rng.standard_normal((5, 4)).astype(f32)
    W = rng.standard_normal((4, 3)).astype(f32)
    b = rng.standard_normal(3).astype(f32)
    copies = [a.copy() for a in (x, W, b)]
    y = fastwb.linear(x, W, b, "sigmoid")
    g = rng.standard_normal(y.shape).astype(f32)
    gy, yy = g.copy(), y.copy()
    fastwb.linear_backward(g, y, x, W, "sigmoid")
    fastwb.softmax_cross_entropy(y, [0, 1, 2, 0, 1])
    for a, c in zip((x, W, b, g, y), copies + [gy, yy]):
        np.testing.assert_array_equal(a, c)
