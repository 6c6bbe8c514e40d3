# Declarations of the C row kernels in csrc/fwb_rows.h, shared by the
# Cython modules.  See that header for what each function computes.
from cython cimport floating
from libc.string cimport memset

cdef extern from "fwb_rows.h" nogil:
    enum:
        FWB_ACT_IDENTITY
        FWB_ACT_RELU
        FWB_ACT_LEAKY
        FWB_ACT_SIGMOID
        FWB_ACT_TANH

    void fwb_bias_act_f32(const float *z, const float *b, float *y, Py_ssize_t n, int act, float alpha)
    void fwb_bias_act_f64(const double *z, const double *b, double *y, Py_ssize_t n, int act, double alpha)
    void fwb_act_grad_f32(const float *g, const float *y, float *dz, Py_ssize_t n, int act, float alpha)
    void fwb_act_grad_f64(const double *g, const double *y, double *dz, Py_ssize_t n, int act, double alpha)
    void fwb_accumulate_f32(float *acc, const float *v, Py_ssize_t n)
    void fwb_accumulate_f64(double *acc, const double *v, Py_ssize_t n)
    void fwb_softmax_block_f32(const float *z, float *p, Py_ssize_t rows, Py_ssize_t n)
    void fwb_softmax_block_f64(const double *z, double *p, Py_ssize_t rows, Py_ssize_t n)
    void fwb_softmax_grad_block_f32(const float *g, const float *y, float *dz, Py_ssize_t rows, Py_ssize_t n)
    void fwb_softmax_grad_block_f64(const double *g, const double *y, double *dz, Py_ssize_t rows, Py_ssize_t n)
    void fwb_xent_block_f32(const float *z, float *grad, Py_ssize_t rows, Py_ssize_t n,
                            const Py_ssize_t *label, float scale, double *loss)
    void fwb_xent_block_f64(const double *z, double *grad, Py_ssize_t rows, Py_ssize_t n,
                            const Py_ssize_t *label, double scale, double *loss)


# fused-type entry points to the row kernels (float32 / float64 by the pointers' type)

cdef inline void bias_act_row(const floating *z, const floating *b, floating *y, Py_ssize_t n,
                              int act, double alpha) noexcept nogil:
    if floating is float:
        fwb_bias_act_f32(z, b, y, n, act, <float>alpha)
    else:
        fwb_bias_act_f64(z, b, y, n, act, alpha)


cdef inline void act_grad_row(const floating *g, const floating *y, floating *dz, Py_ssize_t n,
                              int act, double alpha) noexcept nogil:
    if floating is float:
        fwb_act_grad_f32(g, y, dz, n, act, <float>alpha)
    else:
        fwb_act_grad_f64(g, y, dz, n, act, alpha)


cdef inline void accumulate_row(floating *acc, const floating *v, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fwb_accumulate_f32(acc, v, n)
    else:
        fwb_accumulate_f64(acc, v, n)


cdef inline void act_grad_colsum_cols(const floating *g, const floating *y, floating *dz, floating *gb,
                                      Py_ssize_t n, Py_ssize_t m, Py_ssize_t c0, Py_ssize_t c1,
                                      int act, double alpha) noexcept nogil:
    """Columns [c0, c1) of n rows of length m: dz = g * act'(y) (dz may be g) and
    gb = dz.sum(axis=0), each column summed rows 0, 1, 2, ... in order."""
    cdef Py_ssize_t r
    memset(gb + c0, 0, (c1 - c0) * sizeof(floating))
    for r in range(n):
        act_grad_row(g + r * m + c0, y + r * m + c0, dz + r * m + c0, c1 - c0, act, alpha)
        accumulate_row(gb + c0, dz + r * m + c0, c1 - c0)
