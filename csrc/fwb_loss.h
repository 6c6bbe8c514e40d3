/* Element-wise loss kernels of fastwb (mean squared error, binary
 * cross-entropy with logits) for float and double (see fwb_loss_impl.h).
 *
 * Each kernel makes one pass over a contiguous block: it writes the gradient
 * and returns the block's summed loss in double.  The sum runs over 8
 * interleaved lanes (element j of the block goes to lane j mod 8, in order)
 * combined pairwise at the end, so it depends only on the block's data: the
 * Cython callers split arrays into blocks whose boundaries depend only on
 * the shape, and add the block sums in block order, which makes the loss
 * bitwise identical for any thread count.
 */
#ifndef FWB_LOSS_H
#define FWB_LOSS_H

#include "fwb_rows.h"   /* FWB_CLONES, FWB_HEADER_FN, fwb_math.h */

/* log(1 + x) for x in [0, 1], branch-free so that loops calling it vectorise.
 *
 *   log(1 + x) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...),  s = x / (2 + x)
 *
 * with s in [0, 1/3], so s^2 <= 1/9 and the series converges fast: the terms
 * left out are below 9^-(K+1) / (2K + 3) relative, K the last power kept
 * (float: K = 6, 1.4e-8; double: K = 15, 1.6e-17).  s carries one rounding
 * of the division and one of 2 + x; the result is within a few ulp, and
 * keeps full relative accuracy for tiny x (log1p(1e-300) = 1e-300).  Used on
 * x = exp(-|z|), whose range is exactly [0, 1]; NaN propagates.  The
 * polynomial in s^2 is evaluated by Estrin's scheme (independent pairs
 * combined by powers of s^2): Horner's serial chain made this 1.7x slower. */
static inline float fwb_log1p_unit_f32(float x) {
    float s = x / (2.0f + x);
    float s2 = s * s, s4 = s2 * s2;
    float a0 = 1.0f / 3.0f + s2 * (1.0f / 5.0f);
    float a1 = 1.0f / 7.0f + s2 * (1.0f / 9.0f);
    float a2 = 1.0f / 11.0f + s2 * (1.0f / 13.0f);
    float q = a0 + s4 * (a1 + s4 * a2);
    float t = 2.0f * s;
    return t + t * (s2 * q);
}

static inline double fwb_log1p_unit_f64(double x) {
    double s = x / (2.0 + x);
    double s2 = s * s, s4 = s2 * s2, s8 = s4 * s4;
    double a0 = 1.0 / 3.0 + s2 * (1.0 / 5.0), a1 = 1.0 / 7.0 + s2 * (1.0 / 9.0);
    double a2 = 1.0 / 11.0 + s2 * (1.0 / 13.0), a3 = 1.0 / 15.0 + s2 * (1.0 / 17.0);
    double a4 = 1.0 / 19.0 + s2 * (1.0 / 21.0), a5 = 1.0 / 23.0 + s2 * (1.0 / 25.0);
    double a6 = 1.0 / 27.0 + s2 * (1.0 / 29.0), a7 = 1.0 / 31.0;
    double b0 = a0 + s4 * a1, b1 = a2 + s4 * a3, b2 = a4 + s4 * a5, b3 = a6 + s4 * a7;
    double q = (b0 + s8 * b1) + (s8 * s8) * (b2 + s8 * b3);
    double t = 2.0 * s;
    return t + t * (s2 * q);
}

/* The 8 lane sums of a block, combined pairwise (as fwb_row_sum does). */
static inline double fwb_lanes_total(const double *acc) {
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

#define FWB_T float
#define FWB_S f32
#define FWB_ABS fabsf
#include "fwb_loss_impl.h"
#undef FWB_T
#undef FWB_S
#undef FWB_ABS

#define FWB_T double
#define FWB_S f64
#define FWB_ABS fabs
#include "fwb_loss_impl.h"
#undef FWB_T
#undef FWB_S
#undef FWB_ABS

#endif /* FWB_LOSS_H */
