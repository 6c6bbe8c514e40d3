"""Inference of a BatchNorm model folded by ``fuse()``, against the same network
without BatchNorm (the target: within 1.05x) and the unfused model, 784-256-256-10
float32 in eval mode at batch 1, 32 and 1024 (fastwb/benchmark.py's
``fused_models``).

    pytest bench/test_bench_fused.py --benchmark-only --benchmark-group-by=group
    python bench/test_bench_fused.py [--repeats N] [--threads N]     # paired, interleaved ratios

pytest-benchmark runs a group's members one after the other; the paired ratios
of the target come from the second command (``fastwb.benchmark.fused_inference``).
"""

import argparse

import numpy as np
import pytest

import fastwb
from fastwb import benchmark as B

MODELS = ("fused", "plain", "batchnorm")


@pytest.fixture(scope="module")
def models():
    return B.fused_models()


@pytest.mark.parametrize("batch", B.INFERENCE_BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("name", MODELS)
def test_fused_inference(benchmark, models, name, batch):
    model = models[name]
    x = np.random.default_rng(0).standard_normal((batch, B.FUSED_SIZES[0])).astype(np.float32)
    np.testing.assert_allclose(models["fused"].logits(x), models["batchnorm"].logits(x), rtol=1e-4, atol=1e-4)
    benchmark.group = f"inference {'-'.join(map(str, B.FUSED_SIZES))} f32 eval b{batch}: fused / plain / batchnorm"
    benchmark(model.logits, x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=61)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    report = B.fused_inference(repeats=args.repeats, threads=args.threads or fastwb.get_num_threads())
    print("\n".join(B.fused_inference_lines(report)))


if __name__ == "__main__":
    main()
