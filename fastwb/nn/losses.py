"""The losses :class:`fastwb.nn.Sequential` trains with, and how each one's
targets are checked and its results scored.

* ``"cross_entropy"``: softmax cross-entropy on integer class labels (one per
  row); metric ``accuracy``.
* ``"mse"``: mean squared error on float targets shaped like the output
  (regression); metrics ``mse`` and ``r2``.
* ``"bce_with_logits"``: binary cross-entropy on the logits with 0/1 (or
  [0, 1]) float targets shaped like the output (multi-label); metric
  ``binary_accuracy``.

Each loss is one fused kernel computing the mean loss and its gradient with
respect to the output (:mod:`fastwb.functional`)."""

import numpy as np

from fastwb import _losses, functional, metrics
from fastwb._runtime import GRAIN_COMPUTE, GRAIN_MEMORY, plan_threads

__all__ = ["LOSSES", "Loss", "get"]


class Loss:
    """A named loss: ``compute(out, target, grad_out) -> mean loss`` writes the
    gradient into ``grad_out``; ``targets(y, n, width, dtype)`` checks and
    converts a target array; ``scores(out, target)`` gives the metrics."""

    def __init__(self, name, fn, kernel, grain, classification):
        self.name = name
        self._fn = fn
        self._kernel = kernel
        self.grain = grain
        self.classification = classification

    @property
    def metrics(self):
        """The names of :meth:`scores`' metrics, in order."""
        return {"cross_entropy": ("accuracy",), "mse": ("mse", "r2")}.get(self.name, ("binary_accuracy",))

    def threads(self, size, available=None):
        """Threads of the loss kernel over ``size`` output elements (at most ``available``)."""
        return plan_threads(size, self.grain, available)

    def kernel(self, out, target, grad_out, row_work, n_threads):
        """The fused loss kernel itself, for the engine's own checked arrays
        (``row_work``: a float64 workspace of one entry per row)."""
        return self._kernel(out, target, grad_out, row_work, n_threads)

    def targets(self, y, n, width, dtype, name="y"):
        if self.classification:
            return functional.class_labels(y, n, width, name)
        y = np.asarray(y)
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be numbers for the {self.name} loss, got dtype {y.dtype}")
        if y.shape != (n, width):
            raise ValueError(f"{name} has shape {y.shape}, but the {self.name} loss needs targets shaped like "
                             f"the output, ({n}, {width})")
        y = np.require(y, dtype, ("C", "A"))          # read by pointer: contiguous and aligned
        if self.name == "bce_with_logits":
            bad = _losses.first_outside_unit(y.reshape(-1))
            if bad >= 0:
                where = np.unravel_index(bad, y.shape)
                raise ValueError(f"{name}[{', '.join(map(str, where))}] = {y.reshape(-1)[bad]} is not a "
                                 "target in [0, 1]")
        return y

    def compute(self, out, target, grad_out):
        return self._fn(out, target, out=grad_out)[0]

    def probabilities(self, z):
        """The model's probabilities from its output ``z`` (a fresh C-contiguous
        array of its own, overwritten): softmax rows (cross_entropy), sigmoid
        (bce_with_logits); ``z`` itself for regression."""
        if self.name == "cross_entropy":
            if z.size:
                _losses.softmax_rows(z, z, plan_threads(z.size, GRAIN_COMPUTE))
            return z
        if self.name == "bce_with_logits":
            return functional.sigmoid(z, out=z)
        return z

    def predictions(self, z):
        """Predicted classes (cross_entropy), 0/1 labels (bce_with_logits) or the
        values themselves (mse) from the model's output ``z``."""
        if self.name == "cross_entropy":
            return z.argmax(axis=1)
        if self.name == "bce_with_logits":
            return (z > 0).astype(np.int64)
        return z

    def evaluate(self, out, target):
        """``(mean loss, scores)`` of a model's output against its checked targets."""
        return self.compute(out, target, np.empty_like(out)), self.scores(out, target)

    def headline(self, scores):
        """The one metric ``evaluate`` methods report: R^2 for mse, else the only score."""
        return scores["r2"] if self.name == "mse" else next(iter(scores.values()))

    def scores(self, out, target):
        if self.name == "cross_entropy":
            return {"accuracy": metrics.accuracy(target, np.argmax(out, axis=1))}
        if self.name == "mse":
            return {"mse": metrics.mean_squared_error(target, out), "r2": metrics.r2_score(target, out)}
        return {"binary_accuracy": metrics.binary_accuracy(target, out)}


_NO_WEIGHTS = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def _bce(z, t, grad, work, n_threads):
    return _losses.bce_logits_rows(z, t, _NO_WEIGHTS[z.dtype], grad, work, n_threads)


LOSSES = {
    "cross_entropy": Loss("cross_entropy", functional.softmax_cross_entropy, _losses.softmax_xent, GRAIN_COMPUTE,
                          True),
    "mse": Loss("mse", functional.mse_loss, _losses.mse_rows, GRAIN_MEMORY, False),
    "bce_with_logits": Loss("bce_with_logits", functional.bce_with_logits, _bce, GRAIN_COMPUTE, False),
}


def get(name):
    """The :class:`Loss` called ``name``; ValueError listing the valid names."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; valid names are {', '.join(LOSSES)}") from None
