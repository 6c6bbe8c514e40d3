"""Hyperparameter search with Optuna on :mod:`fastwb.nn` (``pip install "fastwb[tune]"``).

Slide 13 of the second deck, on Optuna's own machinery (samplers, pruners, RDB
storages)::

    import optuna
    from fastwb import datasets, tune

    X, y, X_test, y_test = datasets.load("digits")
    X_train, X_val, y_train, y_val = datasets.train_test_split(X, y, 0.2, rng=0)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner())
    study.optimize(tune.objective(X_train, y_train, X_val, y_val, epochs=5), n_trials=20)
    print(study.best_value, study.best_params)

* :class:`PruningCallback`: a :class:`fastwb.nn.Callback` that reports a
  metric to the trial after every epoch and stops a trial the pruner rejects.
* :data:`DEFAULT_SPACE`, :func:`suggest_config`, :func:`build_model`,
  :func:`suggest_model`: a search space as a plain dict, and the compiled
  model a trial's choices describe.
* :func:`objective`, :func:`create_study`, :func:`search`, :func:`retrain`,
  :func:`write_plots`: the pieces ``fastwb tune`` is made of; :func:`run`
  is the command's whole search.

``import fastwb`` never imports Optuna; this module imports it when one of
its functions is called (a missing Optuna is one ImportError line naming the
``tune`` extra).  A trial's model, optimizer and data never leave the
process that runs it, so any number of processes can share one study
through an RDB storage (``sqlite:///file.db``): that is Optuna's
distributed mode, and the way to use several cores for a search (one fastwb
thread per process on one machine).
"""

import copy
import json
import math
import time
import warnings

import numpy as np

from fastwb import _extras
from fastwb.nn.callbacks import Callback as _Callback

__all__ = ["PruningCallback", "DEFAULT_SPACE", "SPACE_KEYS", "edit_space", "check_space", "suggest_config",
           "build_model", "suggest_model", "objective", "open_storage", "create_study", "finished_count", "search",
           "retrain", "PLOTS", "write_plots", "VAL_SIZE", "load_split", "run", "TABLE_HEADER", "trial_row",
           "trial_summary"]


def _optuna():
    return _extras.require("optuna", "fastwb.tune", "tune")


# -- the pruning callback ------------------------------------------------------------

def _direction_of(monitor, mode):
    """"maximize" or "minimize" for a metric name (accuracy and r2 are maximised,
    anything else minimised, as :class:`fastwb.nn.EarlyStopping`'s ``mode="auto"``)."""
    if mode == "auto":
        mode = "max" if any(k in monitor for k in ("accuracy", "r2")) else "min"
    return "maximize" if mode == "max" else "minimize"


class PruningCallback(_Callback):
    """Report ``monitor`` to an Optuna trial after every ``interval``-th epoch of
    :meth:`fastwb.nn.Sequential.fit` (``trial.report(value, epoch)`` with the
    callbacks' ``epoch``: from 0 for a new model), and stop training by raising
    ``optuna.TrialPruned`` when ``trial.should_prune()`` says so; Optuna's
    ``study.optimize`` then records the trial as PRUNED.

    ``monitor``: a key of ``fit``'s per-epoch logs: ``val_accuracy`` (the
    default), ``val_loss``, ``accuracy``, ``loss``, ... (``val_*`` need
    ``validation_data``).  ``mode``: "max", "min" or "auto" (max for accuracy
    and r2 metrics, min otherwise); it must agree with the study's direction.

    Errors (as optuna-integration's Keras and LightGBM callbacks, but raised,
    never warned): a study whose direction contradicts ``mode`` (e.g.
    ``val_loss`` in a maximize study) or a multi-objective study is a
    ValueError when training begins, before the first epoch; a metric missing
    from the logs is a ValueError at the end of the first epoch, naming the
    keys that are there.  A NaN value (a diverged loss) is reported as it is:
    Optuna's pruners prune it.

    After ``fit`` returns or raises, ``epochs_run`` is the number of epochs
    trained and ``pruned_epoch`` the epoch (from 0) at which the trial was
    pruned, or None.
    """

    def __init__(self, trial, monitor="val_accuracy", interval=1, mode="auto"):
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a metric name such as 'val_accuracy', got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
        self.trial = trial
        self.monitor = monitor
        self.interval = int(interval)
        self.direction = _direction_of(monitor, mode)
        self.epochs_run = 0
        self.pruned_epoch = None

    def _check_study(self):
        study = getattr(self.trial, "study", None)
        if study is None:           # a FixedTrial: nothing to compare with, nothing prunes
            return
        directions = [d.name.lower() for d in study.directions]
        if len(directions) != 1:
            raise ValueError(f"PruningCallback needs a single-objective study; this one has {len(directions)} "
                             "objectives (Optuna does not prune multi-objective trials)")
        if directions[0] != self.direction:
            raise ValueError(f"PruningCallback monitors {self.monitor!r}, which is to be "
                             f"{'maximized' if self.direction == 'maximize' else 'minimized'}, but the study is "
                             f"set to {directions[0]}; create the study with direction={self.direction!r}, or "
                             f"monitor a metric to be {directions[0][:-1]}ed")

    def on_train_begin(self, model):
        super().on_train_begin(model)
        self._check_study()
        self.epochs_run = 0
        self.pruned_epoch = None

    def on_epoch_end(self, epoch, logs):
        self.epochs_run += 1
        if self.monitor not in logs:
            raise ValueError(f"PruningCallback: the monitored metric {self.monitor!r} is not in this epoch's logs "
                             f"({', '.join(sorted(logs))}); pass validation_data to fit for val_* metrics")
        if (epoch + 1) % self.interval:
            return
        self.trial.report(float(logs[self.monitor]), step=int(epoch))
        if self.trial.should_prune():
            self.pruned_epoch = int(epoch)
            self.model.stop_training = True
            raise _optuna().TrialPruned(f"pruned after epoch {epoch + 1} ({self.monitor} "
                                        f"{float(logs[self.monitor]):.6g})")


# -- the search space ----------------------------------------------------------------------

#: The default search space: slide 13's learning rate, L2 strength and dropout
#: rate, plus depth, widths, activation, batch size and optimizer.  A value is
#: either a spec (a dict with "type": "float" | "int" with "low", "high" and
#: optional "log" / "step", or "categorical" with "choices") that a trial
#: samples, or a plain value (a number, string, bool) that every trial uses.
#: "hidden" is sampled once per hidden layer (parameters ``hidden_1`` ..
#: ``hidden_<n_layers>``); a list of ints as "hidden" fixes the widths (and
#: the depth).  Copy it (:func:`copy.deepcopy`) before editing.
DEFAULT_SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.1, "high": 0.5},
    "n_layers": {"type": "int", "low": 1, "high": 3},
    "hidden": {"type": "int", "low": 32, "high": 1024, "log": True},
    "activation": {"type": "categorical", "choices": ["relu", "leaky_relu", "tanh"]},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "sgd", "momentum", "rmsprop"]},
    "batchnorm": False,
}

#: Every key a space may hold, with the value used when a space leaves it out.
SPACE_KEYS = {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.0, "n_layers": 1, "hidden": 128,
              "activation": "relu", "batch_size": 128, "optimizer": "adam", "batchnorm": False}
_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "identity")
_INIT = {"relu": "he", "leaky_relu": "he", "tanh": "glorot", "sigmoid": "glorot", "identity": "glorot"}


def _is_spec(value):
    return isinstance(value, dict)


def _check_spec(key, spec):
    """A spec's fields, checked: ("float"|"int", low, high, log, step) or ("categorical", choices)."""
    kind = spec.get("type")
    known = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
             "categorical": {"type", "choices"}}
    if kind not in known:
        raise ValueError(f"search space {key!r}: 'type' must be 'float', 'int' or 'categorical', got {kind!r}")
    extra = set(spec) - known[kind]
    if extra:
        raise ValueError(f"search space {key!r}: unknown field(s) {', '.join(sorted(map(str, extra)))} for a "
                         f"{kind} spec (valid: {', '.join(sorted(known[kind]))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ValueError(f"search space {key!r}: 'choices' must be a non-empty list, got {choices!r}")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ValueError(f"search space {key!r}: choices must be numbers, strings, bools or None "
                                 f"(Optuna stores them), got {c!r}")
        return
    for field in ("low", "high"):
        v = spec.get(field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"search space {key!r}: {field!r} must be a finite number, got {v!r}")
        if kind == "int" and int(v) != v:
            raise ValueError(f"search space {key!r}: {field!r} must be an integer for an int spec, got {v!r}")
    if spec["low"] > spec["high"]:
        raise ValueError(f"search space {key!r}: low {spec['low']!r} is above high {spec['high']!r}")
    if spec.get("log") and spec["low"] <= 0:
        raise ValueError(f"search space {key!r}: a log scale needs low > 0, got {spec['low']!r}")
    if spec.get("log") and spec.get("step") is not None and kind == "float":
        raise ValueError(f"search space {key!r}: a float spec cannot have both log and step")


def _check_space(space):
    if not isinstance(space, dict):
        raise TypeError(f"a search space is a dict of key -> spec or value, got {type(space).__name__}")
    unknown = [k for k in space if k not in SPACE_KEYS]
    if unknown:
        raise ValueError(f"search space: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are "
                         f"{', '.join(SPACE_KEYS)}")
    for key, value in space.items():
        if _is_spec(value):
            _check_spec(key, value)


def edit_space(edits, space=None):
    """A copy of ``space`` (default :data:`DEFAULT_SPACE`) with the keys of
    ``edits`` replaced, checked.  A list of widths as "hidden" fixes the depth,
    so the copy's "n_layers" is dropped unless ``edits`` sets it."""
    if not isinstance(edits, dict):
        raise TypeError(f"the space edits must be a dict (a JSON object), got {type(edits).__name__}")
    out = copy.deepcopy(DEFAULT_SPACE if space is None else space)
    out.update(copy.deepcopy(edits))
    if isinstance(out.get("hidden"), list) and "n_layers" not in edits:
        out.pop("n_layers", None)
    check_space(out)
    return out


class _ProbeTrial:
    """A stand-in trial that takes each spec's low end (``high``: its high end)
    and first choice, or the value ``pick`` names for a key, so that a space's
    values are checked without Optuna and without training."""

    number = 0

    def __init__(self, high=False, pick=None):
        self.high, self.pick = high, pick or {}

    def suggest_float(self, name, low, high, log=False, step=None):
        return self.pick.get(name, high if self.high else low)

    suggest_int = suggest_float

    def suggest_categorical(self, name, choices):
        return self.pick.get(name, choices[0])


def check_space(space):
    """Raise ValueError (TypeError) naming the key unless ``space`` is a valid
    search space: known keys, well-formed specs, and values a model can be
    built from at both ends of every range and for every choice.  Returns
    ``space``."""
    suggest_config(_ProbeTrial(), space)
    suggest_config(_ProbeTrial(high=True), space)
    for key, spec in space.items():
        if _is_spec(spec) and spec["type"] == "categorical":
            for choice in spec["choices"][1:]:
                names = [f"hidden_{i + 1}" for i in range(8)] if key == "hidden" else [key]
                suggest_config(_ProbeTrial(pick={n: choice for n in names}), space)
    return space


def _suggest(trial, name, spec):
    kind = spec["type"]
    if kind == "float":
        return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)),
                                   step=spec.get("step"))
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)),
                                 step=int(spec.get("step") or 1))
    return trial.suggest_categorical(name, list(spec["choices"]))


def _check_config(config):
    """The values a model is built from, checked; a ValueError names the key."""
    def bad(key, what):
        raise ValueError(f"search space {key!r}: {what}, got {config[key]!r}")

    for key in ("lr", "weight_decay", "dropout"):
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            bad(key, "must be a finite number >= 0")
    if config["lr"] <= 0:
        bad("lr", "must be > 0")
    if config["dropout"] >= 1:
        bad("dropout", "must be in [0, 1)")
    for key in ("batch_size",):
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            bad(key, "must be an integer >= 1")
    hidden = config["hidden"]
    if not isinstance(hidden, list) or not all(isinstance(h, (int, np.integer)) and not isinstance(h, bool)
                                               and h >= 1 for h in hidden):
        bad("hidden", "must be a width >= 1 or a list of them")
    if config["activation"] not in _ACTIVATIONS:
        bad("activation", f"must be one of {', '.join(_ACTIVATIONS)}")
    from fastwb import optim
    if config["optimizer"] not in optim.BY_NAME:
        bad("optimizer", f"must be one of {', '.join(optim.BY_NAME)}")
    if not isinstance(config["batchnorm"], bool):
        bad("batchnorm", "must be True or False")


def suggest_config(trial, space=None):
    """The configuration a trial chooses from ``space`` (default
    :data:`DEFAULT_SPACE`): a dict of every :data:`SPACE_KEYS` key, with
    ``hidden`` as the list of hidden widths and ``n_layers`` its length.
    Sampled keys become the trial's parameters under their own names
    (``hidden_1``, ``hidden_2``, ... for the widths); plain values are used
    as they are; keys the space leaves out take :data:`SPACE_KEYS`'s values.

    ``trial``: an ``optuna.trial.Trial``, or an ``optuna.trial.FixedTrial``
    to rebuild a configuration from known parameters.  A space that is not
    a dict of valid specs and values is a ValueError (TypeError) naming the key."""
    space = DEFAULT_SPACE if space is None else space
    _check_space(space)
    config = {}
    for key, default in SPACE_KEYS.items():
        if key == "hidden":
            continue
        value = space.get(key, default)
        config[key] = _suggest(trial, key, value) if _is_spec(value) else value
    hidden = space.get("hidden", SPACE_KEYS["hidden"])
    if isinstance(hidden, (list, tuple)):
        if "n_layers" in space:
            raise ValueError("search space: 'hidden' is a list of widths, which fixes the depth; leave "
                             "'n_layers' out")
        config["hidden"] = list(hidden)
    else:
        n = config["n_layers"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"search space 'n_layers': must be an integer >= 0, got {n!r}")
        config["hidden"] = [_suggest(trial, f"hidden_{i + 1}", hidden) if _is_spec(hidden) else hidden
                            for i in range(int(n))]
    config["n_layers"] = len(config["hidden"])
    config = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in config.items()}
    _check_config(config)
    return config


def build_model(config, in_features, out_features, dtype="float32", rng=0):
    """The compiled :class:`fastwb.nn.Sequential` a configuration describes:
    for each width of ``config["hidden"]``, Linear -> [BatchNorm1d] ->
    activation -> [Dropout(dropout)] (He initialisation for ReLU-like
    activations, Glorot for the others), then Linear to ``out_features``;
    compiled with ``config["optimizer"]``, ``lr`` and ``weight_decay``
    (L2 added to the gradient, decoupled for adamw) and cross-entropy."""
    from fastwb import nn

    config = dict(SPACE_KEYS, **config)
    if not isinstance(config["hidden"], list):
        config["hidden"] = [config["hidden"]] * int(config["n_layers"])
    _check_config(config)
    layers, width = [], int(in_features)
    init = _INIT[config["activation"]]
    for h in config["hidden"]:
        layers.append(nn.Linear(width, int(h), init=init))
        if config["batchnorm"]:
            layers.append(nn.BatchNorm1d(int(h)))
        layers.append(nn.activation_layer(config["activation"]))
        if config["dropout"] > 0:
            layers.append(nn.Dropout(float(config["dropout"])))
        width = int(h)
    layers.append(nn.Linear(width, int(out_features), init=init))
    model = nn.Sequential(*layers, dtype=dtype, rng=rng)
    return model.compile(config["optimizer"], lr=float(config["lr"]), weight_decay=float(config["weight_decay"]),
                         loss="cross_entropy")


def _trial_seed(seed, number):
    """A model seed for trial ``number`` of a search seeded with ``seed``."""
    return int(np.random.default_rng([int(seed), int(number)]).integers(0, 2**31 - 1))


def suggest_model(trial, space=None, *, in_features, out_features, dtype="float32", rng=None):
    """``(model, config)``: :func:`suggest_config` of the trial, and the compiled
    model :func:`build_model` makes of it.  ``rng``: the model's seed (default:
    one derived from the trial's number, so every trial has its own weights
    and a rerun of the same trial the same ones).  Fit it with
    ``batch_size=config["batch_size"]``."""
    config = suggest_config(trial, space)
    if rng is None:
        rng = _trial_seed(0, getattr(trial, "number", 0))
    return build_model(config, in_features, out_features, dtype, rng), config


# -- the objective and the study ----------------------------------------------------------------

def _classes(*ys):
    return int(max(int(np.max(y)) for y in ys)) + 1


def objective(X_train, y_train, X_val, y_val, space=None, epochs=3, monitor="val_accuracy", seed=0,
              prune=True, n_classes=None):
    """An Optuna objective (a function of a trial) that builds a model from
    ``space`` (:func:`suggest_model`; the model seed from ``seed`` and the
    trial's number), trains it ``epochs`` epochs on (X_train, y_train) with
    validation on (X_val, y_val), and returns ``monitor`` after the last epoch.

    With ``prune`` a :class:`PruningCallback` reports ``monitor`` every epoch
    and the study's pruner may stop the trial.  Each trial records user
    attributes: ``config`` (the whole configuration, for :func:`retrain`),
    ``epochs`` (epochs trained, fewer when pruned) and ``seed``.  The test set
    is never seen here: pass a validation split of the training data."""
    X_train, X_val = np.asarray(X_train), np.asarray(X_val)
    if X_train.ndim != 2 or X_val.ndim != 2 or X_train.shape[1] != X_val.shape[1]:
        raise ValueError(f"X_train and X_val must be 2-D with the same width, got shapes {X_train.shape} "
                         f"and {X_val.shape}")
    from fastwb._validate import check_int
    epochs = check_int("epochs", epochs, 1)
    n_classes = _classes(y_train, y_val) if n_classes is None else int(n_classes)
    if space is not None:
        check_space(space)
    direction = _direction_of(monitor, "auto")

    def run(trial):
        t0 = time.perf_counter()
        model_seed = _trial_seed(seed, trial.number)
        model, config = suggest_model(trial, space, in_features=X_train.shape[1], out_features=n_classes,
                                      dtype=X_train.dtype, rng=model_seed)
        trial.set_user_attr("config", config)
        trial.set_user_attr("seed", model_seed)
        callbacks = [PruningCallback(trial, monitor)] if prune else []
        try:
            history = model.fit(X_train, y_train, epochs=epochs, batch_size=config["batch_size"],
                                validation_data=(X_val, y_val), callbacks=callbacks, verbose=False,
                                rng=model_seed)
        finally:
            trial.set_user_attr("epochs", model.epochs_done)
            trial.set_user_attr("train_seconds", round(time.perf_counter() - t0, 3))
        if monitor not in history or not history[monitor]:
            raise ValueError(f"the monitored metric {monitor!r} is not in fit's history "
                             f"({', '.join(k for k, v in history.items() if v)})")
        return float(history[monitor][-1])      # NaN (a diverged loss): Optuna records the trial as FAIL

    run.direction = direction
    run.monitor = monitor
    return run


def open_storage(storage, heartbeat=60):
    """``storage`` as Optuna wants it: None (in memory), an ``optuna.storages``
    object (as it is), or an RDB URL (``sqlite:///path.db``,
    ``postgresql://...``) opened as an ``RDBStorage`` with a heartbeat every
    ``heartbeat`` seconds (None: none): a trial whose process died (kill -9,
    power loss) is marked FAIL by the next search on the storage once its
    heartbeat is ``2 * heartbeat`` seconds old.  SQLite files wait up to 60 s
    for a lock, so several processes can share one; processes that open a new
    database at the same moment retry while one of them creates its tables."""
    optuna = _optuna()
    if storage is None or not isinstance(storage, str):
        return storage
    kwargs = {}
    if storage.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat is not None:
        kwargs.update(heartbeat_interval=int(heartbeat), grace_period=2 * int(heartbeat))
    from sqlalchemy import exc as sql_errors

    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, **kwargs)
        except (sql_errors.IntegrityError, sql_errors.OperationalError):
            # processes started together on a new database race to create its tables: the
            # loser finds them made when it tries again
            if attempt == 5:
                raise
            time.sleep(0.2 * (attempt + 1))


def create_study(storage=None, study_name=None, direction="maximize", sampler="tpe", pruner="median", seed=None,
                 heartbeat=60, n_startup_trials=5):
    """An Optuna study, created or (same storage and name) loaded to go on.

    ``sampler``: "tpe" (``TPESampler``) or "random" (``RandomSampler``), or an
    Optuna sampler; ``pruner``: "median" (``MedianPruner`` with
    ``n_startup_trials`` trials before pruning and no warm-up epochs), "none"
    (``NopPruner``), or an Optuna pruner.  ``storage``: see
    :func:`open_storage`.  A loaded study keeps its direction; another
    ``direction`` than the stored one is a ValueError.

    ``seed`` seeds a named sampler through the number of trials the study
    already holds, and with a storage the process id too: a fresh in-memory
    study with a seed is reproducible, while a resumed study, or two processes
    sharing one, do not replay the same random trials."""
    import os

    optuna = _optuna()
    if isinstance(sampler, str) and sampler not in ("tpe", "random"):
        raise ValueError(f"sampler must be 'tpe', 'random' or an Optuna sampler, got {sampler!r}")
    if isinstance(pruner, str):
        if pruner == "median":
            pruner = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=0)
        elif pruner == "none":
            pruner = optuna.pruners.NopPruner()
        else:
            raise ValueError(f"pruner must be 'median', 'none' or an Optuna pruner, got {pruner!r}")
    study = optuna.create_study(storage=open_storage(storage, heartbeat), study_name=study_name,
                                direction=direction, sampler=None if isinstance(sampler, str) else sampler,
                                pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {study.study_name!r} is stored as {study.direction.name.lower()}, not {direction}")
    if isinstance(sampler, str):
        sampler_seed = None
        if seed is not None:
            words = [int(seed), len(study.get_trials(deepcopy=False))] + ([os.getpid()] if storage is not None else [])
            sampler_seed = int(np.random.default_rng(words).integers(0, 2**31 - 1))
        study.sampler = (optuna.samplers.TPESampler(seed=sampler_seed) if sampler == "tpe"
                         else optuna.samplers.RandomSampler(seed=sampler_seed))
    return study


def finished_count(study):
    """Trials of the study that count toward a search's ``trials``: COMPLETE and PRUNED
    (failed ones, e.g. interrupted by Ctrl-C, are run again)."""
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def search(study, objective, trials=None, timeout=None, on_trial=None, n_threads=None, catch=()):
    """Run ``objective`` in ``study`` until the study holds ``trials`` finished
    (COMPLETE or PRUNED) trials, counting those already there (a resumed or
    shared study; this call runs at most the difference, so trials that fail
    are not replaced until the next call), or ``timeout`` seconds have passed (no new trial starts
    after it; the running one finishes).  Several processes given the same
    ``trials`` stop together at that count (each may finish one trial more
    that was running then).  ``on_trial(study, frozen_trial)``: called as each
    trial of this process ends.  ``n_threads``: fastwb threads for the
    search (restored afterwards).  Returns the list of the numbers of the
    trials this call ran.

    Ctrl-C (KeyboardInterrupt) stops the search: Optuna records the running
    trial as FAIL, and the exception propagates, so the study stays loadable
    and a later call goes on from there."""
    optuna = _optuna()
    import fastwb

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ran = []

    def after(st, frozen):
        ran.append(frozen.number)
        if on_trial is not None:
            on_trial(st, frozen)

    callbacks = [after]
    n_trials = None
    if trials is not None:
        remaining = int(trials) - finished_count(study)
        if remaining <= 0:
            return ran
        n_trials = remaining
        callbacks.append(optuna.study.MaxTrialsCallback(int(trials), states=states))
    threads = fastwb.threads(n_threads) if n_threads is not None else _nothing()
    with threads:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=callbacks, catch=catch,
                       gc_after_trial=False)
    return ran


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def retrain(config, X_train, y_train, X_test, y_test, epochs=3, seed=0, n_classes=None, dtype=None):
    """Train the model of ``config`` (a trial's ``user_attrs["config"]`` or
    :func:`suggest_config`'s result) on all of (X_train, y_train) for
    ``epochs`` epochs, then evaluate it once on (X_test, y_test).  Returns
    ``(model, test_loss, test_accuracy)``."""
    n_classes = _classes(y_train, y_test) if n_classes is None else int(n_classes)
    X_train = np.asarray(X_train)
    model = build_model(config, X_train.shape[1], n_classes, dtype or X_train.dtype, seed)
    model.fit(X_train, y_train, epochs=epochs, batch_size=int(config["batch_size"]), verbose=False, rng=seed)
    loss, accuracy = model.evaluate(X_test, y_test)
    return model, float(loss), float(accuracy)


#: The figures :func:`write_plots` writes: file stem -> Optuna's matplotlib function name.
PLOTS = {"optimization_history": "plot_optimization_history", "param_importances": "plot_param_importances",
         "parallel_coordinate": "plot_parallel_coordinate"}


def _common_params(study):
    optuna = _optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return []
    names = set(done[0].params)
    for t in done[1:]:
        names &= set(t.params)
    return sorted(names)


def write_plots(study, folder, dpi=100):
    """Write Optuna's optimisation history, parameter importances and
    parallel-coordinate plots of ``study`` (its matplotlib versions) as PNG
    files in ``folder`` (created if missing), each atomically.  Importances
    and parallel coordinates cover the parameters every completed trial has
    (``hidden_2`` only when every trial had two layers).  Returns
    ``(written paths, {stem: reason})`` for figures that could not be drawn
    (e.g. importances need two completed trials)."""
    import os

    _optuna()
    _extras.require("matplotlib", "fastwb.tune.write_plots", "tune")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from fastwb._io import write_figure

    os.makedirs(folder, exist_ok=True)
    written, skipped = [], {}
    params = _common_params(study)
    for stem, name in PLOTS.items():
        kwargs = {"params": params} if stem != "optimization_history" else {}
        if stem != "optimization_history" and not params:
            skipped[stem] = "no completed trial with parameters yet"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, name)(study, **kwargs)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            skipped[stem] = " ".join(str(e).split())
            plt.close("all")
            continue
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        figure.set_size_inches(max(10, 1.4 * len(params) + 2) if stem == "parallel_coordinate" else 10, 6)
        figure.tight_layout()
        path = os.path.join(folder, f"{stem}.png")
        try:
            write_figure(figure, path, dpi)
        finally:
            plt.close(figure)
        written.append(path)
    return written, skipped


# -- the search that ``fastwb tune`` runs ------------------------------------------------------

#: Validation rows held out of the training set per data set (a fraction or a count):
#: MNIST's conventional 50000 / 10000 split, a fifth of the digits.
VAL_SIZE = {"digits": 0.2, "mnist": 10000, "fashion-mnist": 10000}


def load_split(dataset="digits", data_path=None, val_size=None, seed=0, dtype="float32"):
    """``(X_train, y_train, X_val, y_val, X_test, y_test)``: the data set's training
    set split (seeded) into a training and a validation part (``val_size``, a
    fraction or a row count; default :data:`VAL_SIZE`), and its test set,
    which a search must not look at before its end."""
    from fastwb import datasets

    X, y, X_test, y_test = datasets.load(dataset, data_path, np.dtype(dtype), rng=seed)
    val_size = VAL_SIZE.get(dataset, 0.2) if val_size is None else val_size
    X_train, X_val, y_train, y_val = datasets.train_test_split(X, y, val_size, rng=seed)
    return X_train, y_train, X_val, y_val, X_test, y_test


def run(data, trials=20, timeout=None, storage=None, study_name=None, epochs=3, pruner="median", sampler="tpe",
        seed=0, n_threads=None, space=None, plots=None, retrain_best=True, save=None, say=print, table=print):
    """The search of ``fastwb tune``, returning its report (a JSON-serialisable dict).

    ``data``: :func:`load_split`'s six arrays.  Creates or loads the study
    (:func:`create_study`), searches until it holds ``trials`` finished trials
    or ``timeout`` seconds pass (:func:`search`), calling ``table`` with a row
    per trial as it ends (:func:`trial_row`), then, with ``retrain_best``,
    trains the best trial's configuration on training + validation data and
    evaluates it once on the test set (saved to ``save`` when given), and
    writes the plots to the folder ``plots`` (:func:`write_plots`).  ``say``
    gets the other lines.  KeyboardInterrupt propagates (the running trial is
    FAIL in the study)."""
    optuna = _optuna()
    X_train, y_train, X_val, y_val, X_test, y_test = data
    n_classes = _classes(y_train, y_val, y_test)
    study = create_study(storage, study_name, "maximize", sampler, pruner, seed)
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    before = sum(counts.values())
    already = counts["COMPLETE"] + counts["PRUNED"]
    where = "in memory" if storage is None else str(storage)
    resumed = (f"; resuming: {already} finished ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned), "
               f"{counts['FAIL']} failed, {counts['RUNNING']} running elsewhere" if before else "")
    import fastwb
    threads = n_threads if n_threads is not None else fastwb.get_num_threads()
    say(f"study {study.study_name!r} ({where}{resumed}): up to {trials} finished trials"
        f"{f', {timeout:g} s' if timeout else ''}, {epochs} epochs each, {type(study.sampler).__name__}, "
        f"{type(study.pruner).__name__}; {len(X_train)} train / {len(X_val)} validation rows, {threads} "
        f"thread{'s' if threads != 1 else ''}")
    table(TABLE_HEADER)
    t0 = time.perf_counter()
    ran = search(study, objective(X_train, y_train, X_val, y_val, space, epochs, seed=seed, n_classes=n_classes),
                 trials, timeout, on_trial=lambda st, frozen: table(trial_row(frozen)), n_threads=n_threads)
    seconds = time.perf_counter() - t0
    mine = [trial_summary(t) for t in study.get_trials(deepcopy=False) if t.number in set(ran)]
    report = {"study": study.study_name, "storage": None if storage is None else str(storage),
              "trials_before": before, "ran": ran, "trials": mine, "seconds": round(seconds, 3),
              "finished": finished_count(study), "best": None, "test_accuracy": None, "plots": None}
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not done:
        say("no completed trial yet: nothing to retrain")
        return report
    best = study.best_trial
    report["best"] = trial_summary(best)
    say(f"best trial #{best.number}: val_accuracy {best.value:.4f} after {best.user_attrs.get('epochs')} epochs")
    say("  " + ", ".join(f"{k}={_short(v)}" for k, v in (best.user_attrs.get("config") or best.params).items()))
    if retrain_best and best.user_attrs.get("config"):
        X_all = np.concatenate([X_train, X_val])
        y_all = np.concatenate([y_train, y_val])
        with fastwb.threads(n_threads) if n_threads is not None else _nothing():
            t1 = time.perf_counter()
            model, loss, accuracy = retrain(best.user_attrs["config"], X_all, y_all, X_test, y_test, epochs,
                                            seed=best.user_attrs.get("seed", seed), n_classes=n_classes)
        report.update(test_accuracy=accuracy, test_loss=loss, retrain_seconds=round(time.perf_counter() - t1, 3))
        say(f"retrained on all {len(X_all)} training rows for {epochs} epochs: test accuracy {accuracy:.4f} "
            f"(loss {loss:.4f}, {len(X_test)} test rows, used once)")
        if save:
            model.save(save)
            report["saved"] = str(save)
            say(f"saved {save}")
    if plots:
        written, skipped = write_plots(study, plots)
        report["plots"] = {"written": written, "skipped": skipped}
        for path in written:
            say(f"wrote {path}")
        for stem, why in skipped.items():
            say(f"skipped the {stem} plot: {why}")
    return report


# -- the live table -------------------------------------------------------------------------

TABLE_HEADER = f"{'trial':>5}  {'state':<8}  {'value':>8}  {'epochs':>6}  {'seconds':>7}  params"


def _short(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trial_summary(frozen):
    """A finished trial as a JSON-serialisable dict: number, state, value,
    params, seconds (start to end), epochs trained, config."""
    seconds = None
    if frozen.datetime_start is not None and frozen.datetime_complete is not None:
        seconds = round((frozen.datetime_complete - frozen.datetime_start).total_seconds(), 3)
    value = frozen.value if frozen.values is not None and len(frozen.values) == 1 else None
    return {"number": frozen.number, "state": frozen.state.name, "value": value, "params": dict(frozen.params),
            "seconds": seconds, "epochs": frozen.user_attrs.get("epochs"),
            "config": frozen.user_attrs.get("config")}


def trial_row(frozen):
    """One line of the live table for a finished trial (see :data:`TABLE_HEADER`)."""
    s = trial_summary(frozen)
    value = f"{s['value']:.4f}" if s["value"] is not None else "-"
    seconds = f"{s['seconds']:.1f}" if s["seconds"] is not None else "-"
    epochs = str(s["epochs"]) if s["epochs"] is not None else "-"
    params = " ".join(f"{k}={_short(v)}" for k, v in s["params"].items())
    return f"{s['number']:>5}  {s['state']:<8}  {value:>8}  {epochs:>6}  {seconds:>7}  {params}"


def dumps(obj):
    """JSON of a search report (configs hold only JSON types)."""
    return json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))

