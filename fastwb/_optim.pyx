# Kernels of the fused optimizer updates and of L1/L2 regularisation.
# Kernel room: the caller (fastwb/optim.py, fastwb/regularization.py) has
# checked that every array is contiguous, of one dtype and one length, and
# computed the step-dependent scalars, and that the ranges `seg` lie inside
# the arrays, in order, without overlap.  Each update is one pass over memory,
# split into n_threads contiguous parts; updates are elementwise, so results
# do not depend on the split.  Optional arrays (state that an option does not
# use, the pruning mask) are passed as None.

from cython cimport floating
from cython.parallel cimport prange

from fastwb._parallel cimport part_start

cdef extern from "fwb_optim.h" nogil:
    void fwb_sgd_f32(float *p, const float *g, float *buf, const unsigned char *mask, Py_ssize_t n,
                     float lr, float mu, float keep_g, float wd, float l1, int nesterov, int first)
    void fwb_sgd_f64(double *p, const double *g, double *buf, const unsigned char *mask, Py_ssize_t n,
                     double lr, double mu, double keep_g, double wd, double l1, int nesterov, int first)
    void fwb_momentum_f32(float *p, const float *g, float *v, const unsigned char *mask, Py_ssize_t n,
                          float lr, float mu, float wd, float l1)
    void fwb_momentum_f64(double *p, const double *g, double *v, const unsigned char *mask, Py_ssize_t n,
                          double lr, double mu, double wd, double l1)
    void fwb_adam_f32(float *p, const float *g, float *m, float *v, float *vmax, const unsigned char *mask,
                      Py_ssize_t n, float w1, float beta2, float w2, float eps, float wd, float l1,
                      float decay_factor, float step_size, float bc2_sqrt)
    void fwb_adam_f64(double *p, const double *g, double *m, double *v, double *vmax, const unsigned char *mask,
                      Py_ssize_t n, double w1, double beta2, double w2, double eps, double wd, double l1,
                      double decay_factor, double step_size, double bc2_sqrt)
    void fwb_rmsprop_f32(float *p, const float *g, float *v, float *ga, float *buf, const unsigned char *mask,
                         Py_ssize_t n, float lr, float alpha, float w, float eps, float wd, float l1, float momentum)
    void fwb_rmsprop_f64(double *p, const double *g, double *v, double *ga, double *buf, const unsigned char *mask,
                         Py_ssize_t n, double lr, double alpha, double w, double eps, double wd, double l1,
                         double momentum)
    double fwb_regularize_f32(const float *w, float *grad, Py_ssize_t n, float lam, int l1)
    double fwb_regularize_f64(const double *w, double *grad, Py_ssize_t n, double lam, int l1)


cdef inline floating *_ptr(floating[::1] a) noexcept:
    """Data pointer of an optional array (NULL for None or empty)."""
    if a is None or a.shape[0] == 0:
        return NULL
    return &a[0]


cdef inline const unsigned char *_mask_ptr(const unsigned char[::1] mask) noexcept:
    if mask is None or mask.shape[0] == 0:
        return NULL
    return &mask[0]


cdef inline floating *_at(floating *a, Py_ssize_t i) noexcept nogil:
    return a + i if a != NULL else NULL


cdef inline const unsigned char *_mask_at(const unsigned char *a, Py_ssize_t i) noexcept nogil:
    return a + i if a != NULL else NULL


cdef inline Py_ssize_t _piece(const Py_ssize_t[:, ::1] seg, Py_ssize_t j, Py_ssize_t before, Py_ssize_t lo,
                              Py_ssize_t hi, Py_ssize_t *at) noexcept nogil:
    """The part of a thread's share [lo, hi) of the concatenated ranges that falls in
    range j (which starts at `before` in the concatenation): its length, and its
    first element in the array through `at`."""
    cdef Py_ssize_t a = lo if lo > before else before
    cdef Py_ssize_t b = before + seg[j, 1] - seg[j, 0]
    if hi < b:
        b = hi
    at[0] = seg[j, 0] + a - before
    return b - a


cdef inline Py_ssize_t _total(const Py_ssize_t[:, ::1] seg) noexcept nogil:
    cdef Py_ssize_t j, n = 0
    for j in range(seg.shape[0]):
        n += seg[j, 1] - seg[j, 0]
    return n


# Each update runs over the ranges [seg[j, 0], seg[j, 1]) of its arrays (frozen
# parameters lie outside them): their concatenation is split into n_threads
# contiguous parts, and a thread updates the pieces of the ranges in its part.

def sgd(floating[::1] p,              # IN/OUT parameters
        const floating[::1] g,        # IN     gradients
        floating[::1] buf,            # IN/OUT momentum buffer, or None
        const unsigned char[::1] mask,  # IN   keep-mask, or None
        const Py_ssize_t[:, ::1] seg,   # IN   (k, 2) disjoint ranges to update, in order
        double lr, double momentum, double dampening, double weight_decay, double l1,
        bint nesterov, bint first, int n_threads):
    """torch.optim.SGD's update, in place (see csrc/fwb_optim_impl.h)."""
    cdef Py_ssize_t n = _total(seg), lo, hi, t, j, before, at, size
    cdef floating *pp = &p[0]
    cdef floating *bp = _ptr(buf)
    cdef const floating *gp = &g[0]
    cdef const unsigned char *mp = _mask_ptr(mask)
    cdef double keep_g = 1.0 - dampening     # in double, rounded once (as PyTorch)
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            before = 0
            for j in range(seg.shape[0]):
                size = _piece(seg, j, before, lo, hi, &at)
                before = before + seg[j, 1] - seg[j, 0]
                if size > 0:
                    if floating is float:
                        fwb_sgd_f32(pp + at, gp + at, _at(bp, at), _mask_at(mp, at), size, <float>lr,
                                    <float>momentum, <float>keep_g, <float>weight_decay, <float>l1, nesterov, first)
                    else:
                        fwb_sgd_f64(pp + at, gp + at, _at(bp, at), _mask_at(mp, at), size, lr,
                                    momentum, keep_g, weight_decay, l1, nesterov, first)


def momentum(floating[::1] p, const floating[::1] g, floating[::1] v, const unsigned char[::1] mask,
             const Py_ssize_t[:, ::1] seg, double lr, double mu, double weight_decay, double l1, int n_threads):
    """The slides' momentum update v = mu v - lr d; p += v, in place."""
    cdef Py_ssize_t n = _total(seg), lo, hi, t, j, before, at, size
    cdef floating *pp = &p[0]
    cdef floating *vp = &v[0]
    cdef const floating *gp = &g[0]
    cdef const unsigned char *mp = _mask_ptr(mask)
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            before = 0
            for j in range(seg.shape[0]):
                size = _piece(seg, j, before, lo, hi, &at)
                before = before + seg[j, 1] - seg[j, 0]
                if size > 0:
                    if floating is float:
                        fwb_momentum_f32(pp + at, gp + at, vp + at, _mask_at(mp, at), size, <float>lr,
                                         <float>mu, <float>weight_decay, <float>l1)
                    else:
                        fwb_momentum_f64(pp + at, gp + at, vp + at, _mask_at(mp, at), size, lr,
                                         mu, weight_decay, l1)


def adam(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v, floating[::1] vmax,
         const unsigned char[::1] mask, const Py_ssize_t[:, ::1] seg, double beta1, double beta2, double eps,
         double weight_decay, double l1, double decay_factor, double step_size, double bc2_sqrt, int n_threads):
    """torch.optim.Adam / AdamW's update, in place (vmax: None without amsgrad)."""
    cdef Py_ssize_t n = _total(seg), lo, hi, t, j, before, at, size
    cdef floating *pp = &p[0]
    cdef floating *mp_ = &m[0]
    cdef floating *vp = &v[0]
    cdef floating *xp = _ptr(vmax)
    cdef const floating *gp = &g[0]
    cdef const unsigned char *kp = _mask_ptr(mask)
    cdef double w1 = 1.0 - beta1, w2 = 1.0 - beta2     # in double, rounded once (as PyTorch)
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            before = 0
            for j in range(seg.shape[0]):
                size = _piece(seg, j, before, lo, hi, &at)
                before = before + seg[j, 1] - seg[j, 0]
                if size > 0:
                    if floating is float:
                        fwb_adam_f32(pp + at, gp + at, mp_ + at, vp + at, _at(xp, at), _mask_at(kp, at), size,
                                     <float>w1, <float>beta2, <float>w2, <float>eps, <float>weight_decay,
                                     <float>l1, <float>decay_factor, <float>step_size, <float>bc2_sqrt)
                    else:
                        fwb_adam_f64(pp + at, gp + at, mp_ + at, vp + at, _at(xp, at), _mask_at(kp, at), size,
                                     w1, beta2, w2, eps, weight_decay, l1, decay_factor, step_size, bc2_sqrt)


def rmsprop(floating[::1] p, const floating[::1] g, floating[::1] v, floating[::1] grad_avg,
            floating[::1] buf, const unsigned char[::1] mask, const Py_ssize_t[:, ::1] seg, double lr,
            double alpha, double eps, double weight_decay, double l1, double momentum, int n_threads):
    """torch.optim.RMSprop's update, in place (grad_avg: None unless centered;
    buf: None unless momentum > 0)."""
    cdef Py_ssize_t n = _total(seg), lo, hi, t, j, before, at, size
    cdef floating *pp = &p[0]
    cdef floating *vp = &v[0]
    cdef floating *ap = _ptr(grad_avg)
    cdef floating *bp = _ptr(buf)
    cdef const floating *gp = &g[0]
    cdef const unsigned char *kp = _mask_ptr(mask)
    cdef double w = 1.0 - alpha     # in double, rounded once (as PyTorch)
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            before = 0
            for j in range(seg.shape[0]):
                size = _piece(seg, j, before, lo, hi, &at)
                before = before + seg[j, 1] - seg[j, 0]
                if size > 0:
                    if floating is float:
                        fwb_rmsprop_f32(pp + at, gp + at, vp + at, _at(ap, at), _at(bp, at), _mask_at(kp, at),
                                        size, <float>lr, <float>alpha, <float>w, <float>eps, <float>weight_decay,
                                        <float>l1, <float>momentum)
                    else:
                        fwb_rmsprop_f64(pp + at, gp + at, vp + at, _at(ap, at), _at(bp, at), _mask_at(kp, at),
                                        size, lr, alpha, w, eps, weight_decay, l1, momentum)


cdef enum:
    REG_BLOCK = 16384   # elements per partial sum of the regularisation loss


def regularize(const floating[::1] w,   # IN  weights (n,)
               floating[::1] grad,      # OUT (n,) or None
               double lam, bint l1,
               double[::1] partial,     # OUT workspace, ceil(n / REG_BLOCK) partial sums
               int n_threads):
    """grad = lam * w (l2) or lam * sign(w) (l1); returns sum(w^2) or sum(|w|).

    The sum is taken over fixed blocks of REG_BLOCK elements whose partial
    sums are added in block order: the same bits for any thread count."""
    cdef Py_ssize_t n = w.shape[0], nb = (n + REG_BLOCK - 1) // REG_BLOCK, blk, lo, hi
    cdef const floating *wp = &w[0]
    cdef floating *gp = _ptr(grad)
    cdef double total = 0.0
    with nogil:
        for blk in prange(nb, schedule="static", num_threads=n_threads):
            lo = blk * REG_BLOCK
            hi = min(lo + REG_BLOCK, n)
            if floating is float:
                partial[blk] = fwb_regularize_f32(wp + lo, _at(gp, lo), hi - lo, <float>lam, l1)
            else:
                partial[blk] = fwb_regularize_f64(wp + lo, _at(gp, lo), hi - lo, lam, l1)
        for blk in range(nb):
            total += partial[blk]
    return total


def partial_sums_needed(Py_ssize_t n):
    """Length of the workspace `regularize` needs for n elements."""
    return (n + REG_BLOCK - 1) // REG_BLOCK
