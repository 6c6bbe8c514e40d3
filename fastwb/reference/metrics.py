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
