"""The training engine: gradients, zero-allocation steps, determinism, checkpoints, accuracy."""

import os
import tracemalloc

import numpy as np
import pytest
from conftest import close

import fastwb
import fastwb.reference as R
from fastwb import datasets

MNIST = os.environ.get(datasets.MNIST_ENV) or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
needs_mnist = pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "train-images-idx3-ubyte.gz")),
                                 reason=f"MNIST IDX files not found (set {datasets.MNIST_ENV} or put them in ../shared/data/mnist)")


def _blobs(rng, n=600, d=12, k=4, dtype=np.float32):
    centers = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    X = (centers[y] + rng.standard_normal((n, d))).astype(dtype)
    return X, y


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
def test_gradients_match_finite_differences(act, rng):
    model = fastwb.MLP([5, 7, 6, 3], act, dtype=np.float64, rng=1)
    X = rng.standard_normal((9, 5))
    y = rng.integers(0, 3, 9)
    _, dW, db = model.gradients(X, y)
    analytic = model.grads.copy()
    h = 1e-6
    numeric = np.empty_like(analytic)
    for i in range(model.params.size):
        old = model.params[i]
        model.params[i] = old + h
        lp = model.evaluate(X, y)[0]
        model.params[i] = old - h
        lm = model.evaluate(X, y)[0]
        model.params[i] = old
        numeric[i] = (lp - lm) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_input_gradient_matches_finite_differences(rng):
    model = fastwb.MLP([4, 8, 3], "tanh", dtype=np.float64, rng=2)
    X = rng.standard_normal((5, 4))
    y = rng.integers(0, 3, 5)
    before = model.params.copy()
    g = model.input_gradient(X, y)
    np.testing.assert_array_equal(model.params, before)
    numeric = np.empty_like(X)
    for idx in np.ndindex(X.shape):
        old = X[idx]
        X[idx] = old + 1e-6
        lp = model.evaluate(X, y)[0]
        X[idx] = old - 1e-6
        lm = model.evaluate(X, y)[0]
        X[idx] = old
        numeric[idx] = (lp - lm) / 2e-6
    np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-9)


def test_engine_matches_the_classifier_twin(rng):
    """Same initial weights and data: the engine's Adam steps follow the NumPy twin."""
    twin = R.MNISTClassifier(20, 16, 5, rng=3)
    model = fastwb.MLP([20, 16, 5], "relu", dtype=np.float64, rng=0)
    model.W[0][...], model.W[1][...] = twin.W1, twin.W2
    X = rng.standard_normal((32, 20))
    y = rng.integers(0, 5, 32)
    for _ in range(30):
        loss = model.train_step(X, y)
        twin_loss = twin.train_step(X, y)
    close(loss, twin_loss, np.float64)
    close(model.W[0], twin.W1, np.float64, scale=True)
    close(model.b[1], twin.b2, np.float64, scale=True)


def test_train_step_allocates_nothing_after_the_first(rng):
    model = fastwb.MLP([64, 128, 10], dtype=np.float32, rng=0)
    X = rng.standard_normal((32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.intp)
    model.train_step(X, y)
    tracemalloc.start()
    try:
        model.train_step(X, y)
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(50):
            model.train_step(X, y)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a step's arrays are KiBs (32x128 float32 = 16 KiB); only transient views may appear
    assert peak - start < 4096, f"a training step allocated {peak - start} bytes"
    assert end - start < 1024


def test_last_smaller_batch_and_history(rng):
    X, y = _blobs(rng, n=203)
    model = fastwb.MLP([12, 16, 4], rng=0)
    h = model.fit(X, y, epochs=3, batch_size=50, verbose=False, rng=0)
    assert sorted(model._workspaces) == [3, 50, 203] or 3 in model._workspaces
    assert len(h["loss"]) == 3 and h["loss"][-1] < h["loss"][0]


def test_fit_reaches_high_accuracy_on_blobs(rng):
    X, y = _blobs(rng)
    model = fastwb.MLP([12, 32, 4], rng=0)
    model.fit(X, y, epochs=10, batch_size=32, verbose=False, rng=0)
    assert model.evaluate(X, y)[1] > 0.95
    np.testing.assert_array_equal(model.predict(X), np.argmax(model.predict_proba(X), axis=1))
    np.testing.assert_allclose(model.predict_proba(X).sum(axis=1), 1, rtol=1e-5)


def test_same_seed_same_weights_for_any_thread_count(rng):
    X, y = _blobs(rng, n=1024, d=256, k=10)
    results = []
    for t in (1, 2, 4):
        with fastwb.threads(t):
            model = fastwb.MLP([256, 1024, 10], "sigmoid", rng=7)
            model.fit(X, y, epochs=1, batch_size=512, rng=3, verbose=False)
            results.append(model.params.copy())
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_pruning_during_fit(rng):
    X, y = _blobs(rng)
    model = fastwb.MLP([12, 64, 4], rng=0)
    h = model.fit(X, y, epochs=6, batch_size=32, verbose=False, prune_schedule=0.7, prune_scope="layer", rng=0)
    assert model.layer_sparsity() == pytest.approx([0.7, 0.7], abs=0.01)
    assert h["sparsity"] == sorted(h["sparsity"])
    for W, m in zip(model.W, model.masks):
        assert (W[~m] == 0).all()
    assert model.evaluate(X, y)[1] > 0.9
    model.prune(0.8)                       # global: exact over all weights together
    assert model.sparsity() == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="scope"):
        model.prune(0.9, scope="unit")


def test_save_load_round_trip(tmp_path, rng):
    model = fastwb.MLP([6, 9, 3], ["tanh"], dtype=np.float64, rng=4, alpha=0.2)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fastwb.MLP.load(path)
    np.testing.assert_array_equal(loaded.params, model.params)
    assert loaded.activations == model.activations and loaded.dtype == model.dtype
    X = rng.standard_normal((4, 6))
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_bad_checkpoints_are_clear_errors(tmp_path, rng):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(rng.bytes(1000))
    with pytest.raises(ValueError, match="not a readable fastwb checkpoint"):
        fastwb.MLP.load(junk)
    good = tmp_path / "good.npz"
    fastwb.MLP([3, 4, 2], rng=0).save(good)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="checkpoint"):
        fastwb.MLP.load(truncated)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.ones(3))
    with pytest.raises(ValueError, match="missing"):
        fastwb.MLP.load(other)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, format=np.array("fastwb-mlp-1"), layer_sizes=np.array([3, 4, 2]), activations=np.array(["relu", "identity"]),
             alpha=np.array(0.01), dtype=np.array("float32"), params=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="parameters are float32"):
        fastwb.MLP.load(wrong)
    with pytest.raises(FileNotFoundError):
        fastwb.MLP.load(tmp_path / "absent.npz")


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fastwb.MLP([3]), ValueError, "layer_sizes"),
    (lambda: fastwb.MLP([3, 0, 2]), ValueError, "layer_sizes"),
    (lambda: fastwb.MLP([3, 4, 2], "swish"), ValueError, "unknown activation 'swish'"),
    (lambda: fastwb.MLP([3, 4, 2], ["relu", "relu"]), ValueError, "1 hidden layers need 1 activations"),
    (lambda: fastwb.MLP([3, 4, 2], init="xavier"), ValueError, "unknown init"),
    (lambda: fastwb.MLP([3, 4, 2], dtype=np.int32), TypeError, "dtype"),
    (lambda: fastwb.MLP([3, 2]).compile("lbfgs"), ValueError, "unknown optimizer"),
    (lambda: fastwb.MLP([3, 2]).train_step(np.ones((2, 3)), [0, 1]), TypeError, "float64 but the model is float32"),
    (lambda: fastwb.MLP([3, 2]).train_step(np.ones((2, 4), np.float32), [0, 1]), ValueError, r"shape \(n, 3\)"),
    (lambda: fastwb.MLP([3, 2]).train_step(np.ones((2, 3), np.float32), [0, 2]), ValueError, r"y\[1\] = 2"),
    (lambda: fastwb.MLP([3, 2]).train_step(np.ones((2, 3), np.float32), [0.0, 1.0]), TypeError, "y must be integer class indices"),
    (lambda: fastwb.MLP([3, 2]).fit(np.ones((2, 3), np.float32), [0, 1], batch_size=0), ValueError, "batch_size"),
    (lambda: fastwb.MLP([3, 2]).fit(np.ones((2, 3), np.float32), [0, 1], prune_schedule=1.5), ValueError, "final sparsity"),
    (lambda: fastwb.MLP([3, 2]).compile(fastwb.optim.Adam([np.zeros(3, np.float32)])), ValueError, "model.params"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_digits_accuracy_with_defaults():
    pytest.importorskip("sklearn", reason='the embedded digits come with scikit-learn: pip install "fastwb[datasets]"')
    X_train, y_train, X_test, y_test = datasets.load("digits")
    model = fastwb.MLP([64, 128, 10], rng=0)
    model.fit(X_train, y_train, epochs=30, batch_size=32, rng=0, verbose=False)
    assert model.evaluate(X_test, y_test)[1] >= 0.97


@needs_mnist
@pytest.mark.parametrize("sparsity,target", [(None, 0.975), (0.9, 0.97)])
def test_mnist_accuracy(sparsity, target):
    X_train, y_train, X_test, y_test = datasets.load_mnist(MNIST, "both")
    model = fastwb.MLP([784, 256, 10], "relu", dtype=np.float32, rng=0)
    model.compile("adam", lr=1e-3)
    model.fit(X_train, y_train, epochs=5, batch_size=128, rng=0, verbose=False, prune_schedule=sparsity)
    accuracy = model.evaluate(X_test, y_test)[1]
    assert accuracy >= target, f"test accuracy {accuracy:.4f} below {target}"
    if sparsity:
        assert model.sparsity() == pytest.approx(0.9, abs=1e-3)


# -- the preset over fastwb.nn.Sequential ------------------------------------------------------

def test_mlp_is_a_sequential_of_linear_and_activation_layers():
    from fastwb import init, nn

    model = fastwb.MLP([6, 5, 4, 3], ["tanh", "leaky_relu"], init="glorot", dtype=np.float64, rng=3, alpha=0.2)
    assert isinstance(model, nn.Sequential)
    assert [type(layer).__name__ for layer in model.layers] == ["Linear", "Tanh", "Linear", "LeakyReLU", "Linear"]
    assert model.layers[3].negative_slope == 0.2
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    # the weights the engine drew before it became a preset: one initialiser call per layer from rng
    gen = np.random.default_rng(3)
    for W, b in zip(model.W, model.b):
        np.testing.assert_array_equal(W, init.xavier_uniform(W.shape, rng=gen))
        assert not b.any() and np.shares_memory(W, model.params)
    assert all(np.shares_memory(g, model.grads) for g in model.dW + model.db)
    with pytest.raises(ValueError, match="softmax cross-entropy"):
        model.compile("adam", loss="mse")


def test_mlp_v2_checkpoint_resumes_bit_for_bit(tmp_path, rng):
    X, y = _blobs(rng, n=200)
    a = fastwb.MLP([12, 16, 4], rng=0)
    a.fit(X, y, epochs=4, batch_size=32, rng=5, verbose=False)
    b = fastwb.MLP([12, 16, 4], rng=0)
    b.fit(X, y, epochs=2, batch_size=32, rng=5, verbose=False)
    b.save(tmp_path / "m.fwb", with_optimizer=True)
    for c in (fastwb.MLP.load(tmp_path / "m.fwb"), fastwb.nn.load(tmp_path / "m.fwb")):
        assert isinstance(c, fastwb.MLP) and c.layer_sizes == [12, 16, 4] and c.epochs_done == 2
        c.fit(X, y, epochs=2, batch_size=32, rng=5, verbose=False)
        np.testing.assert_array_equal(c.params, a.params)


def test_pickled_and_copied_mlps_keep_their_views(rng):
    import copy
    import pickle

    X, y = _blobs(rng, n=64)
    model = fastwb.MLP([12, 8, 4], rng=0)
    model.train_step(X, y)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), model.copy()):
        assert isinstance(other, fastwb.MLP)
        assert all(np.shares_memory(W, other.params) for W in other.W + other.b)
        assert other.train_step(X, y) == pytest.approx(fastwb.MLP.copy(model).train_step(X, y), rel=0, abs=0)
        np.testing.assert_array_equal(other.W[0], other.state_dict()["0.weight"])


def test_a_hostile_preset_is_refused_before_anything_is_allocated(tmp_path, rng):
    import io
    import json
    import tracemalloc
    import zipfile

    X, y = _blobs(rng, n=64)
    model = fastwb.MLP([12, 8, 4], rng=0)
    model.train_step(X, y)
    path, hostile = tmp_path / "m.fwb", tmp_path / "h.fwb"
    model.save(path, with_optimizer=True)
    spec = model.spec()
    spec["preset"].update(layer_sizes=[20000, 20000, 20000, 4], activation=["relu", "relu"])   # 3.2 GB of float32
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "spec.npy":
                buf = io.BytesIO()
                np.save(buf, np.array(json.dumps(spec)))
                data = buf.getvalue()
            dst.writestr(item, data)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="preset does not build these layers"):
            fastwb.nn.load(hostile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_pickles_of_the_mlp_before_it_was_a_preset_still_load(rng):
    X, y = _blobs(rng, n=32)
    model = fastwb.MLP([12, 8, 4], "tanh", rng=0)
    model.train_step(X, y)
    # the attributes an MLP pickled by fastwb before the preset (commit 4904a81) carries
    params = model.params.copy()
    opt = fastwb.optim.Adam([params])
    opt.load_state_dict(model.optimizer.state_dict())
    old = dict(layer_sizes=[12, 8, 4], activations=["tanh", "identity"], codes=[4, 0], alpha=0.01,
               dtype=np.dtype(np.float32), init="he", params=params, grads=np.zeros_like(params), optimizer=opt,
               masks=None, shapes=[(12, 8), (8,), (8, 4), (4,)])
    back = fastwb.MLP.__new__(fastwb.MLP)
    back.__setstate__(old)
    np.testing.assert_array_equal(back.logits(X), model.logits(X))
    assert back.train_step(X, y) == model.train_step(X, y)
    np.testing.assert_array_equal(back.params, model.params)
