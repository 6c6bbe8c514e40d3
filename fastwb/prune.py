"""Magnitude pruning: thresholds by O(n) selection, masks, schedules.

* :func:`magnitude_threshold` equals ``np.percentile(np.abs(w), p)`` bit for
  bit (NumPy's default linear interpolation) but finds the two order
  statistics it needs by radix selection over the bit patterns of |w|
  (``csrc/fwb_select_impl.h``): a few passes over memory, no copy, no sort.
* :func:`magnitude_prune` is the slides' ``prune_weights`` in one more pass:
  keep-mask ``|w| >= threshold``, pruned weights and the kept count.
* :func:`l1_unstructured` / :func:`global_unstructured` prune exactly
  ``k`` weights of smallest magnitude, as ``torch.nn.utils.prune`` does
  (``amount`` an int count or a float fraction, ``round(amount * n)``); ties
  at the cut are pruned in index order, so the result is deterministic.
* :class:`CubicSchedule` (Zhu and Gupta, 2017), :class:`LinearSchedule` (the
  slides') and :class:`GradualPruner`, which prunes a list of parameter
  arrays on schedule and hands the masks to a :mod:`fastwb.optim` optimizer.
"""

import math

import numpy as np

from fastwb import _prune
from fastwb._runtime import GRAIN_MEMORY, plan_threads
from fastwb._validate import check_int, check_real, disjoint_outputs, float_array, out_array, unaliased

__all__ = [
    "magnitude_threshold",
    "magnitude_prune",
    "l1_unstructured",
    "global_unstructured",
    "apply_mask",
    "grow_masks",
    "sparsity",
    "LinearSchedule",
    "CubicSchedule",
    "GradualPruner",
    "schedule_for",
]


class _Workspace:
    """Per-thread scratch for the selection passes (a few KiB)."""

    def __init__(self, n_threads):
        self.n_threads = n_threads
        self.hist = np.empty((n_threads, 2048), np.int64)
        self.counts = np.empty(n_threads, np.int64)
        self.keys = np.empty(n_threads, np.uint64)


def _flat(name, w):
    w = float_array(name, w)
    return w, w.reshape(-1)


def _workspace(n):
    # the selection passes read 1 element per key; use all threads on big arrays
    return _Workspace(plan_threads(n, GRAIN_MEMORY))


def _check_percentile(p):
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise TypeError(f"percentile must be a real number in [0, 100], got {type(p).__name__}") from None
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {p}")
    return p


def _order_statistic(flat, k, ws):
    """(value, key, n_less, n_equal, n_nan, next_value) of the k-th smallest |w|."""
    return _prune.select_abs(flat, k, ws.hist, ws.counts, ws.n_threads)


def _threshold(flat, p, ws):
    """np.percentile(np.abs(flat), p) for a Python float p, by NumPy's own arithmetic."""
    n = flat.shape[0]
    dtype = flat.dtype.type
    q = p / 100.0
    virtual = (n - 1) * q
    prev = math.floor(virtual)
    nxt = prev + 1
    if virtual >= n - 1:
        prev = nxt = n - 1
        gamma = virtual - (-1.0)        # NumPy uses the index -1 for "last" here
    else:
        gamma = virtual - prev
    a, key, n_less, n_equal, n_nan, next_value = _order_statistic(flat, prev, ws)
    if n_nan:
        return dtype(np.nan)
    if nxt == prev or n_less + n_equal > nxt:
        b = a
    elif next_value is not None:
        b = next_value
    else:
        b, _ = _prune.min_abs_above(flat, key, ws.keys, ws.n_threads)
    a, b = dtype(a), dtype(b)
    diff = b - a
    with np.errstate(invalid="ignore"):
        if gamma >= 0.5:
            return b - diff * dtype(1 - gamma)
        return a + diff * dtype(gamma)


def magnitude_threshold(weights, percentile):
    r"""The ``percentile``-th percentile of ``|weights|``, equal to
    ``np.percentile(np.abs(weights), percentile)`` bit for bit.

    With :math:`n` weights and :math:`h = (n-1)\,p/100`, it interpolates
    linearly between the :math:`\lfloor h\rfloor`-th and
    :math:`(\lfloor h\rfloor+1)`-th smallest magnitudes (NumPy's ``linear``
    method), found in O(n) by radix selection.  NaN in ``weights`` gives NaN.
    Returns a scalar of the weights' dtype.
    """
    p = _check_percentile(percentile)
    w, flat = _flat("weights", weights)
    if flat.size == 0:
        raise ValueError("weights is empty: there is no percentile of an empty array")
    return _threshold(flat, p, _workspace(flat.size))


def magnitude_prune(weights, percentile=90, out=None, mask_out=None):
    """Prune the weights whose magnitude falls below the ``percentile``-th percentile.

    Returns ``(pruned_weights, sparsity, mask)`` exactly as the slides'
    ``prune_weights``: ``mask = |w| >= threshold`` (``threshold`` from
    :func:`magnitude_threshold`), ``pruned_weights = weights * mask`` and
    ``sparsity = 1 - kept / size``.  ``out`` (may be ``weights`` itself, to
    prune in place) and ``mask_out`` (a bool array) receive the results; they
    must not overlap each other, and weights that overlap them otherwise are
    read from a copy.
    """
    p = _check_percentile(percentile)
    w, flat = _flat("weights", weights)
    if flat.size == 0:
        raise ValueError("weights is empty: nothing to prune")
    pruned = out_array("out", out, w.shape, w.dtype)
    mask = out_array("mask_out", mask_out, w.shape, np.dtype(np.bool_))
    disjoint_outputs(out=pruned, mask_out=mask)
    w = unaliased(unaliased(w, mask, inplace=False), pruned)
    flat = w.reshape(-1)
    ws = _workspace(flat.size)
    threshold = _threshold(flat, p, ws)
    kept = _prune.prune_threshold(flat, pruned.reshape(-1), mask.reshape(-1).view(np.uint8), float(threshold),
                                  ws.counts, ws.n_threads)
    return pruned, 1.0 - kept / flat.size, mask


def _prune_count(amount, n):
    """torch.nn.utils.prune's amount: an int count in [0, n] or a float fraction in [0, 1]."""
    if isinstance(amount, (bool, np.bool_)):
        raise TypeError("amount must be an int count or a float fraction, got bool")
    if isinstance(amount, (int, np.integer)):
        if not 0 <= amount <= n:
            raise ValueError(f"amount={amount} weights cannot be pruned from {n}")
        return int(amount)
    if isinstance(amount, (float, np.floating)):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount must be a fraction in [0, 1] when it is a float, got {amount}")
        return round(float(amount) * n)
    raise TypeError(f"amount must be an int count or a float fraction, got {type(amount).__name__}")


def _exact_k_mask(flat, k, ws):
    """Keep-mask (uint8) dropping the k smallest |flat|, ties at the cut in index order."""
    mask = np.ones(flat.shape[0], np.uint8)
    if k == 0:
        return mask
    _, cut, n_less, _, _, _ = _order_statistic(flat, k - 1, ws)
    _prune.mask_exact_k(flat, mask, cut, k - n_less, ws.counts, ws.n_threads)
    return mask


def l1_unstructured(weights, amount):
    """Keep-mask that prunes the ``amount`` weights of smallest magnitude.

    ``amount`` is an int (how many) or a float fraction of ``weights.size``
    (``round(amount * size)`` are pruned, Python's rounding, as
    ``torch.nn.utils.prune.l1_unstructured``).  Returns a bool array shaped
    like ``weights``, False where pruned.  For distinct magnitudes it equals
    PyTorch's mask; among equal magnitudes at the cut, the lowest indices are
    pruned first.  NaN counts as the largest magnitude.
    """
    w, flat = _flat("weights", weights)
    k = _prune_count(amount, flat.size)
    return _exact_k_mask(flat, k, _workspace(flat.size)).view(np.bool_).reshape(w.shape)


def global_unstructured(arrays, amount):
    """Keep-masks that prune the ``amount`` smallest magnitudes across all ``arrays`` together.

    As ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``:
    ``amount`` counts (int) or is a fraction (float) of the total size;
    returns one bool mask per array.  Ties at the cut are pruned in order of
    the arrays, then of the indices.
    """
    arrays = [float_array(f"arrays[{i}]", a) for i, a in enumerate(arrays)]
    if not arrays:
        raise ValueError("arrays is empty")
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise TypeError(f"arrays have mixed dtypes {sorted(map(str, dtypes))}; convert them to one dtype")
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    k = _prune_count(amount, flat.size)
    mask = _exact_k_mask(flat, k, _workspace(flat.size)).view(np.bool_)
    out, start = [], 0
    for a in arrays:
        out.append(mask[start:start + a.size].reshape(a.shape))
        start += a.size
    return out


def apply_mask(weights, mask):
    """Set ``weights`` to exactly 0 where ``mask`` is False, in place; returns ``weights``."""
    if not isinstance(weights, np.ndarray) or not weights.flags.c_contiguous or not weights.flags.writeable:
        raise ValueError("weights must be a writeable C-contiguous array (it is changed in place)")
    float_array("weights", weights)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != weights.shape:
        raise ValueError(f"mask must be a bool array of shape {weights.shape}, got {mask.dtype}{mask.shape}")
    mask = unaliased(np.ascontiguousarray(mask), weights, inplace=False)
    if weights.size:
        _prune.apply_mask(weights.reshape(-1), mask.reshape(-1).view(np.uint8),
                          plan_threads(weights.size, GRAIN_MEMORY))
    return weights


SCOPES = ("layer", "global")


def _check_scope(scope):
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")


def grow_masks(arrays, sparsity, scope="layer", masks=None):
    """Prune ``arrays`` in place to ``sparsity`` by magnitude and return their keep-masks.

    ``scope="layer"`` prunes each array to that sparsity (:func:`l1_unstructured`),
    ``"global"`` all of them together (:func:`global_unstructured`).  The new
    masks are ANDed with ``masks`` (the previous ones, or None), so a pruned
    weight is never revived, and applied: pruned entries become exactly 0."""
    _check_scope(scope)
    if scope == "global":
        new = global_unstructured(arrays, float(sparsity))
    else:
        new = [l1_unstructured(a, float(sparsity)) for a in arrays]
    if masks is not None:
        new = [m & old for m, old in zip(new, masks)]
    for a, m in zip(arrays, new):
        apply_mask(a, m)
    return new


def sparsity(mask):
    """Fraction of False entries of a keep-mask."""
    mask = np.asarray(mask, dtype=bool)
    return 1.0 - np.count_nonzero(mask) / mask.size if mask.size else 0.0


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------

class LinearSchedule:
    """The slides' schedule: from ``initial_sparsity`` the target grows by
    ``(target - initial) / prune_steps`` every ``max(1, prune_steps // 10)``
    steps, up to ``target_sparsity``.  (The slides divide by
    ``prune_steps // 10``, which is 0 for fewer than 10 steps.)"""

    def __init__(self, initial_sparsity=0.0, target_sparsity=0.9, prune_steps=10):
        self.initial_sparsity, self.target_sparsity = _check_sparsities(initial_sparsity, target_sparsity)
        self.prune_steps = check_int("prune_steps", prune_steps, 1)
        self.step_size = (self.target_sparsity - self.initial_sparsity) / self.prune_steps
        self.every = max(1, self.prune_steps // 10)

    def __call__(self, step):
        """Target sparsity after ``step`` steps (step 0: the initial sparsity),
        in O(1): ``min(initial + k * step_size, target)`` with ``k = step // every``
        increments so far (the slides add the increment k times; the sum is
        the same up to rounding, and exactly the target once it is reached)."""
        k = _check_step(step) // self.every
        if k == 0:
            return self.initial_sparsity
        if k >= self.prune_steps:
            return self.target_sparsity
        return min(self.initial_sparsity + k * self.step_size, self.target_sparsity)


class CubicSchedule:
    r"""Gradual pruning schedule of Zhu and Gupta (2017):

    .. math:: s_t = s_f + (s_0 - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3

    for :math:`t_0 \le t \le t_0 + n\Delta t`, evaluated at the last pruning
    step :math:`t_0 + k\Delta t \le t`; :math:`s_0` before :math:`t_0` and
    :math:`s_f` after.  Sparsity rises fast at first, then levels off.
    """

    def __init__(self, initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, n_steps=100, frequency=1):
        self.initial_sparsity, self.final_sparsity = _check_sparsities(initial_sparsity, final_sparsity)
        self.begin_step = check_int("begin_step", begin_step, 0)
        self.n_steps = check_int("n_steps", n_steps, 1)
        self.frequency = check_int("frequency", frequency, 1)

    def __call__(self, step):
        t = _check_step(step) - self.begin_step
        if t < 0:
            return self.initial_sparsity
        span = self.n_steps * self.frequency
        t = min((t // self.frequency) * self.frequency, span)
        s0, sf = self.initial_sparsity, self.final_sparsity
        return sf + (s0 - sf) * (1.0 - t / span) ** 3


def _check_step(step):
    """A schedule's step: an integer >= 0."""
    return check_int("step", step, 0)


def _check_sparsities(initial, final):
    return (check_real("initial sparsity", initial, 0.0, 1.0),
            check_real("final (target) sparsity", final, 0.0, 1.0))


def schedule_for(spec, total_steps):
    """The pruning schedule of ``fit(prune_schedule=spec)``: None (no pruning), a
    callable ``step -> sparsity`` (used as it is), or a final sparsity in [0, 1)
    reached by a :class:`CubicSchedule` over the first three quarters of
    ``total_steps``, pruning about 100 times (measured on MNIST 784-256-10:
    97.3-97.5% test accuracy at 90% sparsity)."""
    if spec is None:
        return None
    if callable(spec):
        return spec
    target = check_real("prune_schedule (a final sparsity)", spec, 0.0, below=1.0)
    span = max(1, (3 * total_steps) // 4)
    frequency = max(1, span // 100)
    return CubicSchedule(0.0, target, begin_step=0, n_steps=max(1, span // frequency), frequency=frequency)


class GradualPruner:
    """Prune parameter arrays to a scheduled sparsity as training goes.

    ``step()`` (call it once per optimizer step) reads the schedule's target
    sparsity and, when it has grown, prunes each array (``scope="layer"``) or
    all together (``scope="global"``) to that sparsity by magnitude with
    :func:`l1_unstructured`.  Pruned weights are 0, so they stay pruned: masks
    only grow.  The masks are applied to the arrays and, when an optimizer is
    given, installed in it so the weights stay at exactly 0.  The optimizer
    may hold more arrays than are pruned (the biases, say): each pruned array
    must be one of its parameters, and the others keep their masks.
    """

    def __init__(self, params, schedule, optimizer=None, scope="layer"):
        _check_scope(scope)
        self.params = list(params) if not isinstance(params, np.ndarray) else [params]
        if optimizer is not None:
            optimizer.index_of(self.params)         # each pruned array must be one of its parameters
        self.schedule = schedule
        self.optimizer = optimizer
        self.scope = scope
        self.step_count = 0
        self.current = None
        self.masks = [np.ones(p.shape, bool) for p in self.params]

    def step(self):
        """Advance one step; prune if the target sparsity grew.  Returns the target."""
        target = float(self.schedule(self.step_count))
        self.step_count += 1
        if self.current is None or target > self.current:
            self.prune_to(target)
        return target

    def prune_to(self, target):
        """Prune every array (or all together) to ``target`` sparsity now."""
        target = check_real("target sparsity", target, 0.0, 1.0)
        self.masks = grow_masks(self.params, target, self.scope, self.masks)
        if self.optimizer is not None:
            self.optimizer.mask_params(self.params, self.masks)
        self.current = target

    def sparsities(self):
        """Achieved sparsity of each array."""
        return [sparsity(m) for m in self.masks]
