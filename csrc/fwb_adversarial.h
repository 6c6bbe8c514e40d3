/* The fused FGSM and PGD steps of fastwb.adversarial (fastwb/_adversarial.pyx
 * describes the arithmetic and the NaN checks).  Each loop is compiled for
 * AVX-512, AVX2 and the baseline (FWB_CLONES of fwb_rows.h); elementwise IEEE
 * operations give the same bits at every vector width.
 */
#ifndef FWB_ADVERSARIAL_H
#define FWB_ADVERSARIAL_H

#include <stddef.h>
#include "fwb_rows.h"           /* FWB_CLONES, FWB_HEADER_FN */

/* Each loop exists twice: y distinct from the inputs (restrict: the caller
 * never lets them overlap), and y the same memory as x (in place), which
 * a restrict-free loop over two equal pointers would run unvectorised
 * (its run-time overlap check fails). */
#define FWB_ADV_KERNELS(T, S)                                                                          \
static inline T fwb_adv_sign_##S(T g) {                                                                \
    return g > 0 ? (T)1 : (g < 0 ? (T)-1 : (g == 0 ? (T)0 : g));                                      \
}                                                                                                      \
static inline T fwb_adv_clamp_##S(T v, T lo, T hi) {                                                   \
    v = v < lo ? lo : v;                                                                               \
    return v > hi ? hi : v;                                                                            \
}                                                                                                      \
FWB_CLONES FWB_HEADER_FN static int fwb_adv_any_nan_##S(const T *g, ptrdiff_t n) {                     \
    T seen = 0;                                                                                        \
    for (ptrdiff_t i = 0; i < n; i++) seen = g[i] != g[i] ? (T)1 : seen;                               \
    return seen != 0;                                                                                  \
}                                                                                                      \
FWB_CLONES FWB_HEADER_FN static int fwb_adv_fgsm_##S(const T *x, const T *g, T *restrict y,           \
                                                     ptrdiff_t n, T eps, T lo, T hi) {                 \
    T seen = 0;                                                                                        \
    for (ptrdiff_t i = 0; i < n; i++) {                                                                \
        seen = g[i] != g[i] ? (T)1 : seen;                                                             \
        y[i] = fwb_adv_clamp_##S(x[i] + eps * fwb_adv_sign_##S(g[i]), lo, hi);                         \
    }                                                                                                  \
    return seen != 0;                                                                                  \
}                                                                                                      \
FWB_CLONES FWB_HEADER_FN static int fwb_adv_fgsm_inplace_##S(T *xy, const T *g, ptrdiff_t n,           \
                                                             T eps, T lo, T hi) {                      \
    T seen = 0;                                                                                        \
    for (ptrdiff_t i = 0; i < n; i++) {                                                                \
        seen = g[i] != g[i] ? (T)1 : seen;                                                             \
        xy[i] = fwb_adv_clamp_##S(xy[i] + eps * fwb_adv_sign_##S(g[i]), lo, hi);                       \
    }                                                                                                  \
    return seen != 0;                                                                                  \
}                                                                                                      \
FWB_CLONES FWB_HEADER_FN static int fwb_adv_pgd_##S(const T *x, const T *x0, const T *g, T *restrict y, \
                                                    ptrdiff_t n, T alpha, T r, T lo, T hi) {           \
    T seen = 0;                                                                                        \
    for (ptrdiff_t i = 0; i < n; i++) {                                                                \
        seen = g[i] != g[i] ? (T)1 : seen;                                                             \
        T v = x[i] + alpha * fwb_adv_sign_##S(g[i]);                                                   \
        v = x0[i] + fwb_adv_clamp_##S(v - x0[i], -r, r);                                               \
        y[i] = fwb_adv_clamp_##S(v, lo, hi);                                                           \
    }                                                                                                  \
    return seen != 0;                                                                                  \
}                                                                                                      \
FWB_CLONES FWB_HEADER_FN static int fwb_adv_pgd_inplace_##S(T *xy, const T *x0, const T *g,           \
                                                            ptrdiff_t n, T alpha, T r, T lo, T hi) {   \
    T seen = 0;                                                                                        \
    for (ptrdiff_t i = 0; i < n; i++) {                                                                \
        seen = g[i] != g[i] ? (T)1 : seen;                                                             \
        T v = xy[i] + alpha * fwb_adv_sign_##S(g[i]);                                                  \
        v = x0[i] + fwb_adv_clamp_##S(v - x0[i], -r, r);                                               \
        xy[i] = fwb_adv_clamp_##S(v, lo, hi);                                                          \
    }                                                                                                  \
    return seen != 0;                                                                                  \
}

FWB_ADV_KERNELS(float, f32)
FWB_ADV_KERNELS(double, f64)

#endif
