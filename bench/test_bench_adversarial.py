"""pytest-benchmark suite of the adversarial targets (bench/adversarial.py):
(a) FGSM on 10,000 MNIST-shaped rows through 784-256-10 float32 ReLU, eps 0.1,
fastwb against PyTorch (in a process of its own) as its users write it;
(b) the fused perturbation step alone against its NumPy twin.

    pytest bench/test_bench_adversarial.py --benchmark-only --benchmark-group-by=group
    python bench/adversarial.py [--repeats N] [--rounds R] [--threads N]     # paired, interleaved ratios

A round is one FGSM over all rows (or one perturbation pass).  fastwb runs in
this process; PyTorch shares libgomp with fastwb, so it runs in a process of
its own (started once for the module), which each round asks to do the
round's work and waits for: a pipe round trip of some 0.1 ms against rounds
of tens of milliseconds.  pytest-benchmark runs a group's members one after
the other, so on a shared machine its ratios are noisier than the
interleaved ones of the script.
"""

import adversarial as T  # bench/adversarial.py: the contenders, the PyTorch worker
import pytest

import fastwb
from fastwb import benchmark as B

ROUNDS = {"fgsm": 15, "step": 40}


@pytest.fixture(scope="module")
def mine():
    return T.fastwb_contenders()


@pytest.fixture(scope="module")
def peer():
    missing = B._importable("torch")
    if missing:
        pytest.skip("PyTorch is not installed (pip install torch): no PyTorch contender")
    with T.torch_worker(fastwb.get_num_threads()) as worker:
        yield worker


def _round(benchmark, mine, request, kind, name):
    """Time rounds of one call of contender ``name``."""
    if name.startswith("PyTorch"):
        worker = request.getfixturevalue("peer")           # skips the test without PyTorch
        line = f"run {name} 1"

        def run():
            worker.ask(line)
    else:
        run = mine[kind][name]
    run()                                          # warm up: workspaces, allocations
    benchmark.pedantic(run, rounds=ROUNDS[kind], iterations=1)


@pytest.mark.parametrize("name", [n for n in T.FGSM_NAMES if n != "GEMMs alone"])   # the floor: the script
def test_fgsm(benchmark, mine, request, name):
    benchmark.group = (f"(a) FGSM {T.ROWS}x{T.SIZES[0]}, {'-'.join(map(str, T.SIZES))} f32 ReLU, eps {T.EPS} "
                       f"(PyTorch in its own process)")
    _round(benchmark, mine, request, "fgsm", name)


@pytest.mark.parametrize("name", T.STEP_NAMES)
def test_perturb(benchmark, mine, request, name):
    benchmark.group = f"(b) perturbation step {T.ROWS}x{T.SIZES[0]} f32: clip(x + eps * sign(g), 0, 1)"
    _round(benchmark, mine, request, "step", name)
