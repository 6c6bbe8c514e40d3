# Thread control: the one place that talks to the OpenMP runtime directly.
#
# fastwb keeps no thread count of its own: the runtime's nthreads ICV (set by
# OMP_NUM_THREADS, omp_set_num_threads or threadpoolctl) is the single source
# of truth, and every kernel call reads it once.

cdef extern from "fwb_omp.h" nogil:
    int FWB_HAVE_OPENMP
    int omp_get_max_threads()
    void omp_set_num_threads(int)
    const char *fwb_omp_library()


def openmp_enabled():
    """True when the extension modules were compiled with OpenMP."""
    return bool(FWB_HAVE_OPENMP)


def max_threads():
    """The OpenMP runtime's current thread count for this thread (>= 1)."""
    return omp_get_max_threads()


def set_max_threads(int n):
    """Set the OpenMP runtime's thread count for this thread (n >= 1)."""
    omp_set_num_threads(n)


def runtime_library():
    """Path of the shared library that provides the OpenMP runtime, or ''."""
    return fwb_omp_library().decode("utf-8", "replace")


cdef extern from *:
    """
    #ifndef FWB_BUILD_INFO
    #define FWB_BUILD_INFO "{}"
    #endif
    static const char *fwb_build_info = FWB_BUILD_INFO;
    """
    const char *fwb_build_info


def build_info():
    """How the extensions were compiled (compiler, flags, OpenMP), as a dict."""
    import json
    return json.loads(fwb_build_info.decode("utf-8"))

