"""Overlapping arguments: every public function with ``out=`` or in-place
parameters, fed inputs and outputs that are views into one shared buffer at
generated offsets, must give exactly what it gives on private copies, or
raise ValueError where two outputs overlap.  Nothing may depend on the order
in which a kernel writes.  The NumPy twin follows the same rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastwb
from fastwb import optim, prune, reference, regularization

DTYPES = [np.float32, np.float64]


def _views(data, dtype, shapes):
    """Arrays of the given shapes as views into one buffer, at drawn offsets
    (so they may overlap, coincide or be disjoint), and the buffer."""
    sizes = [int(np.prod(s)) for s in shapes]
    total = max(sizes) + data.draw(st.integers(0, sum(sizes)), label="slack")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    buf = np.random.default_rng(seed).standard_normal(total).astype(dtype)
    views = []
    for i, (shape, size) in enumerate(zip(shapes, sizes)):
        off = data.draw(st.integers(0, total - size), label=f"offset{i}")
        views.append(buf[off:off + size].reshape(shape))
    return views, buf


def _outputs_overlap(outs):
    outs = [o for o in outs if o is not None]
    return any(np.may_share_memory(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])


def _check(call, inputs, outs, exact=True):
    """call(inputs, outs) on the aliased arrays against call on private copies."""
    want_outs = [None if o is None else np.empty_like(o) for o in outs]
    want = call([a.copy() for a in inputs], want_outs)
    if _outputs_overlap(outs):
        with pytest.raises(ValueError, match="share memory"):
            call(inputs, outs)
        return
    got = call(inputs, outs)
    for g, w in zip(_flatten(got), _flatten(want)):
        if w is None:
            assert g is None
        elif exact:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _flatten(result):
    if isinstance(result, tuple):
        out = []
        for r in result:
            out += _flatten(r)
        return out
    return [result]


SETTINGS = settings(max_examples=60, deadline=None)


@pytest.mark.parametrize("impl", [fastwb, reference], ids=["fastwb", "twin"])
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), k=st.integers(1, 5), m=st.integers(1, 5),
       activation=st.sampled_from(["identity", "relu", "tanh"]))
def test_linear_with_overlapping_arguments(impl, dtype, data, n, k, m, activation):
    (x, W, b, y), _ = _views(data, dtype, [(n, k), (k, m), (m,), (n, m)])
    _check(lambda i, o: impl.linear(i[0], i[1], i[2], activation, out=o[0]), [x, W, b], [y], exact=False)


def test_linear_bias_row_of_out_issue_example():
    out = np.ones((2, 4))
    out[0] = 10
    x, W = np.ones((2, 3)), np.ones((3, 4))
    np.testing.assert_array_equal(fastwb.linear(x, W, out[0], out=out), np.full((2, 4), 13.0))
    out = np.ones((2, 4))
    out[0] = 10
    np.testing.assert_array_equal(reference.linear(x, W, out[0], out=out), np.full((2, 4), 13.0))


@pytest.mark.parametrize("impl", [fastwb, reference], ids=["fastwb", "twin"])
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), k=st.integers(1, 5), m=st.integers(1, 5),
       activation=st.sampled_from(["identity", "relu", "sigmoid"]), need_grad_x=st.booleans())
def test_linear_backward_with_overlapping_arguments(impl, dtype, data, n, k, m, activation, need_grad_x):
    (gy, y, x, W, gx, gW, gb, work), _ = _views(
        data, dtype, [(n, m), (n, m), (n, k), (k, m), (n, k), (k, m), (m,), (n, m)])
    if activation == "identity":
        work = None
    if not need_grad_x:
        gx = None

    def call(i, o):
        return impl.linear_backward(i[0], i[1], i[2], i[3], activation, need_grad_x=need_grad_x,
                                    out=(o[0], o[1], o[2]), work=o[3])

    _check(call, [gy, y, x, W], [gx, gW, gb, work], exact=False)


def test_linear_backward_grad_b_over_x_issue_example():
    rng = np.random.default_rng(0)
    gy, x, W = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((4, 4))
    want = fastwb.linear_backward(gy, None, x.copy(), W)
    got = fastwb.linear_backward(gy, None, x, W, out=(None, None, x[0]))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12)


ELEMENTWISE = ["relu", "leaky_relu", "sigmoid", "tanh", "softmax"]


@pytest.mark.parametrize("impl", [fastwb, reference], ids=["fastwb", "twin"])
@pytest.mark.parametrize("name", ELEMENTWISE)
@SETTINGS
@given(data=st.data(), shape=st.tuples(st.integers(1, 4), st.integers(1, 6)))
def test_activations_with_overlapping_arguments(impl, name, data, shape):
    (x, y), _ = _views(data, np.float32, [shape, shape])
    fn = getattr(impl, name)
    _check(lambda i, o: fn(i[0], out=o[0]), [x], [y], exact=impl is fastwb)
    (gy, yy, dz), _ = _views(data, np.float32, [shape, shape, shape])
    if name != "leaky_relu" or impl is fastwb:
        back = getattr(impl, name + "_backward")
        _check(lambda i, o: back(i[0], i[1], out=o[0]), [gy, yy], [dz], exact=impl is fastwb)


@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), c=st.integers(1, 5))
def test_softmax_cross_entropy_with_overlapping_arguments(data, n, c):
    (z, g), _ = _views(data, np.float64, [(n, c), (n, c)])
    labels = np.arange(n) % c
    _check(lambda i, o: fastwb.softmax_cross_entropy(i[0], labels, out=o[0]), [z], [g])


@pytest.mark.parametrize("method", ["l1", "l2"])
@SETTINGS
@given(data=st.data(), size=st.integers(1, 40))
def test_penalty_with_overlapping_arguments(method, data, size):
    (w, g), _ = _views(data, np.float64, [(size,), (size,)])
    _check(lambda i, o: regularization.penalty(i[0], 0.5, method, out=o[0]), [w], [g])


@pytest.mark.parametrize("impl", [prune, reference.prune], ids=["fastwb", "twin"])
@SETTINGS
@given(data=st.data(), size=st.integers(1, 40), percentile=st.floats(0, 100))
def test_magnitude_prune_with_overlapping_arguments(impl, data, size, percentile):
    (w, out), buf = _views(data, np.float64, [(size,), (size,)])
    mask = np.ones(size, bool)
    _check(lambda i, o: impl.magnitude_prune(i[0], percentile, out=o[0], mask_out=mask), [w], [out])


def test_magnitude_prune_shifted_out_issue_example():
    buf = np.arange(1.0, 12.0)
    want = prune.magnitude_prune(buf[:-1].copy(), 100)[0]
    got = prune.magnitude_prune(buf[:-1], 100, out=buf[1:])[0]
    np.testing.assert_array_equal(got, want)


def test_mask_that_views_the_weights_is_read_from_a_copy():
    raw = np.zeros(16, np.uint8)
    weights = raw[:8].view(np.float64)              # 1 float over 8 bytes
    mask = raw[7:8].view(bool)                      # overlaps the float's last byte
    weights[0] = 1.5                                # last byte 0x3f: mask True
    assert mask[0]
    prune.apply_mask(weights, mask)
    assert weights[0] == 1.5


OPTIMIZERS = [
    (optim.SGD, {"lr": 1.0}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (optim.Momentum, {}),
    (optim.Adam, {"l1": 0.01}),
    (optim.AdamW, {}),
    (optim.RMSprop, {"centered": True, "momentum": 0.5}),
]


@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
@SETTINGS
@given(data=st.data(), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=3))
def test_optimizer_step_with_overlapping_gradients(cls, kw, data, sizes):
    shapes = [(s,) for s in sizes]
    views, _ = _views(data, np.float64, shapes + shapes)
    params, grads = views[:len(sizes)], views[len(sizes):]
    if _outputs_overlap(params):
        with pytest.raises(ValueError, match="share memory"):
            cls(params, **kw)
        return
    mine = cls(params, **kw)
    ref = cls([p.copy() for p in params], **kw)
    for _ in range(2):
        ref.step([g.copy() for g in grads])     # the gradients' values as the aliased call reads them
        mine.step(grads)
        for a, b in zip(params, ref.params):
            np.testing.assert_array_equal(a, b)


def test_sgd_shifted_gradient_issue_example():
    buf = np.arange(1.0, 6.0)
    params, grads = buf[1:], buf[:-1]
    want = params - grads
    optim.SGD([params], lr=1).step([grads])
    np.testing.assert_array_equal(params, want)


def test_gradient_that_is_its_own_parameter_updates_in_place():
    p = np.array([1.0, -2.0, 4.0])
    optim.SGD([p], lr=0.5).step([p])
    np.testing.assert_array_equal(p, [0.5, -1.0, 2.0])
