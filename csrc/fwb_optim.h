/* fastwb's optimizer and regularisation kernels for float and double (see
 * fwb_optim_impl.h).  FWB_CLONES and the build flags are those of fwb_rows.h. */
#ifndef FWB_OPTIM_H
#define FWB_OPTIM_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include "fwb_rows.h"

#define FWB_INLINE static inline __attribute__((always_inline))

#define FWB_T float
#define FWB_S f32
#define FWB_SQRT sqrtf
#define FWB_FABS fabsf
#define FWB_TINY FLT_MIN
#include "fwb_optim_impl.h"
#undef FWB_T
#undef FWB_S
#undef FWB_SQRT
#undef FWB_FABS
#undef FWB_TINY

#define FWB_T double
#define FWB_S f64
#define FWB_SQRT sqrt
#define FWB_FABS fabs
#define FWB_TINY DBL_MIN
#include "fwb_optim_impl.h"
#undef FWB_T
#undef FWB_S
#undef FWB_SQRT
#undef FWB_FABS
#undef FWB_TINY

#endif /* FWB_OPTIM_H */
