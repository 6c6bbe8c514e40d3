"""Twin of fastwb.prune: np.percentile, sorting and boolean masks."""

import numpy as np

from fastwb.reference.functional import _disjoint


def magnitude_threshold(weights, percentile):
    return np.percentile(np.abs(weights), float(percentile))


def magnitude_prune(weights, percentile=90, out=None, mask_out=None):
    _disjoint(out, mask_out)
    if any(o is not None and np.may_share_memory(weights, o) for o in (out, mask_out)):
        weights = np.array(weights, copy=True)
    threshold = np.percentile(np.abs(weights), float(percentile))
    mask = np.greater_equal(np.abs(weights), threshold, out=mask_out)
    pruned = np.multiply(weights, mask, out=out)
    return pruned, 1.0 - np.count_nonzero(mask) / mask.size, mask


def _count(amount, n):
    return int(amount) if isinstance(amount, (int, np.integer)) else round(float(amount) * n)


def l1_unstructured(weights, amount):
    weights = np.asarray(weights)
    k = _count(amount, weights.size)
    mask = np.ones(weights.size, bool)
    mask[np.argsort(np.abs(weights).ravel(), kind="stable")[:k]] = False
    return mask.reshape(weights.shape)


def global_unstructured(arrays, amount):
    flat = np.concatenate([np.asarray(a).ravel() for a in arrays])
    mask = l1_unstructured(flat, amount)
    out, start = [], 0
    for a in arrays:
        out.append(mask[start:start + np.size(a)].reshape(np.shape(a)))
        start += np.size(a)
    return out


def apply_mask(weights, mask):
    weights[~mask] = 0
    return weights


def sparsity(mask):
    return 1.0 - np.count_nonzero(mask) / np.size(mask) if np.size(mask) else 0.0
