# The training step of fastwb.MLP as one compiled call.
#
# A StepPlan holds, for one batch size, every array a step touches (weights,
# biases and their gradient views, layer outputs, scratch), the transposed
# views the backward GEMMs need, and the thread count of every kernel, all
# made once by fastwb/mlp.py.  forward / gradients then run the whole
# sequence from C: GEMMs through NumPy's own C API (PyArray_MatrixProduct2,
# i.e. np.dot with out=, so NumPy's BLAS and nothing else) and the fused
# kernels of _dense and _losses through their pointer-level cores.  Python is
# entered once per step.  Inputs are validated by fastwb/mlp.py.

cimport numpy as cnp
from cython cimport floating

from fastwb._dense cimport act_grad_colsum_2d, bias_act_2d, colsum_2d
from fastwb._losses cimport xent_2d

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    object PyArray_MatrixProduct2(object, object, cnp.ndarray)


cdef inline void *_data(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class StepPlan:
    """Arrays and thread counts of one training step for one batch size."""
    cdef list W, b, dW, db, WT, a, aT, dz, ga, codes, nt_act, nt_col
    cdef object row_loss
    cdef int L, nt_loss
    cdef bint f64
    cdef double alpha

    def __init__(self, W, b, dW, db, a, dz, ga, row_loss, codes, alpha, nt_act, nt_col, nt_loss):
        self.W, self.b, self.dW, self.db = list(W), list(b), list(dW), list(db)
        self.a, self.dz, self.ga = list(a), list(dz), list(ga)
        self.WT = [w.T for w in self.W]
        self.aT = [x.T for x in self.a]
        self.row_loss = row_loss
        self.codes = list(codes)
        self.alpha = alpha
        self.nt_act, self.nt_col, self.nt_loss = list(nt_act), list(nt_col), nt_loss
        self.L = len(self.W)
        self.f64 = self.W[0].dtype.itemsize == 8

    def forward(self, X):
        """Logits of the batch X (a view of the plan's last layer output)."""
        if self.f64:
            _forward(self, X, <double>0)
        else:
            _forward(self, X, <float>0)
        return self.a[self.L - 1]

    def gradients(self, X, y, bint input_gradient=False):
        """Forward, mean softmax cross-entropy against y, backward: fills the
        weight and bias gradients (and the input gradient when asked, in the
        plan's ga[0]).  Returns the mean loss."""
        if self.f64:
            return _gradients(self, X, y, input_gradient, <double>0)
        return _gradients(self, X, y, input_gradient, <float>0)


cdef void _forward(StepPlan p, object X, floating kind):
    cdef object inp = X, out
    cdef Py_ssize_t l, n = X.shape[0], m
    cdef floating *y
    cdef const floating *bias
    cdef int code, nt
    for l in range(p.L):
        out = p.a[l]
        PyArray_MatrixProduct2(inp, p.W[l], out)
        y = <floating *>_data(out)
        bias = <const floating *>_data(p.b[l])
        m = out.shape[1]
        code = p.codes[l]
        nt = p.nt_act[l]
        with nogil:
            bias_act_2d(y, bias, y, n, m, code, p.alpha, nt)
        inp = out


cdef double _gradients(StepPlan p, object X, object y, bint input_gradient, floating kind):
    cdef Py_ssize_t n = X.shape[0], l, m
    cdef object logits, g, dz, inp_t
    cdef double loss
    cdef int code, nt
    cdef const floating *zp
    cdef const floating *gp
    cdef const floating *ap
    cdef floating *dzp
    cdef floating *dbp
    cdef const Py_ssize_t *labels = <const Py_ssize_t *>_data(y)
    cdef double *row_loss = <double *>_data(p.row_loss)
    _forward(p, X, kind)
    logits = p.a[p.L - 1]
    m = logits.shape[1]
    g = p.dz[p.L - 1]
    zp = <const floating *>_data(logits)
    dzp = <floating *>_data(g)
    with nogil:
        loss = xent_2d(zp, labels, dzp, row_loss, n, m, p.nt_loss)
    for l in range(p.L - 1, -1, -1):
        code = p.codes[l]
        nt = p.nt_col[l]
        m = p.a[l].shape[1]
        gp = <const floating *>_data(g)
        dbp = <floating *>_data(p.db[l])
        if code == 0:      # identity: dz is the incoming gradient itself
            dz = g
            with nogil:
                colsum_2d(gp, dbp, n, m, nt)
        else:
            dz = p.dz[l]
            ap = <const floating *>_data(p.a[l])
            dzp = <floating *>_data(dz)
            with nogil:
                act_grad_colsum_2d(gp, ap, dzp, dbp, n, m, code, p.alpha, nt)
        inp_t = X.T if l == 0 else p.aT[l - 1]
        PyArray_MatrixProduct2(inp_t, dz, p.dW[l])
        if l > 0 or input_gradient:
            PyArray_MatrixProduct2(dz, p.WT[l], p.ga[l])
            g = p.ga[l]
    return loss
