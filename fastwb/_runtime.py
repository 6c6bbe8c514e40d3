"""Loading the OpenMP runtime with passive waiting, and fastwb's thread controls.

Why passive waiting: by default libgomp's idle threads busy-wait after each
parallel region, on the very cores that NumPy's BLAS threads need next.
Measured on the 2-core development machine (../shared/DESIGN.md), a GEMM
followed by a 2-thread fastwb pass took 20x longer than the two alone.  So the
first import of fastwb loads its OpenMP runtime with ``OMP_WAIT_POLICY=PASSIVE``
unless the user has chosen a policy (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or
``KMP_BLOCKTIME`` in the environment), and then removes the variable again, so
that it does not leak into subprocesses or into another OpenMP runtime loaded
later (PyTorch ships its own).

Threads: fastwb keeps no count of its own.  The OpenMP runtime's thread
count (``OMP_NUM_THREADS``, :func:`set_num_threads`, or threadpoolctl's
``threadpool_limits(..., user_api="openmp")``) is the single source of truth,
read once per kernel call; small work runs serially (:func:`plan_threads`).
In a process forked from one that had fastwb loaded, every kernel runs on one
thread (OpenMP's worker threads do not survive fork), with one RuntimeWarning.
"""

import contextlib
import operator
import os
import sys
import warnings

_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


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


def _load_runtime():
    user = {k: os.environ[k] for k in _WAIT_VARIABLES if k in os.environ}
    before = _mapped_files()
    if user:
        _threads = _import_threads()
        policy = "user setting: " + ", ".join(f"{k}={v}" for k, v in user.items())
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            _threads = _import_threads()
        finally:
            os.environ.pop("OMP_WAIT_POLICY", None)
        policy = "passive (fastwb default)"
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
    """The OpenMP runtime's thread count, or 1 in a forked child (warned once)."""
    n = _threads.max_threads()
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
    same setting that ``OMP_NUM_THREADS`` and threadpoolctl control.  In a
    forked child the setting is kept but kernels still run on one thread
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
    if n > 1 and _forked:
        _warn_serial()


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with ``n`` fastwb threads, then restore.

    >>> with fastwb.threads(1):
    ...     y = fastwb.relu(x)
    """
    previous = _threads.max_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        _threads.set_max_threads(previous)


# Work per thread below which a kernel runs serially.  Waking a sleeping
# (passive) OpenMP thread costs 40-90 us on the 2-core development machine, so
# a second thread pays off only with enough work each.  Measured there with
# `python bench/targets.py --grain` (1 vs 2 threads, float32): relu breaks even near 2M
# elements (about 0.1 ns per element when memory-bound), sigmoid near 256K
# (about 0.5 ns per element).
GRAIN_MEMORY = 1 << 20      # cheap elementwise work: add, max, multiply, SGD
GRAIN_COMPUTE = 1 << 17     # exp-based work: sigmoid, tanh, softmax
GRAIN_UPDATE = 1 << 19      # Adam / RMSprop steps (sqrt and divide): 1M float32
                            # took 524 us on 1 thread, 358 us on 2


def plan_threads(work, grain=GRAIN_MEMORY):
    """Threads to use for ``work`` elements: 1 below 2*grain, else at most work // grain
    (and 1 in a forked child, see :func:`get_num_threads`)."""
    if work < 2 * grain:
        return 1
    n = _available_threads()
    if n <= 1:
        return 1
    return int(min(n, work // grain))


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
        "wait_policy": WAIT_POLICY,
        "blas": _blas_info(),
        "build": _threads.build_info(),
    }


def show_config():
    """Print fastwb's configuration and return it as a dict.

    Keys: ``version``, ``openmp`` (bool: compiled with OpenMP),
    ``openmp_runtime`` (the shared library found), ``num_threads``,
    ``wait_policy``, ``blas`` (NumPy's BLAS, the only one fastwb uses) and
    ``build`` (compiler and flags of the installed binary).
    """
    cfg = config()
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, ""))
        print(f"{key:<{width}}  {value}")
    return cfg
