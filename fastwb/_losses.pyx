# Kernels of the row-wise softmax and the softmax cross-entropy loss.
# Kernel room: the caller (fastwb/functional.py) has validated everything,
# including that every label lies in [0, n_classes).  Rows are independent
# and spread over threads; the batch loss is the sum of per-row losses taken
# serially in row order, so it does not depend on the thread count.

from cython cimport floating
from cython.parallel cimport prange

from fastwb._rows cimport *


def softmax_rows(const floating[:, ::1] z,   # IN  (n, m), m >= 1
                 floating[:, ::1] p,         # OUT (n, m), may be z
                 int n_threads):
    """p[i] = softmax(z[i]) for every row i."""
    cdef Py_ssize_t n = z.shape[0], m = z.shape[1], i
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            if floating is float:
                fwb_softmax_row_f32(&z[i, 0], &p[i, 0], m)
            else:
                fwb_softmax_row_f64(&z[i, 0], &p[i, 0], m)


def softmax_grad_rows(const floating[:, ::1] g,   # IN  (n, m) upstream gradient
                      const floating[:, ::1] y,   # IN  (n, m) softmax output
                      floating[:, ::1] dz,        # OUT (n, m), may be g or y
                      int n_threads):
    """dz[i] = y[i] * (g[i] - <g[i], y[i]>) for every row i."""
    cdef Py_ssize_t n = g.shape[0], m = g.shape[1], i
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            if floating is float:
                fwb_softmax_grad_row_f32(&g[i, 0], &y[i, 0], &dz[i, 0], m)
            else:
                fwb_softmax_grad_row_f64(&g[i, 0], &y[i, 0], &dz[i, 0], m)


def first_bad_label(const Py_ssize_t[::1] labels, Py_ssize_t n_classes):
    """Index of the first label outside [0, n_classes), or -1 when all are valid."""
    cdef Py_ssize_t i
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= n_classes:
            return i
    return -1


def softmax_xent(const floating[:, ::1] z,        # IN  (n, m) logits, n, m >= 1
                 const Py_ssize_t[::1] labels,    # IN  (n,) in [0, m)
                 floating[:, ::1] grad,           # OUT (n, m), may be z
                 double[::1] row_loss,            # OUT (n,) per-row loss (workspace)
                 int n_threads):
    """Mean cross-entropy of softmax(z) against labels; grad = d(mean loss)/dz."""
    cdef Py_ssize_t n = z.shape[0], m = z.shape[1], i
    cdef double total = 0.0
    cdef floating scale = <floating>(1.0 / n)
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            if floating is float:
                row_loss[i] = fwb_xent_row_f32(&z[i, 0], &grad[i, 0], m, labels[i], scale)
            else:
                row_loss[i] = fwb_xent_row_f64(&z[i, 0], &grad[i, 0], m, labels[i], scale)
        for i in range(n):
            total += row_loss[i]
    return total / n
