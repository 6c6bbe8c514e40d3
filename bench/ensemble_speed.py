"""Batched ensemble training against independent fits, and where the time goes.

    python bench/ensemble_speed.py [--rounds R] [--rows N] [--members M] [--threads N] [--data FOLDER]

(a) End to end: a ``--members``-member ensemble (default 5) of 784-256-10 MLPs
    (ReLU, float32, Adam lr 1e-3, batch 128) trained for one epoch on the first
    ``--rows`` rows of MNIST (random data where MNIST is not found):
    ``Ensemble.fit(X, y)`` (independent fits, each member its own shuffling)
    against ``Ensemble.fit(X, y, batched=True)`` (one shared batch per step,
    the members' compiled steps on it, one fused Adam pass over all members'
    parameters).  Each round builds both ensembles afresh from the same weights
    and times the two fits in alternating order; the ratio is the median over
    rounds of the round's ratio, with its smallest and largest.  Each member's
    test accuracy after the last round is printed for both.
(b) Where one step's time goes (one member, batch 128): the member's compiled
    forward + backward, its Adam pass, and the rest of fit's loop (gathering
    the batch, the accuracy count, Python), against the same parts of a
    batched step; and the GEMMs alone (NumPy's BLAS through fastwb's tiles)
    (fastwb's tiled GEMM at the step's thread count) with their rate next to
    the machine's large-GEMM rate.
(c) The design's yardstick: the first layer of all members as one wide GEMM,
    ``X @ [W_1 | ... | W_M]`` (and its weight gradient ``X.T @ [G_1 | ... |
    G_M]``), against the M GEMMs of the members' own shapes, interleaved.

The load average is printed before and after: on a busy machine (load above
the core count) every figure is noisy, so compare the spreads.  (a) also
gives the CPU time of each fit (``time.process_time``: this process's
threads), which other processes disturb less than the wall time; with
``--threads 1`` it is the work itself.
"""

import argparse
import os
import sys
import time

import numpy as np

import fastwb
from fastwb import MLP, _gemm, datasets
from fastwb import benchmark as B
from fastwb.ensemble import Ensemble

SIZES = (784, 256, 10)
BATCH = 128
FIT_STEP = "member: fit's whole step"
GEMMS = "GEMMs alone (one member)"


def data(folder, rows):
    try:
        X, y, Xt, yt = datasets.load("mnist", folder)
        return X[:rows], y[:rows], Xt, yt, "MNIST"
    except (FileNotFoundError, ValueError):
        r = np.random.default_rng(0)
        X = r.random((rows + 2000, SIZES[0]), dtype=np.float32)
        y = r.integers(0, SIZES[-1], rows + 2000)
        return X[:rows], y[:rows], X[rows:], y[rows:], "random data (MNIST not found)"


def ensemble(members):
    return Ensemble(lambda i: MLP(list(SIZES), rng=i), n_members=members, rng=0)


def end_to_end(X, y, Xt, yt, members, rounds):
    """Wall and CPU seconds (this process, all its threads) of each round's two fits."""
    times = {"independent": [], "batched": []}
    cpu = {"independent": [], "batched": []}
    accuracy = {}
    for r in range(rounds):
        order = ("independent", "batched") if r % 2 == 0 else ("batched", "independent")
        for name in order:
            ens = ensemble(members)
            c0, t0 = time.process_time(), time.perf_counter()
            ens.fit(X, y, epochs=1, batch_size=BATCH, verbose=False, batched=name == "batched")
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            accuracy[name] = [m.evaluate(Xt, yt)[1] for m in ens]
        print(f"  round {r + 1}/{rounds}: independent {times['independent'][-1]:.2f} s "
              f"(CPU {cpu['independent'][-1]:.2f} s), batched {times['batched'][-1]:.2f} s "
              f"(CPU {cpu['batched'][-1]:.2f} s), load {B.load_average():.2f}", flush=True)
    return {k: np.array(v) for k, v in times.items()}, {k: np.array(v) for k, v in cpu.items()}, accuracy


def step_gemms():
    """The five GEMMs of one member's step (784-256-10, batch 128) alone, through
    fastwb's tiled GEMM at the thread count of the step: its floor."""
    r = np.random.default_rng(3)
    d, h, c = SIZES
    X, H, G2 = (r.standard_normal(s).astype(np.float32) for s in ((BATCH, d), (BATCH, h), (BATCH, c)))
    W1, W2 = r.standard_normal((d, h)).astype(np.float32), r.standard_normal((h, c)).astype(np.float32)
    out1, out2, gW2, gH, gW1 = (np.empty(s, np.float32) for s in ((BATCH, h), (BATCH, c), (h, c), (BATCH, h), (d, h)))
    n = fastwb.get_num_threads()

    def run():
        _gemm.gemm(X, W1, out1, n)
        _gemm.gemm(H, W2, out2, n)
        _gemm.gemm(H.T, G2, gW2, n)
        _gemm.gemm(G2, W2.T, gH, n)
        _gemm.gemm(X.T, H, gW1, n)
    return run


def breakdown(X, y, members, repeats):
    """Median seconds of the parts of one member's step and of a batched step, on a batch of X."""
    r = np.random.default_rng(1)
    ens = ensemble(members)
    for m in ens:
        m.compile("adam", lr=1e-3)
    m0 = ens[0]
    ws = m0._workspace(BATCH)
    idx = r.permutation(len(X))[:BATCH]
    np.take(X, idx, axis=0, out=ws.x)
    yb = y[idx].astype(np.intp)

    def gradients():
        m0._gradients(ws.x, yb, ws)

    def adam():
        m0.optimizer._apply([m0.grads])

    def fit_step():         # what fit's loop does around a step
        np.take(X, idx, axis=0, out=ws.x)
        np.take(y, idx, axis=0, out=np.empty(BATCH, y.dtype))
        m0._step(ws.x, yb, ws)
        np.count_nonzero(np.argmax(ws.out[-1], axis=1) == yb)

    from fastwb.ensemble import _Batched
    trainer = _Batched(list(ens))
    shadows = trainer.shadows
    wss = [s._workspace(BATCH) for s in shadows]

    def batched_gradients():
        for s, w in zip(shadows, wss):
            s._gradients(ws.x, yb, w)

    def batched_adam():
        trainer.optimizer._apply([trainer.grads])

    gemm = step_gemms()
    parts = {"member: forward + backward (compiled)": gradients, "member: Adam pass": adam,
             FIT_STEP: fit_step, GEMMS: gemm,
             f"batched: {members} x forward + backward": batched_gradients,
             f"batched: one Adam pass over {members} members": batched_adam}
    _gemm.enter()
    try:
        t = B.interleaved(parts, repeats=repeats, target_s=5e-3)
    finally:
        _gemm.exit()
    return {k: float(np.median(v)) for k, v in t.items()}


def wide_gemm(members, repeats):
    r = np.random.default_rng(2)
    d, h = SIZES[0], SIZES[1]
    X = r.random((BATCH, d), dtype=np.float32)
    Wide = r.standard_normal((d, members * h)).astype(np.float32)
    Ws = [np.ascontiguousarray(Wide[:, i * h:(i + 1) * h]) for i in range(members)]
    G = r.standard_normal((BATCH, members * h)).astype(np.float32)
    Gs = [np.ascontiguousarray(G[:, i * h:(i + 1) * h]) for i in range(members)]
    out, outs = np.empty((BATCH, members * h), np.float32), [np.empty((BATCH, h), np.float32) for _ in Ws]
    gW, gWs = np.empty((d, members * h), np.float32), [np.empty((d, h), np.float32) for _ in Ws]
    n = fastwb.get_num_threads()
    cases = {"wide forward X @ [W_1..W_M]": lambda: _gemm.gemm(X, Wide, out, n),
             "M forwards X @ W_i": lambda: [_gemm.gemm(X, W, o, n) for W, o in zip(Ws, outs)],
             "wide weight gradient X.T @ [G_1..G_M]": lambda: _gemm.gemm(X.T, G, gW, n),
             "M weight gradients X.T @ G_i": lambda: [_gemm.gemm(X.T, g, o, n) for g, o in zip(Gs, gWs)]}
    t = B.interleaved(cases, repeats=repeats, target_s=5e-3)
    same = all(np.array_equal(out[:, i * h:(i + 1) * h], o) for i, o in enumerate(outs))
    return {k: float(np.median(v)) for k, v in t.items()}, same


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--rows", type=int, default=60000, help="training rows (one epoch each fit)")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=25, help="repetitions of (b) and (c)")
    p.add_argument("--data", default=os.environ.get(datasets.MNIST_ENV) or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))
    args = p.parse_args(argv)
    if args.threads:
        fastwb.set_num_threads(args.threads)
    X, y, Xt, yt, source = data(args.data, args.rows)
    load0 = B.load_average()
    print(f"{B.cpu_name()}, {os.cpu_count()} CPUs, fastwb {fastwb.get_num_threads()} threads, load {load0}")
    print(f"(a) {args.members} members of {'-'.join(map(str, SIZES))} (ReLU, float32, Adam, batch {BATCH}), "
          f"one epoch of {len(X)} rows of {source}, {args.rounds} rounds")
    times, cpu, accuracy = end_to_end(X, y, Xt, yt, args.members, args.rounds)
    for name, v in times.items():
        print(f"  {name:>11}: median {np.median(v):.2f} s (min {v.min():.2f}, max {v.max():.2f}), CPU median "
              f"{np.median(cpu[name]):.2f} s; member test accuracy {', '.join(f'{a:.4f}' for a in accuracy[name])}")
    for what, t in (("wall", times), ("CPU", cpu)):
        ratios = t["independent"] / t["batched"]
        print(f"  independent / batched, {what} time: median {np.median(ratios):.3f} "
              f"(rounds {ratios.min():.3f} .. {ratios.max():.3f})")
    print(f"(b) one step of batch {BATCH}, median seconds (interleaved, {args.repeats} repetitions)")
    parts = breakdown(X, y, args.members, args.repeats)
    for name, s in parts.items():
        print(f"  {name:<44} {s * 1e3:8.3f} ms")
    flops = 2 * BATCH * SIZES[0] * SIZES[1] * 2 + 2 * BATCH * SIZES[1] * SIZES[2] * 3
    rate = B.gemm_rate(1024)
    gem = parts[GEMMS]
    print(f"  the GEMMs alone: {flops / gem / 1e9:.1f} GFLOP/s; NumPy's 1024^3 GEMM here: {rate / 1e9:.1f} GFLOP/s; "
          f"GEMM share of a member's fit step {gem / parts[FIT_STEP]:.0%}")
    print(f"(c) the first layer as one wide GEMM against {args.members} GEMMs (median seconds)")
    wide, same = wide_gemm(args.members, args.repeats)
    for name, s in wide.items():
        print(f"  {name:<44} {s * 1e3:8.3f} ms")
    print(f"  wide forward bit for bit equal to the members' GEMMs: {same}")
    print(f"load average before {load0}, after {B.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
