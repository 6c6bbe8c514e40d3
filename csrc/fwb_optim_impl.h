/* Optimizer updates and regularisation, written once for a scalar type.
 *
 * Included twice by fwb_optim.h with FWB_T (float or double) and FWB_S (f32
 * or f64).  Each function updates one contiguous stretch of parameters in
 * place, in one pass over memory; Cython splits arrays into stretches and
 * spreads them over threads.  The operation order follows PyTorch 2.x's
 * single-tensor CPU implementations (documented at each function) so that
 * the numbers match torch.optim's to rounding.
 *
 * Coefficients of the form 1 - beta (w1, w2, keep_g, ...) are passed in,
 * computed in double and rounded once by the caller, as PyTorch does:
 * computing them here from an already rounded float beta2 = 0.999f gives
 * 1 - beta2 = 0.00099998713 instead of 0.001f.
 *
 * Common arguments:
 *   p     parameters (updated in place)          g     gradients
 *   mask  NULL, or 1 byte per parameter: where it is 0 the parameter is set
 *         to exactly 0 and its optimizer state is left untouched (no drift)
 *   wd    L2 weight decay added to the gradient: d = g + wd * p
 *   l1    L1 coefficient added to the gradient:  d += l1 * sign(p)
 * Flags that are constant over a call (wd != 0, nesterov, ...) select
 * between values rather than branch, and each update is written once as an
 * always-inlined body that the entry point instantiates for every
 * combination of optional arrays (mask, momentum buffer, ...), so that no
 * loop tests a pointer and every loop vectorises.
 */

#define FWB_CAT_(a, b) a##_##b
#define FWB_CAT(a, b) FWB_CAT_(a, b)
#define FWB_FN(name) FWB_CAT(name, FWB_S)

/* NumPy's sign: -1, 0 or 1, and NaN for NaN (so a NaN weight never hides
 * behind a zero L1 gradient). */
static inline FWB_T FWB_FN(fwb_sign)(FWB_T x) {
    return x != x ? x : (FWB_T)(x > 0) - (FWB_T)(x < 0);
}

/* the gradient seen by the update: g + wd * p + l1 * sign(p) (terms with a
 * zero coefficient are skipped, so Inf/NaN in p do not leak into them) */
static inline FWB_T FWB_FN(fwb_decayed)(FWB_T g, FWB_T p, FWB_T wd, FWB_T l1) {
    FWB_T d = wd != 0 ? g + wd * p : g;
    return l1 != 0 ? d + l1 * FWB_FN(fwb_sign)(p) : d;
}

/* Optimizer state is stored flushed to zero: a value below the smallest
 * normal number (FLT_MIN, DBL_MIN) becomes +0.  Without this, the first
 * moment of a parameter whose gradient is exactly 0 (a dead ReLU unit, an
 * input pixel that is 0 in every batch) decays geometrically into the
 * subnormal range and stays there for good (0.9 times the smallest
 * subnormal rounds back to itself), and every later update of it pays the
 * CPU's slow path for subnormal operands.  What is lost is below 1e-38 in a
 * moment whose contribution to the update is then below lr * 1e-30.  NaN
 * and Inf compare false and pass through unchanged.  PyTorch keeps the
 * subnormal values, so its bits differ from fastwb's exactly where a
 * subnormal would have been stored. */
static inline FWB_T FWB_FN(fwb_flush)(FWB_T x) {
    return FWB_FABS(x) < FWB_TINY ? (FWB_T)0 : x;
}

/* PyTorch's lerp: a + w (b - a) for |w| < 0.5 (low), else b - (b - a)(1 - w).
 * The caller decides low and 1 - w once, outside its loop, so that the loop
 * has no data-independent branch left in it and vectorises in every clone
 * (decided per element, it halved Adam's speed). */
static inline FWB_T FWB_FN(fwb_lerp)(FWB_T a, FWB_T b, FWB_T w, FWB_T one_minus_w, int low) {
    return low ? a + w * (b - a) : b - (b - a) * one_minus_w;
}

/* Run DISPATCH(WD, L1) (a braced block) with the weight decay and the L1 coefficient as the
 * constant 0 where they are 0: inlined into the loop, the terms they switch
 * off then vanish at compile time (GCC does not unswitch loops this large on
 * its own, and computing sign(p) with its NaN test for nothing halved Adam's
 * speed). */
#define FWB_WITH_DECAY(DISPATCH)                                                          \
    do {                                                                                  \
        if (l1 != 0) { if (wd != 0) DISPATCH(wd, l1) else DISPATCH((FWB_T)0, l1) }        \
        else { if (wd != 0) DISPATCH(wd, (FWB_T)0) else DISPATCH((FWB_T)0, (FWB_T)0) }    \
    } while (0)

/* SGD as torch.optim.SGD:
 *   d = g + wd p
 *   momentum != 0:  buf = d on the first step, else buf = mu buf + (1 - dampening) d
 *                   d = d + mu buf (nesterov) or d = buf
 * keep_g = 1 - dampening (rounded once from double)
 *   p = p - lr d
 * buf is NULL when momentum is 0. */
FWB_INLINE void FWB_FN(fwb_sgd_body)(FWB_T *p, const FWB_T *g, FWB_T *buf, const unsigned char *mask,
                                     ptrdiff_t n, FWB_T lr, FWB_T mu, FWB_T keep_g, FWB_T wd, FWB_T l1,
                                     int nesterov, int first, const int has_buf, const int has_mask) {
    for (ptrdiff_t j = 0; j < n; j++) {
        int off = has_mask && !mask[j];
        FWB_T pj = p[j];
        FWB_T d = FWB_FN(fwb_decayed)(g[j], pj, wd, l1);
        if (has_buf) {
            FWB_T b = FWB_FN(fwb_flush)(first ? d : buf[j] * mu + keep_g * d);
            d = nesterov ? d + mu * b : b;
            buf[j] = off ? buf[j] : b;
        }
        FWB_T pn = pj + (-lr) * d;
        p[j] = off ? (FWB_T)0 : pn;
    }
}

FWB_CLONES static void FWB_FN(fwb_sgd)(FWB_T *p, const FWB_T *g, FWB_T *buf, const unsigned char *mask,
                                        ptrdiff_t n, FWB_T lr, FWB_T mu, FWB_T keep_g, FWB_T wd, FWB_T l1,
                                        int nesterov, int first) {
#define FWB_SGD(B, M, WD, L1) FWB_FN(fwb_sgd_body)(p, g, buf, mask, n, lr, mu, keep_g, WD, L1, nesterov, first, B, M)
#define FWB_SGD_ALL(WD, L1) { if (buf) { if (mask) FWB_SGD(1, 1, WD, L1); else FWB_SGD(1, 0, WD, L1); } \
                              else     { if (mask) FWB_SGD(0, 1, WD, L1); else FWB_SGD(0, 0, WD, L1); } }
    FWB_WITH_DECAY(FWB_SGD_ALL);
#undef FWB_SGD_ALL
#undef FWB_SGD
}

/* Momentum in the slides' form: v = mu v - lr d;  p = p + v. */
FWB_INLINE void FWB_FN(fwb_momentum_body)(FWB_T *p, const FWB_T *g, FWB_T *v, const unsigned char *mask,
                                          ptrdiff_t n, FWB_T lr, FWB_T mu, FWB_T wd, FWB_T l1, const int has_mask) {
    for (ptrdiff_t j = 0; j < n; j++) {
        int off = has_mask && !mask[j];
        FWB_T pj = p[j];
        FWB_T d = FWB_FN(fwb_decayed)(g[j], pj, wd, l1);
        FWB_T vn = FWB_FN(fwb_flush)(mu * v[j] - lr * d);
        v[j] = off ? v[j] : vn;
        p[j] = off ? (FWB_T)0 : pj + vn;
    }
}

FWB_CLONES static void FWB_FN(fwb_momentum)(FWB_T *p, const FWB_T *g, FWB_T *v, const unsigned char *mask,
                                             ptrdiff_t n, FWB_T lr, FWB_T mu, FWB_T wd, FWB_T l1) {
#define FWB_MOM_ALL(WD, L1) { if (mask) FWB_FN(fwb_momentum_body)(p, g, v, mask, n, lr, mu, WD, L1, 1); \
                              else      FWB_FN(fwb_momentum_body)(p, g, v, mask, n, lr, mu, WD, L1, 0); }
    FWB_WITH_DECAY(FWB_MOM_ALL);
#undef FWB_MOM_ALL
}

/* Adam / AdamW as torch.optim.Adam and AdamW (single-tensor path):
 *   AdamW: p = p (1 - lr wd)          Adam: d = g + wd p
 *   m = lerp(m, d, 1 - beta1)
 *   v = v beta2 + ((1 - beta2) d) d
 *   amsgrad: vmax = max(vmax, v), used below in place of v
 *   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
 *   p = p - (step_size m) / denom,    step_size = lr / (1 - beta1^t)
 * decay_factor = 1 - lr wd for AdamW (1 for Adam); bc2_sqrt and step_size
 * are computed by the caller in double, as PyTorch does, and so are
 * w1 = 1 - beta1 and w2 = 1 - beta2. vmax is NULL
 * without amsgrad. */
FWB_INLINE void FWB_FN(fwb_adam_body)(FWB_T *p, const FWB_T *g, FWB_T *m, FWB_T *v, FWB_T *vmax,
                                      const unsigned char *mask, ptrdiff_t n, FWB_T w1, FWB_T beta2,
                                      FWB_T w2, FWB_T eps, FWB_T wd, FWB_T l1, FWB_T decay_factor,
                                      FWB_T step_size, FWB_T bc2_sqrt, const int has_vmax, const int has_mask) {
    const int low = fabs((double)w1) < 0.5;
    const FWB_T omw1 = (FWB_T)1 - w1;
    for (ptrdiff_t j = 0; j < n; j++) {
        int off = has_mask && !mask[j];
        FWB_T pj = p[j];
        FWB_T d = FWB_FN(fwb_decayed)(g[j], pj, wd, l1);
        pj = decay_factor != 1 ? pj * decay_factor : pj;
        FWB_T mj = FWB_FN(fwb_flush)(FWB_FN(fwb_lerp)(m[j], d, w1, omw1, low));
        FWB_T vj = FWB_FN(fwb_flush)(v[j] * beta2 + (w2 * d) * d);
        FWB_T vd = vj;
        if (has_vmax) {
            FWB_T vm = vmax[j] > vj || vmax[j] != vmax[j] ? vmax[j] : vj;
            vmax[j] = off ? vmax[j] : vm;
            vd = vm;
        }
        FWB_T denom = FWB_SQRT(vd) / bc2_sqrt + eps;
        FWB_T pn = pj + ((-step_size) * mj) / denom;
        m[j] = off ? m[j] : mj;
        v[j] = off ? v[j] : vj;
        p[j] = off ? (FWB_T)0 : pn;
    }
}

FWB_CLONES static void FWB_FN(fwb_adam)(FWB_T *p, const FWB_T *g, FWB_T *m, FWB_T *v, FWB_T *vmax,
                                         const unsigned char *mask, ptrdiff_t n, FWB_T w1, FWB_T beta2,
                                         FWB_T w2, FWB_T eps, FWB_T wd, FWB_T l1, FWB_T decay_factor,
                                         FWB_T step_size, FWB_T bc2_sqrt) {
#define FWB_ADAM(X, M, WD, L1) FWB_FN(fwb_adam_body)(p, g, m, v, vmax, mask, n, w1, beta2, w2, eps, WD, L1, \
                                                     decay_factor, step_size, bc2_sqrt, X, M)
#define FWB_ADAM_ALL(WD, L1) { if (vmax) { if (mask) FWB_ADAM(1, 1, WD, L1); else FWB_ADAM(1, 0, WD, L1); } \
                               else      { if (mask) FWB_ADAM(0, 1, WD, L1); else FWB_ADAM(0, 0, WD, L1); } }
    FWB_WITH_DECAY(FWB_ADAM_ALL);
#undef FWB_ADAM_ALL
#undef FWB_ADAM
}

/* RMSprop as torch.optim.RMSprop:
 *   d = g + wd p
 *   v = v alpha + ((1 - alpha) d) d
 *   centered: ga = lerp(ga, d, 1 - alpha);  avg = sqrt(v + (-ga) ga) + eps
 *   else:     avg = sqrt(v) + eps
 *   momentum > 0: buf = buf momentum + d / avg;  p = p - lr buf
 *   else:         p = p - (lr d) / avg
 * w = 1 - alpha (rounded once from double); ga is NULL unless centered, buf
 * NULL unless momentum > 0. */
FWB_INLINE void FWB_FN(fwb_rmsprop_body)(FWB_T *p, const FWB_T *g, FWB_T *v, FWB_T *ga, FWB_T *buf,
                                         const unsigned char *mask, ptrdiff_t n, FWB_T lr, FWB_T alpha,
                                         FWB_T w, FWB_T eps, FWB_T wd, FWB_T l1, FWB_T momentum,
                                         const int has_ga, const int has_buf, const int has_mask) {
    const int low = fabs((double)w) < 0.5;
    const FWB_T omw = (FWB_T)1 - w;
    for (ptrdiff_t j = 0; j < n; j++) {
        int off = has_mask && !mask[j];
        FWB_T pj = p[j];
        FWB_T d = FWB_FN(fwb_decayed)(g[j], pj, wd, l1);
        FWB_T vj = FWB_FN(fwb_flush)(v[j] * alpha + (w * d) * d);
        FWB_T avg;
        if (has_ga) {
            FWB_T gj = FWB_FN(fwb_flush)(FWB_FN(fwb_lerp)(ga[j], d, w, omw, low));
            avg = FWB_SQRT(vj + (-gj) * gj) + eps;
            ga[j] = off ? ga[j] : gj;
        } else {
            avg = FWB_SQRT(vj) + eps;
        }
        FWB_T pn;
        if (has_buf) {
            FWB_T bj = FWB_FN(fwb_flush)(buf[j] * momentum + d / avg);
            buf[j] = off ? buf[j] : bj;
            pn = pj + (-lr) * bj;
        } else {
            pn = pj + ((-lr) * d) / avg;
        }
        v[j] = off ? v[j] : vj;
        p[j] = off ? (FWB_T)0 : pn;
    }
}

FWB_CLONES static void FWB_FN(fwb_rmsprop)(FWB_T *p, const FWB_T *g, FWB_T *v, FWB_T *ga, FWB_T *buf,
                                            const unsigned char *mask, ptrdiff_t n, FWB_T lr, FWB_T alpha,
                                            FWB_T w, FWB_T eps, FWB_T wd, FWB_T l1, FWB_T momentum) {
#define FWB_RMS(A, B, M) FWB_FN(fwb_rmsprop_body)(p, g, v, ga, buf, mask, n, lr, alpha, w, eps, WD_, L1_, momentum, A, B, M)
#define FWB_RMS_ALL(WD, L1) {                                                   \
        FWB_T WD_ = WD, L1_ = L1;                                               \
        if (ga) {                                                               \
            if (buf) { if (mask) FWB_RMS(1, 1, 1); else FWB_RMS(1, 1, 0); }    \
            else     { if (mask) FWB_RMS(1, 0, 1); else FWB_RMS(1, 0, 0); }    \
        } else {                                                                \
            if (buf) { if (mask) FWB_RMS(0, 1, 1); else FWB_RMS(0, 1, 0); }    \
            else     { if (mask) FWB_RMS(0, 0, 1); else FWB_RMS(0, 0, 0); }    \
        } }
    FWB_WITH_DECAY(FWB_RMS_ALL);
#undef FWB_RMS_ALL
#undef FWB_RMS
}

/* Regularisation of one stretch: grad = lam * w (l2) or lam * sign(w) (l1);
 * returns sum(w^2) (l2) or sum(|w|) (l1) in double, over 8 interleaved
 * partial sums combined in a fixed order.  The sum is taken before grad is
 * written, so grad may be w itself.  grad may be NULL. */
FWB_CLONES static double FWB_FN(fwb_regularize)(const FWB_T *w, FWB_T *grad, ptrdiff_t n, FWB_T lam, int l1) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) {
            double x = (double)w[j + k];
            acc[k] += l1 ? fabs(x) : x * x;
        }
    for (int k = 0; j < n; j++, k++) {
        double x = (double)w[j];
        acc[k] += l1 ? fabs(x) : x * x;
    }
    if (grad) {
        for (ptrdiff_t i = 0; i < n; i++) grad[i] = l1 ? lam * FWB_FN(fwb_sign)(w[i]) : lam * w[i];
    }
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

#undef FWB_WITH_DECAY
#undef FWB_FN
#undef FWB_CAT
#undef FWB_CAT_
