# Kernels of batch normalisation (BatchNorm1d over the rows of an (n, m)
# block) fused with an activation and inverted dropout, and of dropout alone.
# Kernel room: no validation, no allocation, no Python objects inside the
# loops.  The caller (fastwb/normalization.py) has checked shapes, dtypes,
# contiguity and aliasing and chosen n_threads.
#
# Batch norm: each thread owns a contiguous range of columns (part_start:
# multiples of 16) and runs both passes of its columns (statistics, then
# normalise/scale/shift/activate/drop; or the two backward passes), so there
# is one parallel region per call and no barrier, and every column is summed
# row 0, 1, 2, ... whatever the number of threads.  Dropout: the flat array
# is split into n_threads contiguous parts; the mask depends only on (seed,
# step, element index).  Results are bitwise identical for any thread count.

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from fastwb._parallel cimport part_start as _part

cnp.import_array()

cdef extern from "fwb_norm.h" nogil:
    ctypedef struct fwb_dropout_t:
        pass
    fwb_dropout_t fwb_dropout_make(double p, unsigned long long seed, unsigned long long step)
    void fwb_dropout_mask(unsigned char *mask, Py_ssize_t n, unsigned long long start, const fwb_dropout_t *d)
    void fwb_dropout_f32(const float *x, float *y, Py_ssize_t n, unsigned long long start, const fwb_dropout_t *d)
    void fwb_dropout_f64(const double *x, double *y, Py_ssize_t n, unsigned long long start,
                         const fwb_dropout_t *d)
    void fwb_bn_forward_f32(const float *x, float *y, Py_ssize_t n, Py_ssize_t m, Py_ssize_t c0, Py_ssize_t c1,
                            float *mean, float *invstd, const float *gamma, const float *beta,
                            float *rmean, float *rvar, double momentum, double eps, int training,
                            int act, float alpha, const fwb_dropout_t *d)
    void fwb_bn_forward_f64(const double *x, double *y, Py_ssize_t n, Py_ssize_t m, Py_ssize_t c0, Py_ssize_t c1,
                            double *mean, double *invstd, const double *gamma, const double *beta,
                            double *rmean, double *rvar, double momentum, double eps, int training,
                            int act, double alpha, const fwb_dropout_t *d)
    void fwb_bn_backward_f32(const float *g, const float *x, float *work, float *dx, Py_ssize_t n, Py_ssize_t m,
                             Py_ssize_t c0, Py_ssize_t c1, const float *mean, const float *invstd,
                             const float *gamma, const float *beta, float *dgamma, float *dbeta,
                             int training, int act, float alpha, const fwb_dropout_t *d)
    void fwb_bn_backward_f64(const double *g, const double *x, double *work, double *dx, Py_ssize_t n,
                             Py_ssize_t m, Py_ssize_t c0, Py_ssize_t c1, const double *mean,
                             const double *invstd, const double *gamma, const double *beta,
                             double *dgamma, double *dbeta, int training, int act, double alpha,
                             const fwb_dropout_t *d)


cdef void bn_forward_2d(const floating *x, floating *y, Py_ssize_t n, Py_ssize_t m,
                        floating *mean, floating *invstd, const floating *gamma, const floating *beta,
                        floating *running_mean, floating *running_var, double momentum, double eps,
                        int training, int act, double alpha, double p, unsigned long long seed,
                        unsigned long long step, int n_threads) noexcept nogil:
    """Batch-norm forward of x (n, m) into y (n, m) (y may be x; y NULL:
    statistics only).  training: batch statistics into mean/invstd (m,), the
    running statistics (NULL: none) updated with `momentum`; eval: mean/invstd
    from the running statistics, which are only read.  Dropout with
    probability p (0: none) in either (a frozen BatchNorm in training uses its
    running statistics and keeps the dropout after it).  gamma, beta may be NULL."""
    cdef fwb_dropout_t d = fwb_dropout_make(p, seed, step)
    cdef Py_ssize_t c0, c1, t
    if n_threads == 1:          # the same call, without opening an OpenMP region (~1 us)
        _bn_forward_cols(x, y, n, m, 0, m, mean, invstd, gamma, beta, running_mean, running_var, momentum, eps,
                         training, act, alpha, &d)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        c0 = _part(m, t, n_threads)
        c1 = _part(m, t + 1, n_threads)
        if c1 > c0:
            _bn_forward_cols(x, y, n, m, c0, c1, mean, invstd, gamma, beta, running_mean, running_var, momentum,
                             eps, training, act, alpha, &d)


cdef inline void _bn_forward_cols(const floating *x, floating *y, Py_ssize_t n, Py_ssize_t m, Py_ssize_t c0,
                                  Py_ssize_t c1, floating *mean, floating *invstd, const floating *gamma,
                                  const floating *beta, floating *running_mean, floating *running_var,
                                  double momentum, double eps, int training, int act, double alpha,
                                  const fwb_dropout_t *d) noexcept nogil:
    if floating is float:
        fwb_bn_forward_f32(x, y, n, m, c0, c1, mean, invstd, gamma, beta, running_mean, running_var,
                           momentum, eps, training, act, <float>alpha, d)
    else:
        fwb_bn_forward_f64(x, y, n, m, c0, c1, mean, invstd, gamma, beta, running_mean, running_var,
                           momentum, eps, training, act, alpha, d)


cdef void bn_backward_2d(const floating *g, const floating *x, floating *work, floating *dx,
                         Py_ssize_t n, Py_ssize_t m, const floating *mean, const floating *invstd,
                         const floating *gamma, const floating *beta, floating *dgamma, floating *dbeta,
                         int training, int act, double alpha, double p, unsigned long long seed,
                         unsigned long long step, int n_threads) noexcept nogil:
    """Batch-norm backward: dx (n, m), dgamma, dbeta (m,; NULL: not wanted)
    from the upstream gradient g of the fused forward pass.  work (n, m) holds
    dL/dz between the two passes in training (it may be dx or g); eval mode
    makes one pass and does not touch it.  Dropout p as in the forward pass."""
    cdef fwb_dropout_t d = fwb_dropout_make(p, seed, step)
    cdef Py_ssize_t c0, c1, t
    if n_threads == 1:
        _bn_backward_cols(g, x, work, dx, n, m, 0, m, mean, invstd, gamma, beta, dgamma, dbeta, training, act,
                          alpha, &d)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        c0 = _part(m, t, n_threads)
        c1 = _part(m, t + 1, n_threads)
        if c1 > c0:
            _bn_backward_cols(g, x, work, dx, n, m, c0, c1, mean, invstd, gamma, beta, dgamma, dbeta, training,
                              act, alpha, &d)


cdef inline void _bn_backward_cols(const floating *g, const floating *x, floating *work, floating *dx,
                                   Py_ssize_t n, Py_ssize_t m, Py_ssize_t c0, Py_ssize_t c1,
                                   const floating *mean, const floating *invstd, const floating *gamma,
                                   const floating *beta, floating *dgamma, floating *dbeta, int training, int act,
                                   double alpha, const fwb_dropout_t *d) noexcept nogil:
    if floating is float:
        fwb_bn_backward_f32(g, x, work, dx, n, m, c0, c1, mean, invstd, gamma, beta, dgamma, dbeta,
                            training, act, <float>alpha, d)
    else:
        fwb_bn_backward_f64(g, x, work, dx, n, m, c0, c1, mean, invstd, gamma, beta, dgamma, dbeta,
                            training, act, alpha, d)


cdef void dropout_1d(const floating *x, floating *y, Py_ssize_t n, unsigned long long start, double p,
                     unsigned long long seed, unsigned long long step, int n_threads) noexcept nogil:
    """Inverted dropout of n elements, the first being element `start` of the
    masked array: y = kept ? x / (1 - p) : 0 (y may be x)."""
    cdef fwb_dropout_t d = fwb_dropout_make(p, seed, step)
    cdef Py_ssize_t lo, hi, t
    if n_threads == 1:
        _dropout_span(x, y, n, start, &d)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        lo = _part(n, t, n_threads)
        hi = _part(n, t + 1, n_threads)
        if hi > lo:
            _dropout_span(x + lo, y + lo, hi - lo, start + <unsigned long long>lo, &d)


cdef inline void _dropout_span(const floating *x, floating *y, Py_ssize_t n, unsigned long long start,
                               const fwb_dropout_t *d) noexcept nogil:
    if floating is float:
        fwb_dropout_f32(x, y, n, start, d)
    else:
        fwb_dropout_f64(x, y, n, start, d)


cdef void dropout_mask_1d(unsigned char *mask, Py_ssize_t n, unsigned long long start, double p,
                          unsigned long long seed, unsigned long long step, int n_threads) noexcept nogil:
    """mask[j] = 1 where element start + j is kept by dropout, else 0."""
    cdef fwb_dropout_t d = fwb_dropout_make(p, seed, step)
    cdef Py_ssize_t lo, hi, t
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        lo = _part(n, t, n_threads)
        hi = _part(n, t + 1, n_threads)
        if hi > lo:
            fwb_dropout_mask(mask + lo, hi - lo, start + <unsigned long long>lo, &d)


# The Python-facing wrappers take the arrays as ndarrays and read their data
# pointers directly: a fused def function with eight typed memoryviews spent
# several microseconds per call acquiring buffers and dispatching on dtype,
# as much as the whole kernel on a 128x256 batch.  fastwb/normalization.py
# has checked every array (dtype, shape, C-contiguity, writability); None
# stands for an absent optional array.

cdef inline void *_ptr(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def batch_norm(x, y, mean, invstd, gamma, beta, running_mean, running_var,
               double momentum, double eps, bint training, int act, double alpha, double p,
               unsigned long long seed, unsigned long long step, int n_threads):
    """Batch-norm forward (see bn_forward_2d).
    x (n, m) IN; y (n, m) OUT, may be x; mean, invstd (m,) OUT; gamma, beta (m,)
    IN or None; running_mean, running_var (m,) IN/OUT (training) or IN (eval), or None."""
    cdef Py_ssize_t n = x.shape[0], m = x.shape[1]
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef void *pmean = _ptr(mean)
    cdef void *pinv = _ptr(invstd)
    cdef void *pg = _ptr(gamma)
    cdef void *pb = _ptr(beta)
    cdef void *prm = _ptr(running_mean)
    cdef void *prv = _ptr(running_var)
    cdef bint f32 = x.itemsize == 4
    if m == 0:
        return
    with nogil:
        if f32:
            bn_forward_2d(<const float *>px, <float *>py, n, m, <float *>pmean, <float *>pinv, <const float *>pg,
                          <const float *>pb, <float *>prm, <float *>prv, momentum, eps, training, act, alpha,
                          p if training else 0.0, seed, step, n_threads)
        else:
            bn_forward_2d(<const double *>px, <double *>py, n, m, <double *>pmean, <double *>pinv,
                          <const double *>pg, <const double *>pb, <double *>prm, <double *>prv, momentum, eps,
                          training, act, alpha, p if training else 0.0, seed, step, n_threads)


def batch_norm_backward(g, x, work, dx, mean, invstd, gamma, beta, dgamma, dbeta,
                        bint training, int act, double alpha, double p,
                        unsigned long long seed, unsigned long long step, int n_threads):
    """Batch-norm backward (see bn_backward_2d).
    g, x (n, m) IN; work (n, m) scratch, may be dx or g; dx (n, m) OUT; mean, invstd
    (m,) IN; gamma, beta (m,) IN or None; dgamma, dbeta (m,) OUT or None."""
    cdef Py_ssize_t n = x.shape[0], m = x.shape[1]
    cdef void *pgy = _ptr(g)
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr(work)
    cdef void *pdx = _ptr(dx)
    cdef void *pmean = _ptr(mean)
    cdef void *pinv = _ptr(invstd)
    cdef void *pg = _ptr(gamma)
    cdef void *pb = _ptr(beta)
    cdef void *pdg = _ptr(dgamma)
    cdef void *pdb = _ptr(dbeta)
    cdef bint f32 = x.itemsize == 4
    if m == 0:
        return
    with nogil:
        if f32:
            bn_backward_2d(<const float *>pgy, <const float *>px, <float *>pw, <float *>pdx, n, m,
                           <const float *>pmean, <const float *>pinv, <const float *>pg, <const float *>pb,
                           <float *>pdg, <float *>pdb, training, act, alpha, p if training else 0.0, seed, step,
                           n_threads)
        else:
            bn_backward_2d(<const double *>pgy, <const double *>px, <double *>pw, <double *>pdx, n, m,
                           <const double *>pmean, <const double *>pinv, <const double *>pg, <const double *>pb,
                           <double *>pdg, <double *>pdb, training, act, alpha, p if training else 0.0, seed,
                           step, n_threads)


def dropout(x, y, double p, unsigned long long seed, unsigned long long step, int n_threads):
    """Inverted dropout over a flat C-contiguous x (IN) into y (OUT, may be x),
    element indices from 0."""
    cdef Py_ssize_t n = x.size
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef bint f32 = x.itemsize == 4
    if n == 0:
        return
    with nogil:
        if f32:
            dropout_1d(<const float *>px, <float *>py, n, 0, p, seed, step, n_threads)
        else:
            dropout_1d(<const double *>px, <double *>py, n, 0, p, seed, step, n_threads)


def dropout_mask(mask, double p, unsigned long long seed, unsigned long long step, int n_threads):
    """The keep-mask of dropout into the C-contiguous uint8 array mask (OUT, 1 = kept),
    element indices from 0."""
    cdef Py_ssize_t n = mask.size
    cdef unsigned char *pm = <unsigned char *>_ptr(mask)
    if n == 0:
        return
    with nogil:
        dropout_mask_1d(pm, n, 0, p, seed, step, n_threads)


def any_overlap(tuple arrays):
    """True when two of the given C-contiguous arrays (None skipped) share a
    byte: the exact overlap test for contiguous arrays, one C loop instead of
    a NumPy call per pair.  fastwb/normalization.py calls the general aliasing
    rules of fastwb._validate only when this says they have work to do."""
    cdef Py_ssize_t k = len(arrays), i, j, c = 0
    cdef size_t lo[16]
    cdef size_t hi[16]
    cdef cnp.ndarray a
    if k > 16:
        return True
    for i in range(k):
        if arrays[i] is None:
            continue
        a = <cnp.ndarray>arrays[i]
        if cnp.PyArray_NBYTES(a) == 0:
            continue
        lo[c] = <size_t>cnp.PyArray_DATA(a)
        hi[c] = lo[c] + <size_t>cnp.PyArray_NBYTES(a)
        c += 1
    for i in range(c):
        for j in range(i + 1, c):
            if lo[i] < hi[j] and lo[j] < hi[i]:
                return True
    return False
