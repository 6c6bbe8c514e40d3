"""The layers of :class:`fastwb.nn.Sequential`: what each one is, not how it runs.

A layer here is a specification: its constructor arguments (PyTorch's names
and defaults), the shapes of its parameters and buffers, and how it changes
the width of the data.  The arithmetic lives in the compiled kernels that
:class:`~fastwb.nn.Sequential` calls over one flat parameter buffer; each
layer's arrays are views into that buffer, named as in PyTorch's
``state_dict`` (``"0.weight"``, ``"1.running_mean"``, ...).

Weights of :class:`Linear` are stored ``(in, out)``, as in the slides
(``y = x @ W + b``); PyTorch stores ``(out, in)``.
"""

import math

import numpy as np

from fastwb import init
from fastwb._validate import ACTIVATIONS, check_alpha, check_int, check_real

__all__ = ["Layer", "Linear", "BatchNorm1d", "Dropout", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Identity",
           "LAYERS", "ACTIVATION_LAYERS", "layer_from_config", "activation_layer"]


class Layer:
    """Base class: a layer's parameters, buffers and configuration.

    Changing a setting of a layer that a model already uses (``bn.momentum =
    0.5``, ``drop.p = 0.3``) is honoured: every change bumps
    ``Layer.generation``, and a model whose compiled plans predate it makes
    them again before its next call.  Sizes cannot change (ValueError)."""

    #: bumped whenever an attribute that a layer already had is set again
    generation = 0

    def __setattr__(self, name, value):
        if name in self.__dict__:
            Layer.generation += 1
        object.__setattr__(self, name, value)

    #: names of the trainable arrays, in buffer order
    param_names = ()
    #: names of the float buffers (running statistics), in buffer order
    buffer_names = ()

    def param_shapes(self):
        """``{name: shape}`` of the trainable arrays."""
        return {}

    def buffer_shapes(self):
        """``{name: shape}`` of the float buffers."""
        return {}

    def out_features(self, n_in):
        """Width of the output for an input of width ``n_in`` (None: unknown); raises
        ValueError when the layer cannot take that width."""
        return n_in

    def in_features(self):
        """Width this layer requires of its input, or None when any width will do."""
        return None

    def initialise(self, params, buffers, gen):
        """Fill this layer's parameter and buffer views with their initial values."""

    def config(self):
        """The constructor arguments, JSON-serialisable."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


LINEAR_INITS = ("torch", "he", "glorot", "lecun", "uniform", "zeros")


class Linear(Layer):
    r"""Dense layer :math:`y = x W + b` with ``W`` of shape ``(in_features, out_features)``.

    ``init``: ``"torch"`` (the default, PyTorch's ``nn.Linear``: weights and bias
    :math:`U(-1/\sqrt{in}, 1/\sqrt{in})`), ``"he"`` (normal, std
    :math:`\sqrt{2/in}`, bias 0), ``"glorot"`` (uniform), ``"lecun"``
    (normal, std :math:`\sqrt{1/in}`), ``"uniform"`` (:math:`U(-0.1, 0.1)`)
    or ``"zeros"``; biases are 0 except with ``"torch"``."""

    def __init__(self, in_features, out_features, bias=True, init="torch"):
        self.in_features_ = check_int("in_features", in_features, 1)
        self.out_features_ = check_int("out_features", out_features, 1)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.bias = bool(bias)
        if init not in LINEAR_INITS:
            raise ValueError(f"unknown init {init!r}; valid names are {', '.join(LINEAR_INITS)}")
        self.init = init
        self.param_names = ("weight", "bias") if self.bias else ("weight",)

    def param_shapes(self):
        shapes = {"weight": (self.in_features_, self.out_features_)}
        if self.bias:
            shapes["bias"] = (self.out_features_,)
        return shapes

    def in_features(self):
        return self.in_features_

    def out_features(self, n_in):
        return self.out_features_

    def initialise(self, params, buffers, gen):
        W = params["weight"]
        shape = W.shape
        if self.init == "torch":
            bound = 1.0 / math.sqrt(self.in_features_)
            W[...] = init.uniform(shape, -bound, bound, rng=gen)
            if self.bias:
                params["bias"][...] = init.uniform((self.out_features_,), -bound, bound, rng=gen)
            return
        if self.init == "he":
            W[...] = init.kaiming_normal(shape, nonlinearity="relu", rng=gen)
        elif self.init == "glorot":
            W[...] = init.xavier_uniform(shape, rng=gen)
        elif self.init == "lecun":
            W[...] = init.lecun_normal(shape, rng=gen)
        elif self.init == "uniform":
            W[...] = init.uniform(shape, -0.1, 0.1, rng=gen)
        else:
            W[...] = 0
        if self.bias:
            params["bias"][...] = 0

    def config(self):
        return {"in_features": self.in_features_, "out_features": self.out_features_, "bias": self.bias,
                "init": self.init}


class BatchNorm1d(Layer):
    r"""Batch normalisation over the features of an ``(n, num_features)`` batch, as
    PyTorch's ``nn.BatchNorm1d``:

    .. math:: y = \gamma \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}} + \beta

    In training the batch mean and *biased* batch variance normalise, and the
    running statistics move as ``r = (1 - momentum) r + momentum * batch``
    with the *unbiased* variance (``momentum=None``: a cumulative average over
    ``num_batches_tracked`` batches).  In eval mode the running statistics
    normalise.  A training batch of one row is a ValueError.  (Keras'
    ``momentum`` is the opposite weight, ``1 - momentum`` here.)

    Frozen (``model.freeze("1.*")``, or its ``running_mean``), a BatchNorm1d
    normalises by its running statistics in training mode too and does not
    update them or ``num_batches_tracked``: the behaviour of Keras'
    ``trainable = False``.  PyTorch does otherwise: a BatchNorm1d whose
    parameters have ``requires_grad=False`` still normalises by batch
    statistics and updates its running statistics in training mode (call
    ``.eval()`` on it there for the same effect)."""

    buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        self.num_features = check_int("num_features", num_features, 1)
        self.eps = check_real("eps", eps, minimum=0.0)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.momentum = None if momentum is None else check_real("momentum", momentum, 0.0, 1.0)
        for name, flag in (("affine", affine), ("track_running_stats", track_running_stats)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.param_names = ("weight", "bias") if self.affine else ()
        self.buffer_names = ("running_mean", "running_var") if self.track_running_stats else ()

    def param_shapes(self):
        return {name: (self.num_features,) for name in self.param_names}

    def buffer_shapes(self):
        return {name: (self.num_features,) for name in self.buffer_names}

    def in_features(self):
        return self.num_features

    def initialise(self, params, buffers, gen):
        if self.affine:
            params["weight"][...] = 1
            params["bias"][...] = 0
        if self.track_running_stats:
            buffers["running_mean"][...] = 0
            buffers["running_var"][...] = 1

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}


class Dropout(Layer):
    """Inverted dropout: in training each element is kept with probability
    ``1 - p`` and scaled by ``1 / (1 - p)``; in eval mode the identity.  The
    mask comes from a counter-based generator keyed by the model's seed, the
    training step and the element's index, so it is the same for any thread
    count and is recomputed, not stored, in the backward pass."""

    def __init__(self, p=0.5):
        self.p = check_real("p", p, minimum=0.0, below=1.0)

    def config(self):
        return {"p": self.p}


class _Activation(Layer):
    activation = "identity"

    def config(self):
        return {}


class ReLU(_Activation):
    """max(x, 0)."""
    activation = "relu"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""
    activation = "sigmoid"


class Tanh(_Activation):
    """tanh(x)."""
    activation = "tanh"


class Identity(_Activation):
    """x."""
    activation = "identity"


class LeakyReLU(_Activation):
    """x for x > 0, else ``negative_slope * x`` (PyTorch's name; default 0.01)."""
    activation = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        self.negative_slope = check_alpha(negative_slope)

    def config(self):
        return {"negative_slope": self.negative_slope}


ACTIVATION_LAYERS = {c.activation: c for c in (Identity, ReLU, LeakyReLU, Sigmoid, Tanh)}
assert set(ACTIVATION_LAYERS) == set(ACTIVATIONS)


def activation_layer(name, negative_slope=0.01):
    """The layer of the activation called ``name`` (fastwb._validate.ACTIVATIONS);
    ValueError listing the valid names."""
    if not isinstance(name, str) or name not in ACTIVATION_LAYERS:
        raise ValueError(f"unknown activation {name!r}; valid names are {', '.join(ACTIVATIONS)}")
    return LeakyReLU(negative_slope) if name == "leaky_relu" else ACTIVATION_LAYERS[name]()


LAYERS = {cls.__name__: cls for cls in (Linear, BatchNorm1d, Dropout, ReLU, LeakyReLU, Sigmoid, Tanh, Identity)}


def layer_from_config(spec):
    """A layer from ``{"type": name, **config}`` (as in a checkpoint); ValueError for unknown names."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a layer specification is a dict with a 'type', got {spec!r}")
    kind = spec["type"]
    if kind not in LAYERS:
        raise ValueError(f"unknown layer {kind!r}; valid names are {', '.join(LAYERS)}")
    args = {k: v for k, v in spec.items() if k != "type"}
    try:
        return LAYERS[kind](**args)
    except TypeError as e:
        raise ValueError(f"bad arguments for layer {kind}: {e}") from None
