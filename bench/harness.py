"""Side-by-side timing: interleaved repetitions and paired median ratios.

On a shared, noisy machine two implementations timed one after the other see
different noise.  Here every repetition times each contender once, in turn,
and the ratio is taken within the repetition; the reported figure is the
median of those paired ratios (and the median time of each contender).

The order rotates with every repetition, so that no contender always runs
right after the same other one: PyTorch's OpenMP threads keep spinning for a
while after each of its steps, and whoever comes next would otherwise always
pay for it.
"""

import time

import numpy as np


def calls_per_batch(fn, target_s=2e-3):
    """How many calls make one timed batch of about target_s seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(target_s / dt))


def interleaved(contenders, repeats=25, target_s=2e-3):
    """Time each callable of ``{name: fn}`` once per repetition, in turn.

    Returns ``{name: array of seconds per call, one entry per repetition}``.
    """
    batch = {name: calls_per_batch(fn, target_s) for name, fn in contenders.items()}
    times = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            fn = contenders[name]
            k = batch[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - t0) / k)
    return {name: np.array(v) for name, v in times.items()}


def median_ratio(times, num, den):
    """Median over repetitions of times[num] / times[den] (paired)."""
    return float(np.median(times[num] / times[den]))


def copy_bandwidth(n=1 << 24, dtype=np.float32, repeats=15):
    """Best measured copy bandwidth in bytes/s: NumPy's copy and fastwb's threaded copy.

    Each copy moves 2 * itemsize bytes per element (read + write)."""
    from fastwb import _dense
    from fastwb._runtime import get_num_threads

    x = np.ones(n, dtype)
    y = np.zeros(n, dtype)
    t = interleaved({
        "numpy": lambda: np.copyto(y, x),
        "threads": lambda: _dense.act_flat(x, y, 0, 0.0, get_num_threads()),
    }, repeats=repeats)
    moved = 2 * x.nbytes
    return {name: moved / float(np.median(v)) for name, v in t.items()}


def gemm_rate(n=2048, dtype=np.float32, repeats=5):
    """NumPy's large-GEMM rate in FLOP/s (2 n^3 flops per n x n product)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    c = np.empty_like(a)
    t = interleaved({"gemm": lambda: np.matmul(a, a, out=c)}, repeats=repeats, target_s=0)
    return 2.0 * n ** 3 / float(np.median(t["gemm"]))


def torch_train_step(sizes, batch, dtype=np.float32, n_threads=None):
    """A PyTorch CPU training step of the same MLP (ReLU hidden layers, softmax
    cross-entropy, Adam with fused=True) at ``n_threads`` threads; None when
    PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    if n_threads:
        torch.set_num_threads(n_threads)
    tdtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, dtype=tdtype))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, sizes[0], dtype=tdtype)
    y = torch.randint(0, sizes[-1], (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
    return step
