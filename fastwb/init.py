"""Weight and bias initialisers, with PyTorch's names and gains.

fastwb stores dense weights as ``(in, out)``, as the slides do, so for a 2-D
shape ``fan_in = shape[0]`` and ``fan_out = shape[1]`` (PyTorch's ``Linear``
stores ``(out, in)``; the formulas are the same, the axes swapped).  For more
dimensions, fan_in and fan_out are ``shape[0]`` and ``shape[1]`` times the
product of the remaining (receptive field) sizes.

Every function takes ``rng``: a ``numpy.random.Generator``, an int seed, or
None for a fresh unpredictable generator; the same seed gives the same
arrays.  ``dtype`` defaults to float64.  These functions are plain NumPy
(random numbers are NumPy's); they serve as their own twins in
:mod:`fastwb.reference`.
"""

import math

import numpy as np

from fastwb._validate import check_int

__all__ = [
    "as_generator", "calculate_gain", "fans", "zeros", "uniform", "normal",
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
    "lecun_uniform", "lecun_normal", "bias_for_activation",
]

NONLINEARITIES = ("linear", "identity", "conv1d", "conv2d", "conv3d", "sigmoid", "tanh", "relu",
                  "leaky_relu", "selu")


def as_generator(rng):
    """A ``numpy.random.Generator`` from a Generator, an int seed or None (a
    ``numpy.random.RandomState`` is passed through: the slides' functions use
    NumPy's global legacy state, which ``np.random.seed`` controls)."""
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def _shape(shape):
    """A shape as a tuple of ints >= 0 (an int is a 1-D shape); a float, bool or
    negative size is an error naming the dimension."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {type(shape).__name__}") from None
    return tuple(check_int(f"shape[{i}]", s, 0) for i, s in enumerate(dims))


def fans(shape):
    """(fan_in, fan_out) of a weight shape stored as (in, out, *receptive_field)."""
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need at least 2 dimensions, got shape {shape}")
    field = math.prod(shape[2:])
    return shape[0] * field, shape[1] * field


def calculate_gain(nonlinearity, param=None):
    """PyTorch's recommended gain: 1 for linear/conv/sigmoid, 5/3 for tanh,
    sqrt(2) for relu, sqrt(2 / (1 + slope^2)) for leaky_relu (slope 0.01 by
    default), 3/4 for selu."""
    if nonlinearity in ("linear", "identity", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative_slope {slope!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}; valid names are {', '.join(NONLINEARITIES)}")


def zeros(shape, dtype=np.float64):
    """All zeros (every neuron then learns the same thing: use for biases)."""
    return np.zeros(_shape(shape), dtype)


def uniform(shape, low=-0.1, high=0.1, rng=None, dtype=np.float64):
    """U(low, high); the lecture's small random initialisation by default."""
    if not low <= high:
        raise ValueError(f"low must be <= high, got {low} and {high}")
    return as_generator(rng).uniform(low, high, _shape(shape)).astype(dtype, copy=False)


def normal(shape, std=1.0, rng=None, dtype=np.float64):
    """N(0, std^2)."""
    if not std >= 0:
        raise ValueError(f"std must be >= 0, got {std}")
    w = as_generator(rng).standard_normal(_shape(shape))
    w *= std
    return w.astype(dtype, copy=False)


def xavier_uniform(shape, gain=1.0, rng=None, dtype=np.float64):
    """Glorot uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    a = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return uniform(shape, -a, a, rng, dtype)


def xavier_normal(shape, gain=1.0, rng=None, dtype=np.float64):
    """Glorot normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return normal(shape, gain * math.sqrt(2.0 / max(fan_in + fan_out, 1)), rng, dtype)


def _kaiming_std(shape, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(max(fan, 1))


def kaiming_uniform(shape, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None, dtype=np.float64):
    """He uniform: U(-b, b), b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a)."""
    b = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity)
    return uniform(shape, -b, b, rng, dtype)


def kaiming_normal(shape, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None, dtype=np.float64):
    """He normal: N(0, std^2), std = gain / sqrt(fan) (sqrt(2 / fan_in) for relu)."""
    return normal(shape, _kaiming_std(shape, a, mode, nonlinearity), rng, dtype)


def lecun_uniform(shape, rng=None, dtype=np.float64):
    """LeCun uniform: U(-b, b), b = sqrt(3 / fan_in)."""
    b = math.sqrt(3.0 / max(fans(shape)[0], 1))
    return uniform(shape, -b, b, rng, dtype)


def lecun_normal(shape, rng=None, dtype=np.float64):
    """LeCun normal: N(0, 1 / fan_in)."""
    return normal(shape, math.sqrt(1.0 / max(fans(shape)[0], 1)), rng, dtype)


BIAS_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "linear", "identity")


def bias_for_activation(fan_in, fan_out, activation, rng=None, dtype=np.float64):
    """A bias vector of length ``fan_out`` suited to the layer's activation
    (the slides' ``advanced_bias_initialization`` rule for one layer):

    * relu, leaky_relu: N(0, 2 / fan_in) (He scale)
    * sigmoid: 0.1 everywhere, away from the flat tails
    * tanh: U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot scale)
    * linear / identity: zeros
    """
    if activation in ("relu", "leaky_relu"):
        return normal(fan_out, math.sqrt(2.0 / max(fan_in, 1)), rng, dtype)
    if activation == "sigmoid":
        return np.full(_shape(fan_out), 0.1, dtype)
    if activation == "tanh":
        a = math.sqrt(6.0 / max(fan_in + fan_out, 1))
        return uniform(fan_out, -a, a, rng, dtype)
    if activation in ("linear", "identity"):
        return zeros(fan_out, dtype)
    raise ValueError(f"unknown activation {activation!r}; valid names are {', '.join(BIAS_ACTIVATIONS)}")
