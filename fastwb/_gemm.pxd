# fastwb's GEMMs: NumPy's own BLAS (its CBLAS sgemm/dgemm, found at run time
# by fastwb/_blas.py) called single-threaded from fastwb's OpenMP team, the
# output cut into row or column tiles, each tile finished by a fused epilogue
# while it is still in cache.  See _gemm.pyx.
from cython cimport floating

cdef enum:
    EPI_NONE = 0
    EPI_BIAS_ACT = 1            # C = act(C + bias)            (bias may be NULL)
    EPI_ACT_GRAD = 2            # C = C * act'(y)
    EPI_ACT_GRAD_COLSUM = 3     # C = C * act'(y); sums = C.sum(axis=0), rows in order (column tiles)


cdef struct Epilogue:
    int kind
    int act
    double alpha
    const void *bias            # EPI_BIAS_ACT: (N,) or NULL
    const void *y               # EPI_ACT_GRAD*: (M, N) with C's leading dimension
    void *sums                  # EPI_ACT_GRAD_COLSUM: (N,)


cdef bint ready() noexcept nogil
cdef int blas_enter() except -1
cdef void blas_exit() noexcept
cdef void tiled_gemm(bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                     const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                     floating *C, const Epilogue *epi, int nt) noexcept nogil
