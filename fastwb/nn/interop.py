"""PyTorch interoperability: ``torch.nn.Sequential`` to :class:`fastwb.nn.Sequential` and back.

    import torch
    from fastwb import nn

    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                              torch.nn.Dropout(0.1), torch.nn.Linear(64, 3))
    # ... train net in PyTorch ...
    model = nn.from_torch(net)                  # same weights, buffers, settings and mode
    model.compile("adam", lr=1e-3)
    model.fit(X, y, epochs=1, batch_size=32)    # fine-tune in fastwb
    back = model.to_torch()                     # a torch.nn.Sequential again
    # back(torch.from_numpy(X)) matches model.logits(X) (in eval mode)

    model.load_state_dict(net.state_dict(), layout="torch")     # weights only, into a model of that shape

* :func:`from_torch`: a ``torch.nn.Sequential`` of ``Linear``, ``BatchNorm1d``,
  ``Dropout``, ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Identity`` and
  ``Flatten`` (default dims: the inputs are ``(n, features)``) becomes a fastwb
  model with the same outputs;
* :func:`to_torch` (also :meth:`Sequential.to_torch`): the reverse;
* :func:`from_torch_state`: a PyTorch ``state_dict`` in fastwb's layout (what
  ``load_state_dict(state, layout="torch")`` calls).

The one difference of layout: fastwb stores a Linear weight ``(in, out)``
(``y = x W + b``), PyTorch ``(out, in)``; the conversions transpose it.  The
state-dict names are the same (``"0.weight"``, ``"1.running_mean"``,
``"1.num_batches_tracked"``).  Dropout masks come from different generators,
so outputs agree in training mode only without dropout.

PyTorch is an optional dependency, imported only inside these functions.
"""

import sys
from collections.abc import Mapping

import numpy as np

from fastwb.nn.layers import BatchNorm1d, Dropout, Identity, LeakyReLU, Linear, ReLU, Sigmoid, Tanh
from fastwb.nn.sequential import Sequential

__all__ = ["from_torch", "from_torch_state", "to_torch"]

#: the torch module types from_torch converts, in the order its messages list them
SUPPORTED = ("Linear", "BatchNorm1d", "Dropout", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Identity",
             "Flatten (start_dim=1, end_dim=-1)")


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch is needed for fastwb.nn.interop: pip install torch "
                          "(CPU only: pip install torch --index-url https://download.pytorch.org/whl/cpu)") from None
    return torch


def _unsupported(i, child, why="is not supported", list_supported=True):
    tail = f"; fastwb converts {', '.join(SUPPORTED)}" if list_supported else ""
    return ValueError(f"layer {i} ({type(child).__name__}) {why}{tail}")


def _numpy(t):
    """A tensor's values as a NumPy array of its own (no memory shared with the tensor)."""
    return np.array(t.detach().cpu().numpy(), order="C", copy=True)


def from_torch(module, in_features=None, rng=None):
    """The fastwb :class:`~fastwb.nn.Sequential` computing what the ``torch.nn.Sequential``
    ``module`` computes.

    Copies Linear weights (transposed to ``(in, out)``) and biases,
    BatchNorm1d's affine parameters, running statistics and
    ``num_batches_tracked``, its ``eps``, ``momentum`` (``None`` too),
    ``affine`` and ``track_running_stats``, Dropout's ``p``, LeakyReLU's
    ``negative_slope``, and the module's training mode; a parameter with
    ``requires_grad=False`` is frozen (:meth:`Sequential.freeze`), and
    :func:`to_torch` gives frozen parameters ``requires_grad=False``.  ``Flatten`` with its
    default dims (a no-op on ``(n, features)`` inputs) and ``Identity`` become
    :class:`~fastwb.nn.Identity`.  The model's dtype is that of the
    parameters and buffers (float32 or float64, all one; float32 when there
    are none).  ``in_features`` is needed only when no layer fixes the input
    width; ``rng`` seeds the model's dropout masks (see Sequential).

    A module other than a ``torch.nn.Sequential`` is a TypeError.  A layer of
    another type (a subclass included: its forward may differ), a nested
    container, a Flatten with other dims, a setting fastwb does not have (a
    negative LeakyReLU slope, ``Dropout(p=1)``, a momentum outside [0, 1]),
    mixed or other dtypes, or a Dropout or BatchNorm1d whose training mode
    differs from the module's, is a ValueError naming the layer's position
    and type.  The result shares no memory with ``module``.
    """
    torch = _torch()
    tnn = torch.nn
    if not isinstance(module, tnn.Sequential):
        raise TypeError(f"from_torch converts a torch.nn.Sequential, got {type(module).__name__}")
    if type(module).forward is not tnn.Sequential.forward:
        raise TypeError(f"{type(module).__name__} overrides Sequential.forward, so its layers alone do not "
                        "say what it computes; convert a plain torch.nn.Sequential")
    children = list(module.children())
    if not children:
        raise ValueError("the torch.nn.Sequential is empty")
    training = bool(module.training)
    kinds = (tnn.Linear, tnn.BatchNorm1d, tnn.Dropout, tnn.ReLU, tnn.LeakyReLU, tnn.Sigmoid, tnn.Tanh, tnn.Identity,
             tnn.Flatten)
    dtype, dtype_at = None, None
    layers, state = [], {}
    for i, child in enumerate(children):
        kind = type(child)
        if isinstance(child, (tnn.Sequential, tnn.ModuleList, tnn.ModuleDict)):
            raise _unsupported(i, child, "is a nested container, which is not supported (flatten it into "
                                         "one Sequential)")
        if kind not in kinds:
            raise _unsupported(i, child)
        # the float arrays of this layer: one dtype across the whole module
        for name, t in list(child.named_parameters(recurse=False)) + list(child.named_buffers(recurse=False)):
            if t is None or name == "num_batches_tracked":
                continue
            if t.dtype not in (torch.float32, torch.float64):
                raise _unsupported(i, child, f"has {name} of dtype {t.dtype}, which is not supported "
                                             "(float32 or float64 only)", list_supported=False)
            if dtype is None:
                dtype, dtype_at = t.dtype, (i, kind.__name__)
            elif t.dtype != dtype:
                raise _unsupported(i, child, f"has {name} of dtype {t.dtype} but layer {dtype_at[0]} "
                                             f"({dtype_at[1]}) has {dtype}: mixed dtypes are not supported "
                                             "(convert the module with .float() or .double())", list_supported=False)
        if kind in (tnn.Dropout, tnn.BatchNorm1d) and bool(child.training) != training:
            raise _unsupported(i, child, f"is in {'training' if child.training else 'eval'} mode but the "
                                         f"Sequential is in {'training' if training else 'eval'} mode; fastwb "
                                         "has one mode per model (call .train() or .eval() on the whole module)",
                               list_supported=False)
        try:
            if kind is tnn.Linear:
                layer = Linear(child.in_features, child.out_features, bias=child.bias is not None)
                state[f"{i}.weight"] = _numpy(child.weight).T.copy()
                if child.bias is not None:
                    state[f"{i}.bias"] = _numpy(child.bias)
            elif kind is tnn.BatchNorm1d:
                layer = BatchNorm1d(child.num_features, eps=child.eps, momentum=child.momentum,
                                    affine=child.affine, track_running_stats=child.track_running_stats)
                if child.affine:
                    state[f"{i}.weight"] = _numpy(child.weight)
                    state[f"{i}.bias"] = _numpy(child.bias)
                if child.track_running_stats:
                    if child.running_mean is None or child.running_var is None or child.num_batches_tracked is None:
                        raise ValueError("tracks running statistics but has none")
                    state[f"{i}.running_mean"] = _numpy(child.running_mean)
                    state[f"{i}.running_var"] = _numpy(child.running_var)
                    state[f"{i}.num_batches_tracked"] = np.asarray(int(child.num_batches_tracked), np.int64)
            elif kind is tnn.Dropout:
                layer = Dropout(child.p)
            elif kind is tnn.ReLU:
                layer = ReLU()
            elif kind is tnn.LeakyReLU:
                layer = LeakyReLU(child.negative_slope)
            elif kind is tnn.Sigmoid:
                layer = Sigmoid()
            elif kind is tnn.Tanh:
                layer = Tanh()
            elif kind is tnn.Identity:
                layer = Identity()
            elif kind is tnn.Flatten:
                if (child.start_dim, child.end_dim) != (1, -1):
                    raise _unsupported(i, child, f"with start_dim={child.start_dim}, end_dim={child.end_dim} is "
                                                 "not supported (only the default start_dim=1, end_dim=-1, a no-op "
                                                 "on (n, features) inputs)")
                layer = Identity()
            else:
                raise _unsupported(i, child)
        except (TypeError, ValueError) as e:
            if str(e).startswith(f"layer {i} ("):
                raise
            raise ValueError(f"layer {i} ({kind.__name__}) cannot be converted: {e}") from None
        layers.append(layer)
    np_dtype = "float64" if dtype == torch.float64 else "float32"
    model = Sequential(*layers, dtype=np_dtype, in_features=in_features, rng=rng)
    model.load_state_dict(state)
    model.train(training)
    frozen = [name for name, t in module.named_parameters() if not t.requires_grad]
    if frozen:          # requires_grad=False: frozen in fastwb
        model.freeze(*frozen)
    return model


def to_torch(model):
    """The ``torch.nn.Sequential`` computing what the fastwb model computes: same
    layers (:class:`~fastwb.nn.Identity` as ``torch.nn.Identity``), dtype,
    training mode, parameters (Linear weights transposed to ``(out, in)``) and
    buffers (``num_batches_tracked`` included).  Nothing is drawn from
    PyTorch's random generator, and the result shares no memory with ``model``.
    A layer type PyTorch has no counterpart for here is a ValueError naming it."""
    torch = _torch()
    tnn = torch.nn
    if not isinstance(model, Sequential):
        raise TypeError(f"to_torch converts a fastwb.nn.Sequential, got {type(model).__name__}")
    dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    state = model.state_dict()
    modules = []
    for i, layer in enumerate(model.layers):
        kind = type(layer)
        if kind is Linear:
            # skip_init: no draw from torch's global generator for weights that are overwritten next
            m = tnn.utils.skip_init(tnn.Linear, layer.in_features_, layer.out_features_, bias=layer.bias,
                                    dtype=dtype)
        elif kind is BatchNorm1d:
            m = tnn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                                track_running_stats=layer.track_running_stats, dtype=dtype)
        elif kind is Dropout:
            m = tnn.Dropout(layer.p)
        elif kind is LeakyReLU:
            m = tnn.LeakyReLU(layer.negative_slope)
        elif kind in (ReLU, Sigmoid, Tanh, Identity):
            m = getattr(tnn, kind.__name__)()
        else:
            raise ValueError(f"layer {i} ({kind.__name__}) has no PyTorch counterpart in to_torch")
        with torch.no_grad():
            for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                v = state[f"{i}.{name}"]
                if kind is Linear and name == "weight":
                    v = v.T
                t.copy_(torch.from_numpy(np.array(v, order="C")))      # (ascontiguousarray makes 0-d 1-d)
                if isinstance(t, tnn.Parameter) and f"{i}.{name}" in model.frozen:
                    t.requires_grad_(False)
        modules.append(m)
    net = tnn.Sequential(*modules)
    net.train(model.training)
    return net


def from_torch_state(model, state):
    """A PyTorch ``state_dict`` (values tensors or NumPy arrays; Linear weights
    ``(out, in)``) in fastwb's layout for ``model``: NumPy arrays of their own,
    C-contiguous, the 2-d weights of ``model``'s Linear layers transposed to
    ``(in, out)``, integer ``num_batches_tracked`` entries as int64.

    Only converts: names that match no layer stay as they are, so
    :meth:`Sequential.load_state_dict` (which calls this for
    ``layout="torch"``) reports missing, unexpected, misshapen and
    mistyped entries.  A value that is neither a tensor nor array-like (of
    numbers) is a TypeError naming its key."""
    if not isinstance(state, Mapping):
        raise TypeError(f"a state dict is a mapping of names to tensors or arrays, got {type(state).__name__}")
    torch = sys.modules.get("torch")        # without torch imported there can be no tensor
    out = {}
    for key, value in state.items():
        if torch is not None and isinstance(value, torch.Tensor):
            try:
                v = _numpy(value)
            except (TypeError, RuntimeError) as e:
                raise TypeError(f"state dict entry {key!r}: a tensor of dtype {value.dtype} that NumPy cannot "
                                f"hold ({e})") from None
        else:
            try:
                v = np.array(value, order="C", copy=True)
            except (TypeError, ValueError) as e:
                raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor or an "
                                f"array ({e})") from None
            if v.dtype.kind not in "biuf":
                raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor or an "
                                "array of numbers")
        idx, _, name = str(key).partition(".")
        layer = model.layers[int(idx)] if idx.isdecimal() and int(idx) < len(model.layers) else None
        if isinstance(layer, Linear) and name == "weight" and v.ndim == 2:
            v = np.ascontiguousarray(v.T)
        elif name == "num_batches_tracked" and v.dtype.kind in "iu":
            v = v.astype(np.int64)
        out[key] = v
    return out
