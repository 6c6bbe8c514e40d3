"""Loading the OpenMP runtime with passive waiting, and fastwb's thread controls.

Why passive waiting: by default libgomp's idle threads busy-wait after each
parallel region, on the very cores that NumPy's BLAS threads need next.
Measured on the 2-core development machine (../shared/DESIGN.md), a GEMM
followed by a 2-thread fastwb pass took 20x longer than the two alone.  So the
first import of fastwb loads its OpenMP runtime with ``OMP_WAIT_POLICY=PASSIVE``
and, for libgomp, a short spin before sleeping (``GOMP_SPINCOUNT``, see
:data:`SPIN_GRACE`: about 0.2 ms, so that the back-to-back regions of one
training step do not each wake a sleeping thread), unless the user has chosen
a policy (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` in the
environment), and then removes the variables again, so that they do not leak
into subprocesses or into another OpenMP runtime loaded later (PyTorch ships
its own).

Threads: fastwb keeps no count of its own.  The OpenMP runtime's thread
count (``OMP_NUM_THREADS``, :func:`set_num_threads`, or threadpoolctl's
``threadpool_limits(..., user_api="openmp")``) is the single source of truth,
read once per kernel call; small work runs serially (:func:`plan_threads`).
Its default is the process's CPU budget (:func:`cpu_budget`): the CPUs it may
run on, lowered to a cgroup CPU quota (a container limited to 1.5 CPUs of 16
runs 2 threads, not 16).  fastwb loads the runtime with ``OMP_NUM_THREADS``
set to the budget when the quota is the smaller, and removes the variable
again; a thread count the user sets always wins.
In a process forked from one that had fastwb loaded, every kernel runs on one
thread (OpenMP's worker threads do not survive fork), with one RuntimeWarning.
"""

import contextlib
import operator
import os
import posixpath
import sys
import threading
import warnings
from fractions import Fraction

_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

# libgomp spins this many times (about 70 ns each on the development machine:
# some 0.2 ms) at a barrier or between regions before it sleeps.  Without it
# every parallel region woke a sleeping thread and waited for it at its end:
# the 2-thread tiled GEMM of 128x784 @ 784x256 took 420-480 us instead of
# 330-345 us (1.3x instead of 1.75x over one thread); spinning that briefly
# costs a NumPy call right after a fastwb call at most 0.2 ms, where
# libgomp's default (300,000 spins, ~20 ms) cost it 10 ms.
SPIN_GRACE = 3000


def _mapped_files():
    """Shared objects mapped into this process (Linux), or None where unknown."""
    try:
        with open("/proc/self/maps") as fh:
            return {line.split(None, 5)[5].strip() for line in fh if len(line.split(None, 5)) == 6}
    except OSError:
        return None


def _import_threads():
    """``fastwb._threads``, or a one-line ImportError when the compiled modules were
    never built (a source checkout or a clean clone imported without installing)."""
    try:
        from fastwb import _threads
    except ImportError:
        import importlib.util
        if importlib.util.find_spec("fastwb._threads") is not None:
            raise                   # built, but it failed to load: keep the real reason
        folder = os.path.dirname(os.path.abspath(__file__))
        raise ImportError(
            f"fastwb is not built: its compiled modules are missing from {folder}; build them with "
            "`pip install -e .` in the source tree, or run Python from outside the source tree "
            "to use an installed fastwb"
        ) from None
    return _threads


# -- the CPU budget ----------------------------------------------------------------
# libgomp's default thread count is the number of CPUs in the affinity mask; it
# does not know about cgroup CPU quotas, so a container limited to 1.5 CPUs of
# 16 would run 16 threads, each getting a tenth of a CPU and stalling at every
# barrier.  cpu_budget() reads the quota the way the kernel applies it: the
# smallest quota/period on the way from the process's own cgroup up to the root
# of the mounted hierarchy (a quota bounds every cgroup below it).

_READ_LIMIT = 1 << 16


def _read_text(path):
    """A small text file's contents, or None where it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(_READ_LIMIT)
    except (OSError, ValueError):
        return None


def _read_int(path):
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _cgroup_dirs(mount, path):
    """mount/path and its parents up to mount itself: the cgroup's directory and its
    ancestors.  In a container the path from /proc/self/cgroup may name the host's
    hierarchy while mount is the container's own cgroup; the walk still ends there."""
    parts = [p for p in posixpath.normpath("/" + path).split("/") if p not in ("", ".", "..")]
    for depth in range(len(parts), -1, -1):
        yield os.path.join(mount, *parts[:depth])


def _ratio(quota, period):
    """quota/period as a Fraction, or None where it is no valid limit."""
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return Fraction(quota, period)


def _v2_quota_at(d):
    """The cgroup v2 quota of directory d (``cpu.max``: "quota period"; "max ...": none)."""
    fields = (_read_text(os.path.join(d, "cpu.max")) or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return _ratio(int(fields[0]), int(fields[1]))
    except ValueError:
        return None


def _v1_quota_at(d):
    """The cgroup v1 CFS quota of directory d (quota -1: none)."""
    return _ratio(_read_int(os.path.join(d, "cpu.cfs_quota_us")), _read_int(os.path.join(d, "cpu.cfs_period_us")))


def _smallest_quota(dirs, quota_at):
    """The smallest quota on the walk ``dirs`` (a quota bounds every cgroup below it), or None."""
    return min((q for q in map(quota_at, dirs) if q is not None), default=None)


def _cgroup_quota(root):
    """(CPUs as a Fraction, source) for the smallest cgroup CPU quota, or (None, None)."""
    text = _read_text(os.path.join(root, "proc/self/cgroup"))
    if text is None:
        return None, None
    base = os.path.join(root, "sys/fs/cgroup")
    found = []
    for line in text.splitlines():
        fields = line.split(":", 2)     # hierarchy-ID:controller-list:cgroup-path
        if len(fields) != 3:
            continue
        ident, controllers, path = fields
        if ident == "0" and controllers == "":
            # cgroup v2; on a hybrid system its hierarchy is mounted at unified/
            for mount in (base, os.path.join(base, "unified")):
                q = _smallest_quota(_cgroup_dirs(mount, path), _v2_quota_at)
                if q is not None:
                    found.append((q, "cgroup v2 cpu.max"))
        elif "cpu" in controllers.split(","):
            names = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
            if "/" not in controllers and controllers not in (".", ".."):
                names = (controllers,) + names
            mounts = dict.fromkeys(os.path.join(base, m) for m in names)
            for mount in mounts:
                q = _smallest_quota(_cgroup_dirs(mount, path), _v1_quota_at)
                if q is not None:
                    found.append((q, "cgroup v1 cfs quota"))
    if not found:
        return None, None
    return min(found, key=lambda f: f[0])


def _affinity():
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_budget(root="/", *, affinity=None):
    """The CPUs this process may use, as a dict: fastwb's default thread count.

    ``affinity``: the CPUs the process may run on (``os.sched_getaffinity``,
    else ``os.cpu_count()``; the argument overrides it).  ``quota``: the
    cgroup CPU quota in CPUs (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``, the smallest from the process's
    own cgroup up to the root), or None where there is none.  ``cpus``:
    ``min(affinity, max(1, ceil(quota)))`` (1.5 CPUs of 16 gives 2).
    ``source``: which bound decided (``"affinity"``, ``"cgroup v2 cpu.max"`` or
    ``"cgroup v1 cfs quota"``).  ``root`` is where ``/proc`` and ``/sys`` are
    found (tests point it at a fake tree).  Files that are missing, unreadable
    or malformed count as no quota; this never raises for them.
    """
    if affinity is None:
        affinity = _affinity()
    affinity = max(1, operator.index(affinity))
    try:
        quota, source = _cgroup_quota(root)
        quota_cpus = None if quota is None else float(quota)
    except ArithmeticError:
        quota, source, quota_cpus = None, None, None   # a quota beyond any float: none
    cpus, decided = affinity, "affinity"
    if quota is not None:
        ceiling = max(1, -(-quota.numerator // quota.denominator))
        if ceiling < affinity:
            cpus, decided = ceiling, source
    return {"cpus": cpus, "affinity": affinity, "quota": quota_cpus, "source": decided}


def _explicit_thread_count():
    """True when the user set the OpenMP thread count in the environment."""
    return os.environ.get("OMP_NUM_THREADS", "").strip() != ""


_budget = cpu_budget()
# The thread count fastwb's default is lowered to, or None: the user chose a count
# (OMP_NUM_THREADS), or the runtime's own default (the affinity mask) is already it.
_lowered = None if _explicit_thread_count() or _budget["cpus"] >= _budget["affinity"] else _budget["cpus"]


def _load_runtime():
    user = {k: os.environ[k] for k in _WAIT_VARIABLES if k in os.environ}
    before = _mapped_files()
    # Variables the runtime reads once, when it is loaded: set for the import only,
    # so that they leak into no subprocess and no other OpenMP runtime loaded later.
    temporary = {}
    if not user:
        temporary["OMP_WAIT_POLICY"] = "PASSIVE"
        temporary["GOMP_SPINCOUNT"] = str(SPIN_GRACE)     # libgomp: spin this long first
    if _lowered is not None:
        temporary["OMP_NUM_THREADS"] = str(_lowered)
    os.environ.update(temporary)
    try:
        _threads = _import_threads()
        _threads.max_threads()      # a lazily initialised runtime (LLVM's libomp) reads them now
    finally:
        for k in temporary:
            os.environ.pop(k, None)
    if user:
        policy = "user setting: " + ", ".join(f"{k}={v}" for k, v in user.items())
    else:
        policy = f"passive after a short spin (GOMP_SPINCOUNT={SPIN_GRACE}; fastwb default)"
    library = _threads.runtime_library()
    if not _threads.openmp_enabled():
        policy = "none (serial build)"
    elif before is not None and library and os.path.realpath(library) in {os.path.realpath(p) for p in before}:
        policy = (
            "runtime default: the OpenMP runtime was loaded before fastwb; set "
            "OMP_WAIT_POLICY=PASSIVE before starting Python to avoid busy-waiting"
        )
    return _threads, policy


_threads, WAIT_POLICY = _load_runtime()

# The runtime read OMP_NUM_THREADS when it was loaded.  Loaded before fastwb (by
# another extension), it kept its own default, and omp_set_num_threads would set
# only the calling thread's count (threads started later see the default again).
# Then _available_threads() caps the runtime's untouched default at the budget in
# every thread: a count set through fastwb in this thread (_chosen.n) or any count
# other than that default (OMP_NUM_THREADS, threadpoolctl) is the user's and wins.
_runtime_default = _threads.max_threads()
_cap = _lowered if _lowered is not None and _runtime_default > _lowered else None
_chosen = threading.local()

# fastwb's GEMMs (fastwb/_gemm.pyx): NumPy's BLAS, called from fastwb's threads,
# each GEMM cut into at most as many tiles as the default thread count, so that
# the tiles (and so the results) never depend on the thread count of a call.
from fastwb import _blas, _gemm  # noqa: E402  (after the runtime is loaded)

_gemm.set_tiles_max(max(1, _cap if _cap is not None else _runtime_default))

# Compiled plans read the runtime's thread count themselves unless the cap applies
# (or, after fork, _after_fork_in_child says so): then they call call_threads().
from fastwb import _engine  # noqa: E402
_engine.use_python_thread_rule(_cap is not None)

if not _threads.openmp_enabled() and os.environ.get("FASTWB_EXPECT_NO_OPENMP") != "1":
    warnings.warn(
        "fastwb was built without OpenMP: every kernel runs on one thread. Reinstall with a "
        "compiler that supports OpenMP, or set FASTWB_EXPECT_NO_OPENMP=1 to silence this.",
        RuntimeWarning,
        stacklevel=2,
    )


# -- fork ------------------------------------------------------------------------
# libgomp's worker threads do not survive fork(): in a child forked after the
# parent ran a parallel region, the next region with more than one thread waits
# forever for workers that no longer exist.  A region with num_threads(1) never
# touches them (tests/test_fork.py checks this), so a forked child runs every
# kernel on one thread: every thread count fastwb picks comes from
# _available_threads(), and it answers 1 in a forked child.  The child says so
# once, with a RuntimeWarning, when work would otherwise have been parallel.

_forked = False         # this process was forked from one that had fastwb loaded
_warned_serial = False


def _after_fork_in_child():
    global _forked, _warned_serial
    _forked = True
    _warned_serial = False
    _engine.use_python_thread_rule(True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _warn_serial():
    global _warned_serial
    if not _warned_serial:
        _warned_serial = True
        warnings.warn(
            "fastwb runs on one thread in this process: it was forked from a process that had "
            "fastwb loaded, and OpenMP's worker threads do not survive fork(). Use the 'spawn' or "
            "'forkserver' start method of multiprocessing for multi-threaded child processes.",
            RuntimeWarning,
            stacklevel=4,
        )


def _available_threads(warn=True):
    """The OpenMP runtime's thread count (capped by the CPU budget where the runtime
    was loaded before fastwb and still runs its own default), or 1 in a forked
    child (warned once)."""
    n = _threads.max_threads()
    if _cap is not None and n == _runtime_default and n > _cap and not getattr(_chosen, "n", False):
        n = _cap
    if n > 1 and _forked:
        if warn:
            _warn_serial()
        return 1
    return n


def get_num_threads():
    """Number of threads fastwb kernels may use (the OpenMP runtime's count;
    always 1 in a process forked from one that had fastwb loaded)."""
    return _available_threads(warn=False)


def set_num_threads(n):
    """Set the number of threads fastwb kernels may use.

    This sets the OpenMP runtime's thread count for the calling thread, the
    same setting that ``OMP_NUM_THREADS`` and threadpoolctl control; it wins
    over the CPU budget (:func:`cpu_budget`), which sets only the default.  In
    a forked child the setting is kept but kernels still run on one thread
    (see :func:`get_num_threads`); asking for more warns once.
    """
    if isinstance(n, bool):
        raise TypeError("n must be an integer number of threads, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an integer number of threads, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _threads.set_max_threads(n)
    _chosen.n = True
    if n > 1 and _forked:
        _warn_serial()


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with ``n`` fastwb threads, then restore.

    >>> with fastwb.threads(1):
    ...     y = fastwb.relu(x)
    """
    previous, chosen = _threads.max_threads(), getattr(_chosen, "n", False)
    set_num_threads(n)
    try:
        yield
    finally:
        _threads.set_max_threads(previous)
        _chosen.n = chosen


# Work per thread below which a kernel runs serially.  Waking a sleeping
# (passive) OpenMP thread costs 40-90 us on the 2-core development machine, so
# a second thread pays off only with enough work each.  Measured there with
# `python bench/targets.py --grain` (1 vs 2 threads, float32): relu breaks even near 2M
# elements (about 0.1 ns per element when memory-bound), sigmoid near 256K
# (about 0.5 ns per element).
GRAIN_MEMORY = 1 << 20      # cheap elementwise work: add, max, multiply, SGD
GRAIN_COMPUTE = 1 << 17     # exp-based work: sigmoid, tanh, softmax
GRAIN_UPDATE = 1 << 16      # Adam / RMSprop steps (sqrt and divide), bound by the divider:
                            # inside a training step the team is still awake (the spin of
                            # SPIN_GRACE), and the 784-256-10 b128 step (203K parameters) ran
                            # 0.88x the time with Adam on 2 threads (median of 14 alternating
                            # processes); a lone update, whose team may be asleep, gains
                            # little (203K: 114 us on 1 thread, 108 on 2), and optimizers
                            # measure their own choice (ThreadChoice) and keep one thread
                            # where two lose


def plan_threads(work, grain=GRAIN_MEMORY, available=None):
    """Threads to use for ``work`` elements: 1 below 2*grain, else at most work // grain
    and ``available`` (default: :func:`get_num_threads`, 1 in a forked child)."""
    if work < 2 * grain:
        return 1
    n = _available_threads() if available is None else available
    if n <= 1:
        return 1
    return int(min(n, work // grain))


def default_threads():
    """The thread count fastwb starts with in this process (the CPU budget unless
    ``OMP_NUM_THREADS`` said otherwise): what plans are made for."""
    return _gemm.get_tiles_max()


def call_threads():
    """The most threads a compiled plan may use in this call (fastwb/_engine.pyx
    lowers its planned counts to it): the thread setting now, 1 in a forked child."""
    return _available_threads()


# A GEMM's work per thread (multiply-adds, M*N*K) below which it runs on one
# thread: 2M multiply-adds take about 40 us on one core of the development machine.
GRAIN_GEMM = 1 << 21


def gemm_threads(m, n, k, available=None):
    """Threads for an (m x k) @ (k x n) GEMM of fastwb/_gemm.pyx: by its work
    (:data:`GRAIN_GEMM` each), at most one per tile (the tiles are fixed by the
    shape) and ``available`` (as :func:`plan_threads`)."""
    return min(plan_threads(m * n * k, GRAIN_GEMM, available), _gemm.tile_count(m, n))


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if blas:
            b = blas[0]
            return {k: b.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
    try:
        import numpy as np
        cfg = np.show_config(mode="dicts")
        dep = cfg["Build Dependencies"]["blas"]
        return {"internal_api": dep.get("name"), "version": dep.get("version"), "num_threads": None, "filepath": None}
    except Exception:
        return {"internal_api": "unknown", "version": None, "num_threads": None, "filepath": None}


def config():
    """The configuration dict reported by :func:`fastwb.show_config`."""
    import numpy as np
    from fastwb._version import __version__

    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "openmp": _threads.openmp_enabled(),
        "openmp_runtime": _threads.runtime_library() or None,
        "num_threads": get_num_threads(),
        "cpu_budget": dict(_budget),
        "wait_policy": WAIT_POLICY,
        "blas": _blas_info(),
        "gemm": _blas.info(),
        "int8_paths": _int8_paths(),
        "build": _threads.build_info(),
    }


def _int8_paths():
    """The int8 kernel paths this CPU runs, fastest last (the default of
    fastwb.quantize unless FASTWB_INT8_PATH names another)."""
    from fastwb import _quant
    return ", ".join(name for i, name in enumerate(_quant.PATHS) if _quant.supported(i))


def show_config():
    """Print fastwb's configuration and return it as a dict.

    Keys: ``version``, ``openmp`` (bool: compiled with OpenMP),
    ``openmp_runtime`` (the shared library found), ``num_threads``,
    ``cpu_budget`` (:func:`cpu_budget` at import: the default thread count
    and what bounded it), ``wait_policy``, ``blas`` (NumPy's BLAS, the only
    one fastwb uses), ``gemm`` (how fastwb calls it: tiled from fastwb's own
    threads with the BLAS's entry point named, or ``np.matmul`` and why),
    ``int8_paths`` (the int8 kernels this CPU runs, fastest last) and
    ``build`` (compiler and flags of the installed binary).
    """
    cfg = config()
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, ""))
        print(f"{key:<{width}}  {value}")
    return cfg
