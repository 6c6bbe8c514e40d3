"""Federated learning: where a client's round goes, and FedAvg on MNIST.

    python bench/federated.py [--repeats N] [--data-path DIR]           # (a) the client round
    python bench/federated.py --rounds 150 --partition iid,shards        # (b) rounds to 97%, IID vs non-IID

(a) One round of one client, as the issue states it: 600 MNIST training
    examples (MNIST's rows when the data is found, else random rows of the same
    shape), the 2NN 784-200-200-10, one local epoch of plain SGD at batch 10
    (lr 0.1), from the moment Flower hands the client its ``FitIns`` (the
    parameters as Flower's serialised bytes) to the moment the client's
    ``FitRes`` is built (``FlowerClient(...).to_client().fit(ins)``, the call a
    SuperNode or a simulation actor makes).  Its parts: fastwb's training
    (``fit``), fastwb's copies in and out of the model
    (``set_weights``/``get_weights``), and Flower's own conversion between
    bytes and arrays, timed alone on the same arrays.  Target: copying < 5% of
    the round.  Medians over ``--repeats`` rounds, 1 thread (each simulated
    client gets one).

(b) ``fastwb federated``'s experiment through :func:`fastwb.federated.simulate`:
    100 clients, C = 0.1, E = 1, B = 10, lr 0.1, the 2NN, on Flower's
    simulation engine; prints the rounds to 97% test accuracy per partition and
    writes the curves (``--plot``).  McMahan et al. (2017), Table 2, report 87
    rounds (IID) and 664 (pathological non-IID) for this configuration with a
    tuned learning rate.

The CPU, the load average and the thread count are printed with the figures.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import fastwb
from fastwb import benchmark, datasets, nn

CLIENT_ROWS = 600


def two_nn(seed=0):
    return nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10),
                         rng=seed)


def client_rows(path):
    """600 MNIST training rows (or random rows of that shape, saying so)."""
    try:
        X, y, _, _ = datasets.load("mnist", path)
        return X[:CLIENT_ROWS], y[:CLIENT_ROWS], "MNIST's first 600 training rows"
    except (OSError, ValueError) as e:
        g = np.random.default_rng(0)
        print(f"MNIST not found ({e}); timing random rows of MNIST's shape", file=sys.stderr)
        X = g.random((CLIENT_ROWS, 784), dtype=np.float32)
        return X, g.integers(0, 10, CLIENT_ROWS), "random rows of MNIST's shape"


def client_round(repeats, path):
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

    from fastwb import federated

    X, y, what = client_rows(path)
    server = federated.get_weights(two_nn(seed=1))
    ins = FitIns(ndarrays_to_parameters(server), {"server_round": 1})
    rows = []
    for r in range(repeats + 1):                # the first round warms up
        client = federated.FlowerClient(two_nn(), X, y, epochs=1, batch_size=10, lr=0.1, seed=r)
        t0 = time.perf_counter()
        res = client.to_client().fit(ins)
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        arrays = parameters_to_ndarrays(ins.parameters)
        ndarrays_to_parameters(arrays)
        flower = time.perf_counter() - t1
        m = res.metrics
        if r:
            rows.append((total, m["train_seconds"], m["copy_seconds"], flower))
    med = [statistics.median(c) for c in zip(*rows)]
    params = sum(a.size for a in server)
    print(f"(a) one client round: {what}, 784-200-200-10 ({params:,} parameters), E=1, B=10, "
          f"{fastwb.get_num_threads()} thread(s), median of {repeats}")
    print(f"    FitIns -> FitRes          {med[0] * 1e3:8.2f} ms")
    print(f"    fastwb training (fit)     {med[1] * 1e3:8.2f} ms  {med[1] / med[0]:6.1%}")
    print(f"    fastwb copies in and out  {med[2] * 1e3:8.2f} ms  {med[2] / med[0]:6.1%}   (target < 5%)")
    print(f"    Flower's bytes <-> arrays {med[3] * 1e3:8.2f} ms  {med[3] / med[0]:6.1%}   (timed alone)")
    share = (med[2] + med[3]) / med[0]
    print(f"    all copying and conversion: {share:.1%} of the round: "
          f"{'met' if share < 0.05 else 'MISSED'} (< 5%)")
    return med


def rounds_to_97(rounds, partitions, path, plot):
    from fastwb import federated

    curves, found = {}, {}
    for scheme in partitions:
        label = {"iid": "IID", "shards": "non-IID (2 shards per client)"}[scheme]
        t0 = time.perf_counter()

        def say(r, acc, loss, seconds, scheme=scheme):
            if r % 10 == 0 or acc >= 0.97:
                print(f"    {scheme:6s} round {r:4d}: accuracy {acc:.4f}, loss {loss:.4f}", flush=True)

        h = federated.simulate(two_nn(), dataset="mnist", data_path=path, clients=100, fraction=0.1,
                               rounds=rounds, scheme=scheme, epochs=1, batch_size=10, lr=0.1, target=0.97,
                               on_round=say)
        curves[label] = h["accuracy"]
        found[scheme] = h["rounds_to_target"]
        print(f"(b) {label}: {found[scheme] or f'not within {rounds}'} rounds to 97%; final "
              f"{h['accuracy'][-1]:.4f}; {time.perf_counter() - t0:.0f} s; client training "
              f"{h['train_seconds']:.1f} s, copying {h['copy_seconds']:.2f} s")
    if plot:
        from fastwb._io import write_figure

        write_figure(federated.plot_accuracy(curves, target=0.97), plot, dpi=90)
        print(f"curves written to {plot}")
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--data-path", default=os.environ.get(datasets.MNIST_ENV))
    p.add_argument("--rounds", type=int, default=0, help="run (b) for this many rounds (0: only (a))")
    p.add_argument("--partition", default="iid,shards")
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    print(f"CPU: {benchmark.cpu_name()}; load average before: {benchmark.load_average()}")
    if args.rounds:
        rounds_to_97(args.rounds, args.partition.split(","), args.data_path, args.plot)
    else:
        with fastwb.threads(1):
            client_round(args.repeats, args.data_path)
    print(f"load average after: {benchmark.load_average()}")


if __name__ == "__main__":
    main()
