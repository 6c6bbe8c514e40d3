"""Callbacks of :meth:`fastwb.nn.Sequential.fit`.

A callback has ``on_train_begin(model)`` and ``on_epoch_end(epoch, logs)``
(``logs``: this epoch's history entries, e.g. ``{"loss": ..., "val_loss":
...}``); setting ``model.stop_training = True`` ends training after the
epoch.  Callbacks run in the order given, after validation.
"""

import math

from fastwb._validate import check_int, check_real

__all__ = ["Callback", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint", "Unfreeze"]


class Callback:
    """Base class: every hook does nothing."""

    model = None

    def on_train_begin(self, model):
        self.model = model

    def on_epoch_end(self, epoch, logs):
        pass

    def on_train_end(self):
        pass


def _monitored(logs, monitor):
    if monitor not in logs:
        raise ValueError(f"the monitored metric {monitor!r} is not in this epoch's logs "
                         f"({', '.join(sorted(logs))}); pass validation_data for val_* metrics")
    return logs[monitor]


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs; with ``restore_best_weights`` (the default) the
    parameters and running statistics of the best epoch are put back at the
    end.  ``mode``: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy and
    r2 metrics, min otherwise)."""

    def __init__(self, monitor="val_loss", patience=3, min_delta=0.0, mode="auto", restore_best_weights=True):
        self.monitor = monitor
        self.patience = check_int("patience", patience, 0)
        self.min_delta = check_real("min_delta", min_delta, minimum=0.0)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("accuracy", "r2")) else "min"
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, model):
        super().on_train_begin(model)
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = None
        self.wait = 0
        self.best_state = None
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs):
        value = _monitored(logs, self.monitor)
        better = value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        if better:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_state = self.model.state_dict()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.model.stop_training = True
            self.stopped_epoch = epoch

    def on_train_end(self):
        if self.restore_best_weights and self.best_state is not None and self.stopped_epoch is not None:
            self.model.load_state_dict(self.best_state)


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate after each epoch: ``schedule(epoch, lr)``
    returns the rate for the next epoch (epochs counted from 0).  Parameter
    groups with a learning rate of their own (``compile(groups=...)``) keep
    the ratio to the base rate they had when training began (a group whose
    base rate was 0 then keeps its own rate)."""

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError("schedule must be a callable (epoch, lr) -> lr")
        self.schedule = schedule

    def on_train_begin(self, model):
        super().on_train_begin(model)
        opt = model.optimizer
        base = opt.hyper["lr"] if opt is not None else 0.0
        # each group's rate as a multiple of the base rate, fixed here (None: the base is 0, it stays)
        self._ratios = [g["lr"] / base if "lr" in g and base > 0 else None
                        for g in (opt.groups if opt is not None else ())]

    def on_epoch_end(self, epoch, logs):
        opt = self.model.optimizer
        lr = check_real("the learning rate from the schedule", self.schedule(epoch, opt.hyper["lr"]), minimum=0.0)
        opt.hyper["lr"] = lr
        for group, ratio in zip(opt.groups, self._ratios):
            if ratio is not None:
                group["lr"] = ratio * lr
        logs["lr"] = lr


class ModelCheckpoint(Callback):
    """Save the model after every epoch (atomically) to ``path``, which may hold
    ``{epoch}`` (1-based) to keep one file per epoch.  ``with_optimizer``
    (the default) includes the optimizer state, so training resumes bit for
    bit from the file."""

    def __init__(self, path, with_optimizer=True):
        self.path = str(path)
        self.with_optimizer = bool(with_optimizer)

    def on_epoch_end(self, epoch, logs):
        self.model.save(self.path.format(epoch=epoch + 1), with_optimizer=self.with_optimizer)


class Unfreeze(Callback):
    """Unfreeze the parameters matching ``pattern`` (a glob or a list of them;
    default: everything) before epoch ``at_epoch`` (counted from 0 over the
    model's whole life, as ``model.epochs_done``): gradual fine-tuning, the
    head trained alone first, then the base with it.  A model that has
    already done ``at_epoch`` epochs is unfrozen when training begins."""

    def __init__(self, at_epoch, pattern="*"):
        self.at_epoch = check_int("at_epoch", at_epoch, 0)
        patterns = [pattern] if isinstance(pattern, str) else pattern
        if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) for p in patterns):
            raise TypeError(f"pattern must be a glob string or a list of them, got {pattern!r}")
        self.patterns = list(patterns)
        self.done = False

    def _unfreeze(self):
        if not self.done:
            self.model.unfreeze(*self.patterns)
            self.done = True

    def on_train_begin(self, model):
        super().on_train_begin(model)
        model._match(self.patterns, "Unfreeze")     # a pattern naming nothing fails now, not epochs later
        if model.epochs_done >= self.at_epoch:
            self._unfreeze()

    def on_epoch_end(self, epoch, logs):
        if epoch + 1 >= self.at_epoch:
            self._unfreeze()
