/* fastwb's magnitude selection and pruning passes for float and double
 * (see fwb_select_impl.h). */
#ifndef FWB_SELECT_H
#define FWB_SELECT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fwb_rows.h"

#define FWB_RADIX_BITS 11
#define FWB_RADIX (1 << FWB_RADIX_BITS)

#define FWB_T float
#define FWB_K uint32_t
#define FWB_IK int32_t
#define FWB_S f32
#define FWB_ABS fabsf
#include "fwb_select_impl.h"
#undef FWB_T
#undef FWB_K
#undef FWB_IK
#undef FWB_S
#undef FWB_ABS

#define FWB_T double
#define FWB_K uint64_t
#define FWB_IK int64_t
#define FWB_S f64
#define FWB_ABS fabs
#include "fwb_select_impl.h"
#undef FWB_T
#undef FWB_K
#undef FWB_IK
#undef FWB_S
#undef FWB_ABS

#endif /* FWB_SELECT_H */
