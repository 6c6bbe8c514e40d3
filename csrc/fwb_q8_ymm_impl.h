/* One ymm tile path of fwb_q8.h, written once for the three ways of adding
 * four u8 x s8 products into each int32 lane.  Included by fwb_q8.h under a
 * `#pragma GCC target`, with
 *   FWB_Q8_NAME                the path's name (fwb_q8_tile_<NAME> is defined)
 *   FWB_Q8_PREP_B(b, lo, hi)   a k-group's 32 weight bytes -> the operands (lo, hi)
 *   FWB_Q8_AGROUP              bytes of one row's k-group in the activations (4, or 8 split)
 *   FWB_Q8_LOAD_A(p, lo, hi)   a row's k-group at p -> the broadcast operands
 *   FWB_Q8_DOT(acc, alo, ahi, blo, bhi)   acc += the four products per lane, exactly
 * which it undefines.  A tile is mr <= 4 rows by the 16 columns of a panel:
 * 8 int32 accumulators, the two weight vectors of the k-group shared by the
 * rows, one activation broadcast shared by the two halves. */

#define FWB_Q8_CAT_(a, b) a##_##b
#define FWB_Q8_CAT(a, b) FWB_Q8_CAT_(a, b)
#define FWB_Q8_FN(name) FWB_Q8_CAT(name, FWB_Q8_NAME)
#define FWB_Q8_MR 4

static inline __attribute__((always_inline)) void FWB_Q8_FN(fwb_q8_ytile)(
        const int mr, const uint8_t *a, ptrdiff_t lda, const int8_t *bp, ptrdiff_t K4, const fwb_q8_epi *e,
        ptrdiff_t j0, int ncols, float *y, ptrdiff_t ldy) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i acc[FWB_Q8_MR][2];
    (void)ones16;
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (ptrdiff_t g = 0; g < K4; g++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(bp + g * 64));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + g * 64 + 32));
        __m256i b0l, b0h = b0, b1l, b1h = b1;
        FWB_Q8_PREP_B(b0, b0l, b0h);
        FWB_Q8_PREP_B(b1, b1l, b1h);
        (void)b0h;
        (void)b1h;
        for (int r = 0; r < mr; r++) {
            __m256i al, ah;
            FWB_Q8_LOAD_A(a + r * lda + FWB_Q8_AGROUP * g, al, ah);
            (void)ah;
            FWB_Q8_DOT(acc[r][0], al, ah, b0l, b0h);
            FWB_Q8_DOT(acc[r][1], al, ah, b1l, b1h);
        }
    }
    for (int h = 0; h < 2; h++) {
        const __m256i corr = _mm256_loadu_si256((const __m256i *)(e->corr + j0 + 8 * h));
        const __m256 mult = _mm256_loadu_ps(e->mult + j0 + 8 * h), bias = _mm256_loadu_ps(e->bias + j0 + 8 * h);
        int n = ncols - 8 * h;
        for (int r = 0; r < mr; r++) {
            __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][h], corr));
            v = _mm256_add_ps(_mm256_mul_ps(v, mult), bias);
            if (n >= 8) {
                _mm256_storeu_ps(y + r * ldy + 8 * h, v);
            } else if (n > 0) {
                float tmp[8];
                _mm256_storeu_ps(tmp, v);
                memcpy(y + r * ldy + 8 * h, tmp, (size_t)n * sizeof(float));
            }
        }
    }
}

static void FWB_Q8_FN(fwb_q8_tile)(int mr, const uint8_t *a, ptrdiff_t lda, const int8_t *bp, ptrdiff_t K4,
                                   const fwb_q8_epi *e, ptrdiff_t j0, int ncols, float *y, ptrdiff_t ldy) {
    for (; mr >= FWB_Q8_MR; mr -= FWB_Q8_MR, a += FWB_Q8_MR * lda, y += FWB_Q8_MR * ldy)
        FWB_Q8_FN(fwb_q8_ytile)(FWB_Q8_MR, a, lda, bp, K4, e, j0, ncols, y, ldy);
    switch (mr) {
    case 3: FWB_Q8_FN(fwb_q8_ytile)(3, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 2: FWB_Q8_FN(fwb_q8_ytile)(2, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 1: FWB_Q8_FN(fwb_q8_ytile)(1, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    default: break;
    }
}

#undef FWB_Q8_MR
#undef FWB_Q8_FN
#undef FWB_Q8_CAT
#undef FWB_Q8_CAT_
#undef FWB_Q8_NAME
#undef FWB_Q8_PREP_B
#undef FWB_Q8_LOAD_A
#undef FWB_Q8_AGROUP
#undef FWB_Q8_DOT
