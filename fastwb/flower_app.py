"""fastwb's federated client on Flower's deployment engine (SuperLink and SuperNodes).

:func:`fastwb.federated.simulate` runs every client inside one machine on
Flower's simulation engine.  This module is the same client as a Flower app
that Flower's deployment engine runs: a long-running SuperLink coordinates, one
SuperNode per machine (or per terminal) holds that machine's data partition and
runs ``client_app`` for it, and ``flwr run`` submits the app, whose
``server_app`` then drives the rounds::

    from fastwb import flower_app
    flower_app.write_app("fastwb-app", **{"num-server-rounds": 5})
    # then: flower-superlink, two flower-supernode, `flwr run fastwb-app <connection>`
    # (README.md, "Across machines: SuperLink and SuperNodes", has the commands)

Both apps use Flower's Message API (``flwr.serverapp.strategy``; written
against Flower 1.42): ``client_app`` is a
``flwr.clientapp.ClientApp`` whose ``@train`` and ``@evaluate`` functions hand
the server's arrays to a :class:`fastwb.federated.FlowerClient` and send back
its arrays and metrics (with ``num-examples``, the rows FedAvg weights by);
``server_app`` is a ``flwr.serverapp.ServerApp`` whose main function runs
``flwr.serverapp.strategy.FedAvg`` with the test set scored on the server
after every round.

**The run configuration** (``[tool.flwr.app.config]`` of the app's
``pyproject.toml``, :data:`RUN_CONFIG`; ``flwr run --run-config 'k=v'``
overrides it) is read by both apps: the data set and its folder, the layer
sizes, the local training, the seed of the partition and of the initial
weights.  Each SuperNode says which partition it holds by its node
configuration: ``--node-config "partition-id=0 num-partitions=2"``.  Every
SuperNode loads the whole training set itself and keeps its own seeded
partition (:func:`fastwb.federated.partition`), so the partitions of all the
nodes agree without any data travelling; only weights do.  In a real
deployment each machine would load its own rows instead.

Importing this module imports :mod:`fastwb.federated` first, which turns
Flower's telemetry off (``FLWR_TELEMETRY_ENABLED=0``) unless it is set.
"""

import json  # noqa: I001  (fastwb.federated must come before flwr)
import math
import os
import time

import numpy as np

from fastwb import federated          # first: it sets FLWR_TELEMETRY_ENABLED before flwr loads
from fastwb._io import atomic_open

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

__all__ = ["APP_NAME", "DEFAULT_SIZES", "RUN_CONFIG", "client_app", "server_app", "write_app"]

APP_NAME = "fastwb-flower"

#: The run configuration ``write_app`` writes, with its defaults.  ``data-path``
#: and ``results`` are empty for "none" (TOML has no null).
RUN_CONFIG = {
    "dataset": "digits",            # "digits", "mnist" or "fashion-mnist" (fastwb.datasets.load)
    "data-path": "",                # the MNIST folder (empty: the data set's environment variable)
    "sizes": "",                    # layer sizes "in-hidden...-classes" (empty: DEFAULT_SIZES[dataset])
    "activation": "relu",
    "dtype": "float32",
    "scheme": "iid",                # the partition: "iid" or "shards" (fastwb.federated.partition)
    "num-server-rounds": 2,
    "fraction-train": 1.0,          # the fraction of the connected nodes that trains each round
    "fraction-evaluate": 0.0,       # ... and that scores the global weights on its own rows
    "min-nodes": 2,                 # the server waits until this many SuperNodes are connected
    "local-epochs": 1,
    "batch-size": 10,
    "optimizer": "sgd",
    "lr": 0.1,
    "seed": 0,                      # the partition, the initial weights and the shuffling
    "results": "",                  # a JSON file the server writes its per-round test scores to
}

#: The layer sizes when ``sizes`` is empty: digits 64-32-10, MNIST McMahan et al.'s 2NN.
DEFAULT_SIZES = {"digits": "64-32-10", "mnist": "784-200-200-10", "fashion-mnist": "784-200-200-10"}


# -- the run configuration ------------------------------------------------------------------
def _config(run_config):
    """The run configuration with the defaults filled in and every value checked
    and converted to its default's type (a value of the wrong type is a
    TypeError naming it, a bad value a ValueError)."""
    unknown = sorted(set(run_config) - set(RUN_CONFIG))
    if unknown:
        raise ValueError(f"unknown run configuration key(s) {', '.join(map(repr, unknown))}; "
                         f"the keys are {', '.join(RUN_CONFIG)}")
    cfg = {}
    for key, default in RUN_CONFIG.items():
        value = run_config.get(key, default)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            if not isinstance(value, str):
                raise TypeError(f"run configuration {key!r} must be a string, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"run configuration {key!r} must be a number, got {value!r}")
        elif isinstance(default, int) and value != int(value):
            raise ValueError(f"run configuration {key!r} must be an integer, got {value!r}")
        else:
            value = type(default)(value)
            if not math.isfinite(value):
                raise ValueError(f"run configuration {key!r} must be finite, got {value!r}")
        cfg[key] = value
    if cfg["dataset"] not in DEFAULT_SIZES:
        raise ValueError(f"run configuration 'dataset' must be one of {', '.join(DEFAULT_SIZES)}, "
                         f"got {cfg['dataset']!r}")
    sizes = cfg["sizes"] or DEFAULT_SIZES[cfg["dataset"]]
    try:
        cfg["sizes"] = [int(s) for s in sizes.split("-")]
    except ValueError:
        raise ValueError(f"run configuration 'sizes' must be layer widths like '64-32-10', got {sizes!r}") from None
    if len(cfg["sizes"]) < 2 or min(cfg["sizes"]) < 1:
        raise ValueError(f"run configuration 'sizes' needs an input and an output width >= 1, got {sizes!r}")
    for key in ("num-server-rounds", "min-nodes", "local-epochs", "batch-size"):
        if cfg[key] < 1:
            raise ValueError(f"run configuration {key!r} must be >= 1, got {cfg[key]}")
    for key in ("fraction-train", "fraction-evaluate"):
        if not 0 <= cfg[key] <= 1:
            raise ValueError(f"run configuration {key!r} must be in [0, 1], got {cfg[key]}")
    if cfg["fraction-train"] == 0:
        raise ValueError("run configuration 'fraction-train' must be > 0: no node would train")
    if not cfg["lr"] > 0:
        raise ValueError(f"run configuration 'lr' must be > 0, got {cfg['lr']}")
    cfg["data-path"] = cfg["data-path"] or None
    return cfg


def _model(cfg):
    """The untrained, seeded model both apps build from the run configuration."""
    import fastwb

    model = fastwb.MLP(cfg["sizes"], cfg["activation"], dtype=cfg["dtype"], rng=cfg["seed"])
    model.compile(cfg["optimizer"], lr=cfg["lr"])
    return model


def _check_width(cfg, X, y):
    sizes = cfg["sizes"]
    if X.shape[1] != sizes[0]:
        raise ValueError(f"data set {cfg['dataset']!r} has {X.shape[1]} features, the run configuration's "
                         f"sizes {'-'.join(map(str, sizes))} take {sizes[0]}")
    if y.size and int(y.max()) >= sizes[-1]:
        raise ValueError(f"data set {cfg['dataset']!r} has label {int(y.max())}, the run configuration's "
                         f"sizes {'-'.join(map(str, sizes))} give {sizes[-1]} classes")


# -- the ClientApp ----------------------------------------------------------------------------
def _node_partition(context):
    """(partition id, number of partitions) from this SuperNode's ``--node-config``."""
    missing = [k for k in ("partition-id", "num-partitions") if k not in context.node_config]
    if missing:
        raise ValueError(f"the SuperNode's node config lacks {' and '.join(missing)}: start it with "
                         "--node-config \"partition-id=0 num-partitions=2\"")
    pid, parts = context.node_config["partition-id"], context.node_config["num-partitions"]
    if not (isinstance(pid, int) and isinstance(parts, int) and 0 <= pid < parts):
        raise ValueError(f"node config partition-id={pid!r} num-partitions={parts!r}: need integers "
                         "0 <= partition-id < num-partitions")
    return pid, parts


def _client(context):
    """A FlowerClient on this node's partition with a fresh model, as every
    message in a deployment gets (Flower starts a ``flwr-clientapp`` process
    per message): a model that trained before would shuffle by its epoch
    count.  The data set and the partitions are loaded once per process
    (:func:`fastwb.federated._client_rows` caches them)."""
    pid, parts = _node_partition(context)
    cfg = _config(context.run_config)
    X, y, partitions = federated._client_rows(cfg["dataset"], cfg["data-path"], np.dtype(cfg["dtype"]).name,
                                              parts, cfg["scheme"], cfg["seed"])
    _check_width(cfg, X, y)
    rows = partitions[pid]
    return federated.FlowerClient(_model(cfg), X[rows], y[rows], epochs=cfg["local-epochs"],
                                  batch_size=cfg["batch-size"], optimizer=cfg["optimizer"], lr=cfg["lr"],
                                  seed=cfg["seed"] * 1_000_003 + pid)


def _round(msg):
    config = msg.content.get("config")
    return int(config.get("server-round", 0)) if config is not None else 0


client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """One round of local training on this node's partition."""
    client = _client(context)
    arrays, rows, metrics = client.fit(msg.content["arrays"].to_numpy_ndarrays(), {"server_round": _round(msg)})
    metrics["num-examples"] = rows
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    """The server's arrays scored on this node's own rows."""
    client = _client(context)
    loss, rows, metrics = client.evaluate(msg.content["arrays"].to_numpy_ndarrays(), {})
    metrics.update({"loss": loss, "num-examples": rows})
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


# -- the ServerApp ----------------------------------------------------------------------------
server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    """FedAvg over the connected SuperNodes for ``num-server-rounds`` rounds, the
    test set scored on the server before the first round and after each."""
    from fastwb import datasets

    cfg = _config(context.run_config)
    X_train, y_train, X_test, y_test = datasets.load(cfg["dataset"], cfg["data-path"], np.dtype(cfg["dtype"]),
                                                     rng=cfg["seed"])
    _check_width(cfg, X_train, np.concatenate([y_train, y_test]))
    if cfg["results"]:
        from fastwb._io import check_writable_path

        check_writable_path(cfg["results"], "results file")
    model = _model(cfg)
    history = {"accuracy": [], "loss": [], "seconds": []}
    clock = [time.perf_counter()]

    def evaluate(server_round, arrays):
        federated.set_weights(model, arrays.to_numpy_ndarrays())
        loss, accuracy = model.evaluate(X_test, y_test)
        now = time.perf_counter()
        history["accuracy"].append(float(accuracy))
        history["loss"].append(float(loss))
        history["seconds"].append(now - clock[0] if server_round else 0.0)
        clock[0] = now
        print(f"fastwb round {server_round}: test accuracy {accuracy:.4f}, loss {loss:.4f}", flush=True)
        return MetricRecord({"accuracy": float(accuracy), "loss": float(loss)})

    strategy = FedAvg(fraction_train=cfg["fraction-train"], fraction_evaluate=cfg["fraction-evaluate"],
                      min_train_nodes=1, min_evaluate_nodes=1 if cfg["fraction-evaluate"] > 0 else 0,
                      min_available_nodes=cfg["min-nodes"])
    clock[0] = time.perf_counter()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(federated.get_weights(model)),
                   num_rounds=cfg["num-server-rounds"], evaluate_fn=evaluate)
    if cfg["results"]:
        record = {"dataset": cfg["dataset"], "sizes": cfg["sizes"], "rounds": cfg["num-server-rounds"],
                  "nodes": len(list(grid.get_node_ids())), **history}
        with atomic_open(cfg["results"], "w") as fh:
            json.dump(record, fh, indent=1)


# -- the app folder ---------------------------------------------------------------------------
def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)   # a JSON string is a TOML basic string


def write_app(folder, **run_config):
    """Write the Flower app folder ``flwr run`` submits: ``folder/pyproject.toml``
    naming ``server_app`` and ``client_app`` as the app's components and holding
    the run configuration, :data:`RUN_CONFIG` updated by ``run_config`` (keys
    with dashes, so pass them as ``**{"num-server-rounds": 5}``; checked here:
    TypeError or ValueError before anything is written).  ``data-path`` and
    ``results`` are made absolute (relative to this process's folder), since
    the apps run in processes of their own.  The folder is created if missing;
    the file is written atomically.  Returns the file's path.

    The app carries no code: the SuperLink and the SuperNodes import
    ``fastwb.flower_app`` from their own environment, which must have fastwb
    and Flower installed.  No ``[project].dependencies`` are declared, so a
    SuperLink that installs an app's dependencies (``uv sync``) installs nothing."""
    cfg = dict(RUN_CONFIG)
    cfg.update(run_config)
    _config(cfg)                            # every value checked before anything is written
    cfg = {key: type(RUN_CONFIG[key])(value) if isinstance(RUN_CONFIG[key], (int, float)) else value
           for key, value in cfg.items()}
    for key in ("data-path", "results"):
        if cfg[key]:
            cfg[key] = os.path.abspath(os.path.expanduser(cfg[key]))
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    lines = [
        "# A Flower app running fastwb's federated client: `flwr run <this folder> <connection>`.",
        "# Written by fastwb.flower_app.write_app.",
        "[project]",
        f'name = "{APP_NAME}"',
        'version = "1.0.0"',
        'description = "fastwb MLP, FedAvg on Flower\'s deployment engine"',
        'license = "BSD-3-Clause"',
        "",
        "[tool.flwr.app]",
        'publisher = "fastwb"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "fastwb.flower_app:server_app"',
        'clientapp = "fastwb.flower_app:client_app"',
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{key} = {_toml_value(value)}" for key, value in cfg.items()]
    path = os.path.join(folder, "pyproject.toml")
    with atomic_open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
