r"""Batch normalisation (PyTorch's ``BatchNorm1d`` on ``(n, m)`` batches) fused
with an activation and inverted dropout, and dropout alone.

Like :mod:`fastwb.functional`, every function checks its arguments, allocates
its results (or writes into ``out=``), picks a thread count from the size of
the work and makes one call into a compiled kernel (:mod:`fastwb._norm`).
Each has a pure-NumPy twin of the same name and signature in
:mod:`fastwb.reference.normalization`.

Batch normalisation of a batch ``x`` of shape ``(n, m)`` (statistics per
column, over the rows):

.. math:: z = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta, \qquad
          y = \mathrm{dropout}_p(\mathrm{act}(z))

* training: :math:`\mu` and the *biased* :math:`\sigma^2` of the batch; the
  running statistics (if given) are updated in place with the *unbiased*
  variance, ``r = (1 - momentum) * r + momentum * batch`` (PyTorch's
  convention: Keras' ``momentum`` is the opposite, ``1 - momentum`` here);
  ``momentum=None`` is the cumulative average, ``momentum = 1 /
  num_batches_tracked``.  Dropout is applied only in training.
* eval (``training=False``): the running statistics normalise; no dropout.

Numerics: the batch statistics are shifted sums accumulated in double (the
shift is each column's first element, so there is no cancellation trouble),
in one read of ``x``; ``z`` is computed as ``(x - mean) * (gamma * invstd) +
beta``.  Each thread owns a contiguous range of columns and sums them in row
order, so every result is bitwise identical for any thread count.

Dropout's keep-mask comes from a counter-based generator: element ``i`` (the
flat C-order index) is kept when a stateless 32-bit hash of ``(seed, step,
i)`` is at least ``ceil(p * 2**32)`` (see ``csrc/fwb_norm.h`` for the hash
and its quality).  So the mask is the same for any thread count, is
reproduced from ``(seed, step)`` alone, and the backward passes recompute it
instead of storing it.  Kept elements are scaled by ``1 / (1 - p)`` (inverted
dropout); dropped ones are exactly 0 (also where the input is NaN or Inf).

Thread safety: the functions keep no state; calls on distinct output arrays
may run concurrently.
"""

import numpy as np

from fastwb import _norm
from fastwb._runtime import GRAIN_COMPUTE, GRAIN_MEMORY, plan_threads
from fastwb._validate import (
    ACTIVATIONS,
    activation_code,
    check_int,
    check_real,
    disjoint_outputs,
    float_array,
    out_array,
    same_dtype,
    same_shape,
    unaliased,
)

__all__ = ["batch_norm", "batch_norm_backward", "dropout", "dropout_backward", "dropout_mask"]

_EXP_BASED = (ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"])
_U64 = 1 << 64


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------

def _counter(name, value):
    """A seed or step of the dropout generator: an integer in [0, 2**64)."""
    value = check_int(name, value, minimum=0)
    if value >= _U64:
        raise ValueError(f"{name} must be < 2**64, got {value}")
    return value


def _column_vector(name, a, m):
    """An optional (m,) input vector (copied when not contiguous)."""
    if a is None:
        return None
    a = float_array(name, a, ndim=1)
    if a.shape != (m,):
        raise ValueError(f"{name} has shape {a.shape}, expected ({m},) to match x of {m} columns")
    return a


def _threads(n, m, code, p):
    """Threads for a pass over an (n, m) block split into column ranges of at least 16."""
    grain = GRAIN_COMPUTE if code in _EXP_BASED or p > 0 else GRAIN_MEMORY
    return min(plan_threads(n * m, grain), max(1, m // 16))


def _pair(name, value, what):
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a tuple {what}")
    return value


def _num_batches_tracked(nbt):
    if not isinstance(nbt, np.ndarray):
        raise TypeError(f"num_batches_tracked must be a 1-element int64 NumPy array, got {type(nbt).__name__}")
    if nbt.dtype != np.int64 or nbt.size != 1:
        raise ValueError(f"num_batches_tracked must be a 1-element int64 array, got dtype {nbt.dtype} "
                         f"and shape {nbt.shape}")
    if not nbt.flags.writeable:
        raise ValueError("num_batches_tracked is read-only (it is incremented in place)")
    if int(nbt.reshape(-1)[0]) < 0:
        raise ValueError(f"num_batches_tracked must be >= 0, got {int(nbt.reshape(-1)[0])}")
    return nbt


# ---------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------

def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5,
               num_batches_tracked=None, activation="identity", alpha=0.01, dropout=0.0, seed=0, step=0,
               out=None, stats=None):
    r"""BatchNorm1d forward pass fused with an activation and dropout.
    Returns ``(y, mean, invstd)``.

    .. math:: y = \mathrm{dropout}_p\big(\mathrm{act}((x - \mu)\,\gamma\,/\sqrt{\sigma^2 + \epsilon} + \beta)\big)

    Parameters
    ----------
    x : (n, m) float32 or float64 array
    gamma, beta : (m,) arrays of the same dtype, or None (scale 1, shift 0:
        ``affine=False``)
    running_mean, running_var : (m,) arrays, or None for both (no running
        statistics).  Training updates them in place (C-contiguous, writable):
        ``r = (1 - momentum) * r + momentum * batch``, with the unbiased batch
        variance (``n / (n - 1)`` times the biased one).  Eval mode reads them.
    training : bool.  True: normalise with the batch statistics (the biased
        variance); a batch of fewer than 2 rows is a ValueError, as in
        PyTorch.  False: normalise with the running statistics (required).
    momentum : float in [0, 1], or None for a cumulative moving average
        (factor ``1 / num_batches_tracked`` after its increment)
    eps : float >= 0 added to the variance
    num_batches_tracked : optional 1-element int64 array; each training call
        adds 1 to it in place (as PyTorch's module does); required when
        ``momentum`` is None and running statistics are given
    activation, alpha : the activation applied after the shift (names of
        :func:`fastwb.linear`) and leaky ReLU's slope
    dropout : probability p in [0, 1) of inverted dropout after the activation,
        applied only in training; the mask is :func:`dropout_mask` ``((n, m),
        p, seed, step)``
    seed, step : integers in [0, 2**64) keying the dropout generator
    out : optional (n, m) C-contiguous array for ``y``; it may be ``x`` itself
    stats : optional tuple of two (m,) arrays receiving ``mean`` and
        ``invstd = 1 / sqrt(var + eps)`` (training: the batch mean and biased
        variance; eval: the running mean and variance)

    The outputs (``out``, the two ``stats``, and in training the running
    statistics) must not overlap each other (ValueError); an input that
    overlaps an output is read from a copy.  ``mean`` and ``invstd`` are what
    :func:`batch_norm_backward` needs.
    """
    code, alpha = activation_code(activation, alpha)
    x = float_array("x", x, ndim=2)
    n, m = x.shape
    gamma = _column_vector("gamma", gamma, m)
    beta = _column_vector("beta", beta, m)
    training = bool(training)
    eps = check_real("eps", eps, minimum=0.0)
    p = check_real("dropout", dropout, minimum=0.0, below=1.0)
    seed = _counter("seed", seed)
    step = _counter("step", step)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both be None)")
    track = running_mean is not None
    if training:
        if n < 2:
            raise ValueError(f"batch_norm in training mode needs at least 2 rows to compute a variance, "
                             f"got x of shape {x.shape} (as PyTorch: use eval mode for single samples)")
        if momentum is not None:
            momentum = check_real("momentum", momentum, minimum=0.0, maximum=1.0)
        if num_batches_tracked is not None:
            num_batches_tracked = _num_batches_tracked(num_batches_tracked)
        elif momentum is None and track:
            raise ValueError("momentum=None (cumulative moving average) needs num_batches_tracked, "
                             "a 1-element int64 array counting the training batches")
        if track:
            running_mean = out_array("running_mean", running_mean, (m,), x.dtype)
            running_var = out_array("running_var", running_var, (m,), x.dtype)
    else:
        if not track:
            raise ValueError("batch_norm with training=False normalises with the running statistics: "
                             "give running_mean and running_var")
        running_mean = _column_vector("running_mean", running_mean, m)
        running_var = _column_vector("running_var", running_var, m)
        p = 0.0
    dtype = same_dtype(x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    y = out_array("out", out, (n, m), dtype)
    s_mean, s_invstd = _pair("stats", stats, "(mean, invstd) of two arrays")
    mean = out_array("stats[0] (mean)", s_mean, (m,), dtype)
    invstd = out_array("stats[1] (invstd)", s_invstd, (m,), dtype)
    written = (y, mean, invstd, running_mean, running_var) if training else (y, mean, invstd)
    if _norm.any_overlap((x, gamma, beta) + written + (() if training else (running_mean, running_var))):
        # (rare: the cheap test above says some arrays share memory)
        disjoint_outputs(out=y, **{"stats[0] (mean)": mean, "stats[1] (invstd)": invstd},
                         running_mean=running_mean if training else None,
                         running_var=running_var if training else None)
        if not training:
            running_mean = unaliased(running_mean, *written, inplace=False)
            running_var = unaliased(running_var, *written, inplace=False)
        # x may be y itself: each column's statistics are taken before the column is written
        x = unaliased(unaliased(x, y), *written[1:], inplace=False)
        gamma = unaliased(gamma, *written, inplace=False)
        beta = unaliased(beta, *written, inplace=False)

    factor = 0.0
    if training:
        if num_batches_tracked is not None:
            num_batches_tracked += 1
        if track:
            factor = momentum if momentum is not None else 1.0 / float(num_batches_tracked.reshape(-1)[0])
    _norm.batch_norm(x, y, mean, invstd, gamma, beta, running_mean if track else None,
                     running_var if track else None, factor, eps, training, code, alpha, p, seed, step,
                     _threads(n, m, code, p))
    return y, mean, invstd


def batch_norm_backward(grad_y, x, mean, invstd, gamma=None, beta=None, training=True, activation="identity",
                        alpha=0.01, dropout=0.0, seed=0, step=0, out=None, work=None):
    r"""Backward pass of :func:`batch_norm`.  Returns ``(grad_x, grad_gamma or None, grad_beta or None)``.

    The activation derivative and the dropout mask are recomputed from ``x``,
    ``mean``, ``invstd``, ``gamma``, ``beta`` and ``(seed, step)``, so call it
    with the arguments the forward pass had and the ``mean``, ``invstd`` it
    returned.  With :math:`\hat x = (x - \mu)\,\mathrm{invstd}` and
    :math:`g_z = \partial L/\partial z` (upstream gradient times the dropout
    mask, ``1 / (1 - p)`` and ``act'(z)``):

    .. math:: \mathrm{grad\_beta} = \textstyle\sum_i g_z, \quad
              \mathrm{grad\_gamma} = \textstyle\sum_i g_z \hat x

    training (batch statistics depend on x):
    :math:`\mathrm{grad\_x} = \gamma\,\mathrm{invstd}\,(g_z - \overline{g_z} - \hat x\,\overline{g_z \hat x})`
    (bars: column means); eval (running statistics are constants):
    :math:`\mathrm{grad\_x} = g_z\,\gamma\,\mathrm{invstd}`.

    Two passes over the data in training (one writes :math:`g_z` into
    ``work`` and sums the columns, one writes ``grad_x``), one in eval.

    Parameters
    ----------
    grad_y : (n, m) gradient of the loss with respect to ``y``
    x : (n, m) the forward input
    mean, invstd : (m,) the statistics :func:`batch_norm` returned
    gamma, beta : (m,) or None, as given to the forward pass; ``grad_gamma``
        (``grad_beta``) is None when ``gamma`` (``beta``) is None
    training, activation, alpha, dropout, seed, step : as in the forward pass
    out : optional tuple ``(grad_x, grad_gamma, grad_beta)`` of arrays to
        fill (any may be None; entries for a None parameter are ignored)
    work : optional (n, m) scratch array for :math:`g_z` in training; by
        default ``grad_x`` itself holds it.  It may be ``grad_y``.

    The outputs must not overlap each other (ValueError); an input that
    overlaps an output is read from a copy (``grad_y`` may be ``grad_x`` or
    ``work`` itself).
    """
    code, alpha = activation_code(activation, alpha)
    grad_y = float_array("grad_y", grad_y, ndim=2)
    x = float_array("x", x, ndim=2)
    same_shape("grad_y", grad_y, "x", x)
    n, m = x.shape
    mean = _column_vector("mean", mean, m)
    invstd = _column_vector("invstd", invstd, m)
    if mean is None or invstd is None:
        raise TypeError("mean and invstd are required: pass the statistics batch_norm returned")
    gamma = _column_vector("gamma", gamma, m)
    beta = _column_vector("beta", beta, m)
    training = bool(training)
    p = check_real("dropout", dropout, minimum=0.0, below=1.0) if training else 0.0
    seed = _counter("seed", seed)
    step = _counter("step", step)
    dtype = same_dtype(grad_y=grad_y, x=x, mean=mean, invstd=invstd, gamma=gamma, beta=beta)
    if out is None:
        out = (None, None, None)
    elif not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("out must be a tuple (grad_x, grad_gamma, grad_beta)")
    gx = out_array("out[0] (grad_x)", out[0], (n, m), dtype)
    gg = out_array("out[1] (grad_gamma)", out[1], (m,), dtype) if gamma is not None else None
    gb = out_array("out[2] (grad_beta)", out[2], (m,), dtype) if beta is not None else None
    wk = out_array("work", work, (n, m), dtype) if training and work is not None else None
    if _norm.any_overlap((grad_y, x, mean, invstd, gamma, beta, gx, gg, gb, wk)):
        # (rare: the cheap test above says some arrays share memory)
        disjoint_outputs(**{"out[0] (grad_x)": gx, "out[1] (grad_gamma)": gg, "out[2] (grad_beta)": gb,
                            "work": wk})
        # pass 1 reads grad_y[i, j] just before writing work (or grad_x) [i, j]; x is read by both passes
        grad_y = unaliased(unaliased(unaliased(grad_y, gg, gb, inplace=False), gx), wk)
        x = unaliased(x, gx, gg, gb, wk, inplace=False)
        mean, invstd, gamma, beta = (unaliased(a, gx, gg, gb, wk, inplace=False)
                                     for a in (mean, invstd, gamma, beta))
    if training and wk is None:
        wk = gx
    _norm.batch_norm_backward(grad_y, x, wk, gx, mean, invstd, gamma, beta, gg, gb, training, code, alpha, p,
                              seed, step, _threads(n, m, code, p))
    return gx, gg, gb


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------

def dropout(x, p, seed=0, step=0, out=None):
    r"""Inverted dropout (training mode): ``y = mask * x / (1 - p)``.

    ``mask`` is :func:`dropout_mask` ``(x.shape, p, seed, step)``: element
    ``i`` (flat C-order index) is kept with probability ``1 - p`` (to within
    2**-32), decided by a hash of ``(seed, step, i)`` alone.  Dropped elements
    are 0 (even where ``x`` is NaN or Inf).  ``p = 0`` copies ``x``.

    Parameters
    ----------
    x : float32 or float64 array of any shape
    p : probability of dropping, in [0, 1)
    seed, step : integers in [0, 2**64) keying the generator (a model's seed
        and its training step, say)
    out : optional C-contiguous array of x's shape and dtype; it may be ``x``
    """
    x = float_array("x", x)
    p = check_real("p", p, minimum=0.0, below=1.0)
    seed = _counter("seed", seed)
    step = _counter("step", step)
    y = out_array("out", out, x.shape, x.dtype)
    x = unaliased(x, y)
    if p == 0.0:
        if x is not y:
            np.copyto(y, x)
        return y
    if x.size:
        _norm.dropout(x.reshape(-1), y.reshape(-1), p, seed, step, plan_threads(x.size, GRAIN_MEMORY))
    return y


def dropout_backward(grad_y, p, seed=0, step=0, out=None):
    r"""Backward pass of :func:`dropout`: ``grad_x = mask * grad_y / (1 - p)``,
    the same mask recomputed from ``(seed, step)``: this is :func:`dropout`
    applied to ``grad_y``."""
    return dropout(grad_y, p, seed, step, out=out)


def dropout_mask(shape, p, seed=0, step=0):
    """The keep-mask (a bool array of ``shape``) that :func:`dropout`,
    :func:`dropout_backward` and :func:`batch_norm` use for ``(p, seed,
    step)``: True where the element is kept."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple of integers, got {type(shape).__name__}")
    shape = tuple(check_int(f"shape[{i}]", s, minimum=0) for i, s in enumerate(shape))
    p = check_real("p", p, minimum=0.0, below=1.0)
    seed = _counter("seed", seed)
    step = _counter("step", step)
    mask = np.empty(shape, dtype=np.uint8)
    if mask.size:
        _norm.dropout_mask(mask.reshape(-1), p, seed, step, plan_threads(mask.size, GRAIN_MEMORY))
    return mask.view(np.bool_)
