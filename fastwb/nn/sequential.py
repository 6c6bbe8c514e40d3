"""``Sequential``: a model composed of layers, trained over one flat buffer.

    from fastwb import nn
    model = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(256, 10), dtype="float32", rng=0)
    model.compile("adam", lr=1e-3, loss="cross_entropy")
    history = model.fit(X, y, epochs=5, batch_size=128, validation_data=(Xv, yv))

Layout: every trainable array (weights, biases, BatchNorm's gamma and beta)
is a view into one flat buffer ``params``; their gradients live in
``grads`` with the same layout, so one fused optimizer pass updates them
all.  Running statistics live in a second buffer, ``buffers``, that no
optimizer touches (``num_batches_tracked`` in a small int64 array).

How it runs (fused stages, workspaces per batch size, no allocation after a
step's first call) is :mod:`fastwb.nn.plan`.

Threads and processes: inference (:meth:`Sequential.logits`, ``predict``,
``predict_proba``, ``evaluate``) on one model is safe from any number of
threads at once: each call takes workspaces no other call holds.  Training
(``train_step``, ``fit``, ``gradients``, ``input_gradient``) writes the one
gradient buffer and the parameters, so two such calls on one model at once
raise ``RuntimeError``; inference while another thread trains is safe for
memory but may see a partly updated model.  A forked child can use every
model (on one thread).
"""

import contextlib
import copy as _copy
import fnmatch
import json
import math
import threading
import time
from collections import OrderedDict

import numpy as np

from fastwb import _io, init, optim, prune
from fastwb import _adversarial
from fastwb._runtime import GRAIN_MEMORY, plan_threads
from fastwb._validate import FLOAT_DTYPES, check_int, check_real, model_input
from fastwb.nn import losses as _losses
from fastwb.nn.layers import BatchNorm1d, Layer, Linear, layer_from_config
from fastwb.nn.plan import MODELS, TRAIN_SIZES, Workspace, WorkspacePool, stages, trains
from fastwb.nn.progress import Progress

__all__ = ["Sequential", "load", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "fastwb-nn-2"
#: presets: subclasses of Sequential built from a few arguments, by name (fastwb.mlp registers "MLP");
#: a v2 checkpoint of a preset loads as that class, and a v1 checkpoint is an MLP's
PRESETS = {}
_SPEC_BYTES = 1 << 20           # bound on a checkpoint's JSON specification


class Sequential:
    """Layers applied in order, trained with one fused optimizer over one flat
    parameter buffer.

    Parameters
    ----------
    *layers : :mod:`fastwb.nn` layers (``Linear``, ``BatchNorm1d``, ``Dropout``,
        ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Identity``)
    dtype : "float32" (default) or "float64"
    rng : seed, Generator or None: initial weights, and the seed of the
        dropout masks
    in_features : the input width, needed only when no layer fixes it

    Layer widths are checked at construction; a mismatch names both layers
    and both sizes.
    """

    def __init__(self, *layers, dtype="float32", rng=None, in_features=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("a Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is a {type(layer).__name__}, not a fastwb.nn layer")
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.layers = list(layers)
        self.dtype = dtype
        self._widths_of(in_features)
        self._plan = stages(self.layers)
        self._stage_widths()
        self._layout()
        gen = init.as_generator(rng)
        for i, layer in enumerate(self.layers):
            layer.initialise(self._params[i], self._buffers[i], gen)
        self.seed = int(gen.integers(0, 2**31 - 1))     # after the weights: MLP(rng=s) keeps its weights
        self.training = True
        self.optimizer = None
        self.loss = _losses.get("cross_entropy")
        self.step_count = 0
        self.epochs_done = 0
        self.stop_training = False
        self.masks = None
        self.frozen = set()         # state-dict names of the frozen parameters and buffers
        self.groups = {}            # parameter groups: glob pattern -> hyperparameter overrides
        self._fresh_workspaces()

    def _fresh_workspaces(self):
        """Empty workspace caches and a free training guard (at construction, after
        unpickling, and in a forked child: see :mod:`fastwb.nn.plan`)."""
        self._workspaces = OrderedDict()      # training: batch -> Workspace, least recently used first
        self._pool = WorkspacePool()          # inference
        self._generation = Layer.generation   # the layer settings the plans were made with
        self._training_lock = threading.Lock()
        MODELS.add(self)

    _TRANSIENT = ("_workspaces", "_pool", "_training_lock", "_params", "_grads", "_buffers", "W", "b", "dW", "db")

    def __getstate__(self):
        # the per-layer views would unpickle as copies: they are made again from the flat buffers
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state):
        state.setdefault("frozen", set())       # pickles from before freezing and groups
        state.setdefault("groups", {})
        self.__dict__.update(state)
        self._views()
        self._fresh_workspaces()

    # -- structure -------------------------------------------------------------------
    def _widths_of(self, in_features):
        width = None if in_features is None else check_int("in_features", in_features, 1)
        first = None
        for i, layer in enumerate(self.layers):
            need = layer.in_features()
            if need is not None:
                if width is not None and need != width:
                    prev = f"layer {i - 1} ({self.layers[i - 1]!r}) gives {width}" if i else f"the input has {width}"
                    raise ValueError(f"layer sizes do not match: {prev} features, but layer {i} ({layer!r}) "
                                     f"takes {need}")
                width = need
            if first is None and width is not None:
                first = width
            width = layer.out_features(width) if width is not None else None
        if first is None or width is None:
            raise ValueError("no layer fixes the input width: pass in_features=")
        self.in_features, self.out_features = first, width

    def _stage_widths(self):
        widths, w = [], self.in_features
        for st in self._plan:
            w_out = self.layers[st.index].out_features(w)
            widths.append((w, w_out))
            w = w_out
        self._widths = widths

    def _layout(self):
        """One flat buffer for the parameters (and one for their gradients), one
        for the running statistics; each layer's arrays are views into them."""
        pshapes = [layer.param_shapes() for layer in self.layers]
        bshapes = [layer.buffer_shapes() for layer in self.layers]
        n_p = sum(math.prod(s) for d in pshapes for s in d.values())
        n_b = sum(math.prod(s) for d in bshapes for s in d.values())
        self.params = np.zeros(n_p, self.dtype)
        self.grads = np.zeros(n_p, self.dtype)
        self.buffers = np.zeros(n_b, self.dtype)
        bn = [i for i, layer in enumerate(self.layers) if isinstance(layer, BatchNorm1d) and layer.track_running_stats]
        self.num_batches_tracked = np.zeros(len(bn), np.int64)
        self._nbt_index = {i: k for k, i in enumerate(bn)}
        self._views()

    def _views(self):
        """Each layer's parameter, gradient and buffer arrays as views of the flat
        buffers, and the state-dict names with their places; ``W``, ``b``,
        ``dW``, ``db``: lists over the Linear layers."""
        self._params, self._grads, self._buffers, self._names = [], [], [], []
        po = bo = 0
        for i, layer in enumerate(self.layers):
            p, g, b = {}, {}, {}
            for name, shape in layer.param_shapes().items():
                size = math.prod(shape)
                p[name] = self.params[po:po + size].reshape(shape)
                g[name] = self.grads[po:po + size].reshape(shape)
                self._names.append((f"{i}.{name}", "param", po, shape))
                po += size
            for name, shape in layer.buffer_shapes().items():
                size = math.prod(shape)
                b[name] = self.buffers[bo:bo + size].reshape(shape)
                self._names.append((f"{i}.{name}", "buffer", bo, shape))
                bo += size
            if i in self._nbt_index:
                self._names.append((f"{i}.num_batches_tracked", "count", self._nbt_index[i], ()))
            self._params.append(p)
            self._grads.append(g)
            self._buffers.append(b)
        # the Linear layers' arrays, as the slides name them (None for a layer without bias)
        dense = [i for i, layer in enumerate(self.layers) if isinstance(layer, Linear)]
        self.W = [self._params[i]["weight"] for i in dense]
        self.b = [self._params[i].get("bias") for i in dense]
        self.dW = [self._grads[i]["weight"] for i in dense]
        self.db = [self._grads[i].get("bias") for i in dense]

    @property
    def n_params(self):
        return self.params.size

    def __getitem__(self, i):
        return self.layers[i]

    def __setitem__(self, i, layer):
        self.replace(i, layer)

    def replace(self, index, layer, rng=None):
        """Put ``layer`` (a new layer, initialised from ``rng``) at position
        ``index`` (negative counts from the end), for a new head: ``model[-1] =
        nn.Linear(256, 5)``.  ``rng``: a seed or Generator; by default one
        derived from the model's seed, ``index`` and step count, so that a
        script gives the same weights each run.  The flat buffers are laid out again; every other
        parameter, buffer, pruning mask, frozen flag and the optimizer's state
        and step counts are kept bit for bit, and the new layer's parameters
        start with fresh optimizer state.  Widths are checked as at
        construction (ValueError naming both layers).  Returns the model."""
        if not isinstance(layer, Layer):
            raise TypeError(f"the new layer is a {type(layer).__name__}, not a fastwb.nn layer")
        i = check_int("index", index)
        if not -len(self.layers) <= i < len(self.layers):
            raise IndexError(f"index {index} is out of range for a model of {len(self.layers)} layers")
        i %= len(self.layers)
        if any(layer is other for other in self.layers):
            raise ValueError("this layer object is already in the model; use a new one")
        layers = list(self.layers)
        layers[i] = layer
        fixed = any(la.in_features() is not None for la in layers)
        if rng is None:
            rng = np.random.default_rng([self.seed, i, self.step_count])
        new = Sequential(*layers, dtype=self.dtype, rng=rng, in_features=None if fixed else self.in_features)
        self._transplant(new, replaced=i)
        return self

    def _transplant(self, new, replaced):
        """Take ``new``'s structure and buffers (``new`` differs from this model in
        layer ``replaced`` only), copying this model's values for every other layer."""
        keep = lambda name: int(name.split(".")[0]) != replaced      # noqa: E731
        old_state, old_places = self.state_dict(), {n: (kind, off, shape) for n, kind, off, shape in self._names}
        for name, kind, off, shape in new._names:
            if keep(name):
                new._entry(kind, off, shape)[...] = old_state[name]
        opt, masks = self.optimizer, self.masks
        if masks is not None:           # one mask per Linear weight, in order
            old = dict(zip([i for i, la in enumerate(self.layers) if isinstance(la, Linear)], masks))
            masks = [old[i].copy() if i != replaced and i in old else np.ones(w.shape, bool)
                     for i, w in zip([i for i, la in enumerate(new.layers) if isinstance(la, Linear)], new.W)]
        for attr in ("layers", "in_features", "out_features", "_plan", "_widths", "params", "grads", "buffers",
                     "num_batches_tracked", "_nbt_index"):
            setattr(self, attr, getattr(new, attr))
        self._views()
        MODELS.discard(new)
        self.frozen = {n for n in self.frozen if keep(n)}
        self.masks = masks
        self._workspaces.clear()
        self._pool = WorkspacePool()
        self._generation = Layer.generation
        if opt is None:
            return
        self.optimizer = type(opt)([self.params], **opt.hyper)
        self.optimizer.step_count = opt.step_count
        self.optimizer.groups = opt.groups
        names = [n for n, (kind, *_) in old_places.items() if kind == "param"]
        old_steps = dict(zip(names, opt.units[0].steps.tolist() if opt.units[0] is not None
                             else [opt.step_count] * len(names)))
        steps = []
        for name, kind, off, shape in self._names:
            if kind != "param":
                continue
            size = math.prod(shape)
            steps.append(old_steps[name] if keep(name) else 0)
            if keep(name):
                _, old_off, _ = old_places[name]
                for k, buf in self.optimizer.state[0].items():
                    buf[off:off + size] = opt.state[0][k][old_off:old_off + size]
        self._configure_optimizer(steps)
        if masks is not None:
            self.optimizer.set_masks([self._flat_mask()])

    def __len__(self):
        return len(self.layers)

    # -- modes -----------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout on, BatchNorm on batch statistics); returns the model."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode (dropout off, BatchNorm on running statistics); returns the model."""
        return self.train(False)

    # -- optimizer and loss --------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, groups=None, **hyper):
        """Choose the optimizer (a name, with PyTorch's hyperparameter names, or a
        :mod:`fastwb.optim` optimizer built over ``[model.params]``) and the loss
        (``"cross_entropy"``, ``"mse"``, ``"bce_with_logits"``; unchanged when None).

        ``groups``: parameter groups, ``{pattern: {"lr": ..., "weight_decay": ...,
        "l1": ...}}``, glob patterns over the parameters' state-dict names
        (``{"0.*": {"lr": 1e-4}}``); a parameter takes the first group whose
        pattern matches it, the others the optimizer's own values.  All groups
        still run in one fused pass over the flat buffer.  Frozen parameters
        (:meth:`freeze`) are skipped by the optimizer whatever their group.
        Everything is checked before anything changes."""
        groups = {} if groups is None else groups
        if not isinstance(groups, dict):
            raise TypeError(f"groups must be a dict {{pattern: hyperparameters}}, got {type(groups).__name__}")
        for pattern in groups:
            self._match([pattern], "groups", params_only=True)
        new_loss = None if loss is None else _losses.get(loss)
        if isinstance(optimizer, optim.Optimizer):
            if len(optimizer.params) != 1 or optimizer.params[0] is not self.params:
                raise ValueError("the optimizer must be built over [model.params], the model's one buffer")
            opt = optimizer
        else:
            opt = optim.by_name(optimizer)([self.params], **hyper)
        try:
            checked = opt._checked_groups(list(groups.values()), opt.hyper)
        except (TypeError, ValueError) as e:
            raise type(e)(f"groups: {e}") from None
        if new_loss is not None:
            self.loss = new_loss
            self._workspaces.clear()        # the compiled plans depend on the loss
            self._pool = WorkspacePool()
        self.optimizer = opt
        self.groups = dict(zip(groups, checked))        # the checked values (Python floats)
        opt.set_units(0, None)
        opt.set_groups(checked)
        self._configure_optimizer()
        if self.masks is not None:
            self.optimizer.set_masks([self._flat_mask()])
        return self

    # -- freezing and parameter groups ---------------------------------------------------
    def _match(self, patterns, what, params_only=False):
        """The state-dict names matching any of the glob ``patterns`` (all names
        for none); a pattern matching nothing is a ValueError listing the names."""
        names = [n for n, kind, *_ in self._names if kind == "param" or not params_only]
        if not patterns:
            return set(names)
        out = set()
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise TypeError(f"{what}: a pattern is a string such as '0.*', got {type(pattern).__name__}")
            hit = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hit:
                raise ValueError(f"{what}: pattern {pattern!r} matches none of the names "
                                 f"({', '.join(names) or 'none'})")
            out.update(hit)
        return out

    def freeze(self, *patterns):
        """Freeze the parameters and buffers whose state-dict names match the glob
        ``patterns`` (``"0.*"``, ``"2.weight"``; none: everything), as skorch's
        ``Freezer``; returns the model.

        A frozen parameter is not updated and its optimizer state does not move
        (the fused optimizer skips its slice of the flat buffer); a layer whose
        parameters are all frozen gets no weight-gradient GEMM, and the backward
        pass stops at the first layer with a trained parameter.  The gradients
        of a layer whose parameters are all frozen are not computed (left at
        0).  A BatchNorm1d whose running statistics are frozen (``"1.*"``, or
        any of ``"1.running_mean"``, ``"1.running_var"``,
        ``"1.num_batches_tracked"``, which go together)
        normalises by them in training too and does not update them (as Keras
        does; PyTorch keeps using batch statistics in training mode)."""
        names = self._with_statistics(self._match(patterns, "freeze"))
        self._set_frozen(self.frozen | names)
        return self

    def unfreeze(self, *patterns):
        """Train again the parameters and buffers matching ``patterns`` (none:
        everything); returns the model.  An unfrozen parameter counts its own
        optimizer steps, as PyTorch counts a parameter's steps from its first
        update (Adam's bias correction starts afresh)."""
        names = self._with_statistics(self._match(patterns, "unfreeze"))
        self._set_frozen(self.frozen - names)
        return self

    def _with_statistics(self, names):
        """``names`` with a BatchNorm1d's running statistics and count all in or
        all out: they are frozen together (any one of them names all three)."""
        out = set(names)
        for i in self._nbt_index:
            stats = {f"{i}.running_mean", f"{i}.running_var", f"{i}.num_batches_tracked"}
            if out & stats:
                out |= stats
        return out

    def trainable(self, name):
        """Whether the parameter or buffer called ``name`` is trained (not frozen)."""
        if name not in {n for n, *_ in self._names}:
            raise KeyError(f"no parameter or buffer called {name!r}")
        return name not in self.frozen

    def _set_frozen(self, frozen):
        newly = frozen - self.frozen
        self.frozen = set(frozen)
        for name, kind, off, shape in self._names:
            if kind == "param" and name in newly:
                self.grads[off:off + math.prod(shape)] = 0
        self._workspaces.clear()            # the plans skip what is frozen
        self._pool = WorkspacePool()
        self._configure_optimizer()

    def _configure_optimizer(self, steps=None):
        """Tell the optimizer the model's units (one per parameter), their groups,
        frozen flags and step counts (``steps``: one per parameter; default: kept
        from the optimizer's current units, else its step count)."""
        opt = self.optimizer
        if opt is None or not self.params.size:
            return
        units = [(name, math.prod(shape)) for name, kind, off, shape in self._names if kind == "param"]
        if steps is None:
            current = opt.units[0]
            steps = (current.steps.tolist() if current is not None and len(current.steps) == len(units)
                     else [opt.step_count] * len(units))
        patterns = list(self.groups)
        group = [next((k + 1 for k, p in enumerate(patterns) if fnmatch.fnmatchcase(name, p)), 0)
                 for name, _ in units]
        frozen = [name in self.frozen for name, _ in units]
        if any(frozen) or any(group) or any(t != opt.step_count for t in steps):
            opt.set_units(0, [size for _, size in units], group, frozen, steps)
        else:
            opt.set_units(0, None)

    # -- checks --------------------------------------------------------------------------
    def _check_x(self, X, name="X"):
        return model_input(X, self.dtype, self.in_features, name)

    def _check_batch(self, X, y, name="y"):
        X = self._check_x(X)
        return X, self.loss.targets(y, X.shape[0], self.out_features, self.dtype, name)

    def _replan(self):
        """Make the stages and plans again after a layer's setting changed (see
        :class:`fastwb.nn.layers.Layer`)."""
        for i, layer in enumerate(self.layers):
            if layer.param_shapes() != {k: v.shape for k, v in self._params[i].items()} or \
                    layer.buffer_shapes() != {k: v.shape for k, v in self._buffers[i].items()}:
                raise ValueError(f"layer {i} ({layer!r}) changed its sizes after the model was built; build a new model")
        self._plan = stages(self.layers)
        self._workspaces.clear()
        self._pool = WorkspacePool()
        self._generation = Layer.generation

    def _workspace(self, n, start=0):
        """The training workspace for ``n`` rows (only inside a :func:`trains` method),
        of the stages from ``start`` on (after a cached frozen prefix)."""
        if self._generation != Layer.generation:
            self._replan()
        key = n if not start else (n, start)
        ws = self._workspaces.pop(key, None)
        if ws is None:
            ws = Workspace(self, n, start=start)
        self._workspaces[key] = ws
        while len(self._workspaces) > TRAIN_SIZES:
            self._workspaces.popitem(last=False)
        return ws

    # -- the plan ------------------------------------------------------------------------
    def _seed(self, stage):
        """The dropout seed of a stage: the model's seed mixed with the stage's position."""
        return (self.seed * 1000003 + stage.index) % (2**31 - 1)

    def _batch_stats(self, training):
        """Positions of the BatchNorm1d layers that normalise by batch statistics in
        this mode (all of them in training; those keeping no running statistics in eval)."""
        return [st.index for st in self._plan if st.kind == "bn" and (training or not st.layer.track_running_stats)]

    def _check_rows(self, n, training):
        """BatchNorm on batch statistics needs two rows (PyTorch's rule), checked
        before the compiled plan runs."""
        if n < 2 and (layers := self._batch_stats(training)):
            raise ValueError(f"BatchNorm1d (layer {layers[0]}) on batch statistics needs at least 2 rows, "
                             f"got {n} (as PyTorch: use eval mode for single samples)")

    def _forward(self, X, ws, training):
        """The output of X (C-contiguous, checked) through the compiled plan."""
        self._check_rows(X.shape[0], training)
        return ws.plan.forward(X, training, self.step_count)

    def _gradients(self, X, y, ws, training=True, weights=True, input_gradient=False):
        """Mean loss of a batch, with the parameter gradients in ``grads`` (unless
        ``weights`` is False) and the input gradient in ``ws.grad_in[0]`` (when
        ``input_gradient``): one compiled call."""
        self._check_rows(X.shape[0], training)
        return ws.plan.gradients(X, y, training, self.step_count, weights, input_gradient)

    # -- training ------------------------------------------------------------------------
    @trains
    def gradients(self, X, y):
        """Mean loss for a batch, with every parameter's gradient in ``grads``
        (in the current mode; nothing else changes: running statistics are
        restored, no step is counted).  Each parameter's gradient by name:
        :meth:`grad_dict`."""
        X, y = self._check_batch(X, y)
        _nonempty(X)
        with self._buffers_kept(self.training):
            return self._gradients(X, y, self._workspace(X.shape[0]), self.training)

    @contextlib.contextmanager
    def _buffers_kept(self, training):
        """Restore the running statistics after a block that ran a training forward."""
        saved = (self.buffers.copy(), self.num_batches_tracked.copy()) if training and self.buffers.size else None
        try:
            yield
        finally:
            if saved is not None:
                self.buffers[...], self.num_batches_tracked[...] = saved

    @trains
    def train_step(self, X, y):
        """One optimisation step on a batch in training mode (Adam lr 1e-3 unless
        :meth:`compile` chose otherwise); returns the batch's mean loss."""
        X, y = self._check_batch(X, y)
        _nonempty(X)
        if self.optimizer is None:
            self.compile(groups=self.groups)
        return self._step(X, y, self._workspace(X.shape[0]))

    def _end_epoch(self, logs, validation_data, seconds):
        """Complete an epoch's logs (validation loss and metric, sparsity, seconds)
        and count the epoch; returns the logs."""
        if validation_data is not None:
            vl, vs = self._evaluate(*validation_data, batch_size=1024)
            logs["val_loss"] = vl
            logs.update({f"val_{k}": v for k, v in vs.items()})
        logs["sparsity"] = self.sparsity()
        logs["seconds"] = seconds
        self.epochs_done += 1
        return logs

    def _frozen_prefix(self):
        """How many stages at the front compute the same thing in training as in
        inference and have nothing trained: their output can be computed once
        (``fit(..., cache_frozen=True)``)."""
        for k, st in enumerate(self._plan):
            if st.p or self._stage_trains(st) or (st.kind == "bn" and not self._stage_stats_frozen(st)):
                return k
        return len(self._plan)

    def _stage_trains(self, st):
        """Whether a stage has a parameter that is not frozen (else no weight gradient)."""
        return any(f"{st.index}.{name}" not in self.frozen for name in st.layer.param_names)

    def _stage_stats_frozen(self, st):
        """Whether a BatchNorm stage's running statistics are frozen (used in training, not updated)."""
        return st.kind == "bn" and f"{st.index}.running_mean" in self.frozen

    def _prefix_outputs(self, X, stop, batch_size=1024):
        """The output of the first ``stop`` stages for X, in inference mode (chunks of ``batch_size``)."""
        out = np.empty((X.shape[0], self._widths[stop - 1][1]), self.dtype)
        ws = None
        for start in range(0, X.shape[0], batch_size):
            chunk = X[start:start + batch_size]
            if ws is None or ws.batch != chunk.shape[0]:       # one plan per chunk size, not per chunk
                ws = Workspace(self, chunk.shape[0], training=False, stop=stop)
            out[start:start + chunk.shape[0]] = ws.plan.forward(chunk, False, self.step_count)
        return out

    def _step(self, X, y, ws, reducer=None):
        loss = self._gradients(X, y, ws)
        if reducer is not None:         # data-parallel: the mean gradient over all ranks' rows
            reducer.reduce(self.grads, X.shape[0])
        self.optimizer._apply([self.grads])
        self.step_count += 1
        return loss

    def _correct(self, ws, y):
        """How many rows of the workspace's last forward pass predict their class y
        (0 for a loss without classes)."""
        return int(np.count_nonzero(np.argmax(ws.out[-1], axis=1) == y)) if self.loss.classification else 0

    def _adversarial_step(self, X, y, ws, adv, reducer=None):
        """One step on ``(1 - ratio) * loss(x) + ratio * loss(x_adv)``, x_adv the FGSM
        example of x made with this step's weights (in training mode, as the rest
        of the step): the clean pass gives its weight gradients and the input
        gradient at once, then the adversarial pass; returns (loss, clean correct)."""
        ratio = adv["ratio"]
        clean = ratio < 1.0
        loss_c = self._gradients(X, y, ws, weights=clean, input_gradient=True)
        correct = self._correct(ws, y)
        if ws.adv is None:
            ws.adv = (np.empty_like(X), np.empty_like(self.grads))
        x_adv, g_clean = ws.adv
        lo, hi = adv["clip"] if adv["clip"] is not None else (-math.inf, math.inf)
        # the fused FGSM step (fastwb.adversarial.perturb's kernel) on the engine's own arrays
        _adversarial.fgsm_flat(X.reshape(-1), ws.grad_in[0].reshape(-1), x_adv.reshape(-1), adv["eps"], lo, hi,
                               _adversarial.NO_CHECK, plan_threads(X.size, GRAIN_MEMORY))
        if clean:
            np.multiply(self.grads, 1.0 - ratio, out=g_clean)
        loss_a = self._gradients(x_adv, y, ws)
        if clean:
            self.grads *= ratio
            self.grads += g_clean
        if reducer is not None:
            reducer.reduce(self.grads, X.shape[0])
        self.optimizer._apply([self.grads])
        self.step_count += 1
        return (1.0 - ratio) * loss_c + ratio * loss_a, correct

    def _adversarial_options(self, adversarial):
        """fit's ``adversarial`` argument, checked: {"attack", "eps", "ratio", "clip"}."""
        if not isinstance(adversarial, dict):
            raise TypeError(f"adversarial must be a dict such as dict(attack='fgsm', eps=0.1, ratio=0.5), "
                            f"got {type(adversarial).__name__}")
        unknown = sorted(set(adversarial) - {"attack", "eps", "ratio", "clip"})
        if unknown:
            raise ValueError(f"adversarial: unknown option {', '.join(unknown)} (attack, eps, ratio, clip)")
        if adversarial.get("attack", "fgsm") != "fgsm":
            raise ValueError(f"adversarial: attack must be 'fgsm', got {adversarial['attack']!r}")
        eps = check_real("adversarial eps", adversarial.get("eps", 0.1), minimum=0.0)
        ratio = check_real("adversarial ratio", adversarial.get("ratio", 0.5), 0.0, 1.0)
        clip = adversarial.get("clip", (0.0, 1.0))
        if clip is not None:
            try:
                lo, hi = (check_real("adversarial clip", v) for v in clip)
            except TypeError:
                raise TypeError(f"adversarial clip must be a pair (lo, hi) or None, got {clip!r}") from None
            if lo > hi:
                raise ValueError(f"adversarial clip: lo {lo} is above hi {hi}")
            clip = (lo, hi)
        return {"attack": "fgsm", "eps": eps, "ratio": ratio, "clip": clip}

    @trains
    def input_gradient(self, X, y, training=False):
        """Gradient of the mean loss with respect to X (for saliency maps and
        adversarial examples), in eval mode unless ``training``: no parameter
        gradient is computed and nothing in the model changes."""
        X, y = self._check_batch(X, y)
        _nonempty(X)
        ws = self._workspace(X.shape[0])
        with self._buffers_kept(training):
            self._gradients(X, y, ws, training, weights=False, input_gradient=True)
        return ws.grad_in[0].copy()

    @trains
    def output_gradient(self, X, G, training=False):
        r"""The gradient with respect to X of :math:`\sum_{ij} G_{ij} f(X)_{ij}`, ``f``
        the network's output (before any softmax or sigmoid): the
        vector-Jacobian product behind saliency maps (``G`` one-hot on a class
        gives each row's :math:`\partial f_c / \partial x`).  One compiled
        forward and an input-gradient-only backward (no weight gradient), in
        eval mode unless ``training``; nothing in the model changes.  ``G``:
        ``(n, out_features)``, converted to the model's dtype, or a function
        of the output (a copy) giving it, for a G that depends on the output
        (the predicted class, softmax derivatives): still one forward pass.
        Returns the input gradient, or ``(input gradient, output)`` for a
        callable ``G``."""
        X = self._check_x(X)
        _nonempty(X)
        n = X.shape[0]
        ws = self._workspace(n)
        self._check_rows(n, training)
        with self._buffers_kept(training):
            out = None
            if callable(G):
                out = ws.plan.forward(X, training, self.step_count).copy()
                G = G(out)
            G = np.asarray(G)
            if G.shape != (n, self.out_features):
                raise ValueError(f"G must have shape {(n, self.out_features)} (one row per row of X), "
                                 f"got {G.shape}")
            if G.dtype.kind not in "fiub":
                raise TypeError(f"G must be a numeric array, got dtype {G.dtype}")
            ws.plan.backward_from(X, G.astype(self.dtype, copy=False), training, self.step_count,
                                  forward=out is None)
        grad = ws.grad_in[0].copy()
        return grad if out is None else (grad, out)

    @trains
    def fit(self, X, y, epochs=5, batch_size=128, optimizer=None, shuffle=True, validation_data=None, rng=None,
            prune_schedule=None, prune_scope="global", verbose=True, callbacks=(), cache_frozen=False,
            adversarial=None, comm=None, proximal=None, train_metrics=True):
        """Train for ``epochs`` passes over (X, y) in mini-batches, in training mode.

        ``epochs`` and ``batch_size`` are integers >= 1.  ``optimizer``: None
        (keep the current one; Adam with lr 1e-3 when none was compiled), a
        name, or a :mod:`fastwb.optim` optimizer over ``[model.params]``.
        Shuffling draws each epoch's order from ``rng`` (a seed, a Generator
        or None) and the epoch's number, so a fit resumed from a checkpoint
        continues exactly as if never stopped.  ``prune_schedule``: a
        schedule (``step -> sparsity``, e.g. :class:`fastwb.prune.CubicSchedule`)
        or a final sparsity reached by a cubic schedule over the first three
        quarters of training (:func:`fastwb.prune.schedule_for`); Linear
        weights are pruned by magnitude (``prune_scope``: see :meth:`prune`),
        never biases or BatchNorm parameters.  ``callbacks``:
        :mod:`fastwb.nn.callbacks` objects, ``on_epoch_end(epoch, logs)``
        after each epoch; one may set ``model.stop_training``.  ``verbose``
        shows a progress bar on a terminal (tqdm when installed) and a line
        per epoch.

        ``cache_frozen``: when the first layers are frozen and compute the same
        in training as in inference (no active dropout, BatchNorm with frozen
        running statistics: see :meth:`freeze`), their output for all of X is
        computed once per epoch's start (again only after an ``Unfreeze``), and
        the steps run only the layers after them.  The results equal those of
        uncached training up to the rounding of the cached GEMMs (computed in
        other row blocks).  Without such a prefix it changes nothing.

        ``adversarial``: adversarial training (Goodfellow et al. 2015),
        ``dict(attack="fgsm", eps=0.1, ratio=0.5, clip=(0, 1))``: each batch
        trains on ``(1 - ratio) * loss(x) + ratio * loss(x_adv)``, ``x_adv =
        clip(x + eps * sign(grad_x loss))`` made inside the step with the
        current weights (training mode).  The clean pass gives its weight
        gradients and the input gradient together; BatchNorm's running
        statistics see both passes.  The training accuracy is the clean one.

        ``comm``: an mpi4py communicator for synchronous data-parallel
        training (:mod:`fastwb.distributed`): X, y are this rank's shard,
        ``batch_size`` is the global batch (a multiple of the number of
        ranks), gradients are averaged over all ranks every step, the ranks
        start from rank 0's weights and stay identical; only rank 0 prints,
        validates and writes checkpoints.

        ``proximal``: FedProx's proximal term (Li et al. 2020),
        ``dict(mu=0.01)`` (anchored at the parameters ``fit`` starts from) or
        ``dict(mu=0.01, anchor=flat)`` (a copy of ``model.params`` taken
        earlier): the objective becomes ``loss(w) + mu/2 ||w - anchor||^2``
        over every trainable parameter, so each step's gradient gets
        ``mu (w - anchor)`` added before the optimizer runs (frozen
        parameters do not move either way).  :mod:`fastwb.federated` uses it.

        ``train_metrics=False`` leaves the training metric out of the logs:
        for the mse and bce_with_logits losses it costs an inference pass
        over all of X every epoch (a third of an epoch's work), which a
        caller that needs only the loss (:mod:`fastwb.sklearn`) does not pay.

        Returns the history dict: per epoch ``loss``, the loss's metric
        (``accuracy``, ``r2`` or ``binary_accuracy``), ``val_*`` of both with
        ``validation_data``, ``sparsity`` and ``seconds``.  Not concurrent
        with another training call on this model (RuntimeError)."""
        X, y = self._check_batch(X, y)
        n = X.shape[0]
        _nonempty(X)
        epochs = check_int("epochs", epochs, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        if optimizer is not None:
            self.compile(optimizer, groups=self.groups)
        elif self.optimizer is None:
            self.compile(groups=self.groups)
        dist = None
        if comm is not None:        # a collective call: checks the ranks agree, broadcasts rank 0's state
            from fastwb.distributed import Reducer
            dist = Reducer(self, comm, n, batch_size, epochs)
            batch_size = dist.local_batch
            verbose = verbose and dist.root
            validation_data = validation_data if dist.root else None
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = self._check_x(Xv, "validation X")
            if Xv.shape[0] == 0:
                raise ValueError("validation X is empty")
            if Xv.shape[0] < 2 and self._batch_stats(False):
                raise ValueError("a BatchNorm1d without running statistics needs at least 2 validation rows")
            validation_data = (Xv,
                               self.loss.targets(yv, len(Xv), self.out_features, self.dtype, "validation y"))
        seed = int(init.as_generator(rng).integers(0, 2**63 - 1)) if not isinstance(rng, (int, np.integer)) else int(rng)
        steps_per_epoch = -(-n // batch_size)
        if n % batch_size == 1 and self._batch_stats(True):
            raise ValueError(f"{n} rows in batches of {batch_size} leave a last batch of one row, which "
                             "BatchNorm1d cannot normalise on batch statistics; choose another batch_size")
        schedule = prune.schedule_for(prune_schedule, epochs * steps_per_epoch)
        if adversarial is not None:
            adversarial = self._adversarial_options(adversarial)
            if adversarial["ratio"] == 0:       # all clean: the standard step
                adversarial = None
            if cache_frozen:
                raise ValueError("adversarial training perturbs the input, so cache_frozen cannot be used with it")
        callbacks = list(callbacks) if dist is None else dist.callbacks(callbacks)
        hook = dist
        if proximal is not None:
            if dist is not None:
                raise ValueError("proximal (FedProx) and comm (data-parallel) cannot be combined")
            hook = _Proximal(self, proximal)
        self.stop_training = False
        for cb in callbacks:
            cb.on_train_begin(self)
        # every key from the start (val_* stay empty without validation data), as MLP always had
        names = ("loss",) + self.loss.metrics
        history = {k: [] for k in names + tuple(f"val_{k}" for k in names) + ("sparsity", "seconds")}
        was_training = self.training
        self.train()
        current_sparsity = None
        start_step = self.step_count
        last_epoch = self.epochs_done + epochs
        cached, data = 0, X           # stages whose output `data` holds for every row of X
        try:
            if dist is not None:
                dist.begin()
            for _ in range(epochs):
                epoch = self.epochs_done
                if cache_frozen:
                    if self._generation != Layer.generation:
                        self._replan()          # a layer's setting changed: the stages may have too
                        cached = -1
                    stop = self._frozen_prefix() if schedule is None else 0
                    if stop == len(self._plan):
                        raise ValueError("cache_frozen: every layer is frozen, so there is nothing to train")
                    if stop != cached:
                        data = self._prefix_outputs(X, stop) if stop else X
                        cached = stop
                order = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n))
                bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{last_epoch}", verbose)
                t0 = time.perf_counter()
                loss_sum, correct = 0.0, 0
                for s in range(0, n, batch_size):
                    idx = order[s:s + batch_size]
                    ws = self._workspace(len(idx), cached)
                    yb = _gather(ws, data, y, idx)
                    if schedule is not None:
                        target = schedule(self.step_count - start_step)
                        if current_sparsity is None or target > current_sparsity:
                            self.prune(target, prune_scope)
                            current_sparsity = target
                    if adversarial is None:
                        loss = self._step(ws.x, yb, ws, hook)
                        correct += self._correct(ws, yb)
                    else:
                        loss, right = self._adversarial_step(ws.x, yb, ws, adversarial, hook)
                        correct += right
                    loss_sum += loss * len(idx)
                    bar.update(loss)
                seconds = time.perf_counter() - t0
                logs = {"loss": loss_sum / n}
                # the training metric: from the steps' own outputs for accuracy, else one inference pass
                if train_metrics:
                    logs.update({"accuracy": correct / n} if self.loss.classification else self._scores(X, y))
                if dist is not None:        # averaged over all ranks' rows; running statistics over the ranks
                    dist.end_epoch(logs, n)
                self._end_epoch(logs, validation_data, seconds)
                if dist is not None:
                    logs = dist.share(logs)     # rank 0's (with its validation), so callbacks agree
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                if dist is not None:
                    self.stop_training = dist.stop(self.stop_training)
                for k, v in logs.items():
                    history.setdefault(k, []).append(v)
                bar.close(f"epoch {epoch + 1}/{last_epoch}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in logs.items() if k not in ("seconds", "sparsity"))
                    + f", {(n if dist is None else dist.rows_total) / max(seconds, 1e-9):,.0f} samples/s")
                if self.stop_training:
                    break
        finally:
            for cb in callbacks:
                cb.on_train_end()
            self.train(was_training)
            if dist is not None:
                dist.close()
        return history

    # -- inference -----------------------------------------------------------------------
    def logits(self, X, batch_size=1024):
        """The network's output (before any softmax or sigmoid) for inference: in
        any mode, BatchNorm uses its running statistics and dropout is off, and
        nothing in the model changes.

        X runs through the network in chunks of ``batch_size`` rows (an
        integer >= 1; it bounds the memory of the workspaces, not the result).
        A model with a BatchNorm1d that keeps no running statistics normalises
        by the statistics of the whole X, as PyTorch does, so it runs X in one
        chunk (and needs two rows).  Safe to call from many threads at once on
        one model."""
        if type(batch_size) is not int or batch_size < 1:
            batch_size = check_int("batch_size", batch_size, 1)
        X = self._check_x(X)
        n = X.shape[0]
        if self._generation != Layer.generation:
            self._replan()
        batch_stats = self._batch_stats(False)
        if batch_stats:
            batch_size = max(n, 1)
        if 0 < n <= batch_size:                 # one chunk: the latency path
            if batch_stats:
                self._check_rows(n, False)
            ws = self._pool.take(self, n)
            try:
                return ws.plan.forward(X, False, self.step_count).copy()
            finally:
                self._pool.give(ws)
        out = np.empty((n, self.out_features), self.dtype)
        for start, stop, ws in self._pool.chunks(self, n, batch_size):
            chunk = X[start:stop]
            out[start:stop] = self._forward(chunk, ws, False)
        return out

    def predict_proba(self, X, batch_size=1024):
        """Class probabilities: softmax of the output (cross_entropy), sigmoid of it
        (bce_with_logits); the output itself for regression."""
        return self.loss.probabilities(self.logits(X, batch_size))

    def predict(self, X, batch_size=1024):
        """Predicted classes (cross_entropy), 0/1 labels (bce_with_logits) or values (mse)."""
        return self.loss.predictions(self.logits(X, batch_size))

    def evaluate(self, X, y, batch_size=1024):
        """``(mean_loss, metric)`` for inference (as :meth:`logits`): accuracy
        (cross_entropy), R^2 (mse) or binary accuracy (bce_with_logits)."""
        X, y = self._check_batch(X, y)
        _nonempty(X)
        loss, scores = self._evaluate(X, y, check_int("batch_size", batch_size, 1))
        return loss, self.loss.headline(scores)

    def _evaluate(self, X, y, batch_size):
        return self.loss.evaluate(self.logits(X, batch_size), y)

    def _scores(self, X, y):
        return self.loss.scores(self.logits(X), y)

    # -- pruning -------------------------------------------------------------------------
    def layer_sparsity(self):
        """Fraction of exactly-zero weights in each Linear layer."""
        return [1.0 - np.count_nonzero(w) / w.size for w in self.W]

    def prune(self, sparsity, scope="global"):
        """Prune the Linear weights to ``sparsity`` by magnitude: over all weight
        matrices together (``scope="global"``, the default: layers keep the
        weights that matter most, so a small output layer is spared) or each
        matrix to that sparsity (``"layer"``); exact counts.  Pruned weights
        stay 0 through later updates and pruning only ever grows.  Biases and
        BatchNorm parameters are never pruned."""
        self.masks = prune.grow_masks(self.W, sparsity, scope, self.masks)
        if self.optimizer is not None:
            self.optimizer.set_masks([self._flat_mask()])

    def _weight_places(self):
        """(offset, shape) of every Linear weight in ``params``."""
        return [(offset, shape) for name, kind, offset, shape in self._names
                if kind == "param" and isinstance(self.layers[int(name.split(".")[0])], Linear)
                and name.endswith(".weight")]

    def _flat_mask(self):
        """The pruning masks as one keep-mask over ``params`` (the optimizer's)."""
        mask = np.ones(self.params.size, bool)
        for (offset, shape), m in zip(self._weight_places(), self.masks):
            mask[offset:offset + math.prod(shape)] = m.reshape(-1)
        return mask

    def _masks_from_flat(self, mask):
        """The per-weight pruning masks of a keep-mask over ``params`` (a checkpoint's)."""
        return [mask[offset:offset + math.prod(shape)].reshape(shape).copy() for offset, shape in self._weight_places()]

    def sparsity(self):
        """Fraction of exactly-zero Linear weights."""
        ws = self.W
        total = sum(w.size for w in ws)
        return 1.0 - sum(np.count_nonzero(w) for w in ws) / total if total else 0.0

    # -- state -----------------------------------------------------------------------------
    def _entry(self, kind, offset, shape):
        if kind == "param":
            return self.params[offset:offset + math.prod(shape)].reshape(shape)
        if kind == "buffer":
            return self.buffers[offset:offset + math.prod(shape)].reshape(shape)
        return self.num_batches_tracked[offset:offset + 1].reshape(())

    def grad_dict(self):
        """Each parameter's gradient (as left by the last :meth:`gradients`,
        :meth:`train_step` or ``fit`` step) under its state-dict name: views of
        ``grads``, overwritten by the next training call."""
        return {f"{i}.{name}": g for i, d in enumerate(self._grads) for name, g in d.items()}

    def state_dict(self):
        """Copies of every parameter and buffer under PyTorch's names (``"0.weight"``,
        ``"1.running_var"``, ``"1.num_batches_tracked"``, ...).  Linear weights are
        ``(in, out)``."""
        return {name: self._entry(kind, off, shape).copy() for name, kind, off, shape in self._names}

    def load_state_dict(self, state, convert_dtype=False, layout="fastwb"):
        """Set every parameter and buffer from ``state`` (the names of
        :meth:`state_dict`).  A missing, extra or misshapen entry is a ValueError
        naming it; an entry of another float dtype is one too unless
        ``convert_dtype``.  Nothing changes unless everything fits.

        ``layout="torch"`` takes a PyTorch ``state_dict`` (tensors or arrays,
        Linear weights ``(out, in)``): see :func:`fastwb.nn.interop.from_torch_state`."""
        if layout == "torch":
            from fastwb.nn import interop
            state = interop.from_torch_state(self, state)
        elif layout != "fastwb":
            raise ValueError(f"layout must be 'fastwb' or 'torch', got {layout!r}")
        names = [n for n, *_ in self._names]
        missing = [n for n in names if n not in state]
        extra = [n for n in state if n not in names]
        if missing or extra:
            raise ValueError("state dict does not match the model: "
                             + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                         + ([f"unexpected {', '.join(map(str, extra))}"] if extra else [])))
        checked = {}
        for name, kind, off, shape in self._names:
            v = np.asarray(state[name])
            if v.shape != shape:
                raise ValueError(f"state dict entry {name!r} has shape {v.shape}, the model needs {shape}")
            want = np.int64 if kind == "count" else self.dtype
            if v.dtype != want and not (convert_dtype and v.dtype.kind == np.dtype(want).kind):
                if kind == "count" and v.dtype.kind in "iu":
                    pass
                else:
                    raise ValueError(f"state dict entry {name!r} has dtype {v.dtype}, the model is {np.dtype(want)}"
                                     + ("" if kind == "count" else " (pass convert_dtype=True to convert)"))
            checked[name] = v
        for name, kind, off, shape in self._names:
            self._entry(kind, off, shape)[...] = checked[name]

    # -- checkpoints ---------------------------------------------------------------------------
    def spec(self):
        """The model's layer specification (JSON-serialisable)."""
        return {"layers": [{"type": type(layer).__name__, **layer.config()} for layer in self.layers],
                "dtype": self.dtype.name, "in_features": self.in_features, "loss": self.loss.name,
                "seed": self.seed, "step_count": self.step_count, "epochs_done": self.epochs_done,
                "frozen": sorted(self.frozen), "groups": self.groups}

    def save(self, path, with_optimizer=False):
        """Write a v2 checkpoint to exactly ``path``, atomically: the layer
        specification (JSON), the parameter and buffer arrays, and with
        ``with_optimizer`` the optimizer's hyperparameters, step and state, so
        that :func:`fastwb.nn.load` followed by ``fit`` continues bit for bit."""
        fields = {"format": np.array(CHECKPOINT_FORMAT), "spec": np.array(json.dumps(self.spec())),
                  "params": self.params, "buffers": self.buffers, "num_batches_tracked": self.num_batches_tracked}
        if with_optimizer and self.optimizer is not None:
            sd = self.optimizer.state_dict()
            hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in sd["hyper"].items()}
            fields["optimizer"] = np.array(json.dumps({"name": sd["optimizer"], "hyper": hyper, "step": sd["step"],
                                                       "groups": sd["groups"], "units": sd["units"]}))
            for k, v in sd["state"][0].items():
                fields[f"optimizer_{k}"] = v
            if sd["masks"][0] is not None:
                fields["optimizer_mask"] = sd["masks"][0]
        if hasattr(path, "write"):          # an open binary file: written in place, not atomic
            np.savez(path, **fields)
            return
        with _io.atomic_open(path, "wb") as fh:
            np.savez(fh, **fields)

    def copy(self):
        """An independent copy, parameters, buffers, optimizer state, seed and
        step count included, whose arrays are views of its own buffers (for
        inference from another thread, or an ensemble member)."""
        other = self._blank()
        other.params[...], other.buffers[...] = self.params, self.buffers
        other.num_batches_tracked[...] = self.num_batches_tracked
        other.loss, other.seed, other.step_count, other.epochs_done = self.loss, self.seed, self.step_count, self.epochs_done
        other.training = self.training
        other.frozen, other.groups = set(self.frozen), _copy.deepcopy(self.groups)
        if self.masks is not None:
            other.masks = [m.copy() for m in self.masks]
        if self.optimizer is not None:
            other.optimizer = type(self.optimizer)([other.params])
            other.optimizer.load_state_dict(self.optimizer.state_dict())
        return other

    def _blank(self):
        """A new model of the same structure (what :meth:`copy` fills in)."""
        return Sequential(*[_copy.deepcopy(layer) for layer in self.layers], dtype=self.dtype,
                          in_features=self.in_features, rng=0)

    def __deepcopy__(self, memo):
        return self.copy()

    # -- interoperability and deployment ------------------------------------------------------
    def to_torch(self):
        """The same network as a ``torch.nn.Sequential`` (see :func:`fastwb.nn.interop.to_torch`)."""
        from fastwb.nn import interop
        return interop.to_torch(self)

    def fuse(self):
        """An inference copy with every BatchNorm1d folded into the Linear before it
        (see :func:`fastwb.nn.deploy.fuse`)."""
        from fastwb.nn import deploy
        return deploy.fuse(self)

    def export_onnx(self, path, **options):
        """Write the network as an ONNX model (see :func:`fastwb.nn.deploy.export_onnx`)."""
        from fastwb.nn import deploy
        return deploy.export_onnx(self, path, **options)

    def __repr__(self):
        inner = ",\n  ".join(f"({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n  {inner}\n) [{self.dtype.name}, {self.n_params} parameters]"


def load(path):
    """Read a checkpoint written by :meth:`Sequential.save` (v2); a v1 ``MLP``
    checkpoint is read by :meth:`fastwb.MLP.load`.  Every declared size is
    checked against the file before anything is allocated; a damaged or
    foreign file is a ValueError naming it."""
    with _io.NpzReader(path, "fastwb checkpoint") as npz:
        if "format" not in npz.members or "spec" not in npz.members:
            if "layer_sizes" in npz.members and "MLP" in PRESETS:
                return PRESETS["MLP"].load(path)
            raise ValueError(f"{npz.name}: not a fastwb checkpoint (no format or spec)")
        if "quantized" in npz.members:
            raise ValueError(f"{npz.name}: an int8 model written by fastwb.quantize: read it with "
                             "fastwb.quantize.load")
        fmt = str(npz.read("format", max_bytes=1024))
        if fmt != CHECKPOINT_FORMAT:
            raise ValueError(f"{npz.name}: checkpoint format {fmt!r} is not {CHECKPOINT_FORMAT!r}")
        try:
            spec = json.loads(str(npz.read("spec", max_bytes=_SPEC_BYTES)))
            layers = [layer_from_config(s) for s in spec["layers"]]
            dtype = np.dtype(spec["dtype"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{npz.name}: bad layer specification ({e})") from None
        n_p = sum(math.prod(s) for layer in layers for s in layer.param_shapes().values())
        n_b = sum(math.prod(s) for layer in layers for s in layer.buffer_shapes().values())
        for key, shape, dt in (("params", (n_p,), dtype), ("buffers", (n_b,), dtype)):
            m = npz.members.get(key)
            if m is None or m.shape != shape or m.dtype != dt:
                raise ValueError(f"{npz.name}: {key} is {m.describe() if m else 'missing'}, the layers need "
                                 f"{np.dtype(dt)}{shape}")
        try:
            preset = spec.get("preset")
            if preset is None:
                model = Sequential(*layers, dtype=dtype, in_features=spec.get("in_features"), rng=0)
            else:
                if not isinstance(preset, dict) or preset.get("name") not in PRESETS:
                    raise ValueError(f"unknown preset {preset!r}")
                cls = PRESETS[preset["name"]]
                # compare before building: only the checked layers' sizes are known to fit the file
                if [{"type": type(la).__name__, **la.config()} for la in cls.preset_layers(preset)] != spec["layers"]:
                    raise ValueError(f"the {preset['name']} preset does not build these layers")
                model = cls.from_preset(preset, dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{npz.name}: inconsistent layer specification ({e})") from None
        nbt = npz.members.get("num_batches_tracked")
        if nbt is None or nbt.shape != model.num_batches_tracked.shape or nbt.dtype != np.int64:
            raise ValueError(f"{npz.name}: num_batches_tracked does not match the layers")
        model.params[...] = npz.read("params")
        model.buffers[...] = npz.read("buffers")
        model.num_batches_tracked[...] = npz.read("num_batches_tracked")
        model.loss = _losses.get(spec.get("loss", "cross_entropy"))
        model.seed = check_int("seed", spec.get("seed", 0), 0)
        model.step_count = check_int("step_count", spec.get("step_count", 0), 0)
        model.epochs_done = check_int("epochs_done", spec.get("epochs_done", 0), 0)
        try:
            frozen, groups = spec.get("frozen", []), spec.get("groups", {})
            if not isinstance(frozen, list) or not isinstance(groups, dict):
                raise TypeError("frozen must be a list and groups a dict")
            if frozen:
                model.freeze(*frozen)
            for pattern, g in groups.items():      # (a pattern may name nothing since a replace)
                if not isinstance(pattern, str) or not isinstance(g, dict):
                    raise TypeError(f"group {pattern!r} is not a pattern with a dict")
            model.groups = groups
        except (TypeError, ValueError) as e:
            raise ValueError(f"{npz.name}: bad frozen parameters or groups ({e})") from None
        if "optimizer" in npz.members:
            info = json.loads(str(npz.read("optimizer", max_bytes=_SPEC_BYTES)))
            name = info.get("name", "")
            cls = {c.__name__: c for c in optim.BY_NAME.values()}.get(name)
            if cls is None:
                raise ValueError(f"{npz.name}: unknown optimizer {name!r}")
            opt = cls([model.params])
            state = {k[len("optimizer_"):]: npz.read(k) for k in npz.members
                     if k.startswith("optimizer_") and k != "optimizer_mask"}
            hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in info.get("hyper", {}).items()}
            mask = npz.read("optimizer_mask") if "optimizer_mask" in npz.members else None
            opt.load_state_dict({"optimizer": name, "hyper": hyper, "step": info.get("step"), "state": [state],
                                 "masks": [mask], "groups": info.get("groups", []), "units": info.get("units")})
            model.optimizer = opt
            if mask is not None:            # pruning goes on growing from the saved masks
                model.masks = model._masks_from_flat(opt.masks[0])
    return model


class _Proximal:
    """fit's ``proximal`` term: ``reduce`` adds ``mu (params - anchor)`` to a
    step's flat gradient, where the data-parallel Reducer sums it over ranks."""

    def __init__(self, model, options):
        if not isinstance(options, dict) or set(options) - {"mu", "anchor"} or "mu" not in options:
            raise TypeError(f"proximal must be a dict such as dict(mu=0.01) or dict(mu=0.01, anchor=params), "
                            f"got {options!r}")
        mu = options["mu"]
        if isinstance(mu, bool) or not isinstance(mu, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"proximal mu must be a finite number >= 0, got {mu!r}")
        anchor = options.get("anchor")
        if anchor is None:
            anchor = model.params.copy()
        else:
            anchor = np.asarray(anchor)
            if anchor.shape != model.params.shape or anchor.dtype != model.params.dtype:
                raise ValueError(f"proximal anchor must be a copy of model.params ({model.params.dtype}"
                                 f"{model.params.shape}), got {anchor.dtype}{anchor.shape}")
            anchor = anchor.copy()      # the anchor must not move with the parameters
        self.params, self.anchor, self.mu = model.params, anchor, model.dtype.type(mu)
        self.scratch = np.empty_like(anchor)

    def reduce(self, grads, rows):
        np.subtract(self.params, self.anchor, out=self.scratch)
        self.scratch *= self.mu
        grads += self.scratch


def _gather(ws, X, y, idx):
    """fit's batch: rows ``idx`` of X into the workspace's ``x`` and of y into its
    ``y`` (made at the first batch, and again when y's shape or dtype changes);
    returns the targets."""
    np.take(X, idx, axis=0, out=ws.x)
    if ws.y is None or ws.y.shape[1:] != y.shape[1:] or ws.y.dtype != y.dtype:
        ws.y = np.empty((len(idx),) + y.shape[1:], y.dtype)
    return np.take(y, idx, axis=0, out=ws.y)


def _nonempty(X):
    if X.shape[0] == 0:
        raise ValueError("the batch is empty")

