"""Scores of predictions: classification accuracy, regression error and R^2,
multi-label accuracy on logits; scores of predicted probabilities (negative
log-likelihood, Brier score, expected calibration error and the data of a
reliability diagram); the area under the ROC curve of a score separating two
groups (e.g. predictive entropy as an out-of-distribution detector).

Every function checks its arguments (ValueError / TypeError naming them and
their shapes: two arrays are compared only when their shapes are identical,
never broadcast), computes in float64 and returns a Python float; an empty
input scores NaN.  The definitions are scikit-learn's (``accuracy_score``,
``mean_squared_error``, ``r2_score`` with its defaults, ``log_loss``,
multi-class ``brier_score_loss``, ``roc_auc_score``), Keras'
(``binary_accuracy``) and torchmetrics' (``MulticlassCalibrationError``);
:mod:`fastwb.reference.metrics` holds their NumPy twins.

Probabilities (``proba``) are an ``(n, classes)`` float array whose rows are
probability distributions: values in [0, 1], each row summing to 1 within
``1e-3`` (``predict_proba``'s output; logits are refused with a message
saying so), and ``y`` holds one integer class index per row.
"""

import numpy as np

from fastwb._validate import check_int, check_real

__all__ = ["accuracy", "mean_squared_error", "r2_score", "binary_accuracy", "nll", "brier_score",
           "expected_calibration_error", "reliability_diagram", "auroc", "NLL_EPS"]


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


# ---------------------------------------------------------------------------
# scores of predicted probabilities
# ---------------------------------------------------------------------------

#: the probability :func:`nll` clips at (from below): a true class given
#: probability 0 costs ``-log(1e-12)`` = 27.6 nats instead of infinity
NLL_EPS = 1e-12

_ROW_SUM_TOL = 1e-3     # how far a row of probabilities may sum from 1 (float32 softmax: ~1e-7)


def _labels_and_proba(y, proba):
    """``y`` as an int64 array of n class indices and ``proba`` as an (n, C) float64
    array of probability rows, or an error naming the argument, its shape and the first bad row."""
    proba = np.asarray(proba)
    if proba.dtype.kind != "f":
        raise TypeError(f"proba must hold probabilities (a float array), got dtype {proba.dtype}")
    if proba.ndim != 2:
        raise ValueError(f"proba must be 2-D (n, classes), got {proba.ndim}-D array of shape {proba.shape}")
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    n, classes = proba.shape
    if y.shape != (n,):
        raise ValueError(f"y has shape {y.shape} but proba has shape {proba.shape}; they need one label per row")
    if n and classes == 0:
        raise ValueError(f"proba has shape {proba.shape}: no classes")
    if n:
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"y[{i}] = {y[i]} is not a class index in [0, {classes}) (proba has {classes} columns)")
    p = proba.astype(np.float64, copy=False)
    _check_rows(p)
    return y.astype(np.int64, copy=False), p


def _check_rows(p):
    """ValueError naming the first row of ``p`` that is not a probability distribution."""
    if not p.size:
        return
    inside = np.all((p >= 0) & (p <= 1), axis=1)       # False for NaN too
    sums = p.sum(axis=1)
    ok = inside & (np.abs(sums - 1) <= _ROW_SUM_TOL)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        what = "values outside [0, 1]" if not inside[i] else f"a sum of {float(sums[i])!r}"
        raise ValueError(f"proba[{i}] has {what}: proba must hold probabilities, rows summing to 1 "
                         "(predict_proba's output, not logits)")


def nll(y, proba, eps=NLL_EPS):
    r"""Mean negative log-likelihood of the true classes (the cross-entropy of
    probabilities; scikit-learn's ``log_loss`` with the true labels):

    .. math:: \mathrm{NLL} = -\frac1n \sum_i \log \max(p_{i, y_i}, \epsilon)

    ``eps`` (default :data:`NLL_EPS` = 1e-12, a real number in (0, 1)) bounds a
    row's loss at :math:`-\log\epsilon`: a float32 softmax can give a true class
    probability 0 where the logits differ by more than about 104.  scikit-learn
    clips at the dtype's machine epsilon instead (about 1e-7 for float32,
    2.2e-16 for float64), so the two differ only on rows so confidently wrong."""
    eps = check_real("eps", eps, minimum=0.0, maximum=1.0)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    y, p = _labels_and_proba(y, proba)
    if y.size == 0:
        return float("nan")
    true = p[np.arange(y.size), y]
    return float(-np.mean(np.log(np.maximum(true, eps))))


def brier_score(y, proba):
    r"""Multi-class Brier score: the mean over rows of the squared distance
    between the probability row and the one-hot truth,

    .. math:: \mathrm{BS} = \frac1n \sum_i \sum_c (p_{ic} - [c = y_i])^2

    Brier's (1950) definition, summed over the classes (not averaged): it lies
    in [0, 2], 0 for a certain right answer and 2 for a certain wrong one.  It
    is scikit-learn's multi-class ``brier_score_loss`` (>= 1.7, with
    ``labels`` of every column); for two classes it is twice the binary Brier
    score of the positive class (``scale_by_half``)."""
    y, p = _labels_and_proba(y, proba)
    if y.size == 0:
        return float("nan")
    rows = np.arange(y.size)
    # sum_c (p_c - [c = y])^2 = sum_c p_c^2 - 2 p_y + 1
    return float(np.mean(np.einsum("ij,ij->i", p, p) - 2 * p[rows, y] + 1))


def _bins(y, proba, n_bins):
    """Bin index, confidence and correctness of every row, for the calibration scores."""
    n_bins = check_int("n_bins", n_bins, 1)
    y, p = _labels_and_proba(y, proba)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin k holds edges[k] < c <= edges[k + 1]: searchsorted's "left" side gives the first edge >= c
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    return index, confidence, correct, edges


def reliability_diagram(y, proba, n_bins=15):
    """The data of a reliability diagram: ``n_bins`` equal-width bins of the
    confidence (each row's largest probability), as in
    :func:`expected_calibration_error`.  Returns a dict of arrays:

    * ``edges`` (n_bins + 1,): the bin edges ``k / n_bins``;
    * ``confidence`` (n_bins,): the mean confidence of the rows in each bin;
    * ``accuracy`` (n_bins,): the fraction of them whose argmax is the label;
    * ``count`` (n_bins,) int64: how many rows fall in each bin.

    An empty bin has NaN confidence and accuracy (torchmetrics writes 0 there;
    its weight in the ECE is 0 either way).  :func:`fastwb.plots.plot_reliability`
    draws it."""
    index, confidence, correct, edges = _bins(y, proba, n_bins)
    k = edges.size - 1
    count = np.bincount(index, minlength=k).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=k) / count
        accuracy = np.bincount(index, weights=correct, minlength=k) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(y, proba, n_bins=15):
    r"""Expected calibration error (top-label, L1), torchmetrics' convention
    (``MulticlassCalibrationError(n_bins=15, norm="l1")``): the confidence of a
    row is its largest probability, it is right when that class is the label;
    the rows are put in ``n_bins`` equal-width bins of the confidence, bin
    :math:`k` holding :math:`k/B < c \le (k+1)/B` (left-open, right-closed:
    a confidence of 1 is in the last bin; edges compared in float64), and

    .. math:: \mathrm{ECE} = \sum_k \frac{n_k}{n} \,\big|\mathrm{acc}_k - \mathrm{conf}_k\big|

    over the non-empty bins.  0 for a calibrated predictor (up to the noise of
    finite bins: about :math:`\sqrt{B / n}` times a fraction), at most 1."""
    index, confidence, correct, edges = _bins(y, proba, n_bins)
    if index.size == 0:
        return float("nan")
    k = edges.size - 1
    gap = np.bincount(index, weights=correct, minlength=k) - np.bincount(index, weights=confidence, minlength=k)
    return float(np.sum(np.abs(gap)) / index.size)


def _scores(name, s):
    s = np.asarray(s)
    if s.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {s.dtype}")
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per sample), got shape {s.shape}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"{name}[{i}] = {float(s[i])!r} is not finite")
    return s


def auroc(scores_pos, scores_neg):
    r"""Area under the ROC curve of a score meant to be higher for the positives:
    the probability that a random positive scores above a random negative,
    ties counting one half (the Mann-Whitney U statistic over
    :math:`n_+ n_-`; scikit-learn's ``roc_auc_score`` with the positives
    labelled 1):

    .. math:: \mathrm{AUROC} = \frac{1}{n_+ n_-} \sum_{i \in +} \sum_{j \in -}
              \big([s_i > s_j] + \tfrac12 [s_i = s_j]\big)

    1 separates the groups perfectly, 0.5 is chance.  E.g. out-of-distribution
    detection by predictive entropy: ``auroc(entropy_ood, entropy_in)``.
    ``scores_pos`` and ``scores_neg``: 1-D finite real arrays (of any lengths);
    NaN when either is empty.  Computed from the ranks of the pooled scores
    (ties get their mean rank): O((n_+ + n_-) log(n_+ + n_-))."""
    pos, neg = _scores("scores_pos", scores_pos), _scores("scores_neg", scores_neg)
    n_pos, n_neg = pos.size, neg.size
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    pooled = np.concatenate([pos, neg])
    order = np.argsort(pooled, kind="stable")
    ranked = pooled[order]
    # runs of equal scores: each gets the mean of the ranks (1-based) it spans
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], ranked.size]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(pooled.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
