"""pytest-benchmark suite of the transfer-learning targets (bench/transfer.py):
(a) one Adam train_step of 784-256-128-10 float32 at batch 128 with the base
frozen, against the same step unfrozen and against PyTorch's fine-tuning step;
(b) the worked example's 20-epoch fine-tune (500 examples, 784-256-128-5,
batch 32): fastwb ``fit(cache_frozen=True)`` and without it, against PyTorch's
usual loop and PyTorch with the base's output computed once.

    pytest bench/test_bench_transfer.py --benchmark-only --benchmark-group-by=group
    python bench/transfer.py [--repeats N] [--threads N]     # paired, interleaved ratios and the targets

A round is the same work for every contender: STEPS consecutive steps for (a),
one whole fine-tune for (b).  fastwb runs in this process; PyTorch shares
libgomp with fastwb, so it runs in a process of its own (started once for the
module), which each round asks to do the round's work and waits for: a pipe
round trip of some 0.1 ms against a round of tens of milliseconds.
pytest-benchmark runs a group's members one after the other, so on a shared
machine its ratios are noisier than the interleaved ones of the script.
"""

import pytest
import transfer as T  # bench/transfer.py: the contenders, the PyTorch worker

import fastwb
from fastwb import benchmark as B

STEPS = 50                  # (a): consecutive train steps per round
ROUNDS = {"step": 30, "finetune": 7}


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


def _round(benchmark, mine, request, kind, name, calls):
    """Time rounds of ``calls`` calls of contender ``name``."""
    if name.startswith("PyTorch"):
        worker = request.getfixturevalue("peer")           # skips the test without PyTorch
        line = f"run {name} {calls}"

        def run():
            worker.ask(line)
    else:
        fn = mine[kind][name]

        def run():
            for _ in range(calls):
                fn()
    run()                                          # warm up: workspaces, optimizer state
    benchmark.pedantic(run, rounds=ROUNDS[kind], iterations=1)


@pytest.mark.parametrize("name", T.STEP_NAMES)
def test_frozen_step(benchmark, mine, request, name):
    benchmark.group = (f"(a) {STEPS} train steps {'-'.join(map(str, T.STEP_SIZES))} f32 Adam b{T.STEP_BATCH}, "
                       f"base frozen or not (PyTorch in its own process)")
    _round(benchmark, mine, request, "step", name, STEPS)


@pytest.mark.parametrize("name", T.FT_NAMES)
def test_finetune(benchmark, mine, request, name):
    benchmark.group = (f"(b) fine-tune {T.FT_PER_CLASS * T.FT_SIZES[-1]}x{T.FT_SIZES[0]}, "
                       f"{'-'.join(map(str, T.FT_SIZES))} base frozen, {T.FT_EPOCHS} epochs b{T.FT_BATCH} "
                       f"(PyTorch in its own process)")
    _round(benchmark, mine, request, "finetune", name, 1)
