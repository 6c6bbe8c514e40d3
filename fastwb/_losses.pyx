# Kernels of the row-wise softmax and the softmax cross-entropy loss.
# Kernel room: the caller (fastwb/functional.py) has validated everything,
# including that every label lies in [0, n_classes).
#
# Rows are processed in blocks of about BLOCK_ELEMENTS elements (at least one
# row), which lets exp run as one vectorised pass over a block even when rows
# are short; blocks are spread over threads.  The batch loss is the sum of
# per-row losses taken serially in row order, so it does not depend on the
# thread count.

from cython cimport floating
from cython.parallel cimport prange

from fastwb._rows cimport *

cdef enum:
    BLOCK_ELEMENTS = 2048  # elements per block of rows (at least one row)


cdef inline Py_ssize_t _rows_per_block(Py_ssize_t m) noexcept nogil:
    return BLOCK_ELEMENTS // m if m < BLOCK_ELEMENTS else 1


def softmax_rows(const floating[:, ::1] z,   # IN  (n, m), m >= 1
                 floating[:, ::1] p,         # OUT (n, m), may be z
                 int n_threads):
    """p[i] = softmax(z[i]) for every row i."""
    cdef Py_ssize_t n = z.shape[0], m = z.shape[1], rb = _rows_per_block(m), blk, r0, r1
    if n <= rb:         # one block (a latency call): no OpenMP region
        if n == 0:
            return
        with nogil:
            if floating is float:
                fwb_softmax_block_f32(&z[0, 0], &p[0, 0], n, m)
            else:
                fwb_softmax_block_f64(&z[0, 0], &p[0, 0], n, m)
        return
    with nogil:
        for blk in prange((n + rb - 1) // rb, schedule="static", num_threads=n_threads):
            r0 = blk * rb
            r1 = min(r0 + rb, n)
            if floating is float:
                fwb_softmax_block_f32(&z[r0, 0], &p[r0, 0], r1 - r0, m)
            else:
                fwb_softmax_block_f64(&z[r0, 0], &p[r0, 0], r1 - r0, m)


def softmax_grad_rows(const floating[:, ::1] g,   # IN  (n, m) upstream gradient
                      const floating[:, ::1] y,   # IN  (n, m) softmax output
                      floating[:, ::1] dz,        # OUT (n, m), may be g or y
                      int n_threads):
    """dz[i] = y[i] * (g[i] - <g[i], y[i]>) for every row i."""
    cdef Py_ssize_t n = g.shape[0], m = g.shape[1], rb = _rows_per_block(m), blk, r0, r1
    with nogil:
        for blk in prange((n + rb - 1) // rb, schedule="static", num_threads=n_threads):
            r0 = blk * rb
            r1 = min(r0 + rb, n)
            if floating is float:
                fwb_softmax_grad_block_f32(&g[r0, 0], &y[r0, 0], &dz[r0, 0], r1 - r0, m)
            else:
                fwb_softmax_grad_block_f64(&g[r0, 0], &y[r0, 0], &dz[r0, 0], r1 - r0, m)


def first_bad_label(const Py_ssize_t[::1] labels, Py_ssize_t n_classes):
    """Index of the first label outside [0, n_classes), or -1 when all are valid."""
    cdef Py_ssize_t i
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= n_classes:
            return i
    return -1


cdef double xent_2d(const floating *z, const Py_ssize_t *labels, floating *grad, double *row_loss,
                    Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil:
    """Mean cross-entropy of softmax(z) against labels; grad = d(mean loss)/dz.
    n, m >= 1; row_loss is an (n,) workspace."""
    cdef Py_ssize_t rb = _rows_per_block(m), blk, r0, r1, i
    cdef double total = 0.0
    cdef floating scale = <floating>(1.0 / n)
    for blk in prange((n + rb - 1) // rb, schedule="static", num_threads=n_threads):
        r0 = blk * rb
        r1 = min(r0 + rb, n)
        if floating is float:
            fwb_xent_block_f32(z + r0 * m, grad + r0 * m, r1 - r0, m, labels + r0, scale, row_loss + r0)
        else:
            fwb_xent_block_f64(z + r0 * m, grad + r0 * m, r1 - r0, m, labels + r0, scale, row_loss + r0)
    for i in range(n):
        total += row_loss[i]
    return total / n


def softmax_xent(const floating[:, ::1] z,        # IN  (n, m) logits, n, m >= 1
                 const Py_ssize_t[::1] labels,    # IN  (n,) in [0, m)
                 floating[:, ::1] grad,           # OUT (n, m), may be z
                 double[::1] row_loss,            # OUT (n,) per-row loss (workspace)
                 int n_threads):
    """Mean cross-entropy of softmax(z) against labels; grad = d(mean loss)/dz."""
    cdef double loss
    with nogil:
        loss = xent_2d(&z[0, 0], &labels[0], &grad[0, 0], &row_loss[0], z.shape[0], z.shape[1], n_threads)
    return loss


# ---------------------------------------------------------------------------
# mean squared error and binary cross-entropy with logits
#
# Element-wise losses (csrc/fwb_loss.h).  The (n, m) array is cut into the
# same blocks of rows as above (their boundaries depend only on n and m); one
# fused pass per block writes the gradient and returns the block's summed loss
# in double, stored in work[block]; the block sums are then added serially in
# block order, so the loss is bitwise identical for any thread count.  The
# caller has checked shapes and dtypes and, for the cross-entropy, that every
# target lies in [0, 1].
# ---------------------------------------------------------------------------

cdef extern from "fwb_loss.h" nogil:
    double fwb_mse_block_f32(const float *p, const float *t, float *g, Py_ssize_t length, float scale)
    double fwb_mse_block_f64(const double *p, const double *t, double *g, Py_ssize_t length, double scale)
    double fwb_bce_block_f32(const float *z, const float *t, const float *pw, float *g,
                             Py_ssize_t rows, Py_ssize_t m, float scale)
    double fwb_bce_block_f64(const double *z, const double *t, const double *pw, double *g,
                             Py_ssize_t rows, Py_ssize_t m, double scale)
    Py_ssize_t fwb_first_outside_unit_f32(const float *v, Py_ssize_t n)
    Py_ssize_t fwb_first_outside_unit_f64(const double *v, Py_ssize_t n)


cdef inline double _sum_in_order(const double *work, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t i
    cdef double total = 0.0
    for i in range(k):
        total += work[i]
    return total


cdef double mse_2d(const floating *pred, const floating *target, floating *grad, double *work,
                   Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil:
    """Mean of (pred - target)^2 over the n*m elements; grad = 2 (pred - target) / (n m).
    n, m >= 1; work holds at least n doubles (receives the block sums); grad may be pred or target."""
    cdef Py_ssize_t rb = _rows_per_block(m), nb = (n + rb - 1) // rb, blk, r0, r1
    cdef double size = <double>n * <double>m
    cdef floating scale = <floating>(2.0 / size)
    for blk in prange(nb, schedule="static", num_threads=n_threads):
        r0 = blk * rb
        r1 = min(r0 + rb, n)
        if floating is float:
            work[blk] = fwb_mse_block_f32(pred + r0 * m, target + r0 * m, grad + r0 * m, (r1 - r0) * m, scale)
        else:
            work[blk] = fwb_mse_block_f64(pred + r0 * m, target + r0 * m, grad + r0 * m, (r1 - r0) * m, scale)
    return _sum_in_order(work, nb) / size


cdef double bce_logits_2d(const floating *z, const floating *t, const floating *pos_weight, floating *grad,
                          double *work, Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil:
    """Mean binary cross-entropy of sigmoid(z) against targets t in [0, 1] over the n*m
    elements; grad = d(mean loss)/dz.  pos_weight: m column weights, or NULL for none.
    n, m >= 1; work holds at least n doubles; grad may be z or t."""
    cdef Py_ssize_t rb = _rows_per_block(m), nb = (n + rb - 1) // rb, blk, r0, r1
    cdef double size = <double>n * <double>m
    cdef floating scale = <floating>(1.0 / size)
    for blk in prange(nb, schedule="static", num_threads=n_threads):
        r0 = blk * rb
        r1 = min(r0 + rb, n)
        if floating is float:
            work[blk] = fwb_bce_block_f32(z + r0 * m, t + r0 * m, pos_weight, grad + r0 * m, r1 - r0, m, scale)
        else:
            work[blk] = fwb_bce_block_f64(z + r0 * m, t + r0 * m, pos_weight, grad + r0 * m, r1 - r0, m, scale)
    return _sum_in_order(work, nb) / size


def mse_rows(const floating[:, ::1] pred,     # IN  (n, m), n, m >= 1
             const floating[:, ::1] target,   # IN  (n, m)
             floating[:, ::1] grad,           # OUT (n, m), may be pred or target
             double[::1] work,                # OUT (>= n,) workspace
             int n_threads):
    """Mean squared error and its gradient with respect to pred."""
    cdef double loss
    with nogil:
        loss = mse_2d(&pred[0, 0], &target[0, 0], &grad[0, 0], &work[0], pred.shape[0], pred.shape[1], n_threads)
    return loss


def bce_logits_rows(const floating[:, ::1] z,            # IN  (n, m) logits, n, m >= 1
                    const floating[:, ::1] t,            # IN  (n, m) targets in [0, 1]
                    const floating[::1] pos_weight,      # IN  (m,) column weights, or (0,) for none
                    floating[:, ::1] grad,               # OUT (n, m), may be z or t
                    double[::1] work,                    # OUT (>= n,) workspace
                    int n_threads):
    """Mean binary cross-entropy with logits and its gradient with respect to z."""
    cdef double loss
    cdef const floating *pw = NULL
    if pos_weight.shape[0] > 0:
        pw = &pos_weight[0]
    with nogil:
        loss = bce_logits_2d(&z[0, 0], &t[0, 0], pw, &grad[0, 0], &work[0], z.shape[0], z.shape[1], n_threads)
    return loss


def first_outside_unit(const floating[::1] v):
    """Index of the first element of v outside [0, 1] (NaN included), or -1."""
    if v.shape[0] == 0:
        return -1
    if floating is float:
        return fwb_first_outside_unit_f32(&v[0], v.shape[0])
    else:
        return fwb_first_outside_unit_f64(&v[0], v.shape[0])
