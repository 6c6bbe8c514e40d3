"""Data-parallel scaling of ``fit(..., comm=...)`` (issue 14): time per epoch on
1 and 2 ranks, the allreduce's share of a step, allreduce time against bytes,
and a model that predicts how many ranks still pay.

    python bench/distributed_scaling.py [--quick] [--data-path DIR] [--rounds R] [--models mnist,wide]
                                        [--compare-algorithms] [--network NAME=ALPHA_US,BETA_NS ...]
                                        [--json PATH]

This is a driver: it launches the measurement jobs itself, each one

    mpirun -n R --bind-to none python -m mpi4py bench/distributed_scaling.py --worker --threads T ...

run from a temporary folder (so the installed fastwb is imported, never an
unbuilt source tree), with ``OMP_NUM_THREADS=T`` and, for root, Open MPI's
``OMPI_ALLOW_RUN_AS_ROOT`` pair.  ``--bind-to none``: Open MPI binds a job of
one or two ranks to one core each by default, which would leave the second
thread of a 1-rank x 2-thread job no core of its own.  A worker job can be run
by hand the same way (``--out FILE`` writes its JSON, else it prints it).

What is measured (float32, Adam lr 1e-3, ReLU hidden layer, the same global
batch everywhere, ``--batch`` 128):

* models: 784-256-10 on MNIST's 60,000 training rows (``--data-path``, else
  ``$FASTWB_MNIST``, else ``../shared/data/mnist`` beside the repository;
  skipped with a message where absent), and a wide 4096-4096-10 on synthetic
  data with 4096 features (N(0, 1) rows, labels the argmax of a fixed random
  linear map; ``--wide-rows`` rows, default 2048: 16 steps an epoch);
* three configurations, each a job of its own, ``--rounds`` times in an
  order that rotates from round to round: 1 rank x 1 thread, 1 rank x 2
  threads, 2 ranks x 1 thread (every configuration through ``fit(...,
  comm=MPI.COMM_WORLD)``; each rank gets its block of rows,
  ``distributed.shard``);
* time per epoch: ``fit``'s own per-epoch ``seconds`` (the slowest rank's),
  after a short warm-up fit (4 steps) that builds the workspaces; the median
  over all timed epochs (``--epochs``, default 3) of all rounds, with the
  smallest and largest;
* where a step goes inside the timed fit, without changing fastwb: the worker
  wraps the model's compiled forward+backward (``model._gradients``), the
  optimizer's fused pass (``model.optimizer._apply``) and
  ``fastwb.distributed.Reducer.reduce`` (the step's one in-place ``Allreduce``
  of the flat gradient buffer), which it precedes with a ``Barrier`` so that
  waiting for the slower rank is counted apart from the Allreduce itself (one
  Barrier per step: a few microseconds on shared memory); "rest" is the step
  minus those (gathering the batch, the accuracy count, Python);
* the same ``Allreduce`` of a buffer of the model's flat-gradient size alone,
  after a ``Barrier`` (2 ranks);
* the forward+backward alone (``model.gradients``) at local batches 128, 64,
  ..., 1 (1 rank x 1 thread), for the prediction;
* allreduce time against bytes on 2 ranks: float32 ``Allreduce(IN_PLACE, SUM)``
  of 1 KiB to 64 MiB (powers of 4), ``--samples`` samples (15), each the mean
  of enough calls to last ``--target-ms`` (2 ms; one call at least) after a
  ``Barrier``, the slowest rank's time: many short samples, whose median a
  busy machine disturbs least.  Least-squares fit (relative residuals) of
  ``t = A + B * bytes``.

The model.  Open MPI 4.1's ``coll/tuned`` component (the one its jobs here
select) picks the allreduce algorithm by fixed rules
(``coll_tuned_decision_fixed.c``): on 2-3 ranks recursive doubling or ring
below 64 KiB, segmented ring to 256 KiB, Rabenseifner's algorithm
(reduce-scatter by recursive halving, allgather by recursive doubling) above;
on more ranks Rabenseifner from 8-256 KiB up.  Both gradients here (0.8 MB,
67 MB) take Rabenseifner at every N, so the prediction uses its cost
(``--algorithm ring`` for the ring's instead):

    allreduce(bytes, N) = 2 log2(p) alpha + 2 (p-1)/p * bytes * beta   (+ 2 (alpha + bytes beta) if N > p)

with p the largest power of two <= N (the N - p extra ranks first hand their
vector to a partner and get the result back), against the ring's
``2 (N-1) alpha + 2 (N-1)/N * bytes * beta``: the same bytes, a latency term
linear instead of logarithmic in N.  beta covers the transfer and the summing
of a byte.  On 2 ranks both are ``2 alpha + bytes * beta``: the sweep's fit
gives alpha = A / 2 (and a beta; below 4 KiB Open MPI's 2-rank allreduce is
one recursive-doubling exchange, alpha + bytes beta, which the one line
ignores).  The per-byte cost changes with the size (caches: the 64 MiB
gradient does not fit in the last-level cache, the 0.8 MB one does), so each
model's beta is taken at its gradient's own size, ``(t2 - 2 alpha) / bytes``
from that gradient's 2-rank Allreduce t2, and the model equals the
measurement at N = 2.  ``--compare-algorithms`` times the 2-rank sweep again
with each algorithm forced (``coll_tuned_use_dynamic_rules=1``,
``coll_tuned_allreduce_algorithm`` 3 recursive doubling, 4 ring, 5 segmented
ring, 6 Rabenseifner), to check which one the default follows.  Two
predictions of the step:

* simple: ``step(N) = step_1 / N + allreduce(bytes, N)``, step_1 the measured
  1-rank x 1-thread step; over powers of two the speedup peaks at
  ``N* = (step_1 - 2 bytes beta) ln 2 / (2 alpha)`` (ring:
  ``sqrt((step_1 - 2 bytes beta) / (2 alpha))``);
* refined: ``step(N) = step_1 - fb_1 (1 - fb(ceil(batch / N)) / fb(batch)) +
  allreduce(bytes, N)``: only fit's forward+backward (fb_1) shrinks with the
  local batch, by the ratio the forward+backward alone shows (small batches
  use the GEMMs worse); Adam over all parameters and the rest of the step are
  the same on every rank whatever N.

For each: speedup ``step(1) / step(N)`` and efficiency ``speedup / N`` for
N = 1 .. batch (one row per rank at most), the N where the speedup peaks and
the largest N whose efficiency is still >= ``--efficiency`` (0.8), and both
against the measured 2-rank step.  ``--network NAME=ALPHA_US,BETA_NS`` adds
predictions for an assumed network (not measured), e.g. ``10GbE=30,0.8``.

Caveats, printed with the results: on a 2-core machine the 2 ranks share the
memory bandwidth and caches and leave no core for anything else (Open MPI's
ranks spin while they wait, so a third busy process descheduling one rank
stalls both); alpha and beta are shared-memory figures (Open MPI's vader
BTL), not a network's; the load average is printed before and after every job.

``--quick``: the first 8192 MNIST rows, 256 wide rows, one round, one timed
epoch, fewer samples and sizes: a check that everything runs (about 20 s),
not a measurement.
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

GLOBAL_BATCH = 128
WIDE = (4096, 4096, 10)
MNIST = (784, 256, 10)
SWEEP_BYTES = tuple(1024 * 4 ** k for k in range(9))           # 1 KiB .. 64 MiB
QUICK_SWEEP_BYTES = (1024, 64 * 1024, 4 << 20, 64 << 20)
CONFIGS = ((1, 1), (1, 2), (2, 1))                               # (ranks, threads)
ALGORITHMS = {3: "recursive doubling", 4: "ring", 5: "segmented ring", 6: "Rabenseifner"}


def load_average():
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def default_mnist_folder():
    """``$FASTWB_MNIST``, else ``../shared/data/mnist`` beside the repository."""
    return os.environ.get("FASTWB_MNIST") or os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))


def median_range(values):
    v = [float(x) for x in values]
    return float(np.median(v)), min(v), max(v)


# -- the worker (runs under mpirun) ------------------------------------------------------

def per_call(fn, samples, min_s):
    """Seconds per call of ``fn``: ``samples`` samples, each the mean of enough calls
    to last ``min_s`` (one call at least), after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    k = max(1, int(min_s / max(one, 1e-7)))
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        out.append((time.perf_counter() - t0) / k)
    return out


def allreduce_times(MPI, comm, nbytes, samples, target_s, dtype=np.float32):
    """Seconds per in-place SUM Allreduce of ``nbytes`` (the slowest rank's), per sample.
    Every rank makes the same number of calls (agreed through a MAX allreduce)."""
    buf = np.zeros(max(1, nbytes // np.dtype(dtype).itemsize), dtype)     # zeros: no overflow, no denormals
    for _ in range(2):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    comm.Barrier()
    t0 = time.perf_counter()
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    one = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    k = max(1, min(5000, int(target_s / max(one, 1e-7))))
    out = []
    for _ in range(samples):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(k):
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        out.append(comm.allreduce((time.perf_counter() - t0) / k, op=MPI.MAX))
    return out


def model_data(name, args):
    """(X, y, description) of a model's global training set, or (None, None, why)."""
    if name == "mnist":
        from fastwb import datasets
        try:
            X, y = datasets.load_mnist(args.data_path, "train", np.float32, name="mnist")
        except (FileNotFoundError, ValueError) as e:
            return None, None, f"MNIST not found ({e})"
        rows = args.mnist_rows or len(X)
        return np.ascontiguousarray(X[:rows]), np.ascontiguousarray(y[:rows]), f"MNIST, {rows} rows"
    g = np.random.default_rng(12345)
    X = g.standard_normal((args.wide_rows, WIDE[0]), dtype=np.float32)
    teacher = g.standard_normal((WIDE[0], WIDE[-1]), dtype=np.float32)
    y = np.argmax(X @ teacher, axis=1).astype(np.int64)
    return X, y, f"synthetic, {args.wide_rows} rows x {WIDE[0]} features"


def measure_model(MPI, comm, sizes, X, y, args):
    """One model on this job's ranks and threads: epoch times and where a step's
    time goes inside fit, the isolated allreduce of the gradient's size (2 ranks),
    and the forward/backward against the batch (1 rank x 1 thread)."""
    from fastwb import distributed, nn

    size = comm.Get_size()
    rows = distributed.shard(len(X), comm)
    Xs, ys = X[rows], y[rows]
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU(), nn.Linear(sizes[1], sizes[2]), rng=0)
    model.compile("adam", lr=1e-3)
    local = args.batch // size
    # warm-up: a short fit (4 steps) builds the workspaces and touches every array
    model.fit(Xs[:4 * local], ys[:4 * local], epochs=1, batch_size=args.batch, rng=0, verbose=False, comm=comm)

    # timers around the step's parts, installed for the timed fit only (fastwb unchanged):
    # the compiled forward/backward, the Reducer's Allreduce (after a Barrier that takes the
    # wait for the slower rank out of it), the optimizer's fused pass
    parts = {"gradients": [], "wait": [], "allreduce": [], "optimizer": []}
    clock = time.perf_counter
    gradients, apply = model._gradients, model.optimizer._apply
    reduce = distributed.Reducer.reduce

    def timed_gradients(*a, **k):
        t0 = clock()
        loss = gradients(*a, **k)
        parts["gradients"].append(clock() - t0)
        return loss

    def timed_apply(grads):
        t0 = clock()
        apply(grads)
        parts["optimizer"].append(clock() - t0)

    def timed_reduce(self, grads, n):
        t0 = clock()
        if self.size > 1:
            self.comm.Barrier()
        t1 = clock()
        reduce(self, grads, n)
        parts["wait"].append(t1 - t0)
        parts["allreduce"].append(clock() - t1)

    model._gradients, model.optimizer._apply = timed_gradients, timed_apply
    distributed.Reducer.reduce = timed_reduce
    try:
        hist = model.fit(Xs, ys, epochs=args.epochs, batch_size=args.batch, rng=1, verbose=False, comm=comm)
    finally:
        distributed.Reducer.reduce = reduce
        del model._gradients, model.optimizer._apply
    steps = -(-len(Xs) // local)
    for name, v in parts.items():
        assert len(v) == steps * args.epochs, (name, len(v), steps, args.epochs)
    per_epoch = {name: [float(sum(v[e * steps:(e + 1) * steps])) for e in range(args.epochs)]
                 for name, v in parts.items()}
    out = {"rows": len(X), "steps": steps, "parameters": int(model.params.size),
           "grad_bytes": int(model.grads.nbytes), "loss": [float(v) for v in hist["loss"]],
           "epoch_s_by_rank": comm.allgather([float(s) for s in hist["seconds"]]),
           "parts_s_by_rank": comm.allgather(per_epoch),
           "allreduce_step_median_by_rank": comm.allgather(float(np.median(parts["allreduce"])))}
    if size > 1:
        out["allreduce_grad_s"] = allreduce_times(MPI, comm, model.grads.nbytes, args.samples,
                                                  args.target_ms / 1e3, model.dtype)
        hashes = comm.allgather(distributed.parameters_hash(model))
        out["identical"] = len(set(hashes)) == 1
    elif args.threads == 1:
        model.train()
        curve = {}
        b = args.batch
        while b >= 1:
            xb, yb = np.ascontiguousarray(Xs[:b]), np.ascontiguousarray(ys[:b])
            curve[str(b)] = per_call(lambda xb=xb, yb=yb: model.gradients(xb, yb), args.samples,
                                     args.target_ms / 1e3)
            b //= 2
        out["gradients_s"] = curve
    return out


def worker(args):
    from mpi4py import MPI

    import fastwb

    fastwb.set_num_threads(args.threads)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    library = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0].strip()
    res = {"ranks": size, "threads": args.threads, "fastwb_threads": fastwb.get_num_threads(),
           "load_before": load_average(), "mpi": library,
           "models": {}}
    if not args.sweep_only:
        for name in args.models:
            X, y, what = model_data(name, args)
            if X is None:
                res["models"][name] = {"skipped": what}
                continue
            sizes = MNIST if name == "mnist" else WIDE
            res["models"][name] = dict(measure_model(MPI, comm, sizes, X, y, args), data=what)
            del X, y
    if size > 1 and not args.no_sweep:
        res["sweep"] = {str(n): allreduce_times(MPI, comm, n, args.samples, args.target_ms / 1e3)
                        for n in args.sizes}
    res["load_after"] = load_average()
    if rank == 0:
        text = json.dumps(res)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text)
        else:
            print(text)


# -- the driver ---------------------------------------------------------------------------

def mpirun_path():
    return shutil.which("mpirun") or shutil.which("mpiexec")


def run_job(args, ranks, threads, folder, tag, extra_env=None, sweep_only=False, no_sweep=False):
    out = os.path.join(folder, f"{tag}.json")
    cmd = [mpirun_path(), "-n", str(ranks), "--bind-to", "none"]
    if ranks > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    cmd += [sys.executable, "-m", "mpi4py", os.path.abspath(__file__), "--worker", "--threads", str(threads),
            "--models", ",".join(args.models), "--batch", str(args.batch), "--epochs", str(args.epochs),
            "--wide-rows", str(args.wide_rows), "--samples", str(args.samples), "--target-ms", str(args.target_ms),
            "--sizes", ",".join(map(str, args.sizes)), "--out", out]
    cmd += ["--data-path", args.data_path]
    if args.mnist_rows:
        cmd += ["--mnist-rows", str(args.mnist_rows)]
    if sweep_only:
        cmd.append("--sweep-only")
    if no_sweep:
        cmd.append("--no-sweep")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_MCA_coll_tuned")}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               FASTWB_NO_PROGRESS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(extra_env or {})
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=args.job_timeout)
    if proc.returncode != 0:
        sys.exit(f"job {tag} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    with open(out) as fh:
        res = json.load(fh)
    res["wall_s"] = time.perf_counter() - t0
    return res


def fit_alpha_beta(sweep):
    """Least squares of t = A + B * bytes on relative residuals (every size
    counts alike): returns (alpha = A / 2, beta = B, [(bytes, median, fitted)])."""
    n = np.array(sorted(sweep), float)
    t = np.array([sweep[k] for k in sorted(sweep)], float)
    w = 1.0 / t
    M = np.stack([np.ones_like(n), n], axis=1) * w[:, None]
    (A, B), *_ = np.linalg.lstsq(M, t * w, rcond=None)
    return A / 2.0, B, [(int(a), float(b), float(A + B * a)) for a, b in zip(n, t)]


def allreduce_model(nbytes, N, alpha, beta, algorithm="rabenseifner"):
    """The allreduce's cost on N ranks.  ring: 2 (N-1) alpha + 2 (N-1)/N bytes beta.
    rabenseifner (reduce-scatter by recursive halving, allgather by recursive
    doubling) on p = the largest power of two <= N: 2 log2(p) alpha + 2 (p-1)/p bytes
    beta, plus 2 (alpha + bytes beta) when N > p (the N - p extra ranks first hand
    their vector to a partner and get the result back)."""
    if N <= 1:
        return 0.0
    if algorithm == "ring":
        return 2 * (N - 1) * alpha + 2 * (N - 1) / N * nbytes * beta
    p = 1 << (N.bit_length() - 1)
    t = 2 * math.log2(p) * alpha + 2 * (p - 1) / p * nbytes * beta
    return t + (2 * (alpha + nbytes * beta) if p != N else 0.0)


def interpolate(points, b):
    """Linear interpolation of a measured curve {batch: seconds} at batch b."""
    xs = sorted(points)
    return float(np.interp(b, xs, [points[x] for x in xs]))


def predict(m, alpha, beta, batch, threshold, algorithm):
    """Speedup and efficiency against N (1 .. batch) for one model, both models:
    simple ``step_1 / N + allreduce``; refined ``step_1 - fb_1 * (1 - g(ceil(batch / N)) /
    g(batch)) + allreduce``: only fit's forward+backward (fb_1) shrinks, by the ratio
    the forward+backward alone (g) shows at the smaller batch."""
    T1, nbytes, g, fb = m["step_1"], m["grad_bytes"], m["gradients"], m["fb_1"]
    rows = []
    for N in range(1, batch + 1):
        ar = allreduce_model(nbytes, N, alpha, beta, algorithm)
        simple = T1 / N + ar
        refined = T1 - fb * (1.0 - interpolate(g, -(-batch // N)) / g[batch]) + ar
        rows.append({"N": N, "allreduce": ar, "simple": simple, "refined": refined,
                     "simple_speedup": T1 / simple, "refined_speedup": T1 / refined})
    out = {"rows": rows}
    for kind in ("simple", "refined"):
        sp = [r[f"{kind}_speedup"] for r in rows]
        peak = int(np.argmax(sp)) + 1
        ok = [r["N"] for r in rows if r[f"{kind}_speedup"] / r["N"] >= threshold]
        out[kind] = {"peak_N": peak, "peak_speedup": sp[peak - 1], "last_efficient_N": max(ok)}
    # where d step / dN = 0 for the simple model (ring over every N; Rabenseifner over powers of two)
    inner = T1 - 2 * nbytes * beta
    if inner <= 0 or alpha <= 0:
        out["simple"]["N_star"] = None
    elif algorithm == "ring":
        out["simple"]["N_star"] = math.sqrt(inner / (2 * alpha))
    else:
        out["simple"]["N_star"] = inner * math.log(2) / (2 * alpha)
    return out


def fmt_s(seconds):
    if abs(seconds) >= 1:
        return f"{seconds:.2f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def fmt_range(values, unit=fmt_s):
    med, lo, hi = median_range(values)
    return f"{unit(med)} ({unit(lo)}-{unit(hi)})"


def fmt_pct(v):
    return f"{100 * v:.1f}%"


def fmt_bytes(n):
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


TITLE = {"mnist": "784-256-10", "wide": "4096-4096-10"}
PARTS = ("gradients", "wait", "allreduce", "optimizer")


def collect(runs, name):
    """Per configuration, a model's epochs (slowest rank) and per-step parts (mean
    over ranks of each epoch's sums / steps; ``rest`` = step - the parts)."""
    per_conf = {}
    for conf, jobs in runs.items():
        got = [j["models"][name] for j in jobs if "skipped" not in j["models"].get(name, {"skipped": 1})]
        if not got:
            continue
        c = {"epochs": [], "step": [], "rest": [], "jobs": got, "info": got[0], "allreduce_grad": []}
        c.update({p: [] for p in PARTS})
        for m in got:
            slowest = np.max(np.array(m["epoch_s_by_rank"]), axis=0)
            steps = m["steps"]
            c["epochs"] += slowest.tolist()
            step = slowest / steps
            c["step"] += step.tolist()
            total = np.zeros_like(step)
            for p in PARTS:
                v = np.mean([r[p] for r in m["parts_s_by_rank"]], axis=0) / steps
                c[p] += v.tolist()
                total += v
            c["rest"] += (step - total).tolist()
            c["allreduce_grad"] += m.get("allreduce_grad_s", [])
        per_conf[conf] = c
    return per_conf


def report(args, runs, algo_runs, machine):
    print(f"\nCPU: {machine['cpu']}, {machine['cores']} cores, last-level cache {fmt_bytes(machine['llc'] or 0)}; "
          f"{machine['mpi']}; mpi4py {machine['mpi4py']}; fastwb {machine['fastwb']}; "
          f"Python {platform.python_version()}")
    print(f"load average (1, 5, 15 min) before: {machine['load_before']}, after: {machine['load_after']}; "
          f"1-min load at each job's start-end: {', '.join(machine['job_loads'])}")
    busiest = max(machine["job_load_values"] + [machine["load_before"][0] if machine["load_before"] else 0.0])
    if busiest > machine["cores"]:
        print(f"WARNING: the 1-min load average reached {busiest:.2f} on {machine['cores']} cores: other processes "
              f"took CPU time from these jobs (2 ranks suffer most: a descheduled rank stalls the other, which spins "
              f"in the collective), so every figure below is unreliable; rerun on a quiet machine")
    print(f"global batch {args.batch}, float32, Adam; {args.rounds} round(s) of every configuration "
          f"(rotating order), {args.epochs} timed epoch(s) per job after a 4-step warm-up fit")
    result = {"machine": machine, "models": {}, "sweep": {}, "settings": vars(args).copy()}
    models = {}
    for name in args.models:
        pc = collect(runs, name)
        if pc:
            models[name] = pc
        else:
            print(f"\n{TITLE[name]}: skipped")

    # -- epochs ------------------------------------------------------------------------
    print("\nTime per epoch: fit's own epoch seconds (slowest rank), median over every timed epoch of every "
          "round (min-max)\n")
    head = ("| model | data | steps/epoch | 1 rank x 1 thread | 1 rank x 2 threads | 2 ranks x 1 thread | "
            "speedup 2 ranks | speedup 2 threads |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, pc in models.items():
        info = next(iter(pc.values()))["info"]
        med = {conf: float(np.median(pc[conf]["epochs"])) for conf in pc}
        cells = [fmt_range(pc[conf]["epochs"]) if conf in pc else "-" for conf in CONFIGS]
        sp2 = f"{med[(1, 1)] / med[(2, 1)]:.2f}x" if (1, 1) in med and (2, 1) in med else "-"
        sp12 = f"{med[(1, 1)] / med[(1, 2)]:.2f}x" if (1, 1) in med and (1, 2) in med else "-"
        print(f"| {TITLE[name]} | {info['data']} | {info['steps']} | " + " | ".join(cells) + f" | {sp2} | {sp12} |")
        result["models"][name] = {"data": info["data"], "steps": info["steps"], "grad_bytes": info["grad_bytes"],
                                  "parameters": info["parameters"],
                                  "configs": {f"{R}x{T}": {k: pc[(R, T)][k] for k in
                                                           ("epochs", "step", "rest", "allreduce_grad") + PARTS}
                                              for (R, T) in pc}}

    # -- where a step's time goes --------------------------------------------------------
    print("\nWhere a step goes inside fit: mean per step (each epoch's sums / steps, ranks averaged), median over "
          "epochs; wait = the Barrier before the Allreduce (waiting for the slower rank); rest = step - the others "
          "(gather, loss, Python)\n")
    print("| model | ranks x threads | step | forward+backward | wait | Allreduce | Adam | rest | Allreduce share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, pc in models.items():
        for conf in CONFIGS:
            if conf not in pc:
                continue
            c = pc[conf]
            share = [a / s for a, s in zip(c["allreduce"], c["step"])]
            wshare = [(a + w) / s for a, w, s in zip(c["allreduce"], c["wait"], c["step"])]
            cells = [fmt_s(float(np.median(c[k]))) for k in ("step",) + PARTS + ("rest",)]
            print(f"| {TITLE[name]} | {conf[0]} x {conf[1]} | " + " | ".join(cells) +
                  f" | {fmt_pct(float(np.median(share)))} ({fmt_pct(float(np.median(wshare)))} with the wait) |")
    for name, pc in models.items():
        if (2, 1) in pc:
            c = pc[(2, 1)]
            info = c["info"]
            ident = all(j.get("identical") for j in c["jobs"])
            inside = [float(np.median(j["allreduce_step_median_by_rank"])) for j in c["jobs"]]
            print(f"- {TITLE[name]}: flat gradient {info['parameters']:,} float32 = {fmt_bytes(info['grad_bytes'])}; "
                  f"its Allreduce alone on 2 ranks (after a Barrier): {fmt_range(c['allreduce_grad'])}; inside fit "
                  f"(median step): {fmt_range(inside)}; "
                  f"ranks bitwise identical after every 2-rank fit: {ident}")
            result["models"][name]["identical"] = ident

    # -- allreduce against bytes ----------------------------------------------------------
    sweep = {}
    for job in runs.get((2, 1), []):
        for k, v in job.get("sweep", {}).items():
            sweep.setdefault(int(k), []).extend(v)
    if not sweep or not models:
        print("\n(no 2-rank sweep or no model: no fit, no prediction)")
        return result
    med = {k: float(np.median(v)) for k, v in sweep.items()}
    alpha, beta, fitted = fit_alpha_beta(med)
    print("\nAllreduce (float32, IN_PLACE, SUM) on 2 ranks against bytes: per call, median over every sample of "
          "every round (min-max)\n")
    print("| bytes | time | bytes / time | fit: 2 alpha + bytes beta | fit / measured |")
    print("|---|---|---|---|---|")
    for n, t, f in fitted:
        print(f"| {fmt_bytes(n)} | {fmt_range(sweep[n])} | {n / t / 1e9:.2f} GB/s | {fmt_s(f)} | {f / t:.2f} |")
    print(f"\nfit over every size (least squares of relative residuals): alpha = {alpha * 1e6:.2f} us, "
          f"beta = {beta * 1e9:.3f} ns/byte ({1 / beta / 1e9:.2f} GB/s)")
    a_min, b_min, _ = fit_alpha_beta({k: float(np.min(v)) for k, v in sweep.items()})
    print(f"the same fit on each size's fastest sample (what a quiet machine approaches; not used below): "
          f"alpha = {a_min * 1e6:.2f} us, beta = {b_min * 1e9:.3f} ns/byte")
    result["sweep"] = {"median_s": {str(k): v for k, v in med.items()},
                       "samples_s": {str(k): v for k, v in sweep.items()}, "alpha_s": alpha, "beta_s_per_byte": beta,
                       "alpha_min_fit_s": a_min, "beta_min_fit_s_per_byte": b_min}
    if algo_runs:
        print("\nThe same sweep with the algorithm forced (coll_tuned_use_dynamic_rules=1, "
              "coll_tuned_allreduce_algorithm=A): median per call\n")
        sizes = sorted(sweep)
        print("| algorithm | " + " | ".join(fmt_bytes(n) for n in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        print("| default | " + " | ".join(fmt_s(med[n]) for n in sizes) + " |")
        for a, jobs in algo_runs.items():
            s = {}
            for job in jobs:
                for k, v in job["sweep"].items():
                    s.setdefault(int(k), []).extend(v)
            print(f"| {a} {ALGORITHMS[a]} | " + " | ".join(fmt_s(float(np.median(s[n]))) for n in sizes) + " |")
            result.setdefault("algorithms", {})[ALGORITHMS[a]] = {str(k): float(np.median(v)) for k, v in s.items()}

    # -- the model ----------------------------------------------------------------------
    cost = ("2 (N-1) alpha + 2 (N-1)/N bytes beta (ring)" if args.algorithm == "ring" else
            "2 log2(p) alpha + 2 (p-1)/p bytes beta, p = the largest power of two <= N, plus 2 (alpha + bytes "
            "beta) when N > p (Rabenseifner: Open MPI 4.1's fixed rule for these sizes)")
    print(f"\nModel: allreduce(bytes, N) = {cost}.  alpha from the fit; beta at the gradient's own size, from its "
          f"2-rank Allreduce t2: beta = (t2 - 2 alpha) / bytes (the sweep's per-byte cost changes with the size: "
          f"caches), so the model equals the measurement at N = 2.  simple: step(N) = step_1 / N + allreduce; "
          f"refined: step(N) = step_1 - fb_1 (1 - fb(ceil({args.batch} / N)) / fb({args.batch})) + allreduce: fit's "
          f"forward+backward fb_1 shrinks as the forward+backward alone, fb(b), does at the smaller local batch; "
          f"Adam and the rest stay whole on every rank.  speedup = step(1) / step(N), efficiency = speedup / N.")
    for name, pc in models.items():
        if (1, 1) not in pc:
            continue
        c = pc[(1, 1)]
        info = c["info"]
        step1 = float(np.median(c["step"]))
        curve = {}
        for job in c["jobs"]:
            for b, v in job["gradients_s"].items():
                curve.setdefault(int(b), []).extend(v)
        g = {b: float(np.median(v)) for b, v in curve.items()}
        nets = [("measured", alpha, beta)]
        if (2, 1) in pc and pc[(2, 1)]["allreduce_grad"]:
            t2 = float(np.median(pc[(2, 1)]["allreduce_grad"]))
            b_grad = (t2 - 2 * alpha) / info["grad_bytes"]
            if b_grad > 0:
                label = (f"measured: alpha {alpha * 1e6:.2f} us, beta {b_grad * 1e9:.3f} ns/B at "
                         f"{fmt_bytes(info['grad_bytes'])} (t2 = {fmt_s(t2)})")
                nets = [(label, alpha, b_grad)]
            else:
                label = (f"measured: alpha {alpha * 1e6:.2f} us, beta {beta * 1e9:.3f} ns/B (the fit's: the "
                         f"gradient's own Allreduce, {fmt_s(t2)}, is below 2 alpha)")
                nets = [(label, alpha, beta)]
        for spec in args.network:
            label, _, vals = spec.partition("=")
            a_us, b_ns = (float(v) for v in vals.split(","))
            nets.append((f"{label}, assumed (not measured): alpha {a_us:g} us, beta {b_ns:g} ns/B",
                         a_us * 1e-6, b_ns * 1e-9))
        m = {"step_1": step1, "grad_bytes": info["grad_bytes"], "gradients": g,
             "fb_1": float(np.median(c["gradients"]))}
        print(f"\n{TITLE[name]}: step_1 = {fmt_s(step1)} (1 rank x 1 thread: forward+backward "
              f"{fmt_s(float(np.median(c['gradients'])))}, Adam over {info['parameters']:,} parameters "
              f"{fmt_s(float(np.median(c['optimizer'])))}, rest {fmt_s(float(np.median(c['rest'])))}); fb(b) alone: "
              + ", ".join(f"{b}: {fmt_s(g[b])}" for b in sorted(g, reverse=True)))
        entry = result["models"][name]
        entry.update(step_1_s=step1, fb_s=g, predictions={})
        for label, a, b in nets:
            p = predict(m, a, b, args.batch, args.efficiency, args.algorithm)
            rows = {r["N"]: r for r in p["rows"]}
            s, f = p["simple"], p["refined"]
            print(f"\n  {label}\n")
            print("  | N | allreduce | simple step | speedup | efficiency | refined step | speedup | efficiency |")
            print("  |---|---|---|---|---|---|---|---|")
            shown = sorted({2 ** k for k in range(int(math.log2(args.batch)) + 1)}
                           | {s["peak_N"], f["peak_N"], s["last_efficient_N"], f["last_efficient_N"]})
            for N in shown:
                r = rows[N]
                print(f"  | {N} | {fmt_s(r['allreduce'])} | {fmt_s(r['simple'])} | {r['simple_speedup']:.2f}x | "
                      f"{r['simple_speedup'] / N:.0%} | {fmt_s(r['refined'])} | {r['refined_speedup']:.2f}x | "
                      f"{r['refined_speedup'] / N:.0%} |")
            form = ("sqrt((step_1 - 2 bytes beta) / (2 alpha))" if args.algorithm == "ring"
                    else "(step_1 - 2 bytes beta) ln 2 / (2 alpha)")
            star = f"N* = {form} = {s['N_star']:.3g}" if s["N_star"] else "N* = none: one rank is fastest"
            print(f"\n  simple: the speedup peaks at N = {s['peak_N']} ({s['peak_speedup']:.2f}x; {star}); "
                  f"efficiency >= {args.efficiency:.0%} up to N = {s['last_efficient_N']}.  refined: peaks at "
                  f"N = {f['peak_N']} ({f['peak_speedup']:.2f}x); efficiency >= {args.efficiency:.0%} up to "
                  f"N = {f['last_efficient_N']}.  (N <= {args.batch}: one row per rank at most.)")
            if label.startswith("measured") and (2, 1) in pc:
                meas2 = float(np.median(pc[(2, 1)]["step"]))
                print(f"  check at N = 2: measured 2-rank step {fmt_s(meas2)}; simple model {fmt_s(rows[2]['simple'])} "
                      f"({rows[2]['simple'] / meas2:.2f}x the measurement), refined {fmt_s(rows[2]['refined'])} "
                      f"({rows[2]['refined'] / meas2:.2f}x)")
            entry["predictions"][label] = {"alpha_s": a, "beta_s_per_byte": b,
                                           **{k: p[k] for k in ("simple", "refined")}}
    print("\nNote: the 2 ranks share this machine's 2 cores, memory bandwidth and caches (no bigger machine was "
          "available); alpha and beta are Open MPI shared-memory (vader) figures, not a network's.")
    return result


def driver(args):
    if not mpirun_path():
        sys.exit("mpirun not found: install Open MPI (apt-get install openmpi-bin libopenmpi-dev)")
    try:
        import mpi4py
    except ImportError:
        sys.exit("mpi4py not found: pip install 'fastwb[distributed]'")
    import fastwb
    import fastwb.benchmark

    if "mnist" in args.models:
        from fastwb import datasets
        try:
            datasets.load_mnist(args.data_path, "test", np.float32, name="mnist")
        except (FileNotFoundError, ValueError) as e:
            print(f"skipping 784-256-10 on MNIST: {e} (pass --data-path DIR or set FASTWB_MNIST)")
            args.models = [m for m in args.models if m != "mnist"]
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_before": load_average(), "fastwb": fastwb.__version__,
               "llc": fastwb.benchmark.last_level_cache(),
               "mpi4py": mpi4py.__version__, "job_loads": [], "job_load_values": []}
    print(f"CPU {machine['cpu']}, {machine['cores']} cores, load average {machine['load_before']}")
    runs = {c: [] for c in CONFIGS}
    algo_runs = {}
    with tempfile.TemporaryDirectory(prefix="fastwb-scaling-") as folder:
        for r in range(args.rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
            for R, T in order:
                job = run_job(args, R, T, folder, f"r{r}-{R}x{T}", no_sweep=R == 1)
                runs[(R, T)].append(job)
                machine["mpi"] = job["mpi"]
                machine["job_loads"].append(f"{R}x{T}: {job['load_before'][0]:.2f}-{job['load_after'][0]:.2f}")
                machine["job_load_values"] += [job["load_before"][0], job["load_after"][0]]
                print(f"  round {r + 1}/{args.rounds}: {R} rank(s) x {T} thread(s): {job['wall_s']:.1f} s, "
                      f"load {job['load_before'][0]:.2f} -> {job['load_after'][0]:.2f}", flush=True)
        if args.compare_algorithms:
            for r in range(args.rounds):
                for a in ALGORITHMS:
                    env = {"OMPI_MCA_coll_tuned_use_dynamic_rules": "1",
                           "OMPI_MCA_coll_tuned_allreduce_algorithm": str(a)}
                    algo_runs.setdefault(a, []).append(run_job(args, 2, 1, folder, f"r{r}-alg{a}", env,
                                                               sweep_only=True))
                print(f"  round {r + 1}/{args.rounds}: forced algorithms done", flush=True)
    machine["load_after"] = load_average()
    result = report(args, runs, algo_runs, machine)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
        print(f"wrote {args.json}")


def csv(kind):
    def parse(text):
        return [kind(v) for v in text.split(",") if v]
    return parse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a quick check that everything runs (not a measurement)")
    ap.add_argument("--data-path", default=None, help="MNIST folder (default $FASTWB_MNIST, else ../shared/data/mnist)")
    ap.add_argument("--models", type=csv(str), default=["mnist", "wide"], help="mnist,wide (default both)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the three jobs (default 3; quick 1)")
    ap.add_argument("--epochs", type=int, default=None, help="timed epochs per job (default 3; quick 1)")
    ap.add_argument("--batch", type=int, default=GLOBAL_BATCH, help="the global batch (a power of two)")
    ap.add_argument("--wide-rows", type=int, default=None,
                    help="rows of the wide model's data (default 2048; quick 256)")
    ap.add_argument("--mnist-rows", type=int, default=None, help="MNIST rows (default all 60000; quick 8192)")
    ap.add_argument("--samples", type=int, default=None, help="samples per timing (default 15; quick 5)")
    ap.add_argument("--target-ms", type=float, default=None,
                    help="least ms per timing sample (default 2: many short samples, whose median a busy machine "
                         "disturbs least)")
    ap.add_argument("--sizes", type=csv(int), default=None, help="allreduce sweep bytes (default 1 KiB .. 64 MiB)")
    ap.add_argument("--efficiency", type=float, default=0.8, help="the efficiency threshold of the prediction")
    ap.add_argument("--algorithm", choices=("rabenseifner", "ring"), default="rabenseifner",
                    help="the allreduce cost model of the prediction (default rabenseifner, Open MPI 4.1's choice "
                         "for messages >= 256 KiB on any number of ranks)")
    ap.add_argument("--compare-algorithms", action="store_true",
                    help="also time the 2-rank sweep with Open MPI's allreduce algorithm forced (3, 4, 5, 6)")
    ap.add_argument("--network", action="append", default=[], metavar="NAME=ALPHA_US,BETA_NS",
                    help="add predictions for an assumed network, e.g. 10GbE=30,0.8")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--job-timeout", type=int, default=1800, help="seconds per mpirun job")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sweep-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-sweep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    q = args.quick
    for key, normal, quick in (("rounds", 3, 1), ("epochs", 3, 1), ("wide_rows", 2048, 256), ("samples", 15, 5),
                               ("target_ms", 2.0, 2.0), ("mnist_rows", None, 8192),
                               ("sizes", list(SWEEP_BYTES), list(QUICK_SWEEP_BYTES))):
        if getattr(args, key) is None:
            setattr(args, key, quick if q else normal)
    if args.batch < 1 or args.batch & (args.batch - 1):
        ap.error("--batch must be a power of two")
    unknown = set(args.models) - {"mnist", "wide"}
    if unknown:
        ap.error(f"unknown models {sorted(unknown)}: choose from mnist, wide")
    if args.data_path is None:
        args.data_path = default_mnist_folder()
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
