"""fastwb.normalization: BatchNorm1d fused with an activation and dropout, and
dropout alone, against the NumPy twin, finite differences, PyTorch (skipped
without it), across thread counts, with overlapping arguments, and on bad
input; the dropout generator's keep rate and independence."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastwb
from fastwb import normalization as N
from fastwb.reference import normalization as R

from conftest import close, layouts

DTYPES = [np.float32, np.float64]
ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]


def _data(n, m, dtype, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, m)) * 2 + shift).astype(dtype)
    g = rng.standard_normal((n, m)).astype(dtype)
    gamma = (1 + 0.3 * rng.standard_normal(m)).astype(dtype)
    beta = (0.3 * rng.standard_normal(m)).astype(dtype)
    rm = (0.1 * rng.standard_normal(m)).astype(dtype)
    rv = (1 + rng.random(m)).astype(dtype)
    return x, g, gamma, beta, rm, rv


def _near(a, b, dtype):
    """float64: 1e-12 relative to the array's largest entry; float32: a few
    ulps of it (the twin sums in float32, fastwb in double)."""
    if np.dtype(dtype) == np.float64:
        close(a, b, dtype, scale=True)
    else:
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(1.0, float(np.max(np.abs(b), initial=0))))


# ---------------------------------------------------------------------------
# against the twin
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("training,p", [(True, 0.0), (True, 0.3), (False, 0.0), (False, 0.3)])
@pytest.mark.parametrize("shape", [(2, 1), (7, 33), (40, 1030)])
def test_batch_norm_matches_twin(dtype, activation, training, p, shape):
    x, g, gamma, beta, rm, rv = _data(*shape, dtype, shift=3.0)
    kw = dict(training=training, activation=activation, alpha=0.1, dropout=p, seed=5, step=9)
    rm1, rv1, rm2, rv2 = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    y1, mean1, inv1 = N.batch_norm(x, gamma, beta, rm1, rv1, **kw)
    y2, mean2, inv2 = R.batch_norm(x, gamma, beta, rm2, rv2, **kw)
    for a, b in ((y1, y2), (mean1, mean2), (inv1, inv2), (rm1, rm2), (rv1, rv2)):
        assert a.dtype == dtype
        _near(a, b, dtype)
    got = N.batch_norm_backward(g, x, mean1, inv1, gamma, beta, **kw)
    want = R.batch_norm_backward(g, x, mean1, inv1, gamma, beta, **kw)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        _near(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_without_affine_or_running_stats(dtype):
    x, g, *_ = _data(9, 20, dtype)
    y1, m1, s1 = N.batch_norm(x, None, None)
    y2, m2, s2 = R.batch_norm(x, None, None)
    _near(y1, y2, dtype)
    _near(y1.mean(axis=0), np.zeros(20), np.float32)
    gx, gg, gb = N.batch_norm_backward(g, x, m1, s1)
    assert gg is None and gb is None
    _near(gx, R.batch_norm_backward(g, x, m1, s1)[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["F", "strided"])
def test_non_contiguous_inputs(dtype, layout):
    x, g, gamma, beta, rm, rv = _data(6, 17, dtype)
    want = N.batch_norm(x, gamma, beta, activation="tanh", dropout=0.2)
    got = N.batch_norm(layouts(x)[layout], layouts(gamma)[layout], layouts(beta)[layout], activation="tanh",
                       dropout=0.2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    want = N.batch_norm_backward(g, x, want[1], want[2], gamma, beta, activation="tanh", dropout=0.2)
    got = N.batch_norm_backward(layouts(g)[layout], layouts(x)[layout], got[1], got[2], gamma, beta,
                                activation="tanh", dropout=0.2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_empty_and_tiny_batches():
    x = np.ones((1, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        N.batch_norm(x, None, None)
    with pytest.raises(ValueError, match="at least 2 rows"):
        N.batch_norm(np.ones((0, 4)), None, None)
    with pytest.raises(ValueError, match="at least 2 rows"):
        R.batch_norm(x, None, None)
    # eval mode normalises single samples and empty batches with the running statistics
    rm, rv = np.full(4, 0.5), np.full(4, 4.0)
    y, mean, inv = N.batch_norm(x, None, None, rm, rv, training=False)
    np.testing.assert_allclose(y, (1 - 0.5) / np.sqrt(4 + 1e-5))
    y, mean, inv = N.batch_norm(np.ones((0, 4)), None, None, rm, rv, training=False)
    assert y.shape == (0, 4)
    np.testing.assert_array_equal(mean, rm)
    np.testing.assert_allclose(inv, 1 / np.sqrt(4 + 1e-5))
    # no columns
    y, mean, inv = N.batch_norm(np.ones((3, 0)), None, None)
    assert y.shape == (3, 0) and mean.shape == (0,)
    assert N.batch_norm_backward(np.ones((3, 0)), np.ones((3, 0)), mean, inv)[0].shape == (3, 0)


def test_in_place_output():
    x, g, gamma, beta, rm, rv = _data(8, 40, np.float64)
    want = N.batch_norm(x, gamma, beta, activation="relu", dropout=0.5)[0]
    y = x.copy()
    N.batch_norm(y, gamma, beta, activation="relu", dropout=0.5, out=y)
    np.testing.assert_array_equal(y, want)


# ---------------------------------------------------------------------------
# finite differences (float64)
# ---------------------------------------------------------------------------

def _numeric_grads(f, arrays, h=1e-6):
    grads = []
    for a in arrays:
        d = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            up = f()
            a[i] = old - h
            down = f()
            a[i] = old
            d[i] = (up - down) / (2 * h)
        grads.append(d)
    return grads


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation,p", [("identity", 0.0), ("tanh", 0.0), ("sigmoid", 0.4), ("leaky_relu", 0.3)])
def test_backward_matches_finite_differences(training, activation, p):
    x, g, gamma, beta, rm, rv = _data(6, 4, np.float64, seed=3)
    kw = dict(training=training, activation=activation, alpha=0.2, dropout=p, seed=11, step=2)

    def loss():
        y = N.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), **kw)[0]
        return float(np.sum(y * g))

    _, mean, inv = N.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), **kw)
    gx, gg, gb = N.batch_norm_backward(g, x, mean, inv, gamma, beta, **kw)
    nx, ng, nb = _numeric_grads(loss, [x, gamma, beta])
    np.testing.assert_allclose(gx, nx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gg, ng, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, nb, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# PyTorch (float64, 1e-10)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("affine", [True, False])
def test_against_torch_batchnorm1d(momentum, affine):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    m = 7
    bn = torch.nn.BatchNorm1d(m, momentum=momentum, affine=affine, dtype=torch.float64)
    rng = np.random.default_rng(4)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(1 + 0.2 * rng.standard_normal(m)))
            bn.bias.copy_(torch.from_numpy(0.2 * rng.standard_normal(m)))
    gamma = bn.weight.detach().numpy().copy() if affine else None
    beta = bn.bias.detach().numpy().copy() if affine else None
    rm, rv, nbt = np.zeros(m), np.ones(m), np.zeros(1, np.int64)
    for step in range(4):
        training = step != 2
        bn.train(training)
        x = rng.standard_normal((5 + step, m)) * 3 + 1
        g = rng.standard_normal(x.shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = bn(xt)
        yt.backward(torch.from_numpy(g))
        y, mean, inv = N.batch_norm(x, gamma, beta, rm, rv, training=training, momentum=momentum,
                                    num_batches_tracked=nbt)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-10, atol=1e-12)
        assert int(nbt[0]) == int(bn.num_batches_tracked)
        gx, gg, gb = N.batch_norm_backward(g, x, mean, inv, gamma, beta, training=training)
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
        if affine:
            np.testing.assert_allclose(gg, bn.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(gb, bn.bias.grad.numpy(), rtol=1e-10, atol=1e-10)
            bn.weight.grad = bn.bias.grad = None


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_against_torch_with_activation_and_injected_dropout(activation):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    n, m, p = 12, 9, 0.35
    x, g, gamma, beta, rm, rv = _data(n, m, np.float64, seed=8)
    mask = N.dropout_mask((n, m), p, seed=3, step=4)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(gamma).requires_grad_(True)
    bt = torch.from_numpy(beta).requires_grad_(True)
    z = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True)
    yt = getattr(torch, activation)(z) * torch.from_numpy(mask.astype(np.float64)) / (1 - p)
    yt.backward(torch.from_numpy(g))
    kw = dict(activation=activation, dropout=p, seed=3, step=4)
    y, mean, inv = N.batch_norm(x, gamma, beta, **kw)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    gx, gg, gb = N.batch_norm_backward(g, x, mean, inv, gamma, beta, **kw)
    for a, b in ((gx, xt.grad), (gg, wt.grad), (gb, bt.grad)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# running statistics
# ---------------------------------------------------------------------------

def test_cumulative_average_and_counter():
    rng = np.random.default_rng(1)
    rm, rv, nbt = np.zeros(3), np.ones(3), np.zeros((), np.int64)
    batches = [rng.standard_normal((4, 3)) for _ in range(5)]
    for b in batches:
        N.batch_norm(b, None, None, rm, rv, momentum=None, num_batches_tracked=nbt)
    assert int(nbt) == 5
    np.testing.assert_allclose(rm, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv, np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0), rtol=1e-12)
    # eval mode does not count
    N.batch_norm(batches[0], None, None, rm, rv, training=False, momentum=None, num_batches_tracked=nbt)
    assert int(nbt) == 5


def test_statistics_are_accurate_far_from_zero():
    """Shifted sums: a column with a large mean and a small spread keeps its variance."""
    x = 1e6 + np.random.default_rng(2).standard_normal((500, 3)).astype(np.float64)
    _, mean, inv = N.batch_norm(x, None, None, eps=0.0)
    np.testing.assert_allclose(1 / inv ** 2, x.var(axis=0), rtol=1e-9)
    x32 = x.astype(np.float32)
    _, mean, inv = N.batch_norm(x32, None, None, eps=0.0)
    np.testing.assert_allclose(1 / inv.astype(np.float64) ** 2, x32.astype(np.float64).var(axis=0), rtol=1e-5)


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_any_thread_count(dtype):
    # 512 x 1100 with sigmoid and dropout is above four times the compute grain: 4 threads when allowed
    x, g, gamma, beta, rm, rv = _data(512, 1100, dtype, seed=6)
    kw = dict(activation="sigmoid", dropout=0.25, seed=1, step=7)
    results = []
    for n in (1, 2, 4):
        with fastwb.threads(n):
            r1, v1 = rm.copy(), rv.copy()
            y, mean, inv = N.batch_norm(x, gamma, beta, r1, v1, **kw)
            results.append((y, mean, inv, r1, v1) + N.batch_norm_backward(g, x, mean, inv, gamma, beta, **kw)
                           + (N.dropout(x, 0.3, 2, 3),))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# dropout and its generator
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_matches_twin_bitwise(dtype, p):
    x = np.random.default_rng(0).standard_normal((37, 29)).astype(dtype)
    y = N.dropout(x, p, seed=12, step=34)
    np.testing.assert_array_equal(y, R.dropout(x, p, seed=12, step=34))
    np.testing.assert_array_equal(N.dropout_mask(x.shape, p, 12, 34), R.dropout_mask(x.shape, p, 12, 34))
    np.testing.assert_array_equal(N.dropout_backward(x, p, 12, 34), R.dropout_backward(x, p, 12, 34))
    mask = N.dropout_mask(x.shape, p, 12, 34)
    np.testing.assert_array_equal(y, np.where(mask, x * dtype(1 / (1 - p)), 0))
    assert y.dtype == dtype


def test_batch_norm_drops_with_the_same_mask():
    x, *_ = _data(10, 30, np.float64)
    y = N.batch_norm(x, None, None, dropout=0.4, seed=9, step=1)[0]
    y0 = N.batch_norm(x, None, None)[0]
    mask = N.dropout_mask(x.shape, 0.4, 9, 1)
    np.testing.assert_array_equal(y, np.where(mask, y0 * (1 / 0.6), 0))


def test_dropout_specials():
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 50)
    mask = N.dropout_mask(x.shape, 0.5, 1, 1)
    y = N.dropout(x, 0.5, 1, 1)
    assert np.all(y[~mask] == 0)                      # dropped NaN/Inf are exactly 0
    np.testing.assert_array_equal(y[mask], x[mask] * 2)
    np.testing.assert_array_equal(N.dropout(x, 0.0), x)  # p = 0 copies
    assert not N.dropout_mask(1000, 1 - 2.0 ** -40).any()
    assert N.dropout_mask(1000, 0.0).all()
    y = x.copy()
    N.dropout(y, 0.5, 1, 1, out=y)
    np.testing.assert_array_equal(y, N.dropout(x, 0.5, 1, 1))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_generator_keep_rate_of_16m_draws(p):
    n = 1 << 24
    kept = int(np.count_nonzero(N.dropout_mask(n, p, seed=2024, step=17)))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 5 * sigma


def test_generator_has_no_visible_correlation():
    """Masks of consecutive steps, of neighbouring seeds, and neighbouring
    elements of one mask are uncorrelated (|r| below 5 / sqrt(n))."""
    n, p = 1 << 20, 0.3
    limit = 5 / math.sqrt(n)

    def r(a, b):
        return abs(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])

    base = N.dropout_mask(n, p, seed=7, step=100)
    assert r(base, N.dropout_mask(n, p, seed=7, step=101)) < limit
    assert r(base, N.dropout_mask(n, p, seed=8, step=100)) < limit
    assert r(base, N.dropout_mask(n, p, seed=0, step=0)) < limit
    assert r(base[:-1], base[1:]) < limit                      # neighbours
    assert r(base[:-1024], base[1024:]) < limit                # same column of a 1024-wide batch
    # the keep rate does not drift along the array (runs of 64K elements)
    rates = base.reshape(16, -1).mean(axis=1)
    assert np.all(np.abs(rates - (1 - p)) < 5 * math.sqrt(p * (1 - p) / (n // 16)))
    # a different (seed, step) is a different mask, not a shifted copy of this one
    other = N.dropout_mask(n, p, seed=7, step=101)
    best = max(np.mean(base[s:] == other[:n - s]) for s in range(0, 64))
    assert best < 0.6 + 0.01


# ---------------------------------------------------------------------------
# overlapping arguments (the aliasing rule), fastwb and the twin
# ---------------------------------------------------------------------------

def _views(data, dtype, shapes):
    sizes = [int(np.prod(s)) for s in shapes]
    total = max(sizes) + data.draw(st.integers(0, sum(sizes)), label="slack")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    buf = (np.random.default_rng(seed).random(total) + 0.5).astype(dtype)
    views = []
    for i, (shape, size) in enumerate(zip(shapes, sizes)):
        off = data.draw(st.integers(0, total - size), label=f"offset{i}")
        views.append(buf[off:off + size].reshape(shape))
    return views


def _compare(call, inputs, outs, exact):
    fresh = [None if o is None else np.empty_like(o) for o in outs]
    want = call([a.copy() for a in inputs], fresh)
    live = [o for o in outs if o is not None]
    if any(np.may_share_memory(a, b) for i, a in enumerate(live) for b in live[i + 1:]):
        with pytest.raises(ValueError, match="share memory"):
            call(inputs, outs)
        return
    got = call(inputs, outs)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        elif exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", [N, R], ids=["fastwb", "twin"])
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(2, 5), m=st.integers(1, 5), training=st.booleans())
def test_batch_norm_with_overlapping_arguments(impl, dtype, data, n, m, training):
    x, gamma, beta, rm, rv, y, mean, inv = _views(data, dtype, [(n, m), (m,), (m,), (m,), (m,), (n, m), (m,), (m,)])

    def call(i, o):
        # the running statistics are outputs in training, inputs in eval
        r1, r2 = (o[3], o[4]) if training else (i[3], i[4])
        res = impl.batch_norm(i[0], i[1], i[2], r1, r2, training=training, activation="tanh", dropout=0.3,
                              out=o[0], stats=(o[1], o[2]))
        return res + ((r1.copy(), r2.copy()) if training else ())

    outs = [y, mean, inv] + ([rm, rv] if training else [None, None])
    _compare(call, [x, gamma, beta, rm, rv], outs, exact=impl is N)


@pytest.mark.parametrize("impl", [N, R], ids=["fastwb", "twin"])
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), m=st.integers(1, 5), training=st.booleans(),
       work=st.booleans())
def test_batch_norm_backward_with_overlapping_arguments(impl, dtype, data, n, m, training, work):
    g, x, mean, inv, gamma, beta, gx, gg, gb, wk = _views(
        data, dtype, [(n, m), (n, m), (m,), (m,), (m,), (m,), (n, m), (m,), (m,), (n, m)])

    def call(i, o):
        return impl.batch_norm_backward(i[0], i[1], i[2], i[3], i[4], i[5], training=training, activation="sigmoid",
                                        dropout=0.3, out=(o[0], o[1], o[2]), work=o[3])

    _compare(call, [g, x, mean, inv, gamma, beta], [gx, gg, gb, wk if work and training else None],
             exact=impl is N)


@pytest.mark.parametrize("impl", [N, R], ids=["fastwb", "twin"])
@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_dropout_with_overlapping_arguments(impl, data, n):
    x, y = _views(data, np.float32, [(n,), (n,)])
    _compare(lambda i, o: (impl.dropout(i[0], 0.4, 3, 4, out=o[0]),), [x], [y], exact=True)


def test_backward_gradient_in_place_of_grad_y():
    x, g, gamma, beta, rm, rv = _data(6, 5, np.float64)
    _, mean, inv = N.batch_norm(x, gamma, beta)
    want = N.batch_norm_backward(g, x, mean, inv, gamma, beta)
    gy = g.copy()
    got = N.batch_norm_backward(gy, x, mean, inv, gamma, beta, out=(gy, None, None), work=None)
    np.testing.assert_array_equal(got[0], want[0])
    gy = g.copy()
    got = N.batch_norm_backward(gy, x, mean, inv, gamma, beta, work=gy)
    np.testing.assert_array_equal(got[0], want[0])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.ones((4, 3))
    v = np.ones(3)
    cases = [
        (lambda: N.batch_norm(np.ones(3), None, None), ValueError, "x must be 2-D"),
        (lambda: N.batch_norm(x.astype(np.int64), None, None), TypeError, "x must have dtype"),
        (lambda: N.batch_norm(x, np.ones(4), None), ValueError, "gamma has shape"),
        (lambda: N.batch_norm(x, None, v.astype(np.float32)), TypeError, "mixed dtypes"),
        (lambda: N.batch_norm(x, None, None, v), ValueError, "running_mean and running_var"),
        (lambda: N.batch_norm(x, None, None, training=False), ValueError, "running statistics"),
        (lambda: N.batch_norm(x, None, None, v.copy(), v.copy(), momentum=None), ValueError, "num_batches_tracked"),
        (lambda: N.batch_norm(x, None, None, v.copy(), v.copy(), momentum=1.5), ValueError, "momentum"),
        (lambda: N.batch_norm(x, None, None, eps=-1), ValueError, "eps"),
        (lambda: N.batch_norm(x, None, None, dropout=1.0), ValueError, "dropout"),
        (lambda: N.batch_norm(x, None, None, seed=-1), ValueError, "seed"),
        (lambda: N.batch_norm(x, None, None, step=2**64), ValueError, "step"),
        (lambda: N.batch_norm(x, None, None, seed=1.5), TypeError, "seed"),
        (lambda: N.batch_norm(x, None, None, activation="gelu"), ValueError, "valid names"),
        (lambda: N.batch_norm(x, None, None, out=np.ones((4, 4))), ValueError, "out has shape"),
        (lambda: N.batch_norm(x, None, None, stats=(v,)), TypeError, "stats"),
        (lambda: N.batch_norm(x, None, None, stats=(np.ones(2), v.copy())), ValueError, r"stats\[0\]"),
        (lambda: N.batch_norm(x, None, None, v.copy(), v.copy(), num_batches_tracked=np.zeros(1)), ValueError,
         "num_batches_tracked"),
        (lambda: N.batch_norm(x, None, None, v.copy(), np.ones(3)[::-1]), ValueError, "running_var"),
        (lambda: N.batch_norm_backward(np.ones((4, 2)), x, v, v), ValueError, "grad_y"),
        (lambda: N.batch_norm_backward(x, x, None, v), TypeError, "mean and invstd"),
        (lambda: N.batch_norm_backward(x, x, v, np.ones(2)), ValueError, "invstd has shape"),
        (lambda: N.batch_norm_backward(x, x, v, v, out=(None,)), TypeError, "out must be a tuple"),
        (lambda: N.dropout(x, -0.1), ValueError, "p must be >= 0"),
        (lambda: N.dropout(x, 0.5, out=np.ones((4, 3), np.float32)), TypeError, "out has dtype"),
        (lambda: N.dropout_mask((2, -1), 0.5), ValueError, r"shape\[1\]"),
        (lambda: N.dropout_mask("ab", 0.5), TypeError, "shape"),
    ]
    for fn, err, text in cases:
        with pytest.raises(err, match=text):
            fn()
