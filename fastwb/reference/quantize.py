r"""The pure-NumPy twin of :mod:`fastwb.quantize`: dynamic int8 quantization.

Every step is written as plain NumPy, in the order and the precision of the
compiled kernels (csrc/fwb_q8.h), so the twin's outputs equal fastwb's bit for
bit (up to the sign of a zero, and except after Sigmoid and Tanh, whose
compiled versions are fastwb's own, within 2 ulp of NumPy's):

* weights, per output column (or per tensor), symmetric:
  :math:`s_w = \max(\max|W_{:,j}| / 127.5,\ 2^{-23})` in float32,
  :math:`W_q = \mathrm{clip}(\mathrm{rint}(W \cdot (1/s_w)), -128, 127)`;
* activations, per batch, over the rows without NaN or Inf: ``choose_qparams``
  (PyTorch's ChooseQuantizationParams), then
  :math:`a = \mathrm{clip}(\mathrm{rint}(\mathrm{fma}(x, 1/s_a, z)), 0, q_{max})`;
* the product in int64, :math:`y = \mathrm{f32}(a W_q - z\,\mathrm{colsum}(W_q))
  \cdot \mathrm{f32}(s_a s_w) + b` in float32, then the activation, and NaN over
  every row whose input held a NaN or an Inf.
"""

import numpy as np

from fastwb.reference.functional import sigmoid, tanh

__all__ = ["choose_qparams", "quantize_weights", "quantize_rows", "fma32", "linear", "quantize_dynamic",
           "QuantizedModel", "SMALL_SCALE", "WEIGHT_EPS"]

#: PyTorch's SMALL_SCALE_THRESHOLD: activation scales are floored here
SMALL_SCALE = np.float32(6.1e-5)
#: the floor of a weight scale (torch.finfo(torch.float32).eps, the observers' eps)
WEIGHT_EPS = np.float32(np.finfo(np.float32).eps)

_F32 = np.float32


def choose_qparams(mn, mx, qmax):
    """``(scale, zero_point)`` for activations in ``[mn, mx]`` quantized to
    ``0..qmax``: PyTorch's ``quant_utils::ChooseQuantizationParams`` (QuantUtils.h)
    with float32 ``mn``/``mx``, the scale in float64, and the scale used rounded
    to float32."""
    qmin = 0
    mn, mx = _F32(min(_F32(mn), _F32(0))), _F32(max(_F32(mx), _F32(0)))
    scale = (float(mx) - float(mn)) / (qmax - qmin)
    with np.errstate(divide="ignore", over="ignore"):
        if _F32(scale) == 0 or np.isinf(_F32(1) / _F32(scale)):
            scale = 0.1
    if scale < float(SMALL_SCALE):
        org = _F32(scale)
        scale = float(SMALL_SCALE)
        if mn == 0:
            mx = SMALL_SCALE * _F32(qmax - qmin)
        elif mx == 0:
            mn = -SMALL_SCALE * _F32(qmax - qmin)
        else:
            amp = SMALL_SCALE / org
            mn, mx = mn * amp, mx * amp
    zp_min = qmin - float(mn) / scale
    zp_max = qmax - float(mx) / scale
    err_min = abs(qmin) - abs(float(mn) / scale)     # (sic: PyTorch's error terms)
    err_max = abs(qmax) - abs(float(mx) / scale)
    z0 = zp_min if err_min < err_max else zp_max
    zp = qmin if z0 < qmin else qmax if z0 > qmax else int(np.rint(z0))
    return _F32(scale), zp


def quantize_weights(W, per_channel=True):
    """``(Wq, scale)``: W ``(in, out)`` as symmetric int8 and its float32 scale per
    output column (``per_channel``) or one for the tensor (repeated per column)."""
    W = np.asarray(W, np.float32)
    amax = np.abs(W).max(axis=0) if per_channel else np.full(W.shape[1], np.abs(W).max() if W.size else 0, _F32)
    scale = np.maximum((amax / _F32(127.5)).astype(_F32), WEIGHT_EPS)
    inv = (_F32(1) / scale).astype(_F32)
    Wq = np.clip(np.rint(W * inv), -128, 127).astype(np.int8)
    return Wq, scale


def fma32(x, inv, z):
    """``fmaf(x, inv, z)`` elementwise for float32 x and scalars: one rounding of
    the exact x * inv + z.  The product is exact in float64; the sum is made
    exact with Knuth's TwoSum and rounded to odd, after which the rounding to
    float32 is correct (53 >= 24 + 2 bits)."""
    p = np.asarray(x, np.float32).astype(np.float64) * float(np.float32(inv))
    z = float(z)
    s = p + z
    bb = s - p
    err = (p - (s - bb)) + (z - bb)
    bits = s.view(np.uint64).copy()
    inexact = err != 0
    toward_zero = inexact & ((err > 0) != (s > 0))          # s is above |t|: truncate one step
    bits[toward_zero] -= np.uint64(1)
    bits[inexact] |= np.uint64(1)
    with np.errstate(over="ignore"):
        return bits.view(np.float64).astype(np.float32)


def quantize_rows(X, scale, zp, qmax):
    """The uint8 activations of X (rows with NaN or Inf are all ``zp``)."""
    X = np.asarray(X, np.float32)
    bad = ~np.isfinite(X).all(axis=1)
    t = fma32(np.where(bad[:, None], 0, X), _F32(1) / _F32(scale), zp)
    A = np.rint(np.clip(t, 0, qmax)).astype(np.uint8)
    A[bad] = zp
    return A


def _activation(y, act, alpha):
    if act == "relu":
        return np.where((y > 0) | np.isnan(y), y, _F32(0))
    if act == "leaky_relu":
        return np.where(y > 0, y, _F32(alpha) * y)
    if act == "sigmoid":
        return sigmoid(y)
    if act == "tanh":
        return tanh(y)
    return y


def linear(X, Wq, wscale, bias, qmax, act="identity", alpha=0.01):
    """One quantized Linear on float32 X ``(n, in)``: the activations quantized
    over the batch's good rows, the exact integer product, the float32 epilogue,
    the activation, and NaN rows where X's rows held NaN or Inf."""
    X = np.asarray(X, np.float32)
    good = np.isfinite(X).all(axis=1)
    kept = X[good]
    lo, hi = (kept.min(), kept.max()) if kept.size else (_F32(0), _F32(0))
    scale, zp = choose_qparams(lo, hi, qmax)
    A = quantize_rows(X, scale, zp, qmax)
    W64 = Wq.astype(np.int64)
    acc = A.astype(np.int64) @ W64 - zp * W64.sum(axis=0)
    mult = (scale * np.asarray(wscale, _F32)).astype(_F32)
    b = np.zeros(Wq.shape[1], _F32) if bias is None else np.asarray(bias, _F32)
    y = acc.astype(_F32) * mult + b
    with np.errstate(over="ignore", invalid="ignore"):
        y = _activation(y.astype(_F32), act, alpha)
    y[~good] = np.nan
    return y.astype(_F32)


class QuantizedModel:
    """The twin of :class:`fastwb.quantize.QuantizedModel`: ``layers`` is a list of
    ``(Wq, wscale, bias, act, alpha)``."""

    def __init__(self, layers, reduce_range):
        self.layers, self.reduce_range = layers, bool(reduce_range)
        self.qmax = 127 if self.reduce_range else 255

    def logits(self, X):
        y = np.asarray(X, np.float32)
        for Wq, wscale, bias, act, alpha in self.layers:
            y = linear(y, Wq, wscale, bias, self.qmax, act, alpha)
        return y


def quantize_dynamic(model, per_channel=True, reduce_range=None):
    """The twin of :func:`fastwb.quantize.quantize_dynamic` for a network of
    Linear layers, each followed by at most one activation (BatchNorm folded
    first with :func:`fastwb.nn.deploy.eval_ops`); ``reduce_range=None`` is
    fastwb's choice for the process's kernel path."""
    from fastwb.nn.deploy import Act, Dense, eval_ops
    from fastwb.quantize import auto_reduce_range, default_path     # the same choice for None

    if reduce_range is None:
        reduce_range = auto_reduce_range(default_path())

    names = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Identity": "identity"}
    layers = []
    for op in eval_ops(model, fold_batchnorm=True):
        if isinstance(op, Dense):
            Wq, scale = quantize_weights(op.W, per_channel)
            layers.append([Wq, scale, None if op.b is None else np.asarray(op.b, _F32), "identity", 0.01])
        elif isinstance(op, Act) and layers and layers[-1][3] == "identity":
            layers[-1][3] = names[type(op.layer).__name__]
            layers[-1][4] = getattr(op.layer, "negative_slope", 0.01)
        elif not (isinstance(op, Act) and names[type(op.layer).__name__] == "identity"):
            raise ValueError(f"cannot quantize {op}")
    return QuantizedModel([tuple(la) for la in layers], bool(reduce_range))
