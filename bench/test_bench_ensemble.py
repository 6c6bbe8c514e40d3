"""pytest-benchmark suite of batched ensemble training (bench/ensemble_speed.py):
one epoch of a 5-member ensemble of 784-256-10 (ReLU, float32, Adam, batch
128) on 12800 rows, independent fits against ``fit(batched=True)``.

    pytest bench/test_bench_ensemble.py --benchmark-only --benchmark-group-by=group
    python bench/ensemble_speed.py [--rounds R] [--threads N]    # interleaved rounds, CPU time, breakdown

Every round builds the ensemble afresh from the same weights (not timed).
pytest-benchmark runs a group's members one after the other, so on a shared
machine its ratio is noisier than the interleaved one of the script.
"""

import numpy as np
import pytest

from fastwb import MLP
from fastwb.ensemble import Ensemble

ROWS, MEMBERS, ROUNDS = 12800, 5, 5


@pytest.fixture(scope="module")
def data():
    r = np.random.default_rng(0)
    return r.random((ROWS, 784), dtype=np.float32), r.integers(0, 10, ROWS)


@pytest.mark.parametrize("batched", [False, True], ids=["independent", "batched"])
def test_ensemble_epoch(benchmark, data, batched):
    X, y = data
    benchmark.group = f"ensemble: {MEMBERS} x 784-256-10, one epoch of {ROWS} rows"

    def setup():
        return (Ensemble(lambda i: MLP([784, 256, 10], rng=i), n_members=MEMBERS, rng=0),), {}

    def run(ens):
        ens.fit(X, y, epochs=1, batch_size=128, verbose=False, batched=batched)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
