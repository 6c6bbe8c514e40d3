"""NumPy's BLAS, found at run time and handed to fastwb's tiled GEMMs.

fastwb never brings a BLAS of its own: its GEMMs call the OpenBLAS that NumPy
loaded (as threadpoolctl finds it: among the shared libraries mapped into
the process), through its CBLAS entry points ``cblas_sgemm``/``cblas_dgemm``,
with the prefix and suffix NumPy's build gave them (NumPy's wheels ship
``scipy_cblas_sgemm64_``: 64-bit integers).  Its ``openblas_set_num_threads``
sets OpenBLAS's own pool to one thread while fastwb calls it (see
fastwb/_gemm.pyx).  Where no OpenBLAS with these symbols is loaded (an MKL or
Accelerate NumPy, another platform), fastwb's GEMMs fall back to
``np.matmul(..., out=)``, threaded by that BLAS; :func:`info` (and
``fastwb info``) says which path is active.

``FASTWB_BLAS=numpy`` forces the fallback (for comparisons and debugging).
"""

import ctypes
import os
import sys

import numpy as np

from fastwb import _gemm

# (prefix, suffix, 64-bit integers) in the order tried: NumPy's wheels, then
# distribution builds (plain LP64, or the ILP64 "64_" variant).
_NAMINGS = (("scipy_", "64_", True), ("", "", False), ("", "64_", True))

_state = {"path": None, "library": None, "symbols": None, "reason": None}


def _loaded_libraries():
    """Paths of the shared libraries mapped into this process (Linux), else NumPy's bundled ones."""
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(None, 5) for line in f]
        return sorted({f[5].strip() for f in fields if len(f) == 6 and f[5].startswith("/")})
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(np.__file__))
    found = []
    for folder in (os.path.join(root, "numpy.libs"), os.path.join(os.path.dirname(np.__file__), ".dylibs")):
        if os.path.isdir(folder):
            found += [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    return found


def _symbols(lib):
    """[sgemm, dgemm, ilp64, get_threads, set_threads, sgemv, dgemv (0, 0: absent), name]
    of an OpenBLAS library, or None."""
    for prefix, suffix, ilp64 in _NAMINGS:
        try:
            s = getattr(lib, f"{prefix}cblas_sgemm{suffix}")
            d = getattr(lib, f"{prefix}cblas_dgemm{suffix}")
        except AttributeError:
            continue
        try:
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
        except AttributeError:
            continue        # no way to keep its pool off fastwb's cores: not used
        try:
            gemv = [getattr(lib, f"{prefix}cblas_{t}gemv{suffix}") for t in "sd"]
        except AttributeError:
            gemv = []
        addr = [ctypes.cast(f, ctypes.c_void_p).value for f in (s, d, get, put, *gemv)]
        return addr[:2] + [ilp64] + addr[2:4] + (addr[4:] or [0, 0]) + [f"{prefix}cblas_sgemm{suffix}"]
    return None


def find():
    """Bind fastwb's GEMMs to NumPy's OpenBLAS if it is loaded; return :func:`info`."""
    _gemm.unbind()
    _state.update(path=None, library=None, symbols=None, reason=None)
    if os.environ.get("FASTWB_BLAS", "").strip().lower() == "numpy":
        _state["reason"] = "FASTWB_BLAS=numpy"
        return info()
    candidates = [p for p in _loaded_libraries() if "openblas" in os.path.basename(p).lower()]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)     # already loaded by NumPy: the same handle, nothing new runs
        except OSError:
            continue
        found = _symbols(lib)
        if found is None:
            continue
        *addresses, name = found
        _gemm.bind(*addresses)
        _state.update(path=path, library=lib, symbols=name)
        return info()
    _state["reason"] = ("no OpenBLAS with CBLAS and thread-control entry points is loaded"
                        if sys.platform.startswith("linux") else "not searched on this platform")
    return info()


def info():
    """Which GEMM path is active: ``{"gemm": "tiled" | "np.matmul", ...}``."""
    if _gemm.available():
        return {"gemm": "tiled (fastwb threads, NumPy's OpenBLAS single-threaded)", "symbol": _state["symbols"],
                "library": _state["path"], "blas_threads": _gemm.blas_threads()}
    return {"gemm": "np.matmul (the BLAS's own threads)", "reason": _state["reason"]}


find()
