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

/* tanh for float: one branch-free formula for every x (no second branch to
 * compute and throw away: about 28 vector operations, one a division; a
 * polynomial for small |x| selected against an exp-based formula took 55),
 * odd by construction (copysign), NaN propagates.
 *   a = min(|x|, 9.1):  tanh(a) rounds to 1 for a > 9.011, so nothing changes;
 *   e^(-2a) = 2^-m e^(2h),  m = round(2a log2 e) in [0, 26],
 *           h = m ln2/2 - a in [-ln2/4, ln2/4]  (Cody-Waite: m * ln2h_2 and
 *           its difference with a are exact for m < 2^9);
 *   p = (e^(2h) - 1) / 2 = h + h^2 T(h), T of degree 4 (minimax for relative
 *           error, then one coefficient nudged by a search in float
 *           arithmetic): p within 0.29 * 2^-24 in exact arithmetic;
 *   tanh(a) = (1 - e^(-2a)) / (1 + e^(-2a)) = ((H - 1/2) - p) / ((H + 1/2) + p),
 *           H = 2^(m-1), read off the same magic sum that rounds m.
 * H - 1/2 is exact for m <= 24 and H + 1/2 for m <= 23, so for small a (m = 0)
 * the numerator is -p, with no cancellation, and for large a the numerator
 * and denominator are 1 -+ e^(-2a) scaled by 2^m, each rounded once.
 * Max error 1.954 ulp, measured over every float32 against tanh in double
 * (at x = 0.5196425; the numerator, denominator and quotient are each rounded
 * once), mean 0.35 ulp over [1e-6, 12]; +-inf give +-1, |x| < 2^-25 gives x,
 * exactly.  tests/test_functional.py checks the 2 ulp bound. */
static inline float fwb_tanh_f32(float x) {
    const float two_log2e = 0x1.715476p+1f, ln2h_2 = 0x1.62e4p-2f, ln2l_2 = 0x1.7f7d1cp-21f;
    const float magic = FWB_ROUND_F32 + 126.0f;   /* t's low bits hold 126 + m */
    float a = fabsf(x);
    a = a > 9.1f ? 9.1f : a;                       /* NaN passes */
    float t = a * two_log2e + magic;
    float m = t - magic;
    float h = (m * ln2h_2 - a) + m * ln2l_2;
    float h2 = h * h;                            /* Estrin: a shorter dependency chain */
    float c01 = 0x1.5554aep-1f * h + 0x1.fffffep-1f;
    float c23 = 0x1.122818p-3f * h + 0x1.555674p-2f;
    float c234 = 0x1.6bebeep-5f * h2 + c23;
    float p = h + h2 * (c234 * h2 + c01);
    /* (126 + m) << 23 is the bit pattern of 2^(m-1): the magic's own bits
     * shift out of the word */
    float H = fwb_bits_to_f32(fwb_f32_to_bits(t) << 23);
    return copysignf(((H - 0.5f) - p) / ((H + 0.5f) + p), x);
}

/* tanh for double, built like fwb_tanh_f32:
 *   |x| <  0.55:  x + x^3 q(x^2), q of degree 9 fitted to (tanh x - x) / x^3
 *                 by least squares on Chebyshev nodes in 50-digit arithmetic
 *                 (mpmath): within 1 ulp in double evaluation;
 *   |x| >= 0.55:  (1 - e) / (1 + e), e = exp(-2|x|) <= 0.34.
 * Max error 1.53 ulp measured against tanhl.  Kept over the one-formula
 * form of fwb_tanh_f32 (2.5x faster in double, but 2.15 ulp): float64
 * users choose accuracy. tests/test_functional.py checks the bound. */
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
    double small = a + a * (s * q);             /* on |x|, signed at the end: tanh(-0) = -0 */
    double e = fwb_exp_f64(-2.0 * a);
    double large = (1.0 - e) / (1.0 + e);
    return copysign(a < 0.55 ? small : large, x);
}

#endif /* FWB_MATH_H */
