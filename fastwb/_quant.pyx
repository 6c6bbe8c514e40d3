# Kernels of fastwb.quantize: dynamically quantized int8 inference.
#
# The arithmetic lives in csrc/fwb_q8.h (row statistics, PyTorch's activation
# parameters, the quantization pass, the exact u8 x s8 product with its float
# epilogue, the output pass); this module binds it:
#
#   pack_weights   the packed layout and column sums of an int8 W (in, out),
#                  made once at quantization time;
#   QNet           a chain of quantized Linear layers; forward() runs the whole
#                  network on a batch in one nogil call;
#   qparams, quantize_rows, supported, PATHS
#                  the pieces on their own, for the tests against the NumPy
#                  twin (fastwb/reference/quantize.py).
#
# Kernel room: fastwb/quantize.py has checked shapes, dtypes, contiguity and
# the K <= 65536 bound, and chosen the path and the thread count.

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef extern from "fwb_q8.h" nogil:
    int FWB_Q8_NR
    int FWB_Q8_SCALAR, FWB_Q8_AVX2, FWB_Q8_AVXVNNI, FWB_Q8_AVX512VNNI, FWB_Q8_NPATHS
    ctypedef struct fwb_q8_layer:
        Py_ssize_t K, N
        const int8_t *Bp
        const int32_t *colsum
        const float *wscale
        const float *bias
        int act
        float alpha
    ctypedef struct fwb_q8_scratch:
        uint8_t *A
        size_t a_bytes
        int32_t *corr
        float *mult
        float *pmn
        float *pmx
        uint8_t *pbad
        Py_ssize_t pstride
    int FWB_Q8_PRIVATE_A
    int fwb_q8_supported(int path)
    Py_ssize_t fwb_q8_k4(Py_ssize_t K)
    Py_ssize_t fwb_q8_panels(Py_ssize_t N)
    void fwb_q8_pack(const int8_t *W, Py_ssize_t K, Py_ssize_t N, int8_t *Bp)
    void fwb_q8_colsums(const int8_t *W, Py_ssize_t K, Py_ssize_t N, int32_t *colsum)
    void fwb_q8_qparams(float mn, float mx, int qmax, float *scale, int *zp)
    void fwb_q8_quantize_scalar(const float *x, Py_ssize_t K, float inv, float zpf, float qmaxf, uint8_t *a)
    void fwb_q8_quantize_avx2(const float *x, Py_ssize_t K, float inv, float zpf, float qmaxf, uint8_t *a)
    void fwb_q8_row_stats(const float *x, Py_ssize_t M, Py_ssize_t K, float *mn, float *mx, uint8_t *bad,
                          int n_threads)
    void fwb_q8_linear(const fwb_q8_layer *L, const float *x, Py_ssize_t M, float *y, float *mn, float *mx,
                       uint8_t *bad, int qmax, int path, const fwb_q8_scratch *s, int want_stats, int n_threads)

#: the kernel paths by name, in the order of preference (the last supported one is the default)
PATHS = ("scalar", "avx2", "avxvnni", "avx512vnni")
#: columns per packed panel
PANEL = FWB_Q8_NR


def supported(int path):
    """Whether this CPU and this build can run kernel path number ``path``."""
    return bool(fwb_q8_supported(path))


def pack_weights(const int8_t[:, ::1] W):
    """``(Bp, colsum)``: the packed layout of W ``(in, out)`` (int8, panels of 16
    columns, K padded to a multiple of 4) and its column sums (int32, padded
    with zeros to the panels' width)."""
    cdef Py_ssize_t K = W.shape[0], N = W.shape[1]
    Bp = np.empty(fwb_q8_panels(N) * fwb_q8_k4(K) * 64, np.int8)
    colsum = np.empty(fwb_q8_panels(N) * FWB_Q8_NR, np.int32)
    cdef int8_t[::1] bp = Bp
    cdef int32_t[::1] cs = colsum
    if K and N:
        fwb_q8_pack(&W[0, 0], K, N, &bp[0])
        fwb_q8_colsums(&W[0, 0], K, N, &cs[0])
    else:
        colsum[...] = 0
    return Bp, colsum


def qparams(float mn, float mx, int qmax):
    """``(scale, zero_point)`` of activations in ``[mn, mx]`` quantized to ``0..qmax``
    (the C function; the twin is fastwb.reference.quantize.choose_qparams)."""
    cdef float scale
    cdef int zp
    fwb_q8_qparams(mn, mx, qmax, &scale, &zp)
    return np.float32(scale), zp


def quantize_rows(const float[:, ::1] X, float scale, int zp, int qmax, int path):
    """The uint8 quantization of X's rows, padded to a multiple of 4 columns,
    through the scalar or the SIMD pass (``path`` > 0)."""
    cdef Py_ssize_t M = X.shape[0], K = X.shape[1], lda = fwb_q8_k4(K) * 4, i
    out = np.empty((M, lda), np.uint8)
    cdef uint8_t[:, ::1] A = out
    cdef float inv = 1.0 / scale
    cdef bint simd = path > 0 and fwb_q8_supported(FWB_Q8_AVX2)
    if lda == 0:
        return out
    for i in range(M):
        if simd:
            fwb_q8_quantize_avx2(&X[i, 0], K, inv, <float>zp, <float>qmax, &A[i, 0])
        else:
            fwb_q8_quantize_scalar(&X[i, 0], K, inv, <float>zp, <float>qmax, &A[i, 0])
    return out


cdef class QNet:
    """A chain of quantized Linear layers run as one compiled call.

    ``layers``: a list of dicts with ``Bp``, ``colsum`` (from :func:`pack_weights`),
    ``wscale`` and ``bias`` (float32, padded to the panels' width), ``K``, ``N``,
    ``act`` (fastwb's activation code) and ``alpha``; ``qmax``: 255, or 127
    with reduce_range.  The arrays are kept referenced here.  forward() only
    reads them: one QNet serves many threads at once, each with its own
    workspace."""
    cdef fwb_q8_layer *c_layers
    cdef public int n_layers, qmax
    cdef public Py_ssize_t in_features, out_features, widest_in, widest_out
    cdef list _keep

    def __cinit__(self, list layers, int qmax):
        self.c_layers = <fwb_q8_layer *>malloc(max(len(layers), 1) * sizeof(fwb_q8_layer))
        if self.c_layers == NULL:
            raise MemoryError()

    def __init__(self, list layers, int qmax):
        cdef Py_ssize_t l
        cdef int8_t[::1] bp
        cdef int32_t[::1] cs
        cdef float[::1] ws, bs
        self.n_layers, self.qmax, self._keep = len(layers), qmax, []
        self.widest_in = self.widest_out = 0
        for l, d in enumerate(layers):
            bp, cs, ws, bs = d["Bp"], d["colsum"], d["wscale"], d["bias"]
            self._keep.append((d["Bp"], d["colsum"], d["wscale"], d["bias"]))
            self.c_layers[l].K, self.c_layers[l].N = d["K"], d["N"]
            self.c_layers[l].Bp, self.c_layers[l].colsum = &bp[0], &cs[0]
            self.c_layers[l].wscale, self.c_layers[l].bias = &ws[0], &bs[0]
            self.c_layers[l].act, self.c_layers[l].alpha = d["act"], d["alpha"]
            self.widest_in = max(self.widest_in, fwb_q8_k4(d["K"]) * 8)
            self.widest_out = max(self.widest_out, fwb_q8_panels(d["N"]) * FWB_Q8_NR)
        self.in_features, self.out_features = layers[0]["K"], layers[len(layers) - 1]["N"]

    def __dealloc__(self):
        free(self.c_layers)

    def workspace(self, Py_ssize_t M, int n_threads=1):
        """The scratch of a forward pass over M rows, for up to n_threads threads
        (more still work: they then share the quantization pass)."""
        return _Workspace(M, self.widest_in, self.widest_out, n_threads)

    def forward(self, const float[:, ::1] X, float[:, ::1] out, _Workspace ws, int path, int n_threads):
        """out = the network applied to X (M >= 1 rows, ``ws.batch`` of them)."""
        cdef Py_ssize_t M = X.shape[0], l
        cdef const float *x
        cdef float *y
        with nogil:
            fwb_q8_row_stats(&X[0, 0], M, self.in_features, ws.mn, ws.mx, ws.bad, n_threads)
            x = &X[0, 0]
            for l in range(self.n_layers):
                y = &out[0, 0] if l == self.n_layers - 1 else ws.tmp[l % 2]
                fwb_q8_linear(&self.c_layers[l], x, M, y, ws.mn, ws.mx, ws.bad, self.qmax, path, &ws.s,
                              l < self.n_layers - 1, n_threads)
                x = y


cdef class _Workspace:
    """The scratch arrays of one forward pass over ``batch`` rows, with their pointers."""
    cdef public Py_ssize_t batch
    cdef fwb_q8_scratch s
    cdef float *tmp[2]
    cdef float *mn
    cdef float *mx
    cdef uint8_t *bad
    cdef object _arrays

    def __init__(self, Py_ssize_t rows, Py_ssize_t widest_in, Py_ssize_t widest_out, int n_threads):
        cdef Py_ssize_t a = max(rows * widest_in, 1), panels = widest_out // FWB_Q8_NR
        if a <= FWB_Q8_PRIVATE_A and n_threads > 1:     # room for every thread's own quantized rows
            a *= n_threads
        cdef uint8_t[::1] A = np.empty(a, np.uint8), bad = np.empty(max(rows, 1), np.uint8)
        cdef uint8_t[::1] pbad = np.empty(max(rows * panels, 1), np.uint8)
        cdef int32_t[::1] corr = np.empty(widest_out, np.int32)
        cdef float[::1] mult = np.empty(widest_out, np.float32)
        cdef float[:, ::1] tmp = np.empty((2, max(rows * widest_out, 1)), np.float32)
        cdef float[:, ::1] stats = np.empty((2, max(rows, 1)), np.float32)
        cdef float[:, ::1] pstats = np.empty((2, max(rows * panels, 1)), np.float32)
        self.batch, self._arrays = rows, (A, bad, pbad, corr, mult, tmp, stats, pstats)
        self.s.A, self.s.a_bytes, self.s.corr, self.s.mult = &A[0], a, &corr[0], &mult[0]
        self.s.pmn, self.s.pmx, self.s.pbad, self.s.pstride = &pstats[0, 0], &pstats[1, 0], &pbad[0], panels
        self.tmp[0], self.tmp[1] = &tmp[0, 0], &tmp[1, 0]
        self.mn, self.mx, self.bad = &stats[0, 0], &stats[1, 0], &bad[0]
