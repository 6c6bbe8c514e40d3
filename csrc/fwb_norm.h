/* fastwb's batch-normalisation and dropout kernels for float and double (see
 * fwb_norm_impl.h), and the counter-based generator of the dropout mask.
 * FWB_CLONES, the activation codes and the build flags are those of fwb_rows.h.
 *
 * The dropout generator
 * ---------------------
 * Element number i (the flat C-order index into the array being dropped) is
 * kept when bits(seed, step, i) >= threshold, where
 *
 *   key(block)  = mix64(mix64(mix64(seed ^ 0x9e3779b97f4a7c15) + step) + block),
 *                 block = i >> 32 (0 for any array below 2^32 elements),
 *                 k0 = low 32 bits of key, k1 = high 32 bits;
 *   bits        = mix32(mix32((uint32) i ^ k0) ^ k1);
 *   threshold   = ceil(p * 2^32), at most 2^32 - 1.
 *
 * mix64 is the finaliser of SplitMix64 (xor-shift, multiply, twice, with
 * Stafford's "mix13" constants) and mix32 is a 32-bit xor-shift-multiply
 * finaliser with constants from Chris Wellons' hash-prospector search (low
 * avalanche bias).  Both are bijections, so for one (seed, step) the elements
 * of a block get 2^32 distinct 32-bit values; two rounds of mix32 keyed by
 * independent halves of a 64-bit key make different (seed, step) pairs
 * permute the counter differently (not merely shift it), so masks of
 * consecutive steps or seeds do not overlap as shifted copies.  The key is
 * computed once per call (and per 2^32 elements); each element costs two
 * 32-bit rounds, which vectorise (8 lanes on AVX2).  An element is kept with
 * probability (2^32 - threshold) / 2^32, which is 1 - p to within 2^-32.
 * tests/test_normalization.py checks the keep rate of 16M draws, and the
 * correlation between neighbouring elements, consecutive steps and seeds.
 * The result depends only on (seed, step, i): not on the thread count, on
 * how the array is split, or on the dtype.  fastwb/reference/normalization.py
 * computes the same bits with NumPy's uint32 arithmetic.
 */
#ifndef FWB_NORM_H
#define FWB_NORM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include "fwb_rows.h"

#define FWB_INLINE_N static inline __attribute__((always_inline))

/* columns handled at once by a batch-norm kernel: their per-column constants
 * and double accumulators live on the stack (at most 72 KiB, the float64
 * backward pass).  Whole rows of up to 1024 columns make each pass one
 * sequential stream; 256-column chunks of a 1024-wide batch (rows read in
 * 1 KiB pieces, 4 KiB apart) made the 4096x1024 forward+backward 1.6x slower. */
#define FWB_BN_CHUNK 1024

typedef struct {
    uint64_t seed, step;
    uint32_t threshold;     /* keep element i iff bits(i) >= threshold */
    double scale;           /* 1 / (1 - p), applied to the kept elements */
    int on;                 /* p > 0 */
} fwb_dropout_t;

static inline uint64_t fwb_mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z;
}

FWB_INLINE_N uint32_t fwb_mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x7feb352dU;
    h ^= h >> 15;
    h *= 0x846ca68bU;
    h ^= h >> 16;
    return h;
}

/* the generator of inverted dropout with probability p (0 <= p < 1) */
static inline fwb_dropout_t fwb_dropout_make(double p, uint64_t seed, uint64_t step) {
    fwb_dropout_t d;
    double t = ceil(p * 4294967296.0);          /* p * 2^32 is exact */
    d.seed = seed;
    d.step = step;
    d.threshold = t >= 4294967295.0 ? 0xffffffffU : (uint32_t)t;
    d.scale = 1.0 / (1.0 - p);
    d.on = p > 0;
    return d;
}

/* the 64-bit key of elements [block * 2^32, (block + 1) * 2^32) */
static inline uint64_t fwb_dropout_key(const fwb_dropout_t *d, uint64_t block) {
    return fwb_mix64(fwb_mix64(fwb_mix64(d->seed ^ 0x9e3779b97f4a7c15ULL) + d->step) + block);
}

FWB_INLINE_N uint32_t fwb_dropout_bits(uint32_t lo, uint32_t k0, uint32_t k1) {
    return fwb_mix32(fwb_mix32(lo ^ k0) ^ k1);
}

/* The stretch of at most len elements from element `start` that shares one key
 * (one 2^32 block): its length, with the generator's counter of its first
 * element in *lo and the key's halves in *k0, *k1.  Every loop over dropped
 * elements walks its array in such stretches. */
FWB_INLINE_N ptrdiff_t fwb_dropout_run(const fwb_dropout_t *d, uint64_t start, ptrdiff_t len, uint32_t *lo,
                                       uint32_t *k0, uint32_t *k1) {
    uint64_t key = fwb_dropout_key(d, start >> 32);
    uint64_t room = ((uint64_t)1 << 32) - (start & 0xffffffffULL);     /* elements left in the block */
    *lo = (uint32_t)start;
    *k0 = (uint32_t)key;
    *k1 = (uint32_t)(key >> 32);
    return (uint64_t)len < room ? len : (ptrdiff_t)room;
}

/* mask[j] = 1 if element start + j is kept, else 0 */
FWB_CLONES FWB_HEADER_FN static void fwb_dropout_mask(unsigned char *mask, ptrdiff_t len, uint64_t start,
                                                      const fwb_dropout_t *d) {
    const uint32_t t = d->threshold;
    uint32_t lo, k0, k1;
    while (len > 0) {
        ptrdiff_t w = fwb_dropout_run(d, start, len, &lo, &k0, &k1);
        uint32_t c = lo;
        for (ptrdiff_t j = 0; j < w; j++, c++)
            mask[j] = fwb_dropout_bits(c, k0, k1) >= t;
        mask += w;
        len -= w;
        start += (uint64_t)w;
    }
}

#define FWB_T float
#define FWB_S f32
#include "fwb_norm_impl.h"
#undef FWB_T
#undef FWB_S

#define FWB_T double
#define FWB_S f64
#include "fwb_norm_impl.h"
#undef FWB_T
#undef FWB_S

#endif /* FWB_NORM_H */
