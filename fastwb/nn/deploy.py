r"""Deployment of a :class:`~fastwb.nn.Sequential`: BatchNorm folding and ONNX export.

Both start from the network's *eval-mode* computation (:func:`eval_ops`):
``Dropout`` is the identity, and every ``BatchNorm1d`` normalises with its
running statistics, so that it is an affine map per feature,

.. math:: \mathrm{BN}(z) = \gamma \frac{z - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta
          = s \odot z + (\beta - s \odot \mu), \qquad
          s = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}

(:math:`\mu`, :math:`\sigma^2` the running mean and variance; :math:`\gamma = 1`,
:math:`\beta = 0` without ``affine``).  Right after a ``Linear``
:math:`z = x W + b` (``W`` stored ``(in, out)``) the two maps compose into one
``Linear``:

.. math:: \mathrm{BN}(x W + b) = x W' + b', \qquad
          W'_{jk} = W_{jk} s_k, \qquad b'_k = (b_k - \mu_k) s_k + \beta_k

with :math:`b = 0` for a ``Linear`` without bias.  :func:`fuse` returns that
smaller model, :func:`export_onnx` writes either it or the unfolded network as
ONNX (:func:`onnx_model` builds the graph in memory, :func:`onnx_bytes`
serialises it).  A ``BatchNorm1d`` with ``track_running_stats=False`` normalises
every batch by that batch's own statistics even in eval mode: it is no fixed
map, cannot be folded or exported, and is a ValueError.

Everything here reads the model and never changes it, so it is safe while
other threads run inference on the same model.
"""

import copy as _copy
import os
from typing import NamedTuple, Optional

import numpy as np

from fastwb._validate import check_int
from fastwb.nn.layers import BatchNorm1d, Dropout, Identity, LeakyReLU, Linear, ReLU, Sigmoid, Tanh, _Activation

__all__ = ["fuse", "eval_ops", "onnx_model", "onnx_bytes", "export_onnx", "MIN_OPSET", "ONNX_MISSING"]

#: the lowest ONNX opset written (BatchNormalization-15, LeakyRelu-16, Softmax-13 on the last axis)
MIN_OPSET = 17
#: the message of the ImportError raised where the ``onnx`` package is missing
ONNX_MISSING = "ONNX export needs the onnx package: pip install onnx (or pip install \"fastwb[onnx]\")"


# -- the eval-mode computation ----------------------------------------------------------------

class Dense(NamedTuple):
    """``x @ W + b`` of the Linear at ``index`` (``b`` None: no bias); ``bn``: the
    position of the BatchNorm1d folded into it, or None."""
    index: int
    layer: Linear
    W: np.ndarray
    b: Optional[np.ndarray]
    bn: Optional[int] = None


class Norm(NamedTuple):
    """The BatchNorm1d at ``index`` on its running statistics (``gamma``/``beta``
    None without ``affine``)."""
    index: int
    layer: BatchNorm1d
    mean: np.ndarray
    var: np.ndarray
    gamma: Optional[np.ndarray]
    beta: Optional[np.ndarray]


class Act(NamedTuple):
    """The activation layer at ``index`` (ReLU, LeakyReLU, Sigmoid, Tanh or Identity)."""
    index: int
    layer: _Activation


def _running_stats_only(model):
    for i, layer in enumerate(model.layers):
        if isinstance(layer, BatchNorm1d) and not layer.track_running_stats:
            raise ValueError(f"layer {i} ({layer!r}) keeps no running statistics (track_running_stats=False): it "
                             "normalises every batch by that batch's own statistics, even in eval mode, which cannot "
                             "be folded into a fixed network or exported")


def _fold(dense, norm, dtype):
    """The Dense op of ``norm`` applied after ``dense``, computed in float64 and
    rounded once to ``dtype`` (see the module docstring)."""
    layer = norm.layer
    s = np.ones(layer.num_features) if norm.gamma is None else norm.gamma.astype(np.float64)
    s = s / np.sqrt(norm.var.astype(np.float64) + layer.eps)
    beta = 0.0 if norm.beta is None else norm.beta.astype(np.float64)
    b = 0.0 if dense.b is None else dense.b.astype(np.float64)
    W = (dense.W.astype(np.float64) * s).astype(dtype)
    b = ((b - norm.mean.astype(np.float64)) * s + beta).astype(dtype)
    return Dense(dense.index, dense.layer, W, b, norm.index)


def eval_ops(model, fold_batchnorm=True):
    """The eval-mode computation of ``model`` as a list of :class:`Dense`,
    :class:`Norm` and :class:`Act` ops, in order, whatever ``model.training``
    says: Dropout layers are left out, and with ``fold_batchnorm`` every
    BatchNorm1d right after a Linear (Dropouts between them do nothing in eval
    mode) is folded into it.  The arrays are copies, in the model's dtype.
    ValueError for a BatchNorm1d without running statistics."""
    _running_stats_only(model)
    sd = model.state_dict()
    ops = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout):
            continue
        if isinstance(layer, Linear):
            ops.append(Dense(i, layer, sd[f"{i}.weight"], sd.get(f"{i}.bias")))
        elif isinstance(layer, BatchNorm1d):
            norm = Norm(i, layer, sd[f"{i}.running_mean"], sd[f"{i}.running_var"], sd.get(f"{i}.weight"),
                        sd.get(f"{i}.bias"))
            if fold_batchnorm and ops and isinstance(ops[-1], Dense) and ops[-1].bn is None:
                ops[-1] = _fold(ops[-1], norm, model.dtype)
            else:
                ops.append(norm)
        elif isinstance(layer, _Activation):
            ops.append(Act(i, layer))
        else:
            raise TypeError(f"layer {i} ({layer!r}) is not a layer fastwb.nn.deploy knows")
    return ops


# -- folding ----------------------------------------------------------------------------------

def fuse(model):
    r"""A new inference model computing what ``model`` computes in eval mode, with
    every BatchNorm1d that follows a Linear folded into that Linear.

    For a Linear :math:`z = x W + b` (``W`` of shape ``(in, out)``; :math:`b = 0`
    without bias) followed by a BatchNorm1d with running mean :math:`\mu`,
    running variance :math:`\sigma^2`, ``eps`` :math:`\epsilon`, weight
    :math:`\gamma` and bias :math:`\beta` (1 and 0 without ``affine``):

    .. math::
        s = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
        W'_{jk} = W_{jk}\, s_k \ \text{(each output column scaled)}, \qquad
        b' = (b - \mu) \odot s + \beta

    and :math:`\mathrm{BN}(x W + b) = x W' + b'` exactly; the fold is computed in
    float64 and rounded once to the model's dtype, so the fused model's outputs
    equal ``model.logits`` up to the rounding of the changed order of operations
    (about 1e-6 relative in float32, 1e-15 in float64).  The folded Linear always
    has a bias.  Dropout layers are left out (the identity in eval mode, so a
    Linear -> Dropout -> BatchNorm1d folds too); a BatchNorm1d that follows
    anything but a Linear stays, on its running statistics; every other layer
    is copied.  Pruned (zero) weights stay zero.

    The result is a new :class:`~fastwb.nn.Sequential` in eval mode, with the
    model's dtype, loss, seed, step count and epochs done, and no optimizer.
    ``model`` itself is not changed.

    ValueError when ``model`` is in training mode (call ``model.eval()`` first:
    the fused model cannot reproduce training-mode outputs) or has a
    BatchNorm1d with ``track_running_stats=False`` (it normalises by batch
    statistics, which cannot be folded)."""
    from fastwb.nn.sequential import Sequential

    if model.training:
        raise ValueError("fuse() makes an inference model from the eval-mode network, and the model is in training "
                         "mode: call model.eval() first")
    ops = eval_ops(model, fold_batchnorm=True)
    layers, state = [], {}
    sd = model.state_dict()
    for k, op in enumerate(ops):
        if isinstance(op, Dense):
            layers.append(Linear(op.layer.in_features_, op.layer.out_features_, bias=op.b is not None,
                                 init=op.layer.init))
            state[f"{k}.weight"] = op.W
            if op.b is not None:
                state[f"{k}.bias"] = op.b
        else:
            layers.append(_copy.deepcopy(op.layer))
            prefix = f"{op.index}."
            state.update({f"{k}.{name[len(prefix):]}": v for name, v in sd.items() if name.startswith(prefix)})
    if not layers:                      # only Dropouts: the identity
        layers.append(Identity())
    fused = Sequential(*layers, dtype=model.dtype, in_features=model.in_features, rng=0)
    fused.load_state_dict(state)
    fused.loss, fused.seed = model.loss, model.seed
    fused.step_count, fused.epochs_done = model.step_count, model.epochs_done
    return fused.eval()


# -- ONNX ---------------------------------------------------------------------------------------

def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError(ONNX_MISSING) from None
    return onnx


def _check_name(what, name):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    return name


def _check_flag(what, flag):
    if not isinstance(flag, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {flag!r}")
    return bool(flag)


def onnx_model(model, opset=MIN_OPSET, softmax=False, fold_batchnorm=True, input_name="x", output_name="logits"):
    """The eval-mode network of ``model`` as a checked ``onnx.ModelProto`` (see
    :func:`export_onnx` for the graph and the arguments)."""
    onnx = _import_onnx()
    from onnx import helper, numpy_helper

    from fastwb._version import __version__

    opset = check_int("opset", opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be between {MIN_OPSET} and {newest} (the newest this onnx "
                         f"{onnx.__version__} knows), got {opset}")
    softmax = _check_flag("softmax", softmax)
    fold_batchnorm = _check_flag("fold_batchnorm", fold_batchnorm)
    input_name = _check_name("input_name", input_name)
    output_name = _check_name("output_name", output_name)
    outputs = [output_name] + (["probabilities"] if softmax else [])
    if len({input_name, *outputs}) != 1 + len(outputs):
        raise ValueError(f"input_name {input_name!r}, output_name {output_name!r}"
                         + (" and 'probabilities' (softmax=True)" if softmax else "") + " must differ")
    ops = eval_ops(model, fold_batchnorm)
    elem = helper.np_dtype_to_tensor_dtype(model.dtype)
    nodes, inits = [], []
    cur = input_name

    def const(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, model.dtype), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    for op in ops:
        i = op.index
        if isinstance(op, Dense):
            cur = node("MatMul", [cur, const(f"{i}.weight", op.W)], f"{i}.matmul")
            if op.b is not None:
                cur = node("Add", [cur, const(f"{i}.bias", op.b)], f"{i}.linear")
        elif isinstance(op, Norm):
            n = op.layer.num_features
            scale = np.ones(n, model.dtype) if op.gamma is None else op.gamma
            shift = np.zeros(n, model.dtype) if op.beta is None else op.beta
            cur = node("BatchNormalization", [cur, const(f"{i}.weight", scale), const(f"{i}.bias", shift),
                                              const(f"{i}.running_mean", op.mean), const(f"{i}.running_var", op.var)],
                       f"{i}.batchnorm", epsilon=float(op.layer.eps))
        elif isinstance(op.layer, LeakyReLU):
            cur = node("LeakyRelu", [cur], f"{i}.leaky_relu", alpha=float(op.layer.negative_slope))
        elif isinstance(op.layer, (ReLU, Sigmoid, Tanh)):
            kind = type(op.layer).__name__
            cur = node({"ReLU": "Relu"}.get(kind, kind), [cur], f"{i}.{kind.lower()}")
        # Identity: nothing
    if not nodes:                       # nothing but identities: the output is the input
        node("Identity", [cur], output_name)
    else:
        nodes[-1].output[0] = output_name
    if softmax:
        node("Softmax", [output_name], "probabilities", axis=-1)
    taken = [t.name for t in inits] + [o for nd in nodes for o in nd.output][:-len(outputs)]
    if input_name in taken or output_name in taken:
        raise ValueError(f"input_name {input_name!r} and output_name {output_name!r} must not be the name of a "
                         f"weight or of an intermediate result of the graph")
    graph = helper.make_graph(
        nodes, "fastwb_sequential",
        [helper.make_tensor_value_info(input_name, elem, ["batch", model.in_features])],
        [helper.make_tensor_value_info(name, elem, ["batch", model.out_features]) for name in outputs], inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastwb", producer_version=__version__,
                              doc_string=f"fastwb {type(model).__name__}, eval mode"
                                         + (", BatchNorm folded" if fold_batchnorm else ""))
    # the oldest IR version that holds this opset (8 for opset 17): readable by every ONNX
    # Runtime that runs the opset, where onnx's own default (its newest) may be too new for it
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_bytes(model, **options):
    """The serialized ONNX model of :func:`onnx_model` (what :func:`export_onnx` writes)."""
    return onnx_model(model, **options).SerializeToString()


def export_onnx(model, path, opset=MIN_OPSET, softmax=False, fold_batchnorm=True, input_name="x",
                output_name="logits"):
    """Write the network as an ONNX model to ``path``, atomically; returns the path.

    The graph is the *eval-mode* network whatever ``model.training`` says
    (as :meth:`~fastwb.nn.Sequential.logits` computes it): BatchNorm1d on its
    running statistics, Dropout and Identity left out.  Input ``input_name``
    of shape ``("batch", in_features)`` (the batch dimension is dynamic), output
    ``output_name`` of shape ``("batch", out_features)``; with ``softmax`` a
    second output ``"probabilities"``, ``Softmax(axis=-1)`` of the first.  Per
    layer: ``Linear`` -> ``MatMul`` (+ ``Add`` with a bias; weights ``(in, out)``
    as in fastwb), ``BatchNorm1d`` -> ``BatchNormalization`` (running
    statistics; ones and zeros without ``affine``), or with ``fold_batchnorm``
    (the default) folded into the Linear before it as by :func:`fuse`;
    ``ReLU`` -> ``Relu``, ``LeakyReLU`` -> ``LeakyRelu(alpha=negative_slope)``,
    ``Sigmoid``, ``Tanh``.  Initialisers carry the state-dict names of the
    layers (``"0.weight"``, ``"1.running_var"``; a folded Linear keeps its own).
    Tensors are float32 or float64 (``DOUBLE``) as the model.  ONNX attributes
    are float32, so in a float64 model ``eps`` and ``negative_slope`` are
    rounded to float32 in the graph.

    ``opset``: 17 (the default) up to the newest the installed ``onnx`` knows;
    the model's IR version is the oldest that holds the opset (8 for 17), so
    that older ONNX Runtimes read it.  The model passes ``onnx.checker`` (full
    check) before anything is written; the file is written through
    :func:`fastwb._io.atomic_open`, so a failure leaves ``path`` as it was.

    ImportError naming ``pip install onnx`` without the ``onnx`` package;
    ValueError for an opset out of range, clashing names, a BatchNorm1d
    without running statistics (:func:`eval_ops`), or a ``path`` whose folder
    does not exist or is not writable."""
    from fastwb._io import atomic_open, check_writable_path

    data = onnx_bytes(model, opset=opset, softmax=softmax, fold_batchnorm=fold_batchnorm, input_name=input_name,
                      output_name=output_name)
    path = check_writable_path(os.fspath(path), "ONNX file")
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return path
