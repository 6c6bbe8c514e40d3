"""pytest-benchmark suite of the saliency targets (bench/explain.py): saliency maps
of 10,000 MNIST-shaped rows through a 784-256-10 ReLU MLP (float32, eval mode)
with ``fastwb.explain.saliency``, against the engine's full gradient computation
of the same batch (``model.gradients``; and with the input gradient too) and
against PyTorch autograd's input gradient (parameters not requiring grad).

    pytest bench/test_bench_explain.py --benchmark-only --benchmark-group-by=group
    python bench/explain.py [--repeats N] [--rounds R] [--threads N]     # paired ratios and the targets

fastwb runs in this process; PyTorch shares libgomp with fastwb, so it runs in
a process of its own (started once for the module) that each round asks for
one call and waits for (a pipe round trip of some 0.1 ms against a call of
about 100 ms).  pytest-benchmark runs a group's members one after the other,
so on a shared machine its ratios are noisier than the interleaved ones of the
script.
"""

import os
import tempfile

import explain as E  # bench/explain.py: the contenders, the PyTorch worker
import numpy as np
import pytest

import fastwb
from fastwb import benchmark as B
from fastwb import explain

ROUNDS = 15
GROUP = (f"saliency {E.ROWS} rows {'-'.join(map(str, E.SIZES))} f32 eval: fastwb.explain.saliency, model.gradients, "
         "PyTorch autograd input gradient (its own process)")


@pytest.fixture(scope="module")
def problem():
    model = E.fastwb_model()
    X, y = E.data()
    return model, X, y, E.fastwb_contenders(model, X, y)


@pytest.fixture(scope="module")
def peer(problem):
    if B._importable("torch"):
        pytest.skip("PyTorch is not installed (pip install torch): no PyTorch contender")
    model, X, _, _ = problem
    with tempfile.TemporaryDirectory(prefix="fastwb-explain-") as tmp:
        path = os.path.join(tmp, "problem.npz")
        E.save_problem(path, model, X)
        with E.torch_worker(fastwb.get_num_threads(), path) as worker:
            worker.ask(f"save {os.path.join(tmp, 'torch.npy')}")
            # the same maps, up to float32 rounding
            np.testing.assert_allclose(np.load(os.path.join(tmp, "torch.npy")), explain.saliency(model, X),
                                       rtol=1e-4, atol=1e-5)
            yield worker


@pytest.mark.parametrize("name", E.NAMES + (E.TORCH,))
def test_saliency(benchmark, problem, request, name):
    benchmark.group = GROUP
    if name == E.TORCH:
        worker = request.getfixturevalue("peer")         # skips without PyTorch

        def run():
            worker.ask("run 1")
    else:
        run = problem[3][name]
    run()                                              # warm up: workspaces
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
