# The forward pass and the training step of a fastwb.nn.Sequential (and so
# of fastwb.MLP) as one compiled call each.
#
# A Plan holds, for one batch size, every array a step touches (parameters
# and gradient views, stage outputs, scratch), the transposed views the
# backward GEMMs need, and the thread count of every kernel, all made once
# by fastwb/nn/plan.py.  forward / gradients then run the whole sequence from
# C: GEMMs through fastwb/_gemm.pyx's tiles over NumPy's own BLAS (or, where
# that BLAS was not found, through NumPy's C API: PyArray_MatrixProduct2, i.e.
# np.dot with out=), and the fused kernels of _dense, _norm and _losses
# through their pointer-level cores.  Python is entered once per step.
# Inputs are validated by fastwb/nn/sequential.py.

import numpy as np

cimport numpy as cnp
from cython cimport floating
from libc.string cimport memcpy

from fastwb._dense cimport act_1d, act_grad_1d, act_grad_colsum_2d, bias_act_2d, colsum_2d
from fastwb._gemm cimport (EPI_ACT_GRAD, EPI_ACT_GRAD_COLSUM, EPI_BIAS_ACT, EPI_NONE, Epilogue, blas_enter,
                           blas_exit, ready, tiled_gemm)
from fastwb._losses cimport bce_logits_2d, mse_2d, xent_2d
from fastwb._norm cimport bn_backward_2d, bn_forward_2d, dropout_1d

cnp.import_array()

cdef extern from "fwb_omp.h" nogil:
    int omp_get_max_threads()

cdef extern from "numpy/arrayobject.h":
    object PyArray_MatrixProduct2(object, object, cnp.ndarray)


cdef inline void _gemm(tuple args) except *:
    """np.dot(a, b, out=out) for args = (a, b, out), made once."""
    PyArray_MatrixProduct2(args[0], args[1], <cnp.ndarray>args[2])


cdef inline void *_data(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


# ---------------------------------------------------------------------------
# Plan: dense stages (GEMM, bias + activation, dropout), batch-norm stages
# (statistics, normalise + scale + shift + activate + drop in one kernel),
# activation and dropout stages on their own, and the loss kernel (tested
# bit for bit against the same kernels called one by one from Python, in
# tests/test_engine_plan.py).  Every array and every transposed view is made
# once, in __init__, by the caller (one Plan per workspace, i.e. per batch
# size); a call allocates no array, apart from the transposed view of a new
# input X that the first layer's weight gradient needs (kept while the same
# X object comes back, as fit's gathered batch does).
# ---------------------------------------------------------------------------

cdef enum:
    _DENSE = 0
    _BN = 1
    _ACT = 2
    _DROPOUT = 3

cdef enum:
    _XENT = 0
    _MSE = 1
    _BCE = 2

_KINDS = {"dense": _DENSE, "bn": _BN, "act": _ACT, "dropout": _DROPOUT}
_LOSSES = {"cross_entropy": _XENT, "mse": _MSE, "bce_with_logits": _BCE}


cdef inline void *_ptr(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class _PlanStage:
    """One fused stage of a Plan: its arrays (kept alive here), their data
    pointers, its transposed views and its scalars."""
    cdef int kind, code, nt_act, nt_col, nt_drop, nt_bn, nt_fwd, nt_dw, nt_dx, track, nbt_index, cumulative
    # grads: the stage's parameters are trained (else frozen: no weight gradients);
    # frozen: a BatchNorm's running statistics are frozen (used in training too, not updated)
    cdef bint grads, frozen
    cdef double alpha, p, eps, momentum
    cdef unsigned long long seed
    cdef Py_ssize_t w_in, w_out, size
    # arrays (objects: the GEMMs take ndarrays; also keep the memory alive)
    cdef object out, outT, pre, grad_in, work, weight, weightT, dweight
    # a dense stage's GEMM arguments (a, b, out), [0] in eval mode, [1] in training (dropout
    # changes where the forward writes and which gradient the backward reads): dst and gin
    # are those (out, gradient) pairs; fwd and dw also name the stage's input, which for
    # stage 0 is X (set by _bind_x for each call's X)
    cdef tuple dst, gin, fwd, dw, gx
    cdef object bias, dbias, gamma, beta, dgamma, dbeta, rmean, rvar, mean, invstd
    # their data
    cdef void *p_out
    cdef void *p_weight
    cdef void *p_dweight
    cdef void *p_pre
    cdef void *p_grad_in
    cdef void *p_work
    cdef void *p_bias
    cdef void *p_dbias
    cdef void *p_gamma
    cdef void *p_beta
    cdef void *p_dgamma
    cdef void *p_dbeta
    cdef void *p_rmean
    cdef void *p_rvar
    cdef void *p_mean
    cdef void *p_invstd


def _array(d, key, shape, dtype, k, optional=False):
    a = d.get(key)
    if a is None:
        if optional:
            return None
        raise ValueError(f"stage {k}: {key!r} is missing")
    if not isinstance(a, cnp.ndarray) or a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous \
            or not a.flags.writeable or not a.flags.aligned:
        got = f"{a.dtype} {a.shape}" if isinstance(a, cnp.ndarray) else type(a).__name__
        raise ValueError(f"stage {k}: {key!r} must be a writable C-contiguous {dtype} array of shape {shape}, "
                         f"got {got}")
    return a


# ---------------------------------------------------------------------------
# Thread choice by measurement.  Each plan times its own calls (forward and
# step apart) and keeps a running mean for its planned thread counts
# ("parallel") and for one thread ("serial").  The first calls measure both;
# afterwards the other choice is tried again (two calls) after `interval`
# calls (8, doubling up to 1024 while it keeps losing), and at once when
# three calls among the last few take more than three times what the choice
# took when it was made (the machine got busy).  A
# busy machine makes every parallel region wait for its slowest thread, so
# the plan falls back to one thread there, and returns to its planned counts
# when they win again.  Results never depend on the choice (tiles are fixed
# by the shape, reductions are ordered).
# ---------------------------------------------------------------------------

cdef extern from *:
    """
    #include <time.h>
    static double fwb_engine_now(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    """
    double fwb_engine_now() nogil

cdef enum:
    _WARMUP = 1             # first calls not timed (page faults, thread start)
    _TRY_CALLS = 2          # calls of the other choice per try
    _FIRST_INTERVAL = 8
    _MAX_INTERVAL = 1024

cdef struct _Chooser:
    double est[2]           # mean seconds per call: [parallel, serial] (0: not measured yet)
    double ref              # the choice's estimate when it was made: slowness is judged against it
    int mode                # 0 parallel, 1 serial: the choice in use
    int trying              # calls of the other choice still to run in this try
    int interval, slow
    long long calls, next_try


cdef void _chooser_reset(_Chooser *c) noexcept nogil:
    c.est[0] = c.est[1] = c.ref = 0.0
    c.mode = 0
    c.trying = 0
    c.interval = _FIRST_INTERVAL
    c.slow = 0
    c.calls = 0
    c.next_try = _WARMUP + 2       # two parallel calls, then two serial ones, then decide


cdef inline int _chooser_use(_Chooser *c) noexcept nogil:
    """The choice for this call (0 parallel, 1 serial)."""
    if c.trying == 0 and c.calls >= c.next_try:
        c.trying = _TRY_CALLS
        c.est[1 - c.mode] = 0.0         # a fresh measurement: the old one is stale
    return 1 - c.mode if c.trying else c.mode


cdef void _chooser_observe(_Chooser *c, int used, double seconds) noexcept nogil:
    """Record a call's time and settle the choice."""
    c.calls += 1
    if c.calls <= _WARMUP:
        return
    if c.trying and used != c.mode:
        c.est[used] = seconds if c.est[used] == 0.0 else 0.5 * (c.est[used] + seconds)
        c.trying -= 1
        if c.trying == 0:
            if c.est[used] < 0.9 * c.est[c.mode]:
                c.mode = used
                c.interval = _FIRST_INTERVAL
            elif c.interval < _MAX_INTERVAL:
                c.interval *= 2
            c.next_try = c.calls + c.interval
            c.ref = c.est[c.mode]
            c.slow = 0
        return
    # a call of the choice in use: its running mean, and whether calls got far slower
    # than when the choice was made (a busy machine: stalls at every parallel region)
    c.est[used] = seconds if c.est[used] == 0.0 else 0.7 * c.est[used] + 0.3 * seconds
    if c.ref == 0.0:
        c.ref = c.est[used]
    if seconds > 3.0 * c.ref:
        c.slow += 2
        if c.slow >= 6:             # three slow calls, in a row or among a few: try the other now
            c.next_try = c.calls
            c.slow = 0
    elif c.slow > 0:
        c.slow -= 1


cdef dict _chooser_state(_Chooser *c):
    return {"mode": "serial" if c.mode else "parallel", "calls": c.calls,
            "parallel_s": c.est[0] or None, "serial_s": c.est[1] or None}


cdef class ThreadChoice:
    """The same choice for work outside a plan (an optimizer's update, a
    functional GEMM): ``n = choice.threads(planned)`` before the call, then
    ``choice.observe(seconds)`` after it."""
    cdef _Chooser c
    cdef int used

    def __init__(self):
        _chooser_reset(&self.c)
        self.used = -1

    def threads(self, int planned):
        """planned, or 1 when one thread is the choice for this call."""
        if planned <= 1:
            self.used = -1
            return planned
        self.used = _chooser_use(&self.c)
        return 1 if self.used else planned

    def observe(self, double seconds):
        """The time of the call that threads() planned."""
        if self.used >= 0:
            _chooser_observe(&self.c, self.used, seconds)
            self.used = -1

    @property
    def state(self):
        return _chooser_state(&self.c)


cdef class Plan:
    """The compiled forward pass and training step of a fastwb.nn.Sequential
    for one batch size.

    Plan(stages, grad_out, row_loss, loss, nt_loss, nbt)

    stages: one dict per fused stage (see fastwb/nn/plan.py), keys
      kind ("dense" | "bn" | "act" | "dropout"), code, alpha, p, seed,
      out (n, w_out), pre (n, w_out) or None, grad_in (n, w_in), work (n, w_out),
      nt_act, nt_col, nt_drop, nt_bn;
      dense: weight (w_in, w_out), bias (w_out,) or None, dweight (w_in, w_out),
      dbias (w_out,) (a scratch vector when bias is None);
      bn: gamma, beta, dgamma, dbeta (or None: affine=False), running_mean,
      running_var (or None: not tracking), mean, invstd (w_out,), eps, momentum
      (None: cumulative average), track, nbt_index (-1 when not tracking).
    grad_out (n, out_features): the loss gradient; row_loss: float64 (n,)
    workspace; loss: "cross_entropy" | "mse" | "bce_with_logits"; nt_loss: the
    loss kernel's threads; nbt: the model's int64 num_batches_tracked;
    pinned_x: the one input array (fit's gathered batch) whose GEMM arguments
    are kept between calls; for any other X they are made per call and
    dropped at its end, so the plan never keeps a caller's array alive.
    threads: None, or a function called at the start of every call that
    returns the most threads the call may use (every planned count above it
    is lowered to it: the user's thread setting now, 1 in a forked child).
    A forward-only plan (inference) has grad_in, work, dweight, dbias (and
    pre) None in every stage: its gradients() raises RuntimeError.

    Arrays are checked here, once; forward / gradients trust their X (C-
    contiguous (n, in_features), the model's dtype) and y (intp labels (n,)
    for cross_entropy, else the model's dtype shaped like the output).  Not
    thread-safe: one Plan per thread."""
    cdef list stages
    cdef int L, loss_kind, nt_loss, typenum
    cdef int first_live         # the first stage with trained parameters (L: none)
    cdef bint f64, forward_only
    cdef readonly int limit     # this call's thread count (0: none), from threads_fn at each call
    cdef object threads_fn
    cdef bint parallel          # some kernel or GEMM is planned on more than one thread
    cdef _Chooser choose_fwd, choose_step
    cdef Py_ssize_t n, w_first, w_last
    cdef object grad_out, row_loss, nbt, last_out
    cdef object x_last, pinned_x
    cdef long long *p_nbt

    def __init__(self, stages, grad_out, row_loss, loss, int nt_loss, nbt, pinned_x=None, threads=None):
        cdef _PlanStage s
        cdef Py_ssize_t n, w_in, w_out, k
        stages = list(stages)
        if not stages:
            raise ValueError("a Plan needs at least one stage")
        if loss not in _LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid names are {', '.join(_LOSSES)}")
        first = stages[0]["out"]
        if not isinstance(first, cnp.ndarray) or first.ndim != 2 or first.dtype not in (np.float32, np.float64):
            raise ValueError("stage 0: 'out' must be a float32 or float64 (n, width) array")
        dt = first.dtype
        n = first.shape[0]
        if n < 1:
            raise ValueError("a Plan needs a batch of at least one row")
        nbt = np.asarray(nbt)
        if nbt.dtype != np.int64 or nbt.ndim != 1 or not nbt.flags.c_contiguous or not nbt.flags.writeable:
            raise ValueError("nbt must be a writable C-contiguous 1-d int64 array")
        self.stages = []
        self.forward_only = stages[0].get("grad_in") is None
        w_in = -1
        for k, d in enumerate(stages):
            s = _PlanStage()
            kind = d["kind"]
            if kind not in _KINDS:
                raise ValueError(f"stage {k}: unknown kind {kind!r}")
            s.kind = _KINDS[kind]
            s.code = int(d["code"])
            if not 0 <= s.code <= 4:
                raise ValueError(f"stage {k}: unknown activation code {s.code}")
            s.alpha = float(d["alpha"])
            s.p = float(d["p"])
            if not 0.0 <= s.p < 1.0:
                raise ValueError(f"stage {k}: dropout probability {s.p} is not in [0, 1)")
            s.seed = int(d["seed"])
            s.grads = bool(d.get("grads", True))
            s.frozen = bool(d.get("frozen", False))
            for name in ("nt_act", "nt_col", "nt_drop", "nt_bn"):
                if int(d[name]) < 1:
                    raise ValueError(f"stage {k}: {name} must be >= 1")
            s.nt_act, s.nt_col, s.nt_drop, s.nt_bn = int(d["nt_act"]), int(d["nt_col"]), int(d["nt_drop"]), \
                int(d["nt_bn"])
            # a dense stage's GEMM threads: forward, weight gradient, input gradient
            s.nt_fwd, s.nt_dw, s.nt_dx = (int(d.get(name, 1)) for name in ("nt_fwd", "nt_dw", "nt_dx"))
            if min(s.nt_fwd, s.nt_dw, s.nt_dx) < 1:
                raise ValueError(f"stage {k}: GEMM thread counts must be >= 1")
            out = d["out"]
            if not isinstance(out, cnp.ndarray) or out.ndim != 2:
                raise ValueError(f"stage {k}: 'out' must be a 2-d array")
            w_out = out.shape[1]
            if s.kind == _DENSE:
                wt = d["weight"]
                if not isinstance(wt, cnp.ndarray) or wt.ndim != 2:
                    raise ValueError(f"stage {k}: 'weight' must be a 2-d array")
                w = wt.shape[0]
            else:
                w = w_out
            if w_in >= 0 and w != w_in:
                raise ValueError(f"stage {k} takes {w} features but stage {k - 1} gives {w_in}")
            s.w_in, s.w_out, s.size = w, w_out, n * w_out
            s.out = _array(d, "out", (n, w_out), dt, k)
            s.outT = s.out.T
            s.grad_in = _array(d, "grad_in", (n, w), dt, k, optional=self.forward_only)
            s.work = _array(d, "work", (n, w_out), dt, k, optional=self.forward_only)
            if self.forward_only and (s.grad_in is not None or s.work is not None):
                raise ValueError(f"stage {k}: a forward-only plan (no grad_in in stage 0) has no grad_in or work")
            s.pre = _array(d, "pre", (n, w_out), dt, k, optional=True)
            if s.p and s.kind in (_DENSE, _ACT) and s.pre is None and not self.forward_only:
                raise ValueError(f"stage {k}: a {kind} stage with dropout needs 'pre'")
            if s.kind == _DENSE:
                s.weight = _array(d, "weight", (w, w_out), dt, k)
                s.weightT = s.weight.T
                s.dweight = _array(d, "dweight", (w, w_out), dt, k, optional=self.forward_only)
                s.bias = _array(d, "bias", (w_out,), dt, k, optional=True)
                s.dbias = _array(d, "dbias", (w_out,), dt, k, optional=self.forward_only)
            elif s.kind == _BN:
                s.gamma = _array(d, "gamma", (w_out,), dt, k, optional=True)
                s.beta = _array(d, "beta", (w_out,), dt, k, optional=(s.gamma is None))
                s.dgamma = _array(d, "dgamma", (w_out,), dt, k, optional=(s.gamma is None))
                s.dbeta = _array(d, "dbeta", (w_out,), dt, k, optional=(s.gamma is None))
                if s.gamma is None and not (s.beta is None and s.dgamma is None and s.dbeta is None):
                    raise ValueError(f"stage {k}: gamma, beta, dgamma and dbeta are all given or all None")
                s.mean = _array(d, "mean", (w_out,), dt, k)
                s.invstd = _array(d, "invstd", (w_out,), dt, k)
                s.eps = float(d["eps"])
                s.track = bool(d["track"])
                if s.frozen and not s.track:
                    raise ValueError(f"stage {k}: a BatchNorm without running statistics cannot freeze them")
                s.nbt_index = int(d["nbt_index"]) if s.track else -1
                if s.track:
                    s.rmean = _array(d, "running_mean", (w_out,), dt, k)
                    s.rvar = _array(d, "running_var", (w_out,), dt, k)
                    if not 0 <= s.nbt_index < nbt.shape[0]:
                        raise ValueError(f"stage {k}: nbt_index {s.nbt_index} is outside nbt "
                                         f"({nbt.shape[0]} entries)")
                mom = d["momentum"]
                s.cumulative = mom is None
                s.momentum = 0.0 if mom is None else float(mom)
            elif w != w_out:
                raise ValueError(f"stage {k}: an {kind} stage keeps the width, got {w} -> {w_out}")
            s.p_out, s.p_pre, s.p_grad_in, s.p_work = _ptr(s.out), _ptr(s.pre), _ptr(s.grad_in), _ptr(s.work)
            s.p_bias, s.p_dbias = _ptr(s.bias), _ptr(s.dbias)
            s.p_weight, s.p_dweight = _ptr(s.weight), _ptr(s.dweight)
            s.p_gamma, s.p_beta, s.p_dgamma, s.p_dbeta = _ptr(s.gamma), _ptr(s.beta), _ptr(s.dgamma), _ptr(s.dbeta)
            s.p_rmean, s.p_rvar, s.p_mean, s.p_invstd = _ptr(s.rmean), _ptr(s.rvar), _ptr(s.mean), _ptr(s.invstd)
            self.stages.append(s)
            w_in = w_out
        self.L = len(self.stages)
        self.first_live = next((k for k in range(self.L) if (<_PlanStage>self.stages[k]).grads
                                and (<_PlanStage>self.stages[k]).kind in (_DENSE, _BN)), self.L)
        self.n = n
        self.w_first = (<_PlanStage>self.stages[0]).w_in
        self.typenum = cnp.NPY_DOUBLE if dt == np.float64 else cnp.NPY_FLOAT
        self.w_last = w_in
        self.f64 = dt == np.float64
        self.grad_out = _array({"grad_out": grad_out}, "grad_out", (n, w_in), dt, self.L - 1)
        self.row_loss = _array({"row_loss": row_loss}, "row_loss", (n,), np.float64, self.L - 1)
        self.loss_kind = _LOSSES[loss]
        if nt_loss < 1:
            raise ValueError("nt_loss must be >= 1")
        self.nt_loss = nt_loss
        self.nbt = nbt
        self.p_nbt = <long long *>_ptr(nbt)
        self.last_out = (<_PlanStage>self.stages[self.L - 1]).out
        self.x_last = None
        self.pinned_x = pinned_x
        self.threads_fn = threads
        self.limit = 0
        _chooser_reset(&self.choose_fwd)
        _chooser_reset(&self.choose_step)
        self.parallel = nt_loss > 1 or any(
            max((<_PlanStage>st).nt_act, (<_PlanStage>st).nt_col, (<_PlanStage>st).nt_drop, (<_PlanStage>st).nt_bn,
                (<_PlanStage>st).nt_fwd, (<_PlanStage>st).nt_dw, (<_PlanStage>st).nt_dx) > 1 for st in self.stages)
        # the GEMMs' argument tuples
        for k in range(self.L):
            s = <_PlanStage>self.stages[k]
            if s.kind != _DENSE:
                continue
            g_in = self.grad_out if k == self.L - 1 else (<_PlanStage>self.stages[k + 1]).grad_in
            s.gin = (g_in, s.work if s.p else g_in)      # the gradient the GEMMs read, eval / training
            s.dst = (s.out, s.pre if s.p else s.out)    # where the forward GEMM writes, eval / training
            if k > 0:
                prev = <_PlanStage>self.stages[k - 1]
                _set_input(s, prev.out, prev.outT, not self.forward_only)
            if not self.forward_only:
                s.gx = ((s.gin[0], s.weightT, s.grad_in), (s.gin[1], s.weightT, s.grad_in))

    def forward(self, X, bint training, unsigned long long step):
        """Output of the batch X (a view of the last stage's output buffer): in
        training, batch statistics (running statistics and num_batches_tracked
        updated) and dropout with the masks of `step`."""
        _check_x(self, X)
        if training and self.forward_only:
            raise RuntimeError("a forward-only plan runs in inference mode only")
        cdef int used = _set_limit(self, &self.choose_fwd)
        cdef double t0 = fwb_engine_now()
        cdef bint tiled
        blas_enter()                    # from here the BLAS cannot be unbound: ready() holds for the call
        try:
            tiled = ready()
            if not tiled:
                _bind_x(self, X)
            if self.f64:
                _plan_forward(self, X, training, step, tiled, <double>0)
            else:
                _plan_forward(self, X, training, step, tiled, <float>0)
        finally:
            blas_exit()
            _release_x(self, X)
        if used >= 0:
            _chooser_observe(&self.choose_fwd, used, fwb_engine_now() - t0)
        return self.last_out

    def gradients(self, X, y, bint training, unsigned long long step, bint weights=True,
                  bint input_gradient=False):
        """Forward, mean loss against y, backward from its gradient: parameter
        gradients unless `weights` is False, the input gradient into stage 0's
        grad_in when `input_gradient`.  Returns the mean loss."""
        if self.forward_only:
            raise RuntimeError("a forward-only plan has no backward pass")
        _check_x(self, X)
        _check_y(self, y)
        return _run_backward(self, X, y, training, step, weights, input_gradient, False, True)

    def backward_from(self, X, G, bint training, unsigned long long step, bint weights=False,
                      bint forward=True):
        """Forward, then backward from the output gradient G (n, w_last) instead of
        a loss's: the input gradient into stage 0's grad_in, and the parameter
        gradients of sum(G * output) when `weights`.  G is copied first (it may
        be any array of the plan's dtype and shape; the plan's last output too).
        `forward=False`: the caller has just run forward(X, training, step) on
        this plan, and its stage outputs are used as they are."""
        if self.forward_only:
            raise RuntimeError("a forward-only plan has no backward pass")
        _check_x(self, X)
        G = np.asarray(G)
        if G.dtype != self.grad_out.dtype or G.shape != self.grad_out.shape:
            raise ValueError(f"the output gradient must be {self.grad_out.dtype}{self.grad_out.shape}, "
                             f"got {G.dtype}{G.shape}")
        self.grad_out[...] = G
        _run_backward(self, X, None, training, step, weights, True, True, forward)

    @property
    def choice(self):
        """How the plan's thread choice stands: for "forward" and "step", the
        choice in use ("parallel" or "serial") and the estimates (seconds per
        call, None until measured)."""
        return {"forward": _chooser_state(&self.choose_fwd), "step": _chooser_state(&self.choose_step)}

    def _next(self, str which):
        """The choice a call would run now, 0 parallel or 1 serial (tests of the rule)."""
        return _chooser_use(&self.choose_fwd if which == "forward" else &self.choose_step)

    def _observe(self, str which, int used, double seconds):
        """Feed one call's time, run with choice `used`, to a chooser (tests of the rule)."""
        _chooser_observe(&self.choose_fwd if which == "forward" else &self.choose_step, used, seconds)


cdef double _run_backward(Plan P, object X, object y, bint training, unsigned long long step, bint weights,
                          bint input_gradient, bint seeded, bint forward) except? -1.0:
    """A checked training call: this call's thread limit, the BLAS pool held at one
    thread, the tiled or np.dot path, and the step's time for the thread choice."""
    cdef int used = _set_limit(P, &P.choose_step)
    cdef double t0 = fwb_engine_now(), loss
    cdef bint tiled
    blas_enter()
    try:
        tiled = ready()
        if not tiled:
            _bind_x(P, X)
        if P.f64:
            loss = _plan_gradients(P, X, y, training, step, weights, input_gradient, tiled, seeded, forward,
                                   <double>0)
        else:
            loss = _plan_gradients(P, X, y, training, step, weights, input_gradient, tiled, seeded, forward,
                                   <float>0)
    finally:
        blas_exit()
        _release_x(P, X)
    if used >= 0:
        _chooser_observe(&P.choose_step, used, fwb_engine_now() - t0)
    return loss


cdef inline bint _is_block(object a, int typenum, Py_ssize_t rows, Py_ssize_t cols):
    """a is a C-contiguous, aligned ndarray of type typenum and shape (rows, cols), or (rows,) for cols < 0."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        return False
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr):
        return False
    if cols < 0:
        return cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_DIM(arr, 0) == rows
    return cnp.PyArray_NDIM(arr) == 2 and cnp.PyArray_DIM(arr, 0) == rows and cnp.PyArray_DIM(arr, 1) == cols


cdef void _set_input(_PlanStage s, object a, object aT, bint backward):
    """A dense stage's forward and weight-gradient GEMM arguments for its input a (a.T: aT)."""
    s.fwd = ((a, s.weight, s.dst[0]), (a, s.weight, s.dst[1]))
    s.dw = ((aT, s.gin[0], s.dweight), (aT, s.gin[1], s.dweight)) if backward else None


cdef int _bind_x(Plan P, object X) except -1:
    """Stage 0's GEMM arguments for the input X (remade only when another X object comes)."""
    cdef _PlanStage s = <_PlanStage>P.stages[0]
    if X is P.x_last:
        return 0
    P.x_last = X
    if s.kind == _DENSE:
        _set_input(s, X, X.T, not P.forward_only)
    return 0


cdef inline void _release_x(Plan P, object X):
    """Forget X unless it is the pinned input: the plan keeps no caller's array alive."""
    cdef _PlanStage s = <_PlanStage>P.stages[0]
    if X is not P.pinned_x:
        P.x_last = None
        s.fwd = s.dw = None


cdef int _check_x(Plan P, object X) except -1:
    # a few C tests against a crash from a wrong argument; the caller has
    # already validated X with messages in the user's words
    if not _is_block(X, P.typenum, P.n, P.w_first):
        raise ValueError(f"X must be a C-contiguous {'float64' if P.f64 else 'float32'} array of shape "
                         f"({P.n}, {P.w_first})")
    return 0


cdef int _check_y(Plan P, object y) except -1:
    if P.loss_kind == _XENT:
        if not _is_block(y, cnp.NPY_INTP, P.n, -1):
            raise ValueError(f"y must be a C-contiguous intp array of shape ({P.n},)")
    elif not _is_block(y, P.typenum, P.n, P.w_last):
        raise ValueError(f"y must be a C-contiguous {'float64' if P.f64 else 'float32'} array of shape "
                         f"({P.n}, {P.w_last})")
    return 0


cdef inline int _nt(Plan P, int nt) noexcept nogil:
    """A kernel's planned thread count, lowered to this call's limit."""
    return P.limit if 0 < P.limit < nt else nt


# True where the OpenMP runtime's count is not the whole rule (a forked child, a
# budget cap over a runtime loaded before fastwb: fastwb/_runtime.py says so);
# then each call asks the plan's threads function instead of the runtime.
cdef bint _python_rule = False


def use_python_thread_rule(bint on):
    """Make plans ask their threads function at every call (True) or read the
    OpenMP runtime's thread count directly (False, the common case: ~20 ns)."""
    global _python_rule
    _python_rule = on


cdef int _set_limit(Plan P, _Chooser *c) except -2:
    """This call's thread limit: the thread setting now, lowered to one when the
    chooser says so.  Returns the chooser's choice (-1: no choice to make)."""
    cdef int n, used
    if P.threads_fn is None:
        P.limit = 0
        return -1
    n = P.threads_fn() if _python_rule else omp_get_max_threads()
    if n <= 1 or not P.parallel:
        P.limit = 1 if n <= 1 else n
        return -1
    used = _chooser_use(c)
    P.limit = 1 if used else n
    return used


cdef void _plan_forward(Plan P, object X, bint training, unsigned long long step, bint tiled, floating kind):
    """The forward pass; `tiled`: fastwb's tiled GEMMs (else np.dot over the tuples of _bind_x)."""
    cdef _PlanStage s
    cdef Py_ssize_t k, n = P.n, m, size
    cdef Epilogue epi
    cdef const floating *x = <const floating *>_data(X)
    cdef floating *y
    cdef floating *out
    cdef double p, factor
    cdef bint batch_stats
    cdef long long *nbt
    for k in range(P.L):
        s = <_PlanStage>P.stages[k]
        p = s.p if training else 0.0
        m = s.w_out
        size = s.size
        out = <floating *>s.p_out
        if s.kind == _DENSE:
            y = <floating *>s.p_pre if p else out
            if tiled:       # y = act(x @ W + b), bias and activation per tile
                epi.kind = EPI_BIAS_ACT if s.p_bias != NULL or s.code else EPI_NONE
                epi.act, epi.alpha, epi.bias = s.code, s.alpha, s.p_bias
                with nogil:
                    tiled_gemm(False, False, n, m, s.w_in, x, s.w_in, <const floating *>s.p_weight, m, y, &epi,
                               _nt(P, s.nt_fwd))
            else:
                _gemm(<tuple>s.fwd[1 if p else 0])
                if s.p_bias != NULL or s.code:
                    with nogil:
                        bias_act_2d(<const floating *>y, <const floating *>s.p_bias, y, n, m, s.code, s.alpha,
                                    _nt(P, s.nt_act))
            if p:
                with nogil:
                    dropout_1d(<const floating *>y, out, size, 0, p, s.seed, step, _nt(P, s.nt_drop))
        elif s.kind == _BN:
            batch_stats = (training and not s.frozen) or not s.track
            factor = 0.0
            if training and s.track and not s.frozen:
                nbt = P.p_nbt + s.nbt_index
                nbt[0] += 1
                factor = 1.0 / <double>nbt[0] if s.cumulative else s.momentum
            with nogil:
                bn_forward_2d(x, out, n, m, <floating *>s.p_mean, <floating *>s.p_invstd,
                              <const floating *>s.p_gamma, <const floating *>s.p_beta,
                              <floating *>s.p_rmean, <floating *>s.p_rvar, factor, s.eps, batch_stats,
                              s.code, s.alpha, p, s.seed, step, _nt(P, s.nt_bn))
        elif s.kind == _ACT:
            y = <floating *>s.p_pre if p else out
            with nogil:
                act_1d(x, y, size, s.code, s.alpha, _nt(P, s.nt_act))
                if p:
                    dropout_1d(<const floating *>y, out, size, 0, p, s.seed, step, _nt(P, s.nt_drop))
        elif p:
            with nogil:
                dropout_1d(x, out, size, 0, p, s.seed, step, _nt(P, s.nt_drop))
        else:
            with nogil:
                memcpy(out, x, size * sizeof(floating))
        x = <const floating *>out


cdef double _plan_gradients(Plan P, object X, object y, bint training, unsigned long long step, bint weights,
                            bint input_gradient, bint tiled, bint seeded, bint forward, floating kind):
    # seeded: grad_out already holds the output gradient (no loss; returns 0);
    # forward False: the stage outputs are those of the forward call just made
    cdef _PlanStage s, prev
    cdef Py_ssize_t k, n = P.n, m = P.w_last, size
    cdef double loss, p
    cdef floating *g
    cdef floating *gx
    cdef const floating *x
    cdef const floating *a
    cdef const floating *z
    cdef floating *grad
    cdef double *row_loss = <double *>_data(P.row_loss)
    cdef const void *target = _data(y) if y is not None else NULL
    cdef bint batch_stats, fused = False, fuse, train_w
    cdef Epilogue epi
    # stages before the first trained one need no backward pass, unless the input's gradient is wanted
    cdef int stop = 0 if input_gradient else P.first_live
    if forward:
        _plan_forward(P, X, training, step, tiled, kind)
    z = <const floating *>(<_PlanStage>P.stages[P.L - 1]).p_out
    grad = <floating *>_data(P.grad_out)
    loss = 0.0
    with nogil:
        if seeded:
            pass
        elif P.loss_kind == _XENT:
            loss = xent_2d(z, <const Py_ssize_t *>target, grad, row_loss, n, m, _nt(P, P.nt_loss))
        elif P.loss_kind == _MSE:
            loss = mse_2d(z, <const floating *>target, grad, row_loss, n, m, _nt(P, P.nt_loss))
        else:
            loss = bce_logits_2d(z, <const floating *>target, <const floating *>NULL, grad, row_loss, n, m,
                                 _nt(P, P.nt_loss))
    g = grad
    for k in range(P.L - 1, stop - 1, -1):
        s = <_PlanStage>P.stages[k]
        train_w = weights and s.grads
        p = s.p if training else 0.0
        m = s.w_out
        size = s.size
        x = <const floating *>(_data(X) if k == 0 else (<_PlanStage>P.stages[k - 1]).p_out)
        gx = <floating *>s.p_grad_in
        if p and (s.kind == _DENSE or s.kind == _ACT):
            # the stage's own dropout first (mask recomputed), then its activation's derivative
            with nogil:
                dropout_1d(<const floating *>g, <floating *>s.p_work, size, 0, p, s.seed, step, _nt(P, s.nt_drop))
            g = <floating *>s.p_work
        a = <const floating *>(s.p_pre if p else s.p_out)
        if s.kind == _DENSE:
            # the activation derivative and bias gradient, unless the next stage's input-gradient GEMM
            # already applied them to each of its tiles (fused)
            if not fused:
                with nogil:
                    if train_w and s.code:
                        act_grad_colsum_2d(<const floating *>g, a, g, <floating *>s.p_dbias, n, m, s.code,
                                           s.alpha, _nt(P, s.nt_col))
                    elif train_w:
                        colsum_2d(<const floating *>g, <floating *>s.p_dbias, n, m, _nt(P, s.nt_col))
                    elif s.code:
                        act_grad_1d(<const floating *>g, a, g, size, s.code, s.alpha, _nt(P, s.nt_act))
            fused = False
            if train_w:     # dW = x.T @ g
                if tiled:
                    with nogil:
                        tiled_gemm(True, False, s.w_in, m, n, x, s.w_in, <const floating *>g, m,
                                   <floating *>s.p_dweight, NULL, _nt(P, s.nt_dw))
                else:
                    _gemm(<tuple>s.dw[1 if p else 0])
            if k > stop or input_gradient:     # dx = g @ W.T
                if tiled:
                    # a dense stage before this one without dropout in this pass: its activation
                    # derivative and bias-gradient column sums run on each tile of dx
                    fuse = k > 0 and (<_PlanStage>P.stages[k - 1]).kind == _DENSE
                    if fuse:
                        prev = <_PlanStage>P.stages[k - 1]
                        fuse = not (training and prev.p)
                    epi.kind = EPI_NONE
                    if fuse:
                        epi.act, epi.alpha, epi.y, epi.sums = prev.code, prev.alpha, prev.p_out, prev.p_dbias
                        epi.kind = EPI_ACT_GRAD_COLSUM if weights and prev.grads else (
                            EPI_ACT_GRAD if prev.code else EPI_NONE)
                    with nogil:
                        tiled_gemm(False, True, n, s.w_in, m, <const floating *>g, m,
                                   <const floating *>s.p_weight, m, gx, &epi, _nt(P, s.nt_dx))
                    fused = fuse
                else:
                    _gemm(<tuple>s.gx[1 if p else 0])
        elif s.kind == _BN:
            batch_stats = (training and not s.frozen) or not s.track
            with nogil:
                bn_backward_2d(<const floating *>g, x, <floating *>s.p_work, gx, n, m,
                               <const floating *>s.p_mean, <const floating *>s.p_invstd,
                               <const floating *>s.p_gamma, <const floating *>s.p_beta,
                               <floating *>s.p_dgamma if train_w else NULL,
                               <floating *>s.p_dbeta if train_w else NULL,
                               batch_stats, s.code, s.alpha, p, s.seed, step, _nt(P, s.nt_bn))
        elif s.kind == _ACT:
            with nogil:
                act_grad_1d(<const floating *>g, a, gx, size, s.code, s.alpha, _nt(P, s.nt_act))
        elif p:
            with nogil:
                dropout_1d(<const floating *>g, gx, size, 0, p, s.seed, step, _nt(P, s.nt_drop))
        else:
            with nogil:
                memcpy(gx, g, size * sizeof(floating))
        g = gx
    return loss
