"""fastwb.explain: saliency, gradient x input, SmoothGrad and Integrated Gradients
against the NumPy twin (float64, 1e-10), against central finite differences of
the chosen output (logit, probability, loss), the completeness of Integrated
Gradients, the eval-mode default and the training-mode rules, default targets,
bad input, thread counts, and the headless plot."""

import io
import sys
from unittest import mock

import numpy as np
import pytest

import fastwb
from fastwb import explain, nn
from fastwb.reference import explain as R
from test_engine_plan import _build

# one of each: activations, no bias, dropout, BatchNorm (with and without running
# statistics), the three losses, a first activation stage, a one-wide output
TWIN_MODELS = ["dense_relu", "dense_tanh", "dense_sigmoid", "dense_nobias", "dense_dropout", "bn_a1_t1_m0.1",
               "bn_a0_t0_mnone", "bn_leaky", "bn_sigmoid_nodrop_first", "two_bn", "act_stages", "width_one_out",
               "dense_nobias_identity"]


def _data(model, n=6, seed=0):
    r = np.random.default_rng(seed)
    X = (r.standard_normal((n, model.in_features)) * 1.5).astype(model.dtype)
    if model.loss.name == "cross_entropy":
        y = r.integers(0, model.out_features, n)
    elif model.loss.name == "mse":
        y = r.standard_normal((n, model.out_features)).astype(model.dtype)
    else:
        y = (r.random((n, model.out_features)) < 0.4).astype(model.dtype)
    return X, y


def _wrts(model):
    return ["logit", "loss"] + (["prob"] if model.loss.name != "mse" else [])


def _kw(wrt, y):
    return {"wrt": wrt, "labels": y if wrt == "loss" else None}


def _near(a, b, tol=1e-10):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def _unchanged(model):
    """A check that nothing in the model changes: parameters, buffers, gradients, mode."""
    before = (model.state_dict(), model.grads.copy(), model.training, model.step_count)

    def check():
        state, grads, training, steps = before
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, state[k], err_msg=k)
        np.testing.assert_array_equal(model.grads, grads)
        assert model.training == training and model.step_count == steps
    return check


# -- against the twin -------------------------------------------------------------------------

@pytest.mark.parametrize("name", TWIN_MODELS)
def test_saliency_and_gradient_x_input_match_the_twin(name):
    model = _build(name, "float64")
    X, y = _data(model)
    unchanged = _unchanged(model)
    for wrt in _wrts(model):
        for absolute in (True, False):
            _near(explain.saliency(model, X, abs=absolute, **_kw(wrt, y)),
                  R.saliency(model, X, abs=absolute, **_kw(wrt, y)))
        _near(explain.gradient_x_input(model, X, **_kw(wrt, y)), R.gradient_x_input(model, X, **_kw(wrt, y)))
        if wrt != "loss":
            t = np.arange(len(X)) % model.out_features
            _near(explain.saliency(model, X, target=t, wrt=wrt), R.saliency(model, X, target=t, wrt=wrt))
    unchanged()


@pytest.mark.parametrize("name", ["dense_dropout", "bn_a1_t1_m0.1", "two_bn", "act_dropout_stage", "dropout_stages"])
def test_training_mode_matches_the_twin_in_training_mode(name):
    model = _build(name, "float64")
    model.step_count = 7                    # the dropout masks of step 7
    X, y = _data(model)
    unchanged = _unchanged(model)
    for wrt in _wrts(model):
        got = explain.saliency(model, X, abs=False, training=True, batch_size=2, **_kw(wrt, y))
        _near(got, R.saliency(model, X, abs=False, training=True, **_kw(wrt, y)))
    unchanged()


@pytest.mark.parametrize("name", ["dense_relu", "dense_tanh", "bn_a1_t1_m0.1", "bn_a0_t0_mnone", "width_one_out",
                                  "bn_sigmoid_nodrop_first"])
def test_integrated_gradients_and_smoothgrad_match_the_twin(name):
    model = _build(name, "float64")
    X, y = _data(model, n=5)
    per_row = np.random.default_rng(1).standard_normal(X.shape)
    for wrt in _wrts(model):
        for method, steps in (("midpoint", 7), ("trapezoid", 6)):
            for baseline in (0.0, np.linspace(-1, 1, model.in_features), per_row):
                if method == "trapezoid" and baseline is not per_row and explain._batch_stats_in_eval(model):
                    # the baseline copy is then one constant batch: BatchNorm on batch statistics puts
                    # every unit on the ReLU's kink, where rounding decides the derivative
                    continue
                got, delta = explain.integrated_gradients(model, X, baseline=baseline, steps=steps, method=method,
                                                          return_delta=True, batch_size=8, **_kw(wrt, y))
                want, want_delta = R.integrated_gradients(model, X, baseline=baseline, steps=steps, method=method,
                                                          return_delta=True, **_kw(wrt, y))
                _near(got, want)
                _near(delta, want_delta)
        for absolute in (True, False):
            got = explain.smoothgrad(model, X, n=4, sigma=0.2, abs=absolute, rng=3, batch_size=7, **_kw(wrt, y))
            _near(got, R.smoothgrad(model, X, n=4, sigma=0.2, abs=absolute, rng=3, **_kw(wrt, y)))


def test_float32_matches_the_twin_closely():
    model = fastwb.MLP([30, 24, 6], rng=1, dtype="float32")
    X, y = _data(model, n=40)
    for wrt in ("logit", "prob", "loss"):
        _near(explain.saliency(model, X, **_kw(wrt, y)), R.saliency(model, X, **_kw(wrt, y)), tol=2e-5)
    _near(explain.integrated_gradients(model, X, steps=9), R.integrated_gradients(model, X, steps=9), tol=2e-5)


# -- against finite differences -----------------------------------------------------------------

def _F(model, Z, t, wrt, y):
    """The chosen output of each row, from the network's output (float64)."""
    z = model.logits(Z).astype(np.float64)
    rows = np.arange(len(z))
    if wrt == "logit":
        return z[rows, t]
    if wrt == "prob":
        if model.loss.name == "cross_entropy":
            p = np.exp(z - z.max(axis=1, keepdims=True))
            return (p / p.sum(axis=1, keepdims=True))[rows, t]
        return 1 / (1 + np.exp(-z[rows, t]))
    if model.loss.name == "cross_entropy":
        return np.log(np.exp(z).sum(axis=1)) - z[rows, y]
    if model.loss.name == "mse":
        return ((z - y) ** 2).mean(axis=1)
    return (np.logaddexp(0, z) - z * y).mean(axis=1)


@pytest.mark.parametrize("name", ["dense_tanh", "dense_sigmoid", "dense_relu", "bn_a1_t1_m0.1", "bn_leaky",
                                  "width_one_out", "dense_nobias_identity", "act_stages"])
def test_gradients_match_finite_differences(name):
    model = _build(name, "float64")
    X, y = _data(model, n=3, seed=2)
    t = model.logits(X).argmax(axis=1)
    h = 1e-6
    for wrt in _wrts(model):
        got = explain.saliency(model, X, abs=False, **_kw(wrt, y))
        fd = np.empty_like(X)
        for j in range(X.shape[1]):
            Xp, Xm = X.copy(), X.copy()
            Xp[:, j] += h                      # every row's own F moves only with its own input (eval mode)
            Xm[:, j] -= h
            fd[:, j] = (_F(model, Xp, t, wrt, y) - _F(model, Xm, t, wrt, y)) / (2 * h)
        np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-7 * max(1.0, np.abs(fd).max()), err_msg=wrt)


# -- Integrated Gradients: completeness ------------------------------------------------------------

@pytest.fixture(scope="module", params=["float32", "float64"])
def digits_model(request):
    """A 64-64-32-10 ReLU/tanh network trained on the 8x8 digits (test accuracy ~0.96)."""
    from fastwb import datasets
    pytest.importorskip("sklearn")
    dtype = request.param
    X_train, y_train, X_test, y_test = datasets.load("digits", dtype=dtype)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10),
                          dtype=dtype, rng=0)
    model.fit(X_train, y_train, epochs=20, verbose=False, rng=0)
    assert model.evaluate(X_test, y_test)[1] > 0.93
    return model, X_test[:200], y_test[:200]


@pytest.mark.parametrize("wrt", ["logit", "prob", "loss"])
def test_integrated_gradients_are_complete_within_one_percent(digits_model, wrt):
    """Completeness: each row's attributions sum to its output minus the baseline's
    output within 1% of that difference (1% of the median difference for the few
    rows whose own difference is smaller: a relative error of a near-cancelling
    difference measures nothing), at the default 50 steps for the logit and the
    probability, at 100 for the loss, which bends more along the path (its
    log-sum-exp: at 50 steps 4 rows in 200 miss by up to 1.2%)."""
    model, X, y = digits_model
    t = model.logits(X).argmax(axis=1)
    steps = 100 if wrt == "loss" else 50
    for baseline in (0.0, 0.5):
        attr, delta = explain.integrated_gradients(model, X, baseline=baseline, steps=steps, return_delta=True,
                                                   **_kw(wrt, y))
        base = np.full_like(X, baseline)
        gap = _F(model, X, t, wrt, y) - _F(model, base, t, wrt, y)
        err = np.abs(attr.sum(axis=1, dtype=np.float64) - gap)
        np.testing.assert_array_less(err, 0.01 * np.maximum(np.abs(gap), np.median(np.abs(gap))))
        assert np.median(err / np.abs(gap)) < 0.002
        np.testing.assert_allclose(delta, attr.sum(axis=1, dtype=np.float64) - gap, rtol=1e-4, atol=1e-5)


def test_midpoint_is_exact_for_a_homogeneous_network_and_trapezoid_pays_for_the_kink():
    model = fastwb.MLP([50, 40, 5], rng=2, dtype="float64")         # ReLU, zero biases: f(a x) = a f(x)
    X = np.random.default_rng(0).random((8, 50))
    _, delta = explain.integrated_gradients(model, X, steps=3, return_delta=True)
    np.testing.assert_allclose(delta, 0, atol=1e-12)
    attr, delta = explain.integrated_gradients(model, X, steps=11, method="trapezoid", return_delta=True)
    # at the black baseline every unit sits at 0, gradient 0: the endpoint's weight 1/(2*10) is lost
    np.testing.assert_allclose(delta, -attr.sum(axis=1) / 19, rtol=1e-9)


def test_more_steps_shrink_the_gap():
    model = _build("dense_tanh", "float64")
    X, _ = _data(model, n=4)
    gaps = [np.abs(explain.integrated_gradients(model, X, steps=s, return_delta=True)[1]).max() for s in (2, 8, 32)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


# -- modes ------------------------------------------------------------------------------------

def test_eval_mode_by_default_whatever_the_model_mode():
    model = _build("bn_a1_t1_m0.1", "float64")            # dropout and BatchNorm
    X, y = _data(model, n=8)
    model.train_step(X, y)                                # running statistics away from 0 and 1
    assert model.training
    in_train = {wrt: explain.saliency(model, X, **_kw(wrt, y)) for wrt in _wrts(model)}
    unchanged = _unchanged(model)
    model.eval()
    for wrt, got in in_train.items():
        np.testing.assert_array_equal(got, explain.saliency(model, X, **_kw(wrt, y)))
        np.testing.assert_array_equal(got, explain.saliency(model, X, training=False, **_kw(wrt, y)))
        np.testing.assert_array_equal(got, explain.saliency(model, X, training=np.False_, **_kw(wrt, y)))
        # train mode only when asked for: dropout and batch statistics change the map
        assert not np.allclose(got, explain.saliency(model, X, training=True, **_kw(wrt, y)))
    model.train()
    unchanged()


@pytest.mark.parametrize("bad", [1, 0, "train", "eval", None, 1.0, [True]])
def test_training_must_be_said_with_true_or_false(bad):
    model = _build("dense_dropout", "float64")
    X, _ = _data(model)
    for fn in (explain.saliency, explain.gradient_x_input):
        with pytest.raises(ValueError, match="training must be True or False"):
            fn(model, X, training=bad)


def test_smoothgrad_and_integrated_gradients_run_in_eval_mode_only():
    model = _build("dense_dropout", "float64")
    X, _ = _data(model)
    for fn in (explain.smoothgrad, explain.integrated_gradients):
        with pytest.raises(TypeError, match="training"):
            fn(model, X, training=True)
    a = explain.integrated_gradients(model, X, steps=4)
    model.eval()
    np.testing.assert_array_equal(a, explain.integrated_gradients(model, X, steps=4))


# -- targets --------------------------------------------------------------------------------------

def test_targets_default_to_the_predicted_class():
    model = fastwb.MLP([12, 16, 4], rng=0, dtype="float64")
    X, _ = _data(model, n=20)
    pred = model.predict(X)
    assert len(set(pred.tolist())) > 1
    for wrt in ("logit", "prob"):
        np.testing.assert_array_equal(explain.saliency(model, X, wrt=wrt),
                                      explain.saliency(model, X, target=pred, wrt=wrt))
    np.testing.assert_array_equal(explain.integrated_gradients(model, X, steps=5),
                                  explain.integrated_gradients(model, X, target=pred, steps=5))
    np.testing.assert_array_equal(explain.smoothgrad(model, X, n=3, rng=1),
                                  explain.smoothgrad(model, X, target=pred, n=3, rng=1))
    # one target for all rows
    np.testing.assert_array_equal(explain.saliency(model, X, target=2),
                                  explain.saliency(model, X, target=np.full(20, 2)))
    # the logit of another class is another map
    assert not np.allclose(explain.saliency(model, X, target=(pred + 1) % 4), explain.saliency(model, X))


def test_saliency_of_a_logit_is_the_row_of_the_jacobian():
    model = fastwb.MLP([5, 8, 3], activation="identity", rng=0, dtype="float64")
    X, _ = _data(model, n=4)
    W = model.W[0] @ model.W[1]                            # a linear network: dz/dx = W
    for c in range(3):
        np.testing.assert_allclose(explain.saliency(model, X, target=c, abs=False), np.tile(W[:, c], (4, 1)),
                                   rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(explain.gradient_x_input(model, X, target=1), X * W[:, 1], rtol=1e-12, atol=1e-14)


def test_smoothgrad_with_no_noise_is_saliency_and_seeds_repeat():
    model = _build("dense_tanh", "float64")
    X, _ = _data(model)
    np.testing.assert_allclose(explain.smoothgrad(model, X, sigma=0.0, n=3), explain.saliency(model, X),
                               rtol=1e-14, atol=1e-16)
    a = explain.smoothgrad(model, X, n=5, rng=11)
    np.testing.assert_array_equal(a, explain.smoothgrad(model, X, n=5, rng=np.random.default_rng(11)))
    np.testing.assert_allclose(a, explain.smoothgrad(model, X, n=5, rng=11, batch_size=1), rtol=1e-12)
    assert not np.allclose(a, explain.smoothgrad(model, X, n=5, rng=12))


def test_batch_size_does_not_change_the_maps():
    model = fastwb.MLP([40, 32, 10], rng=0, dtype="float64")
    X, y = _data(model, n=37)
    for wrt in ("logit", "prob", "loss"):
        whole = explain.saliency(model, X, **_kw(wrt, y))
        np.testing.assert_allclose(explain.saliency(model, X, batch_size=5, **_kw(wrt, y)), whole, rtol=1e-12,
                                   atol=1e-15)
    whole = explain.integrated_gradients(model, X, steps=6)
    for b in (1, 10, 36, 100, 1000):
        np.testing.assert_allclose(explain.integrated_gradients(model, X, steps=6, batch_size=b), whole,
                                   rtol=1e-12, atol=1e-15)


# -- bad input ----------------------------------------------------------------------------------

def test_bad_input_is_a_clear_error():
    model = fastwb.MLP([6, 8, 3], rng=0, dtype="float32")
    X, y = _data(model, n=4)
    cases = [
        (TypeError, "fastwb.nn.Sequential", lambda: explain.saliency(object(), X)),
        (TypeError, "dtype float64 but the model is float32", lambda: explain.saliency(model, X.astype(np.float64))),
        (ValueError, r"shape \(n, 6\)", lambda: explain.saliency(model, X[:, :5])),
        (ValueError, r"shape \(n, 6\)", lambda: explain.saliency(model, X[0])),
        (ValueError, "X is empty", lambda: explain.saliency(model, X[:0])),
        (ValueError, "wrt must be one of", lambda: explain.saliency(model, X, wrt="probability")),
        (ValueError, "needs labels", lambda: explain.saliency(model, X, wrt="loss")),
        (ValueError, "target has no meaning", lambda: explain.saliency(model, X, wrt="loss", labels=y, target=0)),
        (ValueError, "labels are used only", lambda: explain.saliency(model, X, labels=y)),
        (ValueError, r"target\[2\] = 3 is not an output index in \[0, 3\)",
         lambda: explain.saliency(model, X, target=[0, 1, 3, 0])),
        (ValueError, r"target = -1 is not an output index", lambda: explain.saliency(model, X, target=-1)),
        (TypeError, "integer output indices", lambda: explain.saliency(model, X, target=[0.0, 1.0, 2.0, 0.0])),
        (ValueError, r"target has shape \(3,\)", lambda: explain.saliency(model, X, target=[0, 1, 2])),
        (ValueError, r"labels\[1\] = 7", lambda: explain.saliency(model, X, wrt="loss", labels=[0, 7, 0, 0])),
        (ValueError, "batch_size must be >= 1", lambda: explain.saliency(model, X, batch_size=0)),
        (TypeError, "batch_size must be an integer", lambda: explain.saliency(model, X, batch_size=2.5)),
        (ValueError, "n must be >= 1", lambda: explain.smoothgrad(model, X, n=0)),
        (ValueError, "sigma must be >= 0", lambda: explain.smoothgrad(model, X, sigma=-0.1)),
        (ValueError, "sigma must be finite", lambda: explain.smoothgrad(model, X, sigma=float("nan"))),
        (TypeError, "rng must be", lambda: explain.smoothgrad(model, X, rng="seed")),
        (ValueError, "method must be one of", lambda: explain.integrated_gradients(model, X, method="gauss")),
        (ValueError, "steps must be >= 2", lambda: explain.integrated_gradients(model, X, steps=1,
                                                                                method="trapezoid")),
        (ValueError, "steps must be >= 1", lambda: explain.integrated_gradients(model, X, steps=0)),
        (ValueError, "baseline must be a number or an array of shape",
         lambda: explain.integrated_gradients(model, X, baseline=np.zeros(5, np.float32))),
        (TypeError, "baseline has dtype float64",
         lambda: explain.integrated_gradients(model, X, baseline=np.zeros(6))),
        (ValueError, "baseline must be finite", lambda: explain.integrated_gradients(model, X, baseline=np.inf)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
    reg = fastwb.nn.Sequential(nn.Linear(6, 2), dtype="float32", rng=0).compile(loss="mse")
    with pytest.raises(ValueError, match="wrt='prob' needs a classifier"):
        explain.saliency(reg, X, wrt="prob")
    with pytest.raises(ValueError, match="targets shaped like the output"):
        explain.saliency(reg, X, wrt="loss", labels=y)
    bn = _build("bn_plain", "float32")
    with pytest.raises(ValueError, match="at least 2 rows"):
        explain.saliency(bn, np.zeros((1, 7), np.float32), training=True)


def test_strided_and_list_inputs_are_accepted():
    model = fastwb.MLP([6, 8, 3], rng=0, dtype="float64")
    X, _ = _data(model, n=4)
    wide = np.zeros((4, 12))
    wide[:, ::2] = X
    np.testing.assert_array_equal(explain.saliency(model, wide[:, ::2]), explain.saliency(model, X))
    np.testing.assert_array_equal(explain.saliency(model, X.tolist()), explain.saliency(model, X))


# -- threads ----------------------------------------------------------------------------------------

def test_thread_counts_give_the_same_bits():
    r = np.random.default_rng(9)
    model = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10),
                          dtype="float32", rng=0)
    X = r.random((700, 784)).astype(np.float32)
    y = r.integers(0, 10, 700)
    model.train_step(X[:64], y[:64])
    runs = {}
    for k in (1, 2, 4):
        with fastwb.threads(k):
            runs[k] = [explain.saliency(model, X), explain.saliency(model, X, wrt="prob", batch_size=300),
                       explain.saliency(model, X, wrt="loss", labels=y, training=True),
                       explain.integrated_gradients(model, X[:100], steps=8, batch_size=256),
                       explain.smoothgrad(model, X[:50], n=4, rng=0)]
    for k in (2, 4):
        for a, b in zip(runs[1], runs[k]):
            assert a.tobytes() == b.tobytes(), k


def test_a_second_thread_on_the_same_model_is_refused():
    model = fastwb.MLP([6, 8, 3], rng=0)
    X, _ = _data(model)
    with model._training_lock:              # as if another thread were inside a training call
        with pytest.raises(RuntimeError, match="already being trained"):
            explain.saliency(model, X)


# -- the plot ---------------------------------------------------------------------------------------

def test_plot_saliency_is_headless():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model = fastwb.MLP([64, 16, 10], rng=0)
    X = np.random.default_rng(0).random((6, 64)).astype(np.float32)
    maps = explain.saliency(model, X)
    fig = explain.plot_saliency(X, maps, shape=(8, 8), titles=[f"image {i}" for i in range(6)], columns=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 4 * 2
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 12
    np.testing.assert_allclose(images[1], maps[0].reshape(8, 8))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    signed = explain.plot_saliency(X.reshape(6, 8, 8), explain.saliency(model, X, abs=False).reshape(6, 8, 8),
                                   shape=(8, 8), cmap="bwr")
    lo, hi = signed.axes[1].images[0].get_clim()
    assert lo == -hi
    for bad, match in [((X, maps[:5], (8, 8)), "must match"), ((X, maps), r"shape \(k, 784\)"),
                       ((X[:0], maps[:0], (8, 8)), "no images")]:
        with pytest.raises(ValueError, match=match):
            explain.plot_saliency(*bad)


def test_plot_saliency_without_matplotlib_names_the_extra():
    X = np.zeros((1, 4))
    with mock.patch.dict(sys.modules, {"matplotlib": None, "matplotlib.figure": None}):
        with pytest.raises(ImportError, match=r'pip install "fastwb\[plots\]"'):
            explain.plot_saliency(X, X, shape=(2, 2))
