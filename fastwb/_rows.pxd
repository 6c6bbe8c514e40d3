# Declarations of the C row kernels in csrc/fwb_rows.h, shared by the
# Cython modules.  See that header for what each function computes.

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
