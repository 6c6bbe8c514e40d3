/* Loss kernels of fastwb, written once for a scalar type.
 *
 * Included twice by fwb_loss.h, with
 *   FWB_T    the element type (float or double)
 *   FWB_S    the name suffix (f32 or f64)
 *   FWB_ABS  the absolute value of an FWB_T (fabsf or fabs)
 *
 * Per-element results are computed in FWB_T into a small buffer on the
 * stack, one chunk of FWB_CHUNK elements at a time (a plain loop that
 * vectorises), and the chunk is then added into 8 double lanes.  Chunks
 * hold a multiple of 8 elements, so element j of a flat block always lands
 * in lane j mod 8.  The gradient may be written over either input (the same
 * element is read before it is written).
 */

#define FWB_CAT_(a, b) a##_##b
#define FWB_CAT(a, b) FWB_CAT_(a, b)
#define FWB_FN(name) FWB_CAT(name, FWB_S)
#define FWB_CHUNK 256

/* acc[k] += v[j] for j = k mod 8: n is a multiple of 8 except at the end of a block. */
static inline void FWB_FN(fwb_lanes_add)(double *acc, const FWB_T *v, ptrdiff_t n) {
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) acc[k] += (double)v[j + k];
    for (int k = 0; j < n; j++, k++) acc[k] += (double)v[j];
}

/* acc[k] += v[j]^2 (squared in double, so exactly for float). */
static inline void FWB_FN(fwb_lanes_add_sq)(double *acc, const FWB_T *v, ptrdiff_t n) {
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) acc[k] += (double)v[j + k] * (double)v[j + k];
    for (int k = 0; j < n; j++, k++) acc[k] += (double)v[j] * (double)v[j];
}

/* Mean squared error over a flat block of len elements:
 *   g[j] = (p[j] - t[j]) * scale    (scale = 2 / size of the whole batch)
 * and returns sum_j (p[j] - t[j])^2, the difference rounded to FWB_T and
 * squared and summed in double.  g may equal p or t. */
FWB_CLONES FWB_HEADER_FN static double FWB_FN(fwb_mse_block)(const FWB_T *p, const FWB_T *t, FWB_T *g,
                                                ptrdiff_t len, FWB_T scale) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    FWB_T d[FWB_CHUNK];
    for (ptrdiff_t c0 = 0; c0 < len; c0 += FWB_CHUNK) {
        ptrdiff_t c = len - c0 < FWB_CHUNK ? len - c0 : FWB_CHUNK;
        const FWB_T *pc = p + c0, *tc = t + c0;
        FWB_T *gc = g + c0;
        for (ptrdiff_t j = 0; j < c; j++) {
            FWB_T dj = pc[j] - tc[j];
            d[j] = dj;
            gc[j] = dj * scale;
        }
        FWB_FN(fwb_lanes_add_sq)(acc, d, c);
    }
    return fwb_lanes_total(acc);
}

/* Binary cross-entropy with logits over a block of rows x m elements, with
 * e = exp(-|z|) (never overflows) and sigmoid(z) = (z >= 0 ? 1 : e) / (1 + e):
 *
 *   without pos_weight (pw == NULL):
 *     l = max(z, 0) - z t + log1p(e),          g = (sigmoid(z) - t) * scale
 *   with a weight pw[col] for each of the m columns (PyTorch's pos_weight):
 *     w = 1 + (pw - 1) t
 *     l = (1 - t) z + w (log1p(e) + max(-z, 0)),  g = (w sigmoid(z) - pw t) * scale
 *
 * (scale = 1 / size of the whole batch).  Returns sum of l in double.  g may
 * equal z or t.  Without weights the block is one flat stretch; with them it
 * is walked row by row (lanes restart at each row).  exp runs as a loop of its
 * own over each chunk before the rest: one loop chaining exp, division and
 * log1p per element ran 1.5-2x slower (too long a dependency chain for the
 * processor to overlap iterations). */
FWB_CLONES FWB_HEADER_FN static double FWB_FN(fwb_bce_block)(const FWB_T *z, const FWB_T *t, const FWB_T *pw,
                                                FWB_T *g, ptrdiff_t rows, ptrdiff_t m, FWB_T scale) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    FWB_T l[FWB_CHUNK], e[FWB_CHUNK];
    const FWB_T one = 1, zero = 0;
    if (!pw) {
        ptrdiff_t len = rows * m;
        for (ptrdiff_t c0 = 0; c0 < len; c0 += FWB_CHUNK) {
            ptrdiff_t c = len - c0 < FWB_CHUNK ? len - c0 : FWB_CHUNK;
            const FWB_T *zc = z + c0, *tc = t + c0;
            FWB_T *gc = g + c0;
            for (ptrdiff_t j = 0; j < c; j++) e[j] = FWB_FN(fwb_exp)(-FWB_ABS(zc[j]));
            for (ptrdiff_t j = 0; j < c; j++) {
                FWB_T zj = zc[j], tj = tc[j], ej = e[j];
                FWB_T sig = (zj >= zero ? one : ej) / (one + ej);
                l[j] = ((zj > zero ? zj : zero) - zj * tj) + FWB_FN(fwb_log1p_unit)(ej);
                gc[j] = (sig - tj) * scale;
            }
            FWB_FN(fwb_lanes_add)(acc, l, c);
        }
    } else {
        for (ptrdiff_t i = 0; i < rows; i++) {
            for (ptrdiff_t c0 = 0; c0 < m; c0 += FWB_CHUNK) {
                ptrdiff_t c = m - c0 < FWB_CHUNK ? m - c0 : FWB_CHUNK;
                const FWB_T *zc = z + i * m + c0, *tc = t + i * m + c0, *wc = pw + c0;
                FWB_T *gc = g + i * m + c0;
                for (ptrdiff_t j = 0; j < c; j++) e[j] = FWB_FN(fwb_exp)(-FWB_ABS(zc[j]));
                for (ptrdiff_t j = 0; j < c; j++) {
                    FWB_T zj = zc[j], tj = tc[j], ej = e[j];
                    FWB_T sig = (zj >= zero ? one : ej) / (one + ej);
                    FWB_T w = one + (wc[j] - one) * tj;
                    FWB_T softplus_neg = FWB_FN(fwb_log1p_unit)(ej) + (zj < zero ? -zj : zero);
                    l[j] = (one - tj) * zj + w * softplus_neg;
                    gc[j] = (w * sig - wc[j] * tj) * scale;
                }
                FWB_FN(fwb_lanes_add)(acc, l, c);
            }
        }
    }
    return fwb_lanes_total(acc);
}

/* Index of the first v[j] outside [0, 1] (NaN included), or -1 when there is none. */
FWB_CLONES FWB_HEADER_FN static ptrdiff_t FWB_FN(fwb_first_outside_unit)(const FWB_T *v, ptrdiff_t n) {
    for (ptrdiff_t c0 = 0; c0 < n; c0 += FWB_CHUNK) {
        ptrdiff_t c = n - c0 < FWB_CHUNK ? n - c0 : FWB_CHUNK;
        const FWB_T *vc = v + c0;
        int good = 0;
        for (ptrdiff_t j = 0; j < c; j++) good += (vc[j] >= (FWB_T)0) & (vc[j] <= (FWB_T)1);
        if (good != c)
            for (ptrdiff_t j = 0; j < c; j++)
                if (!(vc[j] >= (FWB_T)0 && vc[j] <= (FWB_T)1)) return c0 + j;
    }
    return -1;
}

#undef FWB_CHUNK
#undef FWB_FN
#undef FWB_CAT
#undef FWB_CAT_
