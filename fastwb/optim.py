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

from collections.abc import Mapping

import time

import numpy as np

from fastwb import _engine, _optim
from fastwb._runtime import GRAIN_MEMORY, GRAIN_UPDATE, plan_threads
from fastwb._validate import FLOAT_DTYPES, check_int, check_real, disjoint_outputs, same_view, unaliased

__all__ = ["Optimizer", "Units", "GROUP_KEYS", "SGD", "Momentum", "Adam", "AdamW", "RMSprop", "BY_NAME", "by_name"]


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
    disjoint_outputs(**{f"params[{i}]": p for i, p in enumerate(params)})
    return params


def _hyper(hyper, names):
    """The hyperparameter dict restricted to exactly ``names`` (ValueError naming
    what is missing or unknown): for constructors and ``load_state_dict`` alike."""
    if not isinstance(hyper, Mapping):
        raise TypeError(f"hyperparameters must be a dict, got {type(hyper).__name__}")
    missing = [n for n in names if n not in hyper]
    unknown = sorted(set(hyper) - set(names), key=str)
    if missing or unknown:
        raise ValueError("hyperparameters do not match: "
                         + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                     + ([f"unknown {', '.join(map(str, unknown))}"] if unknown else [])))
    return hyper


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _non_negative(name, value):
    return check_real(name, value, minimum=0.0)


def _betas(betas):
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    return (check_real("betas[0]", beta1, 0.0, below=1.0), check_real("betas[1]", beta2, 0.0, below=1.0))


class Optimizer:
    """Base class: parameter bookkeeping, masks, state I/O.  Subclasses define
    ``_state_names`` (per-parameter state arrays), ``_check_hyper`` (the one
    validation of their hyperparameters, shared by the constructor and
    :meth:`load_state_dict`) and ``_update``.

    Aliasing: the parameter arrays must not overlap each other (ValueError);
    a gradient may be its own parameter array, and a gradient that overlaps
    any other parameter is read from a copy.  An optimizer is not
    thread-safe: step it from one thread at a time."""

    _state_names = ()
    _grain = GRAIN_MEMORY       # elements per thread worth waking a thread for

    def __init__(self, params, hyper, masks=None):
        self.params = _check_params(params)
        self.hyper = self._check_hyper(hyper)
        self.step_count = 0
        self.state = [{name: np.zeros_like(p) for name in self._active_state()} for p in self.params]
        self.masks = [None] * len(self.params)
        self.groups = []                        # hyperparameter overrides of groups 1, 2, ... (0: self.hyper)
        self.units = [None] * len(self.params)  # per array: None (one unit) or its Units
        self._whole = {}                        # size -> the range [0, size)
        if masks is not None:
            self.set_masks(masks)

    @classmethod
    def _check_hyper(cls, hyper):
        raise NotImplementedError

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

    # -- groups and units ----------------------------------------------------
    def set_groups(self, groups):
        """Hyperparameter groups: ``groups[k]`` is a dict overriding some of
        ``GROUP_KEYS`` (``lr``, ``weight_decay``, ``l1``) for the units of group
        ``k + 1`` (see :meth:`set_units`); group 0 is :attr:`hyper` itself.  A
        group's values are absolute (``LearningRateScheduler`` keeps each group's
        learning rate at its ratio to the base rate).  Validated as the constructor validates."""
        checked = self._checked_groups(groups, self.hyper)
        for i, u in enumerate(self.units):
            if u is not None and u.group.size and u.group.max() > len(checked):
                raise ValueError(f"params[{i}] has units in group {u.group.max()}, but there are only "
                                 f"{len(checked)} groups besides group 0")
        self.groups = checked

    def _checked_groups(self, groups, hyper):
        if not isinstance(groups, (list, tuple)):
            raise TypeError(f"groups must be a list of dicts, got {type(groups).__name__}")
        checked = []
        for k, g in enumerate(groups):
            if not isinstance(g, Mapping):
                raise TypeError(f"group {k + 1} must be a dict of hyperparameters, got {type(g).__name__}")
            bad = sorted(set(g) - set(GROUP_KEYS), key=str)
            if bad:
                raise ValueError(f"group {k + 1} sets {', '.join(map(str, bad))}; a group may set only "
                                 f"{', '.join(GROUP_KEYS)}")
            merged = self._check_hyper(dict(hyper, **g))
            checked.append({key: merged[key] for key in g})
        return checked

    def set_units(self, i, sizes, group=None, frozen=None, steps=None):
        """Split ``params[i]`` into consecutive units of ``sizes`` elements (a
        model's named parameters), each with its hyperparameter ``group`` (an
        index, 0 = :attr:`hyper`), ``frozen`` flag and own step count (``steps``;
        default: :attr:`step_count`).  A frozen unit is not updated and its state
        does not move; an unfrozen unit counts its own steps, as PyTorch counts
        each parameter's (Adam's bias correction starts afresh for a parameter
        trained for the first time).  ``sizes=None`` removes the units."""
        i = check_int("i", i, 0)
        if i >= len(self.params):
            raise ValueError(f"params[{i}] does not exist: the optimizer has {len(self.params)} arrays")
        if sizes is None:
            self.units[i] = None
            return
        self.units[i] = Units.checked(self.params[i].size, sizes, group, frozen,
                                      self.step_count if steps is None else steps, len(self.groups))

    def _work(self):
        """``(array index, ranges, hyperparameters, step, elements)`` of each update of
        this step; advances the units' step counts."""
        work = []
        for i, p in enumerate(self.params):
            if not p.size:
                continue
            u = self.units[i]
            if u is None:
                whole = self._whole.get(p.size)
                if whole is None:
                    whole = self._whole[p.size] = np.array([[0, p.size]], np.intp)
                work.append((i, whole, self.hyper, self.step_count, p.size))
                continue
            for seg, group, step, size in u.advance():
                hyper = self.hyper if group == 0 else dict(self.hyper, **self.groups[group - 1])
                work.append((i, seg, hyper, step, size))
        return work

    # -- masks ---------------------------------------------------------------
    def set_masks(self, masks):
        """Install keep-masks (bool arrays shaped like the params, or None), one per parameter.

        Pruned parameters are set to 0 now and held there; their state is set
        to 0 too, so that it neither drifts nor returns stale values should a
        later mask revive them.  The masks are copied."""
        masks = list(masks)
        if len(masks) != len(self.params):
            raise ValueError(f"got {len(masks)} masks for {len(self.params)} parameter arrays")
        checked = [self._checked_mask(i, m) for i, m in enumerate(masks)]
        for i, m in enumerate(checked):
            self._install_mask(i, m)

    def index_of(self, arrays):
        """Positions of ``arrays`` among this optimizer's parameters (each must be one of them)."""
        where = []
        for j, a in enumerate(arrays):
            found = [i for i, p in enumerate(self.params) if isinstance(a, np.ndarray) and same_view(a, p)]
            if not found:
                raise ValueError(f"arrays[{j}] is not one of the optimizer's parameter arrays")
            where.append(found[0])
        return where

    def mask_params(self, arrays, masks):
        """Install keep-masks for some of the parameters (``arrays``, each one
        of :attr:`params`), leaving the others' masks as they are."""
        where = self.index_of(arrays)
        masks = list(masks)
        if len(masks) != len(where):
            raise ValueError(f"got {len(masks)} masks for {len(where)} arrays")
        checked = [self._checked_mask(i, m) for i, m in zip(where, masks)]
        for i, m in zip(where, checked):
            self._install_mask(i, m)

    def _checked_mask(self, i, m):
        """Mask i as a private flat uint8 copy, or None."""
        if m is None:
            return None
        p = self.params[i]
        m = np.asarray(m)
        if m.shape != p.shape:
            raise ValueError(f"masks[{i}] has shape {m.shape}, but params[{i}] has shape {p.shape}")
        if m.dtype != np.bool_:
            raise TypeError(f"masks[{i}] must be a boolean keep-mask, got dtype {m.dtype}")
        return np.array(m, dtype=np.bool_, order="C").reshape(-1).view(np.uint8)

    def _install_mask(self, i, m):
        if m is not None:
            off = m == 0
            self.params[i].reshape(-1)[off] = 0
            for buf in self.state[i].values():
                buf.reshape(-1)[off] = 0
        self.masks[i] = m

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
            g = np.ascontiguousarray(g)
            # its own parameter may be updated in place from it; any other overlap is read from a copy
            others = [q for j, q in enumerate(self.params) if j != i]
            g = unaliased(unaliased(g, *others, inplace=False), p)
            out.append(g.reshape(-1))
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_choice", None)      # measured timings: this process's own, not state
        return state

    def __setstate__(self, state):
        state.setdefault("groups", [])      # pickles from before groups and units
        state.setdefault("units", [None] * len(state["params"]))
        state.setdefault("_whole", {})
        self.__dict__.update(state)

    def step(self, grads):
        """Apply one update to every parameter, in place, from ``grads`` (same order and shapes)."""
        self._apply(self._grads(grads))

    def _apply(self, grads):
        """The update itself, for flat contiguous gradients already checked
        (the MLP engine calls this with its own gradient buffer): one pass per
        array and distinct (group, step) of its units.  Its thread count is
        chosen by timing (fastwb._engine.ThreadChoice): the planned count, or
        one thread while that measures faster (a busy machine)."""
        self.step_count += 1
        t0 = time.perf_counter()
        choice = self.__dict__.get("_choice")
        if choice is None:
            choice = self._choice = _engine.ThreadChoice()
        work = self._work()
        counts = [plan_threads(size, self._grain) for *_, size in work]
        limit = choice.threads(max(counts, default=1))
        for (i, seg, hyper, step, size), n in zip(work, counts):
            p, state = self.params[i], self.state[i]
            if p.ndim != 1:
                p, state = p.reshape(-1), {k: v.reshape(-1) for k, v in state.items()}
            self._update(p, grads[i], state, self.masks[i], seg, hyper, step, min(limit, n))
        choice.observe(time.perf_counter() - t0)

    def _update(self, p, g, state, mask, seg, h, step, n_threads):
        """Update the ranges ``seg`` of ``p`` with hyperparameters ``h`` at step ``step``."""
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
            "groups": [dict(g) for g in self.groups],
            "units": [None if u is None else u.as_dict() for u in self.units],
        }

    def load_state_dict(self, state_dict):
        """Restore a state saved by :meth:`state_dict` of the same optimizer
        over parameters of the same shapes and dtypes.

        Everything is validated before anything is changed, exactly as the
        constructor validates its arguments: the hyperparameters, the step
        count (an integer >= 0), every state array's name, shape and dtype,
        and the masks.  A bad state raises and leaves the optimizer as it was."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("optimizer", "hyper", "step", "state") if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing {', '.join(missing)}")
        if state_dict["optimizer"] != type(self).__name__:
            raise ValueError(f"state is for optimizer {state_dict['optimizer']!r}, not {type(self).__name__!r}")
        hyper = self._check_hyper(dict(_hyper(state_dict["hyper"], list(self.hyper))))
        step = check_int("step", state_dict["step"], 0)
        states = state_dict["state"]
        if not isinstance(states, (list, tuple)) or len(states) != len(self.params):
            raise ValueError(f"state must be a list of {len(self.params)} dicts, one per parameter array")
        names = self._state_names_for(hyper)
        loaded = []
        for i, (p, s) in enumerate(zip(self.params, states)):
            if not isinstance(s, Mapping) or set(s) != set(names):
                held = sorted(s) if isinstance(s, Mapping) else type(s).__name__
                raise ValueError(f"state[{i}] holds {held}, expected {sorted(names)}")
            arrays = {}
            for k, v in s.items():
                v = np.asarray(v)
                if v.shape != p.shape or v.dtype != p.dtype:
                    raise ValueError(
                        f"state[{i}][{k!r}] is {v.dtype}{v.shape}, but params[{i}] is {p.dtype}{p.shape}"
                    )
                arrays[k] = np.array(v, dtype=p.dtype, order="C")
            loaded.append(arrays)
        masks = state_dict.get("masks")
        if masks is None:
            masks = [None] * len(self.params)
        if not isinstance(masks, (list, tuple)) or len(masks) != len(self.params):
            raise ValueError(f"masks must be a list of {len(self.params)} entries (a bool array or None each)")
        masks = [self._checked_mask(i, m) for i, m in enumerate(masks)]
        groups = self._checked_groups(state_dict.get("groups", []), hyper)
        units = state_dict.get("units")
        if units is None:
            units = [None] * len(self.params)
        if not isinstance(units, (list, tuple)) or len(units) != len(self.params):
            raise ValueError(f"units must be a list of {len(self.params)} entries (a dict or None each)")
        units = [None if u is None else Units.from_dict(p.size, u, len(groups), f"units[{i}]")
                 for i, (p, u) in enumerate(zip(self.params, units))]
        self.hyper, self.step_count, self.state = hyper, step, loaded
        self.groups, self.units = groups, units
        for i, m in enumerate(masks):
            self._install_mask(i, m)

    def _state_names_for(self, hyper):
        saved, self.hyper = self.hyper, hyper
        try:
            return self._active_state()
        finally:
            self.hyper = saved

    def __repr__(self):
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({len(self.params)} arrays, {hyper})"


#: the hyperparameters a group may set (:meth:`Optimizer.set_groups`)
GROUP_KEYS = ("lr", "weight_decay", "l1")


class Units:
    """Consecutive units of one parameter array: each unit's size, group,
    frozen flag and step count (see :meth:`Optimizer.set_units`)."""

    __slots__ = ("bounds", "group", "frozen", "steps", "_runs")

    def __init__(self, bounds, group, frozen, steps):
        self.bounds, self.group, self.frozen, self.steps = bounds, group, frozen, steps
        self._runs = None       # advance's ranges per (group, step), made once: every step adds 1 to all

    def __getstate__(self):
        return (self.bounds, self.group, self.frozen, self.steps)

    def __setstate__(self, state):
        self.__init__(*state)

    @classmethod
    def checked(cls, total, sizes, group, frozen, steps, n_groups, what="units"):
        """Units from user values, every one checked (ValueError/TypeError naming ``what``)."""
        sizes = [check_int(f"{what}: size", v, 0) for v in _sequence(sizes, what, "sizes")]
        k = len(sizes)
        if sum(sizes) != total:
            raise ValueError(f"{what}: the sizes add up to {sum(sizes)}, but the array has {total} elements")

        def each(values, default, check, name):
            values = [default] * k if values is None else list(_sequence(values, what, name))
            if len(values) != k:
                raise ValueError(f"{what}: {len(values)} {name} for {k} units")
            return [check(v) for v in values]

        def group_index(v):
            v = check_int(f"{what}: group", v, 0)
            if v > n_groups:
                raise ValueError(f"{what}: group {v} does not exist (groups 0..{n_groups})")
            return v

        group = each(group, 0, group_index, "groups")
        frozen = each(frozen, False, lambda v: _flag(f"{what}: frozen", v), "frozen flags")
        steps = each(steps, 0, lambda v: check_int(f"{what}: step", v, 0),
                     "steps") if not isinstance(steps, (int, np.integer)) else [check_int("step", steps, 0)] * k
        return cls(np.concatenate([[0], np.cumsum(sizes, dtype=np.intp)]).astype(np.intp),
                   np.array(group, np.intp), np.array(frozen, bool), np.array(steps, np.int64))

    @classmethod
    def from_dict(cls, total, d, n_groups, what):
        if not isinstance(d, Mapping) or set(d) != {"sizes", "group", "frozen", "steps"}:
            raise ValueError(f"{what} must be a dict of sizes, group, frozen and steps")
        return cls.checked(total, d["sizes"], d["group"], d["frozen"], d["steps"], n_groups, what)

    def as_dict(self):
        return {"sizes": np.diff(self.bounds).tolist(), "group": self.group.tolist(),
                "frozen": self.frozen.tolist(), "steps": self.steps.tolist()}

    def advance(self):
        """Count a step for every unfrozen unit; then ``(ranges, group, step,
        elements)`` for each distinct (group, step), adjacent units merged."""
        live = ~self.frozen
        self.steps[live] += 1
        if self._runs is not None:          # the same ranges; each (group, step) one step further
            self._runs = [(seg, g, step + 1, size) for seg, g, step, size in self._runs]
            return self._runs
        runs = {}
        for j in np.flatnonzero(live):
            lo, hi = int(self.bounds[j]), int(self.bounds[j + 1])
            if hi == lo:
                continue
            ranges = runs.setdefault((int(self.group[j]), int(self.steps[j])), [])
            if ranges and ranges[-1][1] == lo:
                ranges[-1][1] = hi
            else:
                ranges.append([lo, hi])
        self._runs = [(np.array(r, np.intp), g, step, sum(b - a for a, b in r)) for (g, step), r in runs.items()]
        return self._runs


def _sequence(values, what, name):
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise TypeError(f"{what}: {name} must be a list, got {type(values).__name__}")
    return values


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
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, l1=l1), masks)

    @classmethod
    def _check_hyper(cls, h):
        h = _hyper(h, ("lr", "momentum", "dampening", "weight_decay", "nesterov", "l1"))
        hyper = {
            "lr": _non_negative("lr", h["lr"]),
            "momentum": _non_negative("momentum", h["momentum"]),
            "dampening": check_real("dampening", h["dampening"]),
            "weight_decay": _non_negative("weight_decay", h["weight_decay"]),
            "nesterov": _flag("nesterov", h["nesterov"]),
            "l1": _non_negative("l1", h["l1"]),
        }
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0 (as in PyTorch)")
        return hyper

    def _active_state(self):
        return ("momentum_buffer",) if self.hyper["momentum"] != 0 else ()

    def _update(self, p, g, state, mask, seg, h, step, n_threads):
        _optim.sgd(p, g, state.get("momentum_buffer"), mask, seg, h["lr"], h["momentum"], h["dampening"],
                   h["weight_decay"], h["l1"], h["nesterov"], step == 1, n_threads)


class Momentum(Optimizer):
    r"""Momentum in the slides' form (velocity carries the learning rate):

    .. math:: v_t = \mu v_{t-1} - \gamma d_t, \qquad p_t = p_{t-1} + v_t

    with :math:`d_t = g_t + \lambda p_{t-1} + \ell_1 \operatorname{sign}(p_{t-1})`.
    For a constant learning rate this is :class:`SGD` with momentum
    (:math:`v = -\gamma b`), rounded differently.
    """

    _state_names = ("velocity",)

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=0.0, l1=0.0, masks=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, l1=l1), masks)

    @classmethod
    def _check_hyper(cls, h):
        h = _hyper(h, ("lr", "momentum", "weight_decay", "l1"))
        return {name: _non_negative(name, h[name]) for name in ("lr", "momentum", "weight_decay", "l1")}

    def _update(self, p, g, state, mask, seg, h, step, n_threads):
        _optim.momentum(p, g, state["velocity"], mask, seg, h["lr"], h["momentum"], h["weight_decay"], h["l1"],
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
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      l1=l1), masks)

    @classmethod
    def _check_hyper(cls, h):
        h = _hyper(h, ("lr", "betas", "eps", "weight_decay", "amsgrad", "l1"))
        return {
            "lr": _non_negative("lr", h["lr"]),
            "betas": _betas(h["betas"]),
            "eps": _non_negative("eps", h["eps"]),
            "weight_decay": _non_negative("weight_decay", h["weight_decay"]),
            "amsgrad": _flag("amsgrad", h["amsgrad"]),
            "l1": _non_negative("l1", h["l1"]),
        }

    def _active_state(self):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.hyper["amsgrad"] else ())

    def _update(self, p, g, state, mask, seg, h, step, n_threads):
        beta1, beta2 = h["betas"]
        t = float(step)
        step_size = h["lr"] / (1 - beta1 ** t)
        bc2_sqrt = (1 - beta2 ** t) ** 0.5          # as PyTorch: ** 0.5, not math.sqrt
        wd = h["weight_decay"]
        decay_factor = 1 - h["lr"] * wd if self._decoupled else 1.0
        _optim.adam(p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), mask, seg,
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
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, l1=l1), masks)

    @classmethod
    def _check_hyper(cls, h):
        h = _hyper(h, ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "l1"))
        hyper = {name: _non_negative(name, h[name]) for name in ("lr", "alpha", "eps", "weight_decay", "momentum")}
        hyper["centered"] = _flag("centered", h["centered"])
        hyper["l1"] = _non_negative("l1", h["l1"])
        return hyper

    def _active_state(self):
        h = self.hyper
        return ("square_avg",) + (("grad_avg",) if h["centered"] else ()) + (
            ("momentum_buffer",) if h["momentum"] > 0 else ())

    def _update(self, p, g, state, mask, seg, h, step, n_threads):
        _optim.rmsprop(p, g, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"), mask,
                       seg, h["lr"], h["alpha"], h["eps"], h["weight_decay"], h["l1"], h["momentum"], n_threads)


#: the optimizer classes under the names models and the command line use
BY_NAME = {"sgd": SGD, "momentum": Momentum, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def by_name(name):
    """The optimizer class called ``name`` (a key of :data:`BY_NAME`); ValueError listing the valid names."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; valid names are {', '.join(BY_NAME)}") from None
