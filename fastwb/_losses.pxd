# Pointer-level core of fastwb._losses.softmax_xent, shared with the training
# engine (fastwb/_engine.pyx).
from cython cimport floating

cdef double xent_2d(const floating *z, const Py_ssize_t *labels, floating *grad, double *row_loss,
                    Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil
