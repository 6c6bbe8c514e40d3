"""fastwb/_gemm.pyx: NumPy's own OpenBLAS called from fastwb's threads, tile by
tile, with fused epilogues; fastwb/_blas.py, which finds it."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastwb
from fastwb import _blas, _gemm, reference

pytestmark = pytest.mark.skipif(not _gemm.available(), reason="NumPy's OpenBLAS was not found: fastwb's GEMMs "
                                "run np.matmul here (fastwb info says why)")

SHAPES = [(128, 784, 256), (128, 256, 10), (3, 17, 5), (1, 784, 256), (1024, 300, 256), (17, 300, 513),
          (256, 128, 10), (784, 128, 256), (128, 10, 256), (200, 0, 70), (1, 1, 1), (130, 64, 190)]


@pytest.fixture
def four_tiles():
    """Tiles as on a 4-CPU machine (the tile count is a process setting, normally the CPU budget)."""
    old = _gemm.get_tiles_max()
    _gemm.set_tiles_max(4)
    yield
    _gemm.set_tiles_max(old)


def _operands(rng, dt, M, K, N, ta, tb):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dt)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dt)
    return (a.T if ta else a), (b.T if tb else b)


def _gemm_out(A, B, nt, **kw):
    out = np.full((A.shape[0], B.shape[1]), np.nan, A.dtype)
    _gemm.gemm(A, B, out, nt, **kw)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_bitwise_equal_for_any_thread_count(dtype, ta, tb, four_tiles):
    rng = np.random.default_rng(1)
    for M, K, N in SHAPES:
        A, B = _operands(rng, dtype, M, K, N, ta, tb)
        outs = [_gemm_out(A, B, nt) for nt in (1, 2, 3, 4, 7)]
        for nt, out in zip((2, 3, 4, 7), outs[1:]):
            assert out.tobytes() == outs[0].tobytes(), (M, K, N, nt)
        tol = 2e-5 * max(K, 1) ** 0.5 if dtype == np.float32 else 1e-13 * max(K, 1) ** 0.5
        np.testing.assert_allclose(outs[0], A.astype(np.float64) @ B.astype(np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_tile_is_numpy_with_its_blas_on_one_thread(dtype):
    """A GEMM small enough for one tile is exactly NumPy's own call (NumPy's BLAS on one
    thread), one-row and one-column products included (gemv, as NumPy calls it)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(2)
    for M, K, N in [(3, 17, 5), (40, 300, 50), (63, 10, 63), (2, 784, 10), (1, 784, 50), (50, 300, 1)]:
        assert _gemm.tile_count(M, N) == 1
        A, B = _operands(rng, dtype, M, K, N, 0, 0)
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            want = np.matmul(A, B)
        assert _gemm_out(A, B, 2).tobytes() == want.tobytes()


def test_tiles_follow_the_shape_and_the_budget(four_tiles):
    assert _gemm.tile_count(128, 10) == 2           # rows cut (128 > 10), 64 rows a tile at least
    assert _gemm.tile_count(10, 128) == 2
    assert _gemm.tile_count(128, 256) == 4          # columns cut, at most the tile maximum
    assert _gemm.tile_count(100, 100) == 1
    _gemm.set_tiles_max(1)
    assert _gemm.tile_count(4096, 4096) == 1
    with pytest.raises(ValueError):
        _gemm.set_tiles_max(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu", "sigmoid", "tanh"])
def test_bias_activation_epilogue_is_linear(dtype, act, four_tiles):
    """gemm(..., bias, act) is fastwb.linear's forward, bit for bit, for any thread count."""
    from fastwb._validate import ACTIVATIONS
    rng = np.random.default_rng(3)
    code = ACTIVATIONS[act]
    x = rng.standard_normal((130, 70)).astype(dtype)
    W = rng.standard_normal((70, 190)).astype(dtype)
    b = rng.standard_normal(190).astype(dtype)
    outs = [_gemm_out(x, W, nt, bias=b, act=code, alpha=0.01) for nt in (1, 2, 4)]
    assert outs[1].tobytes() == outs[0].tobytes() == outs[2].tobytes()
    want = reference.linear(x, W, b, activation=act, alpha=0.01)
    np.testing.assert_allclose(outs[0], want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_empty_inner_dimension_gives_zeros_then_bias():
    x = np.empty((5, 0), np.float32)
    W = np.empty((0, 3), np.float32)
    b = np.arange(3, dtype=np.float32)
    out = _gemm_out(x, W, 2, bias=b)
    assert np.array_equal(out, np.tile(b, (5, 1)))


def test_blas_pool_is_one_thread_inside_and_restored_after():
    before = _gemm.blas_threads()
    _gemm.enter()
    try:
        assert _gemm.blas_threads() == 1
        _gemm.enter()           # nested: still one, and the outer exit restores
        _gemm.exit()
        assert _gemm.blas_threads() == 1
    finally:
        _gemm.exit()
    assert _gemm.blas_threads() == before
    with pytest.raises(RuntimeError):
        _gemm.exit()
    model = fastwb.nn.Sequential(fastwb.nn.Linear(20, 8), fastwb.nn.ReLU(), fastwb.nn.Linear(8, 3))
    model.compile("adam")
    X = np.random.default_rng(0).standard_normal((16, 20)).astype(np.float32)
    model.train_step(X, np.arange(16) % 3)
    model.predict(X)
    assert _gemm.blas_threads() == before


def test_fallback_to_np_matmul_when_no_blas_is_bound():
    """Unbound (no OpenBLAS found), plans run np.matmul: same results to rounding."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 30)).astype(np.float32)
    y = rng.integers(0, 4, 200)

    def run():
        m = fastwb.nn.Sequential(fastwb.nn.Linear(30, 100), fastwb.nn.Tanh(), fastwb.nn.Linear(100, 4),
                                 rng=np.random.default_rng(0))
        m.compile("sgd", lr=0.1)
        losses = [m.train_step(X, y) for _ in range(3)]
        return losses, m.predict_proba(X)

    tiled = run()
    _gemm.unbind()
    try:
        assert not _gemm.available()
        assert fastwb._runtime.config()["gemm"]["gemm"].startswith("np.matmul")
        plain = run()
    finally:
        _blas.find()
    assert _gemm.available()
    np.testing.assert_allclose(plain[0], tiled[0], rtol=1e-5)
    np.testing.assert_allclose(plain[1], tiled[1], rtol=1e-4, atol=1e-6)


def test_info_names_the_path_and_the_override(tmp_path):
    info = _blas.info()
    assert info["gemm"].startswith("tiled") and "sgemm" in info["symbol"]
    code = "import fastwb; print(fastwb._runtime.config()['gemm'])"
    # run away from the source tree, whose fastwb/ has no compiled modules in an installed copy's CI
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTWB_BLAS": "numpy"}, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert "np.matmul" in out and "FASTWB_BLAS=numpy" in out


def test_bind_rejects_half_a_binding():
    with pytest.raises(ValueError):
        _gemm.bind(0, 0, True)
    with pytest.raises(ValueError):
        _gemm.bind(1, 1, True, 1, 0)


# -- the thread choice of a compiled plan (fastwb/_engine.pyx) ------------------------------

def _plan():
    model = fastwb.nn.Sequential(fastwb.nn.Linear(300, 256), fastwb.nn.ReLU(), fastwb.nn.Linear(256, 10))
    return model, model._workspace(128).plan


def _call(plan, parallel_s, serial_s, which="step"):
    """One call timed as the choice it ran: returns the choice (0 parallel, 1 serial)."""
    used = plan._next(which)
    plan._observe(which, used, serial_s if used else parallel_s)
    return used


def test_plan_measures_both_choices_then_keeps_the_faster():
    _, plan = _plan()
    used = [_call(plan, 1e-3, 4e-4) for _ in range(5)]
    assert used == [0, 0, 0, 1, 1]              # warm-up, two parallel calls, two serial calls
    assert plan.choice["step"]["mode"] == "serial"
    assert plan.choice["forward"]["mode"] == "parallel"     # forward and step are measured apart
    # serial stays while parallel keeps losing, tried again (two calls) after 8, 16, 32, ... calls
    used = [_call(plan, 1e-3, 4e-4) for _ in range(120)]
    tries = [i for i, u in enumerate(used) if u == 0 and (i == 0 or used[i - 1] == 1)]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert len(gaps) >= 2 and all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:]))
    assert plan.choice["step"]["mode"] == "serial"
    # the machine got quiet: parallel wins its next try and is kept
    used = [_call(plan, 1e-4, 4e-4) for _ in range(120)]
    assert plan.choice["step"]["mode"] == "parallel" and used[-5:] == [0] * 5


def test_plan_tries_again_soon_when_calls_stall():
    _, plan = _plan()
    assert [_call(plan, 1e-3, 3e-3) for _ in range(5)] == [0, 0, 0, 1, 1]
    assert plan.choice["step"]["mode"] == "parallel"        # the serial try lost
    # busy: every other parallel call stalls 10x (a thread waited for); serial is tried within a few calls
    used = []
    for i in range(12):
        used.append(_call(plan, 1e-2 if i % 2 else 1e-3, 2e-3))
    assert 1 in used
    assert plan.choice["step"]["mode"] == "serial"


def test_existing_plans_follow_the_thread_setting():
    """A workspace made at one thread count runs at the count of each call."""
    model, _ = _plan()
    X = np.random.default_rng(0).standard_normal((128, 300)).astype(np.float32)
    y = np.arange(128) % 10
    model.compile("sgd")
    plan = model._workspace(128).plan
    with fastwb.threads(1):
        model.train_step(X, y)
        assert plan.limit == 1
    with fastwb.threads(2):
        model.train_step(X, y)
        assert plan.limit in (1, 2)     # 1 only if the plan measured one thread faster


def test_thread_choice_outside_plans():
    from fastwb import _engine
    choice = _engine.ThreadChoice()
    assert choice.threads(1) == 1
    choice.observe(1.0)                     # nothing planned: nothing recorded
    assert choice.state["calls"] == 0
    got = []
    for _ in range(6):
        n = choice.threads(4)
        got.append(n)
        choice.observe(2e-4 if n == 1 else 1e-3)    # one thread is faster here
    assert got[:5] == [4, 4, 4, 1, 1] and got[5:] == [1]
    assert choice.state["mode"] == "serial"
    opt = fastwb.optim.Adam([np.zeros(10, np.float32)])
    opt.step([np.ones(10, np.float32)])
    import pickle
    assert pickle.loads(pickle.dumps(opt)).step_count == 1     # the timings are not pickled
