"""pytest-benchmark suite of full training steps: fastwb's engine, the NumPy
twin (the slides' classifier, fixed) and PyTorch CPU with fused Adam at
fastwb's thread count, on three models.

    pytest bench/test_bench_train.py --benchmark-only --benchmark-group-by=group
"""

import numpy as np
import pytest

from harness import torch_train_step

import fastwb
import fastwb.reference as R

MODELS = {
    "784-256-10 b128": ([784, 256, 10], 128),
    "16-32-32-4 b32": ([16, 32, 32, 4], 32),
    "4096-4096-4096-10 b512": ([4096, 4096, 4096, 10], 512),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("impl", ["fastwb", "twin", "torch"])
def test_train_step(benchmark, impl, model, dtype):
    sizes, batch = MODELS[model]
    if "4096" in model and dtype == np.float64:
        pytest.skip("the wide model is measured in float32 only (it is GEMM-bound either way)")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    benchmark.group = f"train step {model} {np.dtype(dtype).name}"
    if impl == "fastwb":
        net = fastwb.MLP(sizes, dtype=dtype, rng=0)
        benchmark(net.train_step, X, y)
    elif impl == "twin":
        if len(sizes) != 3:
            pytest.skip("the twin is the slides' two-layer classifier")
        twin = R.MNISTClassifier(*sizes, dtype=dtype, rng=0)
        benchmark(twin.train_step, X, y)
    else:
        step = torch_train_step(sizes, batch, dtype, fastwb.get_num_threads())
        if step is None:
            pytest.skip("PyTorch is not installed")
        benchmark(step)
