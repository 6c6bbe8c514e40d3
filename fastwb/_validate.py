"""Argument checks shared by fastwb's public functions.

Every error a caller can cause is raised here, before any compiled code runs,
with a message that names the argument and its shape or dtype.  Inputs that
are not C-contiguous are copied (kernels read only contiguous memory); an
``out`` array is never copied: it must already be right.
"""

import math
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# activation name -> code understood by the C kernels (csrc/fwb_rows.h)
ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}


def float_array(name, a, ndim=None, contiguous=True):
    """``a`` as a float32/float64 ndarray (C-contiguous when asked: copied if needed)."""
    a = np.asarray(a)
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {a.dtype} "
            f"(convert explicitly, e.g. {name}.astype(np.float32))"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {a.ndim}-D array of shape {a.shape}")
    if contiguous and not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def same_dtype(**arrays):
    """Raise TypeError unless every given array (None skipped) has one dtype; return it."""
    named = [(k, v) for k, v in arrays.items() if v is not None]
    dtype = named[0][1].dtype
    if any(v.dtype != dtype for _, v in named[1:]):
        listing = ", ".join(f"{k}: {v.dtype}" for k, v in named)
        raise TypeError(f"mixed dtypes ({listing}); fastwb never upcasts silently, convert them to one dtype")
    return dtype


def model_input(X, dtype, in_features, name="X"):
    """A model's input: an array of ``dtype`` (a TypeError otherwise, no silent
    cast) shaped ``(n, in_features)``, returned C-contiguous and aligned (a copy
    only when it is not), since compiled plans read it by pointer."""
    if type(X) is not np.ndarray:
        X = np.asarray(X)
    if X.dtype != dtype:
        raise TypeError(f"{name} has dtype {X.dtype} but the model is {np.dtype(dtype)}; convert it with .astype(...)")
    if X.ndim != 2 or X.shape[1] != in_features:
        raise ValueError(f"{name} must have shape (n, {in_features}), got {X.shape}")
    return X if X.flags.c_contiguous and X.flags.aligned else np.require(X, requirements=("C", "A"))


def out_array(name, out, shape, dtype):
    """Check a caller-supplied output array, or allocate one when ``out`` is None."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is written in place, never copied)")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def same_view(a, b):
    """True when ``a`` and ``b`` view exactly the same elements in the same
    order: same start address, dtype, shape and strides."""
    return (a is b or (a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
                       and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]))


def unaliased(inp, *outs, inplace=True):
    """``inp``, or a copy of it when it shares memory with one of ``outs``.

    This is fastwb's one aliasing rule: a kernel either reads an input that
    is exactly its output (``inplace=True``: elementwise kernels that read
    element j before writing element j) or reads memory that no output
    touches.  Any other overlap (a shifted view, a row of the output, a
    reinterpreted dtype) makes the input a private copy first, so results
    never depend on the order in which a kernel writes.  ``None`` outputs
    are skipped."""
    if inp is None:
        return None
    for out in outs:
        if out is None or not np.may_share_memory(inp, out):
            continue
        if inplace and same_view(inp, out):
            continue
        return inp.copy()
    return inp


def disjoint_outputs(**outs):
    """Raise ValueError when two of the given output arrays (None skipped)
    share memory: each must receive its own result."""
    named = [(k, v) for k, v in outs.items() if v is not None]
    for i, (ka, a) in enumerate(named):
        for kb, b in named[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{ka} and {kb} share memory; give each result its own array")


def activation_code(activation, alpha):
    """``(code, alpha)``: the kernel code of an activation name and the slope to pass
    (checked for leaky_relu, 0.0 for the others)."""
    try:
        code = ACTIVATIONS[activation]
    except (KeyError, TypeError):
        valid = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"unknown activation {activation!r}; valid names are {valid}") from None
    if code == ACTIVATIONS["leaky_relu"]:
        return code, check_alpha(alpha)
    return code, 0.0


def check_alpha(alpha):
    """Leaky ReLU slope: a real number >= 0 (the backward pass reads the sign of y)."""
    try:
        ok = float(alpha) >= 0.0
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}") from None
    if not ok:
        raise ValueError(f"alpha must be >= 0 (and not NaN), got {alpha!r}")
    return float(alpha)


def same_shape(name_a, a, name_b, b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


def check_int(name, value, minimum=None):
    """``value`` as a Python int (TypeError for bools, floats and non-numbers;
    ValueError naming ``name`` below ``minimum``)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(name, value, minimum=None, maximum=None, below=None, above=None):
    """``value`` as a finite Python float within the given bounds (``below``
    and ``above`` are exclusive upper and lower bounds); TypeError for
    non-numbers, ValueError naming ``name`` for NaN, infinities and values out
    of range."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    if below is not None and not value < below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    return value
