"""Adversarial examples for :class:`fastwb.nn.Sequential` models (``fastwb.MLP``
included): FGSM, PGD, and accuracy under attack.

    from fastwb import adversarial
    X_adv = adversarial.fgsm(model, X_test, y_test, eps=0.1)           # one signed-gradient step
    X_adv = adversarial.pgd(model, X_test, y_test, eps=0.1, steps=10)  # projected gradient descent
    adversarial.robustness(model, X_test, y_test, attack="pgd", eps=0.1)
    # {'clean_accuracy': 0.9775, 'robust_accuracy': 0.057, ...} (784-256-10, 5 epochs on MNIST)

The building block is :func:`perturb`, one fused compiled pass
``clip(X + eps * sign(grad), lo, hi)`` (fastwb/_adversarial.pyx), and
:func:`pgd_step`, the same with the projection onto the eps-ball around the
clean input.  The attacks feed them :meth:`Sequential.input_gradient`: the
gradient of the mean loss with respect to the input, one compiled forward and
an input-gradient-only backward (no weight gradient), in eval mode (dropout
off, BatchNorm on its running statistics).  The model is not changed:
parameters, buffers, gradients, step count and mode stay as they were.  X
runs in chunks of ``batch_size`` rows (memory, not results: the sign of the
mean loss's gradient is the sign of each row's own loss gradient).

Rounding: every step is computed in the data's dtype, so ``|X_adv - X|`` can
exceed eps by the rounding of one addition (half a unit in the last place of
X's values); the twin (:mod:`fastwb.reference.adversarial`) gives the same
bits.

Thread safety: the attacks call ``input_gradient``, a training-class method
(it writes the model's workspaces), so two attacks on one model at once from
two threads raise RuntimeError; attack ``model.copy()`` from each thread.
"""

import inspect
import math

import numpy as np

from fastwb import _adversarial
from fastwb._runtime import GRAIN_MEMORY, plan_threads
from fastwb._validate import (check_int, check_real, float_array, out_array, same_dtype, same_shape,
                              unaliased)

__all__ = ["perturb", "pgd_step", "fgsm", "pgd", "robust_accuracy", "robustness", "plot_examples", "ATTACKS",
           "NAN_POLICIES"]

#: what :func:`perturb` and :func:`pgd_step` do with a NaN in ``grad``
NAN_POLICIES = ("raise", "propagate")


# -- checks ------------------------------------------------------------------------------------

def _in_dtype(name, value, dtype, minimum=None):
    """``value`` (a finite real number) rounded to ``dtype``, as a Python float; a
    ValueError naming ``name`` when it is NaN, infinite, below ``minimum`` or too
    large for the dtype."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = check_real(name, value, minimum=minimum)
    with np.errstate(over="ignore"):
        rounded = float(np.asarray(value, dtype=np.float64).astype(dtype))
    if not math.isfinite(rounded):
        raise ValueError(f"{name} = {value!r} is too large for {np.dtype(dtype).name} (it rounds to {rounded})")
    return rounded


def _check_clip(clip, dtype):
    """``(lo, hi)`` rounded to ``dtype``: ``clip`` a pair of real numbers (infinities
    allowed, for one-sided ranges; not NaN) with lo <= hi, or None for no range
    (-inf, inf)."""
    if clip is None:
        return -math.inf, math.inf
    if isinstance(clip, (str, bytes)) or not hasattr(clip, "__len__") or len(clip) != 2:
        raise TypeError(f"clip must be a pair (lo, hi) of numbers or None, got {clip!r}")
    bounds = []
    for name, v in zip(("clip[0] (lo)", "clip[1] (hi)"), clip):
        if isinstance(v, (bool, np.bool_, str, bytes)):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}") from None
        if math.isnan(v):
            raise ValueError(f"{name} is NaN; use an infinity for a range open on that side")
        bounds.append(v)
    if not bounds[0] <= bounds[1]:      # rounding to the dtype keeps the order (it may make them equal)
        raise ValueError(f"clip = ({clip[0]!r}, {clip[1]!r}) is empty: lo must be <= hi")
    with np.errstate(over="ignore"):
        return tuple(float(np.asarray(v).astype(dtype)) for v in bounds)


def _nan_check(nan, out):
    """The kernels' NaN check for the policy ``nan``: none ("propagate"); for
    "raise", a read-only pass first when the caller gave ``out`` (nothing may be
    written), else a flag taken in the one pass (the fresh output is dropped)."""
    if nan not in NAN_POLICIES:
        raise ValueError(f"nan must be one of {', '.join(map(repr, NAN_POLICIES))}, got {nan!r}")
    if nan == "propagate":
        return _adversarial.NO_CHECK
    return _adversarial.IN_PASS if out is None else _adversarial.FIRST


def _nan_error(grad, name="grad"):
    """The ValueError for a gradient holding NaN (counted here, on the error path only)."""
    flat = np.flatnonzero(np.isnan(grad.reshape(-1)))
    count = flat.size
    where = ", ".join(map(str, np.unravel_index(int(flat[0]), grad.shape))) if flat.size else "?"
    return ValueError(f"{name} holds {count} NaN value{'s' * (count != 1)} (the first at [{where}]): its sign is "
                      "undefined, so nothing was written (pass nan='propagate' to get NaN there instead)")


# -- the fused steps ---------------------------------------------------------------------------

def perturb(X, grad, eps, clip=(0.0, 1.0), out=None, nan="raise"):
    r"""The FGSM step, fused: ``clip(X + eps * sign(grad), lo, hi)`` in one compiled pass.

    ``X``, ``grad``: float32 or float64 arrays of one shape (any shape) and one
    dtype.  ``eps``: a finite real number, rounded to the dtype (an error if it
    overflows it).  A positive eps steps up the gradient (an untargeted attack
    on the loss); a negative eps steps against it: ``perturb(X, grad, -eps)``
    is the targeted step ``X - eps * sign(grad)`` with ``grad`` the gradient of
    the loss toward the target class.  ``sign(0) = 0``: an element whose
    gradient is exactly zero (``-0.0`` included) does not move.

    ``clip``: ``(lo, hi)``, the valid input range (default ``(0, 1)``, pixels
    in [0, 1]), rounded to the dtype, lo <= hi; an infinity leaves that side
    open; None: no range (no clipping).  A value of X outside the range is
    brought into it.  A value equal to a bound is kept as it is, and a NaN in
    X stays NaN, as with ``np.clip``.

    ``out``: an array of X's shape and dtype, C-contiguous, to write into; it
    may be X itself (in place).  Any other overlap of ``out`` with X, and any
    overlap with ``grad`` (``grad`` itself included), makes a private copy of
    that input first, so the result never depends on the order of writes.

    ``nan``: what a NaN in ``grad`` does.  ``"raise"`` (default): ValueError
    naming the count and the first position, and nothing the caller sees is
    written: without ``out`` the one pass notes the NaN on the way and its
    fresh result is dropped; with ``out`` (X in place included) a read-only
    pass over ``grad`` comes first, so ``out`` stays as it was.
    ``"propagate"``: one pass, and NaN in the result where ``grad`` is NaN
    (NumPy's ``sign(nan)`` is NaN).

    Threads: elementwise, split into contiguous parts (one thread below 2M
    elements), so the results do not depend on the thread count; they equal
    :func:`fastwb.reference.adversarial.perturb` bit for bit.  Returns ``out``.
    """
    check = _nan_check(nan, out)
    X = float_array("X", X)
    grad = float_array("grad", grad)
    dtype = same_dtype(X=X, grad=grad)
    same_shape("X", X, "grad", grad)
    eps = _in_dtype("eps", eps, dtype)
    lo, hi = _check_clip(clip, dtype)
    out = out_array("out", out, X.shape, dtype)
    # X may be out itself (the kernel's in-place loop); grad is copied if it shares any memory with out
    # (the kernel's other loop takes out as a restrict pointer)
    X, grad = unaliased(X, out), unaliased(grad, out, inplace=False)
    bad = _adversarial.fgsm_flat(X.reshape(-1), grad.reshape(-1), out.reshape(-1), eps, lo, hi, check,
                                 plan_threads(X.size, GRAIN_MEMORY))
    if bad:
        raise _nan_error(grad)
    return out


def pgd_step(X, X0, grad, alpha, eps, clip=(0.0, 1.0), out=None, nan="raise"):
    r"""One PGD step, fused: a signed step, the projection onto the L-infinity
    ball of radius ``eps`` around ``X0``, then the range clip, in one compiled pass:

    .. math:: X' = \mathrm{clip}\big(X_0 + \mathrm{clip}(X + \alpha\,\mathrm{sign}(g) - X_0,
              -\epsilon, \epsilon),\ lo,\ hi\big)

    ``X`` (the current iterate), ``X0`` (the clean input) and ``grad`` (the
    loss gradient at X): one shape, one dtype.  ``alpha``: the step, a finite
    real number (negative: a targeted step, against the gradient); ``eps``:
    the radius, >= 0.  ``clip``, ``out`` (may be X, in place; any other
    overlap copies the input first) and ``nan`` as :func:`perturb`.  Returns
    ``out``; equals :func:`fastwb.reference.adversarial.pgd_step` bit for bit.
    """
    check = _nan_check(nan, out)
    X = float_array("X", X)
    X0 = float_array("X0", X0)
    grad = float_array("grad", grad)
    dtype = same_dtype(X=X, X0=X0, grad=grad)
    same_shape("X", X, "X0", X0)
    same_shape("X", X, "grad", grad)
    alpha = _in_dtype("alpha", alpha, dtype)
    eps = _in_dtype("eps", eps, dtype, minimum=0.0)
    lo, hi = _check_clip(clip, dtype)
    out = out_array("out", out, X.shape, dtype)
    X, X0, grad = unaliased(X, out), unaliased(X0, out, inplace=False), unaliased(grad, out, inplace=False)
    bad = _adversarial.pgd_flat(X.reshape(-1), X0.reshape(-1), grad.reshape(-1), out.reshape(-1), alpha, eps, lo,
                                hi, check, plan_threads(X.size, GRAIN_MEMORY))
    if bad:
        raise _nan_error(grad)
    return out


# -- the attacks -------------------------------------------------------------------------------

def _check_model(model):
    from fastwb.nn.sequential import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastwb.nn.Sequential (or fastwb.MLP), got {type(model).__name__}")
    return model


def _chunks(model, n, batch_size):
    """Row ranges of at most ``batch_size`` rows; one range for a model with a
    BatchNorm1d that keeps no running statistics (it normalises by the whole
    batch even in eval mode, as :meth:`Sequential.logits` does)."""
    if model._batch_stats(False):
        batch_size = max(n, 1)
    return [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]


def _targets(model, X, y, targeted, name="y"):
    """The checked targets for X, or None (``y=None``: the model's own predictions,
    made chunk by chunk by :func:`_predicted`)."""
    if y is None:
        if targeted:
            raise ValueError("a targeted attack needs y: the target class of every row")
        if model.loss.name not in ("cross_entropy", "bce_with_logits"):
            raise ValueError(f"y=None attacks the model's own predictions, which needs a classifier (loss "
                             f"cross_entropy or bce_with_logits); this model's loss is {model.loss.name}: pass y")
        return None
    return model.loss.targets(y, X.shape[0], model.out_features, model.dtype, name)


def _predicted(model, X):
    """The model's predictions for X as targets of its loss (no label leaking: the
    attack never sees the true labels)."""
    p = model.predict(X, batch_size=max(X.shape[0], 1))
    return p if model.loss.name == "cross_entropy" else p.astype(model.dtype)


def _raise_nan_rows(g, a):
    """Raise the ValueError for a chunk's input gradient holding NaN (rows from ``a``)."""
    count = int(np.isnan(g).sum())
    rows = np.flatnonzero(np.isnan(g).any(axis=1))
    first = a + int(rows[0]) if rows.size else a
    raise ValueError(f"the loss gradient holds {count} NaN value{'s' * (count != 1)} (first in row {first}): the "
                     "model's output is not finite there; check X for NaN and the weights for NaN or overflow")


def fgsm(model, X, y=None, eps=0.1, clip=(0.0, 1.0), targeted=False, batch_size=1024):
    r"""Fast gradient sign method (Goodfellow et al., 2015): adversarial examples
    ``clip(X + eps * sign(grad_X loss(model(X), y)), lo, hi)``.

    ``model``: a :class:`fastwb.nn.Sequential` (``fastwb.MLP`` included), its
    loss the one it was compiled with (cross-entropy by default).  ``X``:
    ``(n, in_features)`` of the model's dtype.  ``y``: the labels (targets of
    the model's loss); None: the model's own predictions (so no true label
    leaks into the attack; classifiers only).  ``eps`` >= 0: the L-infinity
    budget, rounded to the dtype.  ``clip``: the valid input range as
    :func:`perturb` (default ``(0, 1)``; None: none).  ``targeted``: ``y``
    holds target classes and the step goes down the loss toward them,
    ``X - eps * sign(grad_X loss(model(X), y))``.  ``batch_size``: rows per
    gradient call (memory only).

    Runs in eval mode whatever the model's mode; the model does not change.
    Each chunk is one :meth:`~fastwb.nn.Sequential.input_gradient` call and one
    :func:`perturb` pass.  A NaN in the gradient (a NaN in X, or a model whose
    output overflows) is a ValueError naming the row.  Returns a new array of
    X's shape and dtype.

    Note: the gradient is that of the chunk's mean loss, the per-row gradients
    divided by the chunk's size; a per-row gradient component below
    ``batch_size`` times the smallest subnormal number would round to zero and
    not move.
    """
    model = _check_model(model)
    X = model._check_x(X)
    eps = _in_dtype("eps", eps, model.dtype, minimum=0.0)
    lo, hi = _check_clip(clip, model.dtype)
    targeted = _check_flag("targeted", targeted)
    batch_size = check_int("batch_size", batch_size, 1)
    y = _targets(model, X, y, targeted)
    out = np.empty_like(X)
    step = -eps if targeted else eps
    for a, b in _chunks(model, X.shape[0], batch_size):
        x = X[a:b]
        t = _predicted(model, x) if y is None else y[a:b]
        g = model.input_gradient(x, t)
        bad = _adversarial.fgsm_flat(x.reshape(-1), g.reshape(-1), out[a:b].reshape(-1), step, lo, hi,
                                     _adversarial.IN_PASS, plan_threads(g.size, GRAIN_MEMORY))
        if bad:
            _raise_nan_rows(g, a)
    return out


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def pgd(model, X, y=None, eps=0.1, alpha=None, steps=10, random_start=True, clip=(0.0, 1.0), rng=None,
        targeted=False, batch_size=1024):
    r"""Projected gradient descent under an L-infinity budget (Madry et al., 2018).

    From ``X0 = X`` (plus uniform noise in ``[-eps, eps]`` with
    ``random_start``, clipped to the range), ``steps`` times::

        X = clip(X0 + clip(X + alpha * sign(grad_X loss(model(X), y)) - X0, -eps, eps), lo, hi)

    one :meth:`~fastwb.nn.Sequential.input_gradient` call and one fused
    :func:`pgd_step` pass per step, chunk by chunk (each chunk runs all its
    steps while it is in cache).  ``eps`` >= 0: the radius; ``alpha`` >= 0: the
    step (default ``2.5 * eps / steps``, Madry et al.'s rule; 0.025 for eps
    0.1 and 10 steps); ``steps`` >= 1.  ``rng``: a seed, Generator or None,
    for the random start (float64 uniform draws, chunk by chunk in row order,
    then rounded to the dtype: the same start for any ``batch_size``).  ``y``, ``clip``,
    ``targeted`` (steps toward ``y`` as target classes), ``batch_size``, eval
    mode and the NaN rule: as :func:`fgsm`.  Returns a new array.
    """
    from fastwb import init

    model = _check_model(model)
    X = model._check_x(X)
    dtype = model.dtype
    eps = _in_dtype("eps", eps, dtype, minimum=0.0)
    steps = check_int("steps", steps, 1)
    if alpha is None:
        alpha = 2.5 * eps / steps
    alpha = _in_dtype("alpha", alpha, dtype, minimum=0.0)
    lo, hi = _check_clip(clip, dtype)
    random_start = _check_flag("random_start", random_start)
    targeted = _check_flag("targeted", targeted)
    batch_size = check_int("batch_size", batch_size, 1)
    y = _targets(model, X, y, targeted)
    gen = init.as_generator(rng) if random_start else None
    out = np.empty_like(X)
    step = -alpha if targeted else alpha
    for a, b in _chunks(model, X.shape[0], batch_size):
        x0, x = X[a:b], out[a:b]
        t = _predicted(model, x0) if y is None else y[a:b]
        if random_start:
            np.add(x0, gen.uniform(-eps, eps, x0.shape).astype(dtype, copy=False), out=x)
            if lo > -math.inf or hi < math.inf:
                np.clip(x, dtype.type(lo), dtype.type(hi), out=x)
        else:
            x[...] = x0
        n_threads = plan_threads(x.size, GRAIN_MEMORY)
        flat_x, flat_x0 = x.reshape(-1), x0.reshape(-1)
        for _ in range(steps):
            g = model.input_gradient(x, t)
            bad = _adversarial.pgd_flat(flat_x, flat_x0, g.reshape(-1), flat_x, step, eps, lo, hi,
                                        _adversarial.IN_PASS, n_threads)
            if bad:
                _raise_nan_rows(g, a)
    return out


#: the attacks :func:`robustness` and ``fastwb attack`` know, by name
ATTACKS = {"fgsm": fgsm, "pgd": pgd}


def _attack(model, X, y, attack, eps, batch_size, attack_kwargs):
    fn = ATTACKS.get(attack) if isinstance(attack, str) else None
    if fn is None:
        raise ValueError(f"unknown attack {attack!r}; valid names are {', '.join(map(repr, ATTACKS))}")
    allowed = set(inspect.signature(fn).parameters) - {"model", "X", "y", "eps", "batch_size"}
    unknown = sorted(set(attack_kwargs) - allowed)
    if unknown:
        raise TypeError(f"unknown option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} for attack "
                        f"{attack!r}; it takes {', '.join(sorted(allowed))}")
    if attack_kwargs.get("targeted"):
        raise ValueError("robustness and robust_accuracy measure untargeted attacks on the true labels; "
                         "run a targeted attack with fgsm or pgd directly")
    return fn(model, X, y, eps=eps, batch_size=batch_size, **attack_kwargs)


def _accuracy_inputs(model, X, y):
    model = _check_model(model)
    if model.loss.name != "cross_entropy":
        raise ValueError(f"accuracy needs a classifier trained with cross_entropy; this model's loss is "
                         f"{model.loss.name}")
    X = model._check_x(X)
    if X.shape[0] == 0:
        raise ValueError("X is empty: accuracy over no rows is undefined")
    return model, X, model.loss.targets(y, X.shape[0], model.out_features, model.dtype, "y")


def robust_accuracy(model, X, y, attack="fgsm", eps=0.1, batch_size=1024, **attack_kwargs):
    """Accuracy on the attacked inputs: the fraction of rows whose prediction for
    ``attack(model, X, y, eps=eps, ...)`` is the true label ``y``.

    ``attack``: ``"fgsm"`` or ``"pgd"`` (:data:`ATTACKS`), untargeted on the
    true labels; ``attack_kwargs``: that attack's other options (``clip``;
    for PGD ``alpha``, ``steps``, ``random_start``, ``rng``).  A row the
    model already gets wrong counts as wrong unless the attack happens to
    correct it.  Cross-entropy classifiers only.  For the clean accuracy as
    well (and the predictions, and the adversarial examples), see
    :func:`robustness`.  Returns a float in [0, 1].
    """
    model, X, y = _accuracy_inputs(model, X, y)
    adv = _attack(model, X, y, attack, eps, batch_size, attack_kwargs)
    return float(np.mean(model.predict(adv, batch_size) == y))


def robustness(model, X, y, attack="fgsm", eps=0.1, batch_size=1024, return_examples=False, **attack_kwargs):
    """Clean and robust accuracy in one call: a dict with

    * ``clean_accuracy``: accuracy on X;
    * ``robust_accuracy``: accuracy on the attacked inputs (as :func:`robust_accuracy`);
    * ``attack``, ``eps``, ``n`` (rows) and ``options`` (``attack_kwargs``);
    * ``clean_predictions``, ``adversarial_predictions``: int arrays of n predictions;
    * ``adversarial``: the attacked inputs, only with ``return_examples``.

    Arguments as :func:`robust_accuracy`.
    """
    model, X, y = _accuracy_inputs(model, X, y)
    adv = _attack(model, X, y, attack, eps, batch_size, attack_kwargs)
    clean, attacked = model.predict(X, batch_size), model.predict(adv, batch_size)
    report = {"clean_accuracy": float(np.mean(clean == y)), "robust_accuracy": float(np.mean(attacked == y)),
              "attack": attack, "eps": float(eps), "n": int(X.shape[0]), "options": dict(attack_kwargs),
              "clean_predictions": clean, "adversarial_predictions": attacked}
    if return_examples:
        report["adversarial"] = adv
    return report


def plot_examples(X, X_adv, y, clean_predictions, adversarial_predictions, n=8, image_shape=None, title=None):
    """A matplotlib Figure of ``n`` examples in three rows: the originals (titled
    with the label and the clean prediction), their adversarial versions (titled
    with the prediction under attack, in red where the attack flipped a correct
    prediction), and the perturbation ``X_adv - X`` (red up, blue down).

    The examples shown are first the rows whose correct prediction the attack
    flipped, then the others, each group in row order.  ``image_shape``: how to
    draw a row (default: a square when the width is a perfect square, e.g.
    28 x 28 for MNIST, else one line).  Needs matplotlib (``pip install
    "fastwb[plots]"``); no display is needed."""
    from fastwb.plots import _figure

    Figure = _figure("plot_examples")
    X, X_adv = np.asarray(X), np.asarray(X_adv)
    y, clean, attacked = (np.asarray(v) for v in (y, clean_predictions, adversarial_predictions))
    if X.ndim != 2 or X_adv.shape != X.shape:
        raise ValueError(f"X and X_adv must be 2-D arrays of one shape, got {X.shape} and {X_adv.shape}")
    if not y.shape == clean.shape == attacked.shape == (X.shape[0],):
        raise ValueError(f"y and the predictions need one entry per row of X ({X.shape[0]})")
    n = check_int("n", n, 1)
    width = X.shape[1]
    if image_shape is None:
        side = math.isqrt(width)
        image_shape = (side, side) if side * side == width else (1, width)
    if math.prod(image_shape) != width:
        raise ValueError(f"image_shape {tuple(image_shape)} does not hold the {width} features of a row")
    flipped = (clean == y) & (attacked != y)
    rows = np.concatenate([np.flatnonzero(flipped), np.flatnonzero(~flipped)])[:n]
    k = max(len(rows), 1)
    fig = Figure(figsize=(1.6 * k, 5.4))
    axes = fig.subplots(3, k, squeeze=False)
    delta = (X_adv[rows] - X[rows]).astype(np.float64)
    scale = float(np.abs(delta).max()) if delta.size else 1.0
    shown = np.concatenate([X[rows], X_adv[rows]]).astype(np.float64)
    lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    grey = dict(cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    for j, r in enumerate(rows):
        for i, (img, kw) in enumerate(((X[r], grey), (X_adv[r], grey),
                                        (delta[j], dict(cmap="bwr", vmin=-scale or -1, vmax=scale or 1)))):
            ax = axes[i, j]
            ax.imshow(np.asarray(img, np.float64).reshape(image_shape), interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"label {y[r]}, pred {clean[r]}", fontsize=8)
        axes[1, j].set_title(f"pred {attacked[r]}", fontsize=8, color="red" if flipped[r] else "black")
    for j in range(len(rows), k):
        for i in range(3):
            axes[i, j].axis("off")
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("adversarial", fontsize=8)
    axes[2, 0].set_ylabel("perturbation", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
