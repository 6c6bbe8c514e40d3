# Pointer-level cores of fastwb._dense, shared with the training engine
# (fastwb/_engine.pyx).  Arrays are C-contiguous (n, m) blocks, or flat
# stretches of n elements for the *_1d cores; see _dense.pyx.
from cython cimport floating

cdef void bias_act_2d(const floating *z, const floating *b, floating *y, Py_ssize_t n, Py_ssize_t m,
                      int act, double alpha, int n_threads) noexcept nogil
cdef void act_grad_colsum_2d(const floating *g, const floating *y, floating *dz, floating *gb,
                             Py_ssize_t n, Py_ssize_t m, int act, double alpha, int n_threads) noexcept nogil
cdef void colsum_2d(const floating *v, floating *out, Py_ssize_t n, Py_ssize_t m, int n_threads) noexcept nogil
cdef void act_1d(const floating *z, floating *y, Py_ssize_t n, int act, double alpha,
                 int n_threads) noexcept nogil
cdef void act_grad_1d(const floating *g, const floating *y, floating *dz, Py_ssize_t n, int act, double alpha,
                      int n_threads) noexcept nogil
