"""Measure the compiled core's benchmark targets, side by side.

    python bench/targets.py            # all targets (core kernels, optimizers, pruning)
    python bench/targets.py --only optim  # or core, train
    python bench/targets.py --grain    # also: 1 vs 2 threads by size
    python bench/targets.py --policy   # also: the GEMM/kernel alternation
                                            # under OMP_WAIT_POLICY=ACTIVE

Every figure is a median over interleaved repetitions (fastwb/benchmark.py);
ratios are medians of paired per-repetition ratios.  The machine's copy
bandwidth is the best of NumPy's copy and fastwb's threaded copy.
"""

import argparse
import os
import platform
import subprocess
import sys

import numpy as np

import fastwb
import fastwb.reference as R
from fastwb import _dense
from fastwb.benchmark import (copy_bandwidth, gemm_rate, interleaved, median_ratio, optimizer_contenders, step_gemms,
                              torch_train_step)

ROWS = []


def report(name, value, target, ok):
    ROWS.append((name, value, target, ok))
    print(f"{name:<58} {value:<22} {target:<18} {'ok' if ok else 'MISSED'}", flush=True)


def linear_target(rng):
    x = rng.standard_normal((128, 784)).astype(np.float32)
    W = rng.standard_normal((784, 256)).astype(np.float32) * 0.05
    b = rng.standard_normal(256).astype(np.float32)
    y1, y2, y3 = (np.empty((128, 256), np.float32) for _ in range(3))
    t = interleaved({
        "matmul": lambda: np.matmul(x, W, out=y1),
        "fastwb": lambda: fastwb.linear(x, W, b, "relu", out=y2),
        "twin": lambda: R.linear(x, W, b, "relu", out=y3),
    }, repeats=41)
    r = median_ratio(t, "fastwb", "matmul")
    report("linear+bias+relu 128x784x256 f32 / bare matmul", f"{r:.3f}x ({np.median(t['fastwb'])*1e6:.0f} us)", "<= 1.05x", r <= 1.05)
    r = median_ratio(t, "twin", "fastwb")
    report("linear+bias+relu: twin / fastwb", f"{r:.2f}x faster", "> 1x", r > 1)


def alternation(rng, label="passive (default)"):
    x = rng.standard_normal((128, 784)).astype(np.float32)
    W = rng.standard_normal((784, 256)).astype(np.float32)
    y = np.empty((128, 256), np.float32)
    v = rng.standard_normal(1 << 20).astype(np.float32)
    out = np.empty_like(v)
    assert fastwb.plan_threads(v.size, fastwb._runtime.GRAIN_COMPUTE) == min(2, fastwb.get_num_threads())

    def pair():
        np.matmul(x, W, out=y)
        fastwb.sigmoid(v, out=out)

    t = interleaved({
        "gemm": lambda: np.matmul(x, W, out=y),
        "kernel": lambda: fastwb.sigmoid(v, out=out),
        "pair": pair,
    }, repeats=31)
    r = float(np.median(t["pair"] / (t["gemm"] + t["kernel"])))
    report(f"matmul + 2-thread sigmoid(1M), alternated / sum [{label}]", f"{r:.3f}x", "<= 1.1x", r <= 1.1)
    return r


def cross_entropy_targets(rng):
    for n, c in ((128, 10), (4096, 1000)):
        for dtype in (np.float32, np.float64):
            z = rng.standard_normal((n, c)).astype(dtype)
            labels = rng.integers(0, c, n)
            g1, g2 = np.empty_like(z), np.empty_like(z)
            t = interleaved({
                "fastwb": lambda: fastwb.softmax_cross_entropy(z, labels, out=g1),
                "twin": lambda: R.softmax_cross_entropy(z, labels, out=g2),
            }, repeats=25)
            r = median_ratio(t, "twin", "fastwb")
            report(f"softmax_cross_entropy {n}x{c} {np.dtype(dtype).name}: twin / fastwb",
                   f"{r:.1f}x ({np.median(t['fastwb'])*1e6:.0f} us)", ">= 3x", r >= 3)


def bandwidth_targets(rng, bw):
    n = 1 << 24
    x = rng.standard_normal(n).astype(np.float32)
    y, y2 = np.empty_like(x), np.empty_like(x)
    best = max(bw.values())
    for name in ("relu", "sigmoid", "tanh"):
        t = interleaved({
            "fastwb": lambda: getattr(fastwb, name)(x, out=y),
            "twin": lambda: getattr(R, name)(x, out=y2),
        }, repeats=15)
        rate = 8 * n / float(np.median(t["fastwb"]))
        target = name != "tanh"
        report(f"{name} 16M f32: GB/s, share of best copy ({best/1e9:.1f} GB/s)",
               f"{rate/1e9:.1f} GB/s = {100*rate/best:.0f}%", ">= 80%" if target else "(no target)",
               rate >= 0.8 * best or not target)
        report(f"{name} 16M f32: twin / fastwb", f"{median_ratio(t, 'twin', 'fastwb'):.2f}x", "", True)


def optim_targets(rng, bw):
    best = max(bw.values())
    one_m = optimizer_contenders("Adam", 1 << 20, np.float32, fastwb.get_num_threads(), {"lr": 1e-3})
    t = interleaved({k: one_m[k] for k in ("fastwb", "numpy")}, repeats=25)
    r = median_ratio(t, "numpy", "fastwb")
    report("Adam step 1M f32: twin / fastwb", f"{r:.1f}x ({np.median(t['fastwb'])*1e6:.0f} us)", ">= 8x", r >= 8)
    n = 1 << 24
    for name, kw, nbytes in (("Adam", {"lr": 1e-3}, 28), ("SGD", {"lr": 1e-3, "momentum": 0.9}, 20)):
        t = interleaved(optimizer_contenders(name, n, np.float32, fastwb.get_num_threads(), kw), repeats=9)
        rate = nbytes * n / float(np.median(t["fastwb"]))
        label = "Adam" if name == "Adam" else "SGD momentum"
        report(f"{label} step 16M f32: GB/s at {nbytes} B/elem, share of copy", f"{rate/1e9:.1f} GB/s = {100*rate/best:.0f}%",
               ">= 70%", rate >= 0.7 * best)
        report(f"{label} step 16M f32: twin / fastwb", f"{median_ratio(t, 'numpy', 'fastwb'):.1f}x", "", True)
        if "torch" in t:
            report(f"{label} step 16M f32: torch ({'fused' if name == 'Adam' else 'foreach'}) / fastwb",
                   f"{median_ratio(t, 'torch', 'fastwb'):.2f}x", "(info)", True)
    w = (rng.standard_normal(n) * 0.1).astype(np.float32)
    t = interleaved({"fastwb": lambda: fastwb.prune_weights(w, 90), "twin": lambda: R.prune_weights(w, 90)}, repeats=7)
    r = median_ratio(t, "twin", "fastwb")
    report("prune_weights 16M f32 p90: twin / fastwb", f"{r:.1f}x ({np.median(t['fastwb'])*1e3:.1f} ms)", ">= 5x", r >= 5)


def training_targets(rng):
    for sizes, batch, twin_ok in (([784, 256, 10], 128, True), ([16, 32, 32, 4], 32, False)):
        name = "-".join(map(str, sizes)) + f" batch {batch}"
        X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch)
        model = fastwb.MLP(sizes, rng=0)
        contenders = {"fastwb": lambda: model.train_step(X, y), "gemms": step_gemms(sizes, batch)}
        if twin_ok:
            twin = R.MNISTClassifier(sizes[0], sizes[1], sizes[2], dtype=np.float32, rng=0)
            contenders["twin"] = lambda: twin.train_step(X, y)
        torch_step = torch_train_step(sizes, batch, np.float32, fastwb.get_num_threads())
        if torch_step is not None:
            contenders["torch"] = torch_step
        # batches of ~30 ms: consecutive steps, as in training, keep each
        # contender's parameters and optimizer state warm in cache
        t = interleaved(contenders, repeats=25, target_s=0.03)
        fast = np.median(t["fastwb"]) * 1e6
        if twin_ok:
            r = median_ratio(t, "twin", "fastwb")
            report(f"train step {name} f32: twin / fastwb", f"{r:.2f}x ({fast:.0f} us)", ">= 1.5x", r >= 1.5)
            r = median_ratio(t, "fastwb", "gemms")
            report(f"train step {name}: fastwb / its GEMMs alone", f"{r:.3f}x ({np.median(t['gemms'])*1e6:.0f} us)",
                   "<= 1.25x", r <= 1.25)
        if "torch" in t:
            r = median_ratio(t, "torch", "fastwb")
            need = 1.0 if twin_ok else 10.0
            report(f"train step {name} f32: torch (fused Adam) / fastwb", f"{r:.2f}x ({fast:.0f} us)",
                   f">= {need:g}x", r >= need)


def grain_sweep(rng):
    print("\n1 vs 2 threads (median us per call), float32, serial-threshold calibration")
    for n in (1 << 14, 1 << 16, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 22):
        x = rng.standard_normal(n).astype(np.float32)
        y = np.empty_like(x)
        cells = []
        for code in (1, 3):
            t = interleaved({nt: (lambda nt=nt: _dense.act_flat(x, y, code, 0.0, nt)) for nt in (1, 2)}, repeats=15)
            cells.append(f"{np.median(t[1])*1e6:9.1f} {np.median(t[2])*1e6:9.1f}")
        print(f"  n={n:>8}  relu 1t/2t {cells[0]}   sigmoid 1t/2t {cells[1]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grain", action="store_true", help="also sweep 1 vs 2 threads by size")
    parser.add_argument("--policy", action="store_true", help="also run the alternation under OMP_WAIT_POLICY=ACTIVE")
    parser.add_argument("--only", choices=["core", "optim", "train"], help="run one group of targets")
    parser.add_argument("--alternation-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.alternation_only:
        print(alternation(rng, os.environ.get("OMP_WAIT_POLICY", "default")))
        return
    cfg = fastwb._runtime.config()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.processor() or platform.platform()}")
    print(f"fastwb {cfg['version']}, numpy {cfg['numpy']}, threads {cfg['num_threads']}, "
          f"BLAS {cfg['blas'].get('internal_api')} {cfg['blas'].get('version')}, wait policy: {cfg['wait_policy']}")
    bw = copy_bandwidth()
    print(f"copy bandwidth: numpy {bw['numpy']/1e9:.1f} GB/s, fastwb {fastwb.get_num_threads()} threads "
          f"{bw['threads']/1e9:.1f} GB/s; GEMM 2048^3: f32 {gemm_rate()/1e9:.0f} GFLOP/s, "
          f"f64 {gemm_rate(dtype=np.float64)/1e9:.0f} GFLOP/s\n")
    print(f"{'measure':<58} {'result':<22} {'target':<18}")
    if args.only in (None, "core"):
        linear_target(rng)
        alternation(rng)
        if args.policy:
            env = dict(os.environ, OMP_WAIT_POLICY="ACTIVE")
            out = subprocess.run([sys.executable, __file__, "--alternation-only"], env=env, capture_output=True,
                                 text=True)
            print("  under OMP_WAIT_POLICY=ACTIVE (for comparison):",
                  out.stdout.strip().splitlines()[-1] if out.stdout else out.stderr)
        cross_entropy_targets(rng)
        bandwidth_targets(rng, bw)
    if args.only in (None, "optim"):
        optim_targets(rng, bw)
    if args.only in (None, "train"):
        training_targets(rng)
    if args.grain:
        grain_sweep(rng)
    missed = [r[0] for r in ROWS if not r[3]]
    print(f"\n{len(ROWS) - len(missed)} of {len(ROWS)} rows meet their target" + (f"; missed: {missed}" if missed else ""))


if __name__ == "__main__":
    main()
