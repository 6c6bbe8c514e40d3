# Pointer-level cores of fastwb._norm (batch normalisation and dropout),
# shared with the training engine.  Arrays are C-contiguous (n, m) blocks or
# flat stretches; see _norm.pyx and csrc/fwb_norm.h for what they compute.
from cython cimport floating

cdef void bn_forward_2d(const floating *x, floating *y, Py_ssize_t n, Py_ssize_t m,
                        floating *mean, floating *invstd, const floating *gamma, const floating *beta,
                        floating *running_mean, floating *running_var, double momentum, double eps,
                        int training, int act, double alpha, double p, unsigned long long seed,
                        unsigned long long step, int n_threads) noexcept nogil
cdef void bn_backward_2d(const floating *g, const floating *x, floating *work, floating *dx,
                         Py_ssize_t n, Py_ssize_t m, const floating *mean, const floating *invstd,
                         const floating *gamma, const floating *beta, floating *dgamma, floating *dbeta,
                         int training, int act, double alpha, double p, unsigned long long seed,
                         unsigned long long step, int n_threads) noexcept nogil
cdef void dropout_1d(const floating *x, floating *y, Py_ssize_t n, unsigned long long start, double p,
                     unsigned long long seed, unsigned long long step, int n_threads) noexcept nogil
cdef void dropout_mask_1d(unsigned char *mask, Py_ssize_t n, unsigned long long start, double p,
                          unsigned long long seed, unsigned long long step, int n_threads) noexcept nogil
