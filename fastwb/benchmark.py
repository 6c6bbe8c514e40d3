"""Side-by-side benchmarks of fastwb against its NumPy twin and PyTorch CPU.

``fastwb bench`` (see :func:`main`) first measures the machine (copy
bandwidth, large-GEMM rate per dtype), then times every comparison
interleaved: each repetition runs every contender once, in an order that
rotates between repetitions (PyTorch's OpenMP threads keep spinning after its
calls and would otherwise always slow the same neighbour), and ratios are
medians of the per-repetition ratios.  It prints one report (:func:`text_report`):
the machine and its load, one table (median time per implementation,
speedups, and the fraction of the machine limit reached: GB/s for
memory-bound kernels against the in-place stream bandwidth, GFLOP/s for
GEMM-bound steps against the large-GEMM rate), what its columns mean, the
targets, time against thread count and cost against problem size, and
warnings when the run-to-run spread is too large to trust.  It can write the
same as JSON, a PNG figure and BENCHMARKS.md (each file atomically).

PyTorch runs at fastwb's thread count.  Caveat, measured on the development
machine: PyTorch's CPU wheel uses the system OpenMP runtime, the same library
as fastwb, so one wait policy governs both.  Here fastwb loads the runtime
first, with passive waiting, which slows PyTorch's many small parallel
regions: its 784-256-10 training step took 2.6 ms in this process and
1.35 ms in a process of its own (tiny MLP: 2.1 ms vs 0.56 ms).  Importing
PyTorch first instead leaves the runtime spinning and PyTorch's MKL threads
fighting NumPy's OpenBLAS threads, which slows everyone.  The report states
the policy in force, and where a workload is also timed with PyTorch and
fastwb each in a process of its own, that ratio is the one the table, the
targets and the figure show (:func:`merge_own_processes`): one number per
workload and contender.
"""

import json
import os
import platform
import sys
import time

import numpy as np

__all__ = ["interleaved", "median_ratio", "copy_bandwidth", "stream_bandwidth", "gemm_rate", "torch_train_step",
           "step_gemms", "optimizer_contenders", "run", "merge_own_processes", "text_report", "markdown",
           "write_files", "main"]


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def calls_per_batch(fn, target_s=2e-3):
    """How many calls make one timed batch of about target_s seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(target_s / dt))


def interleaved(contenders, repeats=25, target_s=2e-3):
    """Time each callable of ``{name: fn}`` once per repetition, in rotating order.

    Returns ``{name: array of seconds per call, one entry per repetition}``."""
    batch = {name: calls_per_batch(fn, target_s) for name, fn in contenders.items()}
    times = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            fn, k = contenders[name], batch[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - t0) / k)
    return {name: np.array(v) for name, v in times.items()}


def median_ratio(times, num, den):
    """Median over repetitions of times[num] / times[den] (paired)."""
    return float(np.median(times[num] / times[den]))


# ---------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------

def copy_bandwidth(n=1 << 24, dtype=np.float32, repeats=15):
    """Copy bandwidth in bytes/s of NumPy's copy and of fastwb's threaded copy
    (2 * itemsize bytes moved per element)."""
    from fastwb import _dense
    from fastwb._runtime import get_num_threads

    x = np.ones(n, dtype)
    y = np.zeros(n, dtype)
    t = interleaved({"numpy": lambda: np.copyto(y, x),
                     "threads": lambda: _dense.act_flat(x, y, 0, 0.0, get_num_threads())}, repeats=repeats)
    return {name: 2 * x.nbytes / float(np.median(v)) for name, v in t.items()}


def stream_bandwidth(n=1 << 24, dtype=np.float32, repeats=15):
    """In-place read+write bandwidth in bytes/s: fastwb's threaded pass
    ``x = relu(x)`` over positive data (2 * itemsize bytes moved per element).

    This is the memory limit of the report: an in-place update reads each
    cache line and writes it back, with no write-allocate read, so it moves
    exactly the bytes it is charged for.  A copy into another array also
    reads every destination line before writing it (write-allocate), so it
    moves three bytes for every two a plain count charges it."""
    from fastwb import _dense
    from fastwb._runtime import get_num_threads

    x = np.ones(n, dtype)
    t = interleaved({"stream": lambda: _dense.act_flat(x, x, 1, 0.0, get_num_threads())}, repeats=repeats)
    return 2 * x.nbytes / float(np.median(t["stream"]))


def last_level_cache():
    """Size in bytes of the largest CPU cache (Linux sysfs), or None when unknown."""
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(base, name, "size")) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KMGkmg")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def load_average():
    """The 1-minute load average, or None where the system has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def gemm_rate(n=2048, dtype=np.float32, repeats=5):
    """NumPy's large-GEMM rate in FLOP/s (2 n^3 flops per n x n product)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    c = np.empty_like(a)
    t = interleaved({"gemm": lambda: np.matmul(a, a, out=c)}, repeats=repeats, target_s=0)
    return 2.0 * n ** 3 / float(np.median(t["gemm"]))


def machine(quick=False):
    """Machine description and limits: cores, CPU, in-place stream and copy
    bandwidth, GEMM rates, last-level cache size."""
    import fastwb

    cfg = fastwb._runtime.config()
    # 16M elements even in quick mode: smaller arrays would measure the caches
    bw = copy_bandwidth(1 << 24, repeats=7 if quick else 15)
    stream = stream_bandwidth(1 << 24, repeats=7 if quick else 15)
    gemm_n = 1024 if quick else 2048
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "fastwb": cfg["version"], "threads": fastwb.get_num_threads(),
        "blas": cfg["blas"], "openmp_runtime": cfg["openmp_runtime"], "wait_policy": cfg["wait_policy"],
        "torch": _torch_version(), "copy_GBps": {k: v / 1e9 for k, v in bw.items()},
        "best_copy_GBps": max(bw.values()) / 1e9, "stream_GBps": stream / 1e9, "llc_bytes": last_level_cache(),
        "gemm_GFLOPs": {"float32": gemm_rate(gemm_n, np.float32) / 1e9, "float64": gemm_rate(gemm_n, np.float64) / 1e9},
    }


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_version():
    torch = _torch()
    return torch.__version__ if torch is not None else None


# ---------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------

def torch_train_step(sizes, batch, dtype=np.float32, n_threads=None, X=None, y=None):
    """A PyTorch CPU training step of the same MLP (ReLU hidden layers, softmax
    cross-entropy, Adam with fused=True) on a random batch, or on (X, y) when
    given; None when PyTorch is not installed."""
    torch = _torch()
    if torch is None:
        return None
    if n_threads:
        torch.set_num_threads(n_threads)
    torch.manual_seed(0)
    tdtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, dtype=tdtype))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    if X is None:
        x, y = torch.randn(batch, sizes[0], dtype=tdtype), torch.randint(0, sizes[-1], (batch,))
    else:
        x, y = torch.from_numpy(np.asarray(X, dtype)), torch.from_numpy(np.asarray(y, np.int64))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
    return step


def optimizer_contenders(name, n, dtype, threads, kw):
    """fastwb, NumPy twin and (when installed) PyTorch steps of optimizer ``name`` on n parameters."""
    from fastwb import optim
    from fastwb.reference import optim as ropt

    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 0.01).astype(dtype)
    fast = getattr(optim, name)([p.copy()], **kw)
    twin = getattr(ropt, name)([p.copy()], **kw)
    out = {"fastwb": lambda: fast.step([g]), "numpy": lambda: twin.step([g])}
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
        tp = torch.tensor(p, requires_grad=True)
        tp.grad = torch.tensor(g)
        topt = (getattr(torch.optim, name)([tp], fused=True, **kw) if name in ("Adam", "AdamW")
                else getattr(torch.optim, name)([tp], foreach=True, **kw))
        out["torch"] = topt.step
    return out


def _linear_case(act, dtype, threads, backward):
    import fastwb
    import fastwb.reference as R

    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 784)).astype(dtype)
    W = (rng.standard_normal((784, 256)) * 0.05).astype(dtype)
    b = rng.standard_normal(256).astype(dtype)
    y = np.empty((128, 256), dtype)
    g = rng.standard_normal((128, 256)).astype(dtype)
    outs = (np.empty_like(x), np.empty_like(W), np.empty(256, dtype))
    work = np.empty_like(y)

    def make(mod):
        if not backward:
            return lambda: mod.linear(x, W, b, act, 0.01, y)

        def fb():
            out = mod.linear(x, W, b, act, 0.01, y)
            mod.linear_backward(g, out, x, W, act, 0.01, True, outs, work)
        return fb
    out = {"fastwb": make(fastwb), "numpy": make(R)}
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
        F = torch.nn.functional
        fn = {"identity": lambda z: z, "relu": F.relu, "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
              "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act]
        tx = torch.tensor(x, requires_grad=backward)
        tW = torch.tensor(W.T.copy(), requires_grad=backward)
        tb = torch.tensor(b, requires_grad=backward)
        tg = torch.tensor(g)

        def tstep():
            z = fn(F.linear(tx, tW, tb))
            if backward:
                tx.grad = tW.grad = tb.grad = None
                z.backward(tg)
        out["torch"] = tstep
    return out


def _xent_case(n, c, dtype, threads):
    import fastwb
    import fastwb.reference as R

    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    g1, g2 = np.empty_like(z), np.empty_like(z)
    out = {"fastwb": lambda: fastwb.softmax_cross_entropy(z, labels, g1),
           "numpy": lambda: R.softmax_cross_entropy(z, labels, g2)}
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
        tz, tl = torch.tensor(z, requires_grad=True), torch.tensor(labels)

        def tstep():
            tz.grad = None
            torch.nn.functional.cross_entropy(tz, tl).backward()
        out["torch"] = tstep
    return out


def _prune_case(n, dtype, threads, exact):
    import fastwb
    import fastwb.reference as R

    w = (np.random.default_rng(0).standard_normal(n) * 0.1).astype(dtype)
    if exact:
        out = {"fastwb": lambda: fastwb.prune.l1_unstructured(w, 0.9),
               "numpy": lambda: R.prune.l1_unstructured(w, 0.9)}
    else:
        out = {"fastwb": lambda: fastwb.prune_weights(w, 90), "numpy": lambda: R.prune_weights(w, 90)}
    torch = _torch()
    if torch is not None:
        from torch.nn.utils.prune import L1Unstructured

        torch.set_num_threads(threads)
        t = torch.tensor(w)
        ones = torch.ones_like(t)
        method = L1Unstructured(0.9)
        out["torch"] = lambda: method.compute_mask(t, ones)
    return out


def _elementwise_case(name, n, dtype, threads):
    import fastwb
    import fastwb.reference as R

    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    y1, y2 = np.empty_like(x), np.empty_like(x)
    out = {"fastwb": lambda: getattr(fastwb, name)(x, out=y1), "numpy": lambda: getattr(R, name)(x, out=y2)}
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
        tx, ty = torch.tensor(x), torch.empty(n, dtype=torch.float32 if np.dtype(dtype) == np.float32 else torch.float64)
        if name == "relu":     # torch.relu has no out=; clamp_min is the same operation
            out["torch"] = lambda: torch.clamp_min(tx, 0.0, out=ty)
        else:
            fn = getattr(torch, name)
            out["torch"] = lambda: fn(tx, out=ty)
    return out


def _train_case(sizes, batch, dtype, threads):
    import fastwb
    import fastwb.reference as R

    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    model = fastwb.MLP(sizes, dtype=dtype, rng=0)
    out = {"fastwb": lambda: model.train_step(X, y), "gemms": step_gemms(sizes, batch, dtype)}
    if len(sizes) == 3:
        twin = R.MNISTClassifier(*sizes, dtype=dtype, rng=0)
        out["numpy"] = lambda: twin.train_step(X, y)
    step = torch_train_step(sizes, batch, dtype, threads)
    if step is not None:
        out["torch"] = step
    return out


def _bn_data(n, m, dtype):
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((n, m)).astype(dtype) for _ in range(2))


def bn_step(impl, n, m, dtype=np.float32):
    """One BatchNorm1d forward + backward (training, gamma 1, beta 0) on an (n, m)
    batch with ``impl`` (fastwb.normalization or its twin), into preallocated arrays."""
    x, g = _bn_data(n, m, dtype)
    gamma, beta = np.ones(m, dtype), np.zeros(m, dtype)
    y, gx = np.empty_like(x), np.empty_like(x)
    mean, invstd, gg, gb = (np.empty(m, dtype) for _ in range(4))

    def step():
        impl.batch_norm(x, gamma, beta, out=y, stats=(mean, invstd))
        impl.batch_norm_backward(g, x, mean, invstd, gamma, beta, out=(gx, gg, gb))
    return step


def torch_bn_step(n, m, dtype=np.float32):
    """The same in PyTorch's BatchNorm1d; None without PyTorch."""
    torch = _torch()
    if torch is None:
        return None
    x, g = _bn_data(n, m, dtype)
    bn = torch.nn.BatchNorm1d(m, dtype=torch.float32 if np.dtype(dtype) == np.float32 else torch.float64)
    tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(g)

    def step():
        tx.grad = None
        bn.zero_grad(set_to_none=True)
        bn(tx).backward(tg)
    return step


def _bn_case(n, m, dtype, threads):
    """BatchNorm1d forward + backward (training) on an (n, m) batch."""
    import fastwb.normalization as fast
    import fastwb.reference.normalization as twin

    out = {"fastwb": bn_step(fast, n, m, dtype), "numpy": bn_step(twin, n, m, dtype)}
    step = torch_bn_step(n, m, dtype)
    if step is not None:
        _torch().set_num_threads(threads)
        out["torch"] = step
    return out


def _dropout_case(n, p, dtype, threads):
    import fastwb.normalization as fast
    import fastwb.reference.normalization as twin

    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    y1, y2 = np.empty_like(x), np.empty_like(x)
    out = {"fastwb": lambda: fast.dropout(x, p, 0, 1, out=y1), "numpy": lambda: twin.dropout(x, p, 0, 1, out=y2)}
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
        tx = torch.tensor(x)
        out["torch"] = lambda: torch.nn.functional.dropout(tx, p, training=True)
    return out


BN_MODEL = [784, 256, 10]          # hidden layers: Linear -> BatchNorm1d -> ReLU -> Dropout(0.2)
BN_TINY = [16, 32, 32, 4]          # hidden layers: Linear -> BatchNorm1d -> ReLU


def bn_model(dtype=np.float32, sizes=BN_MODEL, p=0.2):
    """issue 9's BatchNorm models in fastwb.nn: every hidden layer Linear ->
    BatchNorm1d -> ReLU [-> Dropout(p)], a Linear output, Adam lr 1e-3."""
    from fastwb import nn

    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()] + ([nn.Dropout(p)] if p else [])
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers, dtype=dtype, rng=0).compile("adam", lr=1e-3)


def torch_bn_model_step(batch, dtype=np.float32, X=None, y=None, sizes=BN_MODEL, p=0.2):
    """The same model and step in PyTorch (fused Adam); None without PyTorch."""
    torch = _torch()
    if torch is None:
        return None
    torch.manual_seed(0)
    tdtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
    t = torch.nn
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [t.Linear(n_in, n_out, dtype=tdtype), t.BatchNorm1d(n_out, dtype=tdtype), t.ReLU()]
        layers += [t.Dropout(p)] if p else []
    net = t.Sequential(*layers, t.Linear(sizes[-2], sizes[-1], dtype=tdtype))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype) if X is None else X
    y = rng.integers(0, sizes[-1], batch) if y is None else y
    x, labels = torch.from_numpy(X), torch.from_numpy(np.asarray(y, np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), labels).backward()
        opt.step()
    return step


def _bn_train_case(batch, dtype, threads, sizes=BN_MODEL, p=0.2):
    from fastwb.reference import nn as rnn

    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    model = bn_model(dtype, sizes, p)
    twin = rnn.Sequential(model.layers, model.state_dict(), model.seed).compile("adam", lr=1e-3)
    out = {"fastwb": lambda: model.train_step(X, y), "numpy": lambda: twin.train_step(X, y),
           "gemms": step_gemms(sizes, batch, dtype)}
    step = torch_bn_model_step(batch, dtype, X, y, sizes, p)
    if step is not None:
        torch = _torch()
        torch.set_num_threads(threads)
        out["torch"] = step
    return out


def step_gemms(sizes, batch, dtype=np.float32):
    """The GEMMs one training step of the MLP makes, alone: the yardstick of its cost."""
    rng = np.random.default_rng(1)
    acts = [rng.standard_normal((batch, n)).astype(dtype) for n in sizes]
    Ws = [rng.standard_normal((a, b)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    gWs = [np.empty_like(W) for W in Ws]
    outs = [np.empty((batch, n), dtype) for n in sizes]

    def run():
        for l, W in enumerate(Ws):
            np.matmul(acts[l], W, out=outs[l + 1])
        for l in range(len(Ws) - 1, -1, -1):
            np.matmul(acts[l].T, acts[l + 1], out=gWs[l])
            if l:
                np.matmul(acts[l + 1], Ws[l].T, out=outs[l])
    return run


def _train_flops(sizes, batch):
    """FLOPs of a training step's GEMMs: forward 2*b*i*o per layer, backward twice that
    (less the first layer's input gradient)."""
    f = sum(2 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 3 * f - 2 * batch * sizes[0] * sizes[1]


def cases(quick, dtypes):
    """The comparisons: (name, dtype, builder(threads) -> contenders, limit kind, work per call).

    Work is FLOPs for GEMM-bound steps and, for memory-bound kernels, the
    bytes one call moves: bytes read plus bytes written, where a write to an
    array the call does not read costs twice (the CPU reads each line before
    writing it: write-allocate).  In-place updates (the optimizers) read
    every line they write, so they pay no such read.  Counted this way, a
    kernel as fast as memory allows reaches the in-place stream bandwidth
    (:func:`stream_bandwidth`), in place or not."""
    big = 1 << (20 if quick else 24)
    out = []
    for dt in dtypes:
        size = np.dtype(dt).itemsize
        for name, kw, nbytes in (("Adam", {"lr": 1e-3}, 7), ("AdamW", {"lr": 1e-3}, 7),
                                 ("SGD", {"lr": 1e-3, "momentum": 0.9}, 5), ("RMSprop", {"lr": 1e-3}, 5)):
            label = "SGD-momentum" if name == "SGD" else name
            out.append((f"{label} step {big >> 20}M", dt, lambda t, n=name, k=kw, d=dt: optimizer_contenders(n, big, d, t, k),
                        "GB/s", nbytes * size * big))
        for fn in ("relu", "sigmoid", "tanh"):
            out.append((f"{fn} {big >> 20}M", dt, lambda t, f=fn, d=dt: _elementwise_case(f, big, d, t), "GB/s",
                        3 * size * big))
        for act in ("identity", "relu", "leaky_relu", "sigmoid", "tanh"):
            for backward in (False, True):
                label = f"linear {'fwd+bwd' if backward else 'fwd'} {act} 128x784x256"
                flops = 2 * 128 * 784 * 256 * (3 if backward else 1)
                out.append((label, dt, lambda t, a=act, d=dt, bw=backward: _linear_case(a, d, t, bw), "GFLOP/s", flops))
        for n, c in ((128, 10), (4096, 1000)):
            out.append((f"softmax CE fwd+bwd {n}x{c}", dt, lambda t, n=n, c=c, d=dt: _xent_case(n, c, d, t),
                        "GB/s", 3 * n * c * size))
        # nominal traffic of one pass (read w; write new pruned weights and a byte mask / the mask)
        out.append((f"prune_weights p90 {big >> 20}M", dt, lambda t, d=dt: _prune_case(big, d, t, False), "GB/s",
                    (3 * size + 2) * big))
        out.append((f"exact-k prune 90% {big >> 20}M", dt, lambda t, d=dt: _prune_case(big, d, t, True), "GB/s",
                    (size + 2) * big))
        for n, m in ((128, 256), (4096, 1024)):
            # stats: read x; apply: read x, write y; backward: read g and x, write work, read it and x, write gx
            out.append((f"BatchNorm1d fwd+bwd {n}x{m}", dt, lambda t, n=n, m=m, d=dt: _bn_case(n, m, d, t), "GB/s",
                        11 * n * m * size))
        out.append((f"dropout p0.2 {big >> 20}M", dt, lambda t, d=dt: _dropout_case(big, 0.2, d, t), "GB/s",
                    3 * size * big))
        out.append(("train step 784-256bn-10 b128", dt, lambda t, d=dt: _bn_train_case(128, d, t), "GFLOP/s",
                    _train_flops(BN_MODEL, 128)))
        out.append(("train step 16-32bn-32bn-4 b32", dt, lambda t, d=dt: _bn_train_case(32, d, t, BN_TINY, 0.0),
                    "GFLOP/s", _train_flops(BN_TINY, 32)))
        models = [([784, 256, 10], 128), ([16, 32, 32, 4], 32)]
        if not quick and np.dtype(dt) == np.float32:
            models.append(([4096, 4096, 4096, 10], 512))
        for sizes, batch in models:
            out.append((f"train step {'-'.join(map(str, sizes))} b{batch}", dt,
                        lambda t, s=sizes, b=batch, d=dt: _train_case(s, b, d, t), "GFLOP/s", _train_flops(sizes, batch)))
    return out


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------

def median_seconds(fn, reps, warmup=5):
    """Median wall time of ``reps`` calls of fn after ``warmup`` untimed ones (the
    own-process scripts' timer)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


SPREAD_LIMIT = 0.2
"""Two medians of the same comparison that differ by more than this (relative)
make the comparison unstable: the report says so."""


def halves_spread(times, num, den):
    """How far apart the median paired ratio times[num] / times[den] is over
    the first and over the second half of the repetitions: |a - b| / min(a, b)
    (0 with fewer than two repetitions).  Load that comes or goes during a
    comparison shows up here."""
    r = np.asarray(times[num]) / np.asarray(times[den])
    h = len(r) // 2
    if h == 0:
        return 0.0
    a, b = float(np.median(r[:h])), float(np.median(r[h:]))
    return abs(a - b) / min(a, b)


def run(quick=False, threads=None, dtypes=("float32",), name_filter=None, progress=True):
    """Run the comparisons; returns the report dict (machine, results, scaling).

    The 1-minute load average is recorded before and after the run; every
    result carries ``spread`` (:func:`halves_spread`, the largest over its
    contenders); PyTorch figures timed in processes of their own replace the
    in-process ones (:func:`merge_own_processes`)."""
    import fastwb

    load_before = load_average()
    if threads:
        fastwb.set_num_threads(threads)
    threads = fastwb.get_num_threads()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    say("measuring the machine ...")
    info = machine(quick)
    results = []
    todo = [c for c in cases(quick, dtypes) if not name_filter or name_filter.lower() in c[0].lower()]
    for i, (name, dt, build, kind, work) in enumerate(todo):
        say(f"[{i + 1}/{len(todo)}] {name} {dt}")
        contenders = build(threads)
        # repetitions within a time budget per comparison (a slow twin sets the pace)
        one = sum(_once(fn) for fn in contenders.values())
        repeats = int(np.clip((4.0 if quick else 20.0) / max(one, 1e-9), 3, 7 if quick else 15))
        t = interleaved(contenders, repeats=repeats, target_s=2e-3 if quick else 1e-2)
        med = {k: float(np.median(v)) for k, v in t.items()}
        rate = work / med["fastwb"] / 1e9
        limit = info["stream_GBps"] if kind == "GB/s" else info["gemm_GFLOPs"][dt]
        others = [k for k in t if k != "fastwb"]
        llc = info.get("llc_bytes")
        results.append({
            "name": name, "dtype": dt, "median_s": med,
            "speedup": {k: median_ratio(t, k, "fastwb") for k in others},
            "rate": rate, "unit": kind, "fraction_of_limit": rate / limit,
            "spread": max([halves_spread(t, k, "fastwb") for k in others], default=0.0),
            "fits_in_cache": bool(kind == "GB/s" and llc and work <= llc),
        })
    scaling = size_scaling(quick, say) if not name_filter else {}
    thread_curve = thread_scaling(quick, say) if not name_filter else {}
    alone = own_processes(quick, threads, say) if not name_filter else None
    over_time = decay(quick, threads, say) if not name_filter or "decay" in name_filter.lower() else None
    report = {"machine": info, "threads": threads, "quick": quick, "results": results, "size_scaling": scaling,
              "thread_scaling": thread_curve, "own_processes": alone, "decay": over_time,
              "load": {"before": load_before, "after": load_average(), "cores": os.cpu_count() or 1},
              "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    return merge_own_processes(report)


def merge_own_processes(report):
    """One PyTorch figure per workload: where a workload was also timed with
    PyTorch and fastwb each alone in a process of its own (float32), that
    ratio (the fair one: see the module docstring) replaces the in-process
    one in ``speedup["torch"]`` and PyTorch's own-process time replaces
    ``median_s["torch"]``; the in-process figures move to
    ``torch_in_process``, and ``torch_measured`` says which is shown
    ("own process" or "in process").  Returns the report, changed in place."""
    alone = report.get("own_processes") or {}
    ratios = alone.get("ratio", {})
    for r in report["results"]:
        if r["name"] in ratios and r["dtype"] == "float32" and r.get("torch_measured") != "own process":
            if "torch" in r["speedup"]:
                r["torch_in_process"] = {"median_s": r["median_s"]["torch"], "speedup": r["speedup"]["torch"]}
            r["median_s"]["torch"] = alone["torch"][r["name"]]
            r["speedup"]["torch"] = ratios[r["name"]]
            r["torch_measured"] = "own process"
        elif "torch" in r["speedup"]:
            r["torch_measured"] = r.get("torch_measured", "in process")
    return report


def size_scaling(quick, say):
    """Seconds per call of a few kernels from 1K to 64M elements (to 1M in quick mode)."""
    import fastwb
    from fastwb import optim

    top = 20 if quick else 26
    sizes = [1 << k for k in range(10, top + 1, 2)]
    curves = {"Adam step": [], "SGD-momentum step": [], "relu": [], "sigmoid": [], "prune_weights p90": []}
    for n in sizes:
        say(f"scaling: {n} elements")
        rng = np.random.default_rng(0)
        x = rng.standard_normal(n).astype(np.float32)
        g = (x * 0.01).astype(np.float32)
        y = np.empty_like(x)
        adam, sgd = optim.Adam([x.copy()]), optim.SGD([x.copy()], momentum=0.9)
        fns = {"Adam step": lambda: adam.step([g]), "SGD-momentum step": lambda: sgd.step([g]),
               "relu": lambda: fastwb.relu(x, out=y), "sigmoid": lambda: fastwb.sigmoid(x, out=y),
               "prune_weights p90": lambda: fastwb.prune_weights(x, 90)}
        t = interleaved(fns, repeats=3 if quick else 5)
        for k, v in t.items():
            curves[k].append(float(np.median(v)))
    return {"sizes": sizes, "seconds": curves}


def thread_scaling(quick, say):
    """Seconds per call at 1, 2, 4, ... threads up to this machine's cores."""
    import fastwb

    cores = os.cpu_count() or 1
    counts = [t for t in (1, 2, 4, 8, 16) if t <= cores]
    n = 1 << (20 if quick else 24)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    y = np.empty_like(x)
    from fastwb import optim

    adam = optim.Adam([x.copy()])
    g = x * 0.01
    X = rng.standard_normal((128, 784)).astype(np.float32)
    labels = rng.integers(0, 10, 128)
    model = fastwb.MLP([784, 256, 10], rng=0)
    work = {f"Adam step {n >> 20}M": lambda: adam.step([g]), f"sigmoid {n >> 20}M": lambda: fastwb.sigmoid(x, out=y),
            "train step 784-256-10 b128": lambda: model.train_step(X, labels)}
    before = fastwb.get_num_threads()

    def at(t, fn):
        def call():
            fastwb.set_num_threads(t)
            fn()
        return call

    # every (workload, thread count) pair is one contender, so all are interleaved
    say(f"thread scaling at {counts} threads")
    times = interleaved({(k, t): at(t, fn) for k, fn in work.items() for t in counts}, repeats=3 if quick else 7)
    fastwb.set_num_threads(before)
    curves = {k: [float(np.median(times[(k, t)])) for t in counts] for k in work}
    return {"threads": counts, "seconds": curves, "cores": cores}


_ALONE = r"""
import json, sys
import numpy as np
which, quick = sys.argv[1], sys.argv[2] == "1"
if which == "torch":
    import torch                       # first: PyTorch loads the OpenMP runtime with its own defaults
    torch.set_num_threads(int(sys.argv[3]))
import fastwb
from fastwb import benchmark
from fastwb.benchmark import torch_train_step
fastwb.set_num_threads(int(sys.argv[3]))
n = 1 << (20 if quick else 24)
med = benchmark.median_seconds
out = {}
for sizes, b in (([784, 256, 10], 128), ([16, 32, 32, 4], 32)):
    key = "train step " + "-".join(map(str, sizes)) + f" b{b}"
    if which == "torch":
        out[key] = med(torch_train_step(sizes, b, np.float32), 100 if quick else 300)
    else:
        m = fastwb.MLP(sizes, rng=0)
        X = np.random.default_rng(0).standard_normal((b, sizes[0])).astype(np.float32)
        y = np.zeros(b, np.intp)
        out[key] = med(lambda: m.train_step(X, y), 100 if quick else 300)
for key, sizes, b, p in (("train step 784-256bn-10 b128", benchmark.BN_MODEL, 128, 0.2),
                         ("train step 16-32bn-32bn-4 b32", benchmark.BN_TINY, 32, 0.0)):
    if which == "torch":
        out[key] = med(benchmark.torch_bn_model_step(b, sizes=sizes, p=p), 100 if quick else 300)
    else:
        X = np.random.default_rng(0).standard_normal((b, sizes[0])).astype(np.float32)
        y = np.zeros(b, np.intp)
        m = benchmark.bn_model(sizes=sizes, p=p)
        out[key] = med(lambda: m.train_step(X, y), 100 if quick else 300)
key = f"Adam step {n >> 20}M"
if which == "torch":
    p = torch.zeros(n, requires_grad=True); p.grad = torch.full((n,), 0.01)
    out[key] = med(torch.optim.Adam([p], lr=1e-3, fused=True).step, 10 if quick else 30)
else:
    p, g = np.zeros(n, np.float32), np.full(n, 0.01, np.float32)
    opt = fastwb.optim.Adam([p])
    out[key] = med(lambda: opt.step([g]), 10 if quick else 30)
print(json.dumps(out))
"""


def own_processes(quick, threads, say, rounds=5):
    """PyTorch and fastwb each alone in a fresh interpreter (PyTorch imported
    first, with its own OpenMP defaults), alternating, ``rounds`` times (a
    process's GEMM speed varies on a shared host, so single rounds mislead).

    Returns ``{"torch": {workload: median s}, "fastwb": {...}, "ratio":
    {workload: median over rounds of PyTorch / fastwb}, "spread": {workload:
    largest / smallest round ratio - 1}, "rounds": n}``; None without PyTorch."""
    import subprocess
    import tempfile

    if _torch() is None:
        return None
    runs = {"torch": [], "fastwb": []}
    for r in range(rounds):
        got = {}
        for which in ("torch", "fastwb"):
            say(f"own process: {which} ({r + 1}/{rounds})")
            # from a neutral folder: "python -c" in a source checkout would import its uncompiled tree
            done = subprocess.run([sys.executable, "-c", _ALONE, which, "1" if quick else "0", str(threads)],
                                  capture_output=True, text=True, timeout=600, cwd=tempfile.gettempdir())
            if done.returncode == 0:
                got[which] = json.loads(done.stdout.strip().splitlines()[-1])
        if len(got) == 2:               # rounds are pairs: a ratio needs both halves
            for which, v in got.items():
                runs[which].append(v)
    if not runs["fastwb"]:
        return None
    keys = runs["fastwb"][0].keys()
    out = {which: {k: float(np.median([run[k] for run in r])) for k in keys} for which, r in runs.items()}
    per_round = {k: [t[k] / f[k] for t, f in zip(runs["torch"], runs["fastwb"])] for k in keys}
    out["ratio"] = {k: float(np.median(v)) for k, v in per_round.items()}
    out["spread"] = {k: max(v) / min(v) - 1 for k, v in per_round.items()}
    out["rounds"] = len(runs["fastwb"])
    return out


# ---------------------------------------------------------------------------
# training speed over time: subnormal numbers must not slow training down
# ---------------------------------------------------------------------------

DECAY_LATE = 3000          # the late model has trained this many steps before it is timed
DECAY_TIMED = 100          # steps timed per model
DECAY_EPOCHS = 10          # MNIST: epoch 1 is compared with epoch DECAY_EPOCHS


def memorised_batch(path=None, batch=128):
    """``(X, y, source)``: the batch a memorisation run trains on over and over.

    The first ``batch`` MNIST training images when the IDX files are found
    (``path`` or ``$FASTWB_MNIST``), else a synthetic MNIST-like batch: strokes
    inside the central 20x20 pixels of a 28x28 image, so that, as in MNIST,
    the border pixels are 0 in every image and their weights' gradients are
    exactly 0.  Those parameters' Adam moments decay geometrically, which is
    how subnormal numbers enter training."""
    from fastwb import datasets

    X = None
    if path or os.environ.get(datasets.MNIST_ENV):
        try:
            X, y = datasets.load_mnist(path, "train")
        except (OSError, ValueError):
            X = None
    if X is not None:
        return np.ascontiguousarray(X[:batch], np.float32), np.asarray(y[:batch]), "MNIST"
    rng = np.random.default_rng(0)
    images = np.zeros((batch, 28, 28), np.float32)
    for img in images:
        for _ in range(3):                                  # three random strokes per image
            r, c = rng.integers(4, 24, 2)
            dr, dc = rng.integers(-1, 2, 2)
            for _ in range(rng.integers(4, 10)):
                img[r, c] = 1.0
                r, c = int(np.clip(r + dr, 4, 23)), int(np.clip(c + dc, 4, 23))
    return images.reshape(batch, 784), rng.integers(0, 10, batch), "synthetic MNIST-like"


def _early_late(make_step, late=DECAY_LATE, timed=DECAY_TIMED):
    """Two fresh models' steps: the late one first trains ``late`` steps, then
    both are timed ``timed`` times, alternating (the order flips every pair),
    so that load on the machine hits both alike.  Returns ``(early, late)``
    seconds per step: steps 0..timed of one model beside steps late..late+timed
    of the other."""
    early_step, late_step = make_step(), make_step()
    for _ in range(late):
        late_step()
    times = {"early": [], "late": []}
    for i in range(timed):
        for which in (("early", "late") if i % 2 == 0 else ("late", "early")):
            step = early_step if which == "early" else late_step
            t0 = time.perf_counter()
            step()
            times[which].append(time.perf_counter() - t0)
    return times["early"], times["late"]


def fastwb_memorised_step(X, y):
    """A training step of a fresh fastwb 784-256-10 float32 MLP (Adam, lr 1e-3) on (X, y)."""
    import fastwb

    model = fastwb.MLP([784, 256, 10], dtype=np.float32, rng=0)
    model.compile("adam", lr=1e-3)
    return lambda: model.train_step(X, y)


def torch_memorised_step(X, y):
    """The same with PyTorch (Linear-ReLU-Linear, cross-entropy, fused Adam lr 1e-3)."""
    return torch_train_step([784, 256, 10], len(X), X=X, y=y)


def mnist_epochs(path=None, epochs=DECAY_EPOCHS, pairs=3):
    """MNIST epoch times early and late in training, and the test accuracy after 5 epochs.

    Two fastwb 784-256-10 float32 MLPs (Adam, batch 128, shuffled): the late
    one first trains ``epochs - 1`` epochs; then each trains one epoch at a
    time, alternating, ``pairs`` times, so epoch 1 is timed beside epoch
    ``epochs`` (then 2 beside ``epochs + 1``, ...).  Returns ``{"early": [s],
    "late": [s], "late_epochs": [..], "accuracy_5": test accuracy after 5
    epochs}``, or None when the MNIST files are not found."""
    import fastwb
    from fastwb import datasets

    try:
        X, y, Xt, yt = datasets.load("mnist", path)
    except (OSError, ValueError):
        return None

    def model():
        m = fastwb.MLP([784, 256, 10], dtype=np.float32, rng=0)
        m.compile("adam", lr=1e-3)
        return m
    early, late = model(), model()
    accuracy_5 = None
    for e in range(epochs - 1):
        late.fit(X, y, epochs=1, batch_size=128, rng=e, verbose=False)
        if e == 4:
            accuracy_5 = late.evaluate(Xt, yt)[1]
    out = {"early": [], "late": [], "late_epochs": list(range(epochs, epochs + pairs)), "accuracy_5": accuracy_5}
    for i in range(pairs):
        for which in (("early", "late") if i % 2 == 0 else ("late", "early")):
            m, seed = (early, i) if which == "early" else (late, epochs - 1 + i)
            out[which] += m.fit(X, y, epochs=1, batch_size=128, rng=seed, verbose=False)["seconds"]
    return out


_DECAY = r"""
import json, sys
which, threads, epochs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
if which == "torch":
    import torch                       # first: PyTorch loads the OpenMP runtime with its own defaults
    torch.set_num_threads(threads)
import fastwb
from fastwb import benchmark
fastwb.set_num_threads(threads)
X, y, source = benchmark.memorised_batch(path or None)
make = benchmark.torch_memorised_step if which == "torch" else benchmark.fastwb_memorised_step
early, late = benchmark._early_late(lambda: make(X, y))
out = {"early": early, "late": late, "batch": source}
if which == "fastwb" and epochs:
    out["mnist"] = benchmark.mnist_epochs(path or None)
print(json.dumps(out))
"""


def decay(quick, threads, say, path=None, rounds=None):
    """Training speed over time, each contender alone in a fresh process.

    In each process two models of 784-256-10 train on one memorised batch
    (:func:`memorised_batch`): one fresh, one after :data:`DECAY_LATE` steps,
    timed alternately (:func:`_early_late`); the ratio late / early is the
    median of the per-pair ratios.  fastwb's first process also times MNIST
    epochs early and late (:func:`mnist_epochs`, when the files are found
    through ``path`` or ``$FASTWB_MNIST``).  Rounds alternate PyTorch and
    fastwb (1 round in quick mode, 3 otherwise); figures are medians over
    rounds."""
    import subprocess
    import tempfile

    rounds = rounds or (1 if quick else 3)
    contenders = ("torch", "fastwb") if _torch() is not None else ("fastwb",)
    runs = {w: [] for w in contenders}
    for r in range(rounds):
        for which in contenders:
            say(f"training speed over time: {which} ({r + 1}/{rounds})")
            done = subprocess.run([sys.executable, "-c", _DECAY, which, str(threads), "1" if r == 0 else "0",
                                   path or ""], capture_output=True, text=True, timeout=1200,
                                  cwd=tempfile.gettempdir())
            if done.returncode != 0:
                say(f"  {which} failed: {(done.stderr.strip().splitlines() or [done.returncode])[-1]}")
                continue
            runs[which].append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not runs["fastwb"]:
        return None
    out = {"late_step": DECAY_LATE, "timed": DECAY_TIMED, "rounds": rounds, "batch": runs["fastwb"][0]["batch"],
           "mnist": runs["fastwb"][0].get("mnist")}
    for which, rs in runs.items():
        if rs:
            out[which] = {
                "early_s": float(np.median([np.median(run["early"]) for run in rs])),
                "late_s": float(np.median([np.median(run["late"]) for run in rs])),
                "late_over_early": float(np.median([np.median(np.divide(run["late"], run["early"])) for run in rs])),
            }
    if "torch" in out:
        out["torch_over_fastwb_late"] = out["torch"]["late_s"] / out["fastwb"]["late_s"]
    return out


def decay_title(report):
    """Heading of the training-speed-over-time table."""
    d = report["decay"]
    return (f"training speed over time: 784-256-10 float32 Adam on one memorised {d['batch']} batch of 128; a "
            f"fresh model's steps 0-{d['timed']} timed alternately with another's steps {d['late_step']}-"
            f"{d['late_step'] + d['timed']}; medians; each contender in its own process ({d['rounds']} round"
            f"{'s' * (d['rounds'] > 1)})")


def decay_rows(report):
    """Rows of the training-speed-over-time table (empty without one), MNIST epochs last."""
    d = report.get("decay")
    if not d:
        return []
    rows = [["contender", "early step", "late step", "late / early"]]
    for which in ("fastwb", "torch"):
        if which in d:
            w = d[which]
            rows.append([which, _fmt_time(w["early_s"]), _fmt_time(w["late_s"]), _fmt_ratio(w["late_over_early"])])
    m = d.get("mnist")
    if m:
        ratio = float(np.median(np.divide(m["late"], m["early"])))
        rows.append([f"fastwb MNIST epochs 1-{len(m['early'])} vs {m['late_epochs'][0]}-{m['late_epochs'][-1]}",
                     f"{np.median(m['early']):.3f} s", f"{np.median(m['late']):.3f} s", _fmt_ratio(ratio)])
    return rows


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------

OWN = "\u2020"        # dagger: a PyTorch figure timed in processes of their own
CACHED = "*"          # a memory-bound kernel whose data fits in the last-level cache
UNSTABLE = "!"        # the two halves of a comparison's repetitions disagree


def _fmt_time(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def _fmt_ratio(x):
    """Every speedup and ratio of the report, in the table and the targets alike."""
    return f"{x:.2f}x"


def _fmt_share(r):
    return f"{100 * r['fraction_of_limit']:.0f}%" + (CACHED if r.get("fits_in_cache") else "")


def _cells(r):
    """The table cells of one result, shared by the text and Markdown tables."""
    m, s = r["median_s"], r["speedup"]
    own = OWN if r.get("torch_measured") == "own process" else ""
    times = [_fmt_time(m["numpy"]) if "numpy" in m else "-", _fmt_time(m["torch"]) + own if "torch" in m else "-"]
    ratios = [_fmt_ratio(s["numpy"]) if "numpy" in s else "-", _fmt_ratio(s["torch"]) + own if "torch" in s else "-"]
    name = r["name"] + (f" {UNSTABLE}" if r.get("spread", 0.0) > SPREAD_LIMIT else "")
    return [name, r["dtype"], _fmt_time(m["fastwb"])] + times + ratios + [f"{r['rate']:.1f} {r['unit']}", _fmt_share(r)]


HEADER = ["comparison", "dtype", "fastwb", "numpy", "torch", "x numpy", "x torch", "rate", "of limit"]


def table(report):
    """The results as text rows (one per comparison)."""
    widths = [44, 8, 10, 10, 11, 8, 9, 16, 9]
    rows = [HEADER] + [_cells(r) for r in report["results"]]
    return [" ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def column_notes(report):
    """What the columns and marks of the table mean, in sentences (text and Markdown)."""
    m = report["machine"]
    llc = m.get("llc_bytes")
    cache = f"the {llc / (1 << 20):.0f} MiB last-level cache" if llc else "the last-level cache"
    return [
        "fastwb, numpy, torch: median seconds per call. Each repetition runs every contender once, in an order "
        "that rotates between repetitions.",
        "x numpy, x torch: how many times faster fastwb is than that contender (> 1: fastwb faster), the median "
        "over repetitions of the paired ratio contender time / fastwb time.",
        f"{OWN}: PyTorch and fastwb each timed alone in a fresh process of its own (median of the paired ratios "
        "of alternating rounds; the time is PyTorch's there). In this process PyTorch shares fastwb's OpenMP "
        "runtime and its passive wait policy, which slows its small parallel regions, so the own-process figure "
        "is the fair one and is the only one shown (the JSON keeps the in-process one as torch_in_process). "
        "PyTorch figures without the mark are from this process.",
        "rate: fastwb's work per second: GFLOP/s of the step's GEMMs, or GB/s of memory traffic counted as bytes "
        "read plus bytes written, a write to an array the call does not read counting twice (the CPU reads each "
        "cache line before writing it: write-allocate).",
        f"of limit: rate / the machine's limit: NumPy's large-GEMM rate of the dtype for GFLOP/s rows; for GB/s "
        f"rows the in-place read+write stream bandwidth ({m.get('stream_GBps', float('nan')):.1f} GB/s), which, "
        "like an in-place update, has no write-allocate traffic (a copy has: that is why copy bandwidth is not "
        "the limit, in-place updates would pass it by up to 1.5x). A memory-bound kernel as fast as memory "
        f"allows is near 100%. {CACHED}: the call's traffic is no more than {cache}, so it may run at cache "
        "speed and pass 100%: that share says nothing about memory. A few percent over 100% is timing noise.",
        f"{UNSTABLE}: unstable: the medians of the paired ratios over the first and over the second half of its "
        f"repetitions differ by more than {100 * SPREAD_LIMIT:.0f}% (load changed during the comparison).",
    ]


def trust_warnings(report):
    """Reasons not to trust the run's figures: the load average above the core
    count before or after the run, comparisons whose repeated medians differ by
    more than SPREAD_LIMIT (in-process halves, own-process rounds)."""
    out = []
    load = report.get("load") or {}
    cores = load.get("cores") or report["machine"].get("cores") or 1
    busy = [f"{v:.1f} {when}" for when, v in (("before", load.get("before")), ("after", load.get("after")))
            if v is not None and v > cores]
    if busy:
        out.append(f"the load average ({', '.join(busy)} the run) was above the {cores} cores: other work competed "
                   "for the CPUs, so times and ratios may be off by any amount; run again on an idle machine")
    shaky = [f"{r['name']} {r['dtype']} ({100 * r['spread']:.0f}%)" for r in report["results"]
             if r.get("spread", 0.0) > SPREAD_LIMIT]
    if shaky:
        more = f" and {len(shaky) - 6} more" if len(shaky) > 6 else ""
        out.append(f"{len(shaky)} of {len(report['results'])} comparisons are unstable ({UNSTABLE}: the medians of "
                   f"the two halves of their repetitions differ by more than {100 * SPREAD_LIMIT:.0f}%): "
                   + ", ".join(shaky[:6]) + more)
    alone = report.get("own_processes") or {}
    wide = [f"{k} ({100 * v:.0f}%)" for k, v in (alone.get("spread") or {}).items() if v > SPREAD_LIMIT]
    if wide:
        out.append(f"the own-process rounds of PyTorch / fastwb differ by more than {100 * SPREAD_LIMIT:.0f}% "
                   "(largest / smallest round): " + ", ".join(wide))
    return out


def load_line(report):
    """One line on the machine's load during the run."""
    load = report.get("load") or {}
    fmt = (lambda v: "unknown" if v is None else f"{v:.2f}")
    return (f"load average (1 min): {fmt(load.get('before'))} before, {fmt(load.get('after'))} after the run, "
            f"on {load.get('cores', report['machine'].get('cores'))} cores")


def machine_lines(report):
    m = report["machine"]
    blas = m["blas"] or {}
    stream = f", in-place stream {m['stream_GBps']:.1f} GB/s" if "stream_GBps" in m else ""
    return [
        f"machine: {m['cpu']}, {m['cores']} cores; {m['platform']}",
        f"fastwb {m['fastwb']}, NumPy {m['numpy']} ({blas.get('internal_api')} {blas.get('version')}), "
        f"PyTorch {m['torch'] or 'not installed'}, {report['threads']} threads, OpenMP wait policy (shared by "
        f"fastwb and PyTorch): {m['wait_policy']}",
        f"limits: copy {m['best_copy_GBps']:.1f} GB/s (NumPy {m['copy_GBps']['numpy']:.1f}, fastwb threaded "
        f"{m['copy_GBps']['threads']:.1f}){stream}; GEMM float32 {m['gemm_GFLOPs']['float32']:.0f} GFLOP/s, "
        f"float64 {m['gemm_GFLOPs']['float64']:.0f} GFLOP/s",
        load_line(report),
    ]


def own_process_rows(report):
    """(workload, fastwb time, PyTorch time, PyTorch / fastwb, round spread) of the own-process runs."""
    alone = report.get("own_processes")
    if not alone:
        return []
    ratio = alone.get("ratio") or {k: alone["torch"][k] / v for k, v in alone["fastwb"].items()}
    spread = alone.get("spread") or {}
    return [(k, _fmt_time(v), _fmt_time(alone["torch"][k]), _fmt_ratio(ratio[k]),
             f"{100 * spread[k]:.0f}%" if k in spread else "-") for k, v in alone["fastwb"].items()]


def thread_rows(report):
    """Header and rows of the thread-scaling table (empty without one)."""
    th = report.get("thread_scaling") or {}
    if not th:
        return []
    return [["workload"] + [f"{t} thread" + "s" * (t > 1) for t in th["threads"]]] + [
        [name] + [_fmt_time(s) for s in secs] for name, secs in th["seconds"].items()]


def size_rows(report):
    """Header and rows of the cost-against-size table (empty without one)."""
    sc = report.get("size_scaling") or {}
    if not sc:
        return []
    return [["elements"] + list(sc["seconds"])] + [
        [f"{n:,}"] + [_fmt_time(v[i]) for v in sc["seconds"].values()] for i, n in enumerate(sc["sizes"])]


def _text_table(rows, first=30, other=12):
    return ["  " + rows[i][0].ljust(first) + "".join(c.rjust(other) for c in rows[i][1:]) for i in range(len(rows))]


def text_report(report):
    """The whole report as the lines ``fastwb bench`` prints."""
    lines = machine_lines(report) + [""] + table(report) + ["", "columns and marks:"]
    lines += [f"  - {note}" for note in column_notes(report)]
    alone = own_process_rows(report)
    if alone:
        lines += ["", f"PyTorch and fastwb each in its own process ({OWN} above; spread: largest / smallest round "
                      "ratio - 1):"]
        lines += _text_table([("workload", "fastwb", "PyTorch", "PyTorch/fastwb", "spread")] + alone, 30, 15)
    rows = targets(report)
    if rows:
        lines += ["", "targets:"]
        lines += [f"  {'ok  ' if ok else ('n/a ' if ok is None else 'MISS')} {d}: {v}" for d, v, ok in rows]
    dr = decay_rows(report)
    if dr:
        lines += ["", decay_title(report) + ":"] + _text_table(dr, 36, 14)
    th = thread_rows(report)
    if th:
        lines += ["", f"thread scaling (seconds per call; {report['thread_scaling']['cores']}-core machine):"]
        lines += _text_table(th)
    sc = size_rows(report)
    if sc:
        lines += ["", "cost against problem size (float32, seconds per call):"]
        lines += _text_table(sc, 12, 20)
    warn = trust_warnings(report)
    lines += [""] + ([f"WARNING: {w}" for w in warn] if warn else
                     [f"spread: no comparison's repeated medians differ by more than {100 * SPREAD_LIMIT:.0f}% and "
                      "the load average stayed within the core count"])
    return lines


def figure(report):
    """A matplotlib Figure: speedups per comparison, cost against size, time against threads."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 11))
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    res = report["results"]
    labels = [f"{r['name']} ({r['dtype'][5:]})" for r in res]
    ypos = np.arange(len(res))
    for i, impl in enumerate(("numpy", "torch")):
        vals = [r["speedup"].get(impl, np.nan) for r in res]
        ax.barh(ypos + 0.4 * i, vals, height=0.4, label=f"vs {impl}")
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(ypos + 0.2, labels, fontsize=6)
    ax.set(title="fastwb speedup (median of paired ratios; >1 = fastwb faster)", xlabel="speedup")
    ax.legend()
    ax = axes[0, 1]
    ax.barh(ypos, [100 * r["fraction_of_limit"] for r in res])
    ax.set_yticks(ypos, labels, fontsize=6)
    ax.set(title="share of the machine limit (in-place stream GB/s or GEMM GFLOP/s; * in cache)", xlabel="%")
    ax = axes[1, 0]
    sc = report.get("size_scaling") or {}
    for name, secs in sc.get("seconds", {}).items():
        ax.loglog(sc["sizes"], secs, marker="o", label=name)
    ax.set(title="cost against problem size (float32)", xlabel="elements", ylabel="seconds per call")
    if sc:
        ax.legend(fontsize=7)
    ax = axes[1, 1]
    th = report.get("thread_scaling") or {}
    for name, secs in th.get("seconds", {}).items():
        ax.plot(th["threads"], secs, marker="o", label=name)
    ax.set(title=f"time against thread count ({th.get('cores', '?')}-core machine)", xlabel="threads",
           ylabel="seconds per call")
    if th:
        ax.legend(fontsize=7)
    fig.suptitle(machine_lines(report)[0], fontsize=9)
    fig.tight_layout()
    return fig




def _find(report, name, dtype="float32"):
    return next((r for r in report["results"] if r["name"] == name and r["dtype"] == dtype), None)


def targets(report):
    """The project's performance targets as (description, measured, met or None) rows.

    Every figure is the very number of the table's row for that workload
    (the same ratio, the same share, the same format), so the report never
    says two things about one comparison."""
    rows = []

    def add(desc, value, ok):
        rows.append((desc, value, ok))
    big = "1M" if report["quick"] else "16M"

    def vs_torch(name, desc, goal):
        r = _find(report, name)
        if r and "torch" in r["speedup"]:
            x = r["speedup"]["torch"]
            how = f"each in its own process, {OWN}" if r.get("torch_measured") == "own process" else "both in this process"
            add(f"{desc} ({how})", _fmt_ratio(x), goal(x))
    vs_torch("train step 784-256-10 b128", "train step 784-256-10 f32: >= 1.5x faster than PyTorch (fused Adam)",
             lambda x: x >= 1.5)
    vs_torch("train step 16-32-32-4 b32", "tiny MLP step: >= 10x faster than PyTorch", lambda x: x >= 10)
    vs_torch("train step 16-32bn-32bn-4 b32", "tiny step 16-32-32-4 with BatchNorm1d: >= 10x faster than PyTorch",
             lambda x: x >= 10)
    vs_torch(f"Adam step {big}", f"Adam {big} f32: faster than PyTorch's fused Adam", lambda x: x > 1)
    vs_torch("train step 784-256bn-10 b128", "train step 784-256(BatchNorm1d, ReLU, Dropout)-10 f32: >= 1.5x faster "
             "than PyTorch", lambda x: x >= 1.5)
    bnstep = _find(report, "train step 784-256bn-10 b128")
    if bnstep and "gemms" in bnstep["speedup"]:
        r = 1 / bnstep["speedup"]["gemms"]
        add("train step 784-256bn-10 f32: within 1.35x of its own GEMMs", _fmt_ratio(r), r <= 1.35)
    for n, m in ((128, 256), (4096, 1024)):
        bn = _find(report, f"BatchNorm1d fwd+bwd {n}x{m}")
        if bn and "numpy" in bn["speedup"]:
            add(f"BatchNorm1d fwd+bwd {n}x{m} f32: >= 3x the NumPy twin", _fmt_ratio(bn["speedup"]["numpy"]),
                bn["speedup"]["numpy"] >= 3)
        vs_torch(f"BatchNorm1d fwd+bwd {n}x{m}", f"BatchNorm1d fwd+bwd {n}x{m} f32: >= 2x PyTorch", lambda x: x >= 2)
    drop = _find(report, f"dropout p0.2 {big}")
    if drop:
        share = drop["rate"] / report["machine"]["best_copy_GBps"]
        add(f"dropout {big} f32: >= 70% of the machine's copy bandwidth (3 B/B moved, best copy)",
            f"{100 * share:.0f}%", share >= 0.7)
    step = _find(report, "train step 784-256-10 b128")
    if step:
        s = step["speedup"]
        if "numpy" in s:
            add("train step 784-256-10 f32: >= 1.5x faster than the NumPy twin", _fmt_ratio(s["numpy"]),
                s["numpy"] >= 1.5)
        if "gemms" in s:
            add("train step 784-256-10 f32: within 1.25x of its own GEMMs (time / GEMMs' time)",
                _fmt_ratio(1 / s["gemms"]), 1 / s["gemms"] <= 1.25)
    adam = _find(report, f"Adam step {big}")
    if adam:
        met = None if report["quick"] or adam.get("fits_in_cache") else adam["fraction_of_limit"] >= 0.8
        add(f"Adam {big} f32: >= 80% of the memory limit (28 B/elem against the in-place stream bandwidth)",
            _fmt_share(adam), met)
    pr = _find(report, f"prune_weights p90 {big}")
    if pr:
        add(f"prune_weights {big} f32: >= 5x the NumPy twin", _fmt_ratio(pr["speedup"]["numpy"]),
            pr["speedup"]["numpy"] >= 5)
    vs_torch(f"prune_weights p90 {big}", f"prune_weights {big} f32: faster than torch l1_unstructured",
             lambda x: x > 1)
    d = report.get("decay") or {}
    if "fastwb" in d:
        late = d["fastwb"]["late_over_early"]
        add(f"memorised-batch step 784-256-10: at step {d['late_step']} within 1.1x of a fresh model's "
            f"({d['batch']} batch, timed alternately)", _fmt_ratio(late), late <= 1.1)
    if "torch_over_fastwb_late" in d:
        x = d["torch_over_fastwb_late"]
        add(f"memorised-batch step at step {d['late_step']}: >= 1.5x faster than PyTorch (each in its own process, "
            f"{OWN})", _fmt_ratio(x), x >= 1.5)
    mnist = d.get("mnist")
    if mnist:
        ratio = float(np.median(np.divide(mnist["late"], mnist["early"])))
        add(f"MNIST: epoch {mnist['late_epochs'][0]} within 1.05x of epoch 1 (median over "
            f"{len(mnist['early'])} alternated pairs)", _fmt_ratio(ratio), ratio <= 1.05)
        if mnist.get("accuracy_5") is not None:
            add("MNIST: test accuracy >= 97.5% after 5 epochs", f"{100 * mnist['accuracy_5']:.2f}%",
                mnist["accuracy_5"] >= 0.975)
    th = report.get("thread_scaling") or {}
    for name, secs in th.get("seconds", {}).items():
        worst = secs[-1] / min(secs)
        add(f"{name}: at {th['threads'][-1]} threads no slower than 1.05x the best thread count",
            f"{worst:.3f}x", worst <= 1.05)
    if th and th.get("cores", 0) < 16:
        add("16 cores: memory-bound kernels >= 70% of 16-thread copy bandwidth; wide model scales >= 8x",
            f"not measured (this machine has {th['cores']} cores)", None)
    return rows


def _md_table(rows):
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + [
        "| " + " | ".join(row) + " |" for row in rows[1:]]


def markdown(report, plot_name=None):
    """BENCHMARKS.md text for a report: the same tables, notes and warnings as the text report."""
    out = ["# fastwb benchmarks", "",
           "Generated by `fastwb bench --markdown BENCHMARKS.md --plot benchmarks.png` on the machine below "
           f"({report['when']}); do not edit by hand.", "",
           "How to run: `pip install \".[bench]\"` (and optionally `torch==2.13.0`), then `fastwb bench` "
           "(`--quick` for a few minutes, `--filter`, `--dtype`, `--threads`, `--json`, `--plot`); the "
           "pytest-benchmark suites: `pytest bench/ --benchmark-only`; the projects' targets: "
           "`python bench/targets.py`.", "", "## Machine", ""]
    out += [f"- {line}" for line in machine_lines(report)]
    warn = trust_warnings(report)
    if warn:
        out += ["", "## Warnings", ""] + [f"- **{w}**" for w in warn]
    out += ["", "## Comparisons", ""]
    out += _md_table([HEADER] + [[c.replace("|", "\\|").replace("*", "\\*") for c in _cells(r)]
                                 for r in report["results"]])
    out += ["", "Columns and marks:", ""] + [f"- {note.replace('*', chr(92) + '*')}" for note in column_notes(report)]
    alone = own_process_rows(report)
    if alone:
        out += ["", "## PyTorch and fastwb each in its own process", "",
                "Each runs alone in a fresh interpreter, PyTorch imported first with its own OpenMP defaults, "
                "alternating rounds; times are medians, the ratio is the median of the per-round ratios, the "
                f"spread is the largest over the smallest round ratio, less one. These are the {OWN} figures of "
                "the table above and of the targets.", ""]
        out += _md_table([["workload", "fastwb", "PyTorch", "PyTorch / fastwb", "spread"]] + [list(a) for a in alone])
    rows = targets(report)
    if rows:
        out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        out += [f"| {d} | {v.replace('*', chr(92) + '*')} | {'yes' if ok else ('n/a' if ok is None else '**no**')} |"
                for d, v, ok in rows]
    dr = decay_rows(report)
    if dr:
        out += ["", "## " + decay_title(report), ""] + _md_table(dr)
    th = thread_rows(report)
    if th:
        out += ["", f"## Thread scaling ({report['thread_scaling']['cores']}-core machine above)", ""] + _md_table(th)
    sc = size_rows(report)
    if sc:
        out += ["", "## Cost against problem size (float32, seconds per call)", ""] + _md_table(sc)
    if plot_name:
        out += ["", f"![speedups, limits, scaling]({plot_name})"]
    return "\n".join(out) + "\n"


def write_files(report, json_path=None, plot_path=None, markdown_path=None):
    """Write the report's files, each atomically (:func:`fastwb._io.atomic_open`):
    an interrupted or failed write leaves any previous file as it was.  The
    figure is rendered in memory first (format from the extension, PNG when
    there is none).  Returns the paths written."""
    import io

    from fastwb._io import atomic_open

    written = []
    if json_path:
        text = json.dumps(report, indent=1, default=str)
        with atomic_open(json_path, "w") as fh:
            fh.write(text)
        written.append(json_path)
    if plot_path:
        data = io.BytesIO()
        figure(report).savefig(data, format=os.path.splitext(plot_path)[1][1:].lower() or "png", dpi=90)
        with atomic_open(plot_path, "wb") as fh:
            fh.write(data.getvalue())
        written.append(plot_path)
    if markdown_path:
        text = markdown(report, os.path.basename(plot_path) if plot_path else None)
        with atomic_open(markdown_path, "w") as fh:
            fh.write(text)
        written.append(markdown_path)
    return written


def main(args):
    """``fastwb bench``: argparse namespace from fastwb.cli (which has checked the output paths)."""
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    report = run(args.quick, args.threads, dtypes, args.filter, progress=not args.quiet)
    for line in text_report(report):
        print(line)
    for path in write_files(report, args.json, args.plot, args.markdown):
        print(f"wrote {path}")
    return 0
