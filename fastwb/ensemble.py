"""Deep ensembles and Monte Carlo dropout: predictive uncertainty for
:class:`fastwb.nn.Sequential` classifiers (slide 12 of the second deck).

    from fastwb import MLP, datasets
    from fastwb.ensemble import Ensemble, mc_dropout

    X, y, X_test, y_test = datasets.load("mnist", "data/mnist")
    ens = Ensemble(lambda i: MLP([784, 256, 10], rng=i), n_members=5, rng=0)
    ens.fit(X, y, epochs=3, batch_size=128, verbose=False)
    ens.scores(X_test, y_test)          # {"accuracy", "nll", "brier", "ece"}
    u = ens.predict_uncertainty(X_test)  # u.proba, u.entropy, u.mutual_information, u.std

The uncertainty summary (:class:`Uncertainty`, from the members' softmax
probabilities :math:`p_m`, or from the passes of :func:`mc_dropout`), row by
row, entropies in nats:

* ``proba``: the mean probabilities :math:`\\bar p = \\frac1M \\sum_m p_m`
  (the ensemble's prediction);
* ``entropy``: the predictive entropy :math:`H[\\bar p]` (total uncertainty);
* ``expected_entropy``: :math:`\\frac1M \\sum_m H[p_m]` (the aleatoric part);
* ``mutual_information``: ``entropy - expected_entropy`` (the epistemic part,
  the members' disagreement; >= 0, rounding below 0 is clipped);
* ``std``: the members' standard deviation of each class probability (the
  slide's ``ensemble_uncertainty``).

The slide's ``ensemble_predict`` averages the members' raw outputs (logits,
whose mean is no probability and whose spread depends on their scale) into a
``(num_models, num_classes)`` tensor that holds one input only (a batch of
more rows does not fit it), with the models left in training mode.  Here the
members run in inference mode on any number of rows, their softmax
probabilities are averaged, and ``std`` is taken over probabilities; it keeps
the slide's estimator (``torch.std``'s default: unbiased, ``ddof=1``).

Training: ``Ensemble.fit`` trains each member on its own shuffling (``batched=
False``, the default: every member sees its own batches, which keeps the
diversity of deep ensembles), or, with ``batched=True``, all members on one
shared sequence of batches: each batch is gathered once, every member's
compiled step (:mod:`fastwb.nn.plan`) runs on it, and one fused optimizer pass
updates all members' parameters, laid end to end in one flat buffer.  A
batched step is bit for bit the members' own steps on that batch (the same
compiled code on the same arrays); member 0 trains exactly as in an
independent fit, the others see its batches.  Afterwards the members are
ordinary models again (parameters, buffers, optimizer state and counts written
back).

Why the members' own GEMMs and not one wide GEMM ``X @ [W_1 | ... | W_M]``
for their first layers: on the development machine (2 cores) the wide GEMM
was at most about 8% faster than the members' GEMMs of that layer when the
machine was quiet, needs the first layers' weights and gradients copied in
and out of the wide layout each step, and rounds differently from the
members' own GEMMs (the BLAS's results depend on the shape of the call); a
prototype trained no faster end to end.  A member's fit step is bound by its
GEMMs (about 94% of it, one thread), so what batching saves is the rest: the
repeated gathers of the batch, the optimizer calls and the Python loop of M
fits, about 10% (``bench/ensemble_speed.py``).

Threads: inference (``predict_proba``, ``predict_uncertainty``, ``scores``)
is safe from many threads at once, as the members' inference is; ``fit`` is
one training call per member at a time (RuntimeError otherwise).
"""

import inspect
import io
import json
import time
from dataclasses import dataclass

import numpy as np

from fastwb import _io, functional, init, metrics
from fastwb._validate import FLOAT_DTYPES, check_int
from fastwb.nn.layers import BatchNorm1d
from fastwb.nn.plan import Workspace, WorkspacePool
from fastwb.nn.progress import Progress
from fastwb.nn.sequential import Sequential, _gather
from fastwb.nn.sequential import load as _load_model

__all__ = ["Ensemble", "Uncertainty", "mc_dropout", "summarize", "entropy", "load", "ENSEMBLE_FORMAT"]

ENSEMBLE_FORMAT = "fastwb-ensemble-1"
_SPEC_BYTES = 1 << 16           # bound on an ensemble file's JSON specification
_MEMBER_BYTES = 1 << 34         # bound on one member's checkpoint inside it (16 GiB)


# ---------------------------------------------------------------------------
# the uncertainty summary
# ---------------------------------------------------------------------------

@dataclass
class Uncertainty:
    """The uncertainty of a prediction, row by row (see the module docstring):
    ``proba`` (n, classes) mean probabilities, in the members' dtype;
    ``entropy``, ``expected_entropy`` and ``mutual_information`` (n,) float64,
    in nats; ``std`` (n, classes) the members' standard deviation of each
    probability (ddof=1; zeros for a single member); ``n_members``: the members
    (or dropout passes) averaged."""

    proba: np.ndarray
    entropy: np.ndarray
    expected_entropy: np.ndarray
    mutual_information: np.ndarray
    std: np.ndarray
    n_members: int

    @property
    def prediction(self):
        """The predicted classes: the argmax of ``proba``."""
        return self.proba.argmax(axis=1)


def entropy(proba):
    r"""Entropy :math:`-\sum_c p_c \log p_c` (nats) of each probability row
    (the last axis), with :math:`0 \log 0 = 0`; float64."""
    p = np.asarray(proba, dtype=np.float64)
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -np.einsum("...c,...c->...", p, logp)


def summarize(member_proba):
    """The :class:`Uncertainty` of stacked probabilities ``member_proba`` of
    shape (members, n, classes): one softmax output per ensemble member or
    per dropout pass."""
    P = np.asarray(member_proba)
    if P.dtype not in FLOAT_DTYPES:
        raise TypeError(f"member_proba must be float32 or float64, got dtype {P.dtype}")
    if P.ndim != 3 or P.shape[0] < 1:
        raise ValueError(f"member_proba must have shape (members, n, classes) with at least one member, "
                         f"got {P.shape}")
    P64 = P.astype(np.float64)
    mean = P64.mean(axis=0)
    total = entropy(mean)
    expected = entropy(P64).mean(axis=0)
    std = P64.std(axis=0, ddof=1) if P.shape[0] > 1 else np.zeros_like(mean)
    return Uncertainty(proba=mean.astype(P.dtype), entropy=total, expected_entropy=expected,
                       mutual_information=np.maximum(total - expected, 0.0), std=std.astype(P.dtype),
                       n_members=P.shape[0])


# ---------------------------------------------------------------------------
# the ensemble
# ---------------------------------------------------------------------------

def _seed_of(rng):
    """An integer seed from a seed, a Generator or None (fresh entropy), as fit's ``rng``."""
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        return check_int("rng", rng, 0)
    return int(init.as_generator(rng).integers(0, 2**63 - 1))


def _takes_index(factory):
    """Whether ``factory`` is called with the member's index (it accepts one positional argument)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind(0)
    except TypeError:
        return False
    return True


def _reinitialise(model, seed):
    """Initialise every layer of ``model`` again from ``seed``, as ``Sequential(...,
    rng=seed)`` initialises a new model, dropout seed included."""
    gen = np.random.default_rng(seed)
    for i, layer in enumerate(model.layers):
        layer.initialise(model._params[i], model._buffers[i], gen)
    model.num_batches_tracked[...] = 0
    model.seed = int(gen.integers(0, 2**31 - 1))


class Ensemble:
    """A deep ensemble of :class:`fastwb.nn.Sequential` classifiers (softmax
    cross-entropy): predictions average the members' probabilities.

    Parameters
    ----------
    members : a factory or a list of models.  A factory is called
        ``n_members`` times, as ``factory(i)`` with the member's index when it
        takes an argument (``lambda i: MLP([784, 256, 10], rng=i)``), else as
        ``factory()``, and must build a new model each call.  Members whose
        initial parameters equal an earlier member's (a factory with a fixed
        seed) are initialised again from the ensemble's ``rng``, so that every
        member starts from its own weights.  A list of models is taken as it
        is (the ensemble uses the models themselves, not copies).
    n_members : how many members a factory builds (default 5); with a list,
        None or the list's length.
    rng : seed, Generator or None: the members' shuffling seeds (and the
        seeds of re-initialised members).

    Every member must take the same inputs and give the same classes (same
    ``in_features``, ``out_features`` and dtype) and train with
    ``"cross_entropy"``.  Attributes: ``members`` (the models, also by
    ``ens[i]`` and iteration) and ``seed`` (the integer the shuffling seeds
    derive from; saved with the ensemble).
    """

    def __init__(self, members, n_members=None, rng=None):
        if isinstance(members, Sequential):
            raise TypeError("give a list of models or a factory building one, not a single model")
        self.seed = _seed_of(rng)
        if callable(members):
            count = 5 if n_members is None else check_int("n_members", n_members, 1)
            with_index = _takes_index(members)
            models = [members(i) if with_index else members() for i in range(count)]
            self._check(models, "the factory returned")
            self._distinct_starts(models)
        else:
            try:
                models = list(members)
            except TypeError:
                raise TypeError(f"members must be a factory or a list of models, got "
                                f"{type(members).__name__}") from None
            if not models:
                raise ValueError("an ensemble needs at least one member")
            if n_members is not None and check_int("n_members", n_members, 1) != len(models):
                raise ValueError(f"n_members is {n_members} but {len(models)} models were given")
            self._check(models, "members")
        self.members = models

    @staticmethod
    def _check(models, what):
        for i, m in enumerate(models):
            if not isinstance(m, Sequential):
                raise TypeError(f"{what}[{i}] is a {type(m).__name__}, not a fastwb.nn.Sequential")
            if m.loss.name != "cross_entropy":
                raise ValueError(f"{what}[{i}] trains with {m.loss.name!r}; an ensemble averages class "
                                 "probabilities, so its members train with 'cross_entropy'")
            for j in range(i):
                if models[j] is m:
                    raise ValueError(f"{what}[{i}] is the same object as [{j}]; each member must be its own "
                                     "model (model.copy() or a new one)")
        first = models[0]
        for i, m in enumerate(models[1:], 1):
            for attr in ("in_features", "out_features", "dtype"):
                if getattr(m, attr) != getattr(first, attr):
                    raise ValueError(f"{what}[{i}] has {attr} {getattr(m, attr)} but [0] has "
                                     f"{getattr(first, attr)}; members must take the same inputs and classes")

    def _distinct_starts(self, models):
        for i, m in enumerate(models):
            if any(np.array_equal(m.params, models[j].params) for j in range(i)):
                _reinitialise(m, np.random.default_rng([self.seed, i, 1]).integers(0, 2**63 - 1))

    def __len__(self):
        return len(self.members)

    def __getitem__(self, i):
        return self.members[i]

    def __iter__(self):
        return iter(self.members)

    @property
    def dtype(self):
        return self.members[0].dtype

    def __repr__(self):
        first = self.members[0]
        return (f"Ensemble({len(self.members)} members of {type(first).__name__} {first.in_features} -> "
                f"{first.out_features}, {first.dtype.name})")

    def shuffle_seeds(self, rng=None):
        """The members' shuffling seeds for a fit: derived from the ensemble's
        seed, or from ``rng`` when given (a seed, a Generator or None)."""
        base = self.seed if rng is None else _seed_of(rng)
        return [int(np.random.default_rng([base, i]).integers(0, 2**63 - 1)) for i in range(len(self.members))]

    # -- training --------------------------------------------------------------------
    def fit(self, X, y, batched=False, **fit_kwargs):
        """Train every member on (X, y); returns the list of their history dicts
        (:meth:`fastwb.nn.Sequential.fit`'s).

        ``fit_kwargs`` go to each member's ``fit`` (``epochs``, ``batch_size``,
        ``optimizer``, ``validation_data``, ``verbose``, ``callbacks``, ...);
        ``rng`` seeds the shuffling (default: the ensemble's own seeds, see
        :meth:`shuffle_seeds`), each member getting its own.

        ``batched=True`` trains all members on one shared sequence of batches
        (member 0's shuffling), one gathered batch and one fused optimizer pass
        per step for all of them (see the module docstring); it takes
        ``epochs``, ``batch_size``, ``optimizer``, ``shuffle``,
        ``validation_data``, ``verbose`` and ``rng`` (others are a TypeError).
        Its members must have the same optimizer (class, hyperparameters and
        step count) and no frozen parameters, parameter groups or pruning masks.
        A history's ``seconds`` is then the epoch's time for all members."""
        seeds = self.shuffle_seeds(fit_kwargs.pop("rng", None))
        if batched:
            return self._fit_batched(X, y, seeds[0], **fit_kwargs)
        verbose = fit_kwargs.get("verbose", True)
        histories = []
        for i, m in enumerate(self.members):
            if verbose:
                print(f"member {i + 1}/{len(self.members)}")
            histories.append(m.fit(X, y, rng=seeds[i], **fit_kwargs))
        return histories

    _BATCHED_KWARGS = ("epochs", "batch_size", "optimizer", "shuffle", "validation_data", "verbose")

    def _fit_batched(self, X, y, seed, **kwargs):
        unknown = sorted(k for k in kwargs if k not in self._BATCHED_KWARGS)
        if unknown:
            raise TypeError(f"fit(batched=True) does not take {', '.join(unknown)} (it takes "
                            f"{', '.join(self._BATCHED_KWARGS)} and rng); use batched=False")
        epochs = check_int("epochs", kwargs.get("epochs", 5), 1)
        batch_size = check_int("batch_size", kwargs.get("batch_size", 128), 1)
        shuffle, verbose = kwargs.get("shuffle", True), kwargs.get("verbose", True)
        first = self.members[0]
        X, y = first._check_batch(X, y)
        n = X.shape[0]
        if n == 0:
            raise ValueError("the batch is empty")
        validation = kwargs.get("validation_data")
        if validation is not None:
            Xv, yv = validation
            Xv = first._check_x(Xv, "validation X")
            if Xv.shape[0] == 0:
                raise ValueError("validation X is empty")
            if Xv.shape[0] < 2 and any(m._batch_stats(False) for m in self.members):
                raise ValueError("a BatchNorm1d without running statistics needs at least 2 validation rows")
            validation = (Xv, first.loss.targets(yv, len(Xv), first.out_features, first.dtype, "validation y"))
        if n % batch_size == 1 and any(m._batch_stats(True) for m in self.members):
            raise ValueError(f"{n} rows in batches of {batch_size} leave a last batch of one row, which "
                             "BatchNorm1d cannot normalise on batch statistics; choose another batch_size")
        held = []
        try:
            for i, m in enumerate(self.members):
                if not m._training_lock.acquire(blocking=False):
                    raise RuntimeError(f"member {i} is already being trained by another call; training one "
                                       "model from two threads at once is not supported")
                held.append(m._training_lock)
            optimizer = kwargs.get("optimizer")
            for m in self.members:
                if optimizer is not None:
                    m.compile(optimizer)
                elif m.optimizer is None:
                    m.compile()
            trainer = _Batched(self.members)
            try:
                return trainer.fit(X, y, seed, epochs, batch_size, shuffle, validation, verbose)
            finally:
                trainer.write_back()
        finally:
            for lock in held:
                lock.release()

    # -- inference ---------------------------------------------------------------------
    def member_proba(self, X, batch_size=1024):
        """Every member's class probabilities, stacked: (members, n, classes)."""
        return np.stack([m.predict_proba(X, batch_size) for m in self.members])

    def predict_proba(self, X, batch_size=1024):
        """The mean of the members' class probabilities (summed in float64), in the members' dtype."""
        total = None
        for m in self.members:
            p = m.predict_proba(X, batch_size)
            total = p.astype(np.float64) if total is None else total + p
        return (total / len(self.members)).astype(self.dtype)

    def predict(self, X, batch_size=1024):
        """The predicted classes: argmax of :meth:`predict_proba`."""
        return self.predict_proba(X, batch_size).argmax(axis=1)

    def predict_uncertainty(self, X, batch_size=1024):
        """The :class:`Uncertainty` of the members' predictions for X."""
        return summarize(self.member_proba(X, batch_size))

    def ensemble_predict(self, X, batch_size=1024):
        """The slide's ``(ensemble_prediction, ensemble_uncertainty)``: the mean and
        the (unbiased) standard deviation of the members' probabilities, row by row."""
        u = self.predict_uncertainty(X, batch_size)
        return u.proba, u.std

    def scores(self, X, y, n_bins=15, batch_size=1024):
        """The ensemble's ``accuracy``, ``nll``, ``brier`` and ``ece`` (``n_bins``
        bins) on (X, y): :mod:`fastwb.metrics` of :meth:`predict_proba`."""
        return _scores(y, self.predict_proba(X, batch_size), n_bins)

    def evaluate(self, X, y, batch_size=1024):
        """``(nll, accuracy)`` of the ensemble's mean probabilities, as
        :meth:`fastwb.nn.Sequential.evaluate` gives ``(loss, accuracy)``."""
        s = self.scores(X, y, batch_size=batch_size)
        return s["nll"], s["accuracy"]

    # -- files ---------------------------------------------------------------------------
    def save(self, path):
        """Write the ensemble to exactly ``path``, atomically: one ``.npz`` holding
        every member's v2 checkpoint (with its optimizer state:
        :meth:`fastwb.nn.Sequential.save`) and the ensemble's seed.  Read it
        with :func:`load`."""
        fields = {"format": np.array(ENSEMBLE_FORMAT),
                  "spec": np.array(json.dumps({"n_members": len(self.members), "seed": self.seed}))}
        for i, m in enumerate(self.members):
            buf = io.BytesIO()
            m.save(buf, with_optimizer=True)
            fields[f"member_{i}"] = np.frombuffer(buf.getvalue(), np.uint8)
        with _io.atomic_open(path, "wb") as fh:
            np.savez(fh, **fields)

    @classmethod
    def load(cls, path):
        """Read an ensemble written by :meth:`save` (see :func:`load`)."""
        return load(path)


def _scores(y, proba, n_bins):
    return {"accuracy": metrics.accuracy(np.asarray(y), proba.argmax(axis=1)),
            "nll": metrics.nll(y, proba), "brier": metrics.brier_score(y, proba),
            "ece": metrics.expected_calibration_error(y, proba, n_bins)}


def load(path):
    """Read an ensemble file written by :meth:`Ensemble.save`.  Sizes are
    checked before anything is read (:class:`fastwb._io.NpzReader`), and each
    member's checkpoint as :func:`fastwb.nn.load` checks it; a damaged or
    foreign file is a ValueError naming it (and the member)."""
    with _io.NpzReader(path, "fastwb ensemble") as npz:
        if "format" not in npz.members or "spec" not in npz.members:
            raise npz.error("no format or spec")
        fmt = str(npz.read("format", max_bytes=1024))
        if fmt != ENSEMBLE_FORMAT:
            raise npz.error(f"format {fmt!r} is not {ENSEMBLE_FORMAT!r}")
        try:
            spec = json.loads(str(npz.read("spec", max_bytes=_SPEC_BYTES)))
            count = check_int("n_members", spec["n_members"], 1)
            seed = check_int("seed", spec["seed"], 0)
        except (ValueError, KeyError, TypeError) as e:
            raise npz.error(f"bad specification ({e})") from None
        expected = {"format", "spec"} | {f"member_{i}" for i in range(count)}
        if set(npz.members) != expected:
            missing, extra = sorted(expected - set(npz.members)), sorted(set(npz.members) - expected)
            raise npz.error(f"its members do not match n_members={count}"
                            + (f": missing {', '.join(missing)}" if missing else "")
                            + (f": unexpected {', '.join(extra)}" if extra else ""))
        models = []
        for i in range(count):
            member = npz.members[f"member_{i}"]
            if member.dtype != np.uint8 or len(member.shape) != 1:
                raise npz.error(f"member_{i} is {member.describe()}, not the bytes of a checkpoint")
            raw = npz.read(f"member_{i}", max_bytes=_MEMBER_BYTES)
            try:
                models.append(_load_model(io.BytesIO(raw.tobytes())))
            except ValueError as e:
                raise npz.error(f"member_{i}: {e}") from None
    ens = Ensemble(models)
    ens.seed = seed
    return ens


# ---------------------------------------------------------------------------
# batched training
# ---------------------------------------------------------------------------

class _Batched:
    """The members of an ensemble trained as one model on shared batches.

    Each member gets a shadow: a copy whose parameter and gradient buffers are
    views of one flat buffer holding all members' parameters end to end (and
    one for the gradients), so that each member's compiled step writes its
    gradients into its part and one optimizer pass over the flat buffer
    updates every member.  The shadows' steps are the members' own compiled
    code on the same values, so a batched step equals the members' steps bit
    for bit.  :meth:`write_back` copies the shadows' state into the members."""

    def __init__(self, members):
        self.members = members
        opts = [m.optimizer for m in members]
        first = opts[0]
        for i, (m, opt) in enumerate(zip(members, opts)):
            if m.frozen or m.groups or m.masks is not None:
                raise ValueError(f"member {i} has frozen parameters, parameter groups or pruning masks; "
                                 "fit(batched=True) runs one plain optimizer pass for all members: use batched=False")
            if type(opt) is not type(first) or opt.hyper != first.hyper or opt.step_count != first.step_count \
                    or opt.units[0] is not None or opt.masks[0] is not None or opt.groups:
                raise ValueError(f"member {i}'s optimizer ({opt!r}, step {opt.step_count}) differs from member 0's "
                                 f"({first!r}, step {first.step_count}); fit(batched=True) needs one optimizer "
                                 "for all members: compile them alike, or use batched=False")
        sizes = [m.n_params for m in members]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        dtype = members[0].dtype
        self.params = np.empty(int(self.bounds[-1]), dtype)
        self.grads = np.zeros_like(self.params)
        self.shadows = []
        for i, m in enumerate(members):
            part = slice(int(self.bounds[i]), int(self.bounds[i + 1]))
            self.params[part] = m.params
            s = m.copy()
            s.optimizer = None
            s.params, s.grads = self.params[part], self.grads[part]     # the flat buffers' parts, in place
            s._views()
            s._workspaces.clear()
            s._pool = WorkspacePool()
            s.train()
            self.shadows.append(s)
        self.optimizer = type(first)([self.params], **first.hyper)
        self.optimizer.step_count = first.step_count
        for name, buf in self.optimizer.state[0].items():
            for i, opt in enumerate(opts):
                buf[self.bounds[i]:self.bounds[i + 1]] = opt.state[0][name]

    def fit(self, X, y, seed, epochs, batch_size, shuffle, validation, verbose):
        shadows, M, n = self.shadows, len(self.shadows), X.shape[0]
        lead = shadows[0]
        steps_per_epoch = -(-n // batch_size)
        names = ("loss",) + lead.loss.metrics
        histories = [{k: [] for k in names + tuple(f"val_{k}" for k in names) + ("sparsity", "seconds")}
                     for _ in range(M)]
        last_epoch = lead.epochs_done + epochs
        for _ in range(epochs):
            epoch = lead.epochs_done
            order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
            bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{last_epoch} ({M} members, batched)", verbose)
            t0 = time.perf_counter()
            loss_sum, correct = np.zeros(M), np.zeros(M, np.int64)
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                ws = lead._workspace(len(idx))           # the batch is gathered once, into the lead's workspace
                yb = _gather(ws, X, y, idx)
                step_loss = 0.0
                for k, shadow in enumerate(shadows):
                    wk = shadow._workspace(len(idx))
                    loss = shadow._gradients(ws.x, yb, wk)
                    loss_sum[k] += loss * len(idx)
                    step_loss += loss
                    correct[k] += shadow._correct(wk, yb)
                self.optimizer._apply([self.grads])
                for shadow in shadows:
                    shadow.step_count += 1
                bar.update(step_loss / M)
            seconds = time.perf_counter() - t0
            for k, shadow in enumerate(shadows):
                logs = shadow._end_epoch({"loss": loss_sum[k] / n, "accuracy": correct[k] / n}, validation, seconds)
                for key, v in logs.items():
                    histories[k].setdefault(key, []).append(v)
            mean = {key: float(np.mean([h[key][-1] for h in histories])) for key in histories[0]
                    if histories[0][key] and key not in ("seconds", "sparsity")}
            bar.close(f"epoch {epoch + 1}/{last_epoch} ({M} members, batched): "
                      + ", ".join(f"mean {key} {v:.4f}" for key, v in mean.items())
                      + f", {n * M / max(seconds, 1e-9):,.0f} member-samples/s")
        return histories

    def write_back(self):
        """Make the members what their shadows have become: parameters, gradients,
        running statistics, step and epoch counts, optimizer state and step."""
        for i, (m, s) in enumerate(zip(self.members, self.shadows)):
            m.params[...] = s.params
            m.grads[...] = s.grads
            m.buffers[...] = s.buffers
            m.num_batches_tracked[...] = s.num_batches_tracked
            m.step_count, m.epochs_done = s.step_count, s.epochs_done
            for name, buf in m.optimizer.state[0].items():
                buf[...] = self.optimizer.state[0][name][self.bounds[i]:self.bounds[i + 1]]
            m.optimizer.step_count = self.optimizer.step_count


# ---------------------------------------------------------------------------
# Monte Carlo dropout
# ---------------------------------------------------------------------------

def mc_dropout(model, X, n=30, rng=None, batch_size=1024):
    """Monte Carlo dropout (Gal and Ghahramani, 2016): ``n`` stochastic forward
    passes of ``model`` over X with its dropout on, summarised as an
    :class:`Uncertainty` (the passes play the members).

    BatchNorm1d layers normalise by their running statistics, as in
    inference, and update nothing.  The model itself is never touched: the
    passes are the engine's training-mode forward passes of a private copy
    whose BatchNorm running statistics are frozen
    (:meth:`fastwb.nn.Sequential.freeze`: used in training mode too, never
    updated) and whose dropout seed is drawn from ``rng``; each pass (and each
    chunk of ``batch_size`` rows) gets its own masks from the engine's
    counter-based dropout generator, so a seeded call is reproducible.  A BatchNorm1d without running
    statistics normalises by the statistics of the whole X, as in inference
    (X then runs in one chunk).

    ``model``: a :class:`fastwb.nn.Sequential` classifier (``"cross_entropy"``)
    with at least one Dropout of p > 0; ``n`` >= 2 passes; ``rng``: seed,
    Generator or None."""
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastwb.nn.Sequential, got {type(model).__name__}")
    if model.loss.name != "cross_entropy":
        raise ValueError(f"mc_dropout averages class probabilities: the model trains with {model.loss.name!r}, "
                         "not 'cross_entropy'")
    n = check_int("n", n, 2)
    batch_size = check_int("batch_size", batch_size, 1)
    if not any(st.p > 0 for st in model._plan):
        raise ValueError("the model has no Dropout with p > 0, so every pass would give the same output; "
                         "add an nn.Dropout layer (or use an Ensemble)")
    X = model._check_x(X)
    rows = X.shape[0]
    if rows == 0:
        raise ValueError("X is empty")
    m = _stochastic_copy(model)
    m.seed = int(init.as_generator(rng).integers(0, 2**31 - 1))
    if m._batch_stats(False):
        if rows < 2:
            raise ValueError("a BatchNorm1d without running statistics needs at least 2 rows")
        batch_size = rows
    probs = np.empty((n, rows, m.out_features), m.dtype)
    for chunk, start in enumerate(range(0, rows, batch_size)):
        part = X[start:start + batch_size]
        ws = Workspace(m, part.shape[0])
        for t in range(n):
            logits = ws.plan.forward(part, True, chunk * n + t)
            functional.softmax(logits, out=probs[t, start:start + part.shape[0]])
    return summarize(probs)


def _stochastic_copy(model):
    """A copy of ``model`` that computes, in training mode, its dropout on top of
    its inference-mode network: every tracked BatchNorm1d frozen (normalising by
    its running statistics, updating nothing; the dropout fused after it still
    drops)."""
    m = model.copy()
    m.optimizer = None
    running = [f"{i}.{name}" for i, layer in enumerate(m.layers)
               if isinstance(layer, BatchNorm1d) and layer.track_running_stats
               for name in ("running_mean", "running_var", "num_batches_tracked")]
    if running:
        m.freeze(*running)
    return m
