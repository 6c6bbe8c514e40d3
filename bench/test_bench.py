"""pytest-benchmark suite: every comparison of ``fastwb bench`` (fastwb/benchmark.py),
one group each, fastwb against its NumPy twin and PyTorch CPU.

    pytest bench/ --benchmark-only --benchmark-group-by=group            # full
    pytest bench/ --benchmark-only --quick --bench-dtype float32          # a few minutes

pytest-benchmark runs a group's members one after the other; for paired,
interleaved ratios use ``fastwb bench`` or ``python bench/targets.py``.
"""

import pytest

import fastwb


@pytest.mark.parametrize("impl", ["fastwb", "numpy", "torch"])
def test_compare(benchmark, case, impl):
    name, dtype, build, _, _ = case
    contenders = build(fastwb.get_num_threads())
    if impl not in contenders:
        pytest.skip(f"no {impl} contender here" + (" (PyTorch is not installed)" if impl == "torch" else ""))
    benchmark.group = f"{name} {dtype}"
    benchmark(contenders[impl])


# Training speed over time (subnormal numbers must not slow training down): the
# memorised-batch step early and late, and MNIST epochs.  `fastwb bench` runs the
# same workloads in processes of their own and states the targets.

@pytest.mark.parametrize("late", [0, fastwb.benchmark.DECAY_LATE], ids=lambda n: f"after_{n}_steps")
def test_memorised_batch_step(benchmark, late):
    X, y, source = fastwb.benchmark.memorised_batch()
    step = fastwb.benchmark.fastwb_memorised_step(X, y)
    for _ in range(late):
        step()
    benchmark.group = f"memorised {source} batch, 784-256-10 f32 Adam step"
    benchmark.pedantic(step, rounds=fastwb.benchmark.DECAY_TIMED, iterations=1)


def test_mnist_epoch(benchmark):
    import numpy as np

    from fastwb import datasets

    try:
        X, y, _, _ = datasets.load("mnist")
    except (OSError, ValueError) as e:
        pytest.skip(f"MNIST IDX files not found (set ${datasets.MNIST_ENV}): {e}")
    model = fastwb.MLP([784, 256, 10], dtype=np.float32, rng=0)
    model.compile("adam", lr=1e-3)
    benchmark.group = "MNIST epoch, 784-256-10 f32 Adam b128 (10 epochs in a row)"
    benchmark.pedantic(lambda: model.fit(X, y, epochs=1, batch_size=128, verbose=False),
                       rounds=fastwb.benchmark.DECAY_EPOCHS, iterations=1)
