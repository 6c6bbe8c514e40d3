"""Pure-NumPy twins of fastwb.functional (see fastwb.reference)."""

import numpy as np

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid names are {', '.join(map(repr, ACTIVATIONS))}")


def _private(a, *outs):
    """``a``, copied when it shares memory with any of ``outs``: inputs are read
    as they were before any output was written (fastwb's aliasing rule)."""
    if a is not None and any(o is not None and np.may_share_memory(a, o) for o in outs):
        return np.array(a, copy=True)
    return a


def _disjoint(*outs):
    """ValueError when two outputs share memory (each result needs its own array)."""
    outs = [o for o in outs if o is not None]
    if any(np.may_share_memory(a, b) for i, a in enumerate(outs) for b in outs[i + 1:]):
        raise ValueError("two outputs share memory; give each result its own array")


def _store(result, out):
    if out is None:
        return result
    out[...] = result
    return out


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------

def relu(x, out=None):
    return np.maximum(x, 0, out=out)


def leaky_relu(x, alpha=0.01, out=None):
    x = np.asarray(x)
    return _store(np.where(x > 0, x, x.dtype.type(alpha) * x), out)


def sigmoid(x, out=None):
    # stable form: e = exp(-|x|) <= 1 never overflows
    e = np.exp(-np.abs(x))
    return _store(np.where(x >= 0, 1, e) / (1 + e), out)


def tanh(x, out=None):
    return np.tanh(x, out=out)


def relu_backward(grad_y, y, out=None):
    return np.multiply(grad_y, y > 0, out=out)


def leaky_relu_backward(grad_y, y, alpha=0.01, out=None):
    y = np.asarray(y)
    return np.multiply(grad_y, np.where(y > 0, y.dtype.type(1), y.dtype.type(alpha)), out=out)


def sigmoid_backward(grad_y, y, out=None):
    return np.multiply(grad_y, y * (1 - y), out=out)


def tanh_backward(grad_y, y, out=None):
    return np.multiply(grad_y, 1 - y * y, out=out)


def softmax(x, out=None):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True, initial=-np.inf))
    return np.divide(e, np.sum(e, axis=-1, keepdims=True), out=out)


def softmax_backward(grad_y, y, out=None):
    return np.multiply(y, grad_y - np.sum(grad_y * y, axis=-1, keepdims=True), out=out)


_FORWARD = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh}
_BACKWARD = {"relu": relu_backward, "sigmoid": sigmoid_backward, "tanh": tanh_backward}


# ---------------------------------------------------------------------------
# dense layer
# ---------------------------------------------------------------------------

def linear(x, W, b=None, activation="identity", alpha=0.01, out=None):
    _check_activation(activation)
    b = _private(b, out)
    y = np.matmul(x, W, out=out)
    if b is not None:
        y += b
    if activation == "leaky_relu":
        return leaky_relu(y, alpha, out=y)
    if activation in _FORWARD:
        return _FORWARD[activation](y, out=y)
    return y


def linear_backward(grad_y, y, x, W, activation="identity", alpha=0.01, need_grad_x=True, out=None, work=None):
    _check_activation(activation)
    gx, gW, gb = out if out is not None else (None, None, None)
    outs = (gx, gW, gb, work)
    _disjoint(*outs)
    grad_y, y, x, W = (_private(a, *outs) for a in (grad_y, y, x, W))
    if activation == "identity":
        dz = grad_y
    elif activation == "leaky_relu":
        dz = leaky_relu_backward(grad_y, y, alpha, out=work)
    else:
        dz = _BACKWARD[activation](grad_y, y, out=work)
    grad_b = np.sum(dz, axis=0, out=gb)
    grad_W = np.matmul(x.T, dz, out=gW)
    grad_x = np.matmul(dz, W.T, out=gx) if need_grad_x else None
    return grad_x, grad_W, grad_b


# ---------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels, out=None):
    n = logits.shape[0]
    if n == 0:
        return float("nan"), _store(np.empty_like(logits), out)
    rows = np.arange(n)
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    e = np.exp(shifted)
    total = np.sum(e, axis=1, keepdims=True)
    loss = np.mean(np.log(total[:, 0]) - shifted[rows, labels])
    grad = e / total
    grad[rows, labels] -= 1
    grad /= n
    return float(loss), _store(grad, out)


# ---------------------------------------------------------------------------
# element-wise losses
# ---------------------------------------------------------------------------

def mse_loss(pred, target, out=None):
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape} but target has shape {target.shape}; they must match")
    if pred.size == 0:
        return float("nan"), _store(np.empty_like(pred), out)
    diff = pred - target
    loss = np.mean(np.square(diff))
    return float(loss), _store(diff * (2.0 / diff.size), out)


def bce_with_logits(logits, targets, out=None, pos_weight=None):
    if logits.shape != targets.shape:
        raise ValueError(f"logits has shape {logits.shape} but targets has shape {targets.shape}; they must match")
    if not np.all((targets >= 0) & (targets <= 1)):
        raise ValueError("targets must lie in [0, 1]")
    if logits.size == 0:
        return float("nan"), _store(np.empty_like(logits), out)
    e = np.exp(-np.abs(logits))
    log1p_e = np.log1p(e)
    sig = np.where(logits >= 0, 1, e) / (1 + e)
    if pos_weight is None:
        loss = np.maximum(logits, 0) - logits * targets + log1p_e
        grad = sig - targets
    else:
        w = 1 + (pos_weight - 1) * targets
        loss = (1 - targets) * logits + w * (log1p_e + np.maximum(-logits, 0))
        grad = w * sig - pos_weight * targets
    grad *= 1.0 / logits.size
    return float(np.mean(loss)), _store(grad, out)
