# Pointer-level core of fastwb._losses.softmax_xent, shared with the training
# engine (fastwb/_engine.pyx).
from cython cimport floating

cdef double xent_2d(const floating *z, const Py_ssize_t *labels, floating *grad, double *row_loss,
                    Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil

# Pointer-level cores of fastwb._losses.mse_rows and bce_logits_rows (the
# element-wise losses of csrc/fwb_loss.h), for the engine.  Both need n, m >= 1
# and a workspace of at least n doubles, return the mean loss (accumulated in
# double, bitwise identical for any thread count) and write d(mean loss)/d(input)
# into grad, which may be the prediction / logits (or the target) itself.
# pos_weight is NULL or m column weights (PyTorch's pos_weight); bce_logits_2d
# expects targets in [0, 1] (checked by the caller).
cdef double mse_2d(const floating *pred, const floating *target, floating *grad, double *work,
                   Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil
cdef double bce_logits_2d(const floating *z, const floating *t, const floating *pos_weight, floating *grad,
                          double *work, Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil
