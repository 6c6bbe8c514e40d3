"""pytest-benchmark suite of the compiled core: each group holds fastwb and its
NumPy twin (and, where it is the yardstick, the bare GEMM) on the same work.

    pytest bench/ --benchmark-only
    pytest bench/ --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,ops

For paired median ratios taken side by side, run ``python bench/targets.py``.
"""

import numpy as np
import pytest

import fastwb
import fastwb.reference as R

IMPLS = {"fastwb": fastwb, "twin": R}
ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
DTYPES = {"f32": np.float32, "f64": np.float64}


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("impl", ["fastwb", "twin", "matmul"])
def test_linear_forward(benchmark, rng, impl, act, dt):
    if impl == "matmul" and act != "identity":
        pytest.skip("the bare GEMM is measured once per dtype")
    dtype = DTYPES[dt]
    x = rng.standard_normal((128, 784)).astype(dtype)
    W = (rng.standard_normal((784, 256)) * 0.05).astype(dtype)
    b = rng.standard_normal(256).astype(dtype)
    out = np.empty((128, 256), dtype)
    benchmark.group = f"linear forward 128x784x256 {dt}" + ("" if impl == "matmul" else f" {act}")
    if impl == "matmul":
        benchmark.group = f"linear forward 128x784x256 {dt} relu"
        benchmark(np.matmul, x, W, out=out)
    else:
        benchmark(IMPLS[impl].linear, x, W, b, act, 0.01, out)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("impl", ["fastwb", "twin"])
def test_linear_backward(benchmark, rng, impl, act, dt):
    dtype = DTYPES[dt]
    x = rng.standard_normal((128, 784)).astype(dtype)
    W = (rng.standard_normal((784, 256)) * 0.05).astype(dtype)
    y = R.linear(x, W, None, act)
    g = rng.standard_normal(y.shape).astype(dtype)
    out = (np.empty_like(x), np.empty_like(W), np.empty(256, dtype))
    work = np.empty_like(y)
    benchmark.group = f"linear backward 128x784x256 {dt} {act}"
    benchmark(IMPLS[impl].linear_backward, g, y, x, W, act, 0.01, True, out, work)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(128, 10), (4096, 1000)], ids=["128x10", "4096x1000"])
@pytest.mark.parametrize("impl", ["fastwb", "twin"])
def test_softmax_cross_entropy(benchmark, rng, impl, shape, dt):
    z = rng.standard_normal(shape).astype(DTYPES[dt])
    labels = rng.integers(0, shape[1], shape[0])
    out = np.empty_like(z)
    benchmark.group = f"softmax_cross_entropy {shape[0]}x{shape[1]} {dt}"
    benchmark(IMPLS[impl].softmax_cross_entropy, z, labels, out)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "copy"])
@pytest.mark.parametrize("impl", ["fastwb", "twin"])
def test_elementwise_16M(benchmark, rng, impl, name):
    x = rng.standard_normal(1 << 24).astype(np.float32)
    out = np.empty_like(x)
    benchmark.group = f"{name} 16M f32 (copy: the bandwidth yardstick)"
    if name == "copy":
        from fastwb import _dense

        fn = (lambda: _dense.act_flat(x, out, 0, 0.0, fastwb.get_num_threads())) if impl == "fastwb" else (
            lambda: np.copyto(out, x))
        benchmark(fn)
    else:
        benchmark(getattr(IMPLS[impl], name), x, out=out)


@pytest.mark.parametrize("part", ["gemm", "kernel", "pair"])
def test_gemm_kernel_alternation(benchmark, rng, part):
    """A GEMM and a 2-thread fastwb kernel in turn cost no more than the two alone."""
    x = rng.standard_normal((128, 784)).astype(np.float32)
    W = rng.standard_normal((784, 256)).astype(np.float32)
    y = np.empty((128, 256), np.float32)
    v = rng.standard_normal(1 << 20).astype(np.float32)
    out = np.empty_like(v)

    def pair():
        np.matmul(x, W, out=y)
        fastwb.sigmoid(v, out=out)

    fns = {"gemm": lambda: np.matmul(x, W, out=y), "kernel": lambda: fastwb.sigmoid(v, out=out), "pair": pair}
    benchmark.group = "matmul 128x784x256 alternating with 2-thread sigmoid 1M"
    benchmark(fns[part])
