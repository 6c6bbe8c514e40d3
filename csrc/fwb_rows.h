/* fastwb's row kernels for float and double (see fwb_rows_impl.h).
 *
 * FWB_CLONES compiles a function for AVX-512, AVX2 and the baseline
 * instruction set and lets the dynamic loader pick one per CPU (GCC's
 * target_clones, on x86-64 Linux).  The choice depends only on the CPU, so a
 * given machine always runs the same code and gets the same bits, whatever
 * the thread count.  FASTWB_NATIVE=1 builds with -march=native instead.
 */
#ifndef FWB_ROWS_H
#define FWB_ROWS_H

#include <stddef.h>
#include <string.h>
#include "fwb_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FWB_NO_CLONES)
#define FWB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FWB_CLONES
#endif

/* Every module that includes this header (directly or through fwb_optim.h and
 * fwb_select.h) gets all of its static functions but calls only some of them:
 * FWB_HEADER_FN tells the compiler that an uncalled one is expected. */
#if defined(__GNUC__)
#define FWB_HEADER_FN __attribute__((unused))
#else
#define FWB_HEADER_FN
#endif

/* activation codes shared with fastwb/_dense.pyx */
enum { FWB_ACT_IDENTITY = 0, FWB_ACT_RELU = 1, FWB_ACT_LEAKY = 2, FWB_ACT_SIGMOID = 3, FWB_ACT_TANH = 4 };

#define FWB_T float
#define FWB_S f32
#include "fwb_rows_impl.h"
#undef FWB_T
#undef FWB_S

#define FWB_T double
#define FWB_S f64
#include "fwb_rows_impl.h"
#undef FWB_T
#undef FWB_S

#endif /* FWB_ROWS_H */
