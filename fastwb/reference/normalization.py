"""Pure-NumPy twins of fastwb.normalization (see fastwb.reference).

Batch normalisation the way PyTorch documents ``BatchNorm1d``, written with
column means and variances; the dropout mask computed from the same
counter-based hash as fastwb's kernel (``csrc/fwb_norm.h``), in vectorised
NumPy uint32 arithmetic, so both drop exactly the same elements.
"""

import math

import numpy as np

from fastwb.reference.functional import _check_activation, _disjoint, _private, _store, sigmoid

__all__ = ["batch_norm", "batch_norm_backward", "dropout", "dropout_backward", "dropout_mask"]

_M32 = (1 << 32) - 1
_M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# the dropout generator
# ---------------------------------------------------------------------------

def _mix64(z):
    """SplitMix64's finaliser on a Python int (mod 2**64)."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix32(h):
    """32-bit xor-shift-multiply finaliser, in place on a uint32 array (wraps mod 2**32)."""
    h ^= h >> 16
    h *= np.uint32(0x7FEB352D)
    h ^= h >> 15
    h *= np.uint32(0x846CA68B)
    h ^= h >> 16
    return h


def dropout_mask(shape, p, seed=0, step=0):
    """Keep-mask of dropout: element i (flat C-order index) is kept when
    mix32(mix32(i mod 2**32 ^ k0) ^ k1) >= ceil(p * 2**32), with (k0, k1) the
    halves of a 64-bit key hashed from (seed, step, i // 2**32)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    size = math.prod(shape)
    threshold = min(math.ceil(p * 2.0**32), _M32)
    keep = np.empty(size, dtype=bool)
    for start in range(0, size, 1 << 32):
        stop = min(size, start + (1 << 32))
        key = _mix64((_mix64((_mix64(seed ^ 0x9E3779B97F4A7C15) + step) & _M64) + (start >> 32)) & _M64)
        h = np.arange(stop - start, dtype=np.uint32)
        h ^= np.uint32(key & _M32)
        _mix32(h)
        h ^= np.uint32(key >> 32)
        keep[start:stop] = _mix32(h) >= threshold
    return keep.reshape(shape)


def dropout(x, p, seed=0, step=0, out=None):
    x = np.asarray(x)
    if p == 0:
        return _store(x.copy(), out)
    keep = dropout_mask(x.shape, p, seed, step)
    return _store(np.where(keep, x * x.dtype.type(1 / (1 - p)), 0).astype(x.dtype, copy=False), out)


def dropout_backward(grad_y, p, seed=0, step=0, out=None):
    return dropout(grad_y, p, seed, step, out=out)


# ---------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------

def _activate(z, activation, alpha):
    if activation == "relu":
        return np.maximum(z, 0)
    if activation == "leaky_relu":
        return np.where(z > 0, z, z.dtype.type(alpha) * z)
    if activation == "sigmoid":
        return sigmoid(z)
    if activation == "tanh":
        return np.tanh(z)
    return z


def _derivative(z, activation, alpha):
    if activation == "relu":
        return (z > 0).astype(z.dtype)
    if activation == "leaky_relu":
        return np.where(z > 0, 1, z.dtype.type(alpha)).astype(z.dtype)
    if activation == "sigmoid":
        s = sigmoid(z)
        return s * (1 - s)
    if activation == "tanh":
        return 1 - np.tanh(z) ** 2
    return np.ones_like(z)


def _affine(x, mean, invstd, gamma, beta):
    """(x - mean, z = (x - mean) * gamma * invstd + beta, gamma * invstd)."""
    scale = invstd if gamma is None else gamma * invstd
    xc = x - mean
    z = xc * scale if beta is None else xc * scale + beta
    return xc, z, scale


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5,
               num_batches_tracked=None, activation="identity", alpha=0.01, dropout=0.0, seed=0, step=0,
               out=None, stats=None):
    _check_activation(activation)
    x = np.asarray(x)
    n, m = x.shape
    s_mean, s_invstd = stats if stats is not None else (None, None)
    outs = (out, s_mean, s_invstd) + ((running_mean, running_var) if training else ())
    _disjoint(*outs)
    x, gamma, beta = (_private(a, *outs) for a in (x, gamma, beta))
    if training:
        if n < 2:
            raise ValueError(f"batch_norm in training mode needs at least 2 rows, got x of shape {x.shape}")
        mean, var = x.mean(axis=0), x.var(axis=0)
        if num_batches_tracked is not None:
            num_batches_tracked += 1
        if running_mean is not None:
            f = momentum if momentum is not None else 1.0 / float(num_batches_tracked.reshape(-1)[0])
            running_mean *= 1 - f
            running_mean += f * mean
            running_var *= 1 - f
            running_var += f * (var * (n / (n - 1)))
    else:
        if running_mean is None:
            raise ValueError("batch_norm with training=False needs running_mean and running_var")
        mean, var = np.array(running_mean), np.array(running_var)
    invstd = 1 / np.sqrt(var + eps)
    y = _activate(_affine(x, mean, invstd, gamma, beta)[1], activation, alpha)
    if training and dropout > 0:
        y = np.where(dropout_mask(y.shape, dropout, seed, step), y * y.dtype.type(1 / (1 - dropout)), 0)
    return _store(y.astype(x.dtype, copy=False), out), _store(mean, s_mean), _store(invstd, s_invstd)


def batch_norm_backward(grad_y, x, mean, invstd, gamma=None, beta=None, training=True, activation="identity",
                        alpha=0.01, dropout=0.0, seed=0, step=0, out=None, work=None):
    _check_activation(activation)
    grad_y, x = np.asarray(grad_y), np.asarray(x)
    out = out if out is not None else (None, None, None)
    gx_out, gg_out, gb_out = out[0], out[1] if gamma is not None else None, out[2] if beta is not None else None
    _disjoint(gx_out, gg_out, gb_out, work if training else None)
    xc, z, scale = _affine(x, mean, invstd, gamma, beta)
    g = grad_y
    if training and dropout > 0:
        g = np.where(dropout_mask(g.shape, dropout, seed, step), g * g.dtype.type(1 / (1 - dropout)), 0)
    gz = (g * _derivative(z, activation, alpha)).astype(x.dtype, copy=False)
    xhat = xc * invstd
    grad_beta, grad_gamma = gz.sum(axis=0), (gz * xhat).sum(axis=0)
    if training:
        grad_x = scale * (gz - gz.mean(axis=0) - xhat * (gz * xhat).mean(axis=0))
    else:
        grad_x = gz * scale
    return (_store(grad_x, gx_out),
            _store(grad_gamma, gg_out) if gamma is not None else None,
            _store(grad_beta, gb_out) if beta is not None else None)
