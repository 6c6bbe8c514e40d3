/* fastwb's optimizer and regularisation kernels for float and double (see
 * fwb_optim_impl.h).  FWB_CLONES and the build flags are those of fwb_rows.h. */
#ifndef FWB_OPTIM_H
#define FWB_OPTIM_H

#include <math.h>
#include <stddef.h>
#include "fwb_rows.h"

#define FWB_INLINE static inline __attribute__((always_inline))

#define FWB_T float
#define FWB_S f32
#define FWB_SQRT sqrtf
#include "fwb_optim_impl.h"
#undef FWB_T
#undef FWB_S
#undef FWB_SQRT

#define FWB_T double
#define FWB_S f64
#define FWB_SQRT sqrt
#include "fwb_optim_impl.h"
#undef FWB_T
#undef FWB_S
#undef FWB_SQRT

#endif /* FWB_OPTIM_H */
