"""fastwb.adversarial: the fused FGSM and PGD steps against their NumPy twin bit
for bit (float32 and float64, odd and empty shapes, special values, in place,
overlapping views, 1 to 4 threads), the attacks against the twin model's own
input gradient, what the attacks do (FGSM raises the loss, a targeted step
lowers it toward the target, PGD stays in the eps-ball and the range,
``y=None`` attacks the predictions, the model does not change), robust
accuracy, the real MNIST, and a clear error for every bad argument."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastwb
from fastwb import _adversarial, adversarial, datasets, nn
from fastwb.reference import adversarial as twin_adv
from fastwb.reference.nn import Sequential as Twin
from test_engine_plan import MODELS, _build

DTYPES = [np.float32, np.float64]
UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def same_bits(a, b, what=""):
    """Bitwise equality: dtype, shape, sign of zero and NaN payloads included."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if a.tobytes() != b.tobytes():
        bad = np.flatnonzero(a.reshape(-1).view(UINT[a.dtype]) != b.reshape(-1).view(UINT[b.dtype]))
        raise AssertionError(f"{what}: {bad.size} elements differ, first at {bad[0]}: "
                             f"{a.reshape(-1)[bad[0]]!r} vs {b.reshape(-1)[bad[0]]!r}")


def special_data(rng, shape, dtype):
    """X in about [-0.2, 1.2] (values outside the range, exact bounds, -0.0) and a
    gradient with exact zeros of both signs, infinities and subnormals."""
    X = (rng.random(shape) * 1.4 - 0.2).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    flat_x, flat_g = X.reshape(-1), g.reshape(-1)
    specials_x = np.array([0.0, 1.0, -0.0, 0.5, -0.2, 1.2], dtype)
    specials_g = np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(dtype).tiny / 4, -np.finfo(dtype).tiny], dtype)
    k = min(flat_x.size, 6)
    flat_x[:k], flat_g[:k] = specials_x[:k], specials_g[:k]
    if flat_x.size > 12:
        idx = rng.choice(flat_x.size, flat_x.size // 5, replace=False)
        flat_g[idx] = 0.0
    return X, g


SHAPES = [(), (0,), (0, 5), (1,), (1, 1), (17,), (3, 7), (2, 3, 5), (33, 31), (257, 129)]
CLIPS = [(0.0, 1.0), None, (0.2, 0.7), (-np.inf, 0.5), (0.5, np.inf), (0.3, 0.3), (-0.0, 1.0)]


# -- perturb: the fused FGSM step -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_perturb_matches_the_twin_bit_for_bit(dtype, shape):
    rng = np.random.default_rng(len(shape) * 100 + sum(shape))
    X, g = special_data(rng, shape, dtype)
    for eps in (0.1, 0.03, -0.05, 0.0, 1e-30, 3.0):
        for clip in CLIPS:
            got = adversarial.perturb(X, g, eps, clip)
            same_bits(got, twin_adv.perturb(X, g, eps, clip), f"eps {eps} clip {clip}")
            assert got.dtype == dtype and got.shape == X.shape


@given(data=st.data())
def test_perturb_matches_the_twin_on_drawn_arrays(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40))
    elements = st.floats(width=32 if dtype == np.float32 else 64, allow_nan=False)
    X = data.draw(hnp.arrays(dtype, shape, elements=elements))
    g = data.draw(hnp.arrays(dtype, shape, elements=elements))
    eps = data.draw(st.floats(-2.0, 2.0))
    lo = data.draw(st.floats(-3.0, 3.0))
    hi = data.draw(st.floats(-3.0, 3.0).filter(lambda v: v >= lo))
    clip = data.draw(st.sampled_from([None, (lo, hi)]))
    same_bits(adversarial.perturb(X, g, eps, clip), twin_adv.perturb(X, g, eps, clip))


def test_perturb_semantics():
    X = np.array([0.5, 0.5, 0.5, 0.95, 0.02, -0.0, 1.7], np.float32)
    g = np.array([2.0, -3.0, 0.0, 1.0, -1.0, -0.0, 0.0], np.float32)
    got = adversarial.perturb(X, g, 0.1)
    np.testing.assert_array_equal(got, np.float32([0.6, 0.4, 0.5, 1.0, 0.0, 0.0, 1.0]))
    # -0.0 + eps * 0 is +0.0; with eps < 0 it is -0.0, and np.clip keeps a value equal to a bound as it is
    assert not np.signbit(got[5])
    assert np.signbit(adversarial.perturb(np.float32([-0.0]), np.float32([0.0]), -0.1)[0])
    e = np.float32(0.1)                             # eps < 0: against the gradient, in float32 arithmetic
    np.testing.assert_array_equal(adversarial.perturb(X, g, -0.1, None), X - e * np.float32([1, -1, 0, 1, -1, 0, 0]))
    inf = adversarial.perturb(X, np.full_like(X, np.inf), 0.25, (0, np.inf))
    np.testing.assert_array_equal(inf, X.clip(0, None) + np.float32(0.25))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_perturb_in_place_and_into_out(dtype):
    rng = np.random.default_rng(5)
    X, g = special_data(rng, (65, 33), dtype)
    want = twin_adv.perturb(X, g, 0.07)
    out = np.full_like(X, 7.0)
    assert adversarial.perturb(X, g, 0.07, out=out) is out
    same_bits(out, want)
    Y = X.copy()
    assert adversarial.perturb(Y, g, 0.07, out=Y) is Y
    same_bits(Y, want, "in place")
    G = g.copy()                                    # out may be grad itself too
    same_bits(adversarial.perturb(X, G, 0.07, out=G), want, "into grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shift", [1, 3, 16, 100])
def test_perturb_overlapping_views_give_the_private_copy_result(dtype, shift):
    rng = np.random.default_rng(shift)
    n = 1000
    buf = (rng.random(n + shift) * 1.2 - 0.1).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    for x_at, out_at in ((0, shift), (shift, 0)):
        b = buf.copy()
        x, out = b[x_at:x_at + n], b[out_at:out_at + n]
        want = twin_adv.perturb(x.copy(), g, 0.1)
        adversarial.perturb(x, g, 0.1, out=out)
        same_bits(out, want, f"x at {x_at}, out at {out_at}")
        b = buf.copy()
        gb = np.concatenate([g, g[:shift]])
        want = twin_adv.perturb(b[:n], gb[:n].copy(), 0.1)
        adversarial.perturb(b[:n], gb[:n], 0.1, out=gb[shift:shift + n])      # out overlaps grad
        same_bits(gb[shift:shift + n], want, "out overlapping grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 63, 1000, 4099])
def test_kernels_do_not_depend_on_the_thread_count(dtype, n):
    rng = np.random.default_rng(n)
    X, g = special_data(rng, (n,), dtype)
    X0 = np.clip(X + rng.uniform(-0.05, 0.05, n).astype(dtype), 0, 1)
    want = twin_adv.perturb(X, g, 0.1)
    want_pgd = twin_adv.pgd_step(X, X0, g, 0.02, 0.05)
    K = _adversarial
    for threads in (1, 2, 3, 4):
        for check in (K.NO_CHECK, K.FIRST, K.IN_PASS):
            out = np.empty_like(X)
            assert K.fgsm_flat(X, g, out, 0.1, 0.0, 1.0, check, threads) == 0
            same_bits(out, want, f"{threads} threads, check {check}")
            Y = X.copy()
            K.fgsm_flat(Y, g, Y, 0.1, 0.0, 1.0, check, threads)
            same_bits(Y, want, f"in place, {threads} threads, check {check}")
            assert K.pgd_flat(X, X0, g, out, 0.02, 0.05, 0.0, 1.0, check, threads) == 0
            same_bits(out, want_pgd, f"pgd, {threads} threads, check {check}")
            Y = X.copy()
            K.pgd_flat(Y, X0, g, Y, 0.02, 0.05, 0.0, 1.0, check, threads)
            same_bits(Y, want_pgd, f"pgd in place, {threads} threads, check {check}")
        if n:
            h = g.copy()
            h[(n * 2) // 3] = np.nan                # in the last part: every part's flag is combined
            assert K.any_nan(h, threads) == 1 and K.any_nan(g, threads) == 0
            out = np.zeros_like(X)
            assert K.fgsm_flat(X, h, out, 0.1, 0.0, 1.0, K.FIRST, threads) == 1 and not out.any()
            assert K.fgsm_flat(X, h, out, 0.1, 0.0, 1.0, K.IN_PASS, threads) == 1
            assert np.isnan(out).sum() == 1
            assert K.fgsm_flat(X, h, out, 0.1, 0.0, 1.0, K.NO_CHECK, threads) == 0
            assert K.pgd_flat(X, X0, h, out, 0.1, 0.1, 0.0, 1.0, K.IN_PASS, threads) == 1


def test_perturb_threads_through_the_public_function():
    """Above the memory grain (2M elements) perturb runs on several threads."""
    rng = np.random.default_rng(9)
    X, g = special_data(rng, (2100, 1003), np.float32)
    results = []
    for threads in (1, 2, 4):
        with fastwb.threads(threads):
            results.append(adversarial.perturb(X, g, 0.1))
    for r in results:
        same_bits(r, twin_adv.perturb(X, g, 0.1))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_in_grad_raises_and_writes_nothing(dtype):
    rng = np.random.default_rng(2)
    X, g = special_data(rng, (40, 9), dtype)
    g[13, 4] = np.nan
    g[30, 0] = np.nan
    Y = X.copy()
    with pytest.raises(ValueError, match=r"grad holds 2 NaN values \(the first at \[13, 4\]\).*nothing was written"):
        adversarial.perturb(Y, g, 0.1, out=Y)
    with pytest.raises(ValueError, match=r"grad holds 2 NaN values"):           # the one-pass check
        adversarial.perturb(X, g, 0.1)
    same_bits(Y, X, "in place after the error")
    X0 = X.copy()
    with pytest.raises(ValueError, match="NaN"):
        adversarial.pgd_step(Y, X0, g, 0.01, 0.1, out=Y)
    same_bits(Y, X, "pgd in place after the error")
    # propagate: one pass, NaN where grad is NaN (NumPy's sign), as the twin
    got = adversarial.perturb(X, g, 0.1, nan="propagate")
    assert np.isnan(got[13, 4]) and np.isnan(got[30, 0]) and np.isnan(got).sum() == 2
    same_bits(got, twin_adv.perturb(X, g, 0.1, nan="propagate"))
    same_bits(adversarial.pgd_step(X, X0, g, 0.01, 0.1, nan="propagate"),
              twin_adv.pgd_step(X, X0, g, 0.01, 0.1, nan="propagate"))
    # NaN in X itself stays NaN (np.clip's rule), no error: the gradient decides
    Xn = X.copy()
    Xn[0, 0] = np.nan
    g[13, 4] = g[30, 0] = 1.0
    assert np.isnan(adversarial.perturb(Xn, g, 0.1)[0, 0])


def test_perturb_bad_arguments():
    X = np.zeros((3, 4), np.float32)
    g = np.ones((3, 4), np.float32)
    cases = [
        (TypeError, "X must have dtype float32 or float64", dict(X=X.astype(np.int32))),
        (TypeError, "grad must have dtype", dict(grad=g.astype(np.float16))),
        (TypeError, "mixed dtypes", dict(grad=g.astype(np.float64))),
        (ValueError, r"X has shape \(3, 4\) but grad has shape \(4, 3\)", dict(grad=g.T.copy())),
        (ValueError, "eps must be finite", dict(eps=np.nan)),
        (ValueError, "eps must be finite", dict(eps=np.inf)),
        (ValueError, "too large for float32", dict(eps=1e39)),
        (TypeError, "eps must be a real number, got bool", dict(eps=True)),
        (TypeError, "eps must be a real number", dict(eps="0.1")),
        (ValueError, "is empty: lo must be <= hi", dict(clip=(1.0, 0.0))),
        (ValueError, r"clip\[0\] \(lo\) is NaN", dict(clip=(np.nan, 1.0))),
        (ValueError, r"clip\[1\] \(hi\) is NaN", dict(clip=(0.0, np.nan))),
        (TypeError, "clip must be a pair", dict(clip=(0.0, 0.5, 1.0))),
        (TypeError, "clip must be a pair", dict(clip="01")),
        (TypeError, "clip must be a pair", dict(clip=0.5)),
        (TypeError, r"clip\[1\] \(hi\) must be a real number", dict(clip=(0, "1"))),
        (TypeError, r"clip\[0\] \(lo\) must be a real number, got bool", dict(clip=(False, 1))),
        (ValueError, "nan must be one of 'raise', 'propagate'", dict(nan="ignore")),
        (TypeError, "out has dtype float64", dict(out=np.zeros((3, 4)))),
        (ValueError, r"out has shape \(4, 3\)", dict(out=np.zeros((4, 3), np.float32))),
        (ValueError, "out must be C-contiguous", dict(out=np.zeros((4, 3), np.float32).T)),
        (TypeError, "out must be a NumPy array", dict(out=[[0.0] * 4] * 3)),
    ]
    for exc, match, change in cases:
        kw = dict(X=X, grad=g, eps=0.1)
        kw.update(change)
        with pytest.raises(exc, match=match):
            adversarial.perturb(**kw)
    ro = np.zeros((3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        adversarial.perturb(X, g, 0.1, out=ro)
    # lo > hi is caught before rounding to float32 (which would make them equal)
    with pytest.raises(ValueError, match="is empty"):
        adversarial.perturb(X, g, 0.1, clip=(0.1 + 1e-9, 0.1))
    assert adversarial.perturb(X, g, 0.1, clip=(0.1, 0.1 + 1e-9)).max() == np.float32(0.1)


def test_pgd_step_matches_the_twin_and_checks():
    rng = np.random.default_rng(4)
    for dtype in DTYPES:
        X0 = rng.random((50, 21)).astype(dtype)
        X = np.clip(X0 + rng.uniform(-0.2, 0.2, X0.shape), -0.1, 1.1).astype(dtype)
        g = rng.standard_normal(X0.shape).astype(dtype)
        g[::7] = 0
        for alpha, eps, clip in ((0.01, 0.05, (0, 1)), (0.3, 0.1, None), (-0.02, 0.0, (0.2, 0.9)), (0.0, 0.5, (0, 1))):
            got = adversarial.pgd_step(X, X0, g, alpha, eps, clip)
            same_bits(got, twin_adv.pgd_step(X, X0, g, alpha, eps, clip), f"{dtype} {alpha} {eps} {clip}")
            Y = X.copy()
            same_bits(adversarial.pgd_step(Y, X0, g, alpha, eps, clip, out=Y), got, "in place")
            for name in ("X0", "grad"):             # out may be any input: copied first when not X
                Z0, G = X0.copy(), g.copy()
                target = Z0 if name == "X0" else G
                same_bits(adversarial.pgd_step(X, Z0, G, alpha, eps, clip, out=target), got, f"into {name}")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        adversarial.pgd_step(X, X0, g, 0.01, -0.1)
    with pytest.raises(ValueError, match="X has shape .* but X0 has shape"):
        adversarial.pgd_step(X, X0[:3], g, 0.01, 0.1)
    with pytest.raises(TypeError, match="mixed dtypes"):
        adversarial.pgd_step(X, X0.astype(np.float32), g, 0.01, 0.1)


# -- the attacks against the twin model ---------------------------------------------------------

def _twin(model):
    return Twin(model.layers, model.state_dict(), model.seed, loss=model.loss.name)


def _targets(model, n, rng):
    if model.loss.name == "cross_entropy":
        return rng.integers(0, model.out_features, n)
    if model.loss.name == "mse":
        return rng.standard_normal((n, model.out_features))
    return (rng.random((n, model.out_features)) < 0.4).astype(np.float64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fgsm_matches_the_twin_bit_for_bit_in_float64(name):
    model = _build(name, "float64")
    rng = np.random.default_rng(11)
    n = 23
    X = rng.random((n, model.in_features))
    y = _targets(model, n, rng)
    t = _twin(model)
    yt = model.loss.targets(y, n, model.out_features, model.dtype)
    for eps, clip in ((0.1, (0, 1)), (0.3, None)):
        got = adversarial.fgsm(model, X, y, eps=eps, clip=clip, batch_size=7)
        same_bits(got, twin_adv.fgsm(t, X, yt, eps=eps, clip=clip), f"{name} eps {eps}")
    if model.loss.name != "mse":
        same_bits(adversarial.fgsm(model, X, eps=0.05, batch_size=5), twin_adv.fgsm(t, X, eps=0.05), "y=None")
    if model.loss.name == "cross_entropy":
        same_bits(adversarial.fgsm(model, X, y, eps=0.05, targeted=True),
                  twin_adv.fgsm(t, X, y, eps=0.05, targeted=True), "targeted")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fgsm_is_perturb_of_the_engines_own_gradient(dtype):
    """float32 too: for any batch size, FGSM is perturb(X, input_gradient(X, y)) bit for bit
    (the sign of the chunk's mean-loss gradient is that of the whole batch's)."""
    model = fastwb.MLP([30, 24, 6], dtype=dtype, rng=2)
    rng = np.random.default_rng(3)
    X = rng.random((41, 30)).astype(dtype)
    y = rng.integers(0, 6, 41)
    want = adversarial.perturb(X, model.input_gradient(X, y), 0.1)
    for bs in (1, 8, 41, 1000):
        same_bits(adversarial.fgsm(model, X, y, eps=0.1, batch_size=bs), want, f"batch_size {bs}")
    want_t = adversarial.perturb(X, model.input_gradient(X, y), -0.1)
    same_bits(adversarial.fgsm(model, X, y, eps=0.1, targeted=True, batch_size=9), want_t, "targeted")


def test_pgd_matches_the_twin_bit_for_bit_in_float64():
    for name in ("dense_relu", "bn_a1_t1_m0.1", "dense_tanh"):
        model = _build(name, "float64")
        rng = np.random.default_rng(12)
        X = rng.random((19, model.in_features))
        y = rng.integers(0, model.out_features, 19)
        t = _twin(model)
        for kw in (dict(eps=0.1, steps=4, rng=5), dict(eps=0.2, alpha=0.07, steps=3, random_start=False),
                   dict(eps=0.05, steps=2, rng=1, clip=None, targeted=True)):
            # the random start is drawn chunk by chunk in row order: the same for any batch size in float64
            for bs in (4, 100):
                same_bits(adversarial.pgd(model, X, y, batch_size=bs, **kw), twin_adv.pgd(t, X, y, **kw),
                          f"{name} {kw} batch {bs}")
        same_bits(adversarial.pgd(model, X, eps=0.1, steps=2, rng=3), twin_adv.pgd(t, X, eps=0.1, steps=2, rng=3),
                  "y=None")


def test_bce_and_mse_models_attack_their_own_targets():
    model = _build("bn_leaky", "float32")                        # bce_with_logits
    rng = np.random.default_rng(0)
    X = rng.random((12, 7)).astype(np.float32)
    p = (model.logits(X) > 0).astype(np.float32)
    same_bits(adversarial.fgsm(model, X, eps=0.1), adversarial.fgsm(model, X, p, eps=0.1))
    mse = _build("dense_nobias_identity", "float32")
    assert adversarial.fgsm(mse, X, rng.standard_normal((12, 5)), eps=0.1).shape == X.shape
    with pytest.raises(ValueError, match="y=None attacks the model's own predictions.*mse: pass y"):
        adversarial.fgsm(mse, X)


# -- what the attacks do ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """A 20-16-3 ReLU classifier trained on three Gaussian blobs in [0, 1]^20 (~0.95 accurate)."""
    rng = np.random.default_rng(7)
    centres = rng.random((3, 20)) * 0.6 + 0.2
    y = rng.integers(0, 3, 900)
    X = np.clip(centres[y] + rng.normal(0, 0.12, (900, 20)), 0, 1).astype(np.float32)
    model = fastwb.MLP([20, 16, 3], dtype=np.float32, rng=1)
    model.fit(X[:600], y[:600], epochs=20, batch_size=32, verbose=False, rng=0)
    return model, X[600:], y[600:]


def _row_losses(model, X, y):
    z = model.logits(X).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]


def test_fgsm_increases_the_loss(trained):
    model, X, y = trained
    assert model.evaluate(X, y)[1] > 0.9
    before = _row_losses(model, X, y)
    means = [before.mean()]
    for eps in (0.02, 0.05, 0.1):
        adv = adversarial.fgsm(model, X, y, eps=eps)
        after = _row_losses(model, adv, y)
        assert after.mean() > means[-1] * 1.2          # the mean loss grows with eps
        means.append(after.mean())
        assert np.mean(after > before) > 0.95        # per row: a first-order step up the loss
        assert np.abs(adv - X).max() <= np.float32(eps) * (1 + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    assert adversarial.robust_accuracy(model, X, y, eps=0.1) < model.evaluate(X, y)[1] - 0.2


def test_y_none_attacks_the_predictions(trained):
    model, X, y = trained
    pred = model.predict(X)
    assert np.any(pred != y)                         # the case where it matters: some rows are wrong
    same_bits(adversarial.fgsm(model, X, eps=0.1, batch_size=64), adversarial.fgsm(model, X, pred, eps=0.1))
    same_bits(adversarial.pgd(model, X, eps=0.1, steps=3, rng=0),
              adversarial.pgd(model, X, pred, eps=0.1, steps=3, rng=0))
    assert not np.array_equal(adversarial.fgsm(model, X, eps=0.1), adversarial.fgsm(model, X, y, eps=0.1))


def test_targeted_moves_toward_the_target(trained):
    model, X, y = trained
    target = (y + 1) % 3
    for attack in (lambda **kw: adversarial.fgsm(model, X, target, eps=0.1, targeted=True, **kw),
                   lambda **kw: adversarial.pgd(model, X, target, eps=0.1, steps=10, targeted=True, rng=0, **kw)):
        adv = attack()
        assert _row_losses(model, adv, target).mean() < _row_losses(model, X, target).mean()
        assert np.mean(model.predict(adv) == target) > np.mean(model.predict(X) == target) + 0.2


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    model, X, y = trained
    fg = adversarial.robust_accuracy(model, X, y, "fgsm", eps=0.08)
    pg = adversarial.robust_accuracy(model, X, y, "pgd", eps=0.08, steps=10, rng=0)
    assert pg <= fg
    adv = adversarial.pgd(model, X, y, eps=0.08, steps=10, rng=0)
    assert _row_losses(model, adv, y).mean() >= _row_losses(model, adversarial.fgsm(model, X, y, eps=0.08), y).mean()


@given(data=st.data())
def test_pgd_stays_in_the_ball_and_the_range(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    model = fastwb.MLP([6, 8, 3], dtype=dtype, rng=data.draw(st.integers(0, 5)))
    n = data.draw(st.integers(1, 12))
    X = data.draw(hnp.arrays(dtype, (n, 6), elements=st.floats(-0.5, 1.5, width=32)))
    y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    eps = data.draw(st.floats(0.0, 0.5))
    alpha = data.draw(st.one_of(st.none(), st.floats(0.0, 0.4)))
    steps = data.draw(st.integers(1, 6))
    lo = data.draw(st.floats(-0.2, 0.6))
    clip = data.draw(st.sampled_from([None, (lo, lo + data.draw(st.floats(0.0, 1.0)))]))
    adv = adversarial.pgd(model, X, y, eps=eps, alpha=alpha, steps=steps, clip=clip, rng=data.draw(st.integers(0, 9)),
                          random_start=data.draw(st.booleans()), batch_size=data.draw(st.integers(1, 5)))
    assert adv.dtype == dtype and adv.shape == X.shape and np.isfinite(adv).all()
    if clip is not None:
        lo_t, hi_t = dtype(clip[0]), dtype(clip[1])
        assert adv.min() >= lo_t and adv.max() <= hi_t
    # inside the eps-ball up to the rounding of one addition (half an ulp of the result),
    # except where the range clip moved a point of X that lay outside the range
    dist = np.abs(adv.astype(np.float64) - X.astype(np.float64))
    slack = np.spacing(np.abs(adv)).astype(np.float64)
    inside = np.ones_like(X, bool) if clip is None else (X >= dtype(clip[0])) & (X <= dtype(clip[1]))
    assert np.all(dist[inside] <= float(dtype(eps)) + slack[inside])


def test_attacks_leave_the_model_unchanged():
    model = nn.Sequential(nn.Linear(9, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 4),
                          dtype="float32", rng=0)
    rng = np.random.default_rng(1)
    X = rng.random((30, 9)).astype(np.float32)
    y = rng.integers(0, 4, 30)
    model.fit(X, y, epochs=2, batch_size=8, verbose=False)
    model.train()
    model.gradients(X[:8], y[:8])
    state, grads = model.state_dict(), model.grads.copy()
    steps, nbt = model.step_count, model.num_batches_tracked.copy()
    a = adversarial.fgsm(model, X, y, eps=0.1, batch_size=7)
    b = adversarial.pgd(model, X, eps=0.1, steps=3, rng=0)
    adversarial.robustness(model, X, y, attack="pgd", eps=0.1, steps=2)
    assert model.training and model.step_count == steps
    np.testing.assert_array_equal(model.grads, grads)
    np.testing.assert_array_equal(model.num_batches_tracked, nbt)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    # eval mode whatever the model's mode: the same attack from an eval-mode model
    model.eval()
    same_bits(adversarial.fgsm(model, X, y, eps=0.1, batch_size=7), a)
    same_bits(adversarial.pgd(model, X, eps=0.1, steps=3, rng=0), b)


def test_batchnorm_on_batch_statistics_attacks_in_one_chunk():
    model = _build("bn_a1_t0_m0.1", "float64")       # no running statistics: normalises by the whole X
    X = np.random.default_rng(0).random((20, 7))
    y = np.arange(20) % 5
    same_bits(adversarial.fgsm(model, X, y, batch_size=3), adversarial.fgsm(model, X, y, batch_size=20))
    same_bits(adversarial.fgsm(model, X, y, batch_size=3), twin_adv.fgsm(_twin(model), X, y))


def test_attacks_do_not_depend_on_the_thread_count(trained):
    model, X, y = trained
    runs = []
    for threads in (1, 2):
        with fastwb.threads(threads):
            runs.append((adversarial.fgsm(model, X, y, eps=0.1, batch_size=128),
                         adversarial.pgd(model, X, y, eps=0.1, steps=3, rng=0)))
    same_bits(runs[0][0], runs[1][0], "fgsm")
    same_bits(runs[0][1], runs[1][1], "pgd")


def test_empty_input_gives_an_empty_result():
    model = fastwb.MLP([5, 4, 3], rng=0)
    X = np.zeros((0, 5), np.float32)
    for adv in (adversarial.fgsm(model, X, np.zeros(0, int)), adversarial.fgsm(model, X),
                adversarial.pgd(model, X, np.zeros(0, int))):
        assert adv.shape == (0, 5) and adv.dtype == np.float32


# -- robust accuracy -----------------------------------------------------------------------------

def test_robustness_reports_clean_and_robust_accuracy(trained):
    model, X, y = trained
    r = adversarial.robustness(model, X, y, attack="fgsm", eps=0.1, return_examples=True)
    assert r["clean_accuracy"] == pytest.approx(model.evaluate(X, y)[1])
    assert r["robust_accuracy"] == adversarial.robust_accuracy(model, X, y, "fgsm", eps=0.1)
    same_bits(r["adversarial"], adversarial.fgsm(model, X, y, eps=0.1))
    np.testing.assert_array_equal(r["adversarial_predictions"], model.predict(r["adversarial"]))
    np.testing.assert_array_equal(r["clean_predictions"], model.predict(X))
    assert r["n"] == len(X) and r["attack"] == "fgsm" and r["eps"] == 0.1
    p = adversarial.robustness(model, X, y, attack="pgd", eps=0.1, steps=5, rng=0)
    assert "adversarial" not in p and p["options"] == {"steps": 5, "rng": 0}
    assert p["robust_accuracy"] == adversarial.robust_accuracy(model, X, y, "pgd", eps=0.1, steps=5, rng=0)
    assert adversarial.robust_accuracy(model, X, y, eps=0.0) == r["clean_accuracy"]


# -- bad arguments -------------------------------------------------------------------------------

def test_attack_bad_arguments(trained):
    model, X, y = trained
    cases = [
        (TypeError, "model must be a fastwb.nn.Sequential", lambda: adversarial.fgsm(object(), X, y)),
        (ValueError, "eps must be >= 0", lambda: adversarial.fgsm(model, X, y, eps=-0.1)),
        (ValueError, "eps must be finite", lambda: adversarial.fgsm(model, X, y, eps=np.nan)),
        (ValueError, "eps must be >= 0", lambda: adversarial.pgd(model, X, y, eps=-0.1)),
        (ValueError, "alpha must be >= 0", lambda: adversarial.pgd(model, X, y, alpha=-0.01)),
        (ValueError, "steps must be >= 1", lambda: adversarial.pgd(model, X, y, steps=0)),
        (TypeError, "steps must be an integer", lambda: adversarial.pgd(model, X, y, steps=2.5)),
        (TypeError, "random_start must be True or False", lambda: adversarial.pgd(model, X, y, random_start=1)),
        (TypeError, "targeted must be True or False", lambda: adversarial.fgsm(model, X, y, targeted="yes")),
        (TypeError, "rng must be", lambda: adversarial.pgd(model, X, y, rng="seed")),
        (ValueError, "batch_size must be >= 1", lambda: adversarial.fgsm(model, X, y, batch_size=0)),
        (ValueError, "is empty: lo must be <= hi", lambda: adversarial.fgsm(model, X, y, clip=(1, 0))),
        (TypeError, "X has dtype float64 but the model is float32",
         lambda: adversarial.fgsm(model, X.astype(float), y)),
        (ValueError, r"X must have shape \(n, 20\)", lambda: adversarial.fgsm(model, X[:, :5], y)),
        (ValueError, r"y has shape \(3,\), expected \(300,\)", lambda: adversarial.fgsm(model, X, y[:3])),
        (ValueError, r"y\[0\] = 7 is not a class index", lambda: adversarial.fgsm(model, X, np.full(300, 7))),
        (TypeError, "y must be integer class indices", lambda: adversarial.pgd(model, X, y.astype(float))),
        (ValueError, "a targeted attack needs y", lambda: adversarial.fgsm(model, X, targeted=True)),
        (ValueError, "unknown attack 'cw'; valid names are 'fgsm', 'pgd'",
         lambda: adversarial.robust_accuracy(model, X, y, attack="cw")),
        (TypeError, "unknown option 'steps' for attack 'fgsm'",
         lambda: adversarial.robust_accuracy(model, X, y, attack="fgsm", steps=3)),
        (ValueError, "untargeted attacks on the true labels",
         lambda: adversarial.robustness(model, X, y, attack="fgsm", targeted=True)),
        (ValueError, "accuracy over no rows", lambda: adversarial.robust_accuracy(model, X[:0], y[:0])),
        (ValueError, "accuracy needs a classifier trained with cross_entropy",
         lambda: adversarial.robust_accuracy(_build("dense_nobias_identity", "float32"), X[:, :7],
                                             np.zeros((300, 5)))),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_nan_in_the_input_is_a_clear_error(trained):
    model, X, y = trained
    Xn = X.copy()
    Xn[70, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN value.*\(first in row 70\).*check X for NaN"):
        adversarial.fgsm(model, Xn, y, batch_size=32)
    with pytest.raises(ValueError, match=r"first in row 70"):
        adversarial.pgd(model, Xn, y, steps=2, random_start=False, batch_size=64)


# -- the real MNIST -----------------------------------------------------------------------------

def test_fgsm_and_pgd_on_real_mnist(mnist_folder):
    X_train, y_train, X_test, y_test = datasets.load("mnist", mnist_folder)
    model = fastwb.MLP([784, 128, 10], rng=0)
    model.fit(X_train[:20000], y_train[:20000], epochs=1, batch_size=128, verbose=False, rng=0)
    X, y = X_test[:2000], y_test[:2000]
    clean = adversarial.robustness(model, X, y, attack="fgsm", eps=0.1)
    assert clean["clean_accuracy"] > 0.88
    assert clean["robust_accuracy"] < clean["clean_accuracy"] - 0.3
    pgd = adversarial.robust_accuracy(model, X, y, attack="pgd", eps=0.1, steps=10, rng=0)
    assert pgd <= clean["robust_accuracy"]
