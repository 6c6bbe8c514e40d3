"""scikit-learn estimators trained by fastwb's engine: :class:`MLPClassifier`
and :class:`MLPRegressor`.

    from fastwb.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=20, random_state=0).fit(X, y)
    clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)

They take scikit-learn's constructor arguments (names and defaults of
``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor``), keep its fitted
attributes, and follow its training rules: the same initial weights for the
same ``random_state`` (Glorot uniform, drawn in scikit-learn's order), the
same L2 term (``alpha``), mini-batches, Adam and SGD updates, learning-rate
schedules, early stopping and stopping rule (``tol``, ``n_iter_no_change``,
``loss_curve_`` of the per-epoch mean training loss with the L2 term, a
``ConvergenceWarning`` at ``max_iter``).  What differs: the arithmetic runs
in fastwb's fused kernels (float32 by default: ``dtype``), shuffling draws
other permutations than scikit-learn's, the ``lbfgs`` solver and sample
weights are not offered, and fastwb adds ``dtype``, ``batchnorm``,
``dropout`` and ``n_threads``.

How scikit-learn's objective maps onto the engine (each batch of ``B`` rows):

* scikit-learn minimises ``loss + 0.5 * alpha * ||W||^2 / B`` (coefficients
  only, not intercepts), so each Linear weight gets the coupled weight decay
  ``alpha / B`` of a parameter group (``Sequential.compile(groups=...)``), the
  optimizer's ``d = g + wd * p``; the last, smaller batch of an epoch gets
  ``alpha / B_last``, as scikit-learn divides by the batch's real size.
* its output gradient is ``(p - y) / B`` for every output layer (softmax with
  log-loss, logistic with binary log-loss summed over the outputs, identity
  with half the squared error summed over the outputs).  fastwb's losses are
  means over all ``B * k`` outputs (and its MSE is not halved), so their
  gradients are ``s`` times scikit-learn's, ``s = 1/k`` (binary
  cross-entropy) or ``2/k`` (squared error).  The factor is absorbed exactly
  into the hyperparameters: SGD runs with ``lr / s``, Adam with ``eps * s``,
  weight decay ``s * alpha / B``; reported losses are converted back.
* scikit-learn's Adam puts ``epsilon`` beside ``sqrt(v)`` before the bias
  correction (``lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)``), PyTorch's after it;
  :class:`_SklearnAdam` passes ``eps / sqrt(1 - b2^t)`` to the fused kernel,
  which is scikit-learn's update.  Its SGD momentum is the slides' form
  (velocity carries the learning rate: fastwb's ``Momentum``); Nesterov's
  runs as PyTorch's nesterov SGD, whose buffer is rescaled when the learning
  rate changes (``invscaling``, ``adaptive``) so that it stays scikit-learn's
  velocity.

Importing this module imports scikit-learn (``pip install 'fastwb[sklearn]'``);
``import fastwb`` never does.
"""

import contextlib
import numbers
import warnings

import numpy as np

from fastwb._extras import require

require("sklearn.base", "fastwb.sklearn", "sklearn")

from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import accuracy_score, r2_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import LabelBinarizer  # noqa: E402
from sklearn.utils import check_random_state, column_or_1d  # noqa: E402
from sklearn.utils._param_validation import Interval, Options, StrOptions  # noqa: E402
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels  # noqa: E402
from sklearn.utils.validation import check_is_fitted  # noqa: E402

try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:         # scikit-learn < 1.6: the method of BaseEstimator
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from fastwb import _optim, nn, optim  # noqa: E402
from fastwb._runtime import threads as _threads  # noqa: E402

__all__ = ["MLPClassifier", "MLPRegressor", "EXPECTED_FAILED_CHECKS", "expected_failed_checks"]

_HIDDEN = {"identity": nn.Identity, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}

#: scikit-learn estimator checks these estimators are known not to pass, with the reason
#: (``parametrize_with_checks(..., expected_failed_checks=expected_failed_checks)``)
EXPECTED_FAILED_CHECKS = {
    "MLPRegressor": {
        "check_regressor_multioutput": "predictions are in the estimator's dtype, float32 by default, and the check "
                                       "wants float64 (it passes with dtype='float64' or dtype=None)",
    },
}


def expected_failed_checks(estimator):
    """``{check name: reason}`` of the scikit-learn checks ``estimator`` fails by design
    (for ``parametrize_with_checks`` / ``check_estimator``'s ``expected_failed_checks``)."""
    return dict(EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {}))


# -- the optimizers: fastwb's fused updates with scikit-learn's rules ---------------------------

class _Steps:
    """What one fit needs to see at every step: the batch sizes of an epoch (to
    give each batch its weight decay ``alpha / B``), and the L2 term of the
    loss, ``0.5 * alpha * ||W||^2`` with the weights the batch was computed
    with (summed over the epoch's batches; scikit-learn adds it per batch,
    divided by ``B``, to a loss it then weighs by ``B``)."""

    def __init__(self, n, batch, alpha, scale, weights):
        self.n, self.batch, self.alpha, self.scale = n, batch, alpha, scale
        self.weights = [w.reshape(-1) for w in weights]
        self.steps_per_epoch = -(-n // batch)
        self.rows = None            # the batch size the groups' weight decay is set for
        self.epoch_start()

    def epoch_start(self):
        self.k = 0
        self.l2 = 0.0

    def before(self, opt):
        rows = min(self.batch, self.n - self.k * self.batch)
        if rows <= 0:
            raise RuntimeError("fastwb.sklearn: the engine ran more steps in an epoch than its batches")
        self.k += 1
        if self.alpha:
            # NumPy's own single-threaded SIMD loop (not BLAS: the same bits at any thread count),
            # 3x faster than fastwb's double-accumulating one for this report-only sum
            sq = sum(float(np.einsum("i,i->", w, w)) for w in self.weights)
            self.l2 += 0.5 * self.alpha * sq
            if rows != self.rows:
                wd = self.scale * self.alpha / rows
                for g in opt.groups:
                    g["weight_decay"] = wd
                self.rows = rows


class _SklearnSteps:
    """Mixin of the optimizers below: before each update, the fit's :class:`_Steps`
    (if any) sees it.  The hook is not pickled (it holds views of the model)."""

    _steps = None

    def _apply(self, grads):
        if self._steps is not None:
            self._steps.before(self)
        super()._apply(grads)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_steps", None)
        return state


class _SklearnAdam(_SklearnSteps, optim.Adam):
    """Adam with scikit-learn's epsilon: ``p -= lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``,
    which is the fused kernel's ``step_size * m / (sqrt(v)/bc2 + eps')`` with ``eps' = eps / bc2``."""

    def _update(self, p, g, state, mask, seg, h, step, n_threads):
        beta1, beta2 = h["betas"]
        t = float(step)
        step_size = h["lr"] / (1 - beta1 ** t)
        bc2_sqrt = (1 - beta2 ** t) ** 0.5
        _optim.adam(p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), mask, seg,
                    beta1, beta2, h["eps"] / bc2_sqrt, h["weight_decay"], h["l1"], 1.0, step_size, bc2_sqrt,
                    n_threads)


class _SklearnSGD(_SklearnSteps, optim.SGD):
    """Plain SGD (momentum 0) and Nesterov's momentum (PyTorch's form: see :func:`_set_lr`)."""


class _SklearnMomentum(_SklearnSteps, optim.Momentum):
    """Momentum as scikit-learn writes it: ``v = mu v - lr g; p += v``."""


def _set_lr(opt, lr):
    """Set an optimizer's learning rate between epochs.  PyTorch's SGD buffer ``b`` is
    scikit-learn's velocity divided by ``-lr``: rescaled so the velocity carries over."""
    old = opt.hyper["lr"]
    if lr == old:
        return
    if isinstance(opt, _SklearnSGD) and old > 0:
        for state in opt.state:
            buf = state.get("momentum_buffer")
            if buf is not None:
                buf *= old / lr
    opt.hyper["lr"] = lr


# -- the estimators ----------------------------------------------------------------------------

class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share (not for direct use)."""

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"), Options(numbers.Real, {np.inf})],
        "dtype": [StrOptions({"float32", "float64"}), None],
        "batchnorm": ["boolean"],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    # -- checks ------------------------------------------------------------------------------
    def _check_params(self):
        if isinstance(self.solver, str) and self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not available in fastwb.sklearn (its training runs fastwb's "
                             "mini-batch engine): use scikit-learn's own sklearn.neural_network."
                             f"{type(self).__name__}(solver='lbfgs'), or solver='adam' or 'sgd' here")
        self._validate_params()
        hidden = self.hidden_layer_sizes
        hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
        if any(not isinstance(h, numbers.Integral) or isinstance(h, bool) or h <= 0 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden}.")
        return [int(h) for h in hidden]

    def _threads(self):
        return _threads(self.n_threads) if self.n_threads is not None else contextlib.nullcontext()

    def _dense(self, X, dtype):
        """X as a C-contiguous array of the model's dtype (sparse input made dense)."""
        if hasattr(X, "toarray"):
            X = X.toarray()
        return np.ascontiguousarray(X, dtype=dtype)

    def _input(self, X, reset, **kwargs):
        return _validate_data(self, X, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32), reset=reset,
                              **kwargs)

    # -- the network -------------------------------------------------------------------------
    def _build(self, layer_units, dtype, rs):
        """The Sequential for ``layer_units`` with scikit-learn's initial weights, drawn from
        ``rs`` in its order: Glorot uniform, bound sqrt(6 / (fan_in + fan_out)) (2 instead of 6
        for logistic units), each layer's weights then its intercepts."""
        layers = []
        last = len(layer_units) - 2
        for i, (fan_in, fan_out) in enumerate(zip(layer_units[:-1], layer_units[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i != last:
                if self.batchnorm:
                    layers.append(nn.BatchNorm1d(fan_out))
                layers.append(_HIDDEN[self.activation]())
                if self.dropout:
                    layers.append(nn.Dropout(float(self.dropout)))
        model = nn.Sequential(*layers, dtype=dtype, rng=0)
        factor = 2.0 if self.activation == "logistic" else 6.0
        for W, b in zip(model.W, model.b):
            bound = np.sqrt(factor / (W.shape[0] + W.shape[1]))
            W[...] = rs.uniform(-bound, bound, W.shape)
            b[...] = rs.uniform(-bound, bound, b.shape[0])
        return model

    def _initialize(self, layer_units, dtype, rs):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = layer_units[-1]
        self.n_layers_ = len(layer_units)
        self.model_ = self._build(layer_units, dtype, rs)
        self.model_.loss = nn.LOSSES[self._loss_name()]
        self._best = (self.model_.params.copy(), self.model_.buffers.copy())    # restored by early stopping
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _scale(self):
        """fastwb's output gradient over scikit-learn's (see the module's docstring)."""
        k = self.n_outputs_
        return {"cross_entropy": 1.0, "bce_with_logits": 1.0 / k, "mse": 2.0 / k}[self.model_.loss.name]

    def _loss_factor(self):
        """scikit-learn's loss over fastwb's mean loss."""
        return {"cross_entropy": 1.0, "bce_with_logits": float(self.n_outputs_), "mse": 0.5}[self.model_.loss.name]

    def _compile(self):
        """A fresh optimizer with scikit-learn's hyperparameters, scaled by :meth:`_scale`."""
        model, s = self.model_, self._scale()
        if self.solver == "adam":
            opt = _SklearnAdam([model.params], lr=float(self.learning_rate_init),
                               betas=(float(self.beta_1), float(self.beta_2)), eps=float(self.epsilon) * s)
        elif self.momentum == 0:
            opt = _SklearnSGD([model.params], lr=float(self.learning_rate_init) / s)
        elif self.nesterovs_momentum:
            opt = _SklearnSGD([model.params], lr=float(self.learning_rate_init) / s,
                              momentum=float(self.momentum), nesterov=True)
        else:
            opt = _SklearnMomentum([model.params], lr=float(self.learning_rate_init) / s,
                                   momentum=float(self.momentum))
        # one group for the Linear weights ("*.weight" is theirs alone without BatchNorm): one fused
        # pass for the weights and one for the rest at every step
        linear = [i for i, layer in enumerate(model.layers) if isinstance(layer, nn.Linear)]
        patterns = [f"{i}.weight" for i in linear] if self.batchnorm else ["*.weight"]
        groups = {p: {"weight_decay": 0.0} for p in patterns} if self.alpha else None
        model.compile(opt, groups=groups)
        self._lr = float(self.learning_rate_init)       # scikit-learn's current learning rate

    # -- training ----------------------------------------------------------------------------
    def _fit(self, X, y, incremental):
        hidden = self._check_params()
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        layer_units = [X.shape[1]] + hidden + [self._width(Y)]
        rs = check_random_state(self.random_state)
        if first_pass:
            dtype = np.dtype(self.dtype) if self.dtype is not None else X.dtype
            self._initialize(layer_units, dtype, rs)
        else:
            have = [self.model_.in_features] + [w.shape[1] for w in self.model_.W]
            if have != layer_units:
                raise ValueError(f"the network has layer sizes {have}, but these parameters and data need "
                                 f"{layer_units}; fit without warm_start")
        model = self.model_
        X = self._dense(X, model.dtype)
        T = self._targets(Y)
        if not incremental or not isinstance(model.optimizer, _SklearnSteps):
            self._compile()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        val = None
        if self.early_stopping:
            stratify = Y if isinstance(self, ClassifierMixin) and self.n_outputs_ == 1 else None
            train, test = train_test_split(np.arange(X.shape[0]), random_state=rs,
                                           test_size=self.validation_fraction, stratify=stratify)
            if test.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
            val = (X[test], self._score_targets(Y, test))
            X, T = X[train], T[train]
        if first_pass:
            model.seed = int(rs.randint(np.iinfo(np.int32).max))        # dropout masks
        seed = int(rs.randint(np.iinfo(np.int32).max))                  # the epochs' shuffles
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n))
        steps = _Steps(n, batch, float(self.alpha), self._scale(), model.W)
        model.optimizer._steps = steps
        epochs = 1 if incremental else self.max_iter
        self.n_iter_ = 0
        try:
            with self._threads():
                model.fit(X, T, epochs=epochs, batch_size=batch, shuffle=bool(self.shuffle), rng=seed,
                          verbose=False, callbacks=[_Epochs(self, steps, n, val, incremental)], train_metrics=False)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        finally:
            model.optimizer._steps = None
        if self.early_stopping:
            model.params[...], model.buffers[...] = self._best
        if not np.isfinite(model.params).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             "values and need to be preprocessed.")
        return self

    def _end_epoch(self, steps, n, logs, val, incremental):
        """scikit-learn's bookkeeping after an epoch; returns whether to stop."""
        if steps.k != steps.steps_per_epoch:
            raise RuntimeError(f"fastwb.sklearn: the engine ran {steps.k} steps in an epoch of "
                               f"{steps.steps_per_epoch} batches")
        self.n_iter_ += 1
        self.loss_ = float(logs["loss"] * self._loss_factor() + steps.l2 / n)
        steps.epoch_start()
        self.t_ += n
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
        self._update_no_improvement_count(val)
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            self._lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
            _set_lr(self.model_.optimizer, self._lr / self._scale())
        if self._no_improvement_count > self.n_iter_no_change:
            what = "Validation score did not improve" if val is not None else "Training loss did not improve"
            msg = f"{what} more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
            if self.solver == "sgd" and self.learning_rate == "adaptive":
                if self._lr <= 1e-6:
                    if self.verbose:
                        print(msg + " Learning rate too small. Stopping.")
                    return True
                self._lr /= 5.0
                _set_lr(self.model_.optimizer, self._lr / self._scale())
                if self.verbose:
                    print(msg + " Setting learning rate to %f" % self._lr)
                self._no_improvement_count = 0
            else:
                if self.verbose:
                    print(msg + " Stopping.")
                return True
        if incremental:
            return True
        if self.n_iter_ == self.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization hasn't "
                          "converged yet." % self.max_iter, ConvergenceWarning)
        return False

    def _update_no_improvement_count(self, val):
        if val is not None:
            score = self._validation_score(*val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best = (self.model_.params.copy(), self.model_.buffers.copy())
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _validation_score(self, X, y):
        pred = self._output(X)
        if not np.isfinite(pred).all():
            return np.nan
        return float(self._score_function(y, self._decode(pred)))

    # -- inference ---------------------------------------------------------------------------
    def _output(self, X):
        """The output layer's activations (softmax, logistic or identity) for dense X."""
        with self._threads():
            return self.model_.predict_proba(X)

    def _forward(self, X):
        check_is_fitted(self)
        X = self._input(X, reset=False)
        return self._output(self._dense(X, self.model_.dtype))

    @property
    def coefs_(self):
        """The Linear layers' weights, ``(fan_in, fan_out)`` each: views of the model's parameters."""
        check_is_fitted(self, "model_")
        return list(self.model_.W)

    @property
    def intercepts_(self):
        """The Linear layers' biases: views of the model's parameters."""
        check_is_fitted(self, "model_")
        return list(self.model_.b)

    def __setstate__(self, state):
        super().__setstate__(state)
        model = self.__dict__.get("model_")
        if model is not None and not all(a.flags.writeable for a in (model.params, model.buffers,
                                                                      model.num_batches_tracked)):
            self.model_ = model.copy()      # read-only arrays (joblib.load(..., mmap_mode="r")): own copies

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _more_tags(self):           # scikit-learn < 1.6
        return {"multioutput": True}


class _Epochs(nn.Callback):
    """The engine's epoch callback: scikit-learn's per-iteration logic."""

    def __init__(self, estimator, steps, n, val, incremental):
        self.estimator, self.steps, self.n, self.val, self.incremental = estimator, steps, n, val, incremental

    def on_epoch_end(self, epoch, logs):
        if self.estimator._end_epoch(self.steps, self.n, logs, self.val, self.incremental):
            self.model.stop_training = True


_DOC_PARAMS = """
    Parameters (scikit-learn's, with its defaults)
    ----------------------------------------------
    hidden_layer_sizes : array-like of int, default=(100,)
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
    solver : {"adam", "sgd"}, default="adam"; "lbfgs" is a ValueError (use scikit-learn's own)
    alpha : float, default=1e-4, L2 strength: ``0.5 * alpha * ||W||^2 / batch_rows`` added to the loss
    batch_size : int or "auto" (``min(200, n_samples)``)
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant" (sgd only)
    learning_rate_init : float, default=1e-3
    power_t : float, default=0.5 (sgd with invscaling)
    max_iter : int, default=200 (epochs)
    shuffle : bool, default=True
    random_state : int, RandomState or None: initial weights (scikit-learn's for the same value),
        the early-stopping split (scikit-learn's too), the shuffles and dropout masks
    tol : float, default=1e-4
    verbose : bool, default=False
    warm_start : bool, default=False
    momentum : float, default=0.9 (sgd)
    nesterovs_momentum : bool, default=True (sgd)
    early_stopping : bool, default=False
    validation_fraction : float, default=0.1
    beta_1, beta_2, epsilon : Adam's, defaults 0.9, 0.999, 1e-8
    n_iter_no_change : int, default=10

    fastwb's own
    ------------
    dtype : "float32" (default), "float64", or None (X's: float32 stays float32, else float64,
        as scikit-learn computes)
    batchnorm : bool, default=False: a BatchNorm1d after each hidden Linear layer (before its
        activation); ``alpha`` still decays only the Linear weights
    dropout : float in [0, 1), default=0: Dropout after each hidden activation
    n_threads : int or None (default: fastwb's thread setting)

    Fitted attributes: ``coefs_``, ``intercepts_`` (views of the model's weights), ``n_iter_``,
    ``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``,
    ``t_``, ``n_features_in_``, ``feature_names_in_``, ``n_layers_``, ``n_outputs_``,
    ``out_activation_``, and ``model_``: the trained :class:`fastwb.nn.Sequential`.

    Thread safety: prediction from many threads at once is safe; fitting one estimator from two
    threads at once is not (RuntimeError).
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron classifier with scikit-learn's interface, trained by fastwb.

    Softmax and log-loss for more than two classes, one logistic output for two,
    one logistic output per label (binary cross-entropy) for multi-label targets
    (an indicator matrix).  Labels may be any sortable values (strings, gaps).
""" + _DOC_PARAMS

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, dtype="float32", batchnorm=False, dropout=0.0, n_threads=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.batchnorm = batchnorm
        self.dropout = dropout
        self.n_threads = n_threads

    _score_function = staticmethod(accuracy_score)

    def _loss_name(self):
        return "cross_entropy" if self.out_activation_ == "softmax" else "bce_with_logits"

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        lb = self._label_binarizer
        if lb.y_type_ == "multiclass":
            # class indices: y's labels are among classes_ (checked above), which are sorted
            self.out_activation_ = "softmax"
            return X, np.ascontiguousarray(np.searchsorted(lb.classes_, y), dtype=np.intp)
        self.out_activation_ = "logistic"
        return X, lb.transform(y).astype(bool)     # (n, 1) for two classes, (n, labels) for multi-label

    def _width(self, Y):
        return len(self.classes_) if Y.ndim == 1 else Y.shape[1]

    def _targets(self, Y):
        return Y if Y.ndim == 1 else np.ascontiguousarray(Y, dtype=self.model_.dtype)

    def _score_targets(self, Y, rows):
        return self.classes_[Y[rows]] if Y.ndim == 1 else self._label_binarizer.inverse_transform(Y[rows])

    def _decode(self, proba):
        return self._label_binarizer.inverse_transform(proba.ravel() if self.n_outputs_ == 1 else proba)

    def fit(self, X, y):
        """Fit the network to X (n_samples, n_features) and labels y (n_samples,) or a
        label-indicator matrix (n_samples, n_labels).  Returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current state.  ``classes``: every
        class of the whole problem, required on the first call (as scikit-learn's)."""
        known = getattr(self, "classes_", None)
        if known is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            if known is not None:
                if not np.array_equal(known, unique_labels(classes)):
                    raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                                     f"was: {known!r}")
            else:
                self._label_binarizer = LabelBinarizer()
                self._label_binarizer.fit(y if type_of_target(y).startswith("multilabel") else classes)
                self.classes_ = self._label_binarizer.classes_
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predicted labels (an indicator matrix for multi-label targets)."""
        return self._decode(self._forward(X))

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``."""
        proba = self._forward(X)
        if self.n_outputs_ == 1:
            p = proba.ravel()
            return np.vstack([1 - p, p]).T
        return proba

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        proba = self.predict_proba(X)
        return np.log(proba, out=proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron regressor with scikit-learn's interface, trained by fastwb.

    Identity output and half the squared error (scikit-learn's ``loss="squared_error"``,
    the only one offered: ``"poisson"`` is a ValueError); one output per target column.
""" + _DOC_PARAMS

    _parameter_constraints = {**_BaseMLP._parameter_constraints, "loss": [StrOptions({"squared_error"})]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error", solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dtype="float32", batchnorm=False, dropout=0.0,
                 n_threads=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.loss = loss
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.batchnorm = batchnorm
        self.dropout = dropout
        self.n_threads = n_threads

    _score_function = staticmethod(r2_score)

    def _check_params(self):
        if isinstance(self.loss, str) and self.loss == "poisson":
            raise ValueError("loss='poisson' is not available in fastwb.sklearn: use scikit-learn's own "
                             "sklearn.neural_network.MLPRegressor(loss='poisson'), or loss='squared_error' here")
        return super()._check_params()

    def _loss_name(self):
        return "mse"

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                              dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        self.out_activation_ = "identity"
        return X, y

    def _width(self, Y):
        return 1 if Y.ndim == 1 else Y.shape[1]

    def _targets(self, Y):
        return np.ascontiguousarray(Y.reshape(len(Y), -1), dtype=self.model_.dtype)

    def _score_targets(self, Y, rows):
        return Y[rows]

    def _decode(self, out):
        return out.ravel() if out.shape[1] == 1 else out

    def fit(self, X, y):
        """Fit the network to X (n_samples, n_features) and targets y (n_samples,) or
        (n_samples, n_outputs).  Returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing from the current state."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predicted values: (n_samples,) for one target, else (n_samples, n_outputs)."""
        return self._decode(self._forward(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
