# fastwb's GEMMs run NumPy's own BLAS kernel, called single-threaded from
# fastwb's OpenMP team.
#
# fastwb/_blas.py finds the BLAS NumPy loaded (its OpenBLAS: the CBLAS
# sgemm/dgemm entry points and openblas_set_num_threads, under whatever
# prefix and suffix the build gave them) and hands their addresses to bind().
# tiled_gemm() then computes C = op(A) @ op(B) (row-major, beta = 0, so the
# BLAS writes C without NumPy's prior zeroing) as tiles shared out over up to
# nt threads: the output is cut into column tiles (or row tiles) of at least
# TILE_MIN columns (rows), no more tiles than the process's CPU budget, inner
# edges multiples of 16; each thread calls the BLAS on its tiles and runs
# each tile's epilogue (bias + activation, or activation derivative +
# bias-gradient column sums) while the tile is in cache.
#
# Results do not depend on nt: the tiles depend on the shape and the budget
# only, so every element comes from the same BLAS call whichever thread
# makes it (tests/test_gemm.py checks 1/2/3/4 threads bit for bit, and one
# tile against np.matmul with the BLAS on one thread); the epilogues are
# elementwise, and column sums are taken by one thread per column, rows in
# order.
#
# While fastwb runs (blas_enter .. blas_exit, nested and thread-safe under
# the GIL) the BLAS's own thread pool is set to one thread, so no BLAS
# worker spins against fastwb's threads; the user's count is restored for
# their own NumPy code afterwards.

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uintptr_t
from libc.string cimport memset

from fastwb._dense cimport colsum_2d
from fastwb._parallel cimport part_start
from fastwb._rows cimport *

import numpy as np

cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    enum { FWB_ROW_MAJOR = 101, FWB_NO_TRANS = 111, FWB_TRANS = 112 };
    """
    enum:
        FWB_ROW_MAJOR
        FWB_NO_TRANS
        FWB_TRANS

ctypedef void (*sgemm64_t)(int, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                           const float *, int64_t, float, float *, int64_t) noexcept nogil
ctypedef void (*dgemm64_t)(int, int, int, int64_t, int64_t, int64_t, double, const double *, int64_t,
                           const double *, int64_t, double, double *, int64_t) noexcept nogil
ctypedef void (*sgemm32_t)(int, int, int, int, int, int, float, const float *, int,
                           const float *, int, float, float *, int) noexcept nogil
ctypedef void (*dgemm32_t)(int, int, int, int, int, int, double, const double *, int,
                           const double *, int, double, double *, int) noexcept nogil
ctypedef void (*sgemv64_t)(int, int, int64_t, int64_t, float, const float *, int64_t, const float *, int64_t,
                           float, float *, int64_t) noexcept nogil
ctypedef void (*dgemv64_t)(int, int, int64_t, int64_t, double, const double *, int64_t, const double *, int64_t,
                           double, double *, int64_t) noexcept nogil
ctypedef void (*sgemv32_t)(int, int, int, int, float, const float *, int, const float *, int,
                           float, float *, int) noexcept nogil
ctypedef void (*dgemv32_t)(int, int, int, int, double, const double *, int, const double *, int,
                           double, double *, int) noexcept nogil
ctypedef int (*get_threads_t)() noexcept nogil
ctypedef void (*set_threads_t)(int) noexcept nogil

cdef void *_sgemm = NULL
cdef void *_dgemm = NULL
cdef void *_sgemv = NULL         # optional: one-row (or one-column) products
cdef void *_dgemv = NULL
cdef bint _ilp64 = False
cdef get_threads_t _get_threads = NULL
cdef set_threads_t _set_threads = NULL

# blas_enter / blas_exit: nesting depth and the count to restore (the GIL guards both)
cdef int _depth = 0
cdef int _saved = 0

cdef enum:
    TILE_MIN = 64       # rows or columns per tile, at least

# LP64 BLAS: dimensions must fit an int
_INT32_MAX = 2 ** 31 - 1


def bind(uintptr_t sgemm, uintptr_t dgemm, bint ilp64, uintptr_t get_threads=0, uintptr_t set_threads=0,
         uintptr_t sgemv=0, uintptr_t dgemv=0):
    """Use the CBLAS sgemm/dgemm at these addresses (64-bit integers when ilp64),
    the BLAS's get/set thread-count functions when given (0: not known), and
    its sgemv/dgemv for products with one row or one column (0: sgemm/dgemm)."""
    global _sgemm, _dgemm, _ilp64, _get_threads, _set_threads, _sgemv, _dgemv
    if _depth:
        raise RuntimeError("the BLAS cannot be rebound while fastwb is running a GEMM")
    if not sgemm or not dgemm:
        raise ValueError("bind needs both sgemm and dgemm")
    if (get_threads == 0) != (set_threads == 0):
        raise ValueError("give both thread-count functions or neither")
    if (sgemv == 0) != (dgemv == 0):
        raise ValueError("give both gemv functions or neither")
    _sgemv, _dgemv = <void *>sgemv, <void *>dgemv
    _sgemm, _dgemm, _ilp64 = <void *>sgemm, <void *>dgemm, ilp64
    _get_threads = <get_threads_t><void *>get_threads
    _set_threads = <set_threads_t><void *>set_threads


def unbind():
    """Forget the BLAS: every fastwb GEMM falls back to np.matmul."""
    global _sgemm, _dgemm, _get_threads, _set_threads, _sgemv, _dgemv
    if _depth:
        raise RuntimeError("the BLAS cannot be unbound while fastwb is running a GEMM")
    _sgemm = _dgemm = _sgemv = _dgemv = NULL
    _get_threads = NULL
    _set_threads = NULL


def available():
    """True when fastwb calls the BLAS's CBLAS entry points itself."""
    return _sgemm != NULL


def blas_threads():
    """The BLAS's own thread count now (None when its control function is unknown)."""
    return _get_threads() if _get_threads != NULL else None


cdef bint ready() noexcept nogil:
    return _sgemm != NULL


cdef int blas_enter() except -1:
    """Set the BLAS's pool to one thread for the time fastwb calls it (GIL held)."""
    global _depth, _saved
    if _depth == 0 and _set_threads != NULL:
        _saved = _get_threads()
        if _saved != 1:
            _set_threads(1)
    _depth += 1
    return 0


cdef void blas_exit() noexcept:
    """Undo blas_enter; the outermost exit restores the BLAS's thread count."""
    global _depth
    _depth -= 1
    if _depth == 0 and _set_threads != NULL and _saved != 1:
        _set_threads(_saved)


def enter():
    """Python access to blas_enter (a fit loop holds it over all its steps)."""
    blas_enter()


def exit():
    """Python access to blas_exit; raises when there was no enter()."""
    if _depth <= 0:
        raise RuntimeError("exit() without enter()")
    blas_exit()


cdef inline void _gemv(bint trans, Py_ssize_t rows, Py_ssize_t cols, const floating *A, Py_ssize_t lda,
                       const floating *x, Py_ssize_t incx, floating *y, Py_ssize_t incy) noexcept nogil:
    """y = op(A) @ x (A stored rows x cols, row-major; op transposes when trans), beta = 0."""
    cdef int t = FWB_TRANS if trans else FWB_NO_TRANS
    if floating is float:
        if _ilp64:
            (<sgemv64_t>_sgemv)(FWB_ROW_MAJOR, t, rows, cols, 1.0, A, lda, x, incx, 0.0, y, incy)
        else:
            (<sgemv32_t>_sgemv)(FWB_ROW_MAJOR, t, <int>rows, <int>cols, 1.0, A, <int>lda, x, <int>incx, 0.0, y,
                                <int>incy)
    else:
        if _ilp64:
            (<dgemv64_t>_dgemv)(FWB_ROW_MAJOR, t, rows, cols, 1.0, A, lda, x, incx, 0.0, y, incy)
        else:
            (<dgemv32_t>_dgemv)(FWB_ROW_MAJOR, t, <int>rows, <int>cols, 1.0, A, <int>lda, x, <int>incx, 0.0, y,
                                <int>incy)


cdef inline void _blas(bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                       const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                       floating *C, Py_ssize_t ldc) noexcept nogil:
    """C = op(A) @ op(B), row-major, beta = 0: one single-threaded BLAS call."""
    cdef int ta_ = FWB_TRANS if ta else FWB_NO_TRANS
    cdef int tb_ = FWB_TRANS if tb else FWB_NO_TRANS
    cdef Py_ssize_t i
    if K == 0:      # nothing to sum: the BLAS may leave C alone
        for i in range(M):
            memset(C + i * ldc, 0, N * sizeof(floating))
        return
    if _sgemv != NULL and M == 1:       # one row: C = op(B).T @ a, no packing (as NumPy does)
        _gemv(not tb, N if tb else K, K if tb else N, B, ldb, A, lda if ta else 1, C, 1)
        return
    if _sgemv != NULL and N == 1:       # one column: C = op(A) @ b
        _gemv(ta, K if ta else M, M if ta else K, A, lda, B, 1 if tb else ldb, C, ldc)
        return
    if floating is float:
        if _ilp64:
            (<sgemm64_t>_sgemm)(FWB_ROW_MAJOR, ta_, tb_, M, N, K, 1.0, A, lda, B, ldb, 0.0, C, ldc)
        else:
            (<sgemm32_t>_sgemm)(FWB_ROW_MAJOR, ta_, tb_, <int>M, <int>N, <int>K, 1.0, A, <int>lda, B, <int>ldb,
                                0.0, C, <int>ldc)
    else:
        if _ilp64:
            (<dgemm64_t>_dgemm)(FWB_ROW_MAJOR, ta_, tb_, M, N, K, 1.0, A, lda, B, ldb, 0.0, C, ldc)
        else:
            (<dgemm32_t>_dgemm)(FWB_ROW_MAJOR, ta_, tb_, <int>M, <int>N, <int>K, 1.0, A, <int>lda, B, <int>ldb,
                                0.0, C, <int>ldc)


cdef void _epilogue(const Epilogue *epi, floating *C, Py_ssize_t ldc, Py_ssize_t r0, Py_ssize_t r1,
                    Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """The epilogue on the tile [r0, r1) x [c0, c1) of C (all rows for the column sums)."""
    cdef Py_ssize_t r, w = c1 - c0
    cdef floating *row
    cdef const floating *y
    if epi.kind == EPI_BIAS_ACT:
        for r in range(r0, r1):
            row = C + r * ldc + c0
            bias_act_row(row, <const floating *>epi.bias + c0 if epi.bias != NULL else NULL, row, w,
                         epi.act, epi.alpha)
    elif epi.kind == EPI_ACT_GRAD:
        y = <const floating *>epi.y
        for r in range(r0, r1):
            row = C + r * ldc + c0
            act_grad_row(row, y + r * ldc + c0, row, w, epi.act, epi.alpha)
    elif epi.kind == EPI_ACT_GRAD_COLSUM:      # whole columns: r0 = 0, r1 = M
        act_grad_colsum_cols(C, <const floating *>epi.y, C, <floating *>epi.sums, r1, ldc, c0, c1,
                             epi.act, epi.alpha)


cdef inline void _tile(bint by_cols, bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                       const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                       floating *C, Py_ssize_t ldc, const Epilogue *epi, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Tile [lo, hi) of the columns (by_cols) or rows of C: its GEMM, then its epilogue."""
    if by_cols:
        _blas(ta, tb, M, hi - lo, K, A, lda, B + (lo * ldb if tb else lo), ldb, C + lo, ldc)
        if epi != NULL and epi.kind != EPI_NONE:
            _epilogue(epi, C, ldc, 0, M, lo, hi)
    else:
        _blas(ta, tb, hi - lo, N, K, A + (lo if ta else lo * lda), lda, B, ldb, C + lo * ldc, ldc)
        if epi != NULL and epi.kind != EPI_NONE:
            _epilogue(epi, C, ldc, lo, hi, 0, N)


cdef int _tiles_max = 1       # the CPU budget: set once by fastwb/_runtime.py


def set_tiles_max(int n):
    """Cut no GEMM into more than n tiles (fastwb/_runtime.py: the process's CPU budget)."""
    global _tiles_max
    if n < 1:
        raise ValueError("n must be >= 1")
    _tiles_max = n


def get_tiles_max():
    return _tiles_max


cdef inline Py_ssize_t _tile_count(Py_ssize_t dim) noexcept nogil:
    """Tiles a GEMM is cut into: one per TILE_MIN rows or columns, at most _tiles_max."""
    cdef Py_ssize_t parts = dim // TILE_MIN
    if parts > _tiles_max:
        parts = _tiles_max
    return parts if parts > 1 else 1


def tile_count(Py_ssize_t M, Py_ssize_t N):
    """How many tiles tiled_gemm cuts an M x N output into (for thread plans and tests)."""
    return _tile_count(N if N >= M else M)


cdef void _run_tiles(bint by_cols, bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                     const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                     floating *C, Py_ssize_t ldc, const Epilogue *epi, Py_ssize_t parts, int nt) noexcept nogil:
    cdef Py_ssize_t dim = N if by_cols else M, t
    if nt <= 1:         # no parallel region
        for t in range(parts):
            _tile(by_cols, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, epi,
                  part_start(dim, t, parts), part_start(dim, t + 1, parts))
        return
    # tiles handed out one at a time: a thread that starts late (woken late, or
    # preempted on a busy machine) leaves its tile to the one already running
    for t in prange(parts, schedule="dynamic", chunksize=1, num_threads=nt):
        _tile(by_cols, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, epi,
              part_start(dim, t, parts), part_start(dim, t + 1, parts))


cdef void tiled_gemm(bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                     const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                     floating *C, const Epilogue *epi, int nt) noexcept nogil:
    """C (M x N, C-contiguous) = op(A) @ op(B), then the epilogue, on
    up to nt threads.  op(A) is A (M x K, lda) or, when ta, A's transpose (A
    stored K x M); likewise op(B), K x N.  Needs ready().

    The tiles depend on M and N and the CPU budget only, never on nt or the
    epilogue: the BLAS's result for an element depends on the size of the call
    it falls in (its edge kernels round differently from its main kernel), so
    the same tiles are computed whichever thread computes them.  Column tiles
    share op(A) (each tile's call packs all of it), row tiles share op(B): the
    cut goes across the larger of M and N, so the smaller operand is the one
    packed again.  Column sums need whole columns: with row tiles they are
    taken after the last tile by _dense's colsum_2d (same order, same bits)."""
    cdef bint by_cols = N >= M
    cdef Py_ssize_t parts = _tile_count(N if by_cols else M)
    cdef Epilogue per_tile
    if M == 0 or N == 0:
        return
    if nt > parts:
        nt = <int>parts
    if epi == NULL or epi.kind != EPI_ACT_GRAD_COLSUM or by_cols:
        _run_tiles(by_cols, ta, tb, M, N, K, A, lda, B, ldb, C, N, epi, parts, nt)
        return
    per_tile = epi[0]
    per_tile.kind = EPI_ACT_GRAD if epi.act != FWB_ACT_IDENTITY else EPI_NONE
    _run_tiles(by_cols, ta, tb, M, N, K, A, lda, B, ldb, C, N, &per_tile, parts, nt)
    colsum_2d(<const floating *>C, <floating *>epi.sums, M, N, min(nt, max(1, <int>(N // 16))))


# ---------------------------------------------------------------------------
# Python entry points for fastwb/functional.py (arguments checked there)
# ---------------------------------------------------------------------------

cdef inline bint _trans(object a, Py_ssize_t *ld):
    """a is C-contiguous (False, ld = row length) or the transpose of a C-contiguous
    array (True, ld = column length)."""
    if a.flags.c_contiguous:
        ld[0] = max(a.shape[1], 1)
        return False
    ld[0] = max(a.shape[0], 1)
    return True


def gemm(a, b, out, int nt, bias=None, int act=0, double alpha=0.0):
    """out = act(a @ b + bias) (bias None: no bias; act 0: identity) through the
    tiled GEMM.  a, b: 2-d float32 or float64, each C-contiguous or the
    transpose of a C-contiguous array; out: C-contiguous, not overlapping a, b
    or bias.  The caller has checked shapes, dtypes and layout."""
    cdef Py_ssize_t M = out.shape[0], N = out.shape[1], K = a.shape[1], lda, ldb
    cdef bint ta = _trans(a, &lda), tb = _trans(b, &ldb)
    cdef Epilogue epi
    if not ready():
        raise RuntimeError("no BLAS is bound")
    if not _ilp64 and max(M, N, K, lda, ldb) > _INT32_MAX:
        raise ValueError("the bound BLAS takes 32-bit dimensions")
    epi.kind = EPI_BIAS_ACT if bias is not None or act else EPI_NONE
    epi.act, epi.alpha, epi.y, epi.sums = act, alpha, NULL, NULL
    epi.bias = NULL
    if M == 0 or N == 0:
        return out
    blas_enter()
    try:
        if out.dtype == np.float32:
            _gemm_f(a, b, out, bias, ta, tb, M, N, K, lda, ldb, &epi, nt, <float>0)
        else:
            _gemm_f(a, b, out, bias, ta, tb, M, N, K, lda, ldb, &epi, nt, <double>0)
    finally:
        blas_exit()
    return out


cdef void _gemm_f(a, b, out, bias, bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                  Py_ssize_t lda, Py_ssize_t ldb, Epilogue *epi, int nt, floating kind):
    cdef floating[:, ::1] c = out
    cdef const floating[::1] bv
    cdef const floating *ap = <const floating *>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef const floating *bp = <const floating *>cnp.PyArray_DATA(<cnp.ndarray>b)
    if bias is not None:
        bv = bias
        epi.bias = &bv[0]
    with nogil:
        tiled_gemm(ta, tb, M, N, K, ap, lda, bp, ldb, &c[0, 0], epi, nt)
