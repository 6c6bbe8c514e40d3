# Kernels of fastwb.adversarial: the fused FGSM step
#
#     y = clip(x + eps * sign(g), lo, hi)
#
# and the fused PGD step (a signed step, the L-infinity projection onto the
# ball of radius r around x0, then the range clip), each one pass over flat
# arrays.  Kernel room: no validation, no allocation, no Python objects inside
# the loops; the caller (fastwb/adversarial.py) has checked dtypes, shapes,
# contiguity and aliasing, rounded the scalars to the arrays' dtype, and chosen
# n_threads.
#
# The arithmetic is NumPy's evaluation of the twin (fastwb/reference/adversarial.py),
# one IEEE operation at a time (-ffp-contract=off: no fused multiply-add), so
# the results are the twin's bit for bit:
#
#     s = sign(g)          NumPy's sign: 1, -1, +0 for +0 and -0, NaN for NaN
#     v = x + eps * s      eps * s is exact (+-eps, +-0 or NaN): one rounding
#     v = lo if v < lo else v;  v = hi if v > hi else v
#                          np.clip: NaN stays NaN, a value equal to a bound is kept
#
# The row loops are the C functions of csrc/fwb_adversarial.h, compiled for AVX-512, AVX2 and the
# baseline instruction set and picked per CPU at load time (FWB_CLONES of
# csrc/fwb_rows.h, as fastwb's other row kernels): Cython cannot put that
# attribute on a function of its own, and the baseline (SSE2) loop of the
# fused step took 3x the AVX2 loop's time on a 1024 x 784 chunk in cache
# (0.70 ms against 0.23 ms).  Elementwise IEEE operations give the same bits
# at every vector width.  The Cython part splits the work into n_threads
# contiguous parts (fastwb/_parallel.pxd) and calls them; every element is
# computed alone, so the results do not depend on the split.  With one thread
# no OpenMP parallel region is entered.
#
# NaN in g, by the caller's `check`:
#   NO_CHECK   one pass; a NaN in g gives NaN in y, as NumPy's sign does;
#   FIRST      a read-only pass over g first, and nothing is written when g holds
#              a NaN (an `out` or in-place array stays as it was);
#   IN_PASS    one pass that also notes whether g held a NaN (y is written, NaN
#              there): for an output the caller drops when it raises.
# The functions return 1 when the check found a NaN, else 0; the caller raises.
# The flag is a floating select (`seen = g != g ? 1 : seen`), a conditional
# reduction GCC vectorises for float and double alike (an integer OR of double
# compares stays scalar).

from cython cimport floating
from cython.parallel cimport prange

from fastwb._parallel cimport part_start as _part

cdef extern from "fwb_adversarial.h" nogil:
    int fwb_adv_any_nan_f32(const float *g, Py_ssize_t n) noexcept nogil
    int fwb_adv_any_nan_f64(const double *g, Py_ssize_t n) noexcept nogil
    int fwb_adv_fgsm_f32(const float *x, const float *g, float *y, Py_ssize_t n,
                         float eps, float lo, float hi) noexcept nogil
    int fwb_adv_fgsm_f64(const double *x, const double *g, double *y, Py_ssize_t n,
                         double eps, double lo, double hi) noexcept nogil
    int fwb_adv_fgsm_inplace_f32(float *xy, const float *g, Py_ssize_t n, float eps, float lo, float hi) noexcept nogil
    int fwb_adv_fgsm_inplace_f64(double *xy, const double *g, Py_ssize_t n,
                                 double eps, double lo, double hi) noexcept nogil
    int fwb_adv_pgd_f32(const float *x, const float *x0, const float *g, float *y, Py_ssize_t n,
                        float alpha, float r, float lo, float hi) noexcept nogil
    int fwb_adv_pgd_f64(const double *x, const double *x0, const double *g, double *y, Py_ssize_t n,
                        double alpha, double r, double lo, double hi) noexcept nogil
    int fwb_adv_pgd_inplace_f32(float *xy, const float *x0, const float *g, Py_ssize_t n,
                                float alpha, float r, float lo, float hi) noexcept nogil
    int fwb_adv_pgd_inplace_f64(double *xy, const double *x0, const double *g, Py_ssize_t n,
                                double alpha, double r, double lo, double hi) noexcept nogil


cpdef enum:
    NO_CHECK = 0
    FIRST = 1
    IN_PASS = 2


# -- one contiguous part: the typed calls of the C loops ------------------------------------------

cdef inline int _any_nan(const floating *g, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fwb_adv_any_nan_f32(g, n)
    else:
        return fwb_adv_any_nan_f64(g, n)


cdef inline int _fgsm_range(const floating *x, const floating *g, floating *y, Py_ssize_t a, Py_ssize_t b,
                            floating eps, floating lo, floating hi) noexcept nogil:
    # elements [a, b); in place when y is x
    if b <= a:
        return 0
    if x == <const floating *>y:
        if floating is float:
            return fwb_adv_fgsm_inplace_f32(y + a, g + a, b - a, eps, lo, hi)
        else:
            return fwb_adv_fgsm_inplace_f64(y + a, g + a, b - a, eps, lo, hi)
    if floating is float:
        return fwb_adv_fgsm_f32(x + a, g + a, y + a, b - a, eps, lo, hi)
    else:
        return fwb_adv_fgsm_f64(x + a, g + a, y + a, b - a, eps, lo, hi)


cdef inline int _pgd_range(const floating *x, const floating *x0, const floating *g, floating *y,
                           Py_ssize_t a, Py_ssize_t b, floating alpha, floating r, floating lo,
                           floating hi) noexcept nogil:
    # elements [a, b); in place when y is x
    if b <= a:
        return 0
    if x == <const floating *>y:
        if floating is float:
            return fwb_adv_pgd_inplace_f32(y + a, x0 + a, g + a, b - a, alpha, r, lo, hi)
        else:
            return fwb_adv_pgd_inplace_f64(y + a, x0 + a, g + a, b - a, alpha, r, lo, hi)
    if floating is float:
        return fwb_adv_pgd_f32(x + a, x0 + a, g + a, y + a, b - a, alpha, r, lo, hi)
    else:
        return fwb_adv_pgd_f64(x + a, x0 + a, g + a, y + a, b - a, alpha, r, lo, hi)


# -- the whole array, in n_threads contiguous parts ----------------------------------------------

cdef int any_nan_1d(const floating *g, Py_ssize_t n, int n_threads) noexcept nogil:
    """1 when g[0:n] holds a NaN, else 0."""
    cdef Py_ssize_t t, lo, hi
    cdef int bad = 0
    if n_threads == 1:
        return _any_nan(g, n)
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        lo = _part(n, t, n_threads)
        hi = _part(n, t + 1, n_threads)
        if hi > lo:
            bad |= _any_nan(g + lo, hi - lo)
    return bad


cdef int fgsm_1d(const floating *x, const floating *g, floating *y, Py_ssize_t n,
                 floating eps, floating lo, floating hi, int n_threads) noexcept nogil:
    """y = clip(x + eps * sign(g), lo, hi) over n flat elements (y may be x);
    1 when g held a NaN, else 0."""
    cdef Py_ssize_t t
    cdef int bad = 0
    if n_threads == 1:
        return _fgsm_range(x, g, y, 0, n, eps, lo, hi)
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        bad |= _fgsm_range(x, g, y, _part(n, t, n_threads), _part(n, t + 1, n_threads), eps, lo, hi)
    return bad


cdef int pgd_1d(const floating *x, const floating *x0, const floating *g, floating *y, Py_ssize_t n,
                floating alpha, floating r, floating lo, floating hi, int n_threads) noexcept nogil:
    """y = clip(x0 + clip(x + alpha * sign(g) - x0, -r, r), lo, hi) over n flat
    elements (y may be x); 1 when g held a NaN, else 0."""
    cdef Py_ssize_t t
    cdef int bad = 0
    if n_threads == 1:
        return _pgd_range(x, x0, g, y, 0, n, alpha, r, lo, hi)
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        bad |= _pgd_range(x, x0, g, y, _part(n, t, n_threads), _part(n, t + 1, n_threads), alpha, r, lo, hi)
    return bad


# -- the entries of fastwb/adversarial.py -----------------------------------------------------------

def fgsm_flat(const floating[::1] x,    # IN  (n,)
              const floating[::1] g,    # IN  (n,) the gradient; only its sign is read
              floating[::1] y,          # OUT (n,), may be x (in place); no other overlap
              double eps, double lo, double hi, int check, int n_threads):
    """y = clip(x + eps * sign(g), lo, hi), the scalars rounded to the arrays'
    dtype; ``check``: NO_CHECK, FIRST or IN_PASS (see the top of this file).
    Returns 1 when the check found a NaN in g, else 0."""
    cdef Py_ssize_t n = x.shape[0]
    cdef int bad = 0
    if n == 0:
        return 0
    with nogil:
        if check == FIRST:
            bad = any_nan_1d(&g[0], n, n_threads)
        if not bad:
            bad = fgsm_1d(&x[0], &g[0], &y[0], n, <floating>eps, <floating>lo, <floating>hi, n_threads)
    return bad if check != NO_CHECK else 0


def pgd_flat(const floating[::1] x,     # IN  (n,) the current iterate
             const floating[::1] x0,    # IN  (n,) the centre of the ball (the clean input)
             const floating[::1] g,     # IN  (n,) the gradient at x; only its sign is read
             floating[::1] y,           # OUT (n,), may be x (in place); no other overlap
             double alpha, double r, double lo, double hi, int check, int n_threads):
    """y = clip(x0 + clip(x + alpha * sign(g) - x0, -r, r), lo, hi), the scalars
    rounded to the arrays' dtype; ``check`` as fgsm_flat.  Returns 1 when the
    check found a NaN in g, else 0."""
    cdef Py_ssize_t n = x.shape[0]
    cdef int bad = 0
    if n == 0:
        return 0
    with nogil:
        if check == FIRST:
            bad = any_nan_1d(&g[0], n, n_threads)
        if not bad:
            bad = pgd_1d(&x[0], &x0[0], &g[0], &y[0], n, <floating>alpha, <floating>r, <floating>lo,
                         <floating>hi, n_threads)
    return bad if check != NO_CHECK else 0


def any_nan(const floating[::1] g, int n_threads):
    """1 when g holds a NaN, else 0."""
    cdef Py_ssize_t n = g.shape[0]
    cdef int bad = 0
    if n == 0:
        return 0
    with nogil:
        bad = any_nan_1d(&g[0], n, n_threads)
    return bad
