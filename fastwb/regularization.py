"""L1 and L2 weight penalties: loss and gradient in one compiled pass."""

import numpy as np

from fastwb import _optim
from fastwb._runtime import GRAIN_MEMORY, plan_threads
from fastwb._validate import float_array, out_array, unaliased

__all__ = ["penalty", "METHODS"]

METHODS = ("l1", "l2")


def penalty(weights, lambda_param=0.01, method="l2", out=None):
    r"""Regularisation loss and its gradient.

    * ``l2``: :math:`L = \frac{\lambda}{2}\sum w^2`, :math:`\nabla L = \lambda w`
    * ``l1``: :math:`L = \lambda\sum |w|`, :math:`\nabla L = \lambda\,\mathrm{sign}(w)`

    One pass reads ``weights`` once and writes the gradient (into ``out``
    when given).  The sum is accumulated in double over fixed blocks added in
    order, so the loss does not depend on the thread count.  Returns
    ``(loss, grad)`` with ``loss`` a Python float.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid names are 'l1', 'l2'")
    try:
        lam = float(lambda_param)
    except (TypeError, ValueError):
        raise TypeError(f"lambda_param must be a real number, got {type(lambda_param).__name__}") from None
    w = float_array("weights", weights)
    grad = out_array("out", out, w.shape, w.dtype)
    w = unaliased(w, grad)
    if w.size == 0:
        return 0.0, grad
    flat = w.reshape(-1)
    partial = np.empty(_optim.partial_sums_needed(flat.size), np.float64)
    total = _optim.regularize(flat, grad.reshape(-1), lam, method == "l1", partial,
                              plan_threads(flat.size, GRAIN_MEMORY))
    return (0.5 * lam * total if method == "l2" else lam * total), grad
