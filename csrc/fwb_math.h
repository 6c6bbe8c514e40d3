/* Branch-free, vectorisable elementary functions for fastwb's kernels.
 *
 * GCC vectorises a loop only when every call in it is inlined and free of
 * branches; glibc's expf/exp are neither (and libmvec is only used under
 * -ffast-math, which fastwb never uses).  These functions are written so that
 * a loop calling them compiles to SIMD code, and every operation they use is
 * an exactly rounded IEEE operation, so the scalar remainder of a loop and
 * its vector body give bitwise identical results (build with
 * -ffp-contract=off so no multiply-add is fused).
 *
 * exp(x):  x = n*ln2 + r,  n = round(x*log2(e)),  |r| <= ln2/2
 *          exp(r) by its Taylor polynomial (degree 7 for float: truncation
 *          error r^8/8! < 5.3e-9; degree 13 for double: < 4.1e-18);
 *          r is computed in two steps (Cody and Waite): ln2 = LN2_HI + LN2_LO
 *          where n*LN2_HI is exact for every n that can occur.
 *          2^n is applied as two factors 2^n1 * 2^n2 (n1 = round(n/2)), each a
 *          normal number, so results that underflow to subnormals are rounded
 *          once.  Measured accuracy: within 2 ulp of the correctly rounded
 *          result over the whole range (tests/test_math.py).
 *          NaN propagates; exp(+inf) = +inf; exp(-inf) = 0.
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

/* 2^k for an integral-valued float k in [-126, 127]. */
static inline float fwb_pow2_f32(float k) {
    uint32_t ki = fwb_f32_to_bits(k + FWB_ROUND_F32) - fwb_f32_to_bits(FWB_ROUND_F32);
    return fwb_bits_to_f32((ki + 127u) << 23);
}

static inline double fwb_pow2_f64(double k) {
    uint64_t ki = fwb_f64_to_bits(k + FWB_ROUND_F64) - fwb_f64_to_bits(FWB_ROUND_F64);
    return fwb_bits_to_f64((ki + 1023u) << 52);
}

static inline float fwb_exp_f32(float x) {
    const float log2e = 1.44269502f, ln2_hi = 0x1.62e4p-1f, ln2_lo = 0x1.7f7d1cp-20f;
    float xc = x < -104.0f ? -104.0f : x;      /* exp(-104) rounds to 0 */
    xc = xc > 88.75f ? 88.75f : xc;            /* NaN passes both tests */
    float n = (xc * log2e + FWB_ROUND_F32) - FWB_ROUND_F32;
    float r = (xc - n * ln2_hi) - n * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float n1 = (n * 0.5f + FWB_ROUND_F32) - FWB_ROUND_F32;
    float y = p * fwb_pow2_f32(n1) * fwb_pow2_f32(n - n1);
    return x > 88.7228394f ? INFINITY : y;
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
    double y = p * fwb_pow2_f64(n1) * fwb_pow2_f64(n - n1);
    return x > 709.782712893384 ? INFINITY : y;
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

/* tanh for float, computed in double: tanh|x| = (1 - t) / (1 + t), t = exp(-2|x|).
 * The absolute error of 1 - t is about 1e-16, far below float's resolution
 * for |x| >= 2^-12; below that, tanh(x) rounds to x in float (|x|^3/3 is
 * under half an ulp). */
static inline float fwb_tanh_f32(float x) {
    double a = fabs((double)x);
    double t = fwb_exp_f64(-2.0 * a);
    double y = (1.0 - t) / (1.0 + t);
    float r = (float)copysign(y, (double)x);
    return fabsf(x) < 0x1p-12f ? x : r;
}

/* tanh for double: glibc's correctly rounded-to-1ulp tanh (scalar). */
static inline double fwb_tanh_f64(double x) { return tanh(x); }

#endif /* FWB_MATH_H */
