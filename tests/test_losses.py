"""The element-wise losses (mse_loss, bce_with_logits): against their NumPy twins,
PyTorch, finite differences, extreme logits, any thread count, overlapping
arguments and bad input."""

import math

import numpy as np
import pytest
from conftest import THREADS, close, layouts
from hypothesis import given
from hypothesis import strategies as st
from test_aliasing import SETTINGS, _check, _views

import fastwb
import fastwb.reference as R
from fastwb import _losses
from fastwb._runtime import GRAIN_COMPUTE, GRAIN_MEMORY

SHAPES = [(0, 5), (7, 0), (1, 1), (1, 7), (3, 17), (33, 65), (128, 10), (5, 3000), (9,), (2, 3, 4)]


def _targets(rng, shape, dtype, soft):
    t = rng.random(shape) if soft else (rng.random(shape) < 0.3)
    return t.astype(dtype)


def _pos_weight(rng, shape, dtype):
    return (rng.random(shape[-1]) * 3).astype(dtype)


def _exact_bce(z, t, pw=None):
    """The loss of the float inputs computed in float64 by the twin."""
    z, t = np.asarray(z, np.float64), np.asarray(t, np.float64)
    return R.bce_with_logits(z, t, pos_weight=None if pw is None else np.asarray(pw, np.float64))[0]


# ---------------------------------------------------------------------------
# against the twins
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mse_loss_matches_twin(shape, dtype, rng):
    p = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.standard_normal(shape).astype(dtype)
    loss, grad = fastwb.mse_loss(p, t)
    loss_r, grad_r = R.mse_loss(p, t)
    assert isinstance(loss, float) and grad.dtype == dtype and grad.shape == p.shape
    if p.size == 0:
        assert math.isnan(loss) and math.isnan(loss_r)
        return
    np.testing.assert_array_equal(grad, grad_r)          # one subtraction, one product: same bits
    close(loss, R.mse_loss(p.astype(np.float64), t.astype(np.float64))[0], dtype, ulps=8)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "pos_weight"])
@pytest.mark.parametrize("soft", [False, True], ids=["01", "soft"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_with_logits_matches_twin(shape, soft, weighted, dtype, rng):
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    t = _targets(rng, shape, dtype, soft)
    pw = _pos_weight(rng, shape, dtype) if weighted else None
    loss, grad = fastwb.bce_with_logits(z, t, pos_weight=pw)
    loss_r, grad_r = R.bce_with_logits(z, t, pos_weight=pw)
    assert isinstance(loss, float) and grad.dtype == dtype and grad.shape == z.shape
    if z.size == 0:
        assert math.isnan(loss) and math.isnan(loss_r)
        return
    close(loss, _exact_bce(z, t, pw), dtype, ulps=8)
    close(grad, grad_r, dtype, ulps=8, scale=True)


@pytest.mark.parametrize("layout", ["F", "strided"])
def test_non_contiguous_inputs(layout, dtype, rng):
    p = (rng.standard_normal((13, 7)) * 3).astype(dtype)
    t = rng.standard_normal((13, 7)).astype(dtype)
    u = _targets(rng, (13, 7), dtype, True)
    pw = _pos_weight(rng, (13, 7), dtype)
    want_mse = fastwb.mse_loss(p, t)
    want_bce = fastwb.bce_with_logits(p, u, pos_weight=pw)
    got_mse = fastwb.mse_loss(layouts(p)[layout], layouts(t)[layout])
    got_bce = fastwb.bce_with_logits(layouts(p)[layout], layouts(u)[layout], pos_weight=layouts(pw)["strided"])
    for got, want in ((got_mse, want_mse), (got_bce, want_bce)):
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])


def test_unit_pos_weight_is_no_weight(dtype, rng):
    z = (rng.standard_normal((20, 6)) * 4).astype(dtype)
    t = _targets(rng, (20, 6), dtype, True)
    plain = fastwb.bce_with_logits(z, t)
    ones = fastwb.bce_with_logits(z, t, pos_weight=np.ones(6, dtype))
    close(ones[0], plain[0], dtype)
    close(ones[1], plain[1], dtype, scale=True)


def test_out_is_written_and_returned(dtype, rng):
    p = rng.standard_normal((6, 4)).astype(dtype)
    t = rng.random((6, 4)).astype(dtype)
    for fn in (fastwb.mse_loss, fastwb.bce_with_logits):
        want_loss, want = fn(p, t)
        out = np.full_like(p, np.nan)
        loss, grad = fn(p, t, out=out)
        assert grad is out and loss == want_loss
        np.testing.assert_array_equal(out, want)
        for same in ("pred", "target"):                   # the result written over an input
            a, b = p.copy(), t.copy()
            loss, grad = fn(a, b, out=a if same == "pred" else b)
            assert grad is (a if same == "pred" else b) and loss == want_loss
            np.testing.assert_array_equal(grad, want)


# ---------------------------------------------------------------------------
# against PyTorch (float64, 1e-12)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (128, 10), (64, 300)])
def test_against_torch(shape, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    F = torch.nn.functional
    p = rng.standard_normal(shape) * 4
    t = rng.standard_normal(shape)
    u = rng.random(shape)
    pw = rng.random(shape[1]) * 3

    def torch_loss(fn, x, *args, **kw):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        loss = fn(xt, *[torch.tensor(a) for a in args], **kw)
        loss.backward()
        return loss.item(), xt.grad.numpy()

    cases = [
        (fastwb.mse_loss(p, t), torch_loss(F.mse_loss, p, t)),
        (fastwb.bce_with_logits(p, u), torch_loss(F.binary_cross_entropy_with_logits, p, u)),
        (fastwb.bce_with_logits(p, u, pos_weight=pw),
         torch_loss(F.binary_cross_entropy_with_logits, p, u, pos_weight=torch.tensor(pw))),
    ]
    for (loss, grad), (loss_t, grad_t) in cases:
        assert loss == pytest.approx(loss_t, rel=1e-12, abs=0)
        close(grad, grad_t, np.float64, scale=True)


# ---------------------------------------------------------------------------
# gradients, extremes, accuracy of the softplus term
# ---------------------------------------------------------------------------

def _finite_difference(fn, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (fn(xp) - fn(xm)) / (2 * h)
    return g


@pytest.mark.parametrize("loss_name", ["mse", "bce", "bce_pos_weight"])
def test_gradient_finite_differences(loss_name, rng):
    x = rng.standard_normal((4, 5)) * 3
    if loss_name == "mse":
        t = rng.standard_normal((4, 5))

        def fn(v):
            return fastwb.mse_loss(v, t)
    else:
        t = rng.random((4, 5))
        pw = rng.random(5) * 3 if loss_name == "bce_pos_weight" else None

        def fn(v):
            return fastwb.bce_with_logits(v, t, pos_weight=pw)

    grad = fn(x)[1]
    np.testing.assert_allclose(grad, _finite_difference(lambda v: fn(v)[0], x), rtol=1e-6, atol=1e-9)


def test_extreme_logits_stay_finite(dtype):
    z = np.array([[1e4, -1e4, 0.0, 1e4], [-1e4, 1e4, -1e4, 50.0]], dtype)
    t = np.array([[1.0, 0.0, 0.5, 0.0], [1.0, 0.0, 0.0, 1.0]], dtype)
    for pw in (None, np.array([2.0, 0.5, 1.0, 3.0], dtype)):
        with np.errstate(all="raise"):                   # no overflow anywhere in the kernel's result
            loss, grad = fastwb.bce_with_logits(z, t, pos_weight=pw)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        close(loss, _exact_bce(z, t, pw), dtype)
        close(grad, R.bce_with_logits(z.astype(np.float64), t.astype(np.float64),
                                      pos_weight=None if pw is None else pw.astype(np.float64))[1], dtype, scale=True)
    # each extreme element on its own: the exact answers
    assert fastwb.bce_with_logits(np.array([[1e4]], dtype), np.array([[1.0]], dtype))[0] == 0.0
    assert fastwb.bce_with_logits(np.array([[-1e4]], dtype), np.array([[1.0]], dtype))[0] == 1e4
    assert fastwb.bce_with_logits(np.array([[1e4]], dtype), np.array([[0.0]], dtype))[0] == 1e4
    loss, grad = fastwb.mse_loss(np.array([[1e4]], dtype), np.array([[-1e4]], dtype))
    assert loss == 4e8 and grad[0, 0] == 4e4


def test_nan_logits_give_nan_loss(dtype):
    loss, grad = fastwb.bce_with_logits(np.array([[np.nan, 0.0]], dtype), np.array([[1.0, 0.0]], dtype))
    assert math.isnan(loss) and math.isnan(grad[0, 0]) and grad[0, 1] == 0.25


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_softplus_keeps_relative_accuracy(dtype_name):
    """A confident right answer (t = 1, z large) has loss log(1 + exp(-z)), which
    is tiny: log(1 + e) computed naively would round it to 0 or lose digits."""
    dtype = np.dtype(dtype_name)
    z = np.concatenate([np.linspace(0, 1, 41), np.geomspace(1, 80 if dtype == np.float32 else 700, 200)])
    z = z.astype(dtype)
    exact = np.log1p(np.exp(-z.astype(np.float64)))
    got = np.array([fastwb.bce_with_logits(z[i:i + 1, None], np.ones((1, 1), dtype))[0] for i in range(z.size)])
    tol = 4 * float(np.finfo(dtype).eps)
    tiny = float(np.finfo(dtype).tiny)
    np.testing.assert_allclose(got, exact.astype(dtype).astype(np.float64), rtol=tol, atol=tiny)
    assert np.all(got[z < (80 if dtype == np.float32 else 700)] > 0)


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

def _same_bits(results):
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (257, 10), (64, 1000), (3, 5000), (4099, 7)])
def test_kernels_thread_independent(shape, dtype, rng):
    z = (rng.standard_normal(shape) * 5).astype(dtype)
    t = rng.random(shape).astype(dtype)
    pw = _pos_weight(rng, shape, dtype)

    def run(n_threads):
        out = []
        for weights in (np.empty(0, dtype), pw):
            g = np.empty_like(z)
            loss = _losses.bce_logits_rows(z, t, weights, g, np.empty(shape[0]), n_threads)
            out += [g, np.array([loss])]
        g = np.empty_like(z)
        loss = _losses.mse_rows(z, t, g, np.empty(shape[0]), n_threads)
        return out + [g, np.array([loss])]

    _same_bits([run(n) for n in THREADS])


def test_public_api_thread_independent(rng):
    """Large enough that the planner really splits the work (see fastwb._runtime's grains)."""
    n_mse = 4 * GRAIN_MEMORY // 1000 + 1
    p = rng.standard_normal((n_mse, 1000)).astype(np.float32)
    t = rng.standard_normal((n_mse, 1000)).astype(np.float32)
    z = rng.standard_normal((4 * GRAIN_COMPUTE // 100 + 1, 100)) * 4
    u = rng.random(z.shape)
    pw = rng.random(100) * 2
    if fastwb._runtime.config()["openmp"]:
        with fastwb.threads(4):
            assert fastwb.plan_threads(p.size, GRAIN_MEMORY) == 4
            assert fastwb.plan_threads(z.size, GRAIN_COMPUTE) == 4
    results = []
    for n in (1, 2, 4):
        with fastwb.threads(n):
            run = [fastwb.mse_loss(p, t), fastwb.bce_with_logits(z, u), fastwb.bce_with_logits(z, u, pos_weight=pw)]
        results.append([a for loss, grad in run for a in (np.array([loss]), grad)])
    _same_bits(results)


# ---------------------------------------------------------------------------
# overlapping arguments (fastwb's aliasing rule, as in tests/test_aliasing.py)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("impl", [fastwb, R], ids=["fastwb", "twin"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), m=st.integers(1, 5))
def test_mse_loss_with_overlapping_arguments(impl, dtype, data, n, m):
    (p, t, g), _ = _views(data, dtype, [(n, m), (n, m), (n, m)])
    _check(lambda i, o: impl.mse_loss(i[0], i[1], out=o[0]), [p, t], [g], exact=impl is fastwb)


@pytest.mark.parametrize("impl", [fastwb, R], ids=["fastwb", "twin"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), m=st.integers(1, 5), weighted=st.booleans())
def test_bce_with_logits_with_overlapping_arguments(impl, dtype, data, n, m, weighted):
    (z, t, w, g), buf = _views(data, dtype, [(n, m), (n, m), (m,), (n, m)])
    buf[...] = np.abs(buf) % 1                              # targets in [0, 1], wherever they sit
    _check(lambda i, o: impl.bce_with_logits(i[0], i[1], out=o[0], pos_weight=i[2] if weighted else None),
           [z, t, w], [g], exact=impl is fastwb)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def _f(shape, dtype=np.float64, value=0.5):
    return np.full(shape, value, dtype)


BAD = [
    (lambda: fastwb.mse_loss(_f((4, 1)), _f((4,))), ValueError, r"pred has shape \(4, 1\) but target has shape \(4,\)"),
    (lambda: fastwb.mse_loss(_f((4, 2)), _f((2, 4))), ValueError, r"pred has shape \(4, 2\) but target"),
    (lambda: fastwb.mse_loss(_f((4, 2)), _f((4, 2), np.float32)), TypeError, r"mixed dtypes \(pred: float64, target: float32\)"),
    (lambda: fastwb.mse_loss(np.ones((4, 2), int), _f((4, 2))), TypeError, "pred must have dtype float32 or float64"),
    (lambda: fastwb.mse_loss(_f((4, 2)), np.ones((4, 2), int)), TypeError, "target must have dtype float32 or float64"),
    (lambda: fastwb.mse_loss(_f((4, 2)), _f((4, 2)), out=_f((4, 3))), ValueError, r"out has shape \(4, 3\)"),
    (lambda: fastwb.mse_loss(_f((4, 2)), _f((4, 2)), out=_f((4, 2), np.float32)), TypeError, "out has dtype float32"),
    (lambda: fastwb.bce_with_logits(_f((4, 1)), _f((4,))), ValueError, r"logits has shape \(4, 1\) but targets has shape \(4,\)"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), _f((2, 3), np.float32)), TypeError, r"mixed dtypes \(logits: float64, targets: float32\)"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), np.array([[0, 1, 1.5], [0, 0, 0]])), ValueError, r"targets\[0, 2\] = 1\.5 is not in \[0, 1\]"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), np.array([[0, 1, 1], [0, -1e-9, 0]])), ValueError, r"targets\[1, 1\]"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), np.array([[0, 1, 1], [0, 0, np.nan]])), ValueError, r"targets\[1, 2\] = nan"),
    (lambda: fastwb.bce_with_logits(_f((3,)), np.array([0.0, 2.0, 0.0])), ValueError, r"targets\[1\] = 2\.0"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), _f((2, 3)), pos_weight=_f((2,))), ValueError, r"pos_weight has shape \(2,\).*\(3,\)"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), _f((2, 3)), pos_weight=_f((2, 3))), ValueError, "pos_weight has shape"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), _f((2, 3)), pos_weight=_f((3,), np.float32)), TypeError, "pos_weight: float32"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), _f((2, 3)), pos_weight=np.array([1.0, -1.0, 1.0])), ValueError, "pos_weight must hold finite values >= 0"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), _f((2, 3)), pos_weight=np.array([1.0, np.inf, 1.0])), ValueError, "pos_weight must"),
    (lambda: fastwb.bce_with_logits(_f((2, 3)), np.ones((2, 3), bool)), TypeError, "targets must have dtype float32 or float64"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_targets_leave_out_untouched():
    """Targets are checked before anything is written: out (here the logits) keeps its values."""
    z = np.array([[0.25, -1.0]])
    with pytest.raises(ValueError, match="targets"):
        fastwb.bce_with_logits(z, np.array([[0.0, 3.0]]), out=z)
    np.testing.assert_array_equal(z, [[0.25, -1.0]])


def test_first_outside_unit_finds_the_first(dtype):
    v = np.full(1000, 0.5, dtype)
    assert _losses.first_outside_unit(v) == -1
    assert _losses.first_outside_unit(v[:0]) == -1
    for bad, at in ((1.0000001, 700), (-0.0001, 256), (np.nan, 999), (np.inf, 0)):
        w = v.copy()
        w[at] = bad
        w[at + 1:] = 7.0                                  # later bad values do not matter
        assert _losses.first_outside_unit(w) == at
    assert _losses.first_outside_unit(np.array([0.0, -0.0, 1.0], dtype)) == -1
