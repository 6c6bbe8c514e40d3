"""Federated learning on Flower (``pip install 'fastwb[federated]'``).

Only weights travel: each client trains a copy of the model on data that never
leaves it, and a Flower strategy (FedAvg, FedProx, ...) aggregates the
weights.  fastwb supplies the client, the data partitions of McMahan et al.
(2017), a simulation on Flower's own engine and the privacy accounting;
Flower does the networking, the scheduling and the aggregation::

    from fastwb import federated, nn
    model = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                          nn.Linear(200, 10), rng=0)
    client = federated.FlowerClient(model, X_mine, y_mine, epochs=1, batch_size=10, lr=0.1)
    # a Flower ClientApp: ClientApp(client_fn=lambda context: client.to_client())

**The parameters** a client exchanges are every entry of the model's
``state_dict`` in its order (Linear weights ``(in, out)``, biases, and
BatchNorm's weight, bias, running mean, running variance and batch count):
:func:`get_weights` / :func:`set_weights`.  ``batchnorm="average"`` (the
default) lets the strategy average BatchNorm's parameters and running
statistics like the weights; ``batchnorm="local"`` keeps them on the client
(FedBN, Li et al. 2021): the client still sends them, so that every client
sends the same list, but ignores the server's values for them.  The batch
count is averaged too and rounded back to an integer.

**One client round** (:meth:`FlowerClient.fit`): the server's arrays are copied
into the model's flat parameter buffer, a fresh optimizer
(``optimizer``/``lr``, plain SGD by default as in FedAvg) trains ``epochs``
local epochs with fastwb's compiled step, and copies of the arrays go back
with the number of training rows, by which FedAvg weights the clients.  The
shuffling seed is drawn from the client's seed and the round number, so a
simulation is repeatable.  The metrics returned with the weights say where the
time went (``train_seconds``, ``copy_seconds``).

**FedProx** (Li et al. 2020): when the server's config carries
``proximal_mu`` (Flower's ``FedProx`` strategy sends it) the local objective
is ``loss(w) + mu/2 ||w - w_server||^2``, i.e. every step's gradient gets
``mu (w - w_server)`` added before the optimizer runs (fit's ``proximal``).

**Differential privacy**: :func:`simulate` with ``clip``/``noise`` wraps the
strategy in Flower's ``DifferentialPrivacyClientSideFixedClipping`` and the
client app in ``fixedclipping_mod``: each client's update ``w_client -
w_server`` is scaled to an L2 norm of at most ``clip``, and the server adds
Gaussian noise of standard deviation ``noise * clip / m`` to the mean of the
``m`` sampled updates.  That is the sampled Gaussian mechanism at the level of
clients; :func:`epsilon` gives its (epsilon, delta) guarantee by Rényi
accounting.

Flower's telemetry, its update check and Ray's usage statistics are turned
off when this module is imported (``FLWR_TELEMETRY_ENABLED=0``,
``FLWR_DISABLE_UPDATE_CHECK=1``, ``RAY_USAGE_STATS_ENABLED=0``), unless those
variables are set already: nothing leaves the machine but what the user's
federation sends.
"""

import functools
import logging
import math
import os
import time

import numpy as np

from fastwb._extras import require

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")      # Flower's CLIs would ask its servers for news
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")     # no GPUs here: keeps Ray's warning away
_flwr_client = require("flwr.client", "fastwb.federated", "federated")

__all__ = ["FlowerClient", "get_weights", "set_weights", "partition", "epsilon", "simulate",
           "rounds_to_reach", "plot_accuracy", "BATCHNORM_POLICIES", "PARTITIONS"]

BATCHNORM_POLICIES = ("average", "local")
PARTITIONS = ("iid", "shards")


# -- the parameters a client exchanges ---------------------------------------------------
def weight_names(model):
    """The names of the arrays :func:`get_weights` returns, in its order (the state dict's)."""
    return [name for name, *_ in model._names]


def get_weights(model):
    """Copies of every parameter and buffer of ``model``, in state-dict order."""
    return [model._entry(kind, off, shape).copy() for _, kind, off, shape in model._names]


def _local_names(model, batchnorm):
    """The state-dict names a client keeps for itself under the BatchNorm policy."""
    if batchnorm == "average":
        return frozenset()
    bn = {str(i) for i, layer in enumerate(model.layers) if type(layer).__name__ == "BatchNorm1d"}
    return frozenset(name for name in weight_names(model) if name.split(".", 1)[0] in bn)


def set_weights(model, arrays, keep=()):
    """Copy ``arrays`` (in :func:`get_weights`' order) into ``model``, leaving the
    names in ``keep`` as they are.  Every array is checked first (count, shapes,
    finite values), so a bad list changes nothing; the float arrays are cast to
    the model's dtype, the batch counts rounded to integers >= 0 and running
    variances raised to 0 where they are negative (which only the Gaussian
    noise of differential privacy makes them: an average of variances never
    is; clamping is post-processing, so it costs no privacy)."""
    arrays = list(arrays)
    if len(arrays) != len(model._names):
        raise ValueError(f"got {len(arrays)} arrays for a model of {len(model._names)} "
                         f"({', '.join(weight_names(model))})")
    checked = []
    for a, (name, kind, off, shape) in zip(arrays, model._names):
        a = np.asarray(a)
        if a.shape != tuple(shape):
            raise ValueError(f"array {name!r} has shape {a.shape}, the model needs {tuple(shape)}")
        if a.dtype.kind not in "fiu":
            raise ValueError(f"array {name!r} has dtype {a.dtype}, not a number")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"array {name!r} holds NaN or Inf")
        if kind == "count" and a.dtype.kind == "f":
            a = np.maximum(np.rint(a), 0)
        elif name.endswith("running_var"):
            a = np.maximum(a, 0)
        checked.append(a)
    for a, (name, kind, off, shape) in zip(checked, model._names):
        if name not in keep:
            model._entry(kind, off, shape)[...] = a


# -- the client ----------------------------------------------------------------------------
class FlowerClient(_flwr_client.NumPyClient):
    """A Flower ``NumPyClient`` training a fastwb model on local data.

    ``model``: a :class:`fastwb.nn.Sequential` (or ``fastwb.MLP``), trained in
    place.  ``X``, ``y``: this client's rows, which never leave it.
    ``epochs``, ``batch_size``, ``optimizer``, ``lr``: the local training of
    each round (the server's fit config may override each of them by the keys
    ``"epochs"``, ``"batch_size"``, ``"optimizer"``, ``"lr"``);
    ``proximal_mu`` likewise (FedProx; 0 is FedAvg).  ``batchnorm``: "average"
    or "local" (see the module's docstring).  ``validation``: optional
    ``(X, y)`` that :meth:`evaluate` scores (else the training rows).  ``seed``:
    the shuffling seed, mixed with the round number (and, as in any ``fit``,
    with the model's epoch count, so a client object that trains again from
    the same arrays shuffles anew; a fresh client repeats exactly).

    Not thread-safe: one client object trains one model.
    """

    def __init__(self, model, X, y, epochs=1, batch_size=32, optimizer="sgd", lr=0.1, proximal_mu=0.0,
                 batchnorm="average", validation=None, seed=0):
        from fastwb import _validate, optim
        from fastwb.nn.sequential import Sequential

        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastwb.nn.Sequential or fastwb.MLP, got {type(model).__name__}")
        X, y = model._check_batch(X, y)
        if X.shape[0] == 0:
            raise ValueError("a client needs at least one training row")
        self.model, self.X, self.y = model, X, y
        self.epochs = _validate.check_int("epochs", epochs, 1)
        self.batch_size = _validate.check_int("batch_size", batch_size, 1)
        optim.by_name(optimizer)            # a ValueError listing the names for an unknown one
        self.optimizer = optimizer
        self.lr = _validate.check_real("lr", lr, above=0)
        self.proximal_mu = _validate.check_real("proximal_mu", proximal_mu, minimum=0)
        if batchnorm not in BATCHNORM_POLICIES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_POLICIES}, got {batchnorm!r}")
        self.batchnorm = batchnorm
        self.keep = _local_names(model, batchnorm)
        if validation is not None:
            Xv, yv = model._check_batch(*validation)
            validation = (Xv, yv)
        self.validation = validation
        self.seed = int(seed)

    def get_parameters(self, config):
        """The model's arrays in state-dict order (copies)."""
        return get_weights(self.model)

    def fit(self, parameters, config):
        """Train on the local rows from the server's ``parameters``; returns
        ``(arrays, rows, metrics)`` with metrics ``loss``, ``accuracy`` (of the
        last local epoch), ``train_seconds`` and ``copy_seconds``."""
        t0 = time.perf_counter()
        set_weights(self.model, parameters, self.keep)
        copy = time.perf_counter() - t0
        epochs = int(config.get("epochs", self.epochs))
        batch_size = int(config.get("batch_size", self.batch_size))
        mu = float(config.get("proximal_mu", self.proximal_mu))
        self.model.compile(str(config.get("optimizer", self.optimizer)), lr=float(config.get("lr", self.lr)),
                           groups=self.model.groups)
        proximal = dict(mu=mu) if mu > 0 else None
        t1 = time.perf_counter()
        history = self.model.fit(self.X, self.y, epochs=epochs, batch_size=batch_size, verbose=False,
                                 rng=np.random.default_rng([self.seed, _round(config)]),
                                 proximal=proximal)
        t2 = time.perf_counter()
        out = get_weights(self.model)
        copy += time.perf_counter() - t2
        metrics = {"loss": float(history["loss"][-1]), "train_seconds": t2 - t1, "copy_seconds": copy}
        metrics.update({k: float(history[k][-1]) for k in self.model.loss.metrics})
        return out, int(self.X.shape[0]), metrics

    def evaluate(self, parameters, config):
        """``(loss, rows, {metric: value})`` of the server's ``parameters`` on the
        validation rows (the training rows without them)."""
        set_weights(self.model, parameters, self.keep)
        X, y = self.validation if self.validation is not None else (self.X, self.y)
        loss, metric = self.model.evaluate(X, y)
        return float(loss), int(X.shape[0]), {_metric_name(self.model): float(metric)}


def _round(config):
    """The round number of a fit config: ``server_round`` (what fastwb's simulation
    sends) or ``server-round`` (what Flower's message API sends), else 0."""
    return int(config.get("server_round", config.get("server-round", 0)))


def _metric_name(model):
    """The name of the metric ``model.evaluate`` returns."""
    return "r2" if model.loss.name == "mse" else model.loss.metrics[0]


# -- partitions -----------------------------------------------------------------------------
def partition(y, clients, scheme="iid", shards_per_client=2, seed=0):
    """Split the row indices ``0..len(y)-1`` among ``clients`` clients.

    ``"iid"``: a random permutation cut into equal blocks (the first
    ``len(y) % clients`` clients get one row more).  ``"shards"``: McMahan et
    al.'s pathological non-IID split: the rows sorted by label (ties in a
    random order) are cut into ``clients * shards_per_client`` shards of equal
    size and every client gets ``shards_per_client`` shards drawn at random,
    so most clients see two digits only (MNIST, 100 clients: 200 shards of
    300).  Rows left over by the shard size are dropped.  Returns a list of
    sorted int64 index arrays."""
    from fastwb import _validate

    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one label per row, got shape {y.shape}")
    clients = _validate.check_int("clients", clients, 1)
    if scheme not in PARTITIONS:
        raise ValueError(f"scheme must be one of {PARTITIONS}, got {scheme!r}")
    rng = np.random.default_rng(seed)
    n = len(y)
    if scheme == "iid":
        if clients > n:
            raise ValueError(f"{clients} clients need at least as many rows, got {n}")
        return [np.sort(part) for part in np.array_split(rng.permutation(n), clients)]
    shards_per_client = _validate.check_int("shards_per_client", shards_per_client, 1)
    n_shards = clients * shards_per_client
    size = n // n_shards
    if size == 0:
        raise ValueError(f"{n} rows cannot make {n_shards} shards of at least one row")
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")][:n_shards * size]
    shards = by_label.reshape(n_shards, size)
    owner = rng.permutation(n_shards).reshape(clients, shards_per_client)
    return [np.sort(shards[row].ravel()) for row in owner]


# -- privacy accounting ---------------------------------------------------------------------
def _rdp_sampled_gaussian(q, sigma, order):
    """Rényi DP of order ``order`` (an integer >= 2) of one step of the Poisson-
    sampled Gaussian mechanism with sampling rate q and noise multiplier sigma
    (Mironov, Talwar and Zhang 2019, Theorem 5 / the binomial expansion):
    ``log(sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k) / (2 sigma^2))) / (a-1)``."""
    if q == 0:
        return 0.0
    if q == 1:
        return order / (2 * sigma * sigma)
    terms = [math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
             + (order - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma * sigma)
             for k in range(order + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (order - 1)


ORDERS = tuple(range(2, 256))


def epsilon(noise_multiplier, sampling_rate, rounds, delta=1e-5):
    """The epsilon of ``rounds`` rounds of the sampled Gaussian mechanism, at ``delta``.

    Each round samples every client with probability ``sampling_rate`` (Flower
    samples a fixed number, ``fraction * clients``; the Poisson rate is the
    usual stand-in), clips each update to norm C and adds Gaussian noise of
    standard deviation ``noise_multiplier * C`` to their sum.  Rényi DP
    composes additively over rounds, and converts to (epsilon, delta)-DP as
    ``min over a of  rounds * rdp(a) + log(1 - 1/a) - (log(delta) + log(a)) / (a - 1)``
    (Canonne, Kamath and Steinke 2020, Proposition 12; tighter than Mironov's
    ``log(1/delta) / (a - 1)``), over the integer orders 2..255.  Returns
    ``inf`` for zero noise."""
    sigma = float(noise_multiplier)
    q = float(sampling_rate)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not 0 <= q <= 1:
        raise ValueError(f"sampling_rate must be in [0, 1], got {sampling_rate!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    rounds = int(rounds)
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if rounds == 0 or q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    return max(0.0, min(rounds * _rdp_sampled_gaussian(q, sigma, a) + math.log1p(-1 / a)
                        - (math.log(delta) + math.log(a)) / (a - 1) for a in ORDERS))


# -- the simulation -------------------------------------------------------------------------
def _blueprint(model):
    """What a client process needs to build an untrained copy of ``model``: its
    layer configurations, dtype, input width and loss (small, picklable)."""
    return ([(type(layer).__name__, layer.config()) for layer in model.layers], model.dtype.name,
            model.in_features, model.loss.name)


def _build(blueprint):
    from fastwb import nn
    from fastwb.nn.layers import layer_from_config

    layers, dtype, in_features, loss = blueprint
    model = nn.Sequential(*[layer_from_config({"type": kind, **config}) for kind, config in layers],
                          dtype=dtype, in_features=in_features, rng=0)
    model.compile("sgd", loss=loss)
    return model


@functools.lru_cache(maxsize=4)
def _client_rows(dataset, data_path, dtype, clients, scheme, seed):
    """(X_train, y_train, partitions) of a named data set, once per process: every
    client process loads the data itself instead of receiving it, and the
    seeded partition is the same in all of them."""
    from fastwb import datasets

    X, y, _, _ = datasets.load(dataset, data_path, np.dtype(dtype), rng=seed)
    return X, y, partition(y, clients, scheme, seed=seed)


def rounds_to_reach(accuracy, target):
    """The first round (1-based; round 0 is the initial model) whose accuracy is
    >= ``target``, or None."""
    for r, a in enumerate(accuracy):
        if r > 0 and a >= target:
            return r
    return None


def simulate(model, dataset="mnist", data_path=None, clients=100, fraction=0.1, rounds=50, scheme="iid",
             epochs=1, batch_size=10, optimizer="sgd", lr=0.1, proximal_mu=0.0, batchnorm="average",
             clip=None, noise=0.0, delta=1e-5, target=None, seed=0, threads_per_client=1, cpus=None,
             on_round=None, quiet=True):
    """Federated training of ``model`` on Flower's simulation engine (Ray).

    ``clients`` virtual clients hold the partitions of ``dataset``'s training
    set (:func:`partition` by ``scheme``, seeded); each round Flower's FedAvg
    (FedProx when ``proximal_mu`` > 0) samples ``fraction`` of them (at least
    one), each trains ``epochs`` local epochs of ``batch_size`` with
    ``optimizer``/``lr`` in a :class:`FlowerClient`, and the strategy averages
    the weights by rows.  The server scores every round's weights on the test
    set, which no client sees.  ``clip`` (with ``noise``, ``delta``): the
    client-level differential privacy of the module's docstring.

    The client processes are Ray actors of ``threads_per_client`` fastwb
    threads each, ``cpus`` (default: the CPUs this process may use) of them
    at once; each loads the data set itself (``data_path`` or the data set's
    environment variable), so only weights travel.  ``on_round(round,
    accuracy, loss, seconds)`` is called after every round's evaluation;
    ``quiet`` keeps Flower's own log to warnings and errors.  While Ray starts,
    the process's working directory is the folder that holds this fastwb (so
    that the workers import the same one), and it is restored afterwards; a
    failed client is a RuntimeError at the end, not a silently skipped update.

    Returns a dict: ``accuracy`` and ``loss`` per round (round 0: the initial
    weights), ``seconds`` per round, ``clients`` (the clients trained in each
    round), ``rounds_to_target`` (with ``target``),
    ``epsilon`` (with ``clip``: :func:`epsilon` at the sampling rate
    ``sampled / clients``, else None), and the client-side ``train_seconds``
    and ``copy_seconds`` summed over all rounds.  ``model`` ends with the
    final global weights."""
    from fastwb import _runtime, _validate, datasets

    require("ray", "fastwb.federated.simulate (Flower's simulation engine)", "federated")
    from flwr.client import ClientApp
    from flwr.client.mod import fixedclipping_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx
    from flwr.simulation import run_simulation

    clients = _validate.check_int("clients", clients, 1)
    rounds = _validate.check_int("rounds", rounds, 1)
    epochs = _validate.check_int("epochs", epochs, 1)
    batch_size = _validate.check_int("batch_size", batch_size, 1)
    threads_per_client = _validate.check_int("threads_per_client", threads_per_client, 1)
    fraction = _validate.check_real("fraction", fraction, above=0, maximum=1)
    if scheme not in PARTITIONS:
        raise ValueError(f"scheme must be one of {PARTITIONS}, got {scheme!r}")
    if batchnorm not in BATCHNORM_POLICIES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_POLICIES}, got {batchnorm!r}")
    lr = _validate.check_real("lr", lr, above=0)
    proximal_mu = _validate.check_real("proximal_mu", proximal_mu, minimum=0)
    noise = _validate.check_real("noise", noise, minimum=0)
    if clip is not None:
        clip = _validate.check_real("clip", clip, above=0)
    sampled = max(1, int(round(fraction * clients)))
    cpus = _runtime.cpu_budget()["cpus"] if cpus is None else _validate.check_int("cpus", cpus, 1)
    if data_path is None and dataset in datasets.DATASETS and os.environ.get(datasets.DATASETS[dataset].env):
        data_path = os.environ[datasets.DATASETS[dataset].env]
    data_path = None if data_path is None else os.path.abspath(data_path)
    X_test, y_test = datasets.load(dataset, data_path, model.dtype, rng=seed)[2:]
    _client_rows(dataset, data_path, model.dtype.name, clients, scheme, seed)     # fail here, not in Ray
    blueprint = _blueprint(model)
    data_key = (dataset, data_path, model.dtype.name, clients, scheme, seed)
    client_options = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                          proximal_mu=proximal_mu, batchnorm=batchnorm)

    def client_fn(context: Context):
        import fastwb

        fastwb.set_num_threads(threads_per_client)
        X, y, parts = _client_rows(*data_key)
        rows = parts[int(context.node_config["partition-id"])]
        return FlowerClient(_build(blueprint), X[rows], y[rows], seed=seed * 1_000_003
                            + int(context.node_config["partition-id"]), **client_options).to_client()

    history = {"accuracy": [], "loss": [], "seconds": [], "train_seconds": 0.0, "copy_seconds": 0.0, "clients": []}
    server_model = model
    clock = [time.perf_counter()]

    def evaluate(server_round, arrays, config):
        try:
            set_weights(server_model, arrays)
        except ValueError as e:
            raise ValueError(f"round {server_round}: the global weights cannot be used ({e}): training diverged; "
                             "try a smaller lr" + (", or less noise for this clip" if noise else "")) from None
        loss, accuracy = server_model.evaluate(X_test, y_test)
        now = time.perf_counter()
        seconds = now - clock[0] if server_round else 0.0
        clock[0] = now
        history["accuracy"].append(float(accuracy))
        history["loss"].append(float(loss))
        history["seconds"].append(seconds)
        if on_round is not None:
            on_round(server_round, float(accuracy), float(loss), seconds)
        return float(loss), {"accuracy": float(accuracy)}

    def fit_metrics(results):
        history["clients"].append(len(results))
        for _, m in results:
            history["train_seconds"] += m.get("train_seconds", 0.0)
            history["copy_seconds"] += m.get("copy_seconds", 0.0)
        total = sum(n for n, _ in results)
        return {"loss": sum(n * m.get("loss", 0.0) for n, m in results) / max(total, 1)}

    def fit_config(server_round):
        return {"server_round": server_round}

    options = dict(fraction_fit=fraction, fraction_evaluate=0.0, min_fit_clients=sampled,
                   min_evaluate_clients=0, min_available_clients=clients, evaluate_fn=evaluate,
                   on_fit_config_fn=fit_config, fit_metrics_aggregation_fn=fit_metrics,
                   initial_parameters=ndarrays_to_parameters(get_weights(model)))
    strategy = FedProx(proximal_mu=proximal_mu, **options) if proximal_mu > 0 else FedAvg(**options)
    mods = []
    if clip is not None:
        strategy = DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=noise,
                                                              clipping_norm=clip, num_sampled_clients=sampled)
        mods = [fixedclipping_mod]

    def server_fn(context):
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    backend = {"client_resources": {"num_cpus": threads_per_client, "num_gpus": 0.0},
               "init_args": {"num_cpus": max(cpus, threads_per_client), "num_gpus": 0,
                             "logging_level": "ERROR", "log_to_driver": False}}
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    if quiet:
        flwr_log.setLevel(logging.WARNING)
    # Ray starts its workers in this process's working directory, ahead of everything
    # else on their path: from a source checkout they would import its unbuilt fastwb
    # instead of the one running here.  So Ray starts from the folder holding this
    # fastwb (the data path is absolute by now), and the working directory comes back.
    here = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    clock[0] = time.perf_counter()
    try:
        run_simulation(ServerApp(server_fn=server_fn), ClientApp(client_fn=client_fn, mods=mods), clients,
                       backend_config=backend)
    finally:
        os.chdir(here)
        flwr_log.setLevel(level)
    if len(history["accuracy"]) != rounds + 1:
        raise RuntimeError(f"the Flower simulation ended after {len(history['accuracy']) - 1} of {rounds} "
                           "rounds (its log above says why)")
    trained = sum(history["clients"])
    if trained < rounds * sampled:      # Flower carries on past failed clients: fastwb does not
        raise RuntimeError(f"only {trained} of the {rounds * sampled} client rounds succeeded "
                           "(Flower's log above has the clients' errors)")
    history["rounds_to_target"] = None if target is None else rounds_to_reach(history["accuracy"], target)
    history["epsilon"] = None if clip is None else epsilon(noise, sampled / clients, rounds, delta)
    return history


def plot_accuracy(curves, target=None, title="FedAvg test accuracy per round"):
    """A matplotlib Figure of test accuracy against rounds: ``curves`` maps a
    label to a list of accuracies (round 0 first), e.g. ``{"IID": h["accuracy"]}``;
    ``target`` draws a dashed line."""
    from fastwb.plots import _figure

    fig = _figure("plot_accuracy")(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for label, accuracy in curves.items():
        ax.plot(range(len(accuracy)), accuracy, label=label)
    if target is not None:
        ax.axhline(target, linestyle="--", color="grey", linewidth=1, label=f"{target:.0%}")
    ax.set_xlabel("communication round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
