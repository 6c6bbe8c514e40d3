"""Benchmarks of fastwb.normalization: BatchNorm1d forward+backward against the
NumPy twin and PyTorch, and dropout against the machine's copy bandwidth.

    python bench/bench_norm.py [--quick] [--threads N] [--rounds R]

``cases(dtype)`` returns the in-process contenders (fastwb, its twin, and a
copy for dropout) per workload, built by fastwb/benchmark.py's ``bn_step``,
the same steps ``fastwb bench`` times.  PyTorch shares libgomp with
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


def cases(dtype=np.float32):
    """``{workload: {contender: fn}}`` for fastwb and its NumPy twin."""
    import fastwb.normalization as fast
    import fastwb.reference.normalization as twin
    from fastwb.benchmark import bn_step

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
import json, sys
which, threads = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
if which == "torch":
    import torch
    torch.set_num_threads(threads)
import fastwb
import fastwb.normalization as fast
from fastwb.benchmark import bn_step, median_seconds, torch_bn_step
fastwb.set_num_threads(threads)
import bench_norm as B
out = {}
for n, m in B.BN_SHAPES:
    f = torch_bn_step(n, m) if which == "torch" else bn_step(fast, n, m)
    out[f"{n}x{m}"] = median_seconds(f, 400 if n * m < 1 << 20 else 40)
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
