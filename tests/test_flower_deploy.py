"""fastwb.flower_app: fastwb's client and a FedAvg server as a Flower app for
Flower's deployment engine (SuperLink, SuperNodes, ``flwr run``).

Three levels, fastest first: the app folder ``write_app`` writes (checked by
Flower's own validator), the ClientApp and the ServerApp called in this
process (the server's messages handed to the client by a small in-memory
Grid, two nodes, the real FedAvg), and the real deployment: a SuperLink and
two SuperNodes as separate processes on 127.0.0.1 and ``flwr run`` submitting
the app.  Every Flower round there starts a fresh ``flwr-clientapp`` process
per node, so the whole round trip takes 35-50 s on a busy 2-core machine and
once took 78 s (load average 8); it runs when ``FASTWB_FLOWER_DEPLOY=1`` (CI
leaves it out), everything else always runs where Flower is installed.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="fastwb.flower_app needs flwr: pip install 'fastwb[federated]'")
flower_app = pytest.importorskip("fastwb.flower_app", reason="fastwb.flower_app needs Flower's Message API "
                                 "(flwr.serverapp.strategy): pip install -U 'fastwb[federated]'")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fastwb import datasets, federated


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Flower >= 1.42 stamps a new Message with the identity of the task its
    process runs (set by flwr-serverapp / flwr-clientapp); this process plays both."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        return
    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1, raising=False)


def _context(run_config=None, node_config=None, node_id=1):
    cfg = dict(flower_app.RUN_CONFIG, **(run_config or {}))
    return Context(run_id=1, node_id=node_id, node_config=dict(node_config or {}), state=RecordDict(),
                   run_config=cfg)


def _train_message(arrays, server_round=1, node_id=1):
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN)


# -- the app folder -------------------------------------------------------------------------
def test_write_app_passes_flowers_own_validation(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    path = flower_app.write_app(tmp_path / "app", **{"num-server-rounds": 3, "lr": 1, "dataset": "digits"})
    assert path == os.path.join(tmp_path / "app", "pyproject.toml")
    config, warnings = load_and_validate(Path(path), check_module=True)   # imports the components
    assert warnings == []
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fastwb.flower_app:server_app",
                                 "clientapp": "fastwb.flower_app:client_app"}
    assert app["config"]["num-server-rounds"] == 3
    assert app["config"]["lr"] == 1.0 and isinstance(app["config"]["lr"], float)
    assert set(app["config"]) == set(flower_app.RUN_CONFIG)
    assert "federations" not in config["tool"]["flwr"]   # 1.42 would migrate it into ~/.flwr and rewrite the file
    assert "dependencies" not in config["project"]      # nothing for a SuperLink's `uv sync` to fetch


def test_write_app_checks_everything_before_writing(tmp_path):
    path = flower_app.write_app(tmp_path)
    before = Path(path).read_bytes()
    for bad in ({"rounds": 3}, {"lr": 0}, {"local-epochs": 1.5}, {"dataset": "cifar"}, {"sizes": "64-x-10"},
                {"fraction-train": 2.0}, {"min-nodes": 0}):
        with pytest.raises(ValueError):
            flower_app.write_app(tmp_path, **bad)
    for bad in ({"lr": "fast"}, {"num-server-rounds": True}, {"dataset": 3}):
        with pytest.raises(TypeError):
            flower_app.write_app(tmp_path, **bad)
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["pyproject.toml"]     # no temporary file left behind


def test_write_app_makes_paths_absolute(tmp_path, monkeypatch):
    from flwr.cli.config_utils import load

    monkeypatch.chdir(tmp_path)
    flower_app.write_app("app", results="out/results.json", **{"data-path": "mnist"})
    config = load(tmp_path / "app" / "pyproject.toml")["tool"]["flwr"]["app"]["config"]
    assert config["results"] == str(tmp_path / "out" / "results.json")
    assert config["data-path"] == str(tmp_path / "mnist")
    assert config["sizes"] == ""        # empty strings stay empty: the defaults


def test_run_config_defaults_and_sizes():
    cfg = flower_app._config({})
    assert cfg["sizes"] == [64, 32, 10] and cfg["data-path"] is None
    assert flower_app._config({"dataset": "mnist"})["sizes"] == [784, 200, 200, 10]
    assert flower_app._config({"sizes": "64-16-16-10"})["sizes"] == [64, 16, 16, 10]


# -- the ClientApp, called directly --------------------------------------------------------------
def test_client_app_trains_its_own_partition():
    cfg = flower_app._config({})
    start = federated.get_weights(flower_app._model(cfg))
    y = datasets.load("digits")[1]
    parts = federated.partition(y, 2, "iid", seed=0)
    replies = []
    for pid in (0, 1, 0):
        ctx = _context(node_config={"partition-id": pid, "num-partitions": 2})
        reply = flower_app.client_app(_train_message(start, server_round=1), ctx)
        assert not reply.has_error()
        metrics = reply.content["metrics"]
        assert metrics["num-examples"] == len(parts[pid])
        assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1
        arrays = reply.content["arrays"].to_numpy_ndarrays()
        assert [a.shape for a in arrays] == [a.shape for a in start]
        assert any(not np.array_equal(a, b) for a, b in zip(arrays, start))
        replies.append(arrays)
    # the same partition, weights and round give the same update; the other partition another one
    assert all(np.array_equal(a, b) for a, b in zip(replies[0], replies[2]))
    assert any(not np.array_equal(a, b) for a, b in zip(replies[0], replies[1]))
    # another round number reshuffles the local batches
    ctx = _context(node_config={"partition-id": 0, "num-partitions": 2})
    other = flower_app.client_app(_train_message(start, server_round=2), ctx).content["arrays"].to_numpy_ndarrays()
    assert any(not np.array_equal(a, b) for a, b in zip(other, replies[0]))


def test_client_app_evaluates_on_its_rows():
    cfg = flower_app._config({})
    model = flower_app._model(cfg)
    ctx = _context(node_config={"partition-id": 1, "num-partitions": 3})
    msg = Message(content=RecordDict({"arrays": ArrayRecord(federated.get_weights(model)),
                                      "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=1, message_type=MessageType.EVALUATE)
    metrics = flower_app.client_app(msg, ctx).content["metrics"]
    X, y, _, _ = datasets.load("digits")
    rows = federated.partition(y, 3, "iid", seed=0)[1]
    loss, accuracy = model.evaluate(X[rows], y[rows])
    assert metrics["num-examples"] == len(rows)
    assert metrics["accuracy"] == pytest.approx(accuracy) and metrics["loss"] == pytest.approx(loss)


@pytest.mark.parametrize("node_config, match", [({}, "partition-id and num-partitions"),
                                                 ({"partition-id": 2, "num-partitions": 2}, "0 <= partition-id"),
                                                 ({"partition-id": "0", "num-partitions": 2}, "integers")])
def test_client_app_needs_a_partition(node_config, match):
    start = federated.get_weights(flower_app._model(flower_app._config({})))
    with pytest.raises(ValueError, match=match):
        flower_app.client_app(_train_message(start), _context(node_config=node_config))


def test_client_app_rejects_a_model_that_does_not_fit_the_data():
    start = federated.get_weights(flower_app._model(flower_app._config({"sizes": "60-8-10"})))
    ctx = _context({"sizes": "60-8-10"}, {"partition-id": 0, "num-partitions": 2})
    with pytest.raises(ValueError, match="64 features"):
        flower_app.client_app(_train_message(start), ctx)


# -- both apps in this process ---------------------------------------------------------------------
class _LocalGrid(Grid):
    """Hands every message to ``client_app`` in this process, as a SuperNode
    would in its own: node i holds partition i of n."""

    def __init__(self, client_app, run_config, nodes):
        self.client_app = client_app
        self.contexts = {100 + i: _context(run_config, {"partition-id": i, "num-partitions": nodes}, 100 + i)
                         for i in range(nodes)}
        self.sent = []

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.extend(m.metadata.message_type for m in messages)
        return [self.client_app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def test_server_app_runs_fedavg_and_scores_every_round(tmp_path, capsys):
    results = tmp_path / "results.json"
    run_config = {"num-server-rounds": 3, "results": str(results), "fraction-evaluate": 1.0}
    grid = _LocalGrid(flower_app.client_app, run_config, nodes=2)
    flower_app.server_app(grid, _context(run_config, node_id=0))
    record = json.loads(results.read_text())
    acc = record["accuracy"]
    assert len(acc) == 4 and len(record["loss"]) == 4 and record["nodes"] == 2
    assert acc[-1] > acc[0] + 0.3 and acc[-1] > 0.8, acc
    assert grid.sent == [MessageType.TRAIN] * 2 + [MessageType.EVALUATE] * 2 + [MessageType.TRAIN] * 2 \
        + [MessageType.EVALUATE] * 2 + [MessageType.TRAIN] * 2 + [MessageType.EVALUATE] * 2
    out = capsys.readouterr().out
    for r, a in enumerate(acc):
        assert f"fastwb round {r}: test accuracy {a:.4f}" in out
    # the server's round-0 score is the seeded initial model's, the client builds the same one
    X_test, y_test = datasets.load("digits")[2:]
    assert acc[0] == pytest.approx(flower_app._model(flower_app._config({})).evaluate(X_test, y_test)[1])


# -- the real deployment: SuperLink, two SuperNodes, flwr run, all on 127.0.0.1 ------------------------
CLIS = ("flower-superlink", "flower-supernode", "flwr")


def _cli(name):
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _free_ports(count):
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc):
    """End a process this test started, and its children (its own session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _tails(logs):
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())


def run_deployment(folder, rounds=2, timeout=240):
    """Start a SuperLink and two SuperNodes on free 127.0.0.1 ports under
    ``folder`` (HOME and FLWR_HOME there too; Flower's telemetry and its
    update check, a request to api.flower.ai by every CLI, off), submit the app with ``flwr run
    --stream``, stop everything; returns (results dict, flwr run's output, seconds)."""
    folder = Path(folder)
    missing = [name for name in CLIS if _cli(name) is None]
    if missing:
        pytest.skip(f"Flower's command line tools {', '.join(missing)} are not installed")
    link, node0, node1 = _free_ports(3)
    home = folder / "home"
    (home / ".flwr").mkdir(parents=True)
    (home / ".flwr" / "config.toml").write_text(
        f'[superlink.fastwb-test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    env = dict(os.environ, HOME=str(home), FLWR_HOME=str(home / ".flwr"), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    results = folder / "results.json"
    app = folder / "app"
    flower_app.write_app(app, **{"num-server-rounds": rounds, "results": str(results)})
    commands = {
        "superlink": [_cli("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
                      "--disable-runtime-dependency-installation"],
        "supernode0": [_cli("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                       "--host", "127.0.0.1", "--port", str(node0),
                       "--node-config", "partition-id=0 num-partitions=2"],
        "supernode1": [_cli("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                       "--host", "127.0.0.1", "--port", str(node1),
                       "--node-config", "partition-id=1 num-partitions=2"],
    }
    procs, logs = {}, []
    t0 = time.perf_counter()
    try:
        for name, command in commands.items():
            log = folder / f"{name}.log"
            logs.append(log)
            with open(log, "wb") as fh:
                procs[name] = subprocess.Popen(command, cwd=folder, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{link}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            dead = [name for name, p in procs.items() if p.poll() is not None]
            assert not dead, f"{dead} exited before the SuperLink was up\n{_tails(logs)}"
            assert time.monotonic() < deadline, f"the SuperLink did not come up in {timeout} s\n{_tails(logs)}"
            time.sleep(0.2)
        run = subprocess.run([_cli("flwr"), "run", str(app), "fastwb-test", "--stream"], cwd=folder, env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                             timeout=max(deadline - time.monotonic(), 10))
        seconds = time.perf_counter() - t0
        assert run.returncode == 0, f"flwr run failed:\n{run.stdout}\n{run.stderr}\n{_tails(logs)}"
        assert results.exists(), f"the ServerApp wrote no results\n{run.stdout}\n{_tails(logs)}"
        return json.loads(results.read_text()), run.stdout + run.stderr, seconds
    finally:
        for p in procs.values():
            _stop(p)


@pytest.mark.skipif(os.environ.get("FASTWB_FLOWER_DEPLOY") != "1",
                    reason="the SuperLink + 2 SuperNodes round trip takes 35-80 s; FASTWB_FLOWER_DEPLOY=1 runs it")
def test_deployment_superlink_two_supernodes_flwr_run(tmp_path):
    record, output, seconds = run_deployment(tmp_path, rounds=2)
    acc = record["accuracy"]
    assert len(acc) == 3 and record["nodes"] == 2, record
    assert acc[-1] > acc[0] + 0.3, acc
    for r, a in enumerate(acc):
        assert f"fastwb round {r}: test accuracy {a:.4f}" in output, output
    print(f"deployment round trip: {seconds:.1f} s, accuracy per round {acc}")
