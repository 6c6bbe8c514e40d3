/* fastwb's int8 inference kernels: dynamic quantization of activations and
 * exact u8 x s8 matrix products with a fused float epilogue.
 *
 * One quantized Linear, y = act(x W + b), runs as
 *
 *   1. row statistics:  per row of x its finite minimum and maximum, and a
 *      flag for a row holding NaN or Inf (fwb_q8_row_stats, or the previous
 *      layer's tiles: step 5);
 *   2. parameters:      the batch's min/max over the finite rows gives the
 *      activation scale s_a and zero point z (fwb_q8_qparams, PyTorch's
 *      ChooseQuantizationParams, exactly);
 *   3. quantization:    a = clamp(nearbyint(fma(x, 1/s_a, z)), 0, qmax), one
 *      rounding of x/s_a + z as FBGEMM's AVX2 path does, into a uint8 matrix
 *      whose rows are padded with zeros to a multiple of 4 (a bad row is all z);
 *   4. the product:     acc[i,j] = sum_k a[i,k] w[k,j] in int32, exactly, over a
 *      packed copy of the int8 weights, and in the same register tile the
 *      epilogue  y = (float)(acc - z colsum[j]) * (s_a s_w[j]) + b[j]
 *      (a float product, then a float sum: no fused multiply-add);
 *   5. the tile's finish, while its block of y is in cache: the activation,
 *      NaN over every bad row, and the block's finite min/max and NaN/Inf
 *      flag per row, which the next layer combines into its row statistics.
 *
 * Packed weights (made once, at quantization): panels of FWB_Q8_NR = 16
 * output columns, K padded with zero weights to a multiple of 4, laid out
 * [panel][k/4][16 columns][4 k] in bytes: one k-group of a panel is 64 bytes,
 * two ymm registers or one zmm, and the 4 bytes of a column are the four
 * products one vpdpbusd (or vpmaddubsw + vpmaddwd) lane adds.
 *
 * The kernel paths (FWB_Q8_SCALAR ... FWB_Q8_AVX512VNNI) differ only in the
 * instruction that adds four u8 x s8 products into an int32 lane:
 *   scalar      plain C over the packed layout;
 *   avx2        qmax <= 127 (7-bit activations): vpmaddubsw + vpmaddwd(1):
 *               a pair sum is at most 2 * 127 * 128 = 32512 < 2^15, so the
 *               int16 saturation of vpmaddubsw can never happen;
 *               qmax = 255: the bytes are split into even and odd int16 lanes
 *               and multiplied with vpmaddwd (i16 x i16 -> i32, exact);
 *   avxvnni     vpdpbusd on ymm (the non-saturating form);
 *   avx512vnni  vpdpbusd on zmm.
 * The int32 sums are exact whenever |sum_k (a - z) w| < 2^31, which the Python
 * layer guarantees by refusing K > 65536 (255 * 128 * 65536 < 2^31; the
 * intermediate acc and z colsum may wrap, their difference is exact).  The
 * float epilogue is the same C expression on every path, and the order of the
 * k sum does not matter for integers, so every path and every thread count
 * gives the same bits.  Nothing here validates or allocates.
 */
#ifndef FWB_Q8_H
#define FWB_Q8_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fwb_omp.h"
#include "fwb_rows.h"

#define FWB_Q8_NR 16            /* output columns per packed panel */
#define FWB_Q8_ROWS 32          /* rows per tile of the product (a multiple of every MR) */
#define FWB_Q8_L2_WEIGHTS (256 * 1024)  /* packed weights this small are walked rows first */
#define FWB_Q8_SMALL_SCALE 6.1e-5f  /* PyTorch's SMALL_SCALE_THRESHOLD (fp16's smallest normal) */

enum { FWB_Q8_SCALAR = 0, FWB_Q8_AVX2 = 1, FWB_Q8_AVXVNNI = 2, FWB_Q8_AVX512VNNI = 3, FWB_Q8_NPATHS = 4 };

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define FWB_Q8_X86 1
#include <immintrin.h>
#else
#define FWB_Q8_X86 0
#endif

static inline ptrdiff_t fwb_q8_k4(ptrdiff_t K) { return (K + 3) / 4; }
static inline ptrdiff_t fwb_q8_panels(ptrdiff_t N) { return (N + FWB_Q8_NR - 1) / FWB_Q8_NR; }

/* Whether this CPU (and this build) can run a path. */
static int fwb_q8_supported(int path) {
    if (path == FWB_Q8_SCALAR)
        return 1;
#if FWB_Q8_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (path == FWB_Q8_AVX2)
        return avx2;
    if (path == FWB_Q8_AVXVNNI)
        return avx2 && __builtin_cpu_supports("avxvnni");
    if (path == FWB_Q8_AVX512VNNI)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vnni");
#endif
    return 0;
}

/* ------------------------------------------------------------------ */
/* weights: packing and column sums (once, at quantization)           */
/* ------------------------------------------------------------------ */

/* Bp <- the packed layout of W (K, N) row-major int8; Bp holds
 * fwb_q8_panels(N) * fwb_q8_k4(K) * 64 bytes. */
static void fwb_q8_pack(const int8_t *W, ptrdiff_t K, ptrdiff_t N, int8_t *Bp) {
    ptrdiff_t K4 = fwb_q8_k4(K), P = fwb_q8_panels(N);
    memset(Bp, 0, (size_t)(P * K4 * 64));
    for (ptrdiff_t k = 0; k < K; k++)
        for (ptrdiff_t j = 0; j < N; j++) {
            ptrdiff_t p = j / FWB_Q8_NR, c = j % FWB_Q8_NR;
            Bp[((p * K4 + k / 4) * FWB_Q8_NR + c) * 4 + k % 4] = W[k * N + j];
        }
}

/* colsum[j] = sum_k W[k, j] for j < N, 0 up to the panels' width. */
static void fwb_q8_colsums(const int8_t *W, ptrdiff_t K, ptrdiff_t N, int32_t *colsum) {
    ptrdiff_t P = fwb_q8_panels(N);
    memset(colsum, 0, (size_t)(P * FWB_Q8_NR) * sizeof(int32_t));
    for (ptrdiff_t k = 0; k < K; k++)
        for (ptrdiff_t j = 0; j < N; j++)
            colsum[j] += W[k * N + j];
}

/* ------------------------------------------------------------------ */
/* activation parameters                                              */
/* ------------------------------------------------------------------ */

/* PyTorch's quant_utils::ChooseQuantizationParams(min, max, 0, 255,
 * preserve_sparsity=false, force_scale_power_of_two=false, reduce_range)
 * (aten/src/ATen/native/quantized/cpu/QuantUtils.h), with qmax = 255, or 127
 * under reduce_range: the range is widened to hold 0, the scale computed in
 * double, 0.1 when it is 0 or its float reciprocal overflows, floored at
 * 6.1e-5 (and min/max stretched to match), the zero point taken from the end
 * with the smaller error (the error terms as PyTorch writes them) and rounded
 * half to even.  The scale used is the float rounding of the double. */
static inline void fwb_q8_qparams(float mn, float mx, int qmax, float *scale_out, int *zp_out) {
    const int qmin = 0;
    mn = mn < 0.0f ? mn : 0.0f;
    mx = mx > 0.0f ? mx : 0.0f;
    double scale = ((double)mx - (double)mn) / (double)(qmax - qmin);
    if ((float)scale == 0.0f || isinf(1.0f / (float)scale))
        scale = 0.1;
    if (scale < (double)FWB_Q8_SMALL_SCALE) {
        float org = (float)scale;
        scale = (double)FWB_Q8_SMALL_SCALE;
        if (mn == 0.0f)
            mx = FWB_Q8_SMALL_SCALE * (float)(qmax - qmin);
        else if (mx == 0.0f)
            mn = -FWB_Q8_SMALL_SCALE * (float)(qmax - qmin);
        else {
            float amp = FWB_Q8_SMALL_SCALE / org;
            mn *= amp;
            mx *= amp;
        }
    }
    double zp_min = (double)qmin - (double)mn / scale;
    double zp_max = (double)qmax - (double)mx / scale;
    double err_min = fabs((double)qmin) - fabs((double)mn / scale);
    double err_max = fabs((double)qmax) - fabs((double)mx / scale);
    double z0 = err_min < err_max ? zp_min : zp_max;
    *zp_out = z0 < qmin ? qmin : z0 > qmax ? qmax : (int)nearbyint(z0);
    *scale_out = (float)scale;
}

/* ------------------------------------------------------------------ */
/* row passes                                                         */
/* ------------------------------------------------------------------ */

/* The finite minimum and maximum of x[0..n) and whether it holds a NaN or an
 * Inf (then mn/mx mean nothing).  An empty row gives +inf, -inf, good. */
FWB_CLONES FWB_HEADER_FN static void fwb_q8_stats(const float *x, ptrdiff_t n, float *mn_out, float *mx_out,
                                                  uint8_t *bad_out) {
    float mn = INFINITY, mx = -INFINITY, nonfinite = 0.0f;
    for (ptrdiff_t k = 0; k < n; k++) {
        float v = x[k];
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        nonfinite += v - v;             /* 0 for a finite v, NaN for NaN and +-Inf */
    }
    *mn_out = mn;
    *mx_out = mx;
    *bad_out = nonfinite != 0.0f;
}

/* a[k] = clamp(nearbyint(fma(x[k], inv, zp)), 0, qmax) for k < K; zeros up to
 * K4 * 4.  The scalar path calls C's fmaf (correctly rounded, like the
 * instruction). */
static void fwb_q8_quantize_scalar(const float *x, ptrdiff_t K, float inv, float zpf, float qmaxf, uint8_t *a) {
    ptrdiff_t k;
    for (k = 0; k < K; k++) {
        float t = fmaf(x[k], inv, zpf);
        t = t > 0.0f ? t : 0.0f;
        t = t < qmaxf ? t : qmaxf;
        a[k] = (uint8_t)(int)nearbyintf(t);
    }
    for (; k % 4; k++)
        a[k] = 0;
}

#if FWB_Q8_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
static void fwb_q8_quantize_avx2(const float *x, ptrdiff_t K, float inv, float zpf, float qmaxf, uint8_t *a) {
    const __m256 vinv = _mm256_set1_ps(inv), vzp = _mm256_set1_ps(zpf), vmax = _mm256_set1_ps(qmaxf);
    const __m256 vzero = _mm256_setzero_ps();
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    ptrdiff_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i q[4];
        for (int u = 0; u < 4; u++) {
            __m256 t = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * u), vinv, vzp);
            t = _mm256_min_ps(_mm256_max_ps(t, vzero), vmax);
            q[u] = _mm256_cvtps_epi32(t);   /* round half to even (the default rounding mode) */
        }
        /* 32 int32 in 0..255 -> 32 bytes: the packs interleave 128-bit lanes, the permute undoes it */
        __m256i w01 = _mm256_packus_epi32(q[0], q[1]), w23 = _mm256_packus_epi32(q[2], q[3]);
        __m256i b = _mm256_packus_epi16(w01, w23);
        _mm256_storeu_si256((__m256i *)(a + k), _mm256_permutevar8x32_epi32(b, order));
    }
    for (; k < K; k++) {
        float t = fmaf(x[k], inv, zpf);     /* one vfmadd instruction under this target */
        t = t > 0.0f ? t : 0.0f;
        t = t < qmaxf ? t : qmaxf;
        a[k] = (uint8_t)_mm_cvtss_si32(_mm_set_ss(t));
    }
    for (; k % 4; k++)
        a[k] = 0;
}
#pragma GCC pop_options
#else
#define fwb_q8_quantize_avx2 fwb_q8_quantize_scalar
#endif

/* ------------------------------------------------------------------ */
/* the product with its epilogue: one MR x 16 register tile           */
/* ------------------------------------------------------------------ */

/* Everything a tile needs to finish its outputs. */
typedef struct {
    const int32_t *corr;    /* z * colsum[j], per column (padded to the panels) */
    const float *mult;      /* s_a * s_w[j] */
    const float *bias;      /* b[j] (zeros without a bias) */
} fwb_q8_epi;

/* The epilogue of one output element, the same expression on every path. */
static inline float fwb_q8_finish(int32_t acc, int32_t corr, float mult, float bias) {
    return (float)(int32_t)((uint32_t)acc - (uint32_t)corr) * mult + bias;
}

static void fwb_q8_tile_scalar(int mr, const uint8_t *a, ptrdiff_t lda, const int8_t *bp, ptrdiff_t K4,
                               const fwb_q8_epi *e, ptrdiff_t j0, int ncols, float *y, ptrdiff_t ldy) {
    for (int r = 0; r < mr; r++) {
        int32_t acc[FWB_Q8_NR] = {0};
        const uint8_t *ar = a + r * lda;
        for (ptrdiff_t g = 0; g < K4; g++)
            for (int c = 0; c < FWB_Q8_NR; c++) {
                const int8_t *b = bp + (g * FWB_Q8_NR + c) * 4;
                /* uint32 arithmetic: wraps where int32 would overflow (see the header) */
                acc[c] = (int32_t)((uint32_t)acc[c] + (uint32_t)((int32_t)ar[4 * g] * b[0] + (int32_t)ar[4 * g + 1] * b[1]
                                                                 + (int32_t)ar[4 * g + 2] * b[2] + (int32_t)ar[4 * g + 3] * b[3]));
            }
        for (int c = 0; c < ncols; c++)
            y[r * ldy + c] = fwb_q8_finish(acc[c], e->corr[j0 + c], e->mult[j0 + c], e->bias[j0 + c]);
    }
}

#if FWB_Q8_X86
/* The ymm tiles, written once (fwb_q8_ymm_impl.h) for three ways of adding
 * four u8 x s8 products into an int32 lane. */
#pragma GCC push_options
#pragma GCC target("avx2,fma")
/* a quad of activation bytes broadcast to every lane */
static inline __attribute__((always_inline)) __m256i fwb_q8_bcast(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
#define FWB_Q8_NAME avx2u7
#define FWB_Q8_AGROUP 4
#define FWB_Q8_LOAD_A(p, lo, hi) (lo = fwb_q8_bcast(p))
#define FWB_Q8_PREP_B(b, lo, hi) (lo = (b))
#define FWB_Q8_DOT(acc, alo, ahi, blo, bhi) \
    (acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(alo, blo), ones16)))
#include "fwb_q8_ymm_impl.h"

/* 8-bit activations come split (fwb_q8_quantize_avx2_split): per k-group the
 * int16 pair (a0, a2), then (a1, a3); the weight bytes are split the same way
 * by sign-extending shifts, and vpmaddwd adds i16 x i16 products exactly. */
#define FWB_Q8_NAME avx2u8
#define FWB_Q8_AGROUP 8
#define FWB_Q8_LOAD_A(p, lo, hi) (lo = fwb_q8_bcast(p), hi = fwb_q8_bcast((p) + 4))
#define FWB_Q8_PREP_B(b, lo, hi) (lo = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8), hi = _mm256_srai_epi16(b, 8))
#define FWB_Q8_DOT(acc, alo, ahi, blo, bhi) \
    (acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(alo, blo), _mm256_madd_epi16(ahi, bhi))))
#include "fwb_q8_ymm_impl.h"

/* a[0 .. 8 k4) <- the split form of the quantized row a8[0 .. 4 k4), which may
 * be the second half of a itself (every group is read before it is overwritten) */
static void fwb_q8_split(const uint8_t *a8, ptrdiff_t K4, uint8_t *a) {
    const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
                                           0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
    ptrdiff_t g = 0;
    for (; g + 4 <= K4; g += 4) {
        __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(a8 + 4 * g)));
        _mm256_storeu_si256((__m256i *)(a + 8 * g), _mm256_shuffle_epi8(w, order));
    }
    for (; g < K4; g++) {
        /* (read first: the last group's output overlaps its input) */
        uint8_t q0 = a8[4 * g], q1 = a8[4 * g + 1], q2 = a8[4 * g + 2], q3 = a8[4 * g + 3];
        uint8_t *o = a + 8 * g;
        o[0] = q0, o[1] = 0, o[2] = q2, o[3] = 0, o[4] = q1, o[5] = 0, o[6] = q3, o[7] = 0;
    }
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,avxvnni")
#define FWB_Q8_NAME avxvnni
#define FWB_Q8_AGROUP 4
#define FWB_Q8_LOAD_A(p, lo, hi) (lo = fwb_q8_bcast(p))
#define FWB_Q8_PREP_B(b, lo, hi) (lo = (b))
#define FWB_Q8_DOT(acc, alo, ahi, blo, bhi) (acc = _mm256_dpbusd_avx_epi32(acc, alo, blo))
#include "fwb_q8_ymm_impl.h"
#pragma GCC pop_options

/* zmm: one register holds a whole k-group of a panel. */
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vnni")
#define FWB_Q8_ZMR 8
static inline __attribute__((always_inline)) void fwb_q8_ztile(const int mr, const uint8_t *a, ptrdiff_t lda,
                                                               const int8_t *bp, ptrdiff_t K4, const fwb_q8_epi *e,
                                                               ptrdiff_t j0, int ncols, float *y, ptrdiff_t ldy) {
    __m512i acc[FWB_Q8_ZMR];
    for (int r = 0; r < mr; r++)
        acc[r] = _mm512_setzero_si512();
    for (ptrdiff_t g = 0; g < K4; g++) {
        __m512i b = _mm512_loadu_si512((const void *)(bp + g * 64));
        for (int r = 0; r < mr; r++) {
            int32_t quad;
            memcpy(&quad, a + r * lda + 4 * g, 4);
            acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(quad), b);
        }
    }
    const __m512i corr = _mm512_loadu_si512((const void *)(e->corr + j0));
    const __m512 mult = _mm512_loadu_ps(e->mult + j0), bias = _mm512_loadu_ps(e->bias + j0);
    const __mmask16 keep = (__mmask16)((1u << ncols) - 1u);
    for (int r = 0; r < mr; r++) {
        __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r], corr));
        _mm512_mask_storeu_ps(y + r * ldy, keep, _mm512_add_ps(_mm512_mul_ps(v, mult), bias));
    }
}

static void fwb_q8_tile_avx512vnni(int mr, const uint8_t *a, ptrdiff_t lda, const int8_t *bp, ptrdiff_t K4,
                                   const fwb_q8_epi *e, ptrdiff_t j0, int ncols, float *y, ptrdiff_t ldy) {
    for (; mr >= FWB_Q8_ZMR; mr -= FWB_Q8_ZMR, a += FWB_Q8_ZMR * lda, y += FWB_Q8_ZMR * ldy)
        fwb_q8_ztile(FWB_Q8_ZMR, a, lda, bp, K4, e, j0, ncols, y, ldy);
    switch (mr) {
    case 7: fwb_q8_ztile(7, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 6: fwb_q8_ztile(6, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 5: fwb_q8_ztile(5, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 4: fwb_q8_ztile(4, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 3: fwb_q8_ztile(3, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 2: fwb_q8_ztile(2, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    case 1: fwb_q8_ztile(1, a, lda, bp, K4, e, j0, ncols, y, ldy); break;
    default: break;
    }
}
#undef FWB_Q8_ZMR
#pragma GCC pop_options
#endif

typedef void (*fwb_q8_tile_fn)(int, const uint8_t *, ptrdiff_t, const int8_t *, ptrdiff_t, const fwb_q8_epi *,
                               ptrdiff_t, int, float *, ptrdiff_t);

/* The tile function of a path for activations of at most qmax. */
static fwb_q8_tile_fn fwb_q8_tile_of(int path, int qmax) {
#if FWB_Q8_X86
    if (path == FWB_Q8_AVX2)
        return qmax <= 127 ? fwb_q8_tile_avx2u7 : fwb_q8_tile_avx2u8;
    if (path == FWB_Q8_AVXVNNI)
        return fwb_q8_tile_avxvnni;
    if (path == FWB_Q8_AVX512VNNI)
        return fwb_q8_tile_avx512vnni;
#endif
    (void)path;
    (void)qmax;
    return fwb_q8_tile_scalar;
}

/* ------------------------------------------------------------------ */
/* one quantized Linear over a batch                                  */
/* ------------------------------------------------------------------ */

/* A quantized Linear: packed weights and per-column constants. */
typedef struct {
    ptrdiff_t K, N;
    const int8_t *Bp;       /* packed, fwb_q8_panels(N) * fwb_q8_k4(K) * 64 bytes */
    const int32_t *colsum;  /* padded to the panels */
    const float *wscale;    /* s_w[j], padded (per tensor: all equal) */
    const float *bias;      /* b[j], padded, zeros without a bias */
    int act;                /* FWB_ACT_* */
    float alpha;            /* LeakyReLU's slope */
} fwb_q8_layer;

/* The scratch of a forward pass (M rows). */
typedef struct {
    uint8_t *A;             /* quantized activations: a_bytes bytes */
    size_t a_bytes;         /* at least M * k4(K) * 8 for every layer's K */
    int32_t *corr;          /* panels(N) * 16 */
    float *mult;            /* panels(N) * 16 */
    float *pmn, *pmx;       /* per row and panel: the finite min/max of the layer's output */
    uint8_t *pbad;          /* per row and panel: whether that block holds NaN or Inf */
    ptrdiff_t pstride;      /* panels per row in pmn/pmx/pbad (the widest layer's) */
} fwb_q8_scratch;

/* A layer's quantized activations, per thread when each thread makes its own. */
#define FWB_Q8_PRIVATE_A (256 * 1024)   /* bytes of A up to which every thread quantizes all rows itself */

/* The finite minimum and maximum of x's rows and their NaN/Inf flags, serial
 * for small inputs (no OpenMP region), else split over the threads. */
static void fwb_q8_row_stats(const float *x, ptrdiff_t M, ptrdiff_t K, float *mn, float *mx, uint8_t *bad,
                             int n_threads) {
    ptrdiff_t i;
    if (n_threads > 1 && M * K >= (1 << 20)) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, FWB_Q8_ROWS)
        for (i = 0; i < M; i++)
            fwb_q8_stats(x + i * K, K, mn + i, mx + i, bad + i);
    } else {
        for (i = 0; i < M; i++)
            fwb_q8_stats(x + i * K, K, mn + i, mx + i, bad + i);
    }
}

/* The batch's range over its good rows (0, 0 when none is good). */
static void fwb_q8_batch_range(const float *mn, const float *mx, const uint8_t *bad, ptrdiff_t M, float *lo,
                               float *hi) {
    float l = INFINITY, h = -INFINITY;
    for (ptrdiff_t i = 0; i < M; i++)
        if (!bad[i]) {
            l = mn[i] < l ? mn[i] : l;
            h = mx[i] > h ? mx[i] : h;
        }
    if (l > h)                  /* no good row with an element */
        l = h = 0.0f;
    *lo = l;
    *hi = h;
}

/* One layer's batch: what every thread of fwb_q8_linear reads. */
typedef struct {
    const fwb_q8_layer *L;
    const fwb_q8_scratch *s;
    const float *x;
    float *y;
    const uint8_t *bad;
    ptrdiff_t M, lda, RB, P, T, K4;
    float inv, zpf, qmaxf;
    int zp, simd, split, want_stats, rows_first, private_a;
    fwb_q8_epi e;
    fwb_q8_tile_fn tile;
} fwb_q8_batch;

/* Rows [lo, hi) of x quantized into A (the split form on the 8-bit AVX2 path). */
static void fwb_q8_quantize_range(const fwb_q8_batch *b, uint8_t *A, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t K = b->L->K;
    for (ptrdiff_t i = lo; i < hi; i++) {
        uint8_t *a = A + i * b->lda;
        /* the split form is written from the plain one, in the second half of the row's slot */
        uint8_t *a8 = b->split ? a + b->lda / 2 : a;
        if (b->bad[i])
            memset(a8, b->zp, (size_t)(4 * b->K4));
#if FWB_Q8_X86
        else if (b->simd)
            fwb_q8_quantize_avx2(b->x + i * K, K, b->inv, b->zpf, b->qmaxf, a8);
#endif
        else
            fwb_q8_quantize_scalar(b->x + i * K, K, b->inv, b->zpf, b->qmaxf, a8);
#if FWB_Q8_X86
        if (b->split)
            fwb_q8_split(a8, b->K4, a);
#endif
    }
}

/* Tile t of the product over A, finished where it lies, still in cache: the
 * activation, NaN over the bad rows, and the block's statistics for the next
 * layer (min/max are exact and order-free: the same bits for any split). */
static void fwb_q8_tile_at(const fwb_q8_batch *b, const uint8_t *A, ptrdiff_t t) {
    const fwb_q8_layer *L = b->L;
    const fwb_q8_scratch *s = b->s;
    ptrdiff_t N = L->N;
    ptrdiff_t p = b->rows_first ? t % b->P : t / b->RB;
    ptrdiff_t r0 = (b->rows_first ? t / b->P : t % b->RB) * FWB_Q8_ROWS;
    ptrdiff_t rows = b->M - r0 < FWB_Q8_ROWS ? b->M - r0 : FWB_Q8_ROWS;
    ptrdiff_t j0 = p * FWB_Q8_NR;
    int ncols = (int)(N - j0 < FWB_Q8_NR ? N - j0 : FWB_Q8_NR);
    b->tile((int)rows, A + r0 * b->lda, b->lda, L->Bp + p * b->K4 * 64, b->K4, &b->e, j0, ncols,
            b->y + r0 * N + j0, N);
    for (ptrdiff_t i = r0; i < r0 + rows; i++) {
        float *yr = b->y + i * N + j0;
        ptrdiff_t at = i * s->pstride + p;
        if (b->bad[i]) {
            for (int j = 0; j < ncols; j++)
                yr[j] = NAN;
            continue;
        }
        if (L->act != FWB_ACT_IDENTITY)
            fwb_bias_act_f32(yr, NULL, yr, ncols, L->act, L->alpha);
        if (b->want_stats)
            fwb_q8_stats(yr, ncols, s->pmn + at, s->pmx + at, s->pbad + at);
    }
}

/* The layer's work, run by every thread of the team (or by one thread outside
 * any parallel region), with no barrier unless the activations are too many
 * to quantize per thread:
 *   rows first (the weights fit in L2, a row block per thread at least): the
 *       unit of work is a row block, quantized, multiplied by every panel and
 *       finished by whoever takes it;
 *   panels first, few activations: every thread quantizes all rows into its
 *       own A (the same bytes), then takes tiles;
 *   panels first, many activations: the threads share the quantization, wait
 *       for each other once, then take tiles.
 * Units are handed out as the threads ask (dynamic schedules): a thread that
 * starts late (woken late, or preempted on a busy machine) leaves its units to
 * the threads already running.  Which thread computes a unit never changes its
 * bits. */
static void fwb_q8_phases(const fwb_q8_batch *b, int tid) {
    ptrdiff_t u;
    if (b->rows_first) {
#pragma omp for schedule(dynamic, 1) nowait
        for (u = 0; u < b->RB; u++) {
            ptrdiff_t r0 = u * FWB_Q8_ROWS, r1 = r0 + FWB_Q8_ROWS < b->M ? r0 + FWB_Q8_ROWS : b->M;
            fwb_q8_quantize_range(b, b->s->A, r0, r1);
            for (ptrdiff_t t = u * b->P; t < (u + 1) * b->P; t++)
                fwb_q8_tile_at(b, b->s->A, t);
        }
        return;
    }
    const uint8_t *A = b->s->A;
    if (b->private_a) {
        uint8_t *mine = b->s->A + (size_t)tid * (size_t)(b->M * b->lda);
        fwb_q8_quantize_range(b, mine, 0, b->M);
        A = mine;
    } else {
#pragma omp for schedule(dynamic, 4)
        for (u = 0; u < b->M; u++)
            fwb_q8_quantize_range(b, b->s->A, u, u + 1);
    }
#pragma omp for schedule(dynamic, 1) nowait
    for (u = 0; u < b->T; u++)
        fwb_q8_tile_at(b, A, u);
}

/* y (M, N) = the layer applied to x (M, K), whose row statistics are mn/mx/bad;
 * with want_stats they become those of y (a bad row of x gives a NaN row of y,
 * and a row of y holding an Inf is bad too).  The product's tiles are
 * FWB_Q8_ROWS rows x one panel; each output element is computed by one tile in
 * one fixed order, so the result depends neither on n_threads nor on which
 * thread takes which unit of work.  One thread enters no OpenMP region; more
 * enter one, whose end is the layer's only wait but in the shared-quantization
 * case (fwb_q8_phases). */
static void fwb_q8_linear(const fwb_q8_layer *L, const float *x, ptrdiff_t M, float *y, float *mn, float *mx,
                          uint8_t *bad, int qmax, int path, const fwb_q8_scratch *s, int want_stats,
                          int n_threads) {
    ptrdiff_t P = fwb_q8_panels(L->N);
    float lo, hi, scale;
    int zp;
    fwb_q8_batch_range(mn, mx, bad, M, &lo, &hi);
    fwb_q8_qparams(lo, hi, qmax, &scale, &zp);
    for (ptrdiff_t j = 0; j < P * FWB_Q8_NR; j++) {
        s->corr[j] = (int32_t)((uint32_t)zp * (uint32_t)L->colsum[j]);
        s->mult[j] = scale * L->wscale[j];
    }
    fwb_q8_batch b;
    b.L = L;
    b.s = s;
    b.x = x;
    b.y = y;
    b.bad = bad;
    b.M = M;
    b.K4 = fwb_q8_k4(L->K);
    b.split = path == FWB_Q8_AVX2 && qmax > 127;
    b.lda = b.K4 * (b.split ? 8 : 4);
    b.RB = (M + FWB_Q8_ROWS - 1) / FWB_Q8_ROWS;
    b.P = P;
    b.T = P * b.RB;
    /* weights that fit in L2 stay there while row blocks go by (rows first);
     * larger ones (or too few row blocks for the threads) are read once, a panel
     * at a time, and the rows go by each */
    b.rows_first = P * b.K4 * 64 <= FWB_Q8_L2_WEIGHTS && b.RB >= n_threads;
    b.private_a = n_threads > 1 && (size_t)(M * b.lda) <= FWB_Q8_PRIVATE_A
                  && (size_t)n_threads * (size_t)(M * b.lda) <= s->a_bytes;
    b.inv = 1.0f / scale;
    b.zpf = (float)zp;
    b.qmaxf = (float)qmax;
    b.zp = zp;
    b.simd = path != FWB_Q8_SCALAR;
    b.want_stats = want_stats;
    b.e.corr = s->corr;
    b.e.mult = s->mult;
    b.e.bias = L->bias;
    b.tile = fwb_q8_tile_of(path, qmax);
    if (n_threads > 1) {
#pragma omp parallel num_threads(n_threads)
        fwb_q8_phases(&b, omp_get_thread_num());
    } else {
        fwb_q8_phases(&b, 0);
    }
    if (!want_stats)
        return;
    /* the rows' statistics from their blocks' */
    for (ptrdiff_t i = 0; i < M; i++) {
        const float *pn = s->pmn + i * s->pstride, *px = s->pmx + i * s->pstride;
        const uint8_t *pb = s->pbad + i * s->pstride;
        float l = INFINITY, h = -INFINITY;
        uint8_t any = bad[i];
        for (ptrdiff_t p = 0; p < P && !any; p++) {
            l = pn[p] < l ? pn[p] : l;
            h = px[p] > h ? px[p] : h;
            any |= pb[p];
        }
        mn[i] = l;
        mx[i] = h;
        bad[i] = any;
    }
}

#endif /* FWB_Q8_H */
