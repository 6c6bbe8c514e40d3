/* Magnitude selection and pruning passes, written once for a scalar type.
 *
 * Included twice by fwb_select.h with FWB_T (float/double), FWB_K (the
 * unsigned integer of the same width) and FWB_S (f32/f64).
 *
 * Order statistics of |w| by radix selection: for a non-negative IEEE
 * number, the order of the values is the order of their bit patterns, so
 * key(w) = bits(w) with the sign bit cleared is an integer that sorts like
 * |w| (NaN keys sort above +Inf, as NaN sorts last in NumPy).  The k-th
 * smallest key is found digit by digit, most significant first, 11 bits at a
 * time: each level is one pass that histograms the digit of every key whose
 * higher digits match the prefix found so far.  3 passes for float, 6 for
 * double, O(n) in all, no copy and no sort; each pass is split over threads
 * with private histograms whose integer counts add up exactly.
 */

#define FWB_CAT_(a, b) a##_##b
#define FWB_CAT(a, b) FWB_CAT_(a, b)
#define FWB_FN(name) FWB_CAT(name, FWB_S)

static inline FWB_K FWB_FN(fwb_key)(FWB_T x) {
    FWB_K k;
    memcpy(&k, &x, sizeof k);
    return k & (((FWB_K)1 << (8 * sizeof(FWB_K) - 1)) - 1);
}

static inline FWB_T FWB_FN(fwb_from_key)(FWB_K k) {
    FWB_T x;
    memcpy(&x, &k, sizeof x);
    return x;
}

/* hist[(key >> shift) & (FWB_RADIX - 1)] += 1 for every key with
 * (key & prefix_mask) == prefix; hist has FWB_RADIX counters, zeroed here.
 * Also counts keys above `above` into *n_above (NaNs, at the first level).
 * Four interleaved sub-histograms keep runs of equal digits (common: most
 * weights share a few exponents) from waiting on each other's increments. */
static void FWB_FN(fwb_key_histogram)(const FWB_T *w, ptrdiff_t n, FWB_K prefix, FWB_K prefix_mask,
                                      int shift, int64_t *hist, FWB_K above, int64_t *n_above) {
    uint32_t sub[4][FWB_RADIX];
    const FWB_K digit = FWB_RADIX - 1;
    int64_t big = 0;
    memset(hist, 0, FWB_RADIX * sizeof(int64_t));
    for (ptrdiff_t j0 = 0; j0 < n; j0 += (ptrdiff_t)1 << 30) {     /* uint32 counters never overflow */
        ptrdiff_t j1 = n - j0 > ((ptrdiff_t)1 << 30) ? j0 + ((ptrdiff_t)1 << 30) : n, j = j0;
        memset(sub, 0, sizeof sub);
        for (; j + 4 <= j1; j += 4)
            for (int k = 0; k < 4; k++) {
                FWB_K key = FWB_FN(fwb_key)(w[j + k]);
                big += key > above;
                if ((key & prefix_mask) == prefix) sub[k][(key >> shift) & digit]++;
            }
        for (; j < j1; j++) {
            FWB_K key = FWB_FN(fwb_key)(w[j]);
            big += key > above;
            if ((key & prefix_mask) == prefix) sub[0][(key >> shift) & digit]++;
        }
        for (int b = 0; b < FWB_RADIX; b++) hist[b] += (int64_t)sub[0][b] + sub[1][b] + sub[2][b] + sub[3][b];
    }
    *n_above = big;
}

/* smallest key strictly greater than `key` (all ones when there is none) */
FWB_CLONES static FWB_K FWB_FN(fwb_min_key_above)(const FWB_T *w, ptrdiff_t n, FWB_K key) {
    FWB_K best = ~(FWB_K)0;
    for (ptrdiff_t j = 0; j < n; j++) {
        FWB_K k = FWB_FN(fwb_key)(w[j]);
        FWB_K c = k > key ? k : ~(FWB_K)0;
        best = c < best ? c : best;
    }
    return best;
}

/* The slides' magnitude pruning of one stretch:
 *   mask = |w| >= threshold,  out = w * mask;  returns the number kept.
 * out may equal w.  (w * 0 keeps NumPy's -0.0 and NaN * 0 = NaN.)  Counts
 * are kept per block in an integer as wide as FWB_T so that the loop
 * vectorises. */
FWB_CLONES static int64_t FWB_FN(fwb_prune_threshold)(const FWB_T *w, FWB_T *out, unsigned char *mask,
                                                       ptrdiff_t n, FWB_T threshold) {
    int64_t kept = 0;
    for (ptrdiff_t j0 = 0; j0 < n; j0 += 65536) {
        ptrdiff_t j1 = n - j0 > 65536 ? j0 + 65536 : n;
        FWB_IK block = 0;
        for (ptrdiff_t j = j0; j < j1; j++) {
            FWB_T x = w[j];
            FWB_IK keep = FWB_ABS(x) >= threshold;
            out[j] = keep ? x : x * (FWB_T)0;
            mask[j] = (unsigned char)keep;
            block += keep;
        }
        kept += block;
    }
    return kept;
}

/* Exact-k mask of one stretch: keep |w| above the k-th smallest key `cut`,
 * drop those below it, and of the keys equal to it drop the first `ties`
 * (in index order) and keep the rest.  Returns how many ties it dropped. */
static int64_t FWB_FN(fwb_mask_exact_k)(const FWB_T *w, unsigned char *mask, ptrdiff_t n, FWB_K cut,
                                         int64_t ties) {
    int64_t dropped = 0;
    for (ptrdiff_t j = 0; j < n; j++) {
        FWB_K k = FWB_FN(fwb_key)(w[j]);
        unsigned char keep = k > cut;
        if (k == cut && dropped >= ties) keep = 1;
        dropped += (k == cut) && !keep;
        mask[j] = keep;
    }
    return dropped;
}

/* number of keys equal to `cut` in one stretch */
static int64_t FWB_FN(fwb_count_key)(const FWB_T *w, ptrdiff_t n, FWB_K cut) {
    int64_t c = 0;
    for (ptrdiff_t j = 0; j < n; j++) c += FWB_FN(fwb_key)(w[j]) == cut;
    return c;
}

/* w[j] = 0 where mask[j] is 0 (exactly +0, whatever w[j] was) */
FWB_CLONES static void FWB_FN(fwb_apply_mask)(FWB_T *w, const unsigned char *mask, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j++) w[j] = mask[j] ? w[j] : (FWB_T)0;
}

#undef FWB_FN
#undef FWB_CAT
#undef FWB_CAT_
