"""Benchmarks of fastwb.normalization: BatchNorm1d forward+backward against the
NumPy twin and PyTorch, and dropout against the machine's copy bandwidth.

    python bench/bench_norm.py [--quick] [--threads N] [--rounds R]

``cases(dtype)`` returns the in-process contenders (fastwb and its twin) per
workload, for fastwb/benchmark.py to wire in.  PyTorch shares libgomp with
fastwb, so it is timed in fresh processes of its own (``torch_alone``),
alternating with fastwb-alone processes, and the ratio is the median over
rounds of the paired ratios.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

BN_SHAPES = ((128, 256), (4096, 1024))
DROPOUT_N = 1 << 24
DROPOUT_P = 0.2


def _bn_data(n, m, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m)).astype(dtype)
    g = rng.standard_normal((n, m)).astype(dtype)
    gamma = (1 + 0.1 * rng.standard_normal(m)).astype(dtype)
    beta = (0.1 * rng.standard_normal(m)).astype(dtype)
    return x, g, gamma, beta


def bn_step(impl, n, m, dtype=np.float32):
    """One BatchNorm1d forward+backward in training mode (running statistics
    updated) with ``impl`` (fastwb.normalization or its twin), writing into
    preallocated arrays."""
    x, g, gamma, beta = _bn_data(n, m, dtype)
    rm, rv = np.zeros(m, dtype), np.ones(m, dtype)
    y, dx, work = (np.empty((n, m), dtype) for _ in range(3))
    mean, invstd, dgamma, dbeta = (np.empty(m, dtype) for _ in range(4))

    def step():
        _, mu, s = impl.batch_norm(x, gamma, beta, rm, rv, out=y, stats=(mean, invstd))
        impl.batch_norm_backward(g, x, mu, s, gamma, beta, out=(dx, dgamma, dbeta), work=work)
    return step


def torch_bn_step(n, m, dtype=np.float32):
    """PyTorch's BatchNorm1d (training mode) forward and backward on the same data."""
    import torch

    x, g, gamma, beta = _bn_data(n, m, dtype)
    bn = torch.nn.BatchNorm1d(m, dtype=torch.float32 if np.dtype(dtype) == np.float32 else torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(g)

    def step():
        xt.grad = None
        bn.weight.grad = None
        bn.bias.grad = None
        bn(xt).backward(gt)
    return step


def cases(dtype=np.float32):
    """``{workload: {contender: fn}}`` for fastwb and its NumPy twin."""
    import fastwb.normalization as fast
    import fastwb.reference.normalization as twin

    out = {}
    for n, m in BN_SHAPES:
        out[f"BatchNorm1d fwd+bwd {n}x{m}"] = {"fastwb": bn_step(fast, n, m, dtype), "twin": bn_step(twin, n, m, dtype)}
    x = np.random.default_rng(0).standard_normal(DROPOUT_N).astype(dtype)
    y1, y2, y3 = (np.empty_like(x) for _ in range(3))
    out[f"dropout {DROPOUT_N >> 20}M"] = {
        "copy": lambda: np.copyto(y1, x),
        "fastwb": lambda: fast.dropout(x, DROPOUT_P, 1, 2, out=y2),
        "twin": lambda: twin.dropout(x, DROPOUT_P, 1, 2, out=y3),
    }
    return out


_ALONE = r"""
import json, sys, time
import numpy as np
which, threads = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
if which == "torch":
    import torch
    torch.set_num_threads(threads)
import fastwb
fastwb.set_num_threads(threads)
import bench_norm as B
def med(f, reps):
    for _ in range(5):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))
out = {}
for n, m in B.BN_SHAPES:
    import fastwb.normalization as fast
    f = B.torch_bn_step(n, m) if which == "torch" else B.bn_step(fast, n, m)
    out[f"{n}x{m}"] = med(f, 400 if n * m < 1 << 20 else 40)
print(json.dumps(out))
"""


def own_processes(threads, rounds=5):
    """Median over rounds of PyTorch / fastwb, each timed alone in a fresh process."""
    here = os.path.dirname(os.path.abspath(__file__))
    runs = {"torch": [], "fastwb": []}
    for _ in range(rounds):
        for which in ("torch", "fastwb"):
            done = subprocess.run([sys.executable, "-c", _ALONE, which, str(threads), here], capture_output=True,
                                  text=True, timeout=600, cwd=tempfile.gettempdir())
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            runs[which].append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = runs["fastwb"][0]
    return {k: {"torch": float(np.median([r[k] for r in runs["torch"]])),
                "fastwb": float(np.median([r[k] for r in runs["fastwb"]])),
                "ratio": float(np.median([t[k] / f[k] for t, f in zip(runs["torch"], runs["fastwb"])]))}
            for k in keys}


def main(argv=None):
    import fastwb
    from fastwb.benchmark import copy_bandwidth, interleaved, median_ratio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=fastwb.get_num_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    fastwb.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()}")
    reps = 7 if args.quick else 21
    for name, contenders in cases().items():
        t = interleaved(contenders, repeats=reps)
        line = ", ".join(f"{k} {np.median(v) * 1e3:.3f} ms" for k, v in t.items())
        print(f"{name}: {line}; twin/fastwb {median_ratio(t, 'twin', 'fastwb'):.2f}x", end="")
        if "copy" in t:
            print(f"; copy/fastwb {median_ratio(t, 'copy', 'fastwb'):.2f}", end="")
        print()
    bw = copy_bandwidth()
    share = 2 * 4 * DROPOUT_N / max(bw.values())
    t = interleaved({"fastwb": cases()[f"dropout {DROPOUT_N >> 20}M"]["fastwb"]}, repeats=reps)
    print(f"copy bandwidth {', '.join(f'{k} {v / 1e9:.1f} GB/s' for k, v in bw.items())}; dropout 16M f32 at "
          f"{share / float(np.median(t['fastwb'])) * 100:.0f}% of the best copy")
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch not installed: no PyTorch comparison")
            return
        for k, v in own_processes(args.threads, 2 if args.quick else args.rounds).items():
            print(f"BatchNorm1d fwd+bwd {k} (own processes): torch {v['torch'] * 1e6:.0f} us, "
                  f"fastwb {v['fastwb'] * 1e6:.0f} us, torch/fastwb {v['ratio']:.2f}x")


if __name__ == "__main__":
    main()
