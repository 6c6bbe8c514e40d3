"""Deployment (fastwb.nn.deploy): BatchNorm folding by fuse(), ONNX export checked in
ONNX Runtime, the benchmark's graph built by the same code, and atomic writes.

The folding tests need neither onnx nor onnxruntime; the export tests skip with a
message where they are missing, and the missing-onnx error is tested by hiding it."""

import math
import os
import sys

import numpy as np
import pytest

import fastwb
from fastwb import nn
from fastwb.nn import deploy

DTYPES = ["float32", "float64"]
# fused against unfused logits: float32 to 1e-5 relative / absolute, float64 to ~1e-12
TOL = {"float32": 1e-5, "float64": 1e-12}
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
               "identity": nn.Identity}


def randomize(model, seed=0):
    """Parameters, running means and variances that are not BatchNorm's identity."""
    rng = np.random.default_rng(seed)
    for layer, params, buffers in zip(model.layers, model._params, model._buffers):
        if isinstance(layer, nn.BatchNorm1d):
            n = layer.num_features
            if layer.affine:
                params["weight"][...] = rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n)
                params["bias"][...] = rng.normal(0, 0.5, n)
            if layer.track_running_stats:
                buffers["running_mean"][...] = rng.normal(0, 0.5, n)
                buffers["running_var"][...] = rng.uniform(0.2, 3.0, n)
    return model


def bn_net(dtype="float32", bias=True, affine=True, act=nn.ReLU, seed=0):
    """Linear -> BN -> act -> Dropout -> Linear -> BN -> act -> Linear."""
    m = nn.Sequential(nn.Linear(12, 9, bias=bias), nn.BatchNorm1d(9, affine=affine), act(), nn.Dropout(0.3),
                      nn.Linear(9, 7, bias=bias), nn.BatchNorm1d(7, eps=1e-3, affine=affine), act(),
                      nn.Linear(7, 4), dtype=dtype, rng=seed)
    return randomize(m, seed)


def data(n, width=12, dtype="float32", seed=1):
    return np.random.default_rng(seed).standard_normal((n, width)).astype(dtype)


def assert_close(got, want, dtype):
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


# -- fuse ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "not_affine"])
def test_fuse_folds_batchnorm_into_the_linear_before_it(dtype, bias, affine):
    model = bn_net(dtype, bias, affine).eval()
    before = model.state_dict()
    fused = model.fuse()
    assert [type(la).__name__ for la in fused.layers] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(la.bias for la in fused.layers if isinstance(la, nn.Linear))     # the fold makes a bias
    X = data(53, dtype=dtype)
    assert_close(fused.logits(X), model.logits(X), dtype)
    assert_close(fused.logits(X[:1]), model.logits(X[:1]), dtype)
    # the model itself is unchanged
    after = model.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert model.training is False and len(model.layers) == 8


@pytest.mark.parametrize("dtype", DTYPES)
def test_fuse_is_the_formula_computed_in_float64_and_rounded_once(dtype):
    model = bn_net(dtype).eval()
    sd, got = model.state_dict(), model.fuse().state_dict()
    for lin, bn, k in ((0, 1, 0), (4, 5, 2)):
        eps = model.layers[bn].eps
        s = sd[f"{bn}.weight"].astype(np.float64) / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + eps)
        W = (sd[f"{lin}.weight"].astype(np.float64) * s[None, :]).astype(dtype)
        b = ((sd[f"{lin}.bias"].astype(np.float64) - sd[f"{bn}.running_mean"]) * s + sd[f"{bn}.bias"]).astype(dtype)
        np.testing.assert_array_equal(got[f"{k}.weight"], W)
        np.testing.assert_array_equal(got[f"{k}.bias"], b)
        assert got[f"{k}.weight"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got["4.weight"], sd["7.weight"])     # an unfolded Linear is copied
    np.testing.assert_array_equal(got["4.bias"], sd["7.bias"])


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_fuse_with_every_activation(act):
    model = bn_net("float64", act=ACTIVATIONS[act]).eval()
    X = data(20, dtype="float64")
    assert_close(model.fuse().logits(X), model.logits(X), "float64")


def test_fuse_after_training_keeps_the_models_settings():
    model = bn_net("float32")
    X, y = data(96), np.arange(96) % 4
    model.compile("adam", lr=1e-2, loss="cross_entropy")
    model.fit(X, y, epochs=3, batch_size=32, verbose=False)
    model.eval()
    fused = model.fuse()
    assert type(fused) is nn.Sequential and fused is not model
    assert fused.training is False and fused.dtype == model.dtype and fused.loss is model.loss
    assert fused.seed == model.seed and fused.step_count == model.step_count == 9 and fused.epochs_done == 3
    assert fused.optimizer is None
    assert_close(fused.logits(X), model.logits(X), "float32")
    np.testing.assert_array_equal(fused.predict(X), model.predict(X))
    assert_close(fused.predict_proba(X), model.predict_proba(X), "float32")


def test_fuse_with_mse_loss_and_a_checkpoint_round_trip(tmp_path):
    model = bn_net("float64").compile("sgd", loss="mse").eval()
    fused = model.fuse()
    assert fused.loss.name == "mse"
    fused.save(tmp_path / "fused.fwb")
    back = nn.load(tmp_path / "fused.fwb")
    X = data(8, dtype="float64")
    np.testing.assert_array_equal(back.logits(X), fused.logits(X))
    assert back.loss.name == "mse"


def test_batchnorm_not_after_a_linear_stays():
    model = nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, 8), nn.Tanh(), nn.BatchNorm1d(8),
                          nn.Linear(8, 6), nn.BatchNorm1d(6), nn.BatchNorm1d(6, affine=False), nn.Linear(6, 3),
                          dtype="float64", rng=3)
    model = randomize(model, 3).eval()
    fused = model.fuse()
    # the input BN and the BN after Tanh stay; the BN after Linear(8, 6) folds, the one after that BN stays
    assert [type(la).__name__ for la in fused.layers] == ["BatchNorm1d", "Linear", "Tanh", "BatchNorm1d",
                                                          "Linear", "BatchNorm1d", "Linear"]
    sd, got = model.state_dict(), fused.state_dict()
    for old, new in ((0, 0), (3, 3)):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_array_equal(got[f"{new}.{name}"], sd[f"{old}.{name}"])
    np.testing.assert_array_equal(got["5.running_var"], sd["6.running_var"])
    assert fused.layers[5].affine is False and fused.layers[3] is not model.layers[3]      # copies
    X = data(30, dtype="float64")
    assert_close(fused.logits(X), model.logits(X), "float64")


def test_dropout_is_dropped_and_linear_dropout_batchnorm_folds():
    model = nn.Sequential(nn.Linear(12, 10), nn.Dropout(0.5), nn.BatchNorm1d(10), nn.LeakyReLU(0.1),
                          nn.Dropout(0.2), nn.Linear(10, 3), nn.Dropout(0.1), rng=0)
    model = randomize(model).eval()
    fused = model.fuse()
    assert [type(la).__name__ for la in fused.layers] == ["Linear", "LeakyReLU", "Linear"]
    assert fused.layers[1].negative_slope == 0.1
    X = data(40)
    assert_close(fused.logits(X), model.logits(X), "float32")


def test_an_mlp_fuses_to_the_same_network_bit_for_bit():
    model = fastwb.MLP([12, 16, 8, 3], activation="tanh", rng=0).eval()
    fused = model.fuse()
    X = data(25)
    np.testing.assert_array_equal(fused.logits(X), model.logits(X))


def test_only_dropout_fuses_to_the_identity():
    model = nn.Sequential(nn.Dropout(0.5), in_features=5).eval()
    X = data(4, 5)
    np.testing.assert_array_equal(model.fuse().logits(X), X)


def test_pruned_weights_stay_zero():
    model = bn_net("float32")
    model.prune(0.6)
    model.eval()
    fused = model.fuse()
    assert fused.W[0][model.W[0] == 0].size > 0 and not fused.W[0][model.W[0] == 0].any()
    assert fused.W[1][model.W[1] == 0].size > 0 and not fused.W[1][model.W[1] == 0].any()


def test_fuse_refuses_training_mode_and_batch_statistics():
    model = bn_net()
    assert model.training
    with pytest.raises(ValueError, match=r"model\.eval\(\) first"):
        model.fuse()
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(3, 2)).eval()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        model.fuse()


def test_fused_model_runs_on_every_thread_count():
    model = bn_net("float64").eval()
    fused, X = model.fuse(), data(300, dtype="float64")
    with fastwb.threads(1):
        one = fused.logits(X)
    with fastwb.threads(2):
        two = fused.logits(X)
    np.testing.assert_array_equal(one, two)


# -- ONNX without onnx -----------------------------------------------------------------------

def test_export_without_onnx_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)          # import onnx fails
    path = tmp_path / "m.onnx"
    with pytest.raises(ImportError, match="pip install onnx"):
        bn_net().export_onnx(path)
    with pytest.raises(ImportError, match="pip install onnx"):
        deploy.onnx_bytes(bn_net())
    assert list(tmp_path.iterdir()) == []


# -- ONNX -------------------------------------------------------------------------------------

def _onnx():
    return pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install onnx)")


def _ort():
    _onnx()
    return pytest.importorskip("onnxruntime", reason="checking the exported graph needs onnxruntime "
                                                     "(pip install onnxruntime)")


def session(ort, path_or_bytes):
    src = os.fspath(path_or_bytes) if isinstance(path_or_bytes, os.PathLike) else path_or_bytes
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "batchnorm_kept"])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_onnx_runtime_computes_the_models_logits(tmp_path, dtype, fold, act, softmax):
    ort = _ort()
    model = bn_net(dtype, bias=act != "tanh", affine=act != "sigmoid", act=ACTIVATIONS[act]).eval()
    model.train()                       # export is of the eval-mode network whatever the mode
    path = tmp_path / "m.onnx"
    assert model.export_onnx(path, softmax=softmax, fold_batchnorm=fold) == os.fspath(path)
    assert model.training is True
    s = session(ort, path)
    assert [i.name for i in s.get_inputs()] == ["x"]
    assert [o.name for o in s.get_outputs()] == ["logits"] + (["probabilities"] if softmax else [])
    X = data(37, dtype=dtype)
    for n in (1, 37):                   # one session, two batch sizes: the batch dimension is dynamic
        got = s.run(None, {"x": X[:n]})
        assert got[0].dtype == np.dtype(dtype) and got[0].shape == (n, 4)
        # ONNX Runtime's float64 kernels: the folded graph agrees to ~1e-14; with BatchNormalization
        # kept, its epsilon attribute is a float32 (1e-5 -> 9.99999975e-06), and LeakyRelu's alpha too
        # (0.2 -> 0.200000003): the graph is then exact only to float32's precision of those numbers
        tol = 1e-5 if dtype == "float32" or not fold or act == "leaky_relu" else 1e-12
        np.testing.assert_allclose(got[0], model.logits(X[:n]), rtol=tol, atol=tol)
        if softmax:
            np.testing.assert_allclose(got[1], model.predict_proba(X[:n]), rtol=tol, atol=tol)
            np.testing.assert_allclose(got[1].sum(axis=1), 1, rtol=1e-6)


def test_onnx_graph_structure():
    onnx = _onnx()
    model = bn_net("float32", bias=False).eval()
    folded = onnx.load_from_string(deploy.onnx_bytes(model))
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["MatMul", "Add", "Relu", "MatMul", "Add", "Relu", "MatMul", "Add"]
    kept = onnx.load_from_string(deploy.onnx_bytes(model, fold_batchnorm=False, softmax=True))
    ops = [n.op_type for n in kept.graph.node]
    # Linear without bias: MatMul alone; no Dropout node
    assert ops == ["MatMul", "BatchNormalization", "Relu", "MatMul", "BatchNormalization", "Relu", "MatMul", "Add",
                   "Softmax"]
    bn = kept.graph.node[1]
    assert {a.name: a for a in bn.attribute}["epsilon"].f == pytest.approx(1e-5)
    assert kept.graph.node[-1].attribute[0].i == -1
    inits = {t.name for t in kept.graph.initializer}
    assert {"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "7.weight", "7.bias"} <= inits
    assert {t.name for t in folded.graph.initializer} == {"0.weight", "0.bias", "4.weight", "4.bias", "7.weight",
                                                          "7.bias"}
    x = kept.graph.input[0]
    dims = x.type.tensor_type.shape.dim
    assert x.name == "x" and dims[0].dim_param == "batch" and dims[1].dim_value == 12
    assert x.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert kept.ir_version == 8 and [(o.domain, o.version) for o in kept.opset_import] == [("", 17)]
    assert kept.producer_name == "fastwb"
    W = onnx.numpy_helper.to_array({t.name: t for t in kept.graph.initializer}["0.weight"])
    np.testing.assert_array_equal(W, model.W[0])            # stored (in, out), as fastwb
    onnx.checker.check_model(kept, full_check=True)


def test_onnx_double_model():
    onnx = _onnx()
    proto = deploy.onnx_model(bn_net("float64").eval())
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert all(t.data_type == onnx.TensorProto.DOUBLE for t in proto.graph.initializer)


def test_onnx_names_and_opsets():
    onnx = _onnx()
    model = bn_net().eval()
    proto = deploy.onnx_model(model, input_name="pixels", output_name="scores", opset=18)
    assert proto.graph.input[0].name == "pixels" and [o.name for o in proto.graph.output] == ["scores"]
    assert proto.opset_import[0].version == 18 and proto.ir_version == 8
    newest = onnx.defs.onnx_opset_version()
    assert deploy.onnx_model(model, opset=newest).opset_import[0].version == newest
    for bad in (16, 1, newest + 1):
        with pytest.raises(ValueError, match="opset"):
            deploy.onnx_model(model, opset=bad)
    with pytest.raises(TypeError, match="opset"):
        deploy.onnx_model(model, opset=17.0)
    with pytest.raises(ValueError, match="must differ"):
        deploy.onnx_model(model, input_name="y", output_name="y")
    with pytest.raises(ValueError, match="must differ"):
        deploy.onnx_model(model, output_name="probabilities", softmax=True)
    with pytest.raises(ValueError, match="intermediate"):
        deploy.onnx_model(model, input_name="0.weight")
    with pytest.raises(ValueError, match="non-empty"):
        deploy.onnx_model(model, output_name="")
    with pytest.raises(TypeError, match="softmax"):
        deploy.onnx_model(model, softmax="yes")


def test_onnx_other_opset_and_names_run(tmp_path):
    ort = _ort()
    model = bn_net().eval()
    s = session(ort, deploy.onnx_bytes(model, opset=18, input_name="pixels", output_name="scores"))
    X = data(5)
    np.testing.assert_allclose(s.run(["scores"], {"pixels": X})[0], model.logits(X), rtol=1e-5, atol=1e-5)


def test_onnx_identity_only_model():
    ort = _ort()
    model = nn.Sequential(nn.Dropout(0.5), nn.Identity(), in_features=3)
    s = session(ort, deploy.onnx_bytes(model, softmax=True))
    X = data(4, 3)
    y, p = s.run(None, {"x": X})
    np.testing.assert_array_equal(y, X)
    np.testing.assert_allclose(p, model.predict_proba(X), rtol=1e-6)


def test_onnx_batchnorm_without_running_statistics_is_refused(tmp_path):
    _onnx()
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
    for fold in (True, False):
        with pytest.raises(ValueError, match="track_running_stats=False"):
            model.export_onnx(tmp_path / "m.onnx", fold_batchnorm=fold)
    assert list(tmp_path.iterdir()) == []


def test_onnx_of_a_loaded_checkpoint(tmp_path):
    ort = _ort()
    model = bn_net("float32")
    X, y = data(64), np.arange(64) % 4
    model.fit(X, y, epochs=2, batch_size=16, verbose=False)
    model.save(tmp_path / "m.fwb")
    loaded = nn.load(tmp_path / "m.fwb")
    assert loaded.training          # a loaded model starts in training mode: the export is still eval mode
    deploy.export_onnx(loaded, tmp_path / "m.onnx")
    y_ort = session(ort, tmp_path / "m.onnx").run(None, {"x": X})[0]
    np.testing.assert_allclose(y_ort, model.eval().logits(X), rtol=1e-5, atol=1e-5)


# -- files --------------------------------------------------------------------------------------

def test_export_into_a_missing_folder_is_a_clear_error(tmp_path):
    _onnx()
    missing = tmp_path / "no-such-folder" / "m.onnx"
    with pytest.raises(ValueError, match="does not exist"):
        bn_net().export_onnx(missing)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_the_previous_file(tmp_path, monkeypatch):
    onnx = _onnx()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the previous model")

    def broken_check(*args, **kwargs):
        raise onnx.checker.ValidationError("checker says no")

    with monkeypatch.context() as mp:        # fails before anything is written
        mp.setattr(onnx.checker, "check_model", broken_check)
        with pytest.raises(onnx.checker.ValidationError):
            bn_net().export_onnx(path)
    assert path.read_bytes() == b"the previous model" and sorted(os.listdir(tmp_path)) == ["m.onnx"]

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as mp:        # fails while writing: the temporary file goes
        mp.setattr(os, "fsync", broken_fsync)
        with pytest.raises(OSError, match="No space"):
            bn_net().export_onnx(path)
    assert path.read_bytes() == b"the previous model" and sorted(os.listdir(tmp_path)) == ["m.onnx"]
    bn_net().export_onnx(path)
    assert onnx.load(os.fspath(path)).graph.node[0].op_type == "MatMul"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_export_writes_exactly_the_bytes_of_onnx_bytes(tmp_path):
    _onnx()
    model = bn_net().eval()
    path = model.export_onnx(str(tmp_path / "m.onnx"), softmax=True, fold_batchnorm=False)
    with open(path, "rb") as fh:
        assert fh.read() == deploy.onnx_bytes(model, softmax=True, fold_batchnorm=False)


# -- the benchmark's graph is deploy's ------------------------------------------------------------

def test_benchmark_graph_is_the_exported_graph():
    onnx = _onnx()
    from fastwb import benchmark as B

    mlp = fastwb.MLP([12, 7, 5, 3], rng=1)
    proto = onnx.load_from_string(B.onnx_mlp(B.mlp_weights(mlp)))
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add", "Relu", "MatMul",
                                                     "Add"]
    assert proto.graph.input[0].name == "x" and proto.graph.output[0].name == "logits"
    assert proto.ir_version == 8 and proto.opset_import[0].version == 17
    assert proto.graph == onnx.load_from_string(deploy.onnx_bytes(mlp.eval())).graph


def test_parameter_count_arithmetic_of_the_fused_model():
    model = bn_net("float32").eval()
    fused = model.fuse()
    # two BatchNorm layers of 9 and 7 features go (2 parameters each); two biases appear only where there were none
    assert fused.n_params == model.n_params - 2 * (9 + 7)
    assert fused.n_params == sum(math.prod(s) for la in fused.layers for s in la.param_shapes().values())
