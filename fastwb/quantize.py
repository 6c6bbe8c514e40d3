r"""Dynamic int8 quantization of a trained network for inference.

:func:`quantize_dynamic` turns an eval-mode :class:`~fastwb.nn.Sequential`
into a :class:`QuantizedModel`: every Linear's weights become int8, and at
inference every Linear's input is quantized to uint8 per batch, multiplied in
exact integer arithmetic by fastwb's own kernels, and dequantized in the same
register tile.  The recipe is PyTorch's ``quantize_dynamic`` (FBGEMM), with
the differences stated below.

**Weights** (once), symmetric, per output column (``per_channel=True``, the
default) or one scale for the whole tensor:

.. math:: s_w = \max\!\Big(\frac{\max_k |W_{kj}|}{127.5},\ 2^{-23}\Big), \qquad
          W^q_{kj} = \mathrm{clip}\big(\mathrm{rint}(W_{kj} \cdot (1/s_w)), -128, 127\big)

in float32, rounding half to even (PyTorch's symmetric observers: the range
``-128..127`` is used whole, zero point 0).  BatchNorm layers that follow a
Linear are folded into it first (:func:`fastwb.nn.deploy.fuse`); Dropout is the
identity; each activation is fused into the Linear before it.

**Activations** (per call), asymmetric over the whole batch: the finite
minimum and maximum :math:`[m, M]` of the batch, widened to hold 0, give the
scale and zero point of PyTorch's ``ChooseQuantizationParams`` (the scale in
double, rounded to float; 0.1 for an all-zero batch; floored at 6.1e-5, the
smallest normal float16) and

.. math:: a = \mathrm{clip}\big(\mathrm{rint}(\mathrm{fma}(x, 1/s_a, z)), 0, q_{max}\big)

with one rounding of :math:`x / s_a + z`, as FBGEMM's AVX2 quantizer.
:math:`q_{max} = 255`; ``reduce_range=True`` gives PyTorch's default 7-bit
activations (:math:`q_{max} = 127`).

**Product and epilogue.** :math:`\mathrm{acc}_{ij} = \sum_k a_{ik} W^q_{kj}` is
exact in int32 (``in_features`` is at most 65536), and in the same register
tile

.. math:: y_{ij} = \mathrm{act}\big(\mathrm{f32}(\mathrm{acc}_{ij} - z \textstyle\sum_k W^q_{kj})
          \cdot \mathrm{f32}(s_a s_{w,j}) + b_j\big)

in float32 (a product, then a sum).  No int32 matrix is ever written.

**Where fastwb differs from PyTorch, and why.**

* **Activation width.** ``reduce_range=False`` gives full 8-bit activations
  (``0..255``), as ONNX Runtime uses: half the rounding error of PyTorch's
  7-bit ones (``reduce_range=True``).  PyTorch reduces the range so that
  AVX2's ``vpmaddubsw`` cannot saturate; fastwb's AVX2 kernel for 8-bit
  activations adds the byte products in ``vpmaddwd``'s exact int16 x int16 ->
  int32 lanes instead, and the VNNI kernels never saturate (``vpdpbusd``), so
  every setting is exact on every CPU.  But on AVX2 the exact 8-bit product
  costs more instructions: measured on an AVX2-only AMD EPYC, 7-bit models ran
  1.2-1.5x faster (bench/quantize.py).  So ``reduce_range=None`` (the default)
  chooses as PyTorch's engines do, by what the kernels pay: 7-bit where the
  quantizing process's kernel path is ``avx2``, 8-bit on the VNNI paths (no
  cost) and the scalar one (no cost either).  The width is stored in the model:
  once quantized, a model gives the same bits on every CPU, kernel path and
  thread count; pass ``reduce_range`` explicitly for a quantization that does
  not depend on the machine it runs on.
* Per-channel weights by default (PyTorch's default qconfig is per tensor):
  smaller logit drift for the same speed.
* **NaN and Inf.** A row of the input holding a NaN or an Inf is left out of the
  batch's minimum and maximum and gives a row of NaN at the output; the other
  rows are computed as if it were absent.  PyTorch lets one such row set the
  scale of the whole batch (NaN or garbage everywhere).  The scale of every
  other row still depends on the rest of its batch, as in PyTorch: run rows
  alone (``batch_size=1``) for batch-independent results.
* The epilogue multiplies once by the float product :math:`s_a s_{w,j}` and
  then adds the bias, like FBGEMM's vectorised path.

**Kernel paths**, chosen once at import from the CPU (``FASTWB_INT8_PATH``
overrides, a ValueError where the CPU lacks it): ``avx512vnni`` (``vpdpbusd``
on zmm), ``avxvnni`` (``vpdpbusd`` on ymm), ``avx2`` (``vpmaddubsw`` for 7-bit
activations, whose pair sums are at most 2 * 127 * 128 = 32512 and cannot
saturate; ``vpmaddwd`` over even and odd bytes for 8-bit ones) and
``scalar``.  All paths give identical bits; :attr:`QuantizedModel.path` picks
one per model.

Thread safety: inference on one quantized model from many threads at once is
safe (each call takes its own workspace).
"""

import json
import math
import os
import numpy as np

from fastwb import _io, _quant
from fastwb._runtime import default_threads, plan_threads
from fastwb._validate import ACTIVATIONS, check_int, model_input
from fastwb.nn import losses as _losses
from fastwb.nn.deploy import Act, Dense, Norm, eval_ops
from fastwb.nn.plan import WorkspacePool
from fastwb.nn.sequential import CHECKPOINT_FORMAT, Sequential

__all__ = ["quantize_dynamic", "QuantizedModel", "load", "available_paths", "default_path", "auto_reduce_range",
           "MAX_IN_FEATURES"]

#: the widest Linear input the exact int32 accumulation allows (255 * 128 * 65536 < 2^31)
MAX_IN_FEATURES = 65536
#: multiply-adds per thread below which a forward pass stays on one thread.  Measured on 2 cores of
#: the development machine, 784-256-10 (0.2M multiply-adds per row): quiet, 2 threads ran 1.1x faster
#: at batch 8-32 and 1.6x at 128; beside 2 busy processes they ran 4-13x slower at batch 8-32 (the
#: OpenMP region's start and end wait for a descheduled thread) and 1.2x faster at 128.
GRAIN_INT8 = 1 << 22
_QUANT_FORMAT = "fastwb-int8-1"
_SPEC_BYTES = 1 << 20


def available_paths():
    """The int8 kernel paths this CPU and build can run, slowest first."""
    return [name for i, name in enumerate(_quant.PATHS) if _quant.supported(i)]


def _check_path(path):
    if path not in _quant.PATHS:
        raise ValueError(f"unknown int8 kernel path {path!r}; the paths are {', '.join(_quant.PATHS)}")
    if path not in available_paths():
        raise ValueError(f"this CPU (or build) cannot run the {path!r} int8 kernels; it can run "
                         f"{', '.join(available_paths())}")
    return path


def auto_reduce_range(path):
    """What ``reduce_range=None`` means on kernel path ``path``: True (7-bit
    activations) on ``avx2``, where exact 8-bit products cost 1.2-1.5x more
    time, False (8-bit) on the paths where both widths run alike."""
    return _check_path(path) == "avx2"


def default_path():
    """The path new quantized models use: ``FASTWB_INT8_PATH`` when set, else the
    fastest this CPU supports."""
    env = os.environ.get("FASTWB_INT8_PATH", "").strip()
    return _check_path(env) if env else available_paths()[-1]


class QuantizedModel:
    """An int8 inference network made by :func:`quantize_dynamic` (or :func:`load`).

    ``logits``, ``predict_proba``, ``predict`` and ``evaluate`` behave as those of
    :class:`~fastwb.nn.Sequential` (float32 inputs); ``save`` writes a checkpoint
    with the int8 weights; ``nbytes`` counts the arrays it holds.  It cannot be
    trained: ``fit`` is a ValueError.

    Attributes: ``per_channel``, ``reduce_range``, ``in_features``,
    ``out_features``, ``loss`` (the source model's), ``path`` (the kernel path;
    assignable, to any of :func:`available_paths`).
    """

    dtype = np.dtype(np.float32)

    def __init__(self, weights, scales, biases, activations, per_channel, reduce_range, loss="cross_entropy"):
        self.per_channel, self.reduce_range = bool(per_channel), bool(reduce_range)
        self.loss = _losses.get(loss) if isinstance(loss, str) else loss
        self.activations = [(str(a), float(alpha)) for a, alpha in activations]
        self._layers = []
        for W, s, b, (act, alpha) in zip(weights, scales, biases, self.activations):
            K, N = W.shape
            Bp, colsum = _quant.pack_weights(np.ascontiguousarray(W, np.int8))
            width = colsum.shape[0]
            wscale, bias = np.zeros(width, np.float32), np.zeros(width, np.float32)
            wscale[:N] = s
            if b is not None:
                bias[:N] = b
            self._layers.append({"Bp": Bp, "colsum": colsum, "wscale": wscale, "bias": bias, "K": K, "N": N,
                                 "act": ACTIVATIONS[act], "alpha": alpha, "has_bias": b is not None})
        self._net = _quant.QNet(self._layers, 127 if self.reduce_range else 255)
        self.in_features, self.out_features = self._net.in_features, self._net.out_features
        self.path = default_path()
        self._pool = WorkspacePool(make=lambda net, n: net.workspace(n, default_threads()))
        self._macs_per_row = sum(d["K"] * d["N"] for d in self._layers)

    # -- what it holds ------------------------------------------------------------------
    @property
    def path(self):
        """The kernel path of this model's forward passes (see the module docstring)."""
        return self._path

    @path.setter
    def path(self, name):
        self._path = _check_path(name)
        self._path_index = _quant.PATHS.index(name)

    def __len__(self):
        return len(self._layers)

    def weight(self, i):
        """Layer ``i``'s int8 weights, ``(in, out)`` (unpacked from the kernel layout)."""
        d = self._layers[i]
        K, N, K4 = d["K"], d["N"], (d["K"] + 3) // 4
        panels = d["Bp"].reshape(-1, K4, _quant.PANEL, 4)          # [panel][k/4][column][k%4]
        return np.ascontiguousarray(panels.transpose(1, 3, 0, 2).reshape(K4 * 4, -1)[:K, :N])

    def scale(self, i):
        """Layer ``i``'s weight scales, float32 ``(out,)`` (all equal per tensor)."""
        return self._layers[i]["wscale"][:self._layers[i]["N"]].copy()

    def bias(self, i):
        """Layer ``i``'s float32 bias, or None."""
        d = self._layers[i]
        return d["bias"][:d["N"]].copy() if d["has_bias"] else None

    @property
    def nbytes(self):
        """Bytes of the arrays the model holds: packed int8 weights (with their
        padding to 16 columns and 4 rows), int32 column sums, float32 scales and
        biases."""
        return sum(d[k].nbytes for d in self._layers for k in ("Bp", "colsum", "wscale", "bias"))

    def __repr__(self):
        sizes = [self._layers[0]["K"]] + [d["N"] for d in self._layers]
        acts = ",".join(a for a, _ in self.activations)
        return (f"QuantizedModel({'-'.join(map(str, sizes))}, activations {acts}, "
                f"{'per-channel' if self.per_channel else 'per-tensor'} int8 weights, "
                f"{'7' if self.reduce_range else '8'}-bit activations, path {self.path!r}, {self.nbytes} bytes)")

    # -- inference ----------------------------------------------------------------------
    def _check_x(self, X, name="X"):
        return model_input(X, self.dtype, self.in_features, name)

    def logits(self, X, batch_size=1024):
        """The network's output for float32 X ``(n, in_features)``, in chunks of
        ``batch_size`` rows (each chunk is one batch for the activation scales)."""
        if type(batch_size) is not int or batch_size < 1:
            batch_size = check_int("batch_size", batch_size, 1)
        X = self._check_x(X)
        n = X.shape[0]
        out = np.empty((n, self.out_features), np.float32)
        if 0 < n <= batch_size:             # one chunk: the latency path
            ws = self._pool.take(self._net, n)
            try:
                self._net.forward(X, out, ws, self._path_index, plan_threads(n * self._macs_per_row, GRAIN_INT8))
            finally:
                self._pool.give(ws)
            return out
        for start, stop, ws in self._pool.chunks(self._net, n, batch_size):
            n_threads = plan_threads((stop - start) * self._macs_per_row, GRAIN_INT8)
            self._net.forward(X[start:stop], out[start:stop], ws, self._path_index, n_threads)
        return out

    def predict_proba(self, X, batch_size=1024):
        """Softmax of the output (cross_entropy), sigmoid of it (bce_with_logits);
        the output itself for regression."""
        return self.loss.probabilities(self.logits(X, batch_size))

    def predict(self, X, batch_size=1024):
        """Predicted classes (cross_entropy), 0/1 labels (bce_with_logits) or values (mse)."""
        return self.loss.predictions(self.logits(X, batch_size))

    def evaluate(self, X, y, batch_size=1024):
        """``(mean_loss, metric)``: accuracy (cross_entropy), R^2 (mse) or binary
        accuracy (bce_with_logits), as :meth:`fastwb.nn.Sequential.evaluate`."""
        X = self._check_x(X)
        if X.shape[0] == 0:
            raise ValueError("X has no rows: nothing to evaluate")
        y = self.loss.targets(y, X.shape[0], self.out_features, np.float32)
        loss, scores = self.loss.evaluate(self.logits(X, batch_size), y)
        return loss, self.loss.headline(scores)

    def fit(self, *args, **kwargs):
        """A quantized model is for inference only: always a ValueError."""
        raise ValueError("a QuantizedModel cannot be trained: fit the float model, then quantize it again")

    # -- files --------------------------------------------------------------------------
    def spec(self):
        """The model's specification (JSON-serialisable)."""
        return {"per_channel": self.per_channel, "reduce_range": self.reduce_range, "loss": self.loss.name,
                "layers": [{"in_features": d["K"], "out_features": d["N"], "activation": a, "alpha": alpha,
                            "bias": d["has_bias"]} for d, (a, alpha) in zip(self._layers, self.activations)]}

    def save(self, path):
        """Write the model to exactly ``path``, atomically: the specification and,
        per layer, the int8 weights ``(in, out)``, the float32 scales and bias
        (the packed layout is rebuilt on :func:`load`, so files do not depend on
        the CPU)."""
        fields = {"format": np.array(CHECKPOINT_FORMAT), "quantized": np.array(_QUANT_FORMAT),
                  "spec": np.array(json.dumps(self.spec()))}
        for i in range(len(self)):
            fields[f"{i}.weight"], fields[f"{i}.scale"] = self.weight(i), self.scale(i)
            if self._layers[i]["has_bias"]:
                fields[f"{i}.bias"] = self.bias(i)
        with _io.atomic_open(path, "wb") as fh:
            np.savez(fh, **fields)


def load(path):
    """Read a model written by :meth:`QuantizedModel.save`.  Every declared size
    is checked against the file before anything is allocated; a damaged or
    foreign file is a ValueError naming it."""
    with _io.NpzReader(path, "fastwb quantized model") as npz:
        if "quantized" not in npz.members:
            raise ValueError(f"{npz.name}: not a quantized fastwb model (read a float model with fastwb.nn.load)")
        fmt = str(npz.read("quantized", max_bytes=1024))
        if fmt != _QUANT_FORMAT:
            raise ValueError(f"{npz.name}: quantized format {fmt!r} is not {_QUANT_FORMAT!r}")
        try:
            spec = json.loads(str(npz.read("spec", max_bytes=_SPEC_BYTES)))
            layers = spec["layers"]
            if not isinstance(layers, list) or not layers:
                raise ValueError("no layers")
            shapes = [(check_int("in_features", la["in_features"], 1), check_int("out_features", la["out_features"], 1))
                      for la in layers]
            acts = [(la["activation"], float(la["alpha"])) for la in layers]
            if any(a not in ACTIVATIONS or not math.isfinite(alpha) for a, alpha in acts):
                raise ValueError(f"unknown activation in {acts}")
            if any(K > MAX_IN_FEATURES for K, _ in shapes) or any(
                    shapes[i][1] != shapes[i + 1][0] for i in range(len(shapes) - 1)):
                raise ValueError(f"inconsistent layer sizes {shapes}")
            loss = _losses.get(spec.get("loss", "cross_entropy"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{npz.name}: bad quantized model specification ({e})") from None
        weights, scales, biases = [], [], []
        for i, ((K, N), la) in enumerate(zip(shapes, layers)):
            want = [(f"{i}.weight", (K, N), np.int8), (f"{i}.scale", (N,), np.float32)]
            if la.get("bias"):
                want.append((f"{i}.bias", (N,), np.float32))
            for key, shape, dt in want:
                m = npz.members.get(key)
                if m is None or m.shape != shape or m.dtype != dt:
                    raise ValueError(f"{npz.name}: {key} is {m.describe() if m else 'missing'}, the layers need "
                                     f"{np.dtype(dt)}{shape}")
            weights.append(npz.read(f"{i}.weight"))
            s = npz.read(f"{i}.scale")
            if not (np.isfinite(s).all() and (s > 0).all()):
                raise ValueError(f"{npz.name}: {i}.scale holds a scale that is not finite and > 0")
            scales.append(s)
            biases.append(npz.read(f"{i}.bias") if la.get("bias") else None)
    return QuantizedModel(weights, scales, biases, acts, spec.get("per_channel", True),
                          spec.get("reduce_range", False), loss)


def _weight_scales(W, per_channel):
    """Symmetric int8 weights and their scales (see the module docstring)."""
    W = np.asarray(W, np.float32)
    amax = np.abs(W).max(axis=0) if per_channel else np.full(W.shape[1], np.abs(W).max(), np.float32)
    scale = np.maximum(amax / np.float32(127.5), np.float32(np.finfo(np.float32).eps)).astype(np.float32)
    Wq = np.clip(np.rint(W * (np.float32(1) / scale)), -128, 127).astype(np.int8)
    return Wq, scale


def quantize_dynamic(model, per_channel=True, reduce_range=None):
    """An int8 :class:`QuantizedModel` computing what the eval-mode ``model``
    computes (see the module docstring for the recipe).

    ``model``: a :class:`~fastwb.nn.Sequential` (or :class:`fastwb.MLP`) in eval
    mode, float32 or float64, of Linear layers, each optionally followed by one
    activation, with BatchNorm1d layers right after a Linear (folded) and
    Dropout (ignored) anywhere.  ``per_channel``: one weight scale per output
    column (default) or one per tensor.  ``reduce_range``: False for 8-bit
    activations, True for PyTorch's 7-bit ones, None (default) for
    :func:`auto_reduce_range` of the kernel path.

    ValueError for a model in training mode, a float16 model, a layer that is
    not supported (a BatchNorm1d not after a Linear, an activation not after a
    Linear, two activations in a row), a Linear wider than
    :data:`MAX_IN_FEATURES` inputs, or weights holding NaN or Inf.  ``model`` is
    not changed."""
    if not isinstance(model, Sequential):
        raise TypeError(f"quantize_dynamic takes a fastwb.nn.Sequential (or fastwb.MLP), got {type(model).__name__}")
    if model.dtype not in (np.float32, np.float64):
        raise ValueError(f"cannot quantize a {model.dtype} model: fastwb quantizes float32 and float64 models")
    if model.training:
        raise ValueError("quantize_dynamic makes an inference model from the eval-mode network, and the model is "
                         "in training mode: call model.eval() first")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
    if reduce_range is not None and not isinstance(reduce_range, bool):
        raise TypeError(f"reduce_range must be None, True or False, got {reduce_range!r}")
    weights, scales, biases, acts = [], [], [], []
    for op in eval_ops(model, fold_batchnorm=True):
        where = f"layer {op.index} ({op.layer!r})"
        if isinstance(op, Dense):
            if op.W.shape[0] > MAX_IN_FEATURES:
                raise ValueError(f"{where} has {op.W.shape[0]} inputs; int8 products stay exact up to "
                                 f"{MAX_IN_FEATURES}")
            if not np.isfinite(op.W).all() or (op.b is not None and not np.isfinite(op.b).all()):
                raise ValueError(f"{where} holds NaN or Inf weights: they cannot be quantized")
            Wq, s = _weight_scales(op.W, per_channel)
            weights.append(Wq)
            scales.append(s)
            biases.append(None if op.b is None else np.asarray(op.b, np.float32))
            acts.append(("identity", 0.01))
        elif isinstance(op, Act) and op.layer.activation == "identity":
            continue
        elif isinstance(op, Act) and acts and acts[-1][0] == "identity":
            acts[-1] = (op.layer.activation, float(getattr(op.layer, "negative_slope", 0.01)))
        elif isinstance(op, Act):
            raise ValueError(f"{where} does not follow a Linear: fastwb quantizes Linear layers, each with at most "
                             "one activation after it")
        elif isinstance(op, Norm):
            raise ValueError(f"{where} does not follow a Linear, so it cannot be folded into one and quantized")
        else:
            raise ValueError(f"{where} cannot be quantized")
    if not weights:
        raise ValueError("the model has no Linear layer to quantize")
    if reduce_range is None:
        reduce_range = auto_reduce_range(default_path())
    return QuantizedModel(weights, scales, biases, acts, per_channel, reduce_range, model.loss)
