"""fastwb.prune: thresholds bitwise equal to np.percentile, exact-k masks, schedules."""

import numpy as np
import pytest
from conftest import THREADS
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastwb.reference.prune as Rp
from fastwb import _prune, optim, prune


def _weights(rng, n, dtype, kind):
    w = (rng.standard_normal(n) * 0.1).astype(dtype)
    if kind == "ties":
        w = np.round(w * 20).astype(dtype) / 20
    elif kind == "zeros":
        w[rng.random(n) < 0.5] = 0
        w[rng.random(n) < 0.1] = -0.0
    elif kind == "constant":
        w[:] = -0.25
    elif kind == "wide":
        w = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(dtype)
    return w


def _same(a, b):
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "constant", "wide"])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000, 65537])
def test_threshold_bitwise_equals_numpy_percentile(kind, n, dtype, rng):
    w = _weights(rng, n, dtype, kind)
    for p in (0, 100, 50, 90, 99.9, 12.5, 33.3, float(rng.uniform(0, 100))):
        _same(prune.magnitude_threshold(w, p), np.percentile(np.abs(w), float(p)))


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), st.integers(1, 300),
                  elements=st.floats(-1e6, 1e6, width=32)), st.floats(0, 100))
def test_threshold_property(w, p):
    _same(prune.magnitude_threshold(w, p), np.percentile(np.abs(w), p))


def test_threshold_nan_and_inf(dtype):
    _same(prune.magnitude_threshold(np.array([1, np.nan, 3], dtype), 50), np.percentile(np.abs(np.array([1, np.nan, 3], dtype)), 50.0))
    assert np.isnan(prune.magnitude_threshold(np.array([1, np.nan, 3], dtype), 0))
    w = np.array([1, -np.inf, 3, np.inf], dtype)
    with np.errstate(invalid="ignore"):
        for p in (0, 50, 75, 90, 100):
            _same(prune.magnitude_threshold(w, p), np.percentile(np.abs(w), float(p)))


@pytest.mark.parametrize("shape", [(1,), (784, 256), (3, 5, 7)])
@pytest.mark.parametrize("p", [0, 50, 90, 100])
def test_magnitude_prune_matches_twin(shape, p, dtype, rng):
    w = _weights(rng, int(np.prod(shape)), dtype, "ties").reshape(shape)
    pruned, sp, mask = prune.magnitude_prune(w, p)
    rp, rsp, rmask = Rp.magnitude_prune(w, p)
    np.testing.assert_array_equal(mask, rmask)
    np.testing.assert_array_equal(pruned, rp)
    assert sp == rsp


def test_magnitude_prune_in_place_and_out(rng):
    w = rng.standard_normal((30, 20))
    expected = Rp.magnitude_prune(w, 70)
    mask = np.empty(w.shape, bool)
    pruned, _, m = prune.magnitude_prune(w, 70, out=w, mask_out=mask)
    assert pruned is w and m is mask
    np.testing.assert_array_equal(w, expected[0])


@pytest.mark.parametrize("amount", [0, 1, 7, 0.0, 0.3, 0.5, 0.9, 1.0, 100])
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])
def test_l1_unstructured_exact_count_and_twin(amount, kind, dtype, rng):
    w = _weights(rng, 100, dtype, kind).reshape(10, 10)
    mask = prune.l1_unstructured(w, amount)
    k = amount if isinstance(amount, int) else round(amount * 100)
    assert mask.dtype == bool and mask.shape == w.shape and (~mask).sum() == k
    np.testing.assert_array_equal(mask, Rp.l1_unstructured(w, amount))
    if 0 < k < 100:
        assert np.abs(w[~mask]).max() <= np.abs(w[mask]).min()


def test_global_unstructured_matches_twin(rng):
    arrays = [rng.standard_normal((20, 30)), rng.standard_normal(17), np.round(rng.standard_normal((5, 5)), 1)]
    for amount in (0.25, 0.9, 333):
        got = prune.global_unstructured(arrays, amount)
        for a, b in zip(got, Rp.global_unstructured(arrays, amount)):
            np.testing.assert_array_equal(a, b)


def test_l1_and_global_match_torch(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: pip install torch==2.13.0")
    from torch.nn.utils import prune as tprune

    w = rng.standard_normal((30, 40)).astype(np.float32)   # torch stores Linear(40, 30) as (out, in)
    lin = torch.nn.Linear(40, 30)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
    for amount in (0.3, 0.777, 250):
        m = tprune.L1Unstructured(amount).compute_mask(lin.weight, torch.ones_like(lin.weight))
        np.testing.assert_array_equal(prune.l1_unstructured(w, amount), m.numpy().astype(bool))
    a, b = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)
    arrays = [a.weight.detach().numpy().copy(), b.weight.detach().numpy().copy()]
    tprune.global_unstructured([(a, "weight"), (b, "weight")], pruning_method=tprune.L1Unstructured, amount=0.6)
    for mine, mod in zip(prune.global_unstructured(arrays, 0.6), (a, b)):
        np.testing.assert_array_equal(mine, mod.weight_mask.numpy().astype(bool))


def test_prune_kernels_thread_independent(dtype, rng):
    w = _weights(rng, 50021, dtype, "ties")

    def run(t):
        hist, ex = np.zeros((t, 2048), np.int64), np.zeros(t, np.int64)
        sel = _prune.select_abs(w, 40000, hist, ex, t)
        out, mask = np.empty_like(w), np.empty(w.size, np.uint8)
        kept = _prune.prune_threshold(w, out, mask, sel[0], ex, t)
        km = np.ones(w.size, np.uint8)
        _prune.mask_exact_k(w, km, sel[1], 40001 - sel[2], ex, t)
        return sel, kept, out, mask, km

    first = run(1)
    for t in THREADS[1:]:
        other = run(t)
        assert first[:2] == other[:2]
        for a, b in zip(first[2:], other[2:]):
            np.testing.assert_array_equal(a, b)


def test_apply_mask_and_sparsity(rng):
    w = rng.standard_normal((6, 7))
    m = rng.random((6, 7)) > 0.5
    expected = Rp.apply_mask(w.copy(), m)
    assert prune.apply_mask(w, m) is w
    np.testing.assert_array_equal(w, expected)
    assert prune.sparsity(m) == Rp.sparsity(m)


def test_cubic_schedule_formula():
    s = prune.CubicSchedule(0.0, 0.9, begin_step=10, n_steps=5, frequency=2)
    assert s(0) == 0.0 and s(9) == 0.0 and s(10) == 0.0
    assert s(11) == s(10)
    assert s(12) == pytest.approx(0.9 + (0.0 - 0.9) * (1 - 2 / 10) ** 3)
    assert s(20) == pytest.approx(0.9) and s(1000) == pytest.approx(0.9)
    values = [s(t) for t in range(30)]
    assert values == sorted(values)


def test_linear_schedule_is_the_slides():
    s = prune.LinearSchedule(0.1, 0.5, prune_steps=4)       # fewer than 10 steps: every step
    assert [round(s(t), 10) for t in range(6)] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    s = prune.LinearSchedule(0.0, 0.9, prune_steps=100)     # every 10 steps
    assert s(9) == 0.0 and s(10) == pytest.approx(0.009)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_pruner_reaches_target_and_keeps_zeros(scope, rng):
    params = [rng.standard_normal((50, 40)), rng.standard_normal(40)]
    opt = optim.Adam(params, lr=1e-2)
    pruner = prune.GradualPruner(params, prune.CubicSchedule(0.0, 0.8, n_steps=10), opt, scope=scope)
    previous = [np.ones(p.shape, bool) for p in params]
    for _ in range(15):
        pruner.step()
        for m, old in zip(pruner.masks, previous):
            assert not (m & ~old).any(), "a pruned weight was revived"
        opt.step([rng.standard_normal(p.shape) for p in params])
        for p, m in zip(params, pruner.masks):
            assert (p[~m] == 0).all()
        previous = [m.copy() for m in pruner.masks]
    total = sum((~m).sum() for m in pruner.masks) / sum(m.size for m in pruner.masks)
    assert total == pytest.approx(0.8, abs=0.01)
    if scope == "layer":
        assert pruner.sparsities() == pytest.approx([0.8, 0.8], abs=0.01)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: prune.magnitude_threshold(np.ones(3), 101), ValueError, r"percentile must lie in \[0, 100\]"),
    (lambda: prune.magnitude_threshold(np.ones(3), "x"), TypeError, "percentile"),
    (lambda: prune.magnitude_threshold(np.ones(0), 50), ValueError, "empty"),
    (lambda: prune.magnitude_prune(np.ones(3, np.int32), 50), TypeError, "float32 or float64"),
    (lambda: prune.l1_unstructured(np.ones(3), 4), ValueError, "amount=4"),
    (lambda: prune.l1_unstructured(np.ones(3), 1.5), ValueError, "fraction"),
    (lambda: prune.l1_unstructured(np.ones(3), True), TypeError, "bool"),
    (lambda: prune.l1_unstructured(np.ones(3), "half"), TypeError, "amount"),
    (lambda: prune.global_unstructured([np.ones(3), np.ones(2, np.float32)], 0.5), TypeError, "mixed dtypes"),
    (lambda: prune.apply_mask(np.ones(3), np.ones(3)), ValueError, "bool array"),
    (lambda: prune.GradualPruner([np.ones(3)], prune.CubicSchedule(), scope="all"), ValueError, "scope"),
    (lambda: prune.CubicSchedule(0.0, 1.5), ValueError, "sparsity must be <= 1.0"),
    (lambda: prune.LinearSchedule(0.0, 0.5, 0), ValueError, "prune_steps"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# reliability: O(1) schedules, pruners over an optimizer holding more arrays
# ---------------------------------------------------------------------------

def test_linear_schedule_costs_constant_time_per_call():
    import time

    s = prune.LinearSchedule(0.0, 0.9, prune_steps=10**9)
    t0 = time.perf_counter()
    values = [s(step) for step in (0, 10**7, 10**12, 10**18)]
    assert time.perf_counter() - t0 < 0.05           # the old loop took 4.35 s at step 1e7 alone
    assert values[0] == 0.0 and values[-1] == 0.9
    assert values[1] == pytest.approx(0.9 * (10**7 // 10**8) / 10**9)


@settings(max_examples=200, deadline=None)
@given(initial=st.floats(0, 1), target=st.floats(0, 1), prune_steps=st.integers(1, 50), step=st.integers(0, 600))
def test_linear_schedule_equals_the_slides_accumulation_up_to_rounding(initial, target, prune_steps, step):
    initial, target = min(initial, target), max(initial, target)   # (the slides' loop overshoots a falling one)
    s = prune.LinearSchedule(initial, target, prune_steps)
    acc = initial
    for _ in range(step // max(1, prune_steps // 10)):
        acc = min(acc + (target - initial) / prune_steps, target)
    assert s(step) == pytest.approx(acc, abs=1e-12)
    assert s(step) == (target if step // s.every >= prune_steps else s(step))


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)])
def test_schedules_reject_bad_steps(bad, exc):
    for schedule in (prune.LinearSchedule(), prune.CubicSchedule()):
        with pytest.raises(exc, match="step"):
            schedule(bad)


@pytest.mark.parametrize("kwargs,match", [({"n_steps": 0}, "n_steps"), ({"frequency": 2.5}, "frequency"),
                                          ({"begin_step": -1}, "begin_step"), ({"final_sparsity": float("nan")},
                                                                               "sparsity")])
def test_cubic_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        prune.CubicSchedule(**kwargs)


def test_gradual_pruner_with_an_optimizer_that_also_holds_biases():
    rng = np.random.default_rng(0)
    W1, b1 = rng.standard_normal((8, 4)), np.zeros(4)
    W2, b2 = rng.standard_normal((4, 2)), np.zeros(2)
    opt = optim.Adam([W1, b1, W2, b2], lr=1e-2)
    pruner = prune.GradualPruner([W1, W2], prune.CubicSchedule(0.0, 0.5, n_steps=4), opt)
    for _ in range(6):
        pruner.step()
        opt.step([np.ones_like(a) for a in (W1, b1, W2, b2)])
    assert pruner.sparsities() == [0.5, 0.5]
    assert np.count_nonzero(W1 == 0) == 16 and np.count_nonzero(W2 == 0) == 4
    assert opt.masks[1] is None and opt.masks[3] is None and np.all(b1 != 0)
    with pytest.raises(ValueError, match="not one of the optimizer's parameter arrays"):
        prune.GradualPruner([np.zeros(3)], prune.CubicSchedule(), opt)
