/* Branch-free, vectorisable elementary functions for fastwb's kernels.
 *
 * GCC vectorises a loop only when every call in it is inlined and free of
 * branches; glibc's expf/exp are neither (and libmvec is only used under
 * fast-math mode, which fastwb never uses).  These functions are written so that
 * a loop calling them compiles to SIMD code, and every operation they use is
 * an exactly rounded IEEE operation, so the scalar remainder of a loop and
 * its vector body give bitwise identical results (build with
 * -ffp-contract=off so no multiply-add is fused).
 *
 * exp(x):  x = n*ln2 + r,  n = round(x*log2(e)),  |r| <= ln2/2, and
 *          exp(x) = 2^n exp(r).  r is computed in two steps (Cody and Waite):
 *          ln2 = LN2_HI + LN2_LO, where n*LN2_HI is exact for every n that
 *          can occur.  exp(r): for float, a degree-6 polynomial fitted here
 *          (see fwb_exp_f32); for double, the degree-13 Taylor polynomial
 *          (truncation error below 4.1e-18).  2^n is applied as two factors
 *          2^n1 * 2^n2, each a normal number, so results that underflow to
 *          subnormals are rounded once.  tests/test_functional.py checks
 *          sigmoid, tanh and softmax against NumPy over the whole range.
 *          Arguments are clamped to [-104, 88.75] (float) or [-746, 709.8]
 *          (double): below, the result rounds to 0; above, the final product
 *          overflows to +inf as it should.  NaN passes the clamps and
 *          propagates.  No branch remains, so loops vectorise.
 */
#ifndef FWB_MATH_H
#define FWB_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* round-to-nearest trick: adding 1.5 * 2^(mantissa bits) leaves the integer
 * part of x in the low mantissa bits of the sum. */
#define FWB_ROUND_F32 12582912.0f            /* 1.5 * 2^23 */
#define FWB_ROUND_F64 6755399441055744.0     /* 1.5 * 2^52 */

static inline float fwb_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t fwb_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline double fwb_bits_to_f64(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }
static inline uint64_t fwb_f64_to_bits(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }

/* 2^k for an integral-valued double k in [-1022, 1023]. */
static inline double fwb_pow2_f64(double k) {
    uint64_t ki = fwb_f64_to_bits(k + FWB_ROUND_F64) - fwb_f64_to_bits(FWB_ROUND_F64);
    return fwb_bits_to_f64((ki + 1023u) << 52);
}

static inline float fwb_exp_f32(float x) {
    const float log2e = 1.44269502f, ln2_hi = 0x1.62e4p-1f, ln2_lo = 0x1.7f7d1cp-20f;
    float xc = x < -104.0f ? -104.0f : x;      /* exp(-104) rounds to 0 */
    xc = xc > 88.75f ? 88.75f : xc;            /* NaN passes both tests */
    float t = xc * log2e + FWB_ROUND_F32;      /* n = round(x log2 e) sits in t's low bits */
    float n = t - FWB_ROUND_F32;
    float r = (xc - n * ln2_hi) - n * ln2_lo;
    /* exp(r) = 1 + r + r^2 q(r), q fitted to (exp(r) - 1 - r) / r^2 on
     * |r| <= ln2/2 (least squares on Chebyshev nodes, weighted for relative
     * error); error of the float evaluation below 0.65 eps. */
    float q = 0x1.687c22p-10f;
    q = q * r + 0x1.123b8ep-7f;
    q = q * r + 0x1.555b58p-5f;
    q = q * r + 0x1.55548ep-3f;
    q = q * r + 0x1.fffff8p-2f;
    float p = (q * r + 1.0f) * r + 1.0f;
    /* 2^n as 2^k1 * 2^k2 with k1 = n >> 1: both factors are normal numbers */
    int32_t k = (int32_t)(fwb_f32_to_bits(t) - fwb_f32_to_bits(FWB_ROUND_F32));
    int32_t k1 = k >> 1;
    float s1 = fwb_bits_to_f32((uint32_t)(k1 + 127) << 23);
    float s2 = fwb_bits_to_f32((uint32_t)(k - k1 + 127) << 23);
    return p * s1 * s2;
}

static inline double fwb_exp_f64(double x) {
    const double log2e = 0x1.71547652b82fep+0, ln2_hi = 0x1.62e42fefa38p-1, ln2_lo = 0x1.ef35793c7673p-45;
    double xc = x < -746.0 ? -746.0 : x;       /* exp(-746) rounds to 0 */
    xc = xc > 709.8 ? 709.8 : xc;
    double n = (xc * log2e + FWB_ROUND_F64) - FWB_ROUND_F64;
    double r = (xc - n * ln2_hi) - n * ln2_lo;
    double p = 1.0 / 6227020800.0;             /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    double n1 = (n * 0.5 + FWB_ROUND_F64) - FWB_ROUND_F64;
    return p * fwb_pow2_f64(n1) * fwb_pow2_f64(n - n1);
}

/* sigmoid(x) = 1 / (1 + exp(-x)), evaluated as e / (1 + e) or 1 / (1 + e)
 * with e = exp(-|x|) <= 1, so nothing overflows for any x. */
static inline float fwb_sigmoid_f32(float x) {
    float e = fwb_exp_f32(-fabsf(x));
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

static inline double fwb_sigmoid_f64(double x) {
    double e = fwb_exp_f64(-fabs(x));
    return (x >= 0.0 ? 1.0 : e) / (1.0 + e);
}

/* tanh for float.
 *   |x| <  0.625:  x + x^3 q(x^2), q fitted to (tanh x - x) / x^3 (least
 *                  squares on Chebyshev nodes): within 0.8 ulp;
 *   |x| >= 0.625:  (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.29, so 1 - e
 *                  loses nothing to cancellation: within 1.5 ulp.
 * Both branches are computed and one is selected, so loops vectorise.
 * Large |x| gives e = 0 and exactly +-1; NaN propagates. */
static inline float fwb_tanh_f32(float x) {
    float a = fabsf(x);
    float s = x * x;
    float q = -0x1.76cc8cp-8f;
    q = q * s + 0x1.52618ep-6f;
    q = q * s - 0x1.b846bap-5f;
    q = q * s + 0x1.110786p-3f;
    q = q * s - 0x1.555536p-2f;
    float small = x + x * (s * q);
    float e = fwb_exp_f32(-2.0f * a);
    float large = copysignf((1.0f - e) / (1.0f + e), x);
    return a < 0.625f ? small : large;
}

/* tanh for double, built like fwb_tanh_f32:
 *   |x| <  0.55:  x + x^3 q(x^2), q of degree 9 fitted to (tanh x - x) / x^3
 *                 by least squares on Chebyshev nodes in 50-digit arithmetic
 *                 (mpmath): within 1 ulp in double evaluation;
 *   |x| >= 0.55:  (1 - e) / (1 + e), e = exp(-2|x|) <= 0.34: within 3 ulp. */
static inline double fwb_tanh_f64(double x) {
    double a = fabs(x);
    double s = x * x;
    double q = 0x1.ad53edc34986ap-15;
    q = q * s - 0x1.b98c9c35fea4ep-13;
    q = q * s + 0x1.2fb8121ff6359p-11;
    q = q * s - 0x1.7cf7acd7fc075p-10;
    q = q * s + 0x1.d6c68d41ec933p-9;
    q = q * s - 0x1.226de11e105fep-7;
    q = q * s + 0x1.664f45ec16553p-6;
    q = q * s - 0x1.ba1ba1ae70173p-5;
    q = q * s + 0x1.111111110421fp-3;
    q = q * s - 0x1.55555555554b9p-2;
    double small = x + x * (s * q);
    double e = fwb_exp_f64(-2.0 * a);
    double large = copysign((1.0 - e) / (1.0 + e), x);
    return a < 0.55 ? small : large;
}

#endif /* FWB_MATH_H */
