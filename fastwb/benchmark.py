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

Three sections run on request instead (:func:`run_sections`, ``fastwb bench
--contention / --cgroup / --inference``): fastwb under load, its default
thread count against one thread with cores and 2 x cores busy processes
started and stopped by the benchmark (:func:`contention`,
:class:`BusyProcesses`); a child process with its CPU budget cut to one CPU
by a CPU-quota cgroup or its affinity (:func:`budget_case`,
:class:`CpuCgroup`); and inference against PyTorch and ONNX Runtime, each in
a process of its own (:func:`inference`).
"""

import json
import os
import platform
import sys
import time

import numpy as np

__all__ = ["interleaved", "median_ratio", "copy_bandwidth", "stream_bandwidth", "gemm_rate", "torch_train_step",
           "step_gemms", "optimizer_contenders", "run", "merge_own_processes", "text_report", "markdown",
           "write_files", "BusyProcesses", "contention", "CpuCgroup", "budget_case", "onnx_mlp", "inference",
           "fused_models", "fused_inference", "fused_inference_lines", "run_sections", "sections_text", "main"]


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


def record_round(report, got, ratios):
    """Add one round's times (``{name: [seconds per repetition]}``) to ``report``
    (``"seconds"`` and ``"ratios"`` dicts of lists): each contender's median, and
    each ratio of ``ratios`` (``(label, numerator, denominator, target or None,
    paired)``) whose two sides were timed: the paired median within one
    process, else the ratio of the two medians."""
    for name, ts in got.items():
        report["seconds"].setdefault(name, []).append(float(np.median(ts)))
    for label, num, den, _, paired in ratios:
        if num in got and den in got:
            a, b = np.asarray(got[num]), np.asarray(got[den])
            r = float(np.median(a / b)) if paired and len(a) == len(b) else float(np.median(a) / np.median(b))
            report["ratios"].setdefault(label, []).append(r)


def ratio_verdicts(report, ratios):
    """``(label, median over rounds, smallest, largest, target, met)`` for every
    ratio of ``ratios`` that ``report`` holds (met: None without a target)."""
    out = []
    for label, _, _, target, _ in ratios:
        rs = report["ratios"].get(label)
        if rs:
            med = float(np.median(rs))
            out.append((label, med, min(rs), max(rs), target, None if target is None else med >= target))
    return out


def verdict_lines(verdicts, width=48):
    """The table of :func:`ratio_verdicts`: each ratio's median, smallest and
    largest round and its target's verdict."""
    rows, marks = [["ratio (median over rounds)", "median", "min", "max"]], ["target"]
    for label, med, lo, hi, target, met in verdicts:
        rows.append([label, _fmt_ratio(med), _fmt_ratio(lo), _fmt_ratio(hi)])
        marks.append("(info)" if target is None else f">= {target:g}x {'ok' if met else 'MISSED'}")
    return [row + "  " + mark for row, mark in zip(_text_table(rows, width, 10), marks)]


def targets_line(verdicts):
    """"k of n targets met; missed: ..." for :func:`ratio_verdicts`, or None without targets."""
    missed = [v[0] for v in verdicts if v[5] is False]
    targets = [v for v in verdicts if v[4] is not None]
    if not targets:
        return None
    return (f"  {len(targets) - len(missed)} of {len(targets)} targets met"
            + (f"; missed: {'; '.join(missed)}" if missed else ""))


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


def cpu_name():
    """The CPU model (Linux /proc/cpuinfo, else platform.processor())."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine(quick=False):
    """Machine description and limits: cores, CPU, in-place stream and copy
    bandwidth, GEMM rates, last-level cache size."""
    import fastwb

    cfg = fastwb._runtime.config()
    # 16M elements even in quick mode: smaller arrays would measure the caches
    bw = copy_bandwidth(1 << 24, repeats=7 if quick else 15)
    stream = stream_bandwidth(1 << 24, repeats=7 if quick else 15)
    gemm_n = 1024 if quick else 2048
    cpu = cpu_name()
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


def _where_gemms(result):
    return " (each in its own process, †)" if result.get("gemms_measured") == "own process" else " (in process)"


def merge_own_processes(report):
    """One PyTorch figure per workload: where a workload was also timed with
    PyTorch and fastwb each alone in a process of its own (float32), that
    ratio (the fair one: see the module docstring) replaces the in-process
    one in ``speedup["torch"]`` and PyTorch's own-process time replaces
    ``median_s["torch"]``; the in-process figures move to
    ``torch_in_process``, and ``torch_measured`` says which is shown
    ("own process" or "in process").  Likewise the steps' GEMMs-alone
    yardstick (``gemms_in_process``, ``gemms_measured``): timed in fastwb's
    process, NumPy's OpenBLAS leaves its workers spinning against fastwb's
    own threads.  Returns the report, changed in place."""
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
        if r["name"] in alone.get("gemms_ratio", {}) and r["dtype"] == "float32" and "gemms" in r["speedup"] \
                and r.get("gemms_measured") != "own process":
            r["gemms_in_process"] = {"median_s": r["median_s"].get("gemms"), "speedup": r["speedup"]["gemms"]}
            r["median_s"]["gemms"] = alone["gemms"][r["name"]]
            r["speedup"]["gemms"] = 1.0 / alone["gemms_ratio"][r["name"]]
            r["gemms_measured"] = "own process"
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
if which == "gemms":                   # the yardstick of the steps: their GEMMs alone, through np.matmul
    for key, sizes in (("train step 784-256-10 b128", [784, 256, 10]),
                       ("train step 784-256bn-10 b128", benchmark.BN_MODEL)):
        out[key] = med(benchmark.step_gemms(sizes, 128), 100 if quick else 300)
    print(json.dumps(out))
    sys.exit(0)
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
    runs = {"torch": [], "fastwb": [], "gemms": []}
    for r in range(rounds):
        got = {}
        for which in ("torch", "fastwb", "gemms"):
            say(f"own process: {which} ({r + 1}/{rounds})")
            # from a neutral folder: "python -c" in a source checkout would import its uncompiled tree
            done = subprocess.run([sys.executable, "-c", _ALONE, which, "1" if quick else "0", str(threads)],
                                  capture_output=True, text=True, timeout=600, cwd=tempfile.gettempdir())
            if done.returncode == 0:
                got[which] = json.loads(done.stdout.strip().splitlines()[-1])
        if len(got) == 3:               # rounds are triples: a ratio needs every part
            for which, v in got.items():
                runs[which].append(v)
    if not runs["fastwb"]:
        return None
    keys = runs["fastwb"][0].keys()
    out = {which: {k: float(np.median([run[k] for run in r])) for k in keys} for which, r in runs.items()
           if which != "gemms"}
    per_round = {k: [t[k] / f[k] for t, f in zip(runs["torch"], runs["fastwb"])] for k in keys}
    out["ratio"] = {k: float(np.median(v)) for k, v in per_round.items()}
    out["spread"] = {k: max(v) / min(v) - 1 for k, v in per_round.items()}
    # fastwb's steps against their GEMMs alone, each in its own process: timed in the
    # same process, np.matmul leaves OpenBLAS's workers spinning against fastwb's team
    gkeys = runs["gemms"][0].keys()
    out["gemms"] = {k: float(np.median([run[k] for run in runs["gemms"]])) for k in gkeys}
    out["gemms_ratio"] = {k: float(np.median([f[k] / g[k] for f, g in zip(runs["fastwb"], runs["gemms"])]))
                          for k in gkeys}
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
        add("train step 784-256bn-10 f32: within 1.35x of its own GEMMs" + _where_gemms(bnstep), _fmt_ratio(r),
            r <= 1.35)
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
            add("train step 784-256-10 f32: within 1.25x of its own GEMMs (time / GEMMs' time)" + _where_gemms(step),
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
           f"({report['when']}); do not edit this part by hand (the sections after the line "
           "`KEPT_MARKER` below are hand-written and kept).", "",
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


#: In BENCHMARKS.md, the line after which the features' own measured figures
#: (federated learning, hyperparameter search, the scikit-learn estimators, ...)
#: are written by hand; regenerating the file keeps everything from it on.
KEPT_MARKER = "<!-- KEPT_MARKER: the sections below are written by hand from the features' own benchmark scripts -->"


def kept_sections(path):
    """The part of an existing Markdown file from :data:`KEPT_MARKER` on ("" if
    there is no file or no marker)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (FileNotFoundError, IsADirectoryError):
        return ""
    at = text.find(KEPT_MARKER)
    return "" if at < 0 else text[at:]


def write_files(report, json_path=None, plot_path=None, markdown_path=None):
    """Write the report's files, each atomically (:func:`fastwb._io.atomic_open`):
    an interrupted or failed write leaves any previous file as it was.  The
    figure is rendered in memory first (format from the extension, PNG when
    there is none).  A Markdown file keeps its hand-written sections after
    :data:`KEPT_MARKER`.  Returns the paths written."""
    from fastwb._io import atomic_open, write_figure

    written = []
    if json_path:
        text = json.dumps(report, indent=1, default=str)
        with atomic_open(json_path, "w") as fh:
            fh.write(text)
        written.append(json_path)
    if plot_path:
        write_figure(figure(report), plot_path, dpi=90)
        written.append(plot_path)
    if markdown_path:
        text = markdown(report, os.path.basename(plot_path) if plot_path else None)
        kept = kept_sections(markdown_path)
        if kept:
            text += "\n" + kept
        with atomic_open(markdown_path, "w") as fh:
            fh.write(text)
        written.append(markdown_path)
    return written


# ---------------------------------------------------------------------------
# sections of their own: under load, with a cut CPU budget, and inference
# (``fastwb bench --contention``, ``--cgroup``, ``--inference``)
# ---------------------------------------------------------------------------

def cores():
    """The CPUs this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or os.cpu_count() or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runnable_tasks():
    """Tasks running or ready to run right now (Linux ``/proc/loadavg``, counting the
    reader itself), or None where unknown: the instant load, where the load average
    trails by a minute."""
    text = _read_small("/proc/loadavg")
    try:
        return int(text.split()[3].split("/")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _read_small(path):
    try:
        with open(path) as fh:
            return fh.read(1 << 16)
    except OSError:
        return None


def median_seconds_within(fn, reps, budget_s, warmup=3, least=5):
    """Median wall time of up to ``reps`` calls of fn (after ``warmup`` untimed
    ones), stopping early once ``budget_s`` seconds have passed and at least
    ``least`` calls are timed: a slow machine under load still finishes."""
    for _ in range(warmup):
        fn()
    ts = []
    end = time.perf_counter() + budget_s
    while len(ts) < reps and (len(ts) < least or time.perf_counter() < end):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


_SPIN = r"""
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100000):
        pass
"""


class BusyProcesses:
    """``n`` processes that each spin a pure-Python loop on a CPU: load for the
    contention benchmark.  A context manager::

        with BusyProcesses(4) as busy:      # busy.pids: their process ids
            ...                             # timed under load

    Each is a fresh interpreter (``subprocess``, no fork of this process).
    Leaving the block, however it is left (an exception, KeyboardInterrupt),
    kills them all with SIGKILL and reaps them, as does :meth:`stop`; if
    starting them is interrupted, the ones already started are killed before
    the exception goes on.  And none outlives this process: each checks its
    parent's pid every few milliseconds and exits once it has changed, so even
    a parent killed with SIGKILL leaves no spinning orphan behind."""

    def __init__(self, n):
        import operator

        n = operator.index(n)
        if n < 0:
            raise ValueError(f"n must be >= 0 busy processes, got {n}")
        self.n = n
        self.procs = []

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def start(self):
        import subprocess

        try:
            for _ in range(self.n):
                # -S: no site import, so they start fast and import nothing of this tree
                self.procs.append(subprocess.Popen([sys.executable, "-S", "-c", _SPIN, str(os.getpid())],
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Kill every process still running (SIGKILL), then reap them all."""
        procs, self.procs = self.procs, []
        try:
            for p in procs:
                if p.poll() is None:
                    try:
                        p.kill()
                    except OSError:
                        pass
        finally:
            for p in procs:
                p.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def contention_workloads(name_filter=None):
    """``{name: callable}``: the contention benchmark's workloads, each built once
    (its model, data and output arrays), float32: training steps of 784-256-10
    at batch 32, 128 and 1024 and of 784-1024-1024-10 at 128 (Adam), predict of
    784-256-10 at batch 1, 32 and 1024, ``fastwb.linear`` forward 128x784x256
    with ReLU, and an Adam step on 1M parameters.  ``name_filter``: keep the
    names containing this text (case-insensitive)."""
    import fastwb

    rng = np.random.default_rng(0)
    builders = {}

    def data(batch, n_in, n_out):
        return rng.standard_normal((batch, n_in)).astype(np.float32), rng.integers(0, n_out, batch)

    def train(sizes, batch):
        model = fastwb.MLP(sizes, rng=0)
        X, y = data(batch, sizes[0], sizes[-1])
        return lambda: model.train_step(X, y)

    def predict(batch):
        if "model" not in shared:
            shared["model"] = fastwb.MLP([784, 256, 10], rng=0)
        model, (X, _) = shared["model"], data(batch, 784, 10)
        return lambda: model.predict(X)

    def linear():
        (x, _), W = data(128, 784, 10), (rng.standard_normal((784, 256)) * 0.05).astype(np.float32)
        b, y = rng.standard_normal(256).astype(np.float32), np.empty((128, 256), np.float32)
        return lambda: fastwb.linear(x, W, b, "relu", 0.01, y)

    def adam():
        p = rng.standard_normal(1 << 20).astype(np.float32)
        g = (rng.standard_normal(1 << 20) * 0.01).astype(np.float32)
        opt = fastwb.optim.Adam([p], lr=1e-3)
        return lambda: opt.step([g])

    shared = {}                 # one 784-256-10 model for the three predict batches
    for sizes, batch in (([784, 256, 10], 32), ([784, 256, 10], 128), ([784, 256, 10], 1024),
                         ([784, 1024, 1024, 10], 128)):
        builders[f"train step {'-'.join(map(str, sizes))} b{batch}"] = lambda s=sizes, b=batch: train(s, b)
    for batch in (1, 32, 1024):
        builders[f"predict 784-256-10 b{batch}"] = lambda b=batch: predict(b)
    builders["linear fwd relu 128x784x256"] = linear
    builders["Adam step 1M"] = adam
    return {name: build() for name, build in builders.items()
            if not name_filter or name_filter.lower() in name.lower()}


def _at_threads(n, fn):
    """fn run inside ``fastwb.threads(n)`` (each call, so that both sides of a
    comparison pay the same few hundred nanoseconds for the switch)."""
    import fastwb

    def call():
        with fastwb.threads(n):
            fn()
    return call


_TORCH_UNDER_LOAD = r"""
import json, sys
import torch                        # first: PyTorch loads the OpenMP runtime with its own defaults
import numpy as np
from fastwb.benchmark import median_seconds_within, torch_train_step
step = torch_train_step([784, 256, 10], 128, np.float32)       # PyTorch's default thread count
step()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:              # one timing per line: "repetitions budget_seconds"
    reps, budget = line.split()
    print(json.dumps({"seconds": median_seconds_within(step, int(reps), float(budget)),
                      "threads": torch.get_num_threads()}), flush=True)
"""


class _Worker:
    """A fresh interpreter running ``script`` (from a neutral folder) that answers
    each line written to it with one JSON line; started before the load, so
    that its imports are not timed under it.  A context manager: leaving it
    closes the worker's stdin and kills it if it has not exited soon after."""

    def __init__(self, script, timeout=600):
        import subprocess
        import tempfile

        self.timeout = timeout
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, cwd=tempfile.gettempdir())

    def ready(self):
        """Read the worker's first ("ready") line into ``.info`` and return the
        worker; on any failure the process is ended before the error goes on."""
        try:
            self.info = self.read()
        except BaseException:
            self.close()
            raise
        return self

    def read(self):
        """The worker's next JSON line, or raise RuntimeError with its last stderr line."""
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            self.proc.wait()
            self.err.seek(0)
            last = (self.err.read().strip().splitlines() or [f"no answer (exit status {self.proc.returncode})"])[-1]
            raise RuntimeError(last)
        return json.loads(line)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        import subprocess

        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self.err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _fresh_process(script, args, timeout=600, stdin=None, env=None):
    """Run ``python -c script args`` from a neutral folder (in a source checkout
    "python -c" would import the uncompiled tree); the last stdout line as JSON,
    or ``(None, reason)``."""
    import subprocess
    import tempfile

    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir(), input=stdin, env=env)
    if done.returncode != 0 or not done.stdout.strip():
        return None, ((done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def contention(quick=False, threads=None, levels=None, name_filter=None, torch=True, say=lambda *a: None,
               repeats=None, rounds=None, settle_s=None, torch_budget_s=None):
    """fastwb under load: for each number of busy processes in ``levels``
    (default: cores and 2 x cores, :func:`cores`), start them
    (:class:`BusyProcesses`), then time every workload of
    :func:`contention_workloads` at fastwb's default thread count (``threads``
    when given) and at 1 thread, interleaved in this process, and PyTorch's
    784-256-10 b128 training step at its own default threads in a process of
    its own beside fastwb's (``rounds`` alternating pairs; skipped without
    PyTorch or with ``torch=False``; each side's steps for up to
    ``torch_budget_s`` seconds), then stop them.  PyTorch's process is
    started, and imports PyTorch, before the first load: only its steps are
    timed under load.

    Returns ``{"cores", "default_threads", "cpu_budget", "cpu", "quick",
    "repeats", "rounds", "torch_skipped", "load_before", "load_after",
    "levels": [{"busy", "pids", "load_start", "load_during",
    "runnable_during", "workloads": {name: {"default_s", "one_thread_s",
    "ratio", "spread"}}, "torch": {...} or None}]}``, where ``ratio`` is the
    median over repetitions of the paired ratio default time / 1-thread time
    (the target: <= 1.2) and ``torch["ratio"]`` the median over rounds of
    PyTorch's time / fastwb's (the target: >= 5)."""
    import contextlib

    import fastwb

    n_cores = cores()
    default = threads or fastwb.get_num_threads()
    levels = tuple(levels) if levels is not None else (n_cores, 2 * n_cores)
    repeats = repeats or (11 if quick else 31)
    rounds = rounds or (1 if quick else 3)
    settle_s = (0.5 if quick else 2.0) if settle_s is None else settle_s
    target_s = 3e-3 if quick else 2e-2
    work = contention_workloads(name_filter)
    contenders = {name: {"default": _at_threads(default, fn), "1 thread": _at_threads(1, fn)}
                  for name, fn in work.items()}
    for c in contenders.values():           # warm: first calls plan and allocate
        for fn in c.values():
            fn()
    step = work.get("train step 784-256-10 b128") or contention_workloads("784-256-10 b128")[
        "train step 784-256-10 b128"]
    with_torch = torch and _torch_importable()
    report = {"cores": n_cores, "default_threads": default, "cpu_budget": fastwb._runtime.config()["cpu_budget"],
              "cpu": cpu_name(), "quick": quick, "repeats": repeats, "rounds": rounds if with_torch else 0,
              "torch_skipped": None if with_torch else ("not asked for" if not torch else "PyTorch is not installed"),
              "load_before": load_average(), "levels": [], "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with contextlib.ExitStack() as stack:
        worker = None
        if with_torch:
            say("contention: starting PyTorch's process (before the load)")
            worker = stack.enter_context(_Worker(_TORCH_UNDER_LOAD))
            try:
                worker.read()                   # ready: imported, step built and run once
            except RuntimeError as e:
                worker, report["torch_skipped"] = None, f"its process failed: {e}"
        for n_busy in levels:
            say(f"contention: starting {n_busy} busy processes")
            level = {"busy": n_busy, "workloads": {}, "torch": None}
            with BusyProcesses(n_busy) as busy:
                level["pids"] = busy.pids
                time.sleep(settle_s)
                level["load_start"] = load_average()
                for name, c in contenders.items():
                    say(f"  [{n_busy} busy] {name}")
                    t = interleaved(c, repeats=repeats, target_s=target_s)
                    level["workloads"][name] = {
                        "default_s": float(np.median(t["default"])), "one_thread_s": float(np.median(t["1 thread"])),
                        "ratio": median_ratio(t, "default", "1 thread"),
                        "spread": halves_spread(t, "default", "1 thread")}
                if worker is not None:
                    level["torch"] = _torch_rounds(worker, step, default, quick, rounds, n_busy, say, torch_budget_s)
                level["load_during"] = load_average()
                level["runnable_during"] = runnable_tasks()
            report["levels"].append(level)
    report["load_after"] = load_average()
    return report


def _torch_importable():
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _torch_rounds(worker, step, default, quick, rounds, n_busy, say, budget=None):
    """PyTorch's 784-256-10 b128 step timed by ``worker`` (its own process, its
    default threads), then fastwb's (``step``, at ``default`` threads) in this
    one, ``rounds`` times; {"error": why} when the worker fails."""
    import fastwb

    reps = 40 if quick else 200
    budget = budget or (1.5 if quick else 5.0)
    pairs = []
    for r in range(rounds):
        say(f"  [{n_busy} busy] PyTorch 784-256-10 b128 step, own process ({r + 1}/{rounds})")
        try:
            got = worker.ask(f"{reps} {budget}")
        except (RuntimeError, OSError) as e:
            return {"error": str(e)}
        with fastwb.threads(default):
            mine = median_seconds_within(step, reps, budget)
        pairs.append((got["seconds"], mine, got["threads"]))
    return {"torch_s": float(np.median([p[0] for p in pairs])), "fastwb_s": float(np.median([p[1] for p in pairs])),
            "ratio": float(np.median([p[0] / p[1] for p in pairs])), "torch_threads": pairs[0][2],
            "rounds": len(pairs)}


CONTENTION_LIMIT = 1.2          # default threads / 1 thread under load, at most
CONTENTION_TORCH = 5.0          # PyTorch / fastwb, 784-256-10 b128 step under load, at least


def contention_targets(report):
    """(description, measured, met) rows of the contention targets."""
    rows = []
    for level in report["levels"]:
        worst = max(level["workloads"].items(), key=lambda kv: kv[1]["ratio"], default=None)
        if worst:
            rows.append((f"{level['busy']} busy processes: every workload at the default {report['default_threads']} "
                         f"threads within {CONTENTION_LIMIT:.1f}x of 1 thread (worst: {worst[0]})",
                         _fmt_ratio(worst[1]["ratio"]), worst[1]["ratio"] <= CONTENTION_LIMIT))
        t = level.get("torch") or {}
        if "ratio" in t:
            rows.append((f"{level['busy']} busy processes: train step 784-256-10 b128 >= {CONTENTION_TORCH:.0f}x "
                         "faster than PyTorch at its defaults (own process)", _fmt_ratio(t["ratio"]),
                         t["ratio"] >= CONTENTION_TORCH))
    return rows


def _load_fmt(v):
    return "unknown" if v is None else f"{v:.2f}"


def contention_lines(report):
    """The contention section as text lines."""
    d = report["default_threads"]
    b = report["cpu_budget"]
    lines = [f"under load ({report['cpu']}, {report['cores']} cores; fastwb's CPU budget {b['cpus']} "
             f"({b['source']}), default {d} thread{'s' * (d > 1)}):",
             "  busy processes spin pure-Python loops; every workload runs at the default thread count and at 1 "
             "thread (fastwb.threads(1)), interleaved in this process, each repetition in rotating order; "
             f"{report['repeats']} repetitions",
             "  default / 1 thread: median of the paired ratios (> 1: the default is slower than 1 thread); "
             f"{UNSTABLE}: the two halves of the repetitions disagree by more than {100 * SPREAD_LIMIT:.0f}%",
             f"  load average (1 min) before: {_load_fmt(report['load_before'])}, after: "
             f"{_load_fmt(report.get('load_after'))}"]
    for level in report["levels"]:
        lines += ["", f"  {level['busy']} busy processes: load average {_load_fmt(level['load_start'])} after "
                      f"starting them, {_load_fmt(level['load_during'])} at the end; runnable tasks at the end: "
                      f"{level['runnable_during'] if level['runnable_during'] is not None else 'unknown'}"]
        rows = [("workload", f"default ({d})", "1 thread", "default/1")]
        for name, w in level["workloads"].items():
            mark = f" {UNSTABLE}" if w["spread"] > SPREAD_LIMIT else ""
            rows.append((name + mark, _fmt_time(w["default_s"]), _fmt_time(w["one_thread_s"]), _fmt_ratio(w["ratio"])))
        lines += ["  " + row for row in _text_table(rows, 36, 13)]
        t = level.get("torch")
        if t and "ratio" in t:
            lines.append(f"    PyTorch train step 784-256-10 b128 at its defaults ({t['torch_threads']} threads, own "
                         f"process): {_fmt_time(t['torch_s'])}; fastwb at {d}: {_fmt_time(t['fastwb_s'])}; "
                         f"PyTorch / fastwb {_fmt_ratio(t['ratio'])} (median of {t['rounds']} round"
                         f"{'s' * (t['rounds'] > 1)})")
        elif t:
            lines.append(f"    PyTorch: its process failed: {t['error']}")
    if report.get("torch_skipped"):
        lines.append(f"  PyTorch comparison skipped: {report['torch_skipped']}")
    rows = contention_targets(report)
    if rows:
        lines += ["", "  targets:"] + [f"    {'ok  ' if ok else 'MISS'} {desc}: {v}" for desc, v, ok in rows]
    return lines


# -- a cut CPU budget ------------------------------------------------------------------

_BUDGET_CHILD = r"""
import json, os, sys
method, cpu, repeats, target_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
if method == "sched_setaffinity":
    os.sched_setaffinity(0, {cpu})
else:
    sys.stdin.readline()            # the parent has moved this process into the cgroup: go on
import numpy as np                  # only now: NumPy's BLAS and fastwb size their threads at import
import fastwb
from fastwb import benchmark
cfg = fastwb._runtime.config()
default = fastwb.get_num_threads()
try:
    affinity = len(os.sched_getaffinity(0))
except (AttributeError, OSError):
    affinity = os.cpu_count() or 1
step = benchmark.contention_workloads("784-256-10 b128")["train step 784-256-10 b128"]
counts = {"default": default, "1 thread": 1}
if affinity > default:
    counts[f"{affinity} threads"] = affinity        # what the process would run without its budget
t = benchmark.interleaved({k: benchmark._at_threads(n, step) for k, n in counts.items()}, repeats, target_s)
print(json.dumps({"cpu_budget": cfg["cpu_budget"], "num_threads": default, "affinity": affinity,
                  "cgroup": open("/proc/self/cgroup").read() if os.path.exists("/proc/self/cgroup") else None,
                  "seconds": {k: float(np.median(v)) for k, v in t.items()},
                  "ratio": {k: benchmark.median_ratio(t, k, "1 thread") for k in t if k != "1 thread"}}))
"""

CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PERIOD_US = 100000


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


class CpuCgroup:
    """A child cgroup limited to ``cpus`` CPUs (quota = cpus x 100 ms per 100 ms),
    made by :meth:`make` under ``CGROUP_ROOT``: cgroup v2 (``cpu.max``) where the
    cgroup2 hierarchy is mounted there with the cpu controller enabled for its
    children, else the cgroup v1 cpu hierarchy (``cpu.cfs_quota_us``).  Needs
    root.  :meth:`add` moves a process in; :meth:`remove` deletes the cgroup (its
    processes must have exited first)."""

    def __init__(self, kind, path):
        self.kind, self.path = kind, path

    @classmethod
    def place(cls, root=CGROUP_ROOT):
        """``(kind, parent directory)`` where one can be made, or ``(None, why not)``."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return None, "not running as root"
        if "cpu" in (_read_small(os.path.join(root, "cgroup.subtree_control")) or "").split():
            if os.access(root, os.W_OK):
                return "v2", root
            return None, f"cgroup v2 at {root} is not writable"
        for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            d = os.path.join(root, name)
            if os.path.isfile(os.path.join(d, "cpu.cfs_quota_us")) and os.access(d, os.W_OK):
                return "v1", d
        return None, f"no writable cgroup v2 hierarchy with the cpu controller, nor a v1 cpu hierarchy, at {root}"

    @classmethod
    def make(cls, cpus=1, root=CGROUP_ROOT):
        """The cgroup, or ``(None, why not)`` where none can be made."""
        kind, parent = cls.place(root)
        if kind is None:
            return None, parent
        path = os.path.join(parent, f"fastwb-bench-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.mkdir(path)
        except OSError as e:
            return None, f"cannot create {path}: {e}"
        cg = cls(kind, path)
        quota = int(cpus * CGROUP_PERIOD_US)
        try:
            if kind == "v2":
                _write(os.path.join(path, "cpu.max"), f"{quota} {CGROUP_PERIOD_US}")
            else:
                _write(os.path.join(path, "cpu.cfs_period_us"), str(CGROUP_PERIOD_US))
                _write(os.path.join(path, "cpu.cfs_quota_us"), str(quota))
        except OSError as e:
            cg.remove()
            return None, f"cannot set the CPU quota of {path}: {e}"
        return cg, None

    @property
    def method(self):
        return "cgroup v2 cpu.max" if self.kind == "v2" else "cgroup v1 cfs quota"

    def add(self, pid):
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def remove(self, tries=50):
        """Delete the cgroup (retrying a little while its last process is being
        reaped); True when it is gone."""
        for _ in range(tries):
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                time.sleep(0.02)
        return not os.path.exists(self.path)


def budget_case(quick=False, method=None, repeats=None, say=lambda *a: None):
    """fastwb's default thread count in a child process whose CPU budget is cut to
    one CPU: a CPU-quota cgroup (:class:`CpuCgroup`) where one can be made, the
    child moved into it before it imports anything, else
    ``os.sched_setaffinity`` to one core in the child before its imports.
    ``method``: None (the first that works), ``"cgroup"`` or
    ``"sched_setaffinity"``.  The child runs without ``OMP_NUM_THREADS`` (it
    shows fastwb's default) and reports ``fastwb._runtime.config()["cpu_budget"]``,
    ``fastwb.get_num_threads()`` and its 784-256-10 b128 training step at the
    default, at 1 thread and at the affinity's CPU count where that is more.
    The cgroup is removed afterwards, whatever happens.

    Returns ``{"method", "why_not_cgroup", "cgroup_path", "cgroup_removed",
    "child": {...}, "adapted"}`` (``adapted``: the child's thread count is its
    budget of 1 CPU), or ``{"method", "error"}`` when the child failed."""
    if method not in (None, "cgroup", "sched_setaffinity"):
        raise ValueError(f"method must be None, 'cgroup' or 'sched_setaffinity', got {method!r}")
    repeats = repeats or (7 if quick else 21)
    target_s = 2e-3 if quick else 1e-2
    cg, why = (None, "not asked for") if method == "sched_setaffinity" else CpuCgroup.make(1)
    if cg is None and method == "cgroup":
        raise RuntimeError(f"no CPU-quota cgroup can be made here: {why}")
    out = None
    if cg is not None:
        out = {"method": cg.method, "why_not_cgroup": None, "cgroup_path": cg.path}
        say(f"CPU budget cut to 1 CPU ({cg.method}): timing a child process")
        try:
            done = _budget_child(cg.method, repeats, target_s, cg)
        except OSError as e:            # the child could not be moved in: it was killed
            if method == "cgroup":
                raise
            why = f"cannot move a process into {cg.path}: {e}"
            out = None
        finally:
            removed = cg.remove()
        if out is not None:
            out["cgroup_removed"] = removed
    if out is None:
        if not hasattr(os, "sched_setaffinity"):
            return {"method": None, "why_not_cgroup": why, "error": "os.sched_setaffinity is not available either"}
        out = {"method": "sched_setaffinity", "why_not_cgroup": why, "cgroup_path": None}
        say("CPU budget cut to 1 CPU (sched_setaffinity): timing a child process")
        done = _budget_child("sched_setaffinity", repeats, target_s)
    returncode, stdout, stderr = done
    if returncode != 0 or not stdout.strip():
        out["error"] = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]
        return out
    child = json.loads(stdout.strip().splitlines()[-1])
    out["child"] = child
    out["adapted"] = child["cpu_budget"]["cpus"] == 1 and child["num_threads"] == child["cpu_budget"]["cpus"]
    return out


def _budget_child(method, repeats, target_s, cgroup=None):
    """Run :data:`_BUDGET_CHILD` (without ``OMP_NUM_THREADS``), first moved into
    ``cgroup`` when given; ``(exit status, stdout, stderr)``.  The child is
    killed and reaped whatever happens; OSError when it cannot be moved."""
    import subprocess
    import tempfile

    cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.Popen([sys.executable, "-c", _BUDGET_CHILD, method, str(cpu), str(repeats), str(target_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir(), env=env)
    try:
        if cgroup is not None:
            cgroup.add(proc.pid)        # before the child reads its go line, so before any import
        stdout, stderr = proc.communicate("go\n", timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
    return proc.returncode, stdout, stderr


def budget_lines(report):
    """The cut-budget section as text lines."""
    how = {"cgroup v2 cpu.max": f"a cgroup v2 with cpu.max \"{CGROUP_PERIOD_US} {CGROUP_PERIOD_US}\"",
           "cgroup v1 cfs quota": f"a cgroup v1 with cpu.cfs_quota_us {CGROUP_PERIOD_US} / cpu.cfs_period_us "
                                  f"{CGROUP_PERIOD_US}",
           "sched_setaffinity": "os.sched_setaffinity to one core"}.get(report["method"], str(report["method"]))
    lines = [f"CPU budget cut to 1 CPU: {how}, in a child process, before it imports fastwb (without "
             "OMP_NUM_THREADS)"]
    if report.get("why_not_cgroup") and report["why_not_cgroup"] != "not asked for":
        lines.append(f"  (no cgroup: {report['why_not_cgroup']})")
    if report.get("cgroup_path"):
        lines.append(f"  cgroup {report['cgroup_path']}: "
                     + ("removed afterwards" if report.get("cgroup_removed") else "COULD NOT BE REMOVED"))
    if "error" in report:
        return lines + [f"  the child failed: {report['error']}"]
    c = report["child"]
    b = c["cpu_budget"]
    quota = "none" if b["quota"] is None else f"{b['quota']:g} CPU" + "s" * (b["quota"] != 1)
    lines.append(f"  child: cpu_budget cpus {b['cpus']} (affinity {b['affinity']}, quota {quota}, source "
                 f"{b['source']}); fastwb.get_num_threads() {c['num_threads']}: the default "
                 + ("adapted" if report["adapted"] else "DID NOT ADAPT"))
    s = c["seconds"]
    parts = [f"{k} {_fmt_time(v)}" for k, v in s.items()]
    ratios = [f"{k} / 1 thread {_fmt_ratio(v)}" for k, v in c["ratio"].items()]
    lines.append("  train step 784-256-10 b128 in the child (median per call, interleaved): " + ", ".join(parts)
                 + "; " + ", ".join(ratios))
    return lines


# -- inference against PyTorch and ONNX Runtime ----------------------------------------

INFERENCE_SIZES = [784, 256, 10]
INFERENCE_BATCHES = (1, 32, 1024)


def mlp_weights(model):
    """``[(W, b)]`` of a fastwb MLP's Linear layers, W stored (in, out)."""
    sd = model.state_dict()
    keys = sorted({k.split(".")[0] for k in sd if k.endswith(".weight")}, key=int)
    return [(np.ascontiguousarray(sd[f"{k}.weight"]), np.ascontiguousarray(sd[f"{k}.bias"])) for k in keys]


def onnx_mlp(weights):
    """The ONNX graph (serialized bytes) of an MLP with ReLU hidden layers:
    MatMul -> Add (-> Relu) per layer, weights ``[(W (in, out), b)]`` as float32
    initializers, input "x" of shape (batch, in), output "logits".  Built by
    :func:`fastwb.nn.deploy.onnx_bytes` from a float32 Sequential holding these
    weights, so the benchmark times the graph ``fastwb export`` writes."""
    from fastwb import nn
    from fastwb.nn import deploy

    layers = []
    for i, (W, _) in enumerate(weights):
        layers.append(nn.Linear(*np.shape(W), init="zeros"))
        if i < len(weights) - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers, dtype="float32", rng=0).eval()
    model.load_state_dict({f"{2 * i}.{name}": np.asarray(a, np.float32) for i, (W, b) in enumerate(weights)
                           for name, a in (("weight", W), ("bias", b))})
    return deploy.onnx_bytes(model)


_INFER_CHILD = r"""
import json, sys
which, path, out_path, threads, repeats, target_s = (sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                                     int(sys.argv[5]), float(sys.argv[6]))
if which == "torch":
    import torch                    # first: PyTorch loads the OpenMP runtime with its own defaults
    torch.set_num_threads(threads)
else:
    import onnxruntime as ort
import numpy as np
from fastwb import benchmark
data = np.load(path)
weights = [(data[f"W{i}"], data[f"b{i}"]) for i in range(int(data["layers"]))]
X, batches = data["X"], [int(b) for b in data["batches"]]
runs = {}
if which == "torch":
    layers = []
    for i, (W, b) in enumerate(weights):
        lin = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin] + ([torch.nn.ReLU()] if i < len(weights) - 1 else [])
    net = torch.nn.Sequential(*layers).eval()
    def make(x):
        tx = torch.from_numpy(x)
        def call():
            with torch.inference_mode():
                return net(tx)
        return call
    runs[f"PyTorch ({torch.get_num_threads()} threads)"] = make
else:
    graph = benchmark.onnx_mlp(weights)
    def session(n):
        opts = ort.SessionOptions()
        if n:
            opts.intra_op_num_threads = n
        s = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        return lambda x: (lambda: s.run(None, {"x": x})[0])
    runs["ONNX Runtime (default options)"] = session(0)
    runs[f"ONNX Runtime (intra_op_num_threads={threads})"] = session(threads)
out, logits = {}, {}
for name, make in runs.items():          # one configuration at a time: idle thread pools may spin
    out[name] = {}
    for b in batches:
        call = make(np.ascontiguousarray(X[:b]))
        out[name][str(b)] = float(np.median(benchmark.interleaved({"f": call}, repeats, target_s)["f"]))
    y = make(X)()
    logits[name] = np.asarray(y.numpy() if hasattr(y, "numpy") else y, np.float32)
np.savez(out_path, **{f"y{i}": v for i, v in enumerate(logits.values())})
print(json.dumps({"seconds": out, "names": list(logits)}))
"""


def _importable(*names):
    """The names of the modules among ``names`` that cannot be imported (found)."""
    import importlib.util

    missing = []
    for n in names:
        try:
            if importlib.util.find_spec(n) is None:
                missing.append(n)
        except (ImportError, ValueError):
            missing.append(n)
    return missing


def inference(quick=False, threads=None, rounds=None, repeats=None, say=lambda *a: None):
    """Inference of one 784-256-10 float32 MLP (fastwb's, with its weights copied
    into the others) at batch 1, 32 and 1024: fastwb's ``logits`` in this process
    against PyTorch (``torch.inference_mode()``, ``eval()``, fastwb's thread
    count) and ONNX Runtime (the graph built by :func:`onnx_mlp`; one session
    with default options, one with ``intra_op_num_threads`` = fastwb's thread
    count), each in a fresh process of its own, alternating ``rounds`` times.
    A peer that is not installed is skipped, and the report says why.

    Returns ``{"threads", "batches", "rounds", "contenders": {name: {"seconds":
    {batch: median s}, "ratio": {batch: median over rounds of its time /
    fastwb's}, "max_abs_diff": largest |its logits - fastwb's| on the 1024
    batch}}, "fastwb": {batch: s}, "skipped": {peer: why}}``."""
    import tempfile

    import fastwb

    threads = threads or fastwb.get_num_threads()
    rounds = rounds or (2 if quick else 5)
    repeats = repeats or (7 if quick else 21)
    target_s = 2e-3 if quick else 1e-2
    model = fastwb.MLP(INFERENCE_SIZES, rng=0)
    X = np.random.default_rng(0).standard_normal((max(INFERENCE_BATCHES), INFERENCE_SIZES[0])).astype(np.float32)
    reference = model.logits(X)
    peers, skipped = [], {}
    missing = _importable("torch")
    if missing:
        skipped["PyTorch"] = "PyTorch is not installed (pip install torch)"
    else:
        peers.append("torch")
    missing = _importable("onnxruntime", "onnx")
    if missing:
        skipped["ONNX Runtime"] = f"{' and '.join(missing)} not installed (pip install onnxruntime onnx)"
    else:
        peers.append("ort")
    per_round = {}                        # name -> [{batch: seconds}] one per round
    mine = []
    diffs = {}
    with tempfile.TemporaryDirectory(prefix="fastwb-bench-") as tmp:
        path = os.path.join(tmp, "model.npz")
        weights = mlp_weights(model)
        arrays = {f"W{i}": W for i, (W, _) in enumerate(weights)}
        arrays.update({f"b{i}": b for i, (_, b) in enumerate(weights)})
        np.savez(path, X=X, batches=np.array(INFERENCE_BATCHES), layers=len(weights), **arrays)
        calls = {b: (lambda x=np.ascontiguousarray(X[:b]): model.logits(x)) for b in INFERENCE_BATCHES}
        for r in range(rounds):
            got_round = {}
            for peer in peers:
                say(f"inference: {peer} in its own process ({r + 1}/{rounds})")
                out_path = os.path.join(tmp, f"{peer}.npz")
                got, why = _fresh_process(_INFER_CHILD, [peer, path, out_path, threads, repeats, target_s])
                if got is None:
                    skipped.setdefault("PyTorch" if peer == "torch" else "ONNX Runtime", f"its process failed: {why}")
                    continue
                with np.load(out_path) as ys:
                    for i, name in enumerate(got["names"]):
                        diffs[name] = max(diffs.get(name, 0.0), float(np.max(np.abs(ys[f"y{i}"] - reference))))
                for name, secs in got["seconds"].items():
                    got_round[name] = {int(b): s for b, s in secs.items()}
            say(f"inference: fastwb in this process ({r + 1}/{rounds})")
            with fastwb.threads(threads):
                mine.append({b: float(np.median(interleaved({"f": fn}, repeats, target_s)["f"]))
                             for b, fn in calls.items()})
            for name, secs in got_round.items():
                per_round.setdefault(name, []).append((secs, mine[-1]))
    contenders = {}
    for name, pairs in per_round.items():
        contenders[name] = {
            "seconds": {b: float(np.median([p[0][b] for p in pairs])) for b in INFERENCE_BATCHES},
            "ratio": {b: float(np.median([p[0][b] / p[1][b] for p in pairs])) for b in INFERENCE_BATCHES},
            "max_abs_diff": diffs.get(name), "rounds": len(pairs)}
    return {"threads": threads, "batches": list(INFERENCE_BATCHES), "rounds": rounds, "repeats": repeats,
            "fastwb": {b: float(np.median([m[b] for m in mine])) for b in INFERENCE_BATCHES},
            "contenders": contenders, "skipped": skipped, "load": load_average(), "cpu": cpu_name(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


INFERENCE_ORT_LIMIT = 1.1       # fastwb / ONNX Runtime at batch 32 and 1024, at most


def inference_targets(report):
    """(description, measured, met) rows of the inference targets."""
    rows = []
    for name, c in report["contenders"].items():
        if name.startswith("PyTorch"):
            for b in report["batches"]:
                x = c["ratio"][b]
                rows.append((f"inference b{b}: faster than {name}", _fmt_ratio(x), x > 1))
    ort = {n: c for n, c in report["contenders"].items() if n.startswith("ONNX Runtime")}
    for b in (32, 1024):
        if ort and b in report["batches"]:
            name, c = min(ort.items(), key=lambda kv: kv[1]["ratio"][b])     # the faster ORT session
            slower = 1 / c["ratio"][b]
            rows.append((f"inference b{b}: within {INFERENCE_ORT_LIMIT:.1f}x of {name}, the faster ORT session "
                         "(fastwb time / ORT time)", _fmt_ratio(slower), slower <= INFERENCE_ORT_LIMIT))
    return rows


def inference_lines(report):
    """The inference section as text lines."""
    t = report["threads"]
    lines = [f"inference 784-256-10 float32 ({report['cpu']}; fastwb logits at {t} thread{'s' * (t > 1)} in this "
             f"process; each peer in a fresh process of its own, {report['rounds']} alternating rounds; load average "
             f"{_load_fmt(report.get('load'))}):",
             "  seconds per call (medians); x fastwb: median over rounds of the peer's time / fastwb's (> 1: fastwb "
             "faster); max |diff|: largest difference from fastwb's logits on the 1024 batch"]
    bs = report["batches"]
    rows = [["contender"] + [f"b{b}" for b in bs] + [f"x fastwb b{b}" for b in bs] + ["max |diff|"]]
    rows.append(["fastwb"] + [_fmt_time(report["fastwb"][b]) for b in bs] + ["-"] * len(bs) + ["-"])
    for name, c in report["contenders"].items():
        d = c.get("max_abs_diff")
        rows.append([name] + [_fmt_time(c["seconds"][b]) for b in bs] + [_fmt_ratio(c["ratio"][b]) for b in bs]
                    + ["-" if d is None else f"{d:.1e}"])
    lines += _text_table(rows, 40, 15)
    for peer, why in report["skipped"].items():
        lines.append(f"  {peer} skipped: {why}")
    rows = inference_targets(report)
    if rows:
        lines += ["", "  targets:"] + [f"    {'ok  ' if ok else 'MISS'} {desc}: {v}" for desc, v, ok in rows]
    return lines


# -- inference of a BatchNorm model folded by fuse() ------------------------------------------

FUSED_SIZES = [784, 256, 256, 10]   # hidden layers: Linear -> BatchNorm1d -> ReLU (no BatchNorm: Linear -> ReLU)
FUSED_LIMIT = 1.05                  # fused model / the same network without BatchNorm, at most


def fused_models(dtype=np.float32, sizes=FUSED_SIZES):
    """The three eval-mode models of :func:`fused_inference`: ``"fused"``,
    :func:`fastwb.nn.deploy.fuse` of ``"batchnorm"`` (:func:`bn_model` without
    dropout, with running statistics and BatchNorm parameters that are not
    the identity), and ``"plain"``, the same Linear layers without BatchNorm
    (Linear -> ReLU)."""
    from fastwb import nn

    bn = bn_model(dtype, sizes, p=0).eval()
    rng = np.random.default_rng(1)
    for layer, params, buffers in zip(bn.layers, bn._params, bn._buffers):
        if isinstance(layer, nn.BatchNorm1d):
            n = layer.num_features
            buffers["running_mean"][...] = rng.normal(0, 0.1, n)
            buffers["running_var"][...] = rng.uniform(0.5, 2.0, n)
            params["weight"][...] = rng.uniform(0.5, 1.5, n)
            params["bias"][...] = rng.normal(0, 0.1, n)
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    plain = nn.Sequential(*layers, dtype=dtype, rng=0).eval()
    for W, W_bn, b, b_bn in zip(plain.W, bn.W, plain.b, bn.b):
        W[...], b[...] = W_bn, b_bn
    return {"fused": bn.fuse(), "plain": plain, "batchnorm": bn}


def fused_inference(batches=INFERENCE_BATCHES, repeats=41, target_s=2e-3, threads=None, dtype=np.float32):
    """``logits`` of the :func:`fused_models` at each batch size, timed
    interleaved in rotating order in this process (``threads``: fastwb's
    default).  Returns ``{"sizes", "dtype", "threads", "repeats", "seconds":
    {model: {batch: median s}}, "ratio": {"fused / plain": {batch: paired
    median}, "batchnorm / plain": ...}, "max_abs_diff": largest |fused -
    batchnorm| logits on the largest batch, "load", "cpu"}``."""
    import fastwb

    threads = threads or fastwb.get_num_threads()
    models = fused_models(dtype)
    X = np.random.default_rng(0).standard_normal((max(batches), FUSED_SIZES[0])).astype(dtype)
    seconds, ratio = {name: {} for name in models}, {"fused / plain": {}, "batchnorm / plain": {}}
    with fastwb.threads(threads):
        for b in batches:
            x = np.ascontiguousarray(X[:b])
            t = interleaved({name: (lambda m=m: m.logits(x)) for name, m in models.items()}, repeats, target_s)
            for name in models:
                seconds[name][b] = float(np.median(t[name]))
            ratio["fused / plain"][b] = median_ratio(t, "fused", "plain")
            ratio["batchnorm / plain"][b] = median_ratio(t, "batchnorm", "plain")
    diff = float(np.max(np.abs(models["fused"].logits(X) - models["batchnorm"].logits(X))))
    return {"sizes": FUSED_SIZES, "dtype": np.dtype(dtype).name, "threads": threads, "repeats": repeats,
            "batches": list(batches), "seconds": seconds, "ratio": ratio, "max_abs_diff": diff,
            "load": load_average(), "cpu": cpu_name()}


def fused_inference_lines(report):
    """:func:`fused_inference` as text lines, with the target."""
    bs = report["batches"]
    lines = [f"inference {'-'.join(map(str, report['sizes']))} {report['dtype']}, eval mode ({report['cpu']}, "
             f"{report['threads']} threads, {report['repeats']} interleaved repetitions, load average "
             f"{_load_fmt(report.get('load'))}): fused = BatchNorm folded by fuse(), plain = no BatchNorm, "
             "batchnorm = unfused"]
    rows = [["model"] + [f"b{b}" for b in bs]]
    rows += [[name] + [_fmt_time(secs[b]) for b in bs] for name, secs in report["seconds"].items()]
    rows += [[name] + [f"{r[b]:.3f}x" for b in bs] for name, r in report["ratio"].items()]
    lines += _text_table(rows, 20, 12)
    lines.append(f"  max |fused - batchnorm| logits: {report['max_abs_diff']:.1e}")
    for b in bs:
        r = report["ratio"]["fused / plain"][b]
        lines.append(f"  {'ok  ' if r <= FUSED_LIMIT else 'MISS'} b{b}: fused within {FUSED_LIMIT}x of plain: "
                     f"{r:.3f}x")
    return lines


SECTIONS = ("contention", "cgroup", "inference")


def run_sections(sections, quick=False, threads=None, name_filter=None, progress=True):
    """Run the named sections (of :data:`SECTIONS`) in that order; returns
    ``{section: report}``."""
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    out = {}
    for s in sections:
        if s == "contention":
            out[s] = contention(quick, threads, name_filter=name_filter, say=say)
        elif s == "cgroup":
            out[s] = budget_case(quick, say=say)
        elif s == "inference":
            out[s] = inference(quick, threads, say=say)
        else:
            raise ValueError(f"unknown section {s!r}: expected one of {', '.join(SECTIONS)}")
    return out


def sections_text(reports):
    """All the sections' text lines, one blank line between sections."""
    lines = []
    for s, rep in reports.items():
        if lines:
            lines.append("")
        lines += {"contention": contention_lines, "cgroup": budget_lines, "inference": inference_lines}[s](rep)
    return lines


def main(args):
    """``fastwb bench``: argparse namespace from fastwb.cli (which has checked the output paths)."""
    sections = [s for s in SECTIONS if getattr(args, s, False)]
    if sections:
        reports = run_sections(sections, args.quick, args.threads, args.filter, progress=not args.quiet)
        for line in sections_text(reports):
            print(line)
        if args.json:
            from fastwb._io import atomic_open

            text = json.dumps(reports, indent=1, default=str)
            with atomic_open(args.json, "w") as fh:
                fh.write(text)
            print(f"wrote {args.json}")
        return 0
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    report = run(args.quick, args.threads, dtypes, args.filter, progress=not args.quiet)
    for line in text_report(report):
        print(line)
    for path in write_files(report, args.json, args.plot, args.markdown):
        print(f"wrote {path}")
    return 0
