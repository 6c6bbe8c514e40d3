"""fastwb.optim against its NumPy twin (and torch.optim when installed)."""

import numpy as np
import pytest
from conftest import THREADS, close

import fastwb.reference.optim as Ropt
from fastwb import _optim, optim, regularization
from hypothesis import given, settings
from hypothesis import strategies as st

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001)),
    ("Momentum", dict(lr=0.05, momentum=0.9)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict(lr=1e-3)),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3, centered=True)),
    ("Adam", dict(lr=1e-2, l1=1e-3)),
    ("SGD", dict(lr=0.05, momentum=0.9, l1=1e-3)),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in CONFIGS]
SHAPES = [(7, 13), (1,), (33,), (4, 5, 3)]


def _problem(rng, dtype, steps=100):
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return params, grads


def _run(cls, params, grads, **kw):
    params = [p.copy() for p in params]
    opt = cls(params, **kw)
    for g in grads:
        opt.step(g)
    return params, opt


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_100_steps_match_twin(name, kw, dtype, rng):
    params, grads = _problem(rng, dtype)
    got, opt = _run(getattr(optim, name), params, grads, **kw)
    ref, twin = _run(getattr(Ropt, name), params, grads, **kw)
    for a, e in zip(got, ref):
        assert a.dtype == dtype
        # float32 trajectories: 100 steps of rounding differences (PyTorch's
        # lerp form of the first moment vs the textbook form) of a few ulp each
        close(a, e, dtype, ulps=256, scale=True)
    for s, t in zip(opt.state, twin.state):
        assert set(s) == set(t)
        for k in s:
            close(s[k], t[k], dtype, ulps=256, scale=True)


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_masked_entries_stay_zero_and_state_frozen(name, kw, rng):
    params, grads = _problem(rng, np.float64, steps=20)
    masks = [rng.random(s) > 0.4 for s in SHAPES]
    got = [p.copy() for p in params]
    opt = getattr(optim, name)(got, masks=masks, **kw)
    twin_params = [p.copy() for p in params]
    twin = getattr(Ropt, name)(twin_params, masks=masks, **kw)
    for g in grads:
        opt.step(g)
        twin.step(g)
        for p, m in zip(got, masks):
            assert (p[~m] == 0).all() and not np.signbit(p[~m]).any()
    for s, m in zip(opt.state, masks):
        for buf in s.values():
            assert (buf[~m] == 0).all()
    for a, e in zip(got, twin_params):
        close(a, e, np.float64, scale=True)


def test_state_dict_round_trip_is_exact(rng):
    params, grads = _problem(rng, np.float32, steps=15)
    a = [p.copy() for p in params]
    opt = optim.Adam(a, lr=1e-2, amsgrad=True, masks=[None, None, rng.random(33) > 0.5, None])
    for g in grads[:10]:
        opt.step(g)
    saved = opt.state_dict()
    b = [p.copy() for p in a]
    for g in grads[10:]:
        opt.step(g)
    opt2 = optim.Adam(b, lr=0.5)
    opt2.load_state_dict(saved)
    for g in grads[10:]:
        opt2.step(g)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert opt2.step_count == 15 and opt2.hyper["lr"] == 1e-2


def test_state_dict_rejects_other_shapes_and_types(rng):
    opt = optim.Adam([np.zeros((3, 4), np.float32)])
    opt.step([np.ones((3, 4), np.float32)])
    saved = opt.state_dict()
    with pytest.raises(ValueError, match=r"params\[0\] is float32\(4, 3\)"):
        optim.Adam([np.zeros((4, 3), np.float32)]).load_state_dict(saved)
    with pytest.raises(ValueError, match="float64"):
        optim.Adam([np.zeros((3, 4))]).load_state_dict(saved)
    with pytest.raises(ValueError, match="state is for optimizer 'Adam', not 'SGD'"):
        optim.SGD([np.zeros((3, 4), np.float32)]).load_state_dict(saved)
    with pytest.raises(ValueError, match="a list of 2 dicts"):
        optim.Adam([np.zeros((3, 4), np.float32) for _ in range(2)]).load_state_dict(saved)


@pytest.mark.parametrize("ranges", [[[0, 10007]], [[0, 3001], [3500, 7001], [7001, 10007]], [[9, 10]], []])
@pytest.mark.parametrize("kernel", ["sgd", "momentum", "adam", "rmsprop"])
def test_kernels_thread_independent(kernel, ranges, dtype, rng):
    """Bitwise the same results on any thread count, over whole arrays and over
    ranges with gaps (frozen parameters), which stay untouched."""
    n = 10007
    mask = (rng.random(n) > 0.3).astype(np.uint8)
    seg = np.array(ranges, np.intp).reshape(-1, 2)
    outside = np.ones(n, bool)
    for lo, hi in ranges:
        outside[lo:hi] = False

    def run(t):
        r = np.random.default_rng(5)
        p, g, a, b, c = (r.standard_normal(n).astype(dtype) for _ in range(5))
        b = np.abs(b)
        if kernel == "sgd":
            _optim.sgd(p, g, a, mask, seg, 0.1, 0.9, 0.1, 0.01, 0.001, True, False, t)
        elif kernel == "momentum":
            _optim.momentum(p, g, a, mask, seg, 0.1, 0.9, 0.01, 0.001, t)
        elif kernel == "adam":
            _optim.adam(p, g, a, b, np.abs(c), mask, seg, 0.9, 0.999, 1e-8, 0.01, 0.0, 0.999, 0.01, 0.3, t)
        else:
            _optim.rmsprop(p, g, b, a * 0.01, c, mask, seg, 0.01, 0.99, 1e-8, 0.0, 0.0, 0.9, t)
        return p, a, b, c

    first = run(1)
    r = np.random.default_rng(5)
    before = [r.standard_normal(n).astype(dtype) for _ in range(5)]
    for x, x0 in zip(first, (before[0], before[2], np.abs(before[3]), before[4])):
        np.testing.assert_array_equal(x[outside], x0[outside])
    inside = ~outside & (mask == 1)
    assert (first[0][inside] != before[0][inside]).all()
    for t in THREADS[1:]:
        for x, y in zip(first, run(t)):
            np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


def test_empty_and_zero_size_params():
    p = [np.zeros((0, 3), np.float32), np.ones(2, np.float32)]
    opt = optim.Adam(p)
    opt.step([np.zeros((0, 3), np.float32), np.ones(2, np.float32)])
    assert p[1].shape == (2,) and (p[1] < 1).all()


def test_non_contiguous_gradient_is_copied(rng):
    p = np.zeros((4, 5))
    big = rng.standard_normal((8, 10))
    g = big[::2, ::2]
    optim.SGD([p], lr=1.0).step([g])
    np.testing.assert_array_equal(p, -g)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: optim.SGD([]), ValueError, "params is empty"),
    (lambda: optim.SGD([np.zeros(3, np.int64)]), TypeError, "float32 or float64"),
    (lambda: optim.SGD([np.zeros((3, 4))[:, ::2]]), ValueError, "C-contiguous"),
    (lambda: optim.SGD([np.zeros(3)], lr=-1), ValueError, "lr must be >= 0"),
    (lambda: optim.SGD([np.zeros(3)], nesterov=True), ValueError, "nesterov"),
    (lambda: optim.Adam([np.zeros(3)], betas=(1.0, 0.9)), ValueError, "betas"),
    (lambda: optim.Adam([np.zeros(3)]).step([np.zeros(4)]), ValueError, r"grads\[0\] has shape \(4,\).*\(3,\)"),
    (lambda: optim.Adam([np.zeros(3)]).step([np.zeros(3, np.float32)]), TypeError, "dtype float32"),
    (lambda: optim.Adam([np.zeros(3)]).step([np.zeros(3), np.zeros(3)]), ValueError, "2 gradients for 1"),
    (lambda: optim.Adam([np.zeros(3)], masks=[np.ones(4, bool)]), ValueError, r"masks\[0\] has shape"),
    (lambda: optim.Adam([np.zeros(3)], masks=[np.ones(3)]), TypeError, "boolean keep-mask"),
    (lambda: optim.Adam([np.zeros(3)]).rebind([np.zeros(4)]), ValueError, "one optimizer per layer"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# against torch.optim itself
# ---------------------------------------------------------------------------

TORCH_CONFIGS = [c for c in CONFIGS if c[0] != "Momentum" and "l1" not in c[1]]


@pytest.mark.parametrize("name,kw", TORCH_CONFIGS, ids=[IDS[CONFIGS.index(c)] for c in TORCH_CONFIGS])
def test_100_steps_match_torch(name, kw, dtype, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: pip install torch==2.13.0")
    params, grads = _problem(rng, dtype)
    got, _ = _run(getattr(optim, name), params, grads, **kw)
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    topt = getattr(torch.optim, name)(tparams, foreach=False, **kw)
    for step in grads:
        for tp, g in zip(tparams, step):
            tp.grad = torch.tensor(g)
        topt.step()
    for a, tp in zip(got, tparams):
        close(a, tp.detach().numpy(), dtype, ulps=256, scale=True)


# ---------------------------------------------------------------------------
# reliability: coefficients, NaN through L1, validation of loaded state
# ---------------------------------------------------------------------------

def test_float32_coefficients_are_rounded_once_from_double():
    # first Adam step from zero state: v = (1 - beta2) g^2 with 1 - beta2 rounded
    # once to float32 (0.001f), not computed from the rounded 0.999f (0.00099998713)
    g = np.linspace(-3, 3, 64, dtype=np.float32)
    opt = optim.Adam([np.zeros(64, np.float32)])
    opt.step([g])
    np.testing.assert_array_equal(opt.state[0]["exp_avg_sq"], (np.float32(1 - 0.999) * g) * g)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], np.float32(1 - 0.9) * g)
    rms = optim.RMSprop([np.zeros(64, np.float32)], alpha=0.99)
    rms.step([g])
    np.testing.assert_array_equal(rms.state[0]["square_avg"], (np.float32(1 - 0.99) * g) * g)
    sgd = optim.SGD([np.zeros(64, np.float32)], lr=0.1, momentum=0.9, dampening=0.7)
    sgd.step([g])
    sgd.step([g])
    np.testing.assert_array_equal(sgd.state[0]["momentum_buffer"], g * np.float32(0.9) + np.float32(1 - 0.7) * g)


def _ulps(a, ref):
    return np.abs(a.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32))


@pytest.mark.parametrize("name,kw,state", [("Adam", {}, "exp_avg_sq"), ("AdamW", {}, "exp_avg_sq"),
                                           ("RMSprop", {}, "square_avg")])
def test_float32_1000_steps_match_torch_to_a_few_ulps(name, kw, state):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: pip install torch==2.13.0")
    rng = np.random.default_rng(7)
    p = rng.standard_normal(1000).astype(np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    mine = getattr(optim, name)([p], **kw)
    theirs = getattr(torch.optim, name)([tp], foreach=False, **kw)
    for _ in range(1000):
        g = rng.standard_normal(1000).astype(np.float32)
        mine.step([g])
        tp.grad = torch.tensor(g)
        theirs.step()
    # second moments: no cancellation, so a few ulps everywhere (PyTorch's
    # vectorised kernels contract a*b+c into FMAs, fastwb does not); the
    # parameters: most entries equal, the rest a few ulps off
    v = _ulps(mine.state[0][state], theirs.state[tp][state].numpy())
    assert v.max() <= 4, v.max()
    u = _ulps(p, tp.detach().numpy())
    assert np.median(u) <= 2 and np.percentile(u, 99) <= 64, (np.median(u), np.percentile(u, 99))


@pytest.mark.parametrize("name,kw", [("SGD", {"lr": 1.0}), ("Momentum", {}), ("Adam", {}), ("AdamW", {}),
                                     ("RMSprop", {})])
def test_l1_term_propagates_nan_like_numpy_sign(name, kw):
    p = np.array([np.nan, 1.0, -2.0])
    getattr(optim, name)([p], l1=0.5, **kw).step([np.zeros(3)])
    assert np.isnan(p[0]) and np.isfinite(p[1:]).all()
    loss, grad = regularization.penalty(np.array([np.nan, 1.0, -2.0]), 1.0, "l1")
    np.testing.assert_array_equal(grad, np.sign([np.nan, 1.0, -2.0]))
    assert np.isnan(loss)


def test_mask_on_a_zero_dimensional_parameter():
    p = np.array(2.0)
    opt = optim.SGD([p], lr=0.5, masks=[np.array(False)])
    opt.step([np.array(1.0)])
    assert p == 0.0
    q = np.array(2.0)
    optim.Adam([q], masks=[np.array(True)]).step([np.array(1.0)])
    assert q < 2.0


BAD_VALUES = [float("nan"), float("inf"), -5.0, "x", None]
CONSTRUCTOR_ARGS = {
    "SGD": ["lr", "momentum", "weight_decay", "l1", "dampening"],
    "Momentum": ["lr", "momentum", "weight_decay", "l1"],
    "Adam": ["lr", "eps", "weight_decay", "l1"],
    "AdamW": ["lr", "eps", "weight_decay", "l1"],
    "RMSprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "l1"],
}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(CONSTRUCTOR_ARGS)), data=st.data(), value=st.sampled_from(BAD_VALUES))
def test_bad_hyperparameters_rejected_by_constructor_and_load_state_dict(name, data, value):
    arg = data.draw(st.sampled_from(CONSTRUCTOR_ARGS[name]))
    if arg == "dampening" and value == -5.0:
        value = float("nan")                # any finite dampening is allowed, as in PyTorch
    cls = getattr(optim, name)
    with pytest.raises((ValueError, TypeError)) as ctor:
        cls([np.zeros(3)], **{arg: value})
    assert arg in str(ctor.value)
    p = np.ones(3)
    opt = cls([p], **({"lr": 0.1} if name == "SGD" else {}))
    opt.step([np.ones(3)])
    saved = opt.state_dict()
    bad = dict(saved, hyper=dict(saved["hyper"], **{arg: value}))
    before = p.copy()
    with pytest.raises(type(ctor.value)) as loaded:
        opt.load_state_dict(bad)
    assert arg in str(loaded.value)
    assert opt.hyper == saved["hyper"] and opt.step_count == 1       # nothing changed
    opt.step([np.ones(3)])
    assert np.isfinite(p).all() and not np.array_equal(p, before)


@pytest.mark.parametrize("change,exc,match", [
    (lambda d: d.pop("step"), ValueError, "missing step"),
    (lambda d: d.pop("hyper"), ValueError, "missing hyper"),
    (lambda d: d.update(step=-1), ValueError, "step must be >= 0"),
    (lambda d: d.update(step=1.5), TypeError, "step must be an integer"),
    (lambda d: d["hyper"].pop("lr"), ValueError, "missing lr"),
    (lambda d: d["hyper"].update(foo=1), ValueError, "unknown foo"),
    (lambda d: d["hyper"].update(betas=(0.9, 1.0)), ValueError, "betas"),
    (lambda d: d["hyper"].update(amsgrad="yes"), TypeError, "amsgrad"),
    (lambda d: d["state"][0].pop("exp_avg"), ValueError, "expected"),
    (lambda d: d.update(state="nope"), ValueError, "list of 1 dicts"),
    (lambda d: d.update(masks=[np.ones(2, bool)]), ValueError, "masks"),
    (lambda d: d.update(masks=[np.ones(3)]), TypeError, "boolean"),
])
def test_load_state_dict_validates_everything_before_changing_anything(change, exc, match):
    opt = optim.Adam([np.ones(3)], lr=0.1)
    opt.step([np.ones(3)])
    saved = opt.state_dict()
    change(saved)
    fresh = optim.Adam([np.ones(3)], lr=0.2)
    with pytest.raises(exc, match=match):
        fresh.load_state_dict(saved)
    assert fresh.hyper["lr"] == 0.2 and fresh.step_count == 0


def test_parameters_that_overlap_each_other_are_rejected():
    buf = np.zeros(10)
    with pytest.raises(ValueError, match="share memory"):
        optim.SGD([buf[:6], buf[4:]])
    p = np.zeros(3)
    with pytest.raises(ValueError, match="share memory"):
        optim.Adam([p, p])


# ---------------------------------------------------------------------------
# subnormal numbers: optimizer state is stored flushed to zero
# ---------------------------------------------------------------------------

def _subnormal(a):
    a = np.asarray(a)
    return np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny))


@pytest.mark.parametrize("name,kw", [("SGD", {"lr": 0.1, "momentum": 0.9}), ("Momentum", {}), ("Adam", {}),
                                     ("AdamW", {}), ("RMSprop", {"centered": True, "momentum": 0.5})])
def test_state_never_holds_subnormal_numbers(name, kw, dtype):
    # a tiny gradient once, then exactly 0 (a dead unit): the state decays geometrically
    tiny = np.finfo(dtype).tiny
    p = np.ones(64, dtype)
    opt = getattr(optim, name)([p], **kw)
    opt.step([np.full(64, tiny * 1e6, dtype)])
    zero = np.zeros(64, dtype)
    for _ in range(2000):
        opt.step([zero])
        for buf in opt.state[0].values():
            assert _subnormal(buf) == 0
    assert all(np.all(buf == 0) for buf in opt.state[0].values())     # decayed past the normal range: 0
    twin = getattr(Ropt, name)([np.ones(64, dtype)], **kw)
    twin.step([np.full(64, tiny * 1e6, dtype)])
    for _ in range(2000):
        twin.step([zero])
    for k, buf in opt.state[0].items():
        np.testing.assert_array_equal(buf, twin.state[0][k])


def test_nan_and_inf_in_state_are_kept():
    p = np.zeros(4, np.float32)
    opt = optim.Adam([p])
    opt.step([np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)])
    m = opt.state[0]["exp_avg"]
    assert np.isnan(m[0]) and m[1] == np.inf and m[2] == -np.inf and m[3] > 0


def test_subnormal_state_is_the_documented_difference_from_torch():
    """Equal to PyTorch's Adam to its FMA rounding where no subnormal occurs; where
    PyTorch's first moment has decayed into the subnormal range, fastwb's is 0
    and the parameters still agree."""
    torch = pytest.importorskip("torch", reason="PyTorch is optional: pip install torch==2.13.0")
    rng = np.random.default_rng(3)
    p = rng.standard_normal(256).astype(np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    mine, theirs = optim.Adam([p]), torch.optim.Adam([tp], foreach=False)
    g = rng.standard_normal(256).astype(np.float32) * 1e-3
    dead = np.arange(256) < 128
    for step in range(900):
        gs = np.where(dead, 0, g) if step else g           # half the entries: gradient 0 after step 1
        mine.step([gs])
        tp.grad = torch.tensor(gs)
        theirs.step()
    tm = theirs.state[tp]["exp_avg"].numpy()
    m = mine.state[0]["exp_avg"]
    sub = (tm != 0) & (np.abs(tm) < np.finfo(np.float32).tiny)
    assert sub.sum() > 50                                   # PyTorch keeps subnormal moments
    assert np.all(m[sub] == 0) and _subnormal(m) == 0       # fastwb stores them as 0
    # an update below 1e-30 changes nothing: the parameters agree as before (to PyTorch's FMA rounding)
    assert _ulps(p[dead], tp.detach().numpy()[dead]).max() <= 2


# -- groups and units (a model's named parameters in one flat buffer) ------------------------

@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "rmsprop"])
def test_units_equal_separate_optimizers(name, dtype, rng):
    """Units with their own groups and frozen flags update exactly as separate
    optimizers over the slices would, bit for bit; frozen slices and their state
    do not move, and a unit unfrozen later counts its own steps from 1 (PyTorch)."""
    cls = optim.by_name(name)
    extra = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    sizes = [7, 300, 5, 64]
    flat = rng.standard_normal(sum(sizes)).astype(dtype)
    grads = [rng.standard_normal(flat.size).astype(dtype) for _ in range(6)]
    opt = cls([flat], lr=0.01, weight_decay=0.001, **extra)
    opt.set_groups([{"lr": 0.05}, {"weight_decay": 0.1, "l1": 0.01}])
    opt.set_units(0, sizes, group=[1, 0, 2, 0], frozen=[False, True, False, False])
    bounds = np.cumsum([0] + sizes)
    pieces = [flat[bounds[j]:bounds[j + 1]].copy() for j in range(4)]
    hyper = [dict(lr=0.05, weight_decay=0.001), dict(lr=0.01, weight_decay=0.001),
             dict(lr=0.01, weight_decay=0.1, l1=0.01), dict(lr=0.01, weight_decay=0.001)]
    alone = [cls([pieces[j]], **hyper[j], **extra) for j in range(4)]
    frozen_state = {k: v.copy() for k, v in opt.state[0].items()}
    for step, g in enumerate(grads):
        if step == 3:       # unfreeze unit 1: from now on it is stepped, from its own step 1
            opt.set_units(0, sizes, group=[1, 0, 2, 0], frozen=[False] * 4, steps=opt.units[0].steps)
        opt.step([g])
        for j in range(4):
            if j != 1 or step >= 3:
                alone[j].step([g[bounds[j]:bounds[j + 1]]])
        if step < 3:
            for k, v in opt.state[0].items():
                np.testing.assert_array_equal(v[bounds[1]:bounds[2]], frozen_state[k][bounds[1]:bounds[2]])
    for j in range(4):
        np.testing.assert_array_equal(flat[bounds[j]:bounds[j + 1]], pieces[j])
    assert opt.units[0].steps.tolist() == [6, 3, 6, 6]


def test_units_state_dict_round_trip(rng):
    flat = rng.standard_normal(20).astype(np.float32)
    opt = optim.Adam([flat], lr=0.01)
    opt.set_groups([{"lr": 0.1}])
    opt.set_units(0, [5, 15], group=[1, 0], frozen=[True, False])
    opt.step([np.ones(20, np.float32)])
    saved = opt.state_dict()
    other = optim.Adam([flat.copy()])
    other.load_state_dict(saved)
    assert other.groups == [{"lr": 0.1}] and other.units[0].as_dict() == opt.units[0].as_dict()
    g = rng.standard_normal(20).astype(np.float32)
    opt.step([g])
    other.step([g])
    np.testing.assert_array_equal(other.params[0], flat)


def test_units_and_groups_errors():
    opt = optim.Adam([np.zeros(10, np.float32)])
    with pytest.raises(ValueError, match="add up to 9"):
        opt.set_units(0, [4, 5])
    with pytest.raises(ValueError, match="group 1 does not exist"):
        opt.set_units(0, [4, 6], group=[0, 1])
    with pytest.raises(ValueError, match="1 frozen flags for 2 units"):
        opt.set_units(0, [4, 6], frozen=[True])
    with pytest.raises(TypeError, match="frozen must be True or False"):
        opt.set_units(0, [4, 6], frozen=[1, 0])
    with pytest.raises(ValueError, match="params\\[1\\] does not exist"):
        opt.set_units(1, [10])
    with pytest.raises(ValueError, match="may set only lr, weight_decay, l1"):
        opt.set_groups([{"betas": (0.5, 0.5)}])
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.set_groups([{"lr": -1}])
    with pytest.raises(TypeError, match="must be a dict"):
        opt.set_groups([0.1])
    opt.set_groups([{"lr": 0.1}])
    opt.set_units(0, [4, 6], group=[0, 1])
    with pytest.raises(ValueError, match="units in group 1"):
        opt.set_groups([])
    bad = opt.state_dict()
    bad["units"] = [{"sizes": [3], "group": [0], "frozen": [False], "steps": [0]}]
    with pytest.raises(ValueError, match="add up to 3"):
        optim.Adam([np.zeros(10, np.float32)]).load_state_dict(bad)
