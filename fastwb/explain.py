r"""Saliency maps and attributions for :class:`fastwb.nn.Sequential` models
(``fastwb.MLP`` included).

    from fastwb import explain
    maps = explain.saliency(model, X)                   # |d logit of the predicted class / d x|, per row
    attr = explain.integrated_gradients(model, X, baseline=0.0, steps=50)
    explain.plot_saliency(X, maps, shape=(28, 28)).savefig("saliency.png")

Every method differentiates one scalar per row, :math:`F_i(x_i)`, chosen by
``wrt`` and ``target`` (:math:`t_i`, a column of the output; by default the
predicted class, the arg-max of the output at :math:`x_i`), with respect to
that row's input :math:`x_i`.  With :math:`z = f(x)` the network's output
(before any softmax or sigmoid):

* ``wrt="logit"`` (Captum's ``Saliency`` convention): :math:`F_i = z_{i t_i}`;
  the output gradient is one-hot, :math:`G_i = e_{t_i}`.
* ``wrt="prob"``: the probability of class :math:`t_i`.  For a
  ``cross_entropy`` model :math:`F_i = p_{i t_i}`, :math:`p_i =
  \mathrm{softmax}(z_i)`, and :math:`\partial p_t / \partial z = p_t (e_t - p)`;
  for ``bce_with_logits`` :math:`F_i = \sigma(z_{i t_i})` and
  :math:`G_i = \sigma(z_{i t_i})(1 - \sigma(z_{i t_i}))\, e_{t_i}`.  (An
  ``mse`` model has no probabilities: ValueError.)
* ``wrt="loss"``: the row's loss against ``labels``, :math:`F_i = \ell_i`,
  the per-row term whose mean is the model's loss (cross-entropy
  :math:`\log\sum_j e^{z_{ij}} - z_{i y_i}`; for ``mse`` and
  ``bce_with_logits`` the mean over the row's outputs).  It is ``n`` times the
  input gradient of the mean loss (:meth:`Sequential.input_gradient`).

The gradient :math:`g_i = \partial F_i / \partial x_i` is the
vector-Jacobian product :math:`J_f(x_i)^\top G_i`, which
:meth:`Sequential.output_gradient` computes in one compiled forward pass and
an input-gradient-only backward pass (no weight gradient is computed and
nothing in the model changes).  Then:

* :func:`saliency`: :math:`|g_i|` (``abs=True``, as Captum) or :math:`g_i`;
* :func:`gradient_x_input`: :math:`x_i \odot g_i`;
* :func:`smoothgrad` (Smilkov et al. 2017): the mean of the saliency over
  ``n`` noisy copies :math:`x_i + \epsilon`, :math:`\epsilon \sim
  \mathcal N(0, \sigma_i^2 I)` with :math:`\sigma_i = \mathrm{sigma}\,(\max_j
  x_{ij} - \min_j x_{ij})`, the noise level the paper expresses as a fraction
  of the input's range; the target is the class of the clean input;
* :func:`integrated_gradients` (Sundararajan et al. 2017): with baseline
  :math:`x'`,

  .. math:: \mathrm{IG}_i = (x_i - x'_i) \odot \int_0^1 \nabla F_i\big(x'_i +
            \alpha (x_i - x'_i)\big)\, d\alpha
            \approx (x_i - x'_i) \odot \sum_k w_k\, \nabla F_i(x'_i + \alpha_k (x_i - x'_i)),

  with ``method="midpoint"`` (the default: :math:`\alpha_k = (k + \frac12) /
  s`, :math:`w_k = 1 / s`) or ``"trapezoid"`` (:math:`\alpha_k = k / (s - 1)`,
  :math:`k = 0 \dots s - 1`, :math:`w_k = 1 / (s - 1)` halved at both ends),
  :math:`s` = ``steps``.  The midpoint rule never evaluates the gradient at
  the baseline itself, where a ReLU network often sits on its kinks (a black
  image through layers without bias: every unit at exactly 0, gradient 0),
  which costs the trapezoid rule a relative completeness gap of
  :math:`1 / (2(s - 1))` there; for a positively homogeneous network (ReLU, no biases, zero
  baseline) the midpoint rule is exact.  Completeness: :math:`\sum_j \mathrm{IG}_{ij} =
  F_i(x_i) - F_i(x'_i)` up to the quadrature error (``return_delta=True``
  gives the difference, Captum's convergence delta).  The interpolation
  points go through the engine in blocks of about ``batch_size`` rows.

Modes.  Every method runs the network in eval mode (dropout off, BatchNorm
on its running statistics) whatever the model's own mode (``model.training``
is not consulted: a freshly built model is in training mode).  Only
:func:`saliency` and :func:`gradient_x_input` can run in training mode, and
only when asked with ``training=True``; any value of ``training`` other than
True or False is a ValueError, so that a truthy stand-in never switches
dropout on unnoticed.  In training mode all rows go through the network in
one call (BatchNorm's batch statistics are those of ``X``; rows then
interact, and the gradient is that of :math:`\sum_i F_i` with respect to
each row), and the dropout masks are those the model's next training step
would draw.  A BatchNorm1d without running statistics normalises by batch
statistics in eval mode too (as PyTorch's): X then goes through in one call,
and each noisy copy or interpolation step is a batch of its own.

Threads.  The results do not depend on the thread count (the engine's
reductions are deterministic and everything else here is row-wise).  Each
function uses the model's training guard: two explain calls (or an explain
call and ``fit``) on one model at once from two threads raise RuntimeError;
use ``model.copy()`` per thread.

The pure-NumPy twin is :mod:`fastwb.reference.explain`.
"""

import math

import numpy as np

from fastwb import init
from fastwb._validate import check_int, check_real
from fastwb.nn.layers import BatchNorm1d
from fastwb.nn.sequential import Sequential

__all__ = ["saliency", "gradient_x_input", "smoothgrad", "integrated_gradients", "plot_saliency", "WRT", "METHODS"]

#: what the gradient is taken of
WRT = ("logit", "prob", "loss")
#: integrated_gradients' quadrature rules
METHODS = ("midpoint", "trapezoid")
#: rows per engine call by default: bounds the training workspaces the model keeps for its last few
#: batch sizes (about 40 MB at 784-256-10 float32)
BATCH_SIZE = 4096

_PLOTS_MISSING = 'plot_saliency needs matplotlib: pip install "fastwb[plots]"'


# -- checks ---------------------------------------------------------------------------------

def _check_model(model):
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastwb.nn.Sequential (or fastwb.MLP), got {type(model).__name__}")


def _check_X(model, X):
    """X checked as the model checks its inputs (dtype, width, C-contiguous), and not empty."""
    X = model._check_x(X)
    if X.shape[0] == 0:
        raise ValueError("X is empty")
    return X


def _check_mode(training):
    if training is not True and training is not False and not isinstance(training, np.bool_):
        raise ValueError(f"training must be True or False, got {training!r}: train mode (dropout on, BatchNorm "
                         "on batch statistics) is used only when asked for with training=True")
    return bool(training)


def _check_wrt(model, wrt):
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {', '.join(map(repr, WRT))}, got {wrt!r}")
    if wrt == "prob" and model.loss.name == "mse":
        raise ValueError("wrt='prob' needs a classifier (a cross_entropy or bce_with_logits model); this model's "
                         "loss is mse, whose outputs are not probabilities: use wrt='logit'")
    return wrt


def _check_target(model, target, n, wrt, labels):
    """The targets as an intp array of n output columns, or None (the predicted class)."""
    if wrt == "loss":
        if target is not None:
            raise ValueError("target has no meaning with wrt='loss' (the gradient of each row's loss against "
                             "its labels); pass labels=... and leave target out")
        if labels is None:
            raise ValueError("wrt='loss' needs labels=...: the targets of the model's loss, one per row")
        return None
    if labels is not None:
        raise ValueError(f"labels are used only with wrt='loss'; with wrt={wrt!r} choose the output with target=")
    if target is None:
        return None
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must be integer output indices (a class per row, or one for all rows), "
                        f"got dtype {t.dtype}")
    if t.ndim == 0:
        if not 0 <= int(t) < model.out_features:
            raise ValueError(f"target = {int(t)} is not an output index in [0, {model.out_features})")
        return np.full(n, int(t), np.intp)
    if t.shape != (n,):
        raise ValueError(f"target has shape {t.shape}, expected ({n},): one output index per row (or a single "
                         "index for all rows)")
    bad = np.flatnonzero((t < 0) | (t >= model.out_features))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"target[{i}] = {t[i]} is not an output index in [0, {model.out_features})")
    return np.require(t, np.intp, ("C", "A"))


def _check_labels(model, labels, n):
    if labels is None:
        return None
    return model.loss.targets(labels, n, model.out_features, model.dtype, "labels")


def _check_batch_size(batch_size):
    return check_int("batch_size", batch_size, 1)


def _batch_stats_in_eval(model):
    """Whether eval mode normalises by batch statistics (a BatchNorm1d without running statistics)."""
    return any(isinstance(layer, BatchNorm1d) and not layer.track_running_stats for layer in model.layers)


# -- the output and its gradient ----------------------------------------------------------------

def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    """sigmoid(z) and sigmoid(z) * (1 - sigmoid(z)), in float64 without overflow."""
    z = np.asarray(z, np.float64)
    s = np.exp(-np.logaddexp(0.0, -z))
    return s, np.exp(-np.logaddexp(0.0, -z) - np.logaddexp(0.0, z))


def _seed(loss, z, t, wrt, m, dtype):
    """The output gradient G (n, m) of F_i = the chosen output of each row (see the
    module docstring); ``z``, the output, is needed only for wrt="prob"."""
    n = t.shape[0]
    rows = np.arange(n)
    G = np.zeros((n, m), np.float64)
    if wrt == "logit":
        G[rows, t] = 1.0
    elif loss == "cross_entropy":
        p = _softmax(z)
        pt = p[rows, t][:, None]
        G -= pt * p
        G[rows, t] += pt[:, 0]
    else:
        G[rows, t] = _sigmoid(z[rows, t])[1]
    return G.astype(dtype)


def _values(loss, z, t, wrt, labels):
    """F_i, the chosen output of each row (float64)."""
    z = np.asarray(z, np.float64)
    rows = np.arange(z.shape[0])
    if wrt == "logit":
        return z[rows, t]
    if wrt == "prob":
        return _softmax(z)[rows, t] if loss == "cross_entropy" else _sigmoid(z[rows, t])[0]
    if loss == "cross_entropy":
        top = z.max(axis=1)
        return top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - z[rows, labels]
    y = np.asarray(labels, np.float64)
    if loss == "mse":
        return np.mean((z - y) ** 2, axis=1)
    return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), axis=1)


def _block_gradient(model, Xb, tb, wrt, yb, training):
    """dF_i/dx_i for a block of rows (C-contiguous, checked): one engine call (whose
    forward pass also gives the output where the seed needs it: the predicted
    class, probabilities)."""
    if wrt == "loss":
        g = model.input_gradient(Xb, yb, training=training)
        g *= g.dtype.type(Xb.shape[0])       # the mean loss's gradient, times n: each row's own loss
        return g
    if tb is None or wrt == "prob":     # the seed needs the output: from the same forward pass
        def seed(z):
            return _seed(model.loss.name, z, z.argmax(axis=1) if tb is None else tb, wrt, model.out_features,
                         model.dtype)
        return model.output_gradient(Xb, seed, training=training)[0]
    G = _seed(model.loss.name, None, tb, wrt, model.out_features, model.dtype)
    return model.output_gradient(Xb, G, training=training)


def _rows(model, X, t, wrt, labels, training, batch_size, absolute=False):
    """dF_i/dx_i (or its absolute value) for every row of X, in chunks of batch_size
    rows (one chunk in training mode and where eval mode uses batch statistics)."""
    n = X.shape[0]
    if training or _batch_stats_in_eval(model):
        batch_size = n
    if n <= batch_size:
        g = _block_gradient(model, X, t, wrt, labels, training)
        return np.abs(g, out=g) if absolute else g
    out = np.empty_like(X)
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        g = _block_gradient(model, X[s:e], None if t is None else t[s:e], wrt,
                            None if labels is None else labels[s:e], training)
        if absolute:
            np.abs(g, out=out[s:e])
        else:
            out[s:e] = g
    return out


def _predicted(model, X, batch_size):
    return model.logits(X, batch_size=batch_size).argmax(axis=1)


def _blocks(n_copies, n_rows, batch_size):
    """``(c0, c1, r0, r1)``: copies c0..c1-1 of rows r0..r1-1, copy after copy, at
    most ``batch_size`` rows per block (at least one row of one copy)."""
    if n_rows >= batch_size:
        for c in range(n_copies):
            for r0 in range(0, n_rows, batch_size):
                yield c, c + 1, r0, min(r0 + batch_size, n_rows)
    else:
        k = batch_size // n_rows
        for c0 in range(0, n_copies, k):
            yield c0, min(c0 + k, n_copies), 0, n_rows


def _copies(model, make, weights, X, t, wrt, labels, batch_size, absolute):
    r"""\sum_c weights[c] * (|g| or g)(make(c, r0, r1)) over the copies, in float64,
    added copy after copy (so the result does not depend on the blocks)."""
    n, d = X.shape
    if _batch_stats_in_eval(model):
        batch_size = n              # each copy is one batch, as the model sees X
    acc = np.zeros((n, d), np.float64)
    for c0, c1, r0, r1 in _blocks(len(weights), n, batch_size):
        rows = r1 - r0
        k = c1 - c0
        block = np.empty((k * rows, d), model.dtype)
        for j in range(k):
            block[j * rows:(j + 1) * rows] = make(c0 + j, r0, r1)
        tb = None if t is None else np.tile(t[r0:r1], k)
        yb = None if labels is None else np.concatenate([labels[r0:r1]] * k)
        g = _block_gradient(model, block, tb, wrt, yb, False)
        if absolute:
            np.abs(g, out=g)
        for j in range(k):
            acc[r0:r1] += weights[c0 + j] * g[j * rows:(j + 1) * rows]
    return acc


def _targets_for_copies(model, X, target, wrt, labels, batch_size):
    """The checked targets and labels of every copy: the given targets, else the
    class predicted for the clean X (None with wrt="loss")."""
    t = _check_target(model, target, X.shape[0], wrt, labels)
    labels = _check_labels(model, labels, X.shape[0])
    if t is None and wrt != "loss":
        t = _predicted(model, X, X.shape[0] if _batch_stats_in_eval(model) else batch_size)
    return t, labels


# -- the methods ------------------------------------------------------------------------------

def saliency(model, X, target=None, wrt="logit", abs=True, labels=None, training=False, batch_size=BATCH_SIZE):
    r"""Saliency map of each row: the gradient of the chosen output
    :math:`F_i` with respect to the row's input, :math:`|\partial F_i /
    \partial x_i|` (``abs=True``, Captum's ``Saliency``) or signed.

    Parameters
    ----------
    model : a :class:`fastwb.nn.Sequential` (``fastwb.MLP`` included)
    X : (n, in_features) array of the model's dtype
    target : the output column per row (an integer array of n, or one integer
        for all rows); default: each row's predicted class (arg-max of the output)
    wrt : "logit" (default), "prob" or "loss" (see the module docstring)
    abs : absolute values (default) or the signed gradient
    labels : the loss's targets (class labels, or arrays shaped like the
        output for mse and bce_with_logits), required with ``wrt="loss"`` and
        only then
    training : False (default: eval mode whatever ``model.training``) or True
        (dropout on, BatchNorm on the batch statistics of X); nothing else
    batch_size : rows per engine call (bounds the memory of the workspaces the
        model keeps for its last few batch sizes); ignored in training mode

    Returns an (n, in_features) array of the model's dtype.  Cost: one forward
    pass and one input-gradient-only backward pass, plus one forward pass when
    the targets are not given or ``wrt="prob"`` (the seed depends on the output).
    """
    _check_model(model)
    training = _check_mode(training)
    X = _check_X(model, X)
    wrt = _check_wrt(model, wrt)
    t = _check_target(model, target, X.shape[0], wrt, labels)
    labels = _check_labels(model, labels, X.shape[0])
    return _rows(model, X, t, wrt, labels, training, _check_batch_size(batch_size), bool(abs))


def gradient_x_input(model, X, target=None, wrt="logit", labels=None, training=False, batch_size=BATCH_SIZE):
    r"""Gradient times input, :math:`x_i \odot \partial F_i / \partial x_i` (the
    first-order Taylor attribution against a zero baseline); arguments as
    :func:`saliency`.  Returns an (n, in_features) array of the model's dtype."""
    g = saliency(model, X, target, wrt, False, labels, training, batch_size)
    g *= np.asarray(X, dtype=g.dtype)
    return g


def smoothgrad(model, X, target=None, n=25, sigma=0.15, wrt="logit", abs=True, labels=None, rng=None,
               batch_size=BATCH_SIZE):
    r"""SmoothGrad: the mean saliency over ``n`` noisy copies of each row,
    :math:`\frac1n \sum_{k=1}^n |\nabla F_i(x_i + \epsilon_k)|` (signed with
    ``abs=False``), :math:`\epsilon_k \sim \mathcal N(0, \sigma_i^2 I)`,
    :math:`\sigma_i` = ``sigma`` times the row's range (max - min), in eval mode.

    ``target`` defaults to the class predicted for the clean X; ``rng``: a seed,
    a Generator or None.  The noise is drawn copy after copy, each copy an
    (n_rows, in_features) draw of the model's dtype, so a seed gives the same
    maps whatever ``batch_size``.  Other arguments as :func:`saliency`.  Costs
    ``n`` saliency maps (each copy's forward pass included when ``wrt="prob"``).
    """
    _check_model(model)
    X = _check_X(model, X)
    wrt = _check_wrt(model, wrt)
    n_samples = check_int("n", n, 1)
    sigma = check_real("sigma", sigma, minimum=0.0)
    gen = init.as_generator(rng)
    batch_size = _check_batch_size(batch_size)
    t, labels = _targets_for_copies(model, X, target, wrt, labels, batch_size)
    scale = (sigma * (X.max(axis=1) - X.min(axis=1))).astype(model.dtype)[:, None]
    noise = {}

    def make(c, r0, r1):
        if c not in noise:
            noise.clear()
            noise[c] = _normal(gen, X.shape, model.dtype)
        return X[r0:r1] + noise[c][r0:r1] * scale[r0:r1]

    acc = _copies(model, make, [1.0 / n_samples] * n_samples, X, t, wrt, labels, batch_size, abs)
    return acc.astype(model.dtype)


def _normal(gen, shape, dtype):
    if isinstance(gen, np.random.Generator):
        return gen.standard_normal(shape, dtype=dtype)
    return gen.standard_normal(shape).astype(dtype)       # a legacy RandomState


def _path_rule(method, steps):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "trapezoid":
        steps = check_int("steps", steps, 2)
        alphas = np.arange(steps) / (steps - 1)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        steps = check_int("steps", steps, 1)
        alphas = (np.arange(steps) + 0.5) / steps
        weights = np.full(steps, 1.0 / steps)
    return alphas, weights


def _check_baseline(model, baseline, X):
    if np.ndim(baseline) == 0 and not isinstance(baseline, np.ndarray):
        value = check_real("baseline", baseline)
        return np.full(X.shape, value, model.dtype)
    b = np.asarray(baseline)
    if b.dtype != model.dtype:
        raise TypeError(f"baseline has dtype {b.dtype} but the model is {model.dtype}; convert it with "
                        ".astype(...) (or pass a number)")
    if b.shape not in ((model.in_features,), X.shape):
        raise ValueError(f"baseline must be a number or an array of shape ({model.in_features},) or {X.shape}, "
                         f"got shape {b.shape}")
    return np.ascontiguousarray(np.broadcast_to(b, X.shape))


def integrated_gradients(model, X, target=None, baseline=0.0, steps=50, method="midpoint", wrt="logit",
                         labels=None, return_delta=False, batch_size=BATCH_SIZE):
    r"""Integrated Gradients of each row along the straight path from ``baseline``
    to the row, in eval mode (see the module docstring for the quadrature).

    ``baseline``: a number (default 0: a black image), an array of shape
    ``(in_features,)`` or one baseline per row ``(n, in_features)``, of the
    model's dtype.  ``steps``: quadrature points (>= 1 for ``"midpoint"``, the
    default, >= 2 for ``"trapezoid"``).  ``target`` defaults to the class predicted for
    X.  The ``steps * n`` interpolated rows go through the engine in blocks of
    about ``batch_size`` rows, step after step; sums are taken in float64.

    Returns the attributions, an (n, in_features) array of the model's dtype;
    with ``return_delta`` also, per row, :math:`\sum_j \mathrm{IG}_{ij} -
    (F_i(x_i) - F_i(x'_i))` (float64): the completeness gap, which shrinks as
    ``steps`` grows.
    """
    _check_model(model)
    X = _check_X(model, X)
    wrt = _check_wrt(model, wrt)
    alphas, weights = _path_rule(method, steps)
    batch_size = _check_batch_size(batch_size)
    base = _check_baseline(model, baseline, X)
    t, labels = _targets_for_copies(model, X, target, wrt, labels, batch_size)
    diff = X - base
    alphas = alphas.astype(model.dtype)

    def make(c, r0, r1):
        return base[r0:r1] + alphas[c] * diff[r0:r1]

    avg = _copies(model, make, weights, X, t, wrt, labels, batch_size, False)
    attr = (diff * avg).astype(model.dtype)
    if not return_delta:
        return attr
    whole = X.shape[0] if _batch_stats_in_eval(model) else batch_size
    F_x = _values(model.loss.name, model.logits(X, batch_size=whole), t, wrt, labels)
    F_b = _values(model.loss.name, model.logits(base, batch_size=whole), t, wrt, labels)
    return attr, attr.sum(axis=1, dtype=np.float64) - (F_x - F_b)


# -- the picture ------------------------------------------------------------------------------

def plot_saliency(X, maps, shape=(28, 28), titles=None, cmap="hot", columns=4):
    """A matplotlib Figure of the images and their maps side by side: each row
    of ``X`` drawn as a ``shape`` image (grey), its map beside it (``cmap``),
    ``columns`` pairs per line.  ``X`` and ``maps``: ``(k, prod(shape))`` or
    ``(k, *shape)`` arrays of the same shape; ``titles``: k strings over the
    pairs (e.g. "label 7, predicted 7").  Signed maps are drawn on a colour
    scale symmetric about 0 (``cmap="bwr"`` suits them).  Built on
    ``matplotlib.figure.Figure``, not pyplot: works headless
    (``plot_saliency(X, maps).savefig("saliency.png")``).  matplotlib is an
    optional extra: ``pip install "fastwb[plots]"``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(_PLOTS_MISSING) from None
    shape = tuple(check_int("shape", s, 1) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if len(shape) != 2:
        raise ValueError(f"shape must be (height, width), got {shape}")
    size = math.prod(shape)
    arrays = []
    for name, a in (("X", X), ("maps", maps)):
        a = np.asarray(a)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be numbers, got dtype {a.dtype}")
        if a.ndim == 3 and a.shape[1:] == shape:
            a = a.reshape(a.shape[0], size)
        if a.ndim != 2 or a.shape[1] != size:
            raise ValueError(f"{name} must have shape (k, {size}) or (k, {shape[0]}, {shape[1]}) for images of "
                             f"shape {shape}, got {a.shape}")
        arrays.append(a.astype(np.float64))
    X, maps = arrays
    if X.shape != maps.shape:
        raise ValueError(f"X has {X.shape[0]} images but maps has {maps.shape[0]}; they must match")
    k = X.shape[0]
    if k == 0:
        raise ValueError("there are no images to draw")
    if titles is not None:
        titles = [str(s) for s in titles]
        if len(titles) != k:
            raise ValueError(f"titles has {len(titles)} entries for {k} images")
    columns = min(check_int("columns", columns, 1), k)
    lines = -(-k // columns)
    fig = Figure(figsize=(3.2 * columns, 1.75 * lines + 0.3))
    axes = np.asarray(fig.subplots(lines, 2 * columns, squeeze=False))
    signed = bool((maps < 0).any())
    for i in range(lines * columns):
        left, right = axes[i // columns, 2 * (i % columns)], axes[i // columns, 2 * (i % columns) + 1]
        left.axis("off")
        right.axis("off")
        if i >= k:
            continue
        left.imshow(X[i].reshape(shape), cmap="gray", interpolation="nearest")
        m = maps[i].reshape(shape)
        if signed:
            top = float(np.nanmax(np.abs(m))) or 1.0
            right.imshow(m, cmap=cmap, vmin=-top, vmax=top, interpolation="nearest")
        else:
            right.imshow(m, cmap=cmap, interpolation="nearest")
        if titles is not None:
            left.set_title(titles[i], fontsize=8, loc="left")
    fig.tight_layout()
    return fig
