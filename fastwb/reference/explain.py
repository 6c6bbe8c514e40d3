"""Twin of :mod:`fastwb.explain`: the same maps from the NumPy twin of the
network (:class:`fastwb.reference.nn.Sequential`: its forward pass keeps what
its backward pass needs, and its backward pass returns the input gradient),
written the way a NumPy user would: one forward, the output gradient from
that forward's own output, one backward (weight gradients included: the twin
has no input-only backward), all interpolation points of Integrated
Gradients and all noisy copies of SmoothGrad in one batch each.

Each function takes a fastwb model (its twin is built from ``state_dict()``,
``seed`` and ``step_count``) or a twin, and the arguments of its fastwb
counterpart (``batch_size`` is accepted and ignored: the twin runs all rows
at once); the results are the same up to rounding.
"""

import copy

import numpy as np

from fastwb.nn.layers import BatchNorm1d
from fastwb.reference import functional as F
from fastwb.reference import nn as rnn

__all__ = ["saliency", "gradient_x_input", "smoothgrad", "integrated_gradients"]

_MEAN_LOSS = {"cross_entropy": F.softmax_cross_entropy, "mse": F.mse_loss, "bce_with_logits": F.bce_with_logits}


def twin(model):
    """The NumPy twin of a fastwb Sequential (or the twin itself)."""
    if isinstance(model, rnn.Sequential):
        return model
    t = rnn.Sequential(model.layers, model.state_dict(), model.seed, model.loss.name)
    t.step_count = model.step_count
    return t


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _seed(loss, z, t, wrt):
    """dF/dz of each row's chosen output (float64)."""
    z = z.astype(np.float64)
    rows = np.arange(len(z))
    G = np.zeros_like(z)
    if wrt == "logit":
        G[rows, t] = 1.0
    elif loss == "cross_entropy":
        p = _softmax(z)
        G = -p[rows, t][:, None] * p
        G[rows, t] += p[rows, t]
    else:
        s = 1.0 / (1.0 + np.exp(-z[rows, t]))
        G[rows, t] = s * (1.0 - s)
    return G


def _input_gradient(model, X, target, wrt, labels, training):
    """(dF_i/dx_i, the targets used): one forward pass and one backward pass of the twin."""
    net = twin(model)
    saved = copy.deepcopy(net.state)            # a training forward updates the running statistics
    try:
        out, record = net.forward(X, training)
        if wrt == "loss":
            _, G = _MEAN_LOSS[net.loss](out, labels)
            G = G * len(X)                          # each row's own loss
            t = None
        else:
            t = out.argmax(axis=1) if target is None else np.broadcast_to(np.asarray(target), (len(X),))
            G = _seed(net.loss, out, t, wrt).astype(X.dtype)
        gx, _ = net.backward(G.astype(X.dtype), record, training)
    finally:
        net.state = saved
    return gx, t


def saliency(model, X, target=None, wrt="logit", abs=True, labels=None, training=False, batch_size=None):
    g, _ = _input_gradient(model, X, target, wrt, labels, training)
    return np.abs(g) if abs else g


def gradient_x_input(model, X, target=None, wrt="logit", labels=None, training=False, batch_size=None):
    return X * saliency(model, X, target, wrt, False, labels, training)


def _targets(net, X, target, wrt):
    """The given targets per row, else the class predicted for X (None with wrt="loss")."""
    if wrt == "loss":
        return None
    if target is None:
        return net.logits(X).argmax(axis=1)
    return np.broadcast_to(np.asarray(target), (len(X),))


def _copies_gradient(net, points, t, wrt, labels, k):
    """The gradients at k stacked copies (k*n rows) of n rows, as (k, n, d); one copy
    at a time where eval mode normalises by batch statistics (each copy is a batch)."""
    n = len(points) // k
    if any(isinstance(layer, BatchNorm1d) and not layer.track_running_stats for layer in net.layers):
        return np.stack([_input_gradient(net, points[c * n:(c + 1) * n], t, wrt, labels, False)[0]
                         for c in range(k)])
    tt = None if t is None else np.tile(t, k)
    yy = None if labels is None else np.concatenate([labels] * k)
    g, _ = _input_gradient(net, points, tt, wrt, yy, False)
    return g.reshape(k, n, -1)


def smoothgrad(model, X, target=None, n=25, sigma=0.15, wrt="logit", abs=True, labels=None, rng=None,
               batch_size=None):
    net = twin(model)
    gen = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    t = _targets(net, X, target, wrt)
    scale = (sigma * (X.max(axis=1) - X.min(axis=1))).astype(X.dtype)[:, None]
    noisy = np.concatenate([X + gen.standard_normal(X.shape, dtype=X.dtype) * scale for _ in range(n)])
    g = _copies_gradient(net, noisy, t, wrt, labels, n)
    if abs:
        g = np.abs(g)
    return g.astype(np.float64).mean(axis=0).astype(X.dtype)


def _values(loss, z, t, wrt, labels):
    rows = np.arange(len(z))
    if wrt == "logit":
        return z[rows, t]
    if wrt == "prob":
        return _softmax(z)[rows, t] if loss == "cross_entropy" else 1.0 / (1.0 + np.exp(-z[rows, t]))
    if loss == "cross_entropy":
        return np.log(np.exp(z).sum(axis=1)) - z[rows, labels]
    if loss == "mse":
        return ((z - labels) ** 2).mean(axis=1)
    return (np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))).mean(axis=1)


def integrated_gradients(model, X, target=None, baseline=0.0, steps=50, method="midpoint", wrt="logit",
                         labels=None, return_delta=False, batch_size=None):
    net = twin(model)
    base = np.broadcast_to(np.asarray(baseline, X.dtype), X.shape)
    if method == "trapezoid":
        alphas = np.arange(steps) / (steps - 1)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        alphas = (np.arange(steps) + 0.5) / steps
        weights = np.full(steps, 1.0 / steps)
    t = _targets(net, X, target, wrt)
    diff = X - base
    points = (base[None] + alphas.astype(X.dtype)[:, None, None] * diff[None]).reshape(-1, X.shape[1])
    g = _copies_gradient(net, points, t, wrt, labels, steps)
    attr = (diff * np.tensordot(weights, g, axes=1)).astype(X.dtype)
    if not return_delta:
        return attr
    z_x, z_b = net.logits(X).astype(np.float64), net.logits(np.ascontiguousarray(base)).astype(np.float64)
    y = None if labels is None else np.asarray(labels)
    gap = _values(net.loss, z_x, t, wrt, y) - _values(net.loss, z_b, t, wrt, y)
    return attr, attr.sum(axis=1, dtype=np.float64) - gap
