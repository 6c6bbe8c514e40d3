/* OpenMP shim for fastwb.
 *
 * Every Cython module includes this header instead of <omp.h>.  When the
 * package is built with OpenMP, it forwards to the runtime; otherwise it
 * provides serial stand-ins, so the kernels build and run on one thread.
 *
 * fwb_omp_library() names the shared library that provides the OpenMP
 * runtime (found with dladdr on one of its symbols), for show_config().
 */
#ifndef FWB_OMP_H
#define FWB_OMP_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#ifdef _OPENMP
#include <omp.h>
#define FWB_HAVE_OPENMP 1
#else
#define FWB_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline void omp_set_num_threads(int n) { (void)n; }
static inline int omp_get_thread_num(void) { return 0; }
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
static inline const char *fwb_omp_library(void) {
#ifdef _OPENMP
    Dl_info info;
    if (dladdr((void *)&omp_get_max_threads, &info) && info.dli_fname)
        return info.dli_fname;
#endif
    return "";
}
#else
static inline const char *fwb_omp_library(void) { return ""; }
#endif

#endif /* FWB_OMP_H */
