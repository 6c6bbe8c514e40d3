"""Thread controls, and results bitwise identical for any number of threads."""

import numpy as np
import pytest
from conftest import THREADS

import fastwb
from fastwb import _dense, _losses

ACT_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}


def _same_for_all_thread_counts(run):
    """run(n_threads) -> tuple of arrays; every thread count must give identical bits."""
    results = [run(t) for t in THREADS]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("act", list(ACT_CODES))
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (129, 67), (40, 1000)])
def test_dense_kernels_thread_independent(act, shape, dtype, rng):
    code = ACT_CODES[act]
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)

    def forward(t):
        y = np.empty_like(z)
        _dense.bias_act_rows(z, b, y, code, 0.1, t)
        flat = np.empty(z.size, dtype)
        _dense.act_flat(z.reshape(-1), flat, code, 0.1, t)
        return y, flat

    def backward(t):
        dz = np.empty_like(z)
        gb = np.empty(shape[1], dtype)
        _dense.act_grad_colsum(g, z, dz, gb, code, 0.1, t)
        flat = np.empty(z.size, dtype)
        _dense.act_grad_flat(g.reshape(-1), z.reshape(-1), flat, code, 0.1, t)
        cs = np.empty(shape[1], dtype)
        _dense.colsum(g, cs, t)
        return dz, gb, flat, cs

    _same_for_all_thread_counts(forward)
    _same_for_all_thread_counts(backward)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (257, 10), (64, 1000)])
def test_loss_kernels_thread_independent(shape, dtype, rng):
    z = (rng.standard_normal(shape) * 5).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0]).astype(np.intp)
    g = rng.standard_normal(shape).astype(dtype)

    def run(t):
        p = np.empty_like(z)
        _losses.softmax_rows(z, p, t)
        dz = np.empty_like(z)
        _losses.softmax_grad_rows(g, p, dz, t)
        grad = np.empty_like(z)
        loss = _losses.softmax_xent(z, labels, grad, np.empty(shape[0]), t)
        return p, dz, grad, np.array([loss])

    _same_for_all_thread_counts(run)


def test_public_api_thread_independent(dtype, rng):
    """Through the public layer, large enough that the planner really uses several threads."""
    x = rng.standard_normal((1024, 300)).astype(dtype)
    W = (rng.standard_normal((300, 2100)) / 17).astype(dtype)
    b = rng.standard_normal(2100).astype(dtype)
    labels = rng.integers(0, 2100, 1024)

    def run(t):
        with fastwb.threads(t):
            y = fastwb.linear(x, W, b, "sigmoid")
            loss, g = fastwb.softmax_cross_entropy(y, labels)
            grads = fastwb.linear_backward(g, y, x, W, "sigmoid")
            return (y, g, np.array([loss])) + grads

    _same_for_all_thread_counts(run)


needs_openmp = pytest.mark.skipif(not fastwb._runtime.config()["openmp"], reason="serial build: always one thread")


@needs_openmp
def test_set_get_and_context_manager():
    before = fastwb.get_num_threads()
    with fastwb.threads(1):
        assert fastwb.get_num_threads() == 1
        with fastwb.threads(3):
            assert fastwb.get_num_threads() == 3
        assert fastwb.get_num_threads() == 1
    assert fastwb.get_num_threads() == before
    fastwb.set_num_threads(2)
    assert fastwb.get_num_threads() == 2
    fastwb.set_num_threads(before)


def test_context_manager_restores_after_error():
    before = fastwb.get_num_threads()
    with pytest.raises(RuntimeError):
        with fastwb.threads(1):
            raise RuntimeError("boom")
    assert fastwb.get_num_threads() == before


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects(bad, exc):
    with pytest.raises(exc, match="n"):
        fastwb.set_num_threads(bad)


@needs_openmp
def test_plan_threads_serial_below_grain():
    with fastwb.threads(4):
        assert fastwb.plan_threads(10) == 1
        assert fastwb.plan_threads(1 << 30) == 4
        assert fastwb.plan_threads(3 << 20, grain=1 << 20) == 3
    with fastwb.threads(1):
        assert fastwb.plan_threads(1 << 30) == 1
