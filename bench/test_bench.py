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
