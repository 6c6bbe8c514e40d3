"""pytest-benchmark suite of the optimizers and pruning: each group holds
fastwb, its NumPy twin and, when installed, PyTorch CPU at fastwb's thread
count (imported before fastwb touches any process setting).

    pytest bench/test_bench_optim.py --benchmark-only --benchmark-group-by=group
"""

import numpy as np
import pytest

try:
    import torch
except ImportError:  # PyTorch is optional
    torch = None

import fastwb
import fastwb.reference as R
import fastwb.reference.optim as Ropt
from fastwb import optim, prune

OPTIMIZERS = {
    "Adam": {"lr": 1e-3},
    "AdamW": {"lr": 1e-3},
    "SGD": {"lr": 1e-3, "momentum": 0.9},
    "RMSprop": {"lr": 1e-3},
}
SIZES = {"1M": 1 << 20, "16M": 1 << 24}


def _torch_optimizer(name, p, kw):
    torch.set_num_threads(fastwb.get_num_threads())
    if name in ("Adam", "AdamW"):
        return getattr(torch.optim, name)([p], fused=True, **kw)
    return getattr(torch.optim, name)([p], foreach=True, **kw)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("impl", ["fastwb", "twin", "torch"])
def test_optimizer_step(benchmark, impl, name, size):
    n = SIZES[size]
    kw = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 0.01).astype(np.float32)
    benchmark.group = f"{name} step {size} float32"
    if impl == "torch":
        if torch is None:
            pytest.skip("PyTorch is not installed")
        tp = torch.tensor(p, requires_grad=True)
        tp.grad = torch.tensor(g)
        benchmark(_torch_optimizer(name, tp, kw).step)
    else:
        opt = (optim if impl == "fastwb" else Ropt).__dict__[name]([p], **kw)
        benchmark(opt.step, [g])


@pytest.mark.parametrize("impl", ["fastwb", "twin", "torch"])
def test_prune_weights_16M(benchmark, impl):
    w = (np.random.default_rng(0).standard_normal(1 << 24) * 0.1).astype(np.float32)
    benchmark.group = "prune 16M float32 at the 90th percentile (torch: l1_unstructured 90%)"
    if impl == "torch":
        if torch is None:
            pytest.skip("PyTorch is not installed")
        from torch.nn.utils.prune import L1Unstructured

        t = torch.tensor(w)
        method = L1Unstructured(0.9)
        benchmark(method.compute_mask, t, torch.ones_like(t))
    else:
        benchmark((fastwb if impl == "fastwb" else R).prune_weights, w, 90)


@pytest.mark.parametrize("impl", ["fastwb", "twin"])
def test_l1_unstructured_16M(benchmark, impl):
    w = (np.random.default_rng(0).standard_normal(1 << 24) * 0.1).astype(np.float32)
    benchmark.group = "exact-k pruning 16M float32, 90%"
    benchmark((prune if impl == "fastwb" else R.prune).l1_unstructured, w, 0.9)


@pytest.mark.parametrize("impl", ["fastwb", "twin"])
def test_regularization_16M(benchmark, impl):
    w = np.random.default_rng(0).standard_normal(1 << 24).astype(np.float32)
    benchmark.group = "compute_regularization l2 16M float32"
    benchmark((fastwb if impl == "fastwb" else R).compute_regularization, w, 0.01, "l2")
