"""Fused in-place optimizers with PyTorch's update rules, names and defaults.

    opt = fastwb.optim.Adam([W1, b1, W2, b2], lr=1e-3)
    for ...:
        opt.step([dW1, db1, dW2, db2])       # updates W1, b1, ... in place

Each step is one compiled pass per parameter array that reads the parameter,
its gradient and its state once and writes them once (see
``csrc/fwb_optim_impl.h`` for the exact operation order, which follows the
single-tensor CPU path of ``torch.optim`` in PyTorch 2.x).  Every optimizer
also takes

* ``l1``: adds ``l1 * sign(p)`` to the gradient (an L1 penalty), and
* ``masks``: one boolean keep-mask (or None) per parameter, e.g. from
  :mod:`fastwb.prune`; where a mask is False the parameter is held at exactly
  0 and its optimizer state is frozen, so nothing drifts while it is pruned.

``state_dict()`` / ``load_state_dict()`` round-trip exactly; a state saved
for other shapes or dtypes is rejected.
"""

import numpy as np

from fastwb import _optim
from fastwb._runtime import GRAIN_MEMORY, GRAIN_UPDATE, plan_threads
from fastwb._validate import FLOAT_DTYPES

__all__ = ["Optimizer", "SGD", "Momentum", "Adam", "AdamW", "RMSprop"]


def _check_params(params):
    if isinstance(params, np.ndarray):
        params = [params]
    params = list(params)
    if not params:
        raise ValueError("params is empty: give the list of arrays to optimise")
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{i}] must be a NumPy array, got {type(p).__name__}")
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"params[{i}] has dtype {p.dtype}; optimizers update float32 or float64 arrays")
        if not p.flags.c_contiguous or not p.flags.writeable:
            raise ValueError(f"params[{i}] must be a writeable C-contiguous array: it is updated in place")
    return params


def _non_negative(name, value):
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class Optimizer:
    """Base class: parameter bookkeeping, masks, state I/O.  Subclasses define
    ``_state_names`` (per-parameter state arrays) and ``_update``."""

    _state_names = ()
    _grain = GRAIN_MEMORY       # elements per thread worth waking a thread for

    def __init__(self, params, hyper, masks=None):
        self.params = _check_params(params)
        self.hyper = hyper
        self.step_count = 0
        self.state = [{name: np.zeros_like(p) for name in self._active_state()} for p in self.params]
        self.masks = [None] * len(self.params)
        if masks is not None:
            self.set_masks(masks)

    def _active_state(self):
        return self._state_names

    def rebind(self, params):
        """Optimise ``params`` from now on, keeping the state: arrays of the
        same shapes and dtypes that replace the current ones (for code that
        builds new arrays every step, as the slides do)."""
        params = _check_params(params)
        if len(params) != len(self.params):
            raise ValueError(f"got {len(params)} arrays for an optimizer of {len(self.params)}")
        for i, (new, old) in enumerate(zip(params, self.params)):
            if new.shape != old.shape or new.dtype != old.dtype:
                raise ValueError(
                    f"params[{i}] is {new.dtype}{new.shape} but the optimizer state is for "
                    f"{old.dtype}{old.shape}; use one optimizer per layer"
                )
        self.params = params

    # -- masks ---------------------------------------------------------------
    def set_masks(self, masks):
        """Install keep-masks (bool arrays shaped like the params, or None).

        Pruned parameters are set to 0 now and held there; their state is set
        to 0 too, so that it neither drifts nor returns stale values should a
        later mask revive them."""
        masks = list(masks)
        if len(masks) != len(self.params):
            raise ValueError(f"got {len(masks)} masks for {len(self.params)} parameter arrays")
        checked = []
        for i, (p, m) in enumerate(zip(self.params, masks)):
            if m is None:
                checked.append(None)
                continue
            m = np.asarray(m)
            if m.shape != p.shape:
                raise ValueError(f"masks[{i}] has shape {m.shape}, but params[{i}] has shape {p.shape}")
            if m.dtype != np.bool_:
                raise TypeError(f"masks[{i}] must be a boolean keep-mask, got dtype {m.dtype}")
            m = np.ascontiguousarray(m).view(np.uint8)
            off = m == 0
            p[off] = 0
            for buf in self.state[i].values():
                buf[off] = 0
            checked.append(m.reshape(-1))
        self.masks = checked

    # -- stepping ------------------------------------------------------------
    def _grads(self, grads):
        if isinstance(grads, np.ndarray):
            grads = [grads]
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameter arrays")
        out = []
        for i, (p, g) in enumerate(zip(self.params, grads)):
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(
                    f"grads[{i}] has shape {g.shape}, but params[{i}] (and its optimizer state) has shape "
                    f"{p.shape}; use one optimizer entry per parameter array"
                )
            if g.dtype != p.dtype:
                raise TypeError(f"grads[{i}] has dtype {g.dtype}, but params[{i}] has dtype {p.dtype}")
            out.append(np.ascontiguousarray(g).reshape(-1))
        return out

    def step(self, grads):
        """Apply one update to every parameter, in place, from ``grads`` (same order and shapes)."""
        self._apply(self._grads(grads))

    def _apply(self, grads):
        """The update itself, for flat contiguous gradients already checked
        (the MLP engine calls this with its own gradient buffer)."""
        self.step_count += 1
        for p, g, state, mask in zip(self.params, grads, self.state, self.masks):
            if p.size:
                if p.ndim != 1:
                    p, state = p.reshape(-1), {k: v.reshape(-1) for k, v in state.items()}
                self._update(p, g, state, mask, plan_threads(p.size, self._grain))

    def _update(self, p, g, state, mask, n_threads):
        raise NotImplementedError

    # -- state I/O -----------------------------------------------------------
    def state_dict(self):
        """A dict holding copies of everything needed to resume: hyperparameters,
        step count, per-parameter state arrays (and masks)."""
        return {
            "optimizer": type(self).__name__,
            "hyper": dict(self.hyper),
            "step": self.step_count,
            "state": [{k: v.copy() for k, v in s.items()} for s in self.state],
            "masks": [None if m is None else m.view(np.bool_).reshape(p.shape).copy()
                      for m, p in zip(self.masks, self.params)],
        }

    def load_state_dict(self, state_dict):
        """Restore a state saved by :meth:`state_dict` of the same optimizer
        over parameters of the same shapes and dtypes."""
        if state_dict.get("optimizer") != type(self).__name__:
            raise ValueError(f"state is for optimizer {state_dict.get('optimizer')!r}, not {type(self).__name__!r}")
        states = state_dict["state"]
        if len(states) != len(self.params):
            raise ValueError(f"state holds {len(states)} parameter arrays, this optimizer has {len(self.params)}")
        hyper = dict(state_dict["hyper"])
        names = self._state_names_for(hyper)
        for i, (p, s) in enumerate(zip(self.params, states)):
            if set(s) != set(names):
                raise ValueError(f"state[{i}] holds {sorted(s)}, expected {sorted(names)}")
            for k, v in s.items():
                v = np.asarray(v)
                if v.shape != p.shape or v.dtype != p.dtype:
                    raise ValueError(
                        f"state[{i}][{k!r}] is {v.dtype}{v.shape}, but params[{i}] is {p.dtype}{p.shape}"
                    )
        self.hyper = hyper
        self.step_count = int(state_dict["step"])
        self.state = [{k: np.array(v, dtype=p.dtype, order="C") for k, v in s.items()}
                      for p, s in zip(self.params, states)]
        self.masks = [None] * len(self.params)
        if any(m is not None for m in state_dict.get("masks", [])):
            self.set_masks(state_dict["masks"])

    def _state_names_for(self, hyper):
        saved, self.hyper = self.hyper, hyper
        try:
            return self._active_state()
        finally:
            self.hyper = saved

    def __repr__(self):
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({len(self.params)} arrays, {hyper})"


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    .. math::
        d_t = g_t + \lambda p_{t-1} + \ell_1 \operatorname{sign}(p_{t-1}), \qquad
        b_t = \begin{cases} d_t & t = 1 \\ \mu b_{t-1} + (1 - \tau) d_t & t > 1 \end{cases}, \qquad
        p_t = p_{t-1} - \gamma \, (d_t + \mu b_t \text{ if nesterov else } b_t)

    (with ``momentum=0``: :math:`p_t = p_{t-1} - \gamma d_t`).
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 l1=0.0, masks=None):
        hyper = {
            "lr": _non_negative("lr", lr),
            "momentum": _non_negative("momentum", momentum),
            "dampening": float(dampening),
            "weight_decay": _non_negative("weight_decay", weight_decay),
            "nesterov": bool(nesterov),
            "l1": _non_negative("l1", l1),
        }
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0 (as in PyTorch)")
        super().__init__(params, hyper, masks)

    def _active_state(self):
        return ("momentum_buffer",) if self.hyper["momentum"] != 0 else ()

    def _update(self, p, g, state, mask, n_threads):
        h = self.hyper
        _optim.sgd(p, g, state.get("momentum_buffer"), mask, h["lr"], h["momentum"], h["dampening"],
                   h["weight_decay"], h["l1"], h["nesterov"], self.step_count == 1, n_threads)


class Momentum(Optimizer):
    r"""Momentum in the slides' form (velocity carries the learning rate):

    .. math:: v_t = \mu v_{t-1} - \gamma d_t, \qquad p_t = p_{t-1} + v_t

    with :math:`d_t = g_t + \lambda p_{t-1} + \ell_1 \operatorname{sign}(p_{t-1})`.
    For a constant learning rate this is :class:`SGD` with momentum
    (:math:`v = -\gamma b`), rounded differently.
    """

    _state_names = ("velocity",)

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=0.0, l1=0.0, masks=None):
        hyper = {
            "lr": _non_negative("lr", lr),
            "momentum": _non_negative("momentum", momentum),
            "weight_decay": _non_negative("weight_decay", weight_decay),
            "l1": _non_negative("l1", l1),
        }
        super().__init__(params, hyper, masks)

    def _update(self, p, g, state, mask, n_threads):
        h = self.hyper
        _optim.momentum(p, g, state["velocity"], mask, h["lr"], h["momentum"], h["weight_decay"], h["l1"],
                        n_threads)


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (``decoupled=False``) and ``AdamW``.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) d_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) d_t^2, \quad
        p_t = p_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
              \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    with :math:`d_t = g_t + \lambda p_{t-1}` (Adam) or :math:`d_t = g_t` and
    :math:`p \leftarrow p(1-\gamma\lambda)` first (AdamW), and
    :math:`\hat v_t = \max(\hat v_{t-1}, v_t)` with ``amsgrad``, else
    :math:`v_t`.  ``eps`` sits outside the square root, after bias correction;
    the step count starts at 1.
    """

    _decoupled = False
    _grain = GRAIN_UPDATE

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 l1=0.0, masks=None):
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {tuple(betas)}")
        hyper = {
            "lr": _non_negative("lr", lr),
            "betas": (beta1, beta2),
            "eps": _non_negative("eps", eps),
            "weight_decay": _non_negative("weight_decay", weight_decay),
            "amsgrad": bool(amsgrad),
            "l1": _non_negative("l1", l1),
        }
        super().__init__(params, hyper, masks)

    def _active_state(self):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.hyper["amsgrad"] else ())

    def _update(self, p, g, state, mask, n_threads):
        h = self.hyper
        beta1, beta2 = h["betas"]
        t = float(self.step_count)
        step_size = h["lr"] / (1 - beta1 ** t)
        bc2_sqrt = (1 - beta2 ** t) ** 0.5          # as PyTorch: ** 0.5, not math.sqrt
        wd = h["weight_decay"]
        decay_factor = 1 - h["lr"] * wd if self._decoupled else 1.0
        _optim.adam(p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), mask,
                    beta1, beta2, h["eps"], 0.0 if self._decoupled else wd, h["l1"], decay_factor,
                    step_size, bc2_sqrt, n_threads)


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: decoupled weight decay ``p *= 1 - lr * weight_decay``
    before the Adam step (default ``weight_decay=0.01``)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 l1=0.0, masks=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1, masks)


class RMSprop(Optimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) d_t^2, \quad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) d_t \text{ (centered)}, \quad
        a_t = \sqrt{v_t - \bar g_t^2 \text{ (centered) or } v_t} + \epsilon

    then :math:`b_t = \mu b_{t-1} + d_t / a_t`, :math:`p_t = p_{t-1} - \gamma b_t`
    with momentum, else :math:`p_t = p_{t-1} - \gamma d_t / a_t`.
    """

    _grain = GRAIN_UPDATE

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 l1=0.0, masks=None):
        hyper = {
            "lr": _non_negative("lr", lr),
            "alpha": _non_negative("alpha", alpha),
            "eps": _non_negative("eps", eps),
            "weight_decay": _non_negative("weight_decay", weight_decay),
            "momentum": _non_negative("momentum", momentum),
            "centered": bool(centered),
            "l1": _non_negative("l1", l1),
        }
        super().__init__(params, hyper, masks)

    def _active_state(self):
        h = self.hyper
        return ("square_avg",) + (("grad_avg",) if h["centered"] else ()) + (
            ("momentum_buffer",) if h["momentum"] > 0 else ())

    def _update(self, p, g, state, mask, n_threads):
        h = self.hyper
        _optim.rmsprop(p, g, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"), mask,
                       h["lr"], h["alpha"], h["eps"], h["weight_decay"], h["l1"], h["momentum"], n_threads)
