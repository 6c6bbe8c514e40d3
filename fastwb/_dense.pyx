# Kernels of dense layers: bias + activation after a GEMM, the activation
# derivative fused with the bias-gradient column sums, and elementwise
# activations.  Kernel room: no validation, no allocation, no Python objects
# inside the loops.  The caller (fastwb/functional.py) has checked shapes,
# dtypes and contiguity and chosen n_threads.
#
# Work is split into n_threads contiguous parts with static scheduling; each
# part is handed to a C row kernel of csrc/fwb_rows.h.  With one thread the
# cores make the same calls without entering an OpenMP parallel region (about
# a microsecond each, measured with libgomp: as much as a small kernel).
# Elementwise results do not depend on the split; column sums are accumulated
# row by row in a fixed order inside each column, so they do not depend on it
# either.

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from fastwb._parallel cimport part_start as _part
from fastwb._rows cimport *


cdef void bias_act_2d(const floating *z, const floating *b, floating *y, Py_ssize_t n, Py_ssize_t m,
                      int act, double alpha, int n_threads) noexcept nogil:
    """y = act(z + b) row by row (b may be NULL), rows spread over n_threads."""
    cdef Py_ssize_t i
    if n_threads == 1:      # no parallel region: entering one costs about a microsecond
        for i in range(n):
            bias_act_row(z + i * m, b, y + i * m, m, act, alpha)
        return
    for i in prange(n, schedule="static", num_threads=n_threads):
        bias_act_row(z + i * m, b, y + i * m, m, act, alpha)


def bias_act_rows(const floating[:, ::1] z,   # IN  (n, m)
                  const floating[::1] b,      # IN  (m,) or None
                  floating[:, ::1] y,         # OUT (n, m), may be z
                  int act, double alpha, int n_threads):
    """y = act(z + b) row by row, rows spread over n_threads."""
    cdef const floating *bp = NULL
    if b is not None:
        bp = &b[0]
    with nogil:
        bias_act_2d(&z[0, 0], bp, &y[0, 0], z.shape[0], z.shape[1], act, alpha, n_threads)


cdef void act_1d(const floating *z, floating *y, Py_ssize_t n, int act, double alpha,
                 int n_threads) noexcept nogil:
    """y = act(z) elementwise over n flat elements (y may be z), split into
    n_threads contiguous parts (part_start)."""
    cdef Py_ssize_t lo, hi, t
    if n_threads == 1:
        bias_act_row(z, <const floating *>NULL, y, n, act, alpha)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        lo = _part(n, t, n_threads)
        hi = _part(n, t + 1, n_threads)
        if hi > lo:
            bias_act_row(z + lo, <const floating *>NULL, y + lo, hi - lo, act, alpha)


cdef void act_grad_1d(const floating *g, const floating *y, floating *dz, Py_ssize_t n, int act, double alpha,
                      int n_threads) noexcept nogil:
    """dz = g * act'(y) elementwise over n flat elements (dz may be g or y),
    split into n_threads contiguous parts (part_start)."""
    cdef Py_ssize_t lo, hi, t
    if n_threads == 1:
        act_grad_row(g, y, dz, n, act, alpha)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        lo = _part(n, t, n_threads)
        hi = _part(n, t + 1, n_threads)
        if hi > lo:
            act_grad_row(g + lo, y + lo, dz + lo, hi - lo, act, alpha)


def act_flat(const floating[::1] z,   # IN  (n,)
             floating[::1] y,         # OUT (n,), may be z
             int act, double alpha, int n_threads):
    """y = act(z) elementwise over a flat array."""
    cdef Py_ssize_t n = z.shape[0]
    if n == 0:
        return
    with nogil:
        act_1d(&z[0], &y[0], n, act, alpha, n_threads)


def act_grad_flat(const floating[::1] g,   # IN  (n,) upstream gradient
                  const floating[::1] y,   # IN  (n,) activation output
                  floating[::1] dz,        # OUT (n,), may be g or y
                  int act, double alpha, int n_threads):
    """dz = g * act'(y) elementwise over flat arrays."""
    cdef Py_ssize_t n = g.shape[0]
    if n == 0:
        return
    with nogil:
        act_grad_1d(&g[0], &y[0], &dz[0], n, act, alpha, n_threads)


cdef void act_grad_colsum_2d(const floating *g, const floating *y, floating *dz, floating *gb,
                             Py_ssize_t n, Py_ssize_t m, int act, double alpha, int n_threads) noexcept nogil:
    """dz = g * act'(y) and gb = dz.sum(axis=0) in one pass.

    Threads own disjoint column ranges; inside its range a thread walks the
    rows in order, so every column is summed row 0, 1, 2, ... whatever the
    number of threads (the same order as NumPy's sum over axis 0)."""
    cdef Py_ssize_t c0, c1, t
    if n_threads == 1:
        act_grad_colsum_cols(g, y, dz, gb, n, m, 0, m, act, alpha)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        c0 = _part(m, t, n_threads)
        c1 = _part(m, t + 1, n_threads)
        if c1 > c0:
            act_grad_colsum_cols(g, y, dz, gb, n, m, c0, c1, act, alpha)


def act_grad_colsum(const floating[:, ::1] g,   # IN  (n, m) upstream gradient
                    const floating[:, ::1] y,   # IN  (n, m) activation output
                    floating[:, ::1] dz,        # OUT (n, m), may be g
                    floating[::1] gb,           # OUT (m,) column sums of dz
                    int act, double alpha, int n_threads):
    """dz = g * act'(y) and gb = dz.sum(axis=0) in one pass (see act_grad_colsum_2d)."""
    cdef bint rows = g.shape[0] > 0     # no element to point at in an empty block
    with nogil:
        act_grad_colsum_2d(&g[0, 0] if rows else NULL, &y[0, 0] if rows else NULL, &dz[0, 0] if rows else NULL,
                           &gb[0], g.shape[0], g.shape[1], act, alpha, n_threads)


cdef inline void _colsum_cols(const floating *v, floating *out, Py_ssize_t n, Py_ssize_t m,
                             Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    # columns [c0, c1) of colsum_2d, rows in order
    cdef Py_ssize_t r
    memset(out + c0, 0, (c1 - c0) * sizeof(floating))
    for r in range(n):
        accumulate_row(out + c0, v + r * m + c0, c1 - c0)


cdef void colsum_2d(const floating *v, floating *out, Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil:
    """out = v.sum(axis=0), each column summed in row order (see act_grad_colsum_2d)."""
    cdef Py_ssize_t c0, c1, t
    if n_threads == 1:
        _colsum_cols(v, out, n, m, 0, m)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        c0 = _part(m, t, n_threads)
        c1 = _part(m, t + 1, n_threads)
        if c1 > c0:
            _colsum_cols(v, out, n, m, c0, c1)


def colsum(const floating[:, ::1] v,   # IN  (n, m)
           floating[::1] out,          # OUT (m,)
           int n_threads):
    """out = v.sum(axis=0), each column summed in row order."""
    cdef bint rows = v.shape[0] > 0     # no element to point at in an empty block
    with nogil:
        colsum_2d(&v[0, 0] if rows else NULL, &out[0], v.shape[0], v.shape[1], n_threads)
