"""How a :class:`~fastwb.nn.Sequential` runs: its fused stages, the workspaces
of one batch size, and the rules that keep one model safe across threads and
forks.

Stages.  The layers are grouped into stages that each run as one fused kernel
call forward and one backward:

* ``Linear`` [-> activation] [-> ``Dropout``]: a GEMM, one bias + activation
  pass, one dropout pass;
* ``BatchNorm1d`` [-> activation] [-> ``Dropout``]: one column-statistics
  pass and one pass that normalises, scales, shifts, activates and drops;
  backward in two passes with the dropout mask recomputed;
* an activation or a ``Dropout`` on its own.

Workspaces.  A :class:`Workspace` holds every array one batch size needs
and the thread count of every kernel call, made once; a training step then
allocates nothing.  Training keeps the workspaces of its last few batch sizes
(``TRAIN_SIZES``: fit's batch, an epoch's last smaller batch, one more);
inference takes workspaces from a :class:`WorkspacePool`, so that any number
of threads can run inference on one model at once without sharing arrays,
in bounded memory.

Threads and processes.  Training methods are wrapped in :func:`trains`: a
second training call on one model while one runs raises ``RuntimeError``
instead of corrupting the one gradient buffer.  Every live model is in
``MODELS``; a forked child gives each fresh workspaces and a free guard (the
parent's locks may be held by threads that do not exist in the child, and
its thread counts were planned for the parent).
"""

import functools
import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

from fastwb import _engine
from fastwb._runtime import GRAIN_COMPUTE, GRAIN_MEMORY, call_threads, default_threads, gemm_threads, plan_threads
from fastwb._validate import ACTIVATIONS
from fastwb.nn.layers import BatchNorm1d, Dropout, Linear, _Activation

__all__ = ["Stage", "stages", "Workspace", "WorkspacePool", "MODELS", "trains",
           "TRAIN_SIZES", "INFER_SIZES", "INFER_IDLE"]

#: training workspaces kept per model (batch sizes, least recently used dropped)
TRAIN_SIZES = 3
#: inference batch sizes kept per model, and idle workspaces kept per size
INFER_SIZES = 4
INFER_IDLE = 4

_EXP = (ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"])


class Stage:
    """Consecutive layers that run as one fused call: ``kind`` is "dense",
    "bn", "act" or "dropout"; ``act``/``alpha`` the fused activation;
    ``p`` the fused dropout probability (0: none); ``index`` the position
    of the stage's first layer (its parameters' names); ``layers`` the
    positions of all its layers."""

    def __init__(self, kind, index, layer):
        self.kind, self.index, self.layer = kind, index, layer
        self.act, self.alpha, self.p = "identity", 0.01, 0.0
        self.layers = [index]

    @property
    def code(self):
        """The activation's kernel code (fastwb._validate.ACTIVATIONS)."""
        return ACTIVATIONS[self.act]


def _slope(layer):
    return getattr(layer, "negative_slope", 0.01)


def stages(layers):
    """The fused stages of a list of layers (see the module docstring)."""
    out = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        kind = ("dense" if isinstance(layer, Linear) else "bn" if isinstance(layer, BatchNorm1d)
                else "act" if isinstance(layer, _Activation) else "dropout")
        st = Stage(kind, i, layer)
        i += 1
        nxt = layers[i] if i < len(layers) else None
        if kind == "act":
            st.act, st.alpha = layer.activation, _slope(layer)
        elif kind in ("dense", "bn") and isinstance(nxt, _Activation):
            st.act, st.alpha = nxt.activation, _slope(nxt)
            st.layers.append(i)
            i += 1
        nxt = layers[i] if i < len(layers) else None
        if kind == "dropout":
            st.p = layer.p
        elif isinstance(nxt, Dropout):
            st.p = nxt.p
            st.layers.append(i)
            i += 1
        out.append(st)
    return out


class Workspace:
    """Every array one batch size needs, and the thread count of every kernel
    call, all made once: the plan then calls the kernels on the engine's own
    arrays without checking them again.

    An inference workspace (``training=False``) holds only what a forward
    pass in inference mode writes (stage outputs, batch statistics of a
    BatchNorm that does not track running statistics).

    ``start`` and ``stop`` choose a run of the stages (default: all): the
    plan of a frozen prefix, or of the stages after it (``fit(...,
    cache_frozen=True)``)."""

    def __init__(self, model, n, training=True, start=0, stop=None):
        dt = model.dtype
        self.batch = n
        self.training = training
        self.start, self.stop = start, len(model._plan) if stop is None else stop
        run = range(self.start, self.stop)
        self.out, self.pre, self.grad_in, self.work, self.gb = [], [], [], [], []
        self.mean, self.invstd = [], []
        self.nt_act, self.nt_col, self.nt_drop, self.nt_bn = [], [], [], []
        self.nt_gemm = []       # (forward, weight gradient, input gradient) threads of each stage's GEMMs
        # counts are planned for the most threads this process may use; each call lowers
        # them to the thread setting of the moment (call_threads)
        most = max(default_threads(), call_threads())
        for st, (w_in, w_out) in zip([model._plan[k] for k in run], [model._widths[k] for k in run]):
            self.out.append(np.empty((n, w_out), dt))
            # dense + dropout and act + dropout keep the activation output before the dropout
            keep = training and st.p and st.kind in ("dense", "act")
            self.pre.append(np.empty((n, w_out), dt) if keep else None)
            self.grad_in.append(np.empty((n, w_in), dt) if training else None)
            self.work.append(np.empty((n, w_out), dt) if training else None)
            self.gb.append(np.empty(w_out, dt) if training and st.kind == "dense" and not st.layer.bias else None)
            self.mean.append(np.empty(w_out, dt) if st.kind == "bn" else None)
            self.invstd.append(np.empty(w_out, dt) if st.kind == "bn" else None)
            grain = GRAIN_COMPUTE if st.code in _EXP else GRAIN_MEMORY
            self.nt_act.append(plan_threads(n * w_out, grain, most))
            self.nt_col.append(min(plan_threads(n * w_out, grain, most), max(1, w_out // 16)))
            self.nt_drop.append(plan_threads(n * w_out, GRAIN_MEMORY, most))
            self.nt_bn.append(min(plan_threads(n * w_out, GRAIN_COMPUTE if st.code in _EXP or st.p else GRAIN_MEMORY,
                                               most), max(1, w_out // 16)))
            self.nt_gemm.append((gemm_threads(n, w_out, w_in, most), gemm_threads(w_in, w_out, n, most),
                                 gemm_threads(n, w_in, w_out, most)) if st.kind == "dense" else (1, 1, 1))
        w_first, w_last = model._widths[self.start][0], model._widths[self.stop - 1][1]
        self.grad_out = np.empty((n, w_last), dt)
        self.row_loss = np.empty(n, np.float64)
        self.nt_loss = model.loss.threads(n * w_last, most)
        self.x = np.empty((n, w_first), dt) if training else None     # fit's gathered batch
        self.y = None                                                             # fit's gathered targets
        self.adv = None         # adversarial training: (x_adv, clean gradients), made at its first step
        # the compiled forward pass and step over these arrays (forward only for inference)
        self.plan = _engine.Plan(_stage_dicts(model, self), self.grad_out, self.row_loss, model.loss.name,
                                 self.nt_loss, model.num_batches_tracked, pinned_x=self.x, threads=call_threads)


def _stage_dicts(model, ws):
    """The stages of the compiled plan (:class:`fastwb._engine.Plan`) for ``model``
    and its workspace ``ws``: each stage's kind, activation, dropout, arrays,
    parameters, gradients (None in an inference workspace), running statistics
    and thread counts."""
    out = []
    for k, st in enumerate(model._plan[ws.start:ws.stop]):
        prm, grd, buf = model._params[st.index], model._grads[st.index], model._buffers[st.index]
        d = {"kind": st.kind, "code": st.code, "alpha": float(st.alpha), "p": float(st.p), "seed": model._seed(st),
             "grads": model._stage_trains(st), "frozen": model._stage_stats_frozen(st),
             "out": ws.out[k], "pre": ws.pre[k], "grad_in": ws.grad_in[k], "work": ws.work[k],
             "nt_act": ws.nt_act[k], "nt_col": ws.nt_col[k], "nt_drop": ws.nt_drop[k], "nt_bn": ws.nt_bn[k],
             "nt_fwd": ws.nt_gemm[k][0], "nt_dw": ws.nt_gemm[k][1], "nt_dx": ws.nt_gemm[k][2]}
        if st.kind == "dense":
            d.update(weight=prm["weight"], bias=prm.get("bias"))
            if ws.training:
                d.update(dweight=grd["weight"], dbias=grd["bias"] if "bias" in grd else ws.gb[k])
        elif st.kind == "bn":
            layer = st.layer
            d.update(gamma=prm.get("weight"), beta=prm.get("bias"), dgamma=grd.get("weight"),
                     dbeta=grd.get("bias"), running_mean=buf.get("running_mean"),
                     running_var=buf.get("running_var"), mean=ws.mean[k], invstd=ws.invstd[k], eps=layer.eps,
                     momentum=layer.momentum, track=layer.track_running_stats,
                     nbt_index=model._nbt_index.get(st.index, -1))
        out.append(d)
    return out


class WorkspacePool:
    """Idle inference workspaces of one model, by batch size, shared by all threads.

    :meth:`take` hands a workspace to one caller alone (an idle one of that
    size, or a new one) and :meth:`give` puts it back, so concurrent calls
    never share arrays.  At most ``INFER_SIZES`` sizes are kept (the least
    recently used dropped first), each with at most ``INFER_IDLE`` idle
    workspaces: memory stays bounded whatever the input lengths and thread
    count.  A workspace never given back (an exception) is simply not reused.
    ``make(model, batch)`` makes a new workspace (with a ``batch`` attribute);
    by default a :class:`Workspace` for inference.
    """

    def __init__(self, make=None):
        self._lock = threading.Lock()
        self._idle = OrderedDict()          # batch -> [idle workspaces], least recently used first
        self._make = make

    def take(self, model, batch):
        with self._lock:
            idle = self._idle.get(batch)
            if idle:
                return idle.pop()
        if self._make is not None:
            return self._make(model, batch)
        return Workspace(model, batch, training=False)

    def give(self, ws):
        with self._lock:
            idle = self._idle.get(ws.batch)
            if idle is None:
                idle = self._idle[ws.batch] = []
                if len(self._idle) > INFER_SIZES:
                    self._idle.popitem(last=False)
            else:
                self._idle.move_to_end(ws.batch)
            if len(idle) < INFER_IDLE:
                idle.append(ws)

    def chunks(self, model, n, batch_size):
        """``(start, stop, workspace)`` over ``n`` rows in chunks of ``batch_size``
        rows; each workspace is this caller's alone until the next chunk of
        another size or the end (then it goes back to the pool)."""
        ws = None
        try:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                if ws is None or ws.batch != stop - start:
                    if ws is not None:
                        self.give(ws)
                        ws = None
                    ws = self.take(model, stop - start)
                yield start, stop, ws
        finally:
            if ws is not None:
                self.give(ws)

    def workspaces(self):
        """The idle workspaces (for tests and memory accounting)."""
        with self._lock:
            return [ws for idle in self._idle.values() for ws in idle]


#: every live model, so that a forked child can give each fresh workspaces
MODELS = weakref.WeakSet()


def _fresh_workspaces_after_fork():
    for model in list(MODELS):
        model._fresh_workspaces()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_workspaces_after_fork)


def trains(method):
    """Decorator of a model's training methods: one call at a time per model.

    They all write the model's one gradient buffer (and workspaces, and
    parameters), so a second call while one runs, from another thread (or
    from a callback inside the first), raises RuntimeError instead of
    computing garbage."""
    name = method.__name__

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        lock = self._training_lock       # the one taken is the one released, even if a fork in between
        if not lock.acquire(blocking=False):      # gave the model a fresh lock
            raise RuntimeError(
                f"{type(self).__name__}.{name}: the model is already being trained by another call (train_step, "
                f"fit, gradients or input_gradient, in another thread); training one model from two threads "
                f"at once is not supported: use one model per thread (model.copy()), or a lock of your own")
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()

    return guarded
