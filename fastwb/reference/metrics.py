"""Pure-NumPy twins of fastwb.metrics (see fastwb.reference)."""

import numpy as np


def accuracy(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == y_pred))


def mean_squared_error(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if y_true.size == 0:
        return float("nan")
    if y_true.ndim == 1:
        return float(np.mean((y_true - y_pred) ** 2))
    return float(np.mean(np.mean((y_true - y_pred) ** 2, axis=0)))


def r2_score(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if len(y_true) < 2:
        return float("nan")
    y_true, y_pred = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
    if y_true.shape[1] == 0:
        return float("nan")
    ss_res = ((y_true - y_pred) ** 2).sum(axis=0)
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1 - ss_res / ss_tot
    r2 = np.where(ss_tot == 0, np.where(ss_res == 0, 1.0, 0.0), r2)
    return float(np.mean(r2))


def binary_accuracy(targets, logits, threshold=0.5):
    targets, logits = np.asarray(targets), np.asarray(logits, np.float64)
    if targets.size == 0:
        return float("nan")
    e = np.exp(-np.abs(logits))
    prob = np.where(logits >= 0, 1, e) / (1 + e)
    return float(np.mean((prob > threshold) == (targets > 0.5)))


NLL_EPS = 1e-12


def nll(y, proba, eps=NLL_EPS):
    y, proba = np.asarray(y), np.asarray(proba, np.float64)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0))))


def brier_score(y, proba):
    y, proba = np.asarray(y), np.asarray(proba, np.float64)
    if y.size == 0:
        return float("nan")
    onehot = np.eye(proba.shape[1])[y]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def reliability_diagram(y, proba, n_bins=15):
    # one mask per bin (lo, hi], as torchmetrics' loop over the bins
    y, proba = np.asarray(y), np.asarray(proba, np.float64)
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    mean_conf, accuracy, count = np.full(n_bins, np.nan), np.full(n_bins, np.nan), np.zeros(n_bins, np.int64)
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        in_bin = (confidence > lo) & (confidence <= hi)
        count[k] = in_bin.sum()
        if count[k]:
            mean_conf[k] = confidence[in_bin].mean()
            accuracy[k] = correct[in_bin].mean()
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(y, proba, n_bins=15):
    if np.asarray(y).size == 0:
        return float("nan")
    d = reliability_diagram(y, proba, n_bins)
    used = d["count"] > 0
    weight = d["count"][used] / d["count"].sum()
    return float(np.sum(weight * np.abs(d["accuracy"][used] - d["confidence"][used])))


def auroc(scores_pos, scores_neg):
    # for each positive: the negatives below it, and half of those equal to it
    pos, neg = np.asarray(scores_pos, np.float64), np.sort(np.asarray(scores_neg, np.float64))
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (pos.size * neg.size))
