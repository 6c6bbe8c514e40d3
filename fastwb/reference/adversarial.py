"""Twin of :mod:`fastwb.adversarial` in plain NumPy: the FGSM step, the PGD step,
and the attacks on a :class:`fastwb.reference.nn.Sequential` twin, whose input
gradient is its own backward pass run down to the input.

The steps are written as a NumPy user writes them (``np.sign``, ``np.clip``),
with the scalars turned into the data's dtype first (NumPy 2 would otherwise
promote a float32 array to float64 against a ``np.float64`` scalar), so the
compiled kernels match them bit for bit in float32 and float64.
"""

import numpy as np

from fastwb.reference.nn import _LOSSES

__all__ = ["perturb", "pgd_step", "input_gradient", "fgsm", "pgd"]


def _finish(adv, out):
    if out is None:
        return adv
    out[...] = adv
    return out


def perturb(X, grad, eps, clip=(0.0, 1.0), out=None, nan="raise"):
    """``clip(X + eps * sign(grad), lo, hi)`` (no clip for ``clip=None``)."""
    X, grad = np.asarray(X), np.asarray(grad)
    t = X.dtype.type
    if nan == "raise" and np.isnan(grad).any():
        raise ValueError(f"grad holds {int(np.isnan(grad).sum())} NaN values")
    adv = X + t(eps) * np.sign(grad)
    if clip is not None:
        adv = np.clip(adv, t(clip[0]), t(clip[1]))
    return _finish(adv, out)


def pgd_step(X, X0, grad, alpha, eps, clip=(0.0, 1.0), out=None, nan="raise"):
    """``clip(X0 + clip(X + alpha * sign(grad) - X0, -eps, eps), lo, hi)``."""
    X, X0, grad = np.asarray(X), np.asarray(X0), np.asarray(grad)
    t = X.dtype.type
    if nan == "raise" and np.isnan(grad).any():
        raise ValueError(f"grad holds {int(np.isnan(grad).sum())} NaN values")
    adv = X + t(alpha) * np.sign(grad)
    adv = X0 + np.clip(adv - X0, -t(eps), t(eps))
    if clip is not None:
        adv = np.clip(adv, t(clip[0]), t(clip[1]))
    return _finish(adv, out)


def input_gradient(twin, X, y):
    """The gradient of the twin's mean loss with respect to X, in eval mode."""
    out, record = twin.forward(X, False)
    _, g = _LOSSES[twin.loss](out, y)
    return twin.backward(g, record, False)[0]


def _labels(twin, X, y):
    """``y``, or for None the twin's predictions: classes (cross_entropy), 0/1 (bce_with_logits)."""
    if y is not None:
        return y
    z = twin.logits(X)
    return np.argmax(z, axis=1) if twin.loss == "cross_entropy" else (z > 0).astype(X.dtype)


def fgsm(twin, X, y=None, eps=0.1, clip=(0.0, 1.0), targeted=False):
    """FGSM on the twin (``y=None``: its own predictions)."""
    g = input_gradient(twin, X, _labels(twin, X, y))
    return perturb(X, g, -eps if targeted else eps, clip)


def pgd(twin, X, y=None, eps=0.1, alpha=None, steps=10, random_start=True, clip=(0.0, 1.0), rng=None,
        targeted=False):
    """PGD on the twin; the random start is ``rng.uniform(-eps, eps, X.shape)`` in
    the data's dtype, clipped to the range."""
    t = X.dtype.type
    y = _labels(twin, X, y)
    eps = float(t(eps))
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x = X.copy()
    if random_start:
        x = X + np.random.default_rng(rng).uniform(-eps, eps, X.shape).astype(X.dtype)
        if clip is not None:
            x = np.clip(x, t(clip[0]), t(clip[1]))
    for _ in range(steps):
        x = pgd_step(x, X, input_gradient(twin, x, y), -alpha if targeted else alpha, eps, clip)
    return x
