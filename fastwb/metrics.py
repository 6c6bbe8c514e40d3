"""Scores of predictions: classification accuracy, regression error and R^2,
multi-label accuracy on logits.

Every function checks its arguments (ValueError / TypeError naming them and
their shapes: two arrays are compared only when their shapes are identical,
never broadcast), computes in float64 and returns a Python float; an empty
input scores NaN.  The definitions are scikit-learn's (``accuracy_score``,
``mean_squared_error``, ``r2_score`` with its defaults) and Keras'
(``binary_accuracy``); :mod:`fastwb.reference.metrics` holds their NumPy twins.
"""

import numpy as np

from fastwb._validate import check_real

__all__ = ["accuracy", "mean_squared_error", "r2_score", "binary_accuracy"]


def _pair(name_a, a, name_b, b, kinds, what):
    """Two arrays of exactly one shape whose dtypes are of the given kinds."""
    a, b = np.asarray(a), np.asarray(b)
    for name, v in ((name_a, a), (name_b, b)):
        if v.dtype.kind not in kinds:
            raise TypeError(f"{name} must hold {what}, got dtype {v.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")
    return a, b


def _targets(name, y, ndim):
    if y.ndim not in ndim:
        shapes = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{name} must be {shapes}, got {y.ndim}-D array of shape {y.shape}")


def accuracy(y_true, y_pred):
    r"""Fraction of samples whose predicted class equals the true one:
    :math:`\frac1n \sum_i [\hat y_i = y_i]` (scikit-learn's ``accuracy_score``).

    ``y_true`` and ``y_pred`` are 1-D integer class labels of one length (the
    predicted classes, e.g. ``argmax`` of the logits, not the logits)."""
    y_true, y_pred = _pair("y_true", y_true, "y_pred", y_pred, "iu", "integer class labels")
    _targets("y_true", y_true, (1,))
    if y_true.size == 0:
        return float("nan")
    return float(np.count_nonzero(y_true == y_pred)) / y_true.size


def _regression(y_true, y_pred):
    y_true, y_pred = _pair("y_true", y_true, "y_pred", y_pred, "iuf", "real numbers")
    _targets("y_true", y_true, (1, 2))
    return y_true.astype(np.float64, copy=False), y_pred.astype(np.float64, copy=False)


def mean_squared_error(y_true, y_pred):
    r"""Mean squared error :math:`\frac1{n k} \sum_{i,j} (y_{ij} - \hat y_{ij})^2` over
    n samples and k outputs (scikit-learn's ``mean_squared_error``: the uniform
    average of the outputs' errors, which is the mean over all elements).
    ``y_true`` and ``y_pred``: 1-D (one output) or 2-D (n, k), one shape."""
    y_true, y_pred = _regression(y_true, y_pred)
    if y_true.size == 0:
        return float("nan")
    diff = y_true - y_pred
    return float(np.mean(diff * diff))


def r2_score(y_true, y_pred):
    r"""Coefficient of determination, scikit-learn's ``r2_score`` with its defaults:
    per output :math:`j`,

    .. math:: R^2_j = 1 - \frac{\sum_i (y_{ij} - \hat y_{ij})^2}{\sum_i (y_{ij} - \bar y_j)^2}

    averaged uniformly over the outputs.  An output whose targets are constant
    (zero denominator) scores 1.0 when predicted exactly and 0.0 otherwise, as in
    scikit-learn (``force_finite=True``).  Fewer than two samples: NaN (R^2 is not
    defined; scikit-learn warns and returns NaN too).  1-D or 2-D, one shape."""
    y_true, y_pred = _regression(y_true, y_pred)
    if y_true.shape[0] < 2:
        return float("nan")
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    if y_true.shape[1] == 0:
        return float("nan")
    diff = y_true - y_pred
    numerator = np.sum(diff * diff, axis=0)
    centred = y_true - np.mean(y_true, axis=0)
    denominator = np.sum(centred * centred, axis=0)
    scores = np.ones(y_true.shape[1])
    valid = (denominator != 0) & (numerator != 0)
    scores[valid] = 1.0 - numerator[valid] / denominator[valid]
    scores[(numerator != 0) & (denominator == 0)] = 0.0
    return float(np.mean(scores))


def binary_accuracy(targets, logits, threshold=0.5):
    r"""Multi-label accuracy: the fraction of 0/1 decisions that are right, over all
    elements, where the model says 1 when :math:`\sigma(z) > \text{threshold}`
    (Keras' ``binary_accuracy`` applied to ``sigmoid(logits)``).

    ``targets`` (0/1 labels; values in [0, 1] count as 1 above 0.5, as
    :func:`fastwb.bce_with_logits` accepts soft targets) and ``logits`` have one
    shape; ``threshold`` is a probability in [0, 1].  The comparison is made on
    the logits against :math:`\mathrm{logit}(\text{threshold})`, so no sigmoid is
    evaluated.
    """
    threshold = check_real("threshold", threshold, minimum=0.0, maximum=1.0)
    targets, logits = _pair("targets", targets, "logits", logits, "biuf", "numbers")
    if targets.size == 0:
        return float("nan")
    if targets.dtype.kind != "b" and not np.all((targets >= 0) & (targets <= 1)):
        raise ValueError("targets must be 0/1 labels (values in [0, 1]), found values outside [0, 1]")
    logits = logits.astype(np.float64, copy=False)
    with np.errstate(divide="ignore"):
        cut = np.log(threshold) - np.log1p(-threshold)      # logit(threshold), +-inf at 1 and 0
    said_one = logits > cut
    is_one = targets > 0.5
    return float(np.count_nonzero(said_one == is_one)) / targets.size
