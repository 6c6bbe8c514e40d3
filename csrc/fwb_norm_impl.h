/* Batch normalisation and dropout, written once for a scalar type.
 *
 * Included twice by fwb_norm.h with FWB_T (float or double) and FWB_S (f32
 * or f64).  A batch-norm kernel works on the columns [c0, c1) of an (n, m)
 * C-contiguous block, FWB_BN_CHUNK columns at a time, walking the rows in
 * order; the Cython module gives each thread its own column range, so every
 * column is reduced in the same order whatever the thread count, and one
 * thread does both passes of its columns without waiting for the others.
 *
 * Forward (z is the normalised, scaled and shifted value):
 *   mean, var   batch statistics of each column (training), or the running
 *               statistics (eval); invstd = 1 / sqrt(var + eps)
 *   z           (x - mean) * (gamma * invstd) + beta
 *   y           act(z), then inverted dropout: kept ? y / (1 - p) : 0
 * The statistics are shifted sums accumulated in double: with K the
 * column's first element, d = x - K, mean = K + sum(d) / n and
 * var = (sum(d^2) - sum(d)^2 / n) / n (biased; clamped at 0), one read of x,
 * and no cancellation trouble since K is one of the data.
 *
 * Backward recomputes z, the activation derivative and the dropout mask from
 * x, mean, invstd, gamma, beta and the generator (nothing was stored):
 *   gz          dL/dz = (dropout mask * scale) * g * act'(z)
 *   pass 1      gz into `work` (or, in eval mode, gz * gamma * invstd straight
 *               into dx) and the column sums sum(gz), sum(gz * xhat) in double,
 *               xhat = (x - mean) * invstd
 *   pass 2      (training) dx = gamma * invstd * (gz - mean(gz) - xhat * mean(gz * xhat))
 * grad_beta = sum(gz), grad_gamma = sum(gz * xhat).
 *
 * gamma and beta may be NULL (1 and 0).  Nothing here allocates or checks.
 */

#define FWB_CAT_(a, b) a##_##b
#define FWB_CAT(a, b) FWB_CAT_(a, b)
#define FWB_FN(name) FWB_CAT(name, FWB_S)

/* y[j] = kept(start + j) ? x[j] * scale : 0 (inverted dropout; y may equal x) */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_dropout)(const FWB_T *x, FWB_T *y, ptrdiff_t len, uint64_t start,
                                                        const fwb_dropout_t *d) {
    const FWB_T s = (FWB_T)d->scale;
    const uint32_t t = d->threshold;
    uint32_t lo, k0, k1;
    while (len > 0) {
        ptrdiff_t w = fwb_dropout_run(d, start, len, &lo, &k0, &k1);
        uint32_t c = lo;
        for (ptrdiff_t j = 0; j < w; j++, c++) {
            FWB_T v = x[j] * s;     /* unconditionally: a select vectorises, a masked load is slow */
            y[j] = fwb_dropout_bits(c, k0, k1) >= t ? v : (FWB_T)0;
        }
        x += w;
        y += w;
        len -= w;
        start += (uint64_t)w;
    }
}

/* Column statistics of w columns (row stride m, n >= 1 rows) into mean and
 * invstd, and the running statistics updated with `momentum` when rmean is
 * not NULL (PyTorch: running = (1 - momentum) * running + momentum * batch,
 * with the unbiased variance; n >= 2 there). */
FWB_INLINE_N void FWB_FN(fwb_bn_stats)(const FWB_T *x, ptrdiff_t n, ptrdiff_t m, ptrdiff_t w, FWB_T *mean,
                                      FWB_T *invstd, FWB_T *rmean, FWB_T *rvar, double momentum, double eps) {
    double k[FWB_BN_CHUNK], s1[FWB_BN_CHUNK], s2[FWB_BN_CHUNK];
    ptrdiff_t i, j;
    for (j = 0; j < w; j++) {
        k[j] = (double)x[j];
        s1[j] = 0;
        s2[j] = 0;
    }
    for (i = 1; i < n; i++) {
        const FWB_T *r = x + i * m;
        for (j = 0; j < w; j++) {
            double dd = (double)r[j] - k[j];
            s1[j] += dd;
            s2[j] += dd * dd;
        }
    }
    for (j = 0; j < w; j++) {
        double mu = k[j] + s1[j] / (double)n;
        double ss = s2[j] - s1[j] * s1[j] / (double)n;
        ss = ss < 0 ? 0 : ss;                       /* (NaN passes through) */
        mean[j] = (FWB_T)mu;
        invstd[j] = (FWB_T)(1.0 / sqrt(ss / (double)n + eps));
        if (rmean) {
            rmean[j] = (FWB_T)((1.0 - momentum) * (double)rmean[j] + momentum * mu);
            rvar[j] = (FWB_T)((1.0 - momentum) * (double)rvar[j] + momentum * (ss / (double)(n - 1)));
        }
    }
}

/* per-column constants of w columns: mu = mean, is = invstd,
 * a = gamma * invstd, b = beta (gamma, beta NULL: 1, 0) */
FWB_INLINE_N void FWB_FN(fwb_bn_coeffs)(ptrdiff_t w, const FWB_T *mean, const FWB_T *invstd, const FWB_T *gamma,
                                       const FWB_T *beta, FWB_T *mu, FWB_T *is, FWB_T *a, FWB_T *b) {
    for (ptrdiff_t j = 0; j < w; j++) {
        mu[j] = mean[j];
        is[j] = invstd[j];
        a[j] = gamma ? gamma[j] * invstd[j] : invstd[j];
        b[j] = beta ? beta[j] : (FWB_T)0;
    }
}

/* activations of z and their derivatives (read off z: the same bits as the
 * forward pass computed, so relu's kink is decided the same way) */
#define FWB_N_ID(v) (v)
#define FWB_N_RELU(v) ((v) > 0 || (v) != (v) ? (v) : (FWB_T)0)     /* keeps NaN */
#define FWB_N_LEAKY(v) ((v) > 0 ? (v) : alpha * (v))
#define FWB_N_SIGM(v) FWB_FN(fwb_sigmoid)(v)
#define FWB_N_TANH(v) FWB_FN(fwb_tanh)(v)
#define FWB_D_ID(v) ((FWB_T)1)
#define FWB_D_RELU(v) ((v) > 0 ? (FWB_T)1 : (FWB_T)0)
#define FWB_D_LEAKY(v) ((v) > 0 ? (FWB_T)1 : alpha)
#define FWB_D_SIGM(v) FWB_FN(fwb_sigmoid_deriv)(v)
#define FWB_D_TANH(v) FWB_FN(fwb_tanh_deriv)(v)

static inline FWB_T FWB_FN(fwb_sigmoid_deriv)(FWB_T z) {
    FWB_T y = FWB_FN(fwb_sigmoid)(z);
    return y * ((FWB_T)1 - y);
}

static inline FWB_T FWB_FN(fwb_tanh_deriv)(FWB_T z) {
    FWB_T y = FWB_FN(fwb_tanh)(z);
    return (FWB_T)1 - y * y;
}

/* one loop per activation: DO(F, D) expands to a loop using activation F and derivative D */
#define FWB_BN_SWITCH(DO)                                       \
    switch (act) {                                              \
    case FWB_ACT_RELU:    DO(FWB_N_RELU, FWB_D_RELU)   break;   \
    case FWB_ACT_LEAKY:   DO(FWB_N_LEAKY, FWB_D_LEAKY) break;   \
    case FWB_ACT_SIGMOID: DO(FWB_N_SIGM, FWB_D_SIGM)   break;   \
    case FWB_ACT_TANH:    DO(FWB_N_TANH, FWB_D_TANH)   break;   \
    default:              DO(FWB_N_ID, FWB_D_ID)       break;   \
    }

/* one row of the forward pass: yr = dropout(act((xr - mu) * a + b)), the
 * row's first element being element `base` of the whole array */
FWB_INLINE_N void FWB_FN(fwb_bn_apply_row)(const FWB_T *xr, FWB_T *yr, ptrdiff_t w, const FWB_T *mu, const FWB_T *a,
                                          const FWB_T *b, int act, FWB_T alpha, const fwb_dropout_t *d, uint64_t base) {
    ptrdiff_t j, len = w;       /* the loops' length: the row, or one stretch of it (dropout) */
    uint32_t c, lo = 0, k0 = 0, k1 = 0;
#define FWB_PLAIN(F, D) for (j = 0; j < len; j++) yr[j] = F((xr[j] - mu[j]) * a[j] + b[j]);
#define FWB_DROPPED(F, D)                                                    \
    for (j = 0, c = lo; j < len; j++, c++) {                                \
        FWB_T v = F((xr[j] - mu[j]) * a[j] + b[j]) * s;                     \
        yr[j] = fwb_dropout_bits(c, k0, k1) >= t ? v : (FWB_T)0;            \
    }
    if (!d->on) {
        FWB_BN_SWITCH(FWB_PLAIN)
        return;
    }
    const FWB_T s = (FWB_T)d->scale;
    const uint32_t t = d->threshold;
    for (; w > 0; w -= len, base += (uint64_t)len) {
        len = fwb_dropout_run(d, base, w, &lo, &k0, &k1);
        FWB_BN_SWITCH(FWB_DROPPED)
        xr += len; yr += len; mu += len; a += len; b += len;
    }
#undef FWB_PLAIN
#undef FWB_DROPPED
}

/* Forward pass over the columns [c0, c1) of x (n, m) into y (n, m).
 * training: batch statistics into mean/invstd (and the running statistics
 * updated when rmean is not NULL); eval: mean = rmean and
 * invstd = 1 / sqrt(rvar + eps) from the running statistics.  y NULL:
 * statistics only.  y may equal x. */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_bn_forward)(
        const FWB_T *x, FWB_T *y, ptrdiff_t n, ptrdiff_t m, ptrdiff_t c0, ptrdiff_t c1,
        FWB_T *mean, FWB_T *invstd, const FWB_T *gamma, const FWB_T *beta, FWB_T *rmean, FWB_T *rvar,
        double momentum, double eps, int training, int act, FWB_T alpha, const fwb_dropout_t *d) {
    FWB_T mu[FWB_BN_CHUNK], is[FWB_BN_CHUNK], a[FWB_BN_CHUNK], b[FWB_BN_CHUNK];
    for (ptrdiff_t cs = c0; cs < c1; cs += FWB_BN_CHUNK) {
        ptrdiff_t w = c1 - cs < FWB_BN_CHUNK ? c1 - cs : FWB_BN_CHUNK;
        if (training) {
            FWB_FN(fwb_bn_stats)(x + cs, n, m, w, mean + cs, invstd + cs, rmean ? rmean + cs : NULL,
                                 rvar ? rvar + cs : NULL, momentum, eps);
        } else {
            for (ptrdiff_t j = 0; j < w; j++) {
                mean[cs + j] = rmean[cs + j];
                invstd[cs + j] = (FWB_T)(1.0 / sqrt((double)rvar[cs + j] + eps));
            }
        }
        if (!y)
            continue;
        FWB_FN(fwb_bn_coeffs)(w, mean + cs, invstd + cs, gamma ? gamma + cs : NULL, beta ? beta + cs : NULL,
                              mu, is, a, b);
        for (ptrdiff_t i = 0; i < n; i++)
            FWB_FN(fwb_bn_apply_row)(x + i * m + cs, y + i * m + cs, w, mu, a, b, act, alpha, d,
                                     (uint64_t)i * (uint64_t)m + (uint64_t)cs);
    }
}

/* pass 1 of the backward pass over one row: gz = (mask * scale * gr) * act'(z)
 * into o[j] = gz * e[j] (e = 1 in training, gamma * invstd in eval), and the
 * column sums sg += gz, sgx += gz * xhat */
FWB_INLINE_N void FWB_FN(fwb_bn_grad_row)(const FWB_T *gr, const FWB_T *xr, FWB_T *o, ptrdiff_t w,
                                         const FWB_T *mu, const FWB_T *is, const FWB_T *a, const FWB_T *b,
                                         const FWB_T *e, double *sg, double *sgx, int act, FWB_T alpha,
                                         const fwb_dropout_t *d, uint64_t base) {
    ptrdiff_t j, len = w;                   /* the loops' length: the row, or one stretch of it */
    uint32_t c, lo = 0, k0 = 0, k1 = 0;     /* the counter and key of the dropout generator */
#define FWB_GRAD(F, D, GD)                                   \
    for (j = 0, c = lo; j < len; j++, c++) {                 \
        FWB_T xc = xr[j] - mu[j];                            \
        FWB_T z = xc * a[j] + b[j];                          \
        FWB_T gz = (GD) * D(z);                              \
        (void)z;                         /* unused by D_ID */ \
        o[j] = gz * e[j];                                    \
        sg[j] += (double)gz;                                 \
        sgx[j] += (double)gz * (double)(xc * is[j]);         \
    }
#define FWB_PLAIN(F, D) FWB_GRAD(F, D, gr[j])
#define FWB_DROPPED(F, D) \
    FWB_GRAD(F, D, (fwb_dropout_bits(c, k0, k1) >= t ? gr[j] * s : (FWB_T)0))
    if (!d->on) {
        FWB_BN_SWITCH(FWB_PLAIN)
        return;
    }
    const FWB_T s = (FWB_T)d->scale;
    const uint32_t t = d->threshold;
    for (; w > 0; w -= len, base += (uint64_t)len) {
        len = fwb_dropout_run(d, base, w, &lo, &k0, &k1);
        FWB_BN_SWITCH(FWB_DROPPED)
        gr += len; xr += len; o += len; mu += len; is += len; a += len; b += len; e += len;
        sg += len; sgx += len;
    }
#undef FWB_GRAD
#undef FWB_PLAIN
#undef FWB_DROPPED
}

/* Backward pass over the columns [c0, c1) (see the top of this file).
 * work: (n, m) scratch for gz in training (may be dx or g); unused in eval.
 * dgamma, dbeta may be NULL (not wanted). */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_bn_backward)(
        const FWB_T *g, const FWB_T *x, FWB_T *work, FWB_T *dx, ptrdiff_t n, ptrdiff_t m, ptrdiff_t c0, ptrdiff_t c1,
        const FWB_T *mean, const FWB_T *invstd, const FWB_T *gamma, const FWB_T *beta, FWB_T *dgamma, FWB_T *dbeta,
        int training, int act, FWB_T alpha, const fwb_dropout_t *d) {
    FWB_T mu[FWB_BN_CHUNK], is[FWB_BN_CHUNK], a[FWB_BN_CHUNK], b[FWB_BN_CHUNK], e[FWB_BN_CHUNK];
    FWB_T mg[FWB_BN_CHUNK], mgx[FWB_BN_CHUNK];
    double sg[FWB_BN_CHUNK], sgx[FWB_BN_CHUNK];
    FWB_T *o = training ? work : dx;
    ptrdiff_t i, j;
    for (ptrdiff_t cs = c0; cs < c1; cs += FWB_BN_CHUNK) {
        ptrdiff_t w = c1 - cs < FWB_BN_CHUNK ? c1 - cs : FWB_BN_CHUNK;
        FWB_FN(fwb_bn_coeffs)(w, mean + cs, invstd + cs, gamma ? gamma + cs : NULL, beta ? beta + cs : NULL,
                              mu, is, a, b);
        for (j = 0; j < w; j++) {
            e[j] = training ? (FWB_T)1 : a[j];
            sg[j] = 0;
            sgx[j] = 0;
        }
        for (i = 0; i < n; i++)
            FWB_FN(fwb_bn_grad_row)(g + i * m + cs, x + i * m + cs, o + i * m + cs, w, mu, is, a, b, e, sg, sgx,
                                    act, alpha, d, (uint64_t)i * (uint64_t)m + (uint64_t)cs);
        for (j = 0; j < w; j++) {
            if (dgamma) dgamma[cs + j] = (FWB_T)sgx[j];
            if (dbeta) dbeta[cs + j] = (FWB_T)sg[j];
        }
        if (!training)
            continue;
        for (j = 0; j < w; j++) {
            mg[j] = (FWB_T)(sg[j] / (double)n);
            mgx[j] = (FWB_T)(sgx[j] / (double)n);
        }
        for (i = 0; i < n; i++) {
            const FWB_T *xr = x + i * m + cs, *wr = work + i * m + cs;
            FWB_T *dr = dx + i * m + cs;
            for (j = 0; j < w; j++) {
                FWB_T xh = (xr[j] - mu[j]) * is[j];
                dr[j] = a[j] * ((wr[j] - mg[j]) - xh * mgx[j]);
            }
        }
    }
}

#undef FWB_N_ID
#undef FWB_N_RELU
#undef FWB_N_LEAKY
#undef FWB_N_SIGM
#undef FWB_N_TANH
#undef FWB_D_ID
#undef FWB_D_RELU
#undef FWB_D_LEAKY
#undef FWB_D_SIGM
#undef FWB_D_TANH
#undef FWB_BN_SWITCH
#undef FWB_FN
#undef FWB_CAT
#undef FWB_CAT_
