"""fastwb.sklearn: scikit-learn's MLPClassifier and MLPRegressor on fastwb's engine (issue 16).

The most telling tests are the equivalence tests: in float64, with the same
``random_state`` (so the same initial weights, which fastwb draws as
scikit-learn does) and ``shuffle=False``, fastwb's estimators give scikit-learn's
loss curve and weights to ~1e-13 for Adam and every SGD variant, with L2 terms,
a last batch smaller than the others, every output layer and the stopping
rules: so alpha's scaling, the batches, Adam's epsilon and the schedules match.
"""

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="fastwb.sklearn needs scikit-learn: pip install 'fastwb[sklearn]'")

from sklearn import neural_network as skn  # noqa: E402
from sklearn.datasets import make_classification, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_regressor_multioutput, parametrize_with_checks  # noqa: E402

import fastwb  # noqa: E402
from fastwb import _blas, _gemm  # noqa: E402
from fastwb.sklearn import MLPClassifier, MLPRegressor, expected_failed_checks  # noqa: E402


# -- scikit-learn's own estimator checks ------------------------------------------------------

@parametrize_with_checks([MLPClassifier(), MLPRegressor()], expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_the_expected_failure_is_only_the_dtype():
    """The one check declared as failing passes in float64."""
    assert set(expected_failed_checks(MLPRegressor())) == {"check_regressor_multioutput"}
    assert expected_failed_checks(MLPClassifier()) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_regressor_multioutput("MLPRegressor", MLPRegressor(dtype="float64"))
        check_regressor_multioutput("MLPRegressor", MLPRegressor(dtype=None))


# -- data ---------------------------------------------------------------------------------------

def _data(kind, n=230):
    if kind == "multiclass":
        return make_classification(n_samples=n, n_features=12, n_informative=6, n_classes=3, random_state=0)
    if kind == "binary":
        X, y = make_classification(n_samples=n, n_features=12, n_informative=6, n_classes=3, random_state=0)
        return X, (y == 1).astype(int)
    if kind == "multilabel":
        return make_multilabel_classification(n_samples=n, n_features=12, n_classes=4, random_state=0)
    X, y = make_regression(n_samples=n, n_features=12, n_targets=3, random_state=0)
    y = y / 100
    return (X, y) if kind == "multioutput" else (X, y[:, 0])


KINDS = ["multiclass", "binary", "multilabel", "regression", "multioutput"]


def _pair(kind):
    return (MLPRegressor, skn.MLPRegressor) if kind in ("regression", "multioutput") else \
        (MLPClassifier, skn.MLPClassifier)


def _fit_both(kind, **kw):
    X, y = _data(kind)
    ours, theirs = _pair(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = ours(dtype="float64", shuffle=False, random_state=1, **kw).fit(X, y)
        b = theirs(shuffle=False, random_state=1, **kw).fit(X, y)
    return a, b


def _same_training(a, b, rtol=1e-10):
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=rtol)
    assert a.loss_ == pytest.approx(b.loss_, rel=rtol)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert p.shape == q.shape
        np.testing.assert_allclose(p, q, rtol=rtol, atol=rtol * np.abs(q).max())


SOLVERS = {
    "adam": dict(solver="adam"),
    "adam_alpha_last_batch": dict(solver="adam", alpha=0.5, batch_size=64),     # 230 = 3 x 64 + 38
    "sgd_nesterov": dict(solver="sgd"),
    "sgd_momentum": dict(solver="sgd", nesterovs_momentum=False),
    "sgd_plain": dict(solver="sgd", momentum=0.0),
    "sgd_invscaling_alpha": dict(solver="sgd", alpha=0.3, batch_size=50, learning_rate="invscaling",
                                 learning_rate_init=0.05),
    "sgd_momentum_invscaling": dict(solver="sgd", nesterovs_momentum=False, learning_rate="invscaling",
                                    learning_rate_init=0.05),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_same_training_as_sklearn_float64(kind, solver):
    a, b = _fit_both(kind, max_iter=12, **SOLVERS[solver])
    _same_training(a, b)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh"])
def test_same_training_other_activations_and_depths(activation):
    a, b = _fit_both("multiclass", max_iter=10, activation=activation, hidden_layer_sizes=(7, 5))
    _same_training(a, b)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_same_early_stopping_as_sklearn(kind):
    """The same validation split (random_state drawn in scikit-learn's order), scores,
    stop and restored best weights."""
    a, b = _fit_both(kind, max_iter=60, early_stopping=True, validation_fraction=0.2, n_iter_no_change=3,
                     learning_rate_init=0.01)
    _same_training(a, b)
    np.testing.assert_allclose(a.validation_scores_, b.validation_scores_, rtol=1e-10)
    assert a.best_validation_score_ == pytest.approx(b.best_validation_score_, rel=1e-10)
    assert a.best_loss_ is None and b.best_loss_ is None


def test_same_stopping_rule_as_sklearn():
    """tol / n_iter_no_change stop training at the same epoch, before max_iter, with no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        a, b = _fit_both("multiclass", max_iter=200, tol=1e-2, n_iter_no_change=2, learning_rate_init=0.01)
    assert a.n_iter_ < 200
    _same_training(a, b)
    assert a.best_loss_ == pytest.approx(b.best_loss_, rel=1e-10) == pytest.approx(min(a.loss_curve_))


def test_same_adaptive_learning_rate_as_sklearn():
    """'adaptive' divides the rate by 5 where scikit-learn does (the Nesterov buffer carries over)."""
    a, b = _fit_both("multiclass", solver="sgd", learning_rate="adaptive", learning_rate_init=0.2, tol=0.05,
                     n_iter_no_change=1, max_iter=25)
    _same_training(a, b)
    assert a._lr == pytest.approx(b._optimizer.learning_rate) and a._lr < 0.2


def test_same_partial_fit_and_warm_start_as_sklearn():
    X, y = _data("multiclass")
    a = MLPClassifier(dtype="float64", shuffle=False, random_state=3, solver="sgd", learning_rate="invscaling",
                      learning_rate_init=0.1)
    b = skn.MLPClassifier(shuffle=False, random_state=3, solver="sgd", learning_rate="invscaling",
                          learning_rate_init=0.1)
    for k in range(3):
        a.partial_fit(X[k * 70:(k + 1) * 70], y[k * 70:(k + 1) * 70], classes=[0, 1, 2])
        b.partial_fit(X[k * 70:(k + 1) * 70], y[k * 70:(k + 1) * 70], classes=[0, 1, 2])
    _same_training(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.set_params(warm_start=True, max_iter=4).fit(X, y)
        b.set_params(warm_start=True, max_iter=4).fit(X, y)
    _same_training(a, b)
    assert len(a.loss_curve_) == 7


def test_float32_close_to_sklearn_float32():
    X, y = _data("multiclass")
    X = X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(shuffle=False, random_state=1, max_iter=10).fit(X, y)
        b = skn.MLPClassifier(shuffle=False, random_state=1, max_iter=10).fit(X, y)
    assert a.coefs_[0].dtype == b.coefs_[0].dtype == np.float32
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-4)
    for p, q in zip(a.coefs_, b.coefs_):
        np.testing.assert_allclose(p, q, atol=1e-4 * np.abs(q).max())


# -- attributes and behaviour -----------------------------------------------------------------

@pytest.mark.parametrize("kind,outputs,activation", [("multiclass", 3, "softmax"), ("binary", 1, "logistic"),
                                                     ("multilabel", 4, "logistic"), ("regression", 1, "identity"),
                                                     ("multioutput", 3, "identity")])
def test_fitted_attributes(kind, outputs, activation):
    X, y = _data(kind)
    est = _pair(kind)[0](hidden_layer_sizes=(9, 5), max_iter=7, random_state=0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        est.fit(X, y)
    assert est.n_features_in_ == 12 and est.n_layers_ == 4 and est.n_outputs_ == outputs
    assert est.out_activation_ == activation
    assert [c.shape for c in est.coefs_] == [(12, 9), (9, 5), (5, outputs)]
    assert [b.shape for b in est.intercepts_] == [(9,), (5,), (outputs,)]
    assert all(c.dtype == np.float32 for c in est.coefs_ + est.intercepts_)
    assert est.n_iter_ == 7 and len(est.loss_curve_) == 7 and est.t_ == 7 * len(X)
    assert est.loss_ == est.loss_curve_[-1] and est.best_loss_ == min(est.loss_curve_)
    assert est.validation_scores_ is None and est.best_validation_score_ is None
    assert not hasattr(est, "feature_names_in_")
    assert isinstance(est.model_, fastwb.nn.Sequential)
    # coefs_ are views of the model: writing them changes predictions
    before = est.predict(X[:5])
    est.coefs_[-1][...] = 0
    est.intercepts_[-1][...] = 0
    after = est.predict(X[:5])
    if kind in ("regression", "multioutput"):
        assert np.all(after == 0) and not np.all(before == 0)


def test_early_stopping_attributes_and_restored_weights():
    X, y = _data("multiclass", 400)
    est = MLPClassifier(early_stopping=True, n_iter_no_change=2, max_iter=300, random_state=0,
                        learning_rate_init=0.05).fit(X, y)
    assert est.best_loss_ is None and len(est.validation_scores_) == est.n_iter_ < 300
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.n_iter_ - 1 - int(np.argmax(est.validation_scores_)) > 2     # stopped after the best epoch...
    # ... with the best epoch's weights: the held-out 10% scores as it did then
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    rs = check_random_state(0)
    for w in est.coefs_:        # the draws of the initial weights come first
        rs.uniform(size=w.size + w.shape[1])
    _, test = train_test_split(np.arange(len(X)), random_state=rs, test_size=0.1)
    assert est.score(X[test], y[test]) == pytest.approx(est.best_validation_score_)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        est.partial_fit(X, y)


def test_verbose_prints_sklearn_lines(capsys):
    X, y = _data("multiclass")
    MLPClassifier(max_iter=3, tol=10.0, n_iter_no_change=1, verbose=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out.splitlines()
    # epoch 1 sets best_loss_; epochs 2 and 3 do not beat it by tol: 2 > n_iter_no_change stops
    assert out[0].startswith("Iteration 1, loss = ") and out[2].startswith("Iteration 3, loss = ")
    assert out[3] == "Training loss did not improve more than tol=10.000000 for 1 consecutive epochs. Stopping."
    assert len(out) == 4


def test_partial_fit():
    X, y = _data("multiclass")
    est = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(X, y)
    est.partial_fit(X[:100], y[:100], classes=np.array([0, 1, 2]))
    assert est.n_iter_ == 1 and est.t_ == 100
    est.partial_fit(X[100:], y[100:])
    assert est.n_iter_ == 1 and est.t_ == len(X) and len(est.loss_curve_) == 2
    with pytest.raises(ValueError, match="not the same as on last call"):
        est.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="classes not in"):
        est.partial_fit(X, y + 5)
    # classes absent from the first batch are known from classes=
    est = MLPClassifier(random_state=0).partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2])
    assert est.predict_proba(X).shape == (len(X), 3)
    reg = MLPRegressor(random_state=0).partial_fit(*_data("regression"))
    assert reg.n_iter_ == 1


def test_pickle_round_trip_and_continue():
    X, y = _data("multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(max_iter=5, random_state=0).fit(X, y)
    other = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(other.predict_proba(X), est.predict_proba(X))
    assert other.loss_curve_ == est.loss_curve_ and other.get_params() == est.get_params()
    est.partial_fit(X, y)
    other.partial_fit(X, y)     # the optimizer's state travelled too
    np.testing.assert_array_equal(other.coefs_[0], est.coefs_[0])


def test_pipeline_grid_search_cross_val_score():
    X, y = _data("multiclass", 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0, learning_rate_init=0.01))
        scores = cross_val_score(pipe, X, y, cv=3)
        assert scores.shape == (3,) and scores.mean() > 0.6
        grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1], "mlpclassifier__hidden_layer_sizes":
                                   [(8,), (16, 8)]}, cv=3).fit(X, y)
        assert grid.best_estimator_.score(X, y) > 0.7
        reg = GridSearchCV(MLPRegressor(max_iter=30, random_state=0), {"alpha": [1e-4, 1.0]}, cv=3)
        reg.fit(*_data("regression", 300))
    assert set(grid.cv_results_["params"][0]) == {"mlpclassifier__alpha", "mlpclassifier__hidden_layer_sizes"}


def test_multilabel():
    X, Y = _data("multilabel", 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(max_iter=60, random_state=0).fit(X, Y)
    pred, proba = est.predict(X), est.predict_proba(X)
    assert pred.shape == Y.shape and set(np.unique(pred)) <= {0, 1} and proba.shape == Y.shape
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(pred.dtype))
    assert np.all((proba >= 0) & (proba <= 1)) and est.score(X, Y) > 0.4     # subset accuracy
    np.testing.assert_array_equal(est.classes_, np.arange(4))


def test_multioutput_regression():
    X, Y = _data("multioutput", 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPRegressor(max_iter=150, random_state=0, learning_rate_init=0.01).fit(X, Y)
    assert est.predict(X).shape == Y.shape and est.score(X, Y) > 0.9
    assert est.predict(X[:1]).shape == (1, 3)


@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]), np.array([3, 7, 42]), np.array(["no", "yes"])])
def test_string_and_gapped_labels(labels):
    X, y = _data("multiclass", 300)
    y = y % len(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(max_iter=40, random_state=0, learning_rate_init=0.01).fit(X, labels[y])
        plain = MLPClassifier(max_iter=40, random_state=0, learning_rate_init=0.01).fit(X, y)
    np.testing.assert_array_equal(est.classes_, np.sort(labels))
    pred = est.predict(X)
    assert pred.dtype == labels.dtype and set(pred) <= set(labels)
    np.testing.assert_array_equal(pred, np.sort(labels)[plain.predict(X)])     # labels are only names
    proba = est.predict_proba(X)
    assert proba.shape == (300, len(labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(est.predict_log_proba(X), np.log(proba), rtol=1e-6)
    assert est.score(X, labels[y]) > 0.7


def test_sparse_input_equals_dense():
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _data("multiclass")
    X[np.abs(X) < 0.8] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(max_iter=5, random_state=0).fit(sparse.csr_matrix(X), y)
        b = MLPClassifier(max_iter=5, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(sparse.csc_matrix(X)), b.predict_proba(X))


def test_bad_input():
    X, y = _data("multiclass")
    with pytest.raises(ValueError, match=r"lbfgs.*scikit-learn's own sklearn.neural_network.MLPClassifier"):
        MLPClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="solver='adam'"):
        MLPRegressor(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, y)
    for bad in (dict(hidden_layer_sizes=(10, 0)), dict(alpha=-1), dict(dtype="float16"), dict(dropout=1.0),
                dict(n_threads=0), dict(activation="gelu"), dict(batch_size=0)):
        with pytest.raises(ValueError):
            MLPClassifier(**bad).fit(X, y)
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    with pytest.raises(NotFittedError):
        MLPClassifier().coefs_
    est = MLPClassifier(max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="X has 5 features, but MLPClassifier is expecting 12"):
        est.predict(X[:, :5])
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPClassifier().fit(Xn, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, y + 0.5)
    with pytest.warns(UserWarning, match="batch_size"):
        MLPClassifier(batch_size=1000, max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="non-finite"):
        MLPRegressor(learning_rate_init=1e6, solver="sgd", max_iter=3).fit(X * 1e30, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtypes(dtype):
    X, y = _data("multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(dtype=dtype, max_iter=20, random_state=0, learning_rate_init=0.01)
        est.fit(X.astype(np.float32), y)
        assert all(c.dtype == dtype for c in est.coefs_ + est.intercepts_)
        assert est.predict_proba(X).dtype == dtype and est.score(X, y) > 0.7
        auto = MLPClassifier(dtype=None, max_iter=2, random_state=0)
        assert auto.fit(X.astype(dtype), y).coefs_[0].dtype == dtype      # as scikit-learn: X's float dtype
        assert auto.fit(X.astype(np.int64), y).coefs_[0].dtype == np.float64


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_one_and_two_threads_give_the_same_bits(kind):
    X, y = _data(kind, 600)
    X = np.repeat(X, 8, axis=1)         # wide enough for the kernels to split work
    fits = []
    for n in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = _pair(kind)[0](hidden_layer_sizes=(256,), max_iter=4, batch_size=300, n_threads=n,
                                 alpha=1e-3, random_state=0).fit(X, y)
        fits.append(est)
    a, b = fits
    assert a.loss_curve_ == b.loss_curve_
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_batchnorm_and_dropout():
    X, y = _data("multiclass", 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=30, random_state=0,
                              learning_rate_init=0.01).fit(X, y)
        bn = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=30, random_state=0, batchnorm=True,
                           learning_rate_init=0.01).fit(X, y)
        drop = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=30, random_state=0, dropout=0.2,
                             learning_rate_init=0.01).fit(X, y)
        again = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=30, random_state=0, dropout=0.2,
                              learning_rate_init=0.01).fit(X, y)
    kinds = [type(layer).__name__ for layer in bn.model_.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [c.shape for c in bn.coefs_] == [c.shape for c in plain.coefs_]
    assert "Dropout" in [type(layer).__name__ for layer in drop.model_.layers]
    assert drop.loss_curve_ != plain.loss_curve_ and bn.loss_curve_ != plain.loss_curve_
    np.testing.assert_array_equal(drop.coefs_[0], again.coefs_[0])      # seeded by random_state
    assert min(bn.score(X, y), drop.score(X, y)) > 0.75


def test_engine_fit_without_training_metrics():
    """Sequential.fit(train_metrics=False), which the estimators use: the same training, no
    metric in the logs (for mse and bce_with_logits that metric is an inference pass over X)."""
    X, y = _data("multioutput")
    X = X.astype(np.float32)
    y = y.astype(np.float32)
    histories, params, calls = [], [], []
    for flag in (True, False):
        model = fastwb.nn.Sequential(fastwb.nn.Linear(12, 8), fastwb.nn.ReLU(), fastwb.nn.Linear(8, 3), rng=0)
        model.compile("adam", loss="mse")
        logits = model.logits
        model.logits = lambda *a, **k: calls.append(flag) or logits(*a, **k)
        histories.append(model.fit(X, y, epochs=3, batch_size=50, rng=1, verbose=False, train_metrics=flag))
        params.append(model.params.copy())
    np.testing.assert_array_equal(params[0], params[1])
    assert histories[0]["loss"] == histories[1]["loss"]
    assert len(histories[0]["r2"]) == 3 and histories[1]["r2"] == [] and histories[1]["mse"] == []
    assert calls == [True] * 3


# -- optional dependency and BLAS ------------------------------------------------------------

def _python(code, folder, **env):
    """Run ``code`` in a fresh interpreter from a neutral ``folder`` (the installed fastwb, not a
    source tree's)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                          cwd=folder)


def test_import_fastwb_does_not_import_sklearn_and_a_missing_one_names_the_extra(tmp_path):
    out = _python("import sys, fastwb; fastwb.nn; print('sklearn' in sys.modules, 'scipy' in sys.modules)", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    out = _python("import sys; sys.modules['sklearn'] = None\nimport fastwb.sklearn", tmp_path)
    assert out.returncode != 0
    assert "fastwb.sklearn needs sklearn: pip install 'fastwb[sklearn]'" in out.stderr.strip().splitlines()[-1]


def _openblas_folders():
    return {os.path.basename(os.path.dirname(p)) for p in _blas._loaded_libraries() if "openblas" in p.lower()}


def test_gemm_stays_numpys_blas_with_sklearn_imported():
    """scikit-learn brings SciPy's own OpenBLAS into the process; fastwb's GEMMs must stay
    bound to NumPy's (DESIGN.md: alternating two OpenBLAS pools halves both)."""
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS, as scikit-learn does)
    X, y = _data("multiclass")
    MLPClassifier(max_iter=2).fit(X, y)
    numpy_libs = os.path.dirname(os.path.dirname(np.__file__))
    for info in (_blas.info(), _blas.find()):       # as bound at import, and found again now
        assert _gemm.available() and info["gemm"].startswith("tiled")
        assert os.path.dirname(info["library"]) == os.path.join(numpy_libs, "numpy.libs"), info
    if "scipy.libs" not in _openblas_folders():
        pytest.skip("SciPy's wheel brings no OpenBLAS of its own here: nothing to tell apart")


def test_gemm_stays_numpys_blas_when_sklearn_comes_first(tmp_path):
    code = ("import sklearn.neural_network, scipy.linalg, numpy as np, os\n"
            "from fastwb.sklearn import MLPClassifier\nfrom fastwb import _blas\n"
            "X = np.random.default_rng(0).random((50, 4)); y = np.arange(50) % 2\n"
            "MLPClassifier(max_iter=2).fit(X, y)\n"
            "print(_blas.info()['library']); print(os.path.dirname(os.path.dirname(np.__file__)))")
    out = _python(code, tmp_path, PYTHONWARNINGS="ignore")
    assert out.returncode == 0, out.stderr
    library, site = out.stdout.split()
    assert os.path.dirname(library) == os.path.join(site, "numpy.libs")
