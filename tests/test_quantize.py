"""fastwb.quantize: int8 dynamic quantization against its NumPy twin
(fastwb/reference/quantize.py), bit for bit.

* The pieces: the activation parameters (PyTorch's ChooseQuantizationParams) on
  hand cases and drawn ranges; the one-rounding quantizer (fma) on the scalar and
  the SIMD pass, with exact ties and values where a multiply-then-add would round
  differently, and the twin's own fma32 against exact rational arithmetic; the
  packed weight layout and the column sums.
* Whole models on every kernel path, 1/2/4 threads (the per-thread grain lowered
  so that small shapes split too), per-channel and per-tensor weights, 8- and
  7-bit activations, odd shapes, and extreme values (zeros, constant rows,
  1e30, 1e-30, mixed magnitudes, drawn values).
* NaN and Inf rows: a NaN row out, the other rows as if it were absent.
* Saturation: K = 65536 with every weight at -128 (or 127) and every activation
  at its maximum, against the exact int64 result; K = 65537 is refused; and
  the NumPy proof that vpmaddubsw cannot saturate on 7-bit activations.
* The model: what cannot be quantized, BatchNorm folding, Dropout, fit, bad
  input, chunking, files, sizes, predict/evaluate, kernel paths, threads, and
  the memory kept for many batch sizes.
* PyTorch's quantize_dynamic on the same weights and inputs (skipped without
  torch), and the accuracy on the real MNIST (skipped without the data).
"""

import fractions
import threading
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastwb
from fastwb import _quant, nn, quantize
from fastwb.reference import quantize as twin
from fastwb.reference import softmax_cross_entropy

PATHS = quantize.available_paths()
SIMD_PATHS = [0, 1] if "avx2" in PATHS else [0]     # _quant.quantize_rows: scalar, AVX2
QMAXES = [255, 127]
F32 = np.float32
ACTS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "identity": nn.Identity,
        "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


# -- helpers ------------------------------------------------------------------------------------

def same(got, want, what=""):
    """Equal values (NaN equal to NaN) and, for floats, equal bits wherever the
    value is not NaN (the sign of every zero included)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    ok = np.array_equal(got, want, equal_nan=True)
    if ok and got.dtype.kind == "f":
        keep = ~np.isnan(got)
        ok = np.array_equal(got[keep].view(np.uint32), want[keep].view(np.uint32))
    if not ok:
        g, w = got.reshape(-1), want.reshape(-1)
        if got.dtype.kind == "f":
            bad = np.flatnonzero((g.view(np.uint32) != w.view(np.uint32)) & ~(np.isnan(g) & np.isnan(w)))
        else:
            bad = np.flatnonzero(g != w)
        i = bad[0]
        raise AssertionError(f"{what}: {bad.size} of {g.size} elements differ, first at flat index {i} "
                             f"(of shape {got.shape}): got {g[i]!r}, want {w[i]!r}")


def grain(n_threads):
    """A context in which fastwb uses n_threads and quantized forward passes
    split over them whatever their size (the grain lowered to 1)."""
    class _Ctx:
        def __enter__(self):
            self.p = mock.patch.object(quantize, "GRAIN_INT8", 1)
            self.t = fastwb.threads(n_threads)
            self.p.__enter__()
            self.t.__enter__()

        def __exit__(self, *exc):
            self.t.__exit__(*exc)
            self.p.__exit__(*exc)
    return _Ctx()


def build(sizes, acts, seed=0, bias=True, dtype="float32", wscale=0.3, zero_column=True):
    """An eval-mode Sequential: Linear(sizes[i], sizes[i+1]) each followed by
    ACTS[acts[i]] (None: no layer), with random normal weights (a zero column in
    the first layer, where it has one to spare, for the weight-scale floor) and
    biases."""
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(acts) and acts[i] is not None:
            layers.append(ACTS[acts[i]]())
    model = nn.Sequential(*layers, dtype=dtype, rng=seed)
    rng = np.random.default_rng(seed + 1000)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith(".weight"):
            v[...] = rng.standard_normal(v.shape) * wscale
        elif k.endswith(".bias"):
            v[...] = rng.standard_normal(v.shape) * 0.1
    if zero_column and sd["0.weight"].shape[1] > 2:
        sd["0.weight"][:, 1] = 0
    model.load_state_dict(sd)
    return model.eval()


KINDS = ["normal", "zeros", "const_rows", "huge", "tiny", "mixed", "positive", "negative"]


def inputs(kind, M, K, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        X = rng.standard_normal((M, K))
    elif kind == "zeros":
        X = np.zeros((M, K))
    elif kind == "const_rows":
        X = np.repeat(rng.standard_normal((M, 1)) * 3, K, axis=1)
    elif kind == "huge":
        X = rng.standard_normal((M, K)) * 1e30
    elif kind == "tiny":
        X = rng.standard_normal((M, K)) * 1e-30
    elif kind == "mixed":       # rows of every magnitude, exact zeros, subnormals, -0.0
        X = rng.standard_normal((M, K)) * 10.0 ** rng.uniform(-30, 30, (M, 1))
        X[rng.random((M, K)) < 0.2] = 0.0
        X[rng.random((M, K)) < 0.05] = -0.0
        X[rng.random((M, K)) < 0.05] = 1e-42
    elif kind == "positive":    # pixels
        X = rng.random((M, K))
    elif kind == "negative":
        X = -rng.random((M, K)) - 0.5
    else:
        raise AssertionError(kind)
    return X.astype(F32)


def both(model, per_channel=True, reduce_range=False):
    return (quantize.quantize_dynamic(model, per_channel=per_channel, reduce_range=reduce_range),
            twin.quantize_dynamic(model, per_channel=per_channel, reduce_range=reduce_range))


def round_f32(q):
    """The float32 nearest to the rational q, ties to even (exactly)."""
    f = F32(float(q))           # float(Fraction) is the correctly rounded double: within one float32 step
    cands = [np.nextafter(f, F32(-np.inf)), f, np.nextafter(f, F32(np.inf))]
    return min(cands, key=lambda c: (abs(fractions.Fraction(float(c)) - q), int(np.array(c, F32).view(np.uint32)) & 1))


def exact_code(x, scale, zp, qmax):
    """clip(rint(fma(x, 1/scale, zp)), 0, qmax) computed with exact fractions."""
    inv = F32(1) / F32(scale)
    t = round_f32(fractions.Fraction(float(x)) * fractions.Fraction(float(inv)) + zp)
    return int(np.rint(np.clip(t, 0, qmax)))


# -- activation parameters ----------------------------------------------------------------------

TINY = float(twin.SMALL_SCALE) * 255        # ranges below this are stretched to the 6.1e-5 floor
HAND_RANGES = [
    (0.0, 0.0), (-0.0, 0.0), (-0.0, -0.0),
    (0.5, 3.0), (0.0, 3.0), (1e-3, 7.0),                    # all positive: zero point 0
    (-3.0, -0.5), (-3.0, 0.0), (-7.0, -1e-3),               # all negative: zero point qmax
    (-1.0, 1.0), (-2.0, 0.7), (-0.01, 100.0), (-100.0, 0.01), (-1.0, 1.0 + 2 ** -23),
    (0.0, 1e-3), (0.0, TINY * 0.999), (3e-6, 4e-6),         # tiny, min == 0
    (-1e-3, 0.0), (-TINY * 0.999, 0.0), (-4e-6, -3e-6),     # tiny, max == 0
    (-1e-3, 2e-3), (-2e-6, 1e-7), (-1e-9, 1e-9), (-1e-20, 3e-20),   # tiny, both nonzero
    (-1e38, 1e38), (0.0, 1e38), (-1e38, 0.0), (-3.4028235e38, 3.4028235e38), (-3.4028235e38, 1.0),
    (0.0, 1e-40), (-1e-40, 0.0), (-1e-45, 1e-45), (-1e-39, 2e-39), (-1e-38, 1e-38),   # subnormals
    (-1e-36, 1e-36), (0.0, 1.1754944e-38), (0.0, 3e-37),
]


@pytest.mark.parametrize("qmax", QMAXES)
@pytest.mark.parametrize("mn, mx", HAND_RANGES, ids=str)
def test_qparams_match_the_twin_on_hand_cases(mn, mx, qmax):
    scale, zp = _quant.qparams(F32(mn), F32(mx), qmax)
    want_scale, want_zp = twin.choose_qparams(F32(mn), F32(mx), qmax)
    assert type(zp) is int and 0 <= zp <= qmax
    assert scale.dtype == F32 and np.isfinite(scale) and scale > 0
    same(np.array(scale), np.array(want_scale), f"scale of [{mn}, {mx}]")
    assert zp == want_zp, (mn, mx, zp, want_zp)
    assert scale >= twin.SMALL_SCALE        # the floor


@pytest.mark.parametrize("qmax", QMAXES)
def test_qparams_hand_values(qmax):
    def q(mn, mx):
        return _quant.qparams(F32(mn), F32(mx), qmax)

    assert q(0, 0) == (F32(0.1), 0)
    assert q(-0.0, 0.0) == (F32(0.1), 0)
    assert q(0.5, 3.0) == (F32(3.0 / qmax), 0)          # widened to [0, 3]
    assert q(-3.0, -0.5) == (F32(3.0 / qmax), qmax)     # widened to [-3, 0]
    assert q(-1.0, 1.0) == (F32(2.0 / qmax), 128 if qmax == 255 else 64)   # 127.5 / 63.5 round half to even
    for mn, mx in ((0.0, 1e-3), (-1e-3, 0.0), (-1e-3, 2e-3), (-1e-9, 1e-9)):
        scale, zp = q(mn, mx)
        assert scale == twin.SMALL_SCALE, (mn, mx)
    assert q(0.0, 1e-3)[1] == 0 and q(-1e-3, 0.0)[1] == qmax
    assert q(-1e-3, 2e-3)[1] == round(qmax / 3)          # both ends stretched by the same factor
    # a scale that rounds to 0 in float, or whose float reciprocal overflows, is 0.1
    assert q(0.0, 1e-44)[0] == F32(0.1) and q(0.0, 1e-40)[0] == F32(0.1)
    scale, zp = q(-1e38, 1e38)
    assert scale == F32(2e38 / qmax) and abs(zp - qmax / 2) <= 0.5      # F32(1e38) is not 1e38: either side


@pytest.mark.parametrize("qmax", QMAXES)
@given(a=st.floats(width=32, allow_nan=False, allow_infinity=False),
       b=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_qparams_match_the_twin_on_drawn_ranges(qmax, a, b):
    mn, mx = F32(min(a, b)), F32(max(a, b))
    scale, zp = _quant.qparams(mn, mx, qmax)
    want_scale, want_zp = twin.choose_qparams(mn, mx, qmax)
    same(np.array(scale), np.array(want_scale), f"scale of [{mn}, {mx}]")
    assert zp == want_zp and 0 <= zp <= qmax
    assert np.isfinite(scale) and scale >= twin.SMALL_SCALE


# -- the quantization pass ----------------------------------------------------------------------

def test_the_twins_fma32_is_the_exactly_rounded_fma():
    rng = np.random.default_rng(5)
    xs = (rng.standard_normal(300) * 10.0 ** rng.uniform(-44, 25, 300)).astype(F32)
    invs = (rng.uniform(0.5, 2, 300) * 10.0 ** rng.uniform(-10, 10, 300)).astype(F32)
    zs = rng.integers(0, 256, 300)
    cases = list(zip(xs, invs, zs))
    # double rounding traps: x * inv = 2^-23 (1 + tiny), so x * inv + 3 lies just above the float32
    # midpoint 3 + 2^-23 and its rounding to double lands on the midpoint itself
    found = 0
    for A in rng.integers(2 ** 23, 2 ** 24, 5000):
        B = 2 ** 47 // int(A) + 1
        r = int(A) * B - 2 ** 47
        if B < 2 ** 24 and 0 < r < 2 ** 18:
            cases.append((F32(int(A) * 2.0 ** -35), F32(B * 2.0 ** -35), 3))
            found += 1
    assert found >= 10
    naive_wrong = 0
    for x, inv, z in cases:
        exact = fractions.Fraction(float(x)) * fractions.Fraction(float(inv)) + int(z)
        want = round_f32(exact)
        got = twin.fma32(np.array([x], F32), inv, z)[0]
        assert got.dtype == F32
        assert got.view(np.uint32) == want.view(np.uint32) or (got == 0 and want == 0), (x, inv, z, got, want)
        naive_wrong += F32(float(x) * float(inv) + int(z)) != want
    assert naive_wrong >= found       # the traps do catch a plain rounding through double


def fma_sensitive_cases(rng, qmax, count):
    """(x, scale, zp) where clip(rint(x * inv + zp)) with one rounding (fma) and with
    two (multiply, then add) give different codes: x * inv is a large negative
    number just beside k + 0.5 - zp, whose float32 rounding lands on it."""
    found = []
    while len(found) < count:
        scale = F32(rng.uniform(0.002, 0.05))
        inv = F32(1) / scale
        zp = int(rng.integers(qmax // 2, qmax + 1))
        k = int(rng.integers(0, 6))
        x0 = F32((k + 0.5 - zp) / float(inv))
        bits = np.array([x0], F32).view(np.int32)[0]
        for d in range(-60, 61):
            x = np.array([bits + d], np.int32).view(F32)[0]
            a_fma = exact_code(x, scale, zp, qmax)
            t_two = F32(F32(x * inv) + F32(zp))
            a_two = int(np.rint(np.clip(t_two, 0, qmax)))
            if a_fma != a_two:
                found.append((x, scale, zp, a_fma, a_two))
    return found


@pytest.mark.parametrize("path", SIMD_PATHS, ids=["scalar", "avx2"][:len(SIMD_PATHS)])
@pytest.mark.parametrize("qmax", QMAXES)
def test_quantize_rows_rounds_once_like_fma(path, qmax):
    rng = np.random.default_rng(qmax + path)
    cases = fma_sensitive_cases(rng, qmax, 40)
    for x, scale, zp, a_fma, a_two in cases:
        X = np.full((2, 37), x, F32)        # lanes 0..31 in the vector body, 32..36 in the tail
        got = _quant.quantize_rows(X, scale, zp, qmax, path)
        assert got.shape == (2, 40) and got.dtype == np.uint8
        assert (got[:, :37] == a_fma).all(), (x, scale, zp, a_fma, a_two, got[0])
        assert (got[:, 37:] == 0).all()
        same(got[:, :37], twin.quantize_rows(X, scale, zp, qmax), f"x={x!r} scale={scale!r} zp={zp}")


@pytest.mark.parametrize("path", SIMD_PATHS, ids=["scalar", "avx2"][:len(SIMD_PATHS)])
@pytest.mark.parametrize("qmax", QMAXES)
def test_quantize_rows_ties_round_half_to_even(path, qmax):
    scale = F32(2.0 ** -4)                  # 1/scale = 16: every x = (t - zp) / 16 below is exact
    for zp in (0, 1, 10, qmax // 2, qmax - 1, qmax):
        ts = np.arange(0, qmax) + 0.5         # every tie k + 0.5 in range
        X = ((ts - zp) / 16.0).astype(F32)[None, :]
        assert ((X.astype(np.float64) * 16 + zp) == ts).all()
        got = _quant.quantize_rows(X, scale, zp, qmax, path)[:, :X.shape[1]]
        k = np.floor(ts).astype(np.int64)
        want = np.where(k % 2 == 0, k, k + 1).astype(np.uint8)    # half to even
        same(got[0], want, f"ties with zp {zp}")
        same(got, twin.quantize_rows(X, scale, zp, qmax), f"ties with zp {zp}")


@pytest.mark.parametrize("path", SIMD_PATHS, ids=["scalar", "avx2"][:len(SIMD_PATHS)])
@pytest.mark.parametrize("qmax", QMAXES)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 65, 100, 129])
def test_quantize_rows_matches_the_twin_and_pads_with_zeros(path, qmax, K):
    rng = np.random.default_rng(K)
    for kind in KINDS:
        X = inputs(kind, 3, K, seed=K)
        X[0, : min(K, 4)] = [3e38, -3e38, 1e30, -1e-45][: min(K, 4)]      # clamped at both ends
        good = X[np.isfinite(X).all(axis=1)]
        scale, zp = _quant.qparams(F32(good.min()), F32(good.max()), qmax)
        for s, z in ((scale, zp), (F32(rng.uniform(1e-3, 1)), int(rng.integers(0, qmax + 1)))):
            got = _quant.quantize_rows(X, s, z, qmax, path)
            lda = (K + 3) // 4 * 4
            assert got.shape == (3, lda)
            assert (got[:, K:] == 0).all(), f"padding bytes {got[:, K:]}"
            same(got[:, :K], twin.quantize_rows(X, s, z, qmax), f"{kind}, K={K}, scale={s!r}, zp={z}")
            assert got.max() <= qmax


def test_quantize_rows_scalar_and_simd_agree_on_random_rows():
    if len(SIMD_PATHS) < 2:
        pytest.skip("no AVX2 on this CPU: only the scalar pass runs")
    rng = np.random.default_rng(3)
    for qmax in QMAXES:
        for _ in range(50):
            K = int(rng.integers(1, 300))
            X = (rng.standard_normal((4, K)) * 10.0 ** rng.uniform(-5, 5)).astype(F32)
            scale, zp = _quant.qparams(X.min(), X.max(), qmax)
            same(_quant.quantize_rows(X, scale, zp, qmax, 1), _quant.quantize_rows(X, scale, zp, qmax, 0))


# -- packed weights -----------------------------------------------------------------------------

@pytest.mark.parametrize("K, N", [(1, 1), (3, 1), (4, 16), (5, 17), (31, 15), (33, 33), (64, 5), (129, 48)])
def test_pack_weights_layout_colsums_and_round_trip(K, N):
    rng = np.random.default_rng(K * 100 + N)
    W = rng.integers(-128, 128, (K, N)).astype(np.int8)
    W[0, 0], W[-1, -1] = -128, 127
    Bp, colsum = _quant.pack_weights(W)
    P, K4 = (N + 15) // 16, (K + 3) // 4
    assert Bp.dtype == np.int8 and Bp.shape == (P * K4 * 64,)
    assert colsum.dtype == np.int32 and colsum.shape == (P * 16,)
    same(colsum[:N], W.astype(np.int64).sum(axis=0).astype(np.int32), "column sums")
    assert (colsum[N:] == 0).all()
    # [panel][k/4][16 columns][k%4], zeros outside W
    want = np.zeros((P, K4, 16, 4), np.int8)
    Wp = np.zeros((K4 * 4, P * 16), np.int8)
    Wp[:K, :N] = W
    want[...] = Wp.reshape(K4, 4, P, 16).transpose(2, 0, 3, 1)
    same(Bp, want.reshape(-1), "packed layout")
    # round trip through a QuantizedModel
    q = quantize.QuantizedModel([W], [np.full(N, 0.01, F32)], [None], [("identity", 0.01)], True, False)
    same(q.weight(0), W, "weight(0)")
    assert q.bias(0) is None and q.scale(0).shape == (N,)


def test_weights_and_scales_match_the_twin():
    model = build([37, 20, 9], ["relu"], seed=4)
    sd = model.state_dict()
    for per_channel in (True, False):
        q, t = both(model, per_channel)
        for i, name in enumerate(("0", "2")):
            Wq, s = twin.quantize_weights(sd[f"{name}.weight"], per_channel)
            same(q.weight(i), Wq, f"layer {i} weights")
            same(q.weight(i), t.layers[i][0], f"layer {i} weights")
            same(q.scale(i), s, f"layer {i} scales")
            same(q.bias(i), sd[f"{name}.bias"], f"layer {i} bias")
            if not per_channel:
                assert (s == s[0]).all()
        # the zero column of layer 0 has the floor scale and zero weights
        if per_channel:
            assert q.scale(0)[1] == twin.WEIGHT_EPS and (q.weight(0)[:, 1] == 0).all()
        # symmetric: each column's (or the tensor's) largest weight maps to 127 or -128
        for i in range(2):
            amax = np.abs(q.weight(i).astype(np.int64)).max(axis=0)
            if per_channel:
                assert (amax[amax > 0] >= 127).all()
            else:
                assert amax.max() >= 127


# -- whole models against the twin --------------------------------------------------------------

MS = [1, 2, 3, 5, 17, 64, 65, 130]
KS = [1, 3, 4, 5, 31, 32, 33, 784]
NS = [1, 5, 15, 16, 17, 33]
HIDDEN = ["relu", "leaky_relu", "identity"]
ACT_FN = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh}
_models = {}
_expected = {}


def _model_for(K, N, i):
    key = (K, N)
    if key not in _models:
        N2 = NS[(i + 1) % len(NS)]
        _models[key] = build([K, N, N2], [HIDDEN[i % 3]], seed=K * 7 + N)
    return _models[key]


def _cases():
    i = 0
    for K in KS:
        for N in NS:
            for M in MS:
                yield i, M, K, N, KINDS[i % len(KINDS)]
                i += 1


@pytest.mark.parametrize("reduce_range", [False, True], ids=["u8", "u7"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["channel", "tensor"])
@pytest.mark.parametrize("n_threads", [1, 2, 4])
@pytest.mark.parametrize("path", PATHS)
def test_models_match_the_twin_bit_for_bit(path, n_threads, per_channel, reduce_range):
    """Every M x K x N of the lists, two layers with a ReLU, LeakyReLU or no
    activation between, each with one kind of input; the twin's answers are
    computed once and shared by every path and thread count."""
    quantized = {}
    with grain(n_threads):
        for i, M, K, N, kind in _cases():
            model = _model_for(K, N, i // len(MS))
            if (K, N) not in quantized:
                quantized[K, N] = quantize.quantize_dynamic(model, per_channel=per_channel,
                                                            reduce_range=reduce_range)
                quantized[K, N].path = path
            q = quantized[K, N]
            X = inputs(kind, M, K, seed=i)
            key = (i, per_channel, reduce_range)
            if key not in _expected:
                _expected[key] = twin.quantize_dynamic(model, per_channel, reduce_range).logits(X)
            same(q.logits(X), _expected[key], f"M={M} K={K} N={N} {kind} {model.layers[1]!r}")


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
@pytest.mark.parametrize("path", PATHS)
def test_sigmoid_and_tanh_at_the_end_match_the_twin_closely(path, act):
    model = build([33, 17, 6], ["leaky_relu", act], seed=9)
    lin = build([33, 17, 6], ["leaky_relu", "identity"], seed=9)      # the same weights, no activation
    for per_channel in (True, False):
        q, t = both(model, per_channel)
        ql, tl = both(lin, per_channel)
        q.path = ql.path = path
        for kind in ("normal", "huge", "mixed", "const_rows"):
            X = inputs(kind, 70, 33, seed=2)
            got, want = q.logits(X), t.logits(X)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30, err_msg=kind)
            # before the activation the two are exact: only sigmoid / tanh themselves differ
            same(ql.logits(X), tl.logits(X), kind)
            with np.errstate(over="ignore"):
                np.testing.assert_allclose(got, ACT_FN[act](tl.logits(X).astype(np.float64)), rtol=1e-5, atol=1e-30)


def test_deep_and_float64_models_match_the_twin():
    for dtype in ("float32", "float64"):
        model = build([50, 40, 30, 20, 10, 3], ["relu", "leaky_relu", "identity", "relu"], seed=3, dtype=dtype)
        for path in PATHS:
            for reduce_range in (False, True):
                q, t = both(model, True, reduce_range)
                q.path = path
                for kind in KINDS:
                    X = inputs(kind, 21, 50, seed=1)
                    same(q.logits(X), t.logits(X), f"{dtype} {path} {kind}")


def test_models_without_bias_match_the_twin():
    model = build([40, 18, 7], ["relu"], seed=8, bias=False)
    q, t = both(model)
    assert q.bias(0) is None and q.bias(1) is None
    for path in PATHS:
        q.path = path
        X = inputs("normal", 13, 40)
        same(q.logits(X), t.logits(X), path)


@pytest.mark.parametrize("hidden", [256, 512])
def test_thread_counts_give_the_same_bits_at_the_default_grain(hidden):
    """Passes big enough to split by themselves (130 x 784 x hidden multiply-adds),
    with packed weights that fit in L2 (784 x 256, walked rows first) and that do
    not (784 x 512, panels first)."""
    model = build([784, hidden, 10], ["relu"], seed=2)
    X = inputs("positive", 130, 784)
    for per_channel, reduce_range in ((True, False), (False, True)):
        q, t = both(model, per_channel, reduce_range)
        want = t.logits(X)
        for path in PATHS:
            q.path = path
            for n in (1, 2, 4):
                with fastwb.threads(n):
                    same(q.logits(X), want, f"{path}, {n} threads")


@given(data=st.data())
def test_drawn_models_and_values_match_the_twin(data):
    M = data.draw(st.integers(1, 70), "M")
    K = data.draw(st.integers(1, 70), "K")
    N = data.draw(st.integers(1, 40), "N")
    N2 = data.draw(st.integers(1, 20), "N2")
    act = data.draw(st.sampled_from(HIDDEN), "act")
    per_channel = data.draw(st.booleans(), "per_channel")
    reduce_range = data.draw(st.sampled_from([None, True, False]), "reduce_range")
    seed = data.draw(st.integers(0, 2 ** 16), "seed")
    e = data.draw(st.integers(-38, 37), "exponent")
    wexp = data.draw(st.integers(-30, 3), "weight exponent")
    model = build([K, N, N2], [act], seed=seed, wscale=10.0 ** wexp)
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore", under="ignore"):
        X = (rng.standard_normal((M, K)) * 10.0 ** e).astype(F32)
    specials = data.draw(st.lists(st.tuples(st.integers(0, M - 1), st.integers(0, K - 1),
                                            st.floats(width=32, allow_nan=False, allow_infinity=False)),
                                  max_size=6), "specials")
    for r, c, v in specials:
        X[r, c] = v
    q, t = both(model, per_channel, reduce_range)
    with np.errstate(all="ignore"):
        want = t.logits(X)
    for path in PATHS:
        q.path = path
        for n in (1, 2):
            with grain(n):
                same(q.logits(X), want, f"{path}, {n} threads")


# -- NaN and Inf rows ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_nan_or_inf_row_gives_a_nan_row_and_leaves_the_others_alone(path, bad):
    model = build([30, 20, 5], ["relu"], seed=6)
    q, t = both(model)
    q.path = path
    for M, rows in ((1, [0]), (2, [1]), (5, [0]), (5, [2, 4]), (70, [0, 33, 69]), (130, list(range(0, 130, 7)))):
        X = inputs("normal", M, 30, seed=M)
        X[:, 0] *= 50           # the good rows' range must not be what the bad rows hold
        for j, r in enumerate(rows):
            X[r, (5 * j + 3) % 30] = bad
        got = q.logits(X)
        assert np.isnan(got[rows]).all()
        good = np.setdiff1d(np.arange(M), rows)
        same(got[good], q.logits(X[good]) if good.size else got[good], f"M={M} rows {rows}")
        assert np.isfinite(got[good]).all()
        same(got, t.logits(X), f"twin, M={M}")


@pytest.mark.parametrize("path", PATHS)
def test_all_rows_bad_gives_all_nan(path):
    model = build([12, 9, 4], ["relu"], seed=1)
    q, t = both(model, reduce_range=True)
    q.path = path
    for M in (1, 3, 65):
        X = inputs("normal", M, 12)
        X[:, M % 12] = np.nan
        X[0, 0] = np.inf
        X[-1, -1] = -np.inf
        got = q.logits(X)
        assert got.shape == (M, 4) and np.isnan(got).all()
        same(got, t.logits(X))
        X[:, :] = np.inf
        assert np.isnan(q.logits(X)).all()


def test_the_grain_helper_does_split_small_passes():
    """grain(n) makes the tests above run small shapes on n threads."""
    seen = []
    real = quantize.plan_threads

    def spy(work, grain_, available=None):
        seen.append(real(work, grain_, available))
        return seen[-1]

    q = quantize.quantize_dynamic(build([5, 3], [], seed=0))
    with mock.patch.object(quantize, "plan_threads", spy):
        for n in (1, 2, 4):
            with grain(n):
                q.logits(inputs("normal", 7, 5))
        q.logits(inputs("normal", 7, 5))
    assert seen == [1, 2, 4, 1]


def test_a_row_that_overflows_inside_the_network_becomes_nan():
    """Row 0 reaches Inf in the hidden layer: it is a bad row of layer 2's batch."""
    model = build([4, 8, 3], ["relu"], seed=2, wscale=1e3, zero_column=False)
    q, t = both(model)
    X = np.array([[3e38, 3e38, 3e38, 3e38], [1, 2, 3, 4], [0, 0, 0, 0]], F32)
    with np.errstate(over="ignore"):
        want = t.logits(X)
    assert np.isnan(want[0]).all() and np.isfinite(want[1:]).all()
    for path in PATHS:
        q.path = path
        same(q.logits(X), want, path)
    # weights so large that s_a * s_w overflows: Inf (or NaN where the sum is 0) in row 0 of layer 1
    model = build([4, 8, 3], ["identity"], seed=2, wscale=1e5, zero_column=False)
    q, t = both(model)
    with np.errstate(over="ignore", invalid="ignore"):
        want = t.logits(X)
    assert np.isnan(want[0]).all()
    for path in PATHS:
        q.path = path
        same(q.logits(X), want, path)


# -- saturation and the int32 bound -------------------------------------------------------------

_big = {}


def big_model(c, alternate=False):
    """Linear(65536, 16) whose weights are all c (alternating in sign along the
    input with ``alternate``): with c = 0.75, c * (1 / (c / 127.5)) is exactly
    127.5 in float32, so every int8 weight is -128 (rint(-127.5)) or 127
    (rint(127.5) = 128, clipped)."""
    key = (c, alternate)
    if key not in _big:
        K = quantize.MAX_IN_FEATURES
        model = nn.Sequential(nn.Linear(K, 16), rng=0).eval()
        W = np.full((K, 16), c, F32)
        if alternate:
            W[1::2] *= -1
        b = np.linspace(-1, 1, 16, dtype=F32)
        model.load_state_dict({"0.weight": W, "0.bias": b})
        _big[key] = model
    return _big[key]


def exact_logits(q, X):
    """The int64 answer of the one-layer model q: f32(sum (a - z) w) * f32(s_a s_w) + b."""
    scale, zp = _quant.qparams(F32(X.min()), F32(X.max()), 127 if q.reduce_range else 255)
    A = twin.quantize_rows(X, scale, zp, 127 if q.reduce_range else 255).astype(np.int64)
    acc = (A - zp) @ q.weight(0).astype(np.int64)
    assert np.abs(acc).max() < 2 ** 31
    return (acc.astype(F32) * (scale * q.scale(0)).astype(F32) + q.bias(0)).astype(F32), A, acc


@pytest.mark.parametrize("reduce_range", [False, True], ids=["u8", "u7"])
@pytest.mark.parametrize("c, code", [(-0.75, -128), (0.75, 127)], ids=["w-128", "w127"])
def test_saturated_products_at_the_largest_width_are_exact(c, code, reduce_range):
    K, qmax = quantize.MAX_IN_FEATURES, 127 if reduce_range else 255
    model = big_model(c)
    for per_channel in (True, False):
        q, t = both(model, per_channel, reduce_range)
        assert (q.weight(0) == code).all()
        for X, a, z in ((np.ones((5, K), F32), qmax, 0),           # every activation at qmax, zero point 0
                        (-np.ones((3, K), F32), 0, qmax)):          # every activation 0, zero point qmax
            want, A, acc = exact_logits(q, X)
            assert (A == a).all()
            assert (acc == (a - z) * code * K).all()
            assert abs((a - z) * code * K) >= (2 ** 31) * 0.98 * (qmax / 255)     # the extreme
            same(want, t.logits(X), "int64 answer against the twin")
            for path in PATHS:
                q.path = path
                for n in (1, 2):
                    with grain(n):
                        same(q.logits(X), want, f"{path}, {n} threads, a={a}, z={z}")


@pytest.mark.parametrize("reduce_range", [False, True], ids=["u8", "u7"])
def test_saturation_with_alternating_signs(reduce_range):
    K, qmax = quantize.MAX_IN_FEATURES, 127 if reduce_range else 255
    model = big_model(0.75, alternate=True)
    q, t = both(model, True, reduce_range)
    Wq = q.weight(0)
    assert (Wq[0::2] == 127).all() and (Wq[1::2] == -128).all()
    signs = np.where(np.arange(K) % 2 == 0, 1, -1).astype(F32)
    cases = [np.where(signs > 0, -1, 2)[None, :].repeat(2, 0),     # a = 0 where w = 127, qmax where w = -128
             -signs[None, :].repeat(2, 0),
             signs[None, :].repeat(2, 0),
             np.vstack([signs * 3, -signs]),
             np.vstack([np.where(signs > 0, 1, 0), np.ones(K)]).astype(F32)]
    for X in cases:
        X = np.ascontiguousarray(X, F32)
        want, A, acc = exact_logits(q, X)
        same(want, t.logits(X), "int64 answer against the twin")
        for path in PATHS:
            q.path = path
            same(q.logits(X), want, f"{path}")
    # the first case puts every activation at an end of its range, against the weight of the other sign
    want, A, acc = exact_logits(q, np.ascontiguousarray(cases[0], F32))
    zp = _quant.qparams(F32(-1), F32(2), qmax)[1]
    assert (A[:, 0::2] == 0).all() and (A[:, 1::2] == qmax).all()
    assert acc[0, 0] == (K // 2) * ((0 - zp) * 127 + (qmax - zp) * -128)


def test_too_wide_a_linear_is_refused():
    K = quantize.MAX_IN_FEATURES + 1
    model = nn.Sequential(nn.Linear(K, 1), rng=0).eval()
    with pytest.raises(ValueError, match=str(quantize.MAX_IN_FEATURES)):
        quantize.quantize_dynamic(model)


def test_vpmaddubsw_cannot_saturate_on_7_bit_activations():
    """vpmaddubsw adds two u8 x s8 products in int16, saturating.  Every product
    of a 7-bit activation and an int8 weight (all 128 x 256 of them) lies in
    [-16256, 16129], so every pair sum lies in [-32512, 32258], inside int16; the
    bound is reached (a = 127, w = -128 twice).  8-bit activations would saturate."""
    a = np.arange(0, 128, dtype=np.int64)
    w = np.arange(-128, 128, dtype=np.int64)
    P = (a[:, None] * w[None, :]).ravel()
    assert P.size == 128 * 256 and P.min() == -16256 and P.max() == 16129
    # a pair sum p0 + p1 of two such products: its extremes are 2 min(P) and 2 max(P)
    assert max(abs(2 * P.min()), abs(2 * P.max())) == 32512 <= 2 ** 15 - 1

    def vpmaddubsw(av, wv):     # the instruction on (n, 2) pairs: the exact sum clipped to int16
        return np.clip(av[:, 0] * wv[:, 0] + av[:, 1] * wv[:, 1], -32768, 32767)

    # every pair (a0, a1) against the extreme and sign-changing weights, and every weight
    # pair against the extreme activations: no clipping anywhere
    ext_w = np.array([-128, -127, -1, 0, 1, 126, 127])
    g = np.array(np.meshgrid(a, a, ext_w, ext_w, indexing="ij")).reshape(4, -1).T
    exact = g[:, 0] * g[:, 2] + g[:, 1] * g[:, 3]
    assert (vpmaddubsw(g[:, :2], g[:, 2:]) == exact).all() and np.abs(exact).max() == 32512
    ext_a = np.array([0, 1, 126, 127])
    g = np.array(np.meshgrid(ext_a, ext_a, w, w, indexing="ij")).reshape(4, -1).T
    exact = g[:, 0] * g[:, 2] + g[:, 1] * g[:, 3]
    assert (vpmaddubsw(g[:, :2], g[:, 2:]) == exact).all()
    # with 8-bit activations the same instruction would clip: 255 * -128 * 2 = -65280
    assert vpmaddubsw(np.array([[255, 255]]), np.array([[-128, -128]]))[0] == -32768 != 255 * -128 * 2


# -- the model ------------------------------------------------------------------------------------

def test_what_cannot_be_quantized():
    with pytest.raises(ValueError, match="training mode"):
        quantize.quantize_dynamic(nn.Sequential(nn.Linear(4, 3), rng=0))
    bad = {
        "BatchNorm first": [nn.BatchNorm1d(4), nn.Linear(4, 3)],
        "BatchNorm after an activation": [nn.Linear(4, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3)],
        "two BatchNorms": [nn.Linear(4, 5), nn.BatchNorm1d(5), nn.BatchNorm1d(5), nn.Linear(5, 3)],
        "activation first": [nn.ReLU(), nn.Linear(4, 3)],
        "two activations": [nn.Linear(4, 5), nn.ReLU(), nn.Tanh(), nn.Linear(5, 3)],
        "two activations at the end": [nn.Linear(4, 3), nn.Sigmoid(), nn.ReLU()],
        "Dropout then activation first": [nn.Dropout(0.5), nn.Tanh(), nn.Linear(4, 3)],
    }
    for what, layers in bad.items():
        model = nn.Sequential(*layers, in_features=4, rng=0).eval()
        with pytest.raises(ValueError):
            quantize.quantize_dynamic(model)
            pytest.fail(what)
    only_norm = nn.Sequential(nn.BatchNorm1d(4), rng=0).eval()
    with pytest.raises(ValueError):
        quantize.quantize_dynamic(only_norm)
    no_stats = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), rng=0).eval()
    with pytest.raises(ValueError, match="running statistics"):
        quantize.quantize_dynamic(no_stats)
    nan_w = build([4, 3], [], seed=1)
    sd = nan_w.state_dict()
    sd["0.weight"][2, 1] = np.nan
    nan_w.load_state_dict(sd)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize.quantize_dynamic(nan_w)
    inf_b = build([4, 3], [], seed=1)
    sd = inf_b.state_dict()
    sd["0.bias"][0] = np.inf
    inf_b.load_state_dict(sd)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize.quantize_dynamic(inf_b)
    ok = build([4, 3], [], seed=1)
    with pytest.raises(TypeError):
        quantize.quantize_dynamic(ok.state_dict())
    with pytest.raises(TypeError, match="per_channel"):
        quantize.quantize_dynamic(ok, per_channel=1)
    with pytest.raises(TypeError, match="reduce_range"):
        quantize.quantize_dynamic(ok, reduce_range="yes")


def test_a_float16_model_is_refused():
    """fastwb.nn.Sequential cannot hold float16 at all (a TypeError at
    construction), so a float16 model reaches quantize_dynamic only as an object
    claiming that dtype: a ValueError naming it."""
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Sequential(nn.Linear(4, 3), dtype="float16", rng=0)
    model = build([4, 3], [], seed=1)
    model.dtype = np.dtype(np.float16)
    with pytest.raises(ValueError, match="float16"):
        quantize.quantize_dynamic(model)


def test_activations_identity_and_dropout_are_fused_or_ignored():
    plain = build([20, 12, 4], ["relu"], seed=2)
    sd = plain.state_dict()
    X = inputs("normal", 9, 20)
    want = quantize.quantize_dynamic(plain).logits(X)
    variants = [
        [nn.Dropout(0.3), nn.Linear(20, 12), nn.Dropout(0.2), nn.ReLU(), nn.Dropout(0.1), nn.Linear(12, 4)],
        [nn.Linear(20, 12), nn.Identity(), nn.ReLU(), nn.Linear(12, 4), nn.Identity()],
        [nn.Linear(20, 12), nn.ReLU(), nn.Identity(), nn.Linear(12, 4), nn.Dropout(0.5)],
    ]
    for layers in variants:
        model = nn.Sequential(*layers, rng=0)
        names = [f"{i}.{p}" for i, la in enumerate(layers) if isinstance(la, nn.Linear) for p in ("weight", "bias")]
        model.load_state_dict(dict(zip(names, (sd["0.weight"], sd["0.bias"], sd["2.weight"], sd["2.bias"]))))
        q = quantize.quantize_dynamic(model.eval())
        assert [a for a, _ in q.activations] == ["relu", "identity"]
        same(q.logits(X), want, repr(layers))
        same(q.logits(X), twin.quantize_dynamic(model).logits(X))


def test_batchnorm_after_a_linear_is_folded():
    from test_deploy import bn_net
    X = inputs("normal", 40, 12, seed=3)
    for dtype in ("float32", "float64"):
        for affine in (True, False):
            model = bn_net(dtype, affine=affine, act=lambda: nn.LeakyReLU(0.1)).eval()
            fused = model.fuse()
            for per_channel in (True, False):
                q = quantize.quantize_dynamic(model, per_channel)
                assert len(q) == 3
                want = twin.quantize_dynamic(fused, per_channel).logits(X)
                same(q.logits(X), want, f"{dtype} affine={affine}")
                same(quantize.quantize_dynamic(fused, per_channel).logits(X), want)
                same(q.logits(X), twin.quantize_dynamic(model, per_channel).logits(X))
                drift = np.abs(q.logits(X) - model.logits(X.astype(dtype))).max()
                assert drift < 0.05 * np.abs(model.logits(X.astype(dtype))).max()
    # the source model is unchanged and still in eval mode
    assert model.training is False and len(model.layers) == 8


def test_fit_is_refused_and_inputs_are_checked():
    model = build([10, 6, 3], ["relu"], seed=0)
    q = quantize.quantize_dynamic(model)
    X = inputs("normal", 8, 10)
    with pytest.raises(ValueError, match="cannot be trained"):
        q.fit(X, np.zeros(8, np.int64))
    with pytest.raises(TypeError, match="float32"):
        q.logits(X.astype(np.float64))
    for call in (q.predict, q.predict_proba):
        with pytest.raises(TypeError, match="float32"):
            call(X.astype(np.float64))
    with pytest.raises(ValueError, match=r"\(n, 10\)"):
        q.logits(X[:, :9])
    with pytest.raises(ValueError):
        q.logits(X[0])
    with pytest.raises(ValueError):
        q.logits(X[None])
    with pytest.raises(ValueError):
        q.predict(np.zeros((3, 11), F32))
    with pytest.raises(ValueError, match="no rows"):
        q.evaluate(X[:0], np.zeros(0, np.int64))
    for b in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            q.logits(X, batch_size=b)
    for b in (1.5, "8", True):
        with pytest.raises(TypeError, match="batch_size"):
            q.logits(X, batch_size=b)
    # empty input: no rows out; strided and Fortran-ordered arrays are taken
    assert q.logits(X[:0]).shape == (0, 3)
    big = np.zeros((8, 20), F32)
    big[:, ::2] = X
    same(q.logits(big[:, ::2]), q.logits(X))
    Xf = np.asfortranarray(X)
    same(q.logits(Xf), q.logits(X))
    unaligned = np.zeros(X.size * 4 + 1, np.uint8)[1:].view(F32).reshape(X.shape)
    unaligned[...] = X
    assert not unaligned.flags.aligned
    same(q.logits(unaligned), q.logits(X))


def test_batch_size_chunks_are_separate_batches():
    model = build([30, 16, 5], ["relu"], seed=7)
    q, t = both(model)
    X = inputs("mixed", 100, 30, seed=4)
    for b in (1, 7, 64, 99, 100, 1000):
        want = np.concatenate([t.logits(X[s:s + b]) for s in range(0, 100, b)])
        per_chunk = np.concatenate([q.logits(X[s:s + b]) for s in range(0, 100, b)])
        same(q.logits(X, batch_size=b), want, f"batch_size {b}")
        same(per_chunk, want)
    assert not np.array_equal(q.logits(X, batch_size=1), q.logits(X))      # the scales do depend on the batch


def test_save_and_load_round_trip(tmp_path):
    model = build([33, 17, 5], ["leaky_relu"], seed=5)
    model.compile(loss="mse")
    X = inputs("normal", 20, 33)
    for per_channel, reduce_range in ((True, False), (False, True)):
        q = quantize.quantize_dynamic(model, per_channel, reduce_range)
        path = tmp_path / f"m{per_channel}.int8.fwb"
        q.save(str(path))
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"m{per_channel}")) == [path.name]
        r = quantize.load(str(path))
        assert r.spec() == q.spec()
        assert r.per_channel == per_channel and r.reduce_range == bool(reduce_range) and r.loss.name == "mse"
        assert (r.in_features, r.out_features, len(r), r.nbytes) == (33, 5, 2, q.nbytes)
        for i in range(2):
            same(r.weight(i), q.weight(i))
            same(r.scale(i), q.scale(i))
            same(r.bias(i), q.bias(i))
        for p in PATHS:
            r.path = p
            same(r.logits(X), q.logits(X), p)
        same(r.predict(X), q.predict(X))
    # a model without biases
    nb = quantize.quantize_dynamic(build([6, 4], [], seed=1, bias=False))
    nb.save(tmp_path / "nb.fwb")
    r = quantize.load(tmp_path / "nb.fwb")
    assert r.bias(0) is None
    same(r.logits(X[:, :6].copy()), nb.logits(X[:, :6].copy()))


def _rewrite(src, dst, **changes):
    with np.load(src) as z:
        fields = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            fields.pop(k.replace("__", "."))
        else:
            fields[k.replace("__", ".")] = v
    with open(dst, "wb") as fh:
        np.savez(fh, **fields)
    return dst


def test_load_refuses_damaged_and_foreign_files(tmp_path):
    import json
    model = build([12, 8, 3], ["relu"], seed=1)
    q = quantize.quantize_dynamic(model)
    good = tmp_path / "q.fwb"
    q.save(good)
    data = good.read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.fwb").write_bytes(data[:n])
        with pytest.raises(ValueError):
            quantize.load(tmp_path / "cut.fwb")
    (tmp_path / "junk.fwb").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError):
        quantize.load(tmp_path / "junk.fwb")
    (tmp_path / "text.fwb").write_text("not a model\n")
    with pytest.raises(ValueError):
        quantize.load(tmp_path / "text.fwb")
    model.save(tmp_path / "float.fwb")
    with pytest.raises(ValueError, match="not a quantized"):
        quantize.load(tmp_path / "float.fwb")
    spec = q.spec()

    def layers(first, second):      # the spec with changes to its two layers
        changed = [{**spec["layers"][0], **first}, {**spec["layers"][1], **second}]
        return {"spec": np.array(json.dumps({**spec, "layers": changed}))}

    hostile = {
        "format": {"quantized": np.array("fastwb-int8-99")},
        "scale <= 0": {"0__scale": np.zeros(8, F32)},
        "NaN scale": {"0__scale": np.full(8, np.nan, F32)},
        "weight dtype": {"0__weight": q.weight(0).astype(np.int16)},
        "weight shape": {"0__weight": q.weight(0)[:5]},
        "missing weight": {"1__weight": None},
        "missing bias": {"1__bias": None},
        "missing spec": {"spec": None},
        "bad json": {"spec": np.array("{")},
        "too wide": layers({"in_features": 70000}, {}),
        "sizes do not chain": layers({}, {"in_features": 9}),
        "unknown activation": layers({"activation": "gelu"}, {}),
        "NaN slope": layers({"alpha": float("nan")}, {}),
        "huge size": layers({"out_features": 2 ** 40}, {}),
        "no layers": {"spec": np.array(json.dumps({**spec, "layers": []}))},
    }
    for what, changes in hostile.items():
        f = _rewrite(good, tmp_path / "hostile.fwb", **changes)
        with pytest.raises(ValueError):
            quantize.load(f)
            pytest.fail(what)


def test_fastwb_nn_load_does_not_take_a_quantized_file(tmp_path):
    q = quantize.quantize_dynamic(build([12, 8, 3], ["relu"], seed=1))
    q.save(tmp_path / "q.fwb")
    with pytest.raises(ValueError, match="read it with fastwb.quantize.load"):
        nn.load(tmp_path / "q.fwb")


@pytest.mark.parametrize("sizes", [[784, 256, 10], [784, 512, 512, 10]], ids=["784-256-10", "784-512-512-10"])
def test_nbytes_is_about_a_quarter_of_float32(sizes):
    layers = [layer for a, b in zip(sizes, sizes[1:]) for layer in (nn.Linear(a, b), nn.ReLU())]
    model = nn.Sequential(*layers[:-1], rng=0).eval()
    for per_channel in (True, False):
        q = quantize.quantize_dynamic(model, per_channel)
        assert model.params.nbytes / q.nbytes >= 3.9, (model.params.nbytes, q.nbytes)
        assert q.nbytes >= sum(a * b for a, b in zip(sizes, sizes[1:]))      # one byte a weight, at least
        assert repr(q).startswith("QuantizedModel(" + "-".join(map(str, sizes)))


@pytest.mark.parametrize("loss", ["cross_entropy", "bce_with_logits", "mse"])
def test_predict_proba_and_evaluate_agree_with_logits(loss):
    model = build([20, 16, 4], ["relu"], seed=3, wscale=0.6)
    model.compile(loss=loss)
    q = quantize.quantize_dynamic(model)
    X = inputs("normal", 300, 20, seed=9)
    z = q.logits(X)
    proba = q.predict_proba(X)
    labels = q.predict(X)
    if loss == "cross_entropy":
        e = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose(proba, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
        same(labels, z.argmax(axis=1))
        y = np.random.default_rng(1).integers(0, 4, 300)
        y[:150] = labels[:150]
        loss_value, acc = q.evaluate(X, y)
        assert acc == pytest.approx(np.mean(labels == y))
        assert loss_value == pytest.approx(softmax_cross_entropy(z.astype(np.float64), y)[0], rel=1e-5)
    elif loss == "bce_with_logits":
        np.testing.assert_allclose(proba, 1 / (1 + np.exp(-z.astype(np.float64))), rtol=1e-5, atol=1e-7)
        same(labels, (z > 0).astype(np.int64))
        y = (np.random.default_rng(1).random((300, 4)) < 0.5).astype(F32)
        loss_value, acc = q.evaluate(X, y)
        assert acc == pytest.approx(np.mean((z > 0) == (y > 0.5)))
        zz = z.astype(np.float64)
        bce = np.mean(np.maximum(zz, 0) - zz * y + np.log1p(np.exp(-np.abs(zz))))
        assert loss_value == pytest.approx(bce, rel=1e-5)
    else:
        same(proba, z)
        same(labels, z)
        y = np.random.default_rng(1).standard_normal((300, 4)).astype(F32)
        loss_value, r2 = q.evaluate(X, y)
        zz = z.astype(np.float64)
        assert loss_value == pytest.approx(np.mean((zz - y) ** 2), rel=1e-5)
        assert r2 == pytest.approx(np.mean(1 - ((y - zz) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)), rel=1e-4)
    # chunked calls agree with the chunked logits
    same(q.predict(X, batch_size=32), (q.logits(X, 32).argmax(1) if loss == "cross_entropy" else
                                       (q.logits(X, 32) > 0).astype(np.int64) if loss == "bce_with_logits" else
                                       q.logits(X, 32)))


def test_kernel_paths_are_checked(monkeypatch):
    q = quantize.quantize_dynamic(build([8, 3], [], seed=0))
    assert q.path == quantize.default_path() == PATHS[-1]
    assert PATHS[0] == "scalar" and set(PATHS) <= set(_quant.PATHS)
    for p in PATHS:
        q.path = p
        assert q.path == p
    for bad in ("nonsense", "", "AVX2", None, 1):
        with pytest.raises(ValueError):
            q.path = bad
    assert q.path == PATHS[-1]
    missing = [p for p in _quant.PATHS if p not in PATHS]
    for p in missing:
        with pytest.raises(ValueError, match="cannot run"):
            q.path = p
    monkeypatch.setenv("FASTWB_INT8_PATH", "scalar")
    assert quantize.default_path() == "scalar"
    assert quantize.quantize_dynamic(build([8, 3], [], seed=0)).path == "scalar"
    monkeypatch.setenv("FASTWB_INT8_PATH", "nonsense")
    with pytest.raises(ValueError, match="unknown"):
        quantize.default_path()
    if missing:
        monkeypatch.setenv("FASTWB_INT8_PATH", missing[0])
        with pytest.raises(ValueError, match="cannot run"):
            quantize.quantize_dynamic(build([8, 3], [], seed=0))
    else:
        pytest.skip("this CPU runs every int8 path: no unavailable one to refuse")


def test_inference_from_many_python_threads_is_safe():
    model = build([64, 48, 10], ["relu"], seed=1)
    q = quantize.quantize_dynamic(model)
    X = inputs("mixed", 200, 64, seed=2)
    cases = [(200, 1024), (200, 64), (37, 1024), (1, 1024), (130, 7)]
    expected = {c: q.logits(X[:c[0]], c[1]) for c in cases}
    barrier, errors, wrong = threading.Barrier(4), [], []

    def work(i):
        try:
            barrier.wait(30)
            for r in range(25):
                n, b = cases[(i + r) % len(cases)]
                if not np.array_equal(q.logits(X[:n], b), expected[n, b], equal_nan=True):
                    wrong.append((i, r, n, b))
        except BaseException as e:      # noqa: BLE001 (re-raised below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    assert wrong == []


def test_workspaces_of_many_batch_sizes_are_not_all_kept():
    """A server feeding batches of every size from 1 to 400 must not end up
    holding a workspace for each: at most as much as 16 of the largest, the
    bound of fastwb.nn.Sequential's inference caches."""
    import gc
    import tracemalloc
    model = build([256, 64, 10], ["relu"], seed=0)
    X = inputs("normal", 400, 256)
    tracemalloc.start()
    try:
        q = quantize.quantize_dynamic(model)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        q.logits(X)
        one = tracemalloc.get_traced_memory()[1] - base          # what one 400-row pass needs at most
        for n in range(1, 401):
            q.logits(X[:n])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert one > 0
    assert held <= 16 * one, f"{held / 1e6:.1f} MB held after batches of 1..400 rows, {one / 1e6:.2f} MB for one pass"


# -- PyTorch ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_close_to_pytorch_quantize_dynamic(per_channel):
    torch = pytest.importorskip("torch")
    tq_mod = torch.ao.quantization
    model = build([784, 256, 10], ["relu"], seed=11, wscale=0.06)
    X = inputs("normal", 128, 784, seed=3)
    tm = model.to_torch().eval()
    qconfig = {torch.nn.Linear: tq_mod.per_channel_dynamic_qconfig} if per_channel else {torch.nn.Linear}
    tq = tq_mod.quantize_dynamic(tm, qconfig, dtype=torch.qint8)
    with torch.no_grad():
        t_int8 = tq(torch.from_numpy(X)).numpy()
    fl = model.logits(X)
    q = quantize.quantize_dynamic(model, per_channel=per_channel, reduce_range=True)
    ours = q.logits(X)
    diff, ours_drift, torch_drift = (np.abs(ours - t_int8).max(), np.abs(ours - fl).max(),
                                     np.abs(t_int8 - fl).max())
    print(f"\nper_channel={per_channel}: max|logit| {np.abs(fl).max():.3f}, fastwb drift {ours_drift:.5f}, "
          f"torch drift {torch_drift:.5f}, max|fastwb - torch| {diff:.3g}, "
          f"{np.mean(ours != t_int8):.1%} of the logits differ")
    assert np.abs(fl).max() > 2
    assert diff < 0.02 and diff < 0.1 * max(ours_drift, torch_drift)


# -- the real MNIST -----------------------------------------------------------------------------

def test_mnist_accuracy_survives_quantization(mnist_folder):
    from fastwb import datasets
    X_train, y_train, X_test, y_test = datasets.load("mnist", mnist_folder)
    lines = []
    for sizes, epochs in (([784, 256, 10], 2), ([784, 512, 512, 10], 1)):
        model = fastwb.MLP(sizes, rng=0)
        model.fit(X_train, y_train, epochs=epochs, batch_size=128, verbose=False, rng=0)
        model.eval()
        fl = model.logits(X_test)
        acc = np.mean(fl.argmax(1) == y_test)
        assert acc > 0.95
        for per_channel in (True, False):
            for reduce_range in (False, True):
                q = quantize.quantize_dynamic(model, per_channel, reduce_range)
                ql = q.logits(X_test)
                qacc = np.mean(ql.argmax(1) == y_test)
                drift = np.abs(ql - fl).max()
                lines.append(f"{'-'.join(map(str, sizes))} {'channel' if per_channel else 'tensor '} "
                             f"{'u7' if reduce_range else 'u8'}: float {acc:.4f} int8 {qacc:.4f} "
                             f"change {100 * (qacc - acc):+.2f} points, largest logit drift {drift:.4f}")
                assert qacc >= acc - 0.003, lines[-1]
                assert q.evaluate(X_test, y_test)[1] == pytest.approx(qacc)
    print("\n" + "\n".join(lines))


def test_reduce_range_none_chooses_by_kernel_path(monkeypatch):
    """None means 7-bit activations on the avx2 path (where exact 8-bit products
    cost more), 8-bit on every other path; the choice is stored in the model."""
    assert [quantize.auto_reduce_range(p) for p in quantize.available_paths()] == \
        [p == "avx2" for p in quantize.available_paths()]
    with pytest.raises(ValueError, match="unknown int8 kernel path"):
        quantize.auto_reduce_range("sse9")
    model = build([9, 7, 3], ["relu"], seed=4)
    for path in quantize.available_paths():
        monkeypatch.setenv("FASTWB_INT8_PATH", path)
        q = quantize.quantize_dynamic(model)
        assert q.path == path and q.reduce_range == (path == "avx2")
        assert twin.quantize_dynamic(model).reduce_range == q.reduce_range
        X = inputs("normal", 5, 9)
        assert np.array_equal(q.logits(X), twin.quantize_dynamic(model).logits(X))
