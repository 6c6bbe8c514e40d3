"""Dense layers, activations and the losses (softmax cross-entropy, mean squared
error, binary cross-entropy with logits).

This is fastwb's fast functional API: every function checks its arguments,
allocates its result (or writes into ``out=``), picks a thread count from the
size of the work, and makes one call into a compiled kernel.  Matrix products
run NumPy's own BLAS, called tile by tile from fastwb's threads with the bias
and activation fused into each tile (fastwb/_gemm.pyx; ``np.matmul`` with
``out=`` where NumPy's OpenBLAS was not found, see ``fastwb info``).

Shapes follow the slides: a dense layer has ``W`` of shape ``(in, out)`` and
computes ``y = act(x @ W + b)`` for a batch ``x`` of shape ``(n, in)``.

Every function here has a pure-NumPy twin of the same name and signature in
:mod:`fastwb.reference`.
"""

import time
from collections import OrderedDict

import numpy as np

from fastwb import _dense, _engine, _gemm, _losses
from fastwb._runtime import GRAIN_COMPUTE, GRAIN_MEMORY, gemm_threads, plan_threads
from fastwb._validate import (
    ACTIVATIONS,
    activation_code,
    check_alpha,
    disjoint_outputs,
    float_array,
    out_array,
    same_dtype,
    same_shape,
    unaliased,
)

__all__ = [
    "linear",
    "linear_backward",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "softmax",
    "relu_backward",
    "leaky_relu_backward",
    "sigmoid_backward",
    "tanh_backward",
    "softmax_backward",
    "softmax_cross_entropy",
    "mse_loss",
    "bce_with_logits",
]

_IDENTITY = ACTIVATIONS["identity"]
_EXP_BASED = (ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"])


def _grain(code):
    return GRAIN_COMPUTE if code in _EXP_BASED else GRAIN_MEMORY


def _column_threads(n, m, grain):
    """Threads for a pass that splits m columns into ranges of at least 16."""
    return min(plan_threads(n * m, grain), max(1, m // 16))


def _blas_operand(a):
    """a can go to the BLAS as it is: C-contiguous, or the transpose of a C-contiguous array."""
    return a.flags.aligned and (a.flags.c_contiguous or a.T.flags.c_contiguous)


_CHOICES = OrderedDict()     # (m, n, k, dtype) -> ThreadChoice of the GEMMs of that shape
_CHOICES_KEPT = 64


def _choice(key):
    choice = _CHOICES.pop(key, None)
    if choice is None:
        choice = _engine.ThreadChoice()
    _CHOICES[key] = choice
    while len(_CHOICES) > _CHOICES_KEPT:
        _CHOICES.popitem(last=False)
    return choice


def _matmul(a, b, y, bias=None, code=_IDENTITY, alpha=0.0):
    """y = act(a @ b + bias): fastwb's tiled GEMM with the epilogue fused, or
    np.matmul and one pass over y (no OpenBLAS bound, an operand that is not
    (transposed) C-contiguous, or one that overlaps y: NumPy copies it then).
    The tiled GEMM's thread count is chosen by timing the calls of its shape
    (one thread while that measures faster: a busy machine)."""
    n, m = y.shape
    if _gemm.available() and _blas_operand(a) and _blas_operand(b) and y.flags.c_contiguous \
            and not np.may_share_memory(a, y) and not np.may_share_memory(b, y):
        planned = gemm_threads(n, m, a.shape[1])
        if planned <= 1:
            return _gemm.gemm(a, b, y, 1, bias, code, alpha)
        choice = _choice((n, m, a.shape[1], y.dtype.char))
        t0 = time.perf_counter()
        _gemm.gemm(a, b, y, choice.threads(planned), bias, code, alpha)
        choice.observe(time.perf_counter() - t0)
        return y
    np.matmul(a, b, out=y)
    if y.size and (bias is not None or code != _IDENTITY):
        _dense.bias_act_rows(y, bias, y, code, alpha, plan_threads(y.size, _grain(code)))
    return y


# ---------------------------------------------------------------------------
# dense layer
# ---------------------------------------------------------------------------

def linear(x, W, b=None, activation="identity", alpha=0.01, out=None):
    r"""Dense layer forward pass: ``y = act(x @ W + b)``.

    .. math:: y_{ij} = \mathrm{act}\Big(\sum_k x_{ik} W_{kj} + b_j\Big)

    Parameters
    ----------
    x : (n, in) float32 or float64 array
    W : (in, out) array of the same dtype
    b : (out,) array of the same dtype, or None for no bias
    activation : {"identity", "relu", "leaky_relu", "sigmoid", "tanh"}
    alpha : float >= 0, the negative slope of ``leaky_relu``
    out : optional (n, out) C-contiguous array of the same dtype to write into;
        it may overlap the inputs (they are then read from a copy)

    The GEMM is NumPy's BLAS, called tile by tile from fastwb's threads, bias
    and activation applied to each tile while it is in cache (``np.matmul``
    and then one pass over ``y`` where the BLAS was not found).  ``sigmoid``
    is evaluated as ``1/(1+e)`` or ``e/(1+e)`` with ``e = exp(-|z|)``, so it
    never overflows.
    """
    code, alpha = activation_code(activation, alpha)
    x = float_array("x", x, ndim=2, contiguous=False)
    W = float_array("W", W, ndim=2, contiguous=False)
    if b is not None:
        b = float_array("b", b, ndim=1)
    dtype = same_dtype(x=x, W=W, b=b)
    n, k = x.shape
    if W.shape[0] != k:
        raise ValueError(f"x has shape {x.shape} and W has shape {W.shape}: x.shape[1] must equal W.shape[0]")
    m = W.shape[1]
    if b is not None and b.shape != (m,):
        raise ValueError(f"b has shape {b.shape}, expected ({m},) to match W of shape {W.shape}")
    y = out_array("out", out, (n, m), dtype)
    b = unaliased(b, y, inplace=False)      # the GEMM overwrites y before the bias is read
    return _matmul(x, W, y, b, code, alpha)


def linear_backward(grad_y, y, x, W, activation="identity", alpha=0.01, need_grad_x=True, out=None, work=None):
    r"""Dense layer backward pass.  Returns ``(grad_x or None, grad_W, grad_b)``.

    With :math:`dz = \partial L/\partial y \odot \mathrm{act}'`:

    .. math:: \mathrm{grad\_W} = x^\top dz, \quad
              \mathrm{grad\_b} = \textstyle\sum_i dz_{i\cdot}, \quad
              \mathrm{grad\_x} = dz\, W^\top

    The derivative is read off the layer output ``y`` (``relu``: ``y > 0``;
    ``leaky_relu``: 1 or ``alpha``; ``sigmoid``: ``y(1-y)``; ``tanh``:
    ``1-y^2``), so no pre-activation needs to be stored; ``y`` may be None
    for ``identity``.  ``dz`` and the column sums ``grad_b`` come out of one
    fused pass; the two products are NumPy's BLAS GEMMs, run from fastwb's
    threads (see :func:`linear`).

    Parameters
    ----------
    grad_y : (n, out) gradient of the loss with respect to ``y``
    y : (n, out) the layer output from :func:`linear`
    x : (n, in) the layer input
    W : (in, out) the weights
    need_grad_x : compute ``grad_x`` (False for a first layer)
    out : optional tuple ``(grad_x or None, grad_W, grad_b)`` of arrays to fill
    work : optional (n, out) scratch array for ``dz`` (unused for identity);
        it may be ``grad_y`` itself

    The outputs must not overlap each other (ValueError); an input that
    overlaps an output is read from a copy, so any ``out`` gives the same
    numbers as fresh arrays.
    """
    code, alpha = activation_code(activation, alpha)
    grad_y = float_array("grad_y", grad_y, ndim=2)
    x = float_array("x", x, ndim=2, contiguous=False)
    W = float_array("W", W, ndim=2, contiguous=False)
    if code != _IDENTITY or y is not None:
        y = float_array("y", y, ndim=2)
        same_shape("grad_y", grad_y, "y", y)
    dtype = same_dtype(grad_y=grad_y, y=y, x=x, W=W)
    n, m = grad_y.shape
    k = W.shape[0]
    if W.shape[1] != m:
        raise ValueError(f"W has shape {W.shape} but grad_y has shape {grad_y.shape}: W.shape[1] must equal grad_y.shape[1]")
    if x.shape != (n, k):
        raise ValueError(f"x has shape {x.shape}, expected {(n, k)} from grad_y {grad_y.shape} and W {W.shape}")
    if out is None:
        out = (None, None, None)
    elif not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("out must be a tuple (grad_x or None, grad_W, grad_b)")
    gx = out_array("out[0] (grad_x)", out[0], (n, k), dtype) if need_grad_x else None
    gW = out_array("out[1] (grad_W)", out[1], (k, m), dtype)
    gb = out_array("out[2] (grad_b)", out[2], (m,), dtype)
    dz = None if code == _IDENTITY else out_array("work", work, (n, m), dtype)
    disjoint_outputs(**{"out[0] (grad_x)": gx, "out[1] (grad_W)": gW, "out[2] (grad_b)": gb, "work": dz})
    # dz is written first, then gb, gW, gx: the inputs each pass reads must
    # not be among what an earlier pass wrote (dz may be grad_y or y itself)
    grad_y = unaliased(unaliased(grad_y, gx, gW, gb, inplace=False), dz)
    y = unaliased(unaliased(y, gx, gW, gb, inplace=False), dz)
    x = unaliased(x, gx, gW, gb, dz, inplace=False)
    W = unaliased(W, gx, gW, gb, dz, inplace=False)

    if code == _IDENTITY:
        dz = grad_y
        if m:
            _dense.colsum(dz, gb, _column_threads(n, m, GRAIN_MEMORY))
    else:
        if m:
            _dense.act_grad_colsum(grad_y, y, dz, gb, code, alpha, _column_threads(n, m, _grain(code)))
    _matmul(x.T, dz, gW)
    if need_grad_x:
        _matmul(dz, W.T, gx)
    return gx, gW, gb


# ---------------------------------------------------------------------------
# elementwise activations and their backward passes (any shape)
# ---------------------------------------------------------------------------

def _activate(x, code, alpha, out):
    x = float_array("x", x)
    y = out_array("out", out, x.shape, x.dtype)
    x = unaliased(x, y)
    if x.size:
        _dense.act_flat(x.reshape(-1), y.reshape(-1), code, alpha, plan_threads(x.size, _grain(code)))
    return y


def _backward_arrays(grad_y, y, out, check=float_array):
    """Checked (grad_y, y, dz) for a backward pass; inputs unaliased from dz."""
    grad_y = check("grad_y", grad_y)
    y = check("y", y)
    same_dtype(grad_y=grad_y, y=y)
    same_shape("grad_y", grad_y, "y", y)
    dz = out_array("out", out, y.shape, y.dtype)
    return unaliased(grad_y, dz), unaliased(y, dz), dz


def _activation_backward(grad_y, y, code, alpha, out):
    grad_y, y, dz = _backward_arrays(grad_y, y, out)
    if y.size:
        _dense.act_grad_flat(grad_y.reshape(-1), y.reshape(-1), dz.reshape(-1), code, alpha,
                             plan_threads(y.size))
    return dz


def relu(x, out=None):
    r"""Rectified linear unit, elementwise: :math:`\max(x, 0)` (NaN stays NaN)."""
    return _activate(x, ACTIVATIONS["relu"], 0.0, out)


def leaky_relu(x, alpha=0.01, out=None):
    r"""Leaky ReLU, elementwise: :math:`x` if :math:`x > 0` else :math:`\alpha x` (alpha >= 0)."""
    return _activate(x, ACTIVATIONS["leaky_relu"], check_alpha(alpha), out)


def sigmoid(x, out=None):
    r"""Logistic sigmoid :math:`1/(1+e^{-x})`, evaluated without overflow for any x."""
    return _activate(x, ACTIVATIONS["sigmoid"], 0.0, out)


def tanh(x, out=None):
    r"""Hyperbolic tangent, elementwise."""
    return _activate(x, ACTIVATIONS["tanh"], 0.0, out)


def relu_backward(grad_y, y, out=None):
    r"""Gradient through ReLU from its output: ``grad_y * (y > 0)``."""
    return _activation_backward(grad_y, y, ACTIVATIONS["relu"], 0.0, out)


def leaky_relu_backward(grad_y, y, alpha=0.01, out=None):
    r"""Gradient through Leaky ReLU from its output: ``grad_y * (1 if y > 0 else alpha)``."""
    return _activation_backward(grad_y, y, ACTIVATIONS["leaky_relu"], check_alpha(alpha), out)


def sigmoid_backward(grad_y, y, out=None):
    r"""Gradient through the sigmoid from its output: ``grad_y * (y * (1 - y))``."""
    return _activation_backward(grad_y, y, ACTIVATIONS["sigmoid"], 0.0, out)


def tanh_backward(grad_y, y, out=None):
    r"""Gradient through tanh from its output: ``grad_y * (1 - y**2)``."""
    return _activation_backward(grad_y, y, ACTIVATIONS["tanh"], 0.0, out)


# ---------------------------------------------------------------------------
# softmax and cross-entropy (row-wise over the last axis)
# ---------------------------------------------------------------------------

def _rows(name, a):
    a = float_array(name, a)
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (softmax runs over the last axis)")
    return a


def softmax(x, out=None):
    r"""Softmax over the last axis, with the row maximum subtracted first:

    .. math:: \mathrm{softmax}(x)_j = \frac{e^{x_j - m}}{\sum_k e^{x_k - m}},\quad m = \max_k x_k
    """
    x = _rows("x", x)
    y = out_array("out", out, x.shape, x.dtype)
    x = unaliased(x, y)
    if x.size:
        m = x.shape[-1]
        _losses.softmax_rows(x.reshape(-1, m), y.reshape(-1, m), plan_threads(x.size, GRAIN_COMPUTE))
    return y


def softmax_backward(grad_y, y, out=None):
    r"""Vector-Jacobian product of softmax from its output ``y``:
    :math:`dz = y \odot (g - \langle g, y\rangle)` row by row."""
    grad_y, y, dz = _backward_arrays(grad_y, y, out, check=_rows)
    if y.size:
        m = y.shape[-1]
        _losses.softmax_grad_rows(grad_y.reshape(-1, m), y.reshape(-1, m), dz.reshape(-1, m),
                                  plan_threads(y.size))
    return dz


def class_labels(labels, n, n_classes, name="labels"):
    """``labels`` as a C-contiguous intp array of n class indices in [0, n_classes),
    or a clear TypeError / ValueError naming ``name``."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} has shape {labels.shape}, expected ({n},): one class index per row")
    if labels.dtype != np.intp or not labels.flags.c_contiguous or not labels.flags.aligned:
        labels = np.require(labels, np.intp, ("C", "A"))
    bad = _losses.first_bad_label(labels, n_classes)
    if bad >= 0:
        raise ValueError(f"{name}[{bad}] = {labels[bad]} is not a class index in [0, {n_classes})")
    return labels


def softmax_cross_entropy(logits, labels, out=None):
    r"""Mean softmax cross-entropy and its gradient with respect to the logits.

    For logits :math:`z` of shape (n, C) and class indices :math:`y_i`:

    .. math:: L = \frac1n \sum_i \Big(\log\sum_j e^{z_{ij} - m_i} - (z_{i y_i} - m_i)\Big),
              \qquad \frac{\partial L}{\partial z_{ij}} = \frac{\mathrm{softmax}(z_i)_j - [j = y_i]}{n}

    computed in one pass per row (log-sum-exp with the row maximum
    :math:`m_i` subtracted).  Per-row losses are accumulated in double in row
    order, so the loss does not depend on the thread count.  Returns
    ``(mean_loss, grad_logits)``; ``mean_loss`` is a Python float (NaN for
    an empty batch).  ``out`` may be ``logits`` itself.
    """
    z = float_array("logits", logits, ndim=2)
    n, c = z.shape
    labels = class_labels(labels, n, c)
    grad = out_array("out", out, z.shape, z.dtype)
    z = unaliased(z, grad)
    if n == 0:
        return float("nan"), grad
    row_loss = np.empty(n, dtype=np.float64)
    loss = _losses.softmax_xent(z, labels, grad, row_loss, plan_threads(z.size, GRAIN_COMPUTE))
    return loss, grad


# ---------------------------------------------------------------------------
# element-wise losses: mean squared error, binary cross-entropy with logits
# ---------------------------------------------------------------------------

def _loss_inputs(name_a, a, name_b, b):
    """Two float arrays of one dtype and exactly one shape (no broadcasting)."""
    a = float_array(name_a, a)
    b = float_array(name_b, b)
    same_dtype(**{name_a: a, name_b: b})
    same_shape(name_a, a, name_b, b)
    return a, b


def _as_rows(a, keep_columns=False):
    """The (n, m) view the loss kernels run over: a 2-D array as it is, more
    dimensions as rows of the last axis, a 1-D array as one column (blocks of
    2048 elements, spread over threads) or, with ``keep_columns``, as one row."""
    if a.ndim == 2:
        return a
    if a.ndim == 1 and not keep_columns:
        return a.reshape(-1, 1)
    return a.reshape(-1, a.shape[-1] if a.ndim else 1)


def _check_unit_interval(name, t):
    """ValueError naming the first element of ``t`` outside [0, 1] (NaN included)."""
    if t.size:
        bad = _losses.first_outside_unit(t.reshape(-1))
        if bad >= 0:
            where = np.unravel_index(bad, t.shape)
            index = ", ".join(str(int(i)) for i in where)
            raise ValueError(f"{name}[{index}] = {float(t[where])!r} is not in [0, 1]: binary cross-entropy "
                             f"needs targets that are probabilities (0/1 labels or values in between)")


def mse_loss(pred, target, out=None):
    r"""Mean squared error and its gradient with respect to the prediction.

    .. math:: L = \frac1N \sum_j (p_j - t_j)^2, \qquad
              \frac{\partial L}{\partial p_j} = \frac{2 (p_j - t_j)}{N}

    over all :math:`N` elements (PyTorch's ``F.mse_loss`` with
    ``reduction="mean"``).  ``pred`` and ``target`` are float32 or float64
    arrays of one dtype and exactly one shape (a target of shape ``(n,)`` for
    a prediction of shape ``(n, 1)`` is an error, never broadcast).  One fused
    pass writes the gradient and sums the squared differences in double over
    fixed blocks added in order, so the loss does not depend on the thread
    count.  Returns ``(mean_loss, grad_pred)``; ``mean_loss`` is a Python
    float (NaN for an empty input).  ``out`` may be ``pred`` or ``target``
    itself.
    """
    pred, target = _loss_inputs("pred", pred, "target", target)
    grad = out_array("out", out, pred.shape, pred.dtype)
    pred = unaliased(pred, grad)
    target = unaliased(target, grad)
    if pred.size == 0:
        return float("nan"), grad
    p = _as_rows(pred)
    work = np.empty(p.shape[0], dtype=np.float64)
    loss = _losses.mse_rows(p, _as_rows(target), _as_rows(grad), work, plan_threads(pred.size, GRAIN_MEMORY))
    return loss, grad


def bce_with_logits(logits, targets, out=None, pos_weight=None):
    r"""Mean binary cross-entropy of ``sigmoid(logits)`` against ``targets``, and
    its gradient with respect to the logits (PyTorch's
    ``F.binary_cross_entropy_with_logits`` with ``reduction="mean"``).

    For logits :math:`z` and targets :math:`t \in [0, 1]`, element by element,
    with :math:`e = e^{-|z|}` (so nothing overflows, for any :math:`z`):

    .. math:: \ell = \max(z, 0) - z t + \log(1 + e), \qquad
              \frac{\partial L}{\partial z} = \frac{\sigma(z) - t}{N},
              \qquad L = \frac1N \sum \ell

    With ``pos_weight`` (one weight :math:`w_c \ge 0` per column, the last
    axis, as in PyTorch), positives are weighted:
    :math:`\ell = (1 - t) z + (1 + (w_c - 1) t)(\log(1 + e) + \max(-z, 0))`
    and :math:`\partial L/\partial z = ((1 + (w_c - 1) t)\,\sigma(z) - w_c t) / N`.

    ``targets`` has the shape and dtype of ``logits``; every value must lie in
    [0, 1] (ValueError naming the first one that does not, NaN included).
    One fused pass (one exp per element) writes the gradient and sums the loss
    in double over fixed blocks added in order, so the loss does not depend
    on the thread count.  Returns ``(mean_loss, grad_logits)``; NaN loss for
    an empty input.  ``out`` may be ``logits`` or ``targets`` itself.
    """
    z, t = _loss_inputs("logits", logits, "targets", targets)
    pw = None
    if pos_weight is not None:
        pw = float_array("pos_weight", pos_weight)
        same_dtype(logits=z, pos_weight=pw)
        if z.ndim == 0 or pw.shape != (z.shape[-1],):
            raise ValueError(f"pos_weight has shape {pw.shape}; logits of shape {z.shape} need one weight "
                             f"per column: shape ({z.shape[-1] if z.ndim else 1},)")
        if not np.all(np.isfinite(pw) & (pw >= 0)):
            raise ValueError("pos_weight must hold finite values >= 0")
    _check_unit_interval("targets", t)
    grad = out_array("out", out, z.shape, z.dtype)
    z = unaliased(z, grad)
    t = unaliased(t, grad)
    pw = unaliased(pw, grad, inplace=False)
    if z.size == 0:
        return float("nan"), grad
    keep = pw is not None
    rows = _as_rows(z, keep)
    work = np.empty(rows.shape[0], dtype=np.float64)
    loss = _losses.bce_logits_rows(rows, _as_rows(t, keep), np.empty(0, z.dtype) if pw is None else pw,
                                   _as_rows(grad, keep), work, plan_threads(z.size, GRAIN_COMPUTE))
    return loss, grad
