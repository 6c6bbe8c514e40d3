"""Every compiled function against its NumPy twin in fastwb.reference."""

import numpy as np
import pytest
from conftest import close, exact_loss, layouts

import fastwb
import fastwb.reference as R

ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
ELEMENTWISE = ["relu", "leaky_relu", "sigmoid", "tanh"]
SHAPES_2D = [(0, 5), (1, 1), (1, 7), (7, 0), (3, 17), (33, 65), (128, 10)]
# large enough that the threaded paths run (see fastwb._runtime grains)
LARGE = (1536, 1400)


def special_values(dtype):
    """Inputs that break naive formulas: huge magnitudes, tiny ones, signed zeros, Inf, NaN."""
    big = np.finfo(dtype).max
    return np.array(
        [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.3, -0.3, 0.625, -0.625, 1.0, -1.0, 5.0, -5.0,
         20.0, -20.0, 88.0, -88.0, 89.0, -89.0, 104.0, -104.0, 700.0, -700.0, 710.0, -710.0,
         745.0, -745.0, 800.0, -800.0, big, -big, np.inf, -np.inf, np.nan],
        dtype=np.float64,
    ).astype(dtype)


def _data(rng, shape, dtype, spread=3.0):
    return (rng.standard_normal(shape) * spread).astype(dtype)


# ---------------------------------------------------------------------------
# elementwise activations
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(0,), (1,), (5,), (3, 17), (2, 3, 4), (1 << 19,)])
def test_activation_matches_twin(name, shape, dtype, rng):
    x = _data(rng, shape, dtype)
    y = getattr(fastwb, name)(x)
    assert y.dtype == dtype and y.shape == x.shape
    close(y, getattr(R, name)(x), dtype)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_special_values(name, dtype):
    x = special_values(dtype)
    with np.errstate(all="ignore"):
        expected = getattr(R, name)(x)
    close(getattr(fastwb, name)(x), expected, dtype)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_exp_based_activation_dense_sweep(name, dtype):
    """Every float32 exponent range from 1e-7 to the overflow limits, both signs."""
    mag = np.geomspace(1e-7, 120.0 if dtype == np.float32 else 800.0, 200001)
    x = np.concatenate([mag, -mag]).astype(dtype)
    with np.errstate(all="ignore"):
        expected = getattr(R, name)(x)
    close(getattr(fastwb, name)(x), expected, dtype)


def _ulp_error(y, ref, dtype):
    """|y - ref| in units in the last place of dtype at ref (ref in a wider type)."""
    info = np.finfo(dtype)
    _, e = np.frexp(ref)
    e = np.maximum(e, info.minexp + 1)          # below the normal range the spacing stays 2^(minexp - nmant)
    return np.abs(y.astype(ref.dtype) - ref) / np.ldexp(ref.dtype.type(1), e - info.nmant - 1)


def _tanh_points(dtype, stride):
    """Positive inputs for the tanh error bound: every stride-th float of the type from
    2^-30 to 12 (every exponent range), a sparser sweep of the subnormal and tiny ones,
    every float (float32) or a dense comb (float64) around each point where
    m = round(2|x| log2 e), the reduction in fwb_tanh, steps, and huge values."""
    bits = np.uint32 if dtype == np.float32 else np.uint64
    info = np.finfo(dtype)

    def span(lo, hi, step=1):
        b0, b1 = np.array([lo, hi], dtype=dtype).view(bits)
        return np.arange(b0, b1, step, dtype=bits).view(dtype)

    parts = [span(2.0 ** -30, 12.0, stride), span(info.smallest_subnormal, 2.0 ** -30, stride * 1009),
             np.array([9.0109, 19.06, 1e3, 1e30, info.max], dtype=dtype)]
    for m in range(56 if dtype == np.float64 else 27):
        c = dtype((m + 0.5) * np.log(2.0) / 2)
        parts.append(span(c * dtype(1 - 1e-5), c * dtype(1 + 1e-5), 1 if dtype == np.float32 else 1 << 29))
    return np.concatenate(parts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tanh_ulp_error_bound(dtype):
    """fwb_tanh's documented error bound (csrc/fwb_math.h), against tanh in a wider type:
    float32 against float64 np.tanh, float64 against long double np.tanh (x87, 64-bit
    mantissa).  Also: odd to the bit, the sign of zero, +-inf -> +-1 exactly, NaN,
    tiny and subnormal x give x exactly, saturation to exactly 1, and the same bits
    for 1, 2 and 4 threads."""
    if dtype == np.float32:
        # plus every float of [0.49, 0.53), where the error peaks (1.954 ulp at 0.5196425)
        wide, bound = np.float64, 2.0
        window = np.arange(0x3EFAE148, 0x3F07AE14, dtype=np.uint32).view(np.float32)
        x = np.concatenate([_tanh_points(np.float32, 251), window])
    else:
        if np.finfo(np.longdouble).nmant < 63:
            pytest.skip("needs an 80-bit long double for the float64 reference")
        wide, bound = np.longdouble, 2.0
        rng = np.random.default_rng(7)
        x = np.concatenate([_tanh_points(np.float64, 1 << 40), rng.uniform(0.45, 0.53, 400_000),
                            rng.uniform(0.0, 20.0, 200_000)])
    x = np.concatenate([x, -x])
    y = fastwb.tanh(x)
    err = _ulp_error(y, np.tanh(x.astype(wide)), dtype)
    worst = int(np.argmax(err))
    assert err[worst] <= bound, f"{err[worst]:.3f} ulp at x = {x[worst]!r}: {y[worst]!r}"
    assert np.array_equal(fastwb.tanh(-x).view(np.uint8), (-y).view(np.uint8))      # odd, bit for bit
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 30.0, -30.0, 1e300 if dtype == np.float64 else 3e38],
                       dtype=dtype)
    got = fastwb.tanh(special)
    assert np.array_equal(np.signbit(got[:2]), [False, True]) and got[0] == 0 and got[1] == 0
    assert got[2] == 1 and got[3] == -1 and np.isnan(got[4]) and got[5] == 1 and got[6] == -1 and got[7] == 1
    info = np.finfo(dtype)
    tiny = np.concatenate([info.smallest_subnormal * np.arange(1, 100, dtype=dtype),
                           np.geomspace(info.tiny, 2.0 ** -(info.nmant + 3), 1000, dtype=dtype)])
    tiny = np.concatenate([tiny, -tiny])
    np.testing.assert_array_equal(fastwb.tanh(tiny), tiny)
    big = np.append(np.geomspace(9.02 if dtype == np.float32 else 19.07, info.max / 4, 1000, dtype=dtype), info.max)
    np.testing.assert_array_equal(fastwb.tanh(big), 1)
    # elementwise: any thread count gives the same bits (x is large enough to be split)
    with fastwb.threads(1):
        one = fastwb.tanh(x)
    for n in (2, 4):
        with fastwb.threads(n):
            assert np.array_equal(fastwb.tanh(x).view(np.uint8), one.view(np.uint8)), n


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_activation_layouts(name, layout, dtype, rng):
    x = layouts(_data(rng, (9, 13), dtype))[layout]
    y = getattr(fastwb, name)(x)
    assert not np.isnan(y).any()
    close(y, getattr(R, name)(np.ascontiguousarray(x)), dtype)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_in_place_and_overlap(name, dtype, rng):
    x = _data(rng, (40,), dtype)
    expected = getattr(R, name)(x.copy())
    same = x.copy()
    assert getattr(fastwb, name)(same, out=same) is same
    close(same, expected, dtype)
    # out overlaps x shifted by one element: the result must equal the unaliased one
    buf = np.concatenate([x, np.zeros(1, dtype)])
    src, dst = buf[:-1], buf[1:]
    getattr(fastwb, name)(src, out=dst)
    close(dst, expected, dtype)


def test_out_is_written_only_inside(dtype, rng):
    x = _data(rng, (50,), dtype)
    buf = np.full(70, 7.0, dtype)
    out = buf[10:60]
    fastwb.sigmoid(x, out=out)
    assert (buf[:10] == 7).all() and (buf[60:] == 7).all()
    close(out, R.sigmoid(x), dtype)


def test_leaky_relu_alpha(dtype, rng):
    x = _data(rng, (100,), dtype)
    for alpha in (0.0, 0.01, 0.2, 1.0, 3.0):
        close(fastwb.leaky_relu(x, alpha), R.leaky_relu(x, alpha), dtype)
        g = _data(rng, (100,), dtype)
        y = fastwb.leaky_relu(x, alpha)
        close(fastwb.leaky_relu_backward(g, y, alpha), R.leaky_relu_backward(g, y, alpha), dtype)


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 17), (1 << 19,)])
def test_activation_backward_matches_twin(name, shape, dtype, rng):
    x = _data(rng, shape, dtype)
    y = getattr(R, name)(x)
    g = _data(rng, shape, dtype, 1.0)
    got = getattr(fastwb, name + "_backward")(g, y)
    close(got, getattr(R, name + "_backward")(g, y), dtype, ulps=1)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_backward_nan_inf_propagate(name, dtype):
    y = getattr(R, name)(np.array([-1.0, 0.0, 0.5, 2.0], dtype))
    g = np.array([np.nan, np.inf, -np.inf, 1.0], dtype)
    with np.errstate(all="ignore"):
        expected = getattr(R, name + "_backward")(g, y)
    close(getattr(fastwb, name + "_backward")(g, y), expected, dtype, ulps=1)


def test_backward_in_place(dtype, rng):
    y = R.sigmoid(_data(rng, (30,), dtype))
    g = _data(rng, (30,), dtype)
    expected = R.sigmoid_backward(g, y)
    g2 = g.copy()
    fastwb.sigmoid_backward(g2, y, out=g2)
    close(g2, expected, dtype, ulps=1)


# ---------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (1, 1), (1, 10), (7, 3), (64, 1000), (2, 3, 5), (11,)])
def test_softmax_matches_twin(shape, dtype, rng):
    x = _data(rng, shape, dtype, 10.0)
    y = fastwb.softmax(x)
    close(y, R.softmax(x), dtype, ulps=8)
    if x.size:
        close(y.sum(axis=-1), np.ones(shape[:-1]), dtype, ulps=16)


def test_softmax_extremes(dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4], [0.0, np.inf, 1.0],
                  [np.nan, 0.0, 1.0], [-np.inf, 0.0, 1.0]], dtype)
    with np.errstate(all="ignore"):
        expected = R.softmax(x)
    close(fastwb.softmax(x), expected, dtype, ulps=8)


def test_softmax_layouts_and_in_place(dtype, rng):
    x = _data(rng, (6, 9), dtype)
    for arr in layouts(x).values():
        close(fastwb.softmax(arr), R.softmax(x), dtype, ulps=8)
    z = x.copy()
    fastwb.softmax(z, out=z)
    close(z, R.softmax(x), dtype, ulps=8)


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (5, 7), (64, 100)])
def test_softmax_backward_matches_twin(shape, dtype, rng):
    y = R.softmax(_data(rng, shape, dtype))
    g = _data(rng, shape, dtype)
    close(fastwb.softmax_backward(g, y), R.softmax_backward(g, y), dtype, ulps=16, scale=True)


# ---------------------------------------------------------------------------
# softmax cross-entropy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (7, 3), (128, 10), (4096, 1000)])
def test_softmax_cross_entropy_matches_twin(shape, dtype, rng):
    n, c = shape
    z = _data(rng, shape, dtype, 5.0)
    labels = rng.integers(0, c, n)
    loss, grad = fastwb.softmax_cross_entropy(z, labels)
    loss_r, grad_r = R.softmax_cross_entropy(z, labels)
    assert isinstance(loss, float) and grad.dtype == dtype
    close(loss, exact_loss(z, labels), dtype, ulps=16)
    close(grad, grad_r, dtype, ulps=8, scale=True)


def test_softmax_cross_entropy_empty_batch(dtype):
    loss, grad = fastwb.softmax_cross_entropy(np.zeros((0, 4), dtype), np.zeros(0, np.int64))
    assert np.isnan(loss) and grad.shape == (0, 4)


def test_softmax_cross_entropy_extremes(dtype):
    z = np.array([[1000.0, -1000.0, 0.0], [-800.0, -800.0, -800.0], [50.0, 50.0, 50.0]], dtype)
    labels = np.array([1, 2, 0])
    loss, grad = fastwb.softmax_cross_entropy(z, labels)
    loss_r, grad_r = R.softmax_cross_entropy(z, labels)
    assert np.isfinite(loss)
    close(loss, exact_loss(z, labels), dtype)
    close(grad, grad_r, dtype, scale=True)
    nan_loss, nan_grad = fastwb.softmax_cross_entropy(np.array([[np.nan, 0.0]], dtype), [0])
    assert np.isnan(nan_loss) and np.isnan(nan_grad).all()


def test_softmax_cross_entropy_out_aliases_logits(dtype, rng):
    z = _data(rng, (16, 5), dtype)
    labels = rng.integers(0, 5, 16)
    loss_r, grad_r = R.softmax_cross_entropy(z, labels)
    exact = exact_loss(z, labels)
    loss, grad = fastwb.softmax_cross_entropy(z, labels, out=z)
    assert grad is z
    close(grad, grad_r, dtype, scale=True)
    close(loss, exact, dtype)


def test_softmax_cross_entropy_label_dtypes(rng):
    z = _data(rng, (6, 4), np.float64)
    expected = R.softmax_cross_entropy(z, np.array([0, 1, 2, 3, 0, 1]))
    for dt in (np.int8, np.uint8, np.int32, np.uint64, np.int64):
        loss, grad = fastwb.softmax_cross_entropy(z, np.array([0, 1, 2, 3, 0, 1], dtype=dt))
        close(loss, expected[0], np.float64)
    loss, _ = fastwb.softmax_cross_entropy(z, [0, 1, 2, 3, 0, 1])
    close(loss, expected[0], np.float64)


# ---------------------------------------------------------------------------
# dense layer
# ---------------------------------------------------------------------------

def _layer(rng, n, k, m, dtype):
    x = _data(rng, (n, k), dtype, 1.0)
    W = _data(rng, (k, m), dtype, 1.0 / np.sqrt(max(k, 1)))
    b = _data(rng, (m,), dtype, 0.5)
    return x, W, b


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,k,m", [(0, 3, 4), (1, 1, 1), (5, 0, 3), (4, 3, 0), (7, 13, 9), (128, 784, 256), LARGE + (700,)])
def test_linear_matches_twin(act, n, k, m, dtype, rng):
    x, W, b = _layer(rng, n, k, m, dtype)
    y = fastwb.linear(x, W, b, act, alpha=0.05)
    assert y.dtype == dtype and y.shape == (n, m) and y.flags.c_contiguous
    # the GEMMs are the same BLAS kernel called on different blocks (fastwb's tiles, NumPy's whole
    # call), so float32 sums of k products round differently: compared relative to the largest output
    close(y, R.linear(x, W, b, act, alpha=0.05), dtype, ulps=16, scale=True)
    close(fastwb.linear(x, W, None, act), R.linear(x, W, None, act), dtype, ulps=16, scale=True)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_linear_layouts(layout, dtype, rng):
    x, W, b = _layer(rng, 6, 5, 4, dtype)
    xs, Ws, bs = layouts(x)[layout], layouts(W)[layout], layouts(b)[layout]
    y = fastwb.linear(xs, Ws, bs, "tanh")
    assert not np.isnan(y).any()
    close(y, R.linear(x, W, b, "tanh"), dtype)


def test_linear_out(dtype, rng):
    x, W, b = _layer(rng, 8, 5, 3, dtype)
    out = np.empty((8, 3), dtype)
    assert fastwb.linear(x, W, b, "relu", out=out) is out
    close(out, R.linear(x, W, b, "relu"), dtype)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,k,m", [(0, 3, 4), (1, 1, 1), (6, 0, 3), (5, 3, 0), (7, 13, 9), (128, 784, 256), (2048, 300, 1100)])
def test_linear_backward_matches_twin(act, n, k, m, dtype, rng):
    x, W, b = _layer(rng, n, k, m, dtype)
    y = R.linear(x, W, b, act, alpha=0.05)
    g = _data(rng, (n, m), dtype, 1.0)
    got = fastwb.linear_backward(g, y, x, W, act, alpha=0.05)
    ref = R.linear_backward(g, y, x, W, act, alpha=0.05)
    for a, e in zip(got, ref):
        assert a.dtype == dtype and a.shape == e.shape
        close(a, e, dtype, ulps=16, scale=True)
    gx, gW, gb = fastwb.linear_backward(g, y, x, W, act, alpha=0.05, need_grad_x=False)
    assert gx is None
    close(gb, ref[2], dtype, ulps=16, scale=True)


def test_linear_backward_out_and_work(dtype, rng):
    x, W, b = _layer(rng, 9, 4, 6, dtype)
    y = R.linear(x, W, b, "relu")
    g = _data(rng, (9, 6), dtype)
    out = (np.empty((9, 4), dtype), np.empty((4, 6), dtype), np.empty(6, dtype))
    work = np.empty((9, 6), dtype)
    got = fastwb.linear_backward(g, y, x, W, "relu", out=out, work=work)
    assert all(a is o for a, o in zip(got, out))
    for a, e in zip(got, R.linear_backward(g, y, x, W, "relu")):
        close(a, e, dtype, scale=True)


def test_linear_backward_bias_gradient_is_exact_column_sum(dtype, rng):
    """The fused column sums add rows in order, exactly as NumPy's sum over axis 0."""
    g = _data(rng, (1000, 37), dtype)
    x, W, _ = _layer(rng, 1000, 3, 37, dtype)
    _, _, gb = fastwb.linear_backward(g, None, x, W, "identity")
    np.testing.assert_array_equal(gb, g.sum(axis=0))
