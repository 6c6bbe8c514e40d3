/* Row kernels of fastwb, written once for a scalar type.
 *
 * Included twice by fwb_rows.h, with
 *   FWB_T  the element type (float or double)
 *   FWB_S  the name suffix (f32 or f64)
 * Each function works on one contiguous stretch of memory; the Cython
 * modules split arrays into such stretches and spread them over OpenMP
 * threads.  Nothing here allocates, checks arguments, or touches Python.
 * Every function is compiled for several instruction sets (FWB_CLONES) and
 * the best one for the running CPU is picked when the module is loaded.
 */

#define FWB_CAT_(a, b) a##_##b
#define FWB_CAT(a, b) FWB_CAT_(a, b)
#define FWB_FN(name) FWB_CAT(name, FWB_S)

/* ------------------------------------------------------------------ */
/* activations                                                        */
/* ------------------------------------------------------------------ */

/* y[j] = act(z[j] + b[j]) (b may be NULL: no bias).  y may equal z. */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_bias_act)(const FWB_T *z, const FWB_T *b, FWB_T *y,
                                             ptrdiff_t n, int act, FWB_T alpha) {
    ptrdiff_t j;
#define FWB_MAP(F)                                              \
    if (b) { for (j = 0; j < n; j++) y[j] = F(z[j] + b[j]); }   \
    else   { for (j = 0; j < n; j++) y[j] = F(z[j]); }
#define FWB_ID(v) (v)
    /* relu keeps NaN (a NaN fails v > 0 but passes v != v) */
#define FWB_RELU(v) ((v) > 0 || (v) != (v) ? (v) : (FWB_T)0)
#define FWB_LEAKY(v) ((v) > 0 ? (v) : alpha * (v))
#define FWB_SIGM(v) FWB_FN(fwb_sigmoid)(v)
#define FWB_TANH(v) FWB_FN(fwb_tanh)(v)
    switch (act) {
    case FWB_ACT_RELU:    FWB_MAP(FWB_RELU)  break;
    case FWB_ACT_LEAKY:   FWB_MAP(FWB_LEAKY) break;
    case FWB_ACT_SIGMOID: FWB_MAP(FWB_SIGM)  break;
    case FWB_ACT_TANH:    FWB_MAP(FWB_TANH)  break;
    default:              FWB_MAP(FWB_ID)    break;
    }
#undef FWB_MAP
#undef FWB_ID
#undef FWB_RELU
#undef FWB_LEAKY
#undef FWB_SIGM
#undef FWB_TANH
}

/* dz[j] = g[j] * act'(y[j]), the derivative read off the layer output y:
 *   relu: [y > 0]   leaky: 1 if y > 0 else alpha   sigmoid: y (1 - y)
 *   tanh: 1 - y^2   identity: 1.
 * The derivative multiplies g, so NaN and Inf in g propagate as in NumPy.
 * dz may equal g. */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_act_grad)(const FWB_T *g, const FWB_T *y, FWB_T *dz,
                                             ptrdiff_t n, int act, FWB_T alpha) {
    ptrdiff_t j;
    switch (act) {
    case FWB_ACT_RELU:
        for (j = 0; j < n; j++) dz[j] = g[j] * (y[j] > 0 ? (FWB_T)1 : (FWB_T)0);
        break;
    case FWB_ACT_LEAKY:
        for (j = 0; j < n; j++) dz[j] = g[j] * (y[j] > 0 ? (FWB_T)1 : alpha);
        break;
    case FWB_ACT_SIGMOID:
        for (j = 0; j < n; j++) dz[j] = g[j] * (y[j] * ((FWB_T)1 - y[j]));
        break;
    case FWB_ACT_TANH:
        for (j = 0; j < n; j++) dz[j] = g[j] * ((FWB_T)1 - y[j] * y[j]);
        break;
    default:
        if (dz != g) memcpy(dz, g, (size_t)n * sizeof(FWB_T));
        break;
    }
}

/* acc[j] += v[j] */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_accumulate)(FWB_T *acc, const FWB_T *v, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j++) acc[j] += v[j];
}

/* ------------------------------------------------------------------ */
/* row reductions (fixed order: the result depends only on the data)   */
/* ------------------------------------------------------------------ */

#define FWB_LANES 8

/* sum of v[0..n) in double, over 8 interleaved partial sums combined
 * pairwise at the end: vectorisable and independent of threading. */
static inline double FWB_FN(fwb_row_sum)(const FWB_T *v, ptrdiff_t n) {
    double acc[FWB_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t j = 0;
    for (; j + FWB_LANES <= n; j += FWB_LANES)
        for (int k = 0; k < FWB_LANES; k++) acc[k] += (double)v[j + k];
    for (int k = 0; j < n; j++, k++) acc[k] += (double)v[j];
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* sum of a[j] * b[j] in double, same order as fwb_row_sum. */
static inline double FWB_FN(fwb_row_dot)(const FWB_T *a, const FWB_T *b, ptrdiff_t n) {
    double acc[FWB_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t j = 0;
    for (; j + FWB_LANES <= n; j += FWB_LANES)
        for (int k = 0; k < FWB_LANES; k++) acc[k] += (double)a[j + k] * (double)b[j + k];
    for (int k = 0; j < n; j++, k++) acc[k] += (double)a[j] * (double)b[j];
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* largest element (n >= 1), over 8 interleaved lanes so that it vectorises.
 * A NaN may be skipped here; callers feed the row through exp afterwards,
 * where the NaN reappears. */
static inline FWB_T FWB_FN(fwb_row_max)(const FWB_T *v, ptrdiff_t n) {
    FWB_T m[FWB_LANES];
    for (int k = 0; k < FWB_LANES; k++) m[k] = v[0];
    ptrdiff_t j = 0;
    for (; j + FWB_LANES <= n; j += FWB_LANES)
        for (int k = 0; k < FWB_LANES; k++) m[k] = v[j + k] > m[k] ? v[j + k] : m[k];
    for (; j < n; j++) m[0] = v[j] > m[0] ? v[j] : m[0];
    for (int k = 1; k < FWB_LANES; k++) m[0] = m[k] > m[0] ? m[k] : m[0];
    return m[0];
}

/* ------------------------------------------------------------------ */
/* softmax and cross-entropy over a block of rows (rows, n >= 1)       */
/*                                                                    */
/* Short rows (10 classes, say) would leave exp to the scalar tail of  */
/* its loop, so each block first writes z - max(z) row by row, then    */
/* takes exp in one flat vectorised pass over the whole block, then    */
/* normalises row by row.  A block is a few KiB, so it stays in L1/L2. */
/* ------------------------------------------------------------------ */

/* out[i, :] = z[i, :] - max(z[i, :]) for a block of rows; returns nothing.
 * shift[i] receives z[i, col[i]] - max (when col is not NULL). */
static inline void FWB_FN(fwb_block_shift)(const FWB_T *z, FWB_T *out, ptrdiff_t rows, ptrdiff_t n,
                                           const ptrdiff_t *col, double *shift) {
    for (ptrdiff_t i = 0; i < rows; i++) {
        const FWB_T *zi = z + i * n;
        FWB_T *oi = out + i * n;
        FWB_T m = FWB_FN(fwb_row_max)(zi, n);
        if (col) shift[i] = (double)(zi[col[i]] - m);
        for (ptrdiff_t j = 0; j < n; j++) oi[j] = zi[j] - m;
    }
}

/* v[j] = exp(v[j]) over a flat stretch. */
static inline void FWB_FN(fwb_exp_inplace)(FWB_T *v, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j++) v[j] = FWB_FN(fwb_exp)(v[j]);
}

/* p = softmax(z) row-wise: exp(z - max z) / sum exp(z - max z).  p may equal z. */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_softmax_block)(const FWB_T *z, FWB_T *p, ptrdiff_t rows, ptrdiff_t n) {
    FWB_FN(fwb_block_shift)(z, p, rows, n, NULL, NULL);
    FWB_FN(fwb_exp_inplace)(p, rows * n);
    for (ptrdiff_t i = 0; i < rows; i++) {
        FWB_T *pi = p + i * n;
        FWB_T inv = (FWB_T)(1.0 / FWB_FN(fwb_row_sum)(pi, n));
        for (ptrdiff_t j = 0; j < n; j++) pi[j] *= inv;
    }
}

/* dz = y * (g - <g, y>) row-wise: the vector-Jacobian product of softmax.
 * dz may equal g or y. */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_softmax_grad_block)(const FWB_T *g, const FWB_T *y, FWB_T *dz,
                                                       ptrdiff_t rows, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < rows; i++) {
        const FWB_T *gi = g + i * n, *yi = y + i * n;
        FWB_T *di = dz + i * n;
        FWB_T s = (FWB_T)FWB_FN(fwb_row_dot)(gi, yi, n);
        for (ptrdiff_t j = 0; j < n; j++) di[j] = yi[j] * (gi[j] - s);
    }
}

/* Cross-entropy of each row of logits z against its class label[i]:
 *   loss[i] = log(sum_j exp(z_ij - m_i)) - (z_i,label - m_i),  m_i = max_j z_ij
 * (in double), and the gradient of scale * sum_i loss[i]:
 *   grad_ij = scale * (softmax(z_i)_j - [j == label[i]]).
 * grad may equal z. */
FWB_CLONES FWB_HEADER_FN static void FWB_FN(fwb_xent_block)(const FWB_T *z, FWB_T *grad, ptrdiff_t rows, ptrdiff_t n,
                                               const ptrdiff_t *label, FWB_T scale, double *loss) {
    FWB_FN(fwb_block_shift)(z, grad, rows, n, label, loss);
    FWB_FN(fwb_exp_inplace)(grad, rows * n);
    for (ptrdiff_t i = 0; i < rows; i++) {
        FWB_T *gi = grad + i * n;
        double s = FWB_FN(fwb_row_sum)(gi, n);
        FWB_T f = (FWB_T)(1.0 / s) * scale;
        for (ptrdiff_t j = 0; j < n; j++) gi[j] *= f;
        gi[label[i]] -= scale;
        loss[i] = log(s) - loss[i];
    }
}

#undef FWB_FN
#undef FWB_CAT
#undef FWB_CAT_
#undef FWB_LANES
