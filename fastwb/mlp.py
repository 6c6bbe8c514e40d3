"""``MLP``: the multi-layer perceptron preset of :class:`fastwb.nn.Sequential`.

    model = fastwb.MLP([784, 256, 10], activation="relu", dtype=np.float32, rng=0)
    history = model.fit(X_train, y_train, epochs=5, batch_size=128,
                        validation_data=(X_test, y_test))
    accuracy = model.evaluate(X_test, y_test)[1]

``MLP(sizes, activation)`` is ``Sequential(Linear(sizes[0], sizes[1]),
activation, ..., Linear(sizes[-2], sizes[-1]))`` trained with softmax
cross-entropy: every method (``fit``, ``train_step``, ``logits``, ``prune``,
``state_dict``, ...) is the engine's (:mod:`fastwb.nn`), and a step is one
compiled call (:mod:`fastwb.nn.plan`).  What the preset adds: the
constructor by layer sizes, ``W``/``b``/``dW``/``db`` lists of views into
the flat buffers, :meth:`MLP.gradients` returning them, and its own
checkpoint format ``fastwb-mlp-1`` (read by every fastwb version that has
MLP).
"""

import numpy as np

from fastwb import _io
from fastwb._validate import ACTIVATIONS, FLOAT_DTYPES, check_alpha, check_int
from fastwb.nn import sequential as _sequential
from fastwb.nn.layers import Linear, activation_layer
from fastwb.nn.plan import MODELS

__all__ = ["MLP"]

INITIALIZERS = ("he", "glorot", "lecun", "uniform")
CHECKPOINT_FORMAT = "fastwb-mlp-1"


class MLP(_sequential.Sequential):
    """A fully connected network ``x -> act(x W0 + b0) -> ... -> logits`` trained
    with softmax cross-entropy: a :class:`fastwb.nn.Sequential` of ``Linear``
    and activation layers.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_inputs, hidden..., n_classes]``; at least an input and an output size.
    activation : str or sequence of str
        Activation of the hidden layers (one name for all, or one per hidden
        layer): identity, relu, leaky_relu, sigmoid, tanh.  The output layer
        is linear: its logits go through softmax in the loss.
    init : {"he", "glorot", "lecun", "uniform"}
        Weight initialiser (biases start at 0): He normal (for relu),
        Glorot uniform, LeCun normal, or U(-0.1, 0.1).
    dtype : float32 or float64
    rng : numpy Generator, int seed, or None
    alpha : negative slope of leaky_relu

    ``W[l]`` (shape ``(in, out)``) and ``b[l]`` are views into ``params``;
    ``dW[l]`` and ``db[l]`` into ``grads``.  Thread safety as
    :class:`~fastwb.nn.Sequential`: inference from any number of threads at
    once; one training call at a time (a second raises ``RuntimeError``).
    """

    def __init__(self, layer_sizes, activation="relu", init="he", dtype=np.float32, rng=None, alpha=0.01):
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        sizes, acts, alpha, layers = _layers(layer_sizes, activation, init, alpha)
        self.layer_sizes = sizes
        self.activations = acts + ["identity"]
        self.codes = [ACTIVATIONS[a] for a in self.activations]
        self.alpha = alpha
        self.init = init
        super().__init__(*layers, dtype=dtype, rng=rng)

    def __setstate__(self, state):
        if "layers" in state:
            return super().__setstate__(state)
        # a pickle of the MLP before it became a preset: its layout fields, flat buffer and optimizer
        fresh = MLP(state["layer_sizes"], state["activations"][:-1], state.get("init", "he"), state["dtype"],
                    rng=0, alpha=state.get("alpha", 0.01))
        self.__dict__.update(fresh.__dict__)
        self.params[...] = state["params"]
        self.masks = state.get("masks")
        old = state.get("optimizer")
        if old is not None:
            self.optimizer = type(old)([self.params])
            self.optimizer.load_state_dict(old.state_dict())
        MODELS.add(self)

    @property
    def shapes(self):
        """The parameter shapes in buffer order: ``(in, out), (out,)`` per layer."""
        return [s for W in self.W for s in (W.shape, (W.shape[1],))]

    @property
    def n_layers(self):
        """The number of Linear layers."""
        return len(self.layer_sizes) - 1

    def compile(self, optimizer="adam", loss=None, **hyper):
        """Choose the optimizer (as :meth:`fastwb.nn.Sequential.compile`); the
        loss of an MLP is always ``"cross_entropy"``."""
        if loss not in (None, "cross_entropy"):
            raise ValueError(f"an MLP trains with softmax cross-entropy; for loss {loss!r} build a "
                             "fastwb.nn.Sequential")
        return super().compile(optimizer, **hyper)

    def gradients(self, X, y):
        """``(mean loss, dW, dB)`` of a batch, without updating anything: ``dW``
        and ``db`` are the lists of views into ``grads``, overwritten by the next
        training call (which, like this one, must not run concurrently)."""
        return super().gradients(X, y), self.dW, self.db

    def replace(self, index, layer, rng=None):
        """An MLP's layers follow from its ``layer_sizes``: build a
        :class:`fastwb.nn.Sequential` of its layers to replace one (TypeError)."""
        raise TypeError("an MLP's layers follow from its layer_sizes and cannot be replaced; for a new head, "
                        "make a Sequential of the same layers: m = nn.Sequential(*copy.deepcopy(mlp.layers)); "
                        "m.load_state_dict(mlp.state_dict()); m[-1] = nn.Linear(...)")

    # -- the preset in checkpoints ----------------------------------------------------------
    def spec(self):
        spec = super().spec()
        spec["preset"] = {"name": "MLP", "layer_sizes": self.layer_sizes, "activation": self.activations[:-1],
                          "init": self.init, "alpha": self.alpha}
        return spec

    @staticmethod
    def _preset_args(preset):
        return {k: preset[k] for k in ("layer_sizes", "activation", "init", "alpha") if k in preset}

    @classmethod
    def preset_layers(cls, preset):
        """The layers a checkpoint's ``spec["preset"]`` describes, built without
        allocating any parameter (so that a loader can compare them with the
        checkpoint's checked layers first)."""
        return _layers(**cls._preset_args(preset))[3]

    @classmethod
    def from_preset(cls, preset, dtype):
        """The MLP a checkpoint's ``spec["preset"]`` describes (weights to be loaded)."""
        return cls(dtype=dtype, rng=0, **cls._preset_args(preset))

    def _blank(self):
        return MLP(self.layer_sizes, self.activations[:-1], self.init, self.dtype, rng=0, alpha=self.alpha)

    def save(self, path, with_optimizer=False):
        """Write the model to exactly ``path``, atomically (see :func:`fastwb._io.atomic_open`).

        By default in the MLP's own format ``fastwb-mlp-1`` (an ``.npz``
        archive of the parameter buffer and its layout), which every fastwb
        version with ``MLP`` reads.  ``with_optimizer=True`` writes a v2
        checkpoint instead (:meth:`fastwb.nn.Sequential.save`: optimizer
        state, step and epoch counts, so that ``fit`` resumes bit for bit);
        :meth:`load` and :func:`fastwb.nn.load` read both as an MLP.  ``path``
        may also be an open binary file object, written in place (not atomic).
        """
        if with_optimizer:
            return super().save(path, with_optimizer=True)
        fields = dict(format=np.array(CHECKPOINT_FORMAT), layer_sizes=np.array(self.layer_sizes, np.int64),
                      activations=np.array(self.activations), alpha=np.array(self.alpha),
                      dtype=np.array(self.dtype.name), params=self.params)
        if hasattr(path, "write"):
            np.savez(path, **fields)
            return
        with _io.atomic_open(path, "wb") as fh:
            np.savez(fh, **fields)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save` (a path or a binary file object).

        Nothing is allocated before the file has been shown to hold it:
        :class:`fastwb._io.NpzReader` checks every member's declared shape and
        dtype against the zip directory and the file's real size; the small
        layout fields are read with a bound of 1 MiB each and checked (layer
        sizes: a 1-D integer array of at least two sizes >= 1; one activation
        per layer, the last "identity"; dtype float32 or float64; a scalar
        alpha); the parameter count they imply must be exactly the declared
        shape of ``params``; only then is the model built and ``params`` read.
        So a small file claiming a huge model costs nothing.  A missing file
        is a ``FileNotFoundError``; anything else wrong (a folder, a ``.npy``,
        a damaged, truncated, hostile or foreign file) is a ``ValueError``
        naming the file and the inconsistency.  A v2 checkpoint of an MLP
        (``save(with_optimizer=True)``) is read by :func:`fastwb.nn.load`.
        """
        with _io.NpzReader(path, "fastwb checkpoint") as npz:
            if "spec" in npz.members and "layer_sizes" not in npz.members:
                v2 = True
            else:
                v2 = False
                model = _read_v1(npz, cls)
        if v2:
            if hasattr(path, "seek"):
                path.seek(0)
            model = _sequential.load(path)
            if not isinstance(model, cls):
                raise ValueError(f"{getattr(path, 'name', path)}: a checkpoint of a Sequential that is not an MLP; "
                                 "read it with fastwb.nn.load")
        return model

    def __repr__(self):
        layers = " -> ".join(str(s) for s in self.layer_sizes)
        return f"MLP({layers}, activations={self.activations[:-1]}, dtype={self.dtype.name}, params={self.n_params})"


_sequential.PRESETS["MLP"] = MLP


def _layers(layer_sizes, activation="relu", init="he", alpha=0.01):
    """Checked arguments of an MLP and its layers: ``(sizes, hidden activations,
    alpha, layers)``; nothing is allocated."""
    if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of integers, got {type(layer_sizes).__name__}")
    sizes = [check_int(f"layer_sizes[{i}]", s, 1) for i, s in enumerate(layer_sizes)]
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs an input and an output size, got {list(layer_sizes)}")
    hidden = len(sizes) - 2
    if isinstance(activation, str):
        acts = [activation] * hidden
    elif hasattr(activation, "__iter__"):
        acts = list(activation)
    else:
        raise TypeError(f"activation must be a name or a sequence of names, got {type(activation).__name__}")
    if len(acts) != hidden:
        raise ValueError(f"{hidden} hidden layers need {hidden} activations, got {len(acts)}")
    for a in acts:
        if not isinstance(a, str) or a not in ACTIVATIONS:
            raise ValueError(f"unknown activation {a!r}; valid names are {', '.join(ACTIVATIONS)}")
    if init not in INITIALIZERS:
        raise ValueError(f"unknown init {init!r}; valid names are {', '.join(INITIALIZERS)}")
    alpha = check_alpha(alpha)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(n_in, n_out, init=init))
        if i < hidden:
            layers.append(activation_layer(acts[i], alpha))
    return sizes, acts, alpha, layers

_CHECKPOINT_FIELDS = frozenset({"format", "layer_sizes", "activations", "alpha", "dtype", "params"})
_CHECKPOINT_FIELD_BYTES = 1 << 20     # bound on each layout field of a checkpoint


def _read_v1(npz, cls):
    """The MLP of an open ``fastwb-mlp-1`` checkpoint (see :meth:`MLP.load`)."""
    missing = _CHECKPOINT_FIELDS - set(npz.members)
    if missing:
        raise ValueError(f"{npz.name}: not a fastwb checkpoint (missing {', '.join(sorted(missing))})")
    small = {k: npz.read(k, max_bytes=_CHECKPOINT_FIELD_BYTES) for k in sorted(_CHECKPOINT_FIELDS - {"params"})}
    sizes, activations, dtype, alpha = _checkpoint_layout(npz.name, small)
    n_params = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    params = npz.members["params"]
    if params.shape != (n_params,) or params.dtype != dtype:
        raise ValueError(f"{npz.name}: parameters are {params.describe()}, the layout {sizes} needs "
                         f"{dtype}({n_params},)")
    try:
        model = cls(sizes, activations[:-1], dtype=dtype, alpha=alpha, rng=0)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{npz.name}: inconsistent checkpoint layout ({e})") from None
    model.params[...] = npz.read("params")
    return model


def _checkpoint_layout(name, fields):
    """Check a checkpoint's layout fields; ``(sizes, activations, dtype, alpha)``
    as Python objects, or a ValueError naming the file ``name``."""
    def bad(message):
        return ValueError(f"{name}: inconsistent checkpoint layout ({message})")

    fmt = fields["format"]
    if fmt.ndim != 0 or fmt.dtype.kind != "U" or str(fmt) != CHECKPOINT_FORMAT:
        raise ValueError(f"{name}: checkpoint format {fmt!s} is not {CHECKPOINT_FORMAT}")
    sizes = fields["layer_sizes"]
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or len(sizes) < 2:
        raise bad(f"layer_sizes must be a 1-D integer array of at least 2 sizes, got {sizes.dtype}{sizes.shape}")
    sizes = sizes.tolist()
    if min(sizes) < 1:
        raise bad(f"layer_sizes must all be >= 1, got {sizes}")
    acts = fields["activations"]
    if acts.ndim != 1 or acts.dtype.kind != "U" or len(acts) != len(sizes) - 1 or acts[-1] != "identity":
        raise bad(f"activations must be {len(sizes) - 1} names ending with 'identity', got {acts.dtype}{acts.shape}")
    dtype = fields["dtype"]
    if dtype.ndim != 0 or dtype.dtype.kind != "U" or str(dtype) not in ("float32", "float64"):
        raise bad(f"dtype must be 'float32' or 'float64', got {dtype!s}")
    alpha = fields["alpha"]
    if alpha.ndim != 0 or alpha.dtype.kind not in "iuf":
        raise bad(f"alpha must be a real scalar, got {alpha.dtype}{alpha.shape}")
    return sizes, acts.tolist(), np.dtype(str(dtype)), float(alpha)
