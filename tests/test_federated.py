"""fastwb.federated: the Flower client, the partitions, FedProx's proximal term,
the privacy accounting, and a real simulation on Flower's engine (Ray).

The simulation tests start Ray (about 10 s each) and run only where
``flwr[simulation]`` is installed; everything else needs flwr alone, and the
whole file skips, naming the extra, without it.
"""

import importlib.util
import math
import pickle

import numpy as np
import pytest

from fastwb import nn

pytest.importorskip("flwr", reason="fastwb.federated needs flwr: pip install 'fastwb[federated]'")
from fastwb import federated  # noqa: E402

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="the simulation needs Ray: pip install 'fastwb[federated]'")


def _data(n=240, d=10, k=3, seed=0, dtype=np.float32):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, d)).astype(dtype)
    y = (X[:, :k].argmax(axis=1)).astype(np.int64)
    return X, y


def _model(bn=False, dtype="float32", seed=0, d=10, k=3):
    layers = [nn.Linear(d, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, k)]
    return nn.Sequential(*layers, dtype=dtype, rng=seed)


# -- the parameters ---------------------------------------------------------------------------
@pytest.mark.parametrize("bn", [False, True])
def test_weights_are_the_state_dict_in_order(bn):
    m = _model(bn)
    arrays = federated.get_weights(m)
    state = m.state_dict()
    assert federated.weight_names(m) == list(state)
    for a, (name, v) in zip(arrays, state.items()):
        np.testing.assert_array_equal(a, v, err_msg=name)
    arrays[0][...] = 7                  # copies, not views
    assert not (m.state_dict()["0.weight"] == 7).any()


def test_set_weights_round_trips_and_checks_everything_first():
    a, b = _model(True, seed=1), _model(True, seed=2)
    b.fit(*_data(), epochs=1, verbose=False)       # running statistics and a batch count
    federated.set_weights(a, federated.get_weights(b))
    for (n1, v1), (n2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(v1, v2, err_msg=n1)
    before = a.state_dict()
    good = federated.get_weights(b)
    bad_shape = good[:1] + [np.zeros((3, 3), np.float32)] + good[2:]
    with_nan = [x.copy() for x in good]
    with_nan[-2][0] = np.nan
    for bad, match in ((good[:-1], "got 8 arrays for a model of 9"), (bad_shape, "shape"), (with_nan, "NaN"),
                       (good[:-1] + [np.array(["x", "y", "z"])], "not a number")):
        with pytest.raises(ValueError, match=match):
            federated.set_weights(a, bad)
        for (name, v), w in zip(before.items(), a.state_dict().values()):
            np.testing.assert_array_equal(v, w, err_msg=name)


def test_averaged_batch_counts_are_rounded_and_float64_arrays_cast():
    m = _model(True)
    arrays = [x.astype(np.float64) for x in federated.get_weights(m)]
    names = federated.weight_names(m)
    arrays[names.index("1.num_batches_tracked")] = np.array(12.6)     # FedAvg's mean of integer counts
    federated.set_weights(m, arrays)
    assert m.state_dict()["1.num_batches_tracked"] == 13
    arrays[names.index("1.num_batches_tracked")] = np.array(-0.7)      # DP noise
    arrays[names.index("1.running_var")][:3] = -0.5
    federated.set_weights(m, arrays)
    assert m.state_dict()["1.num_batches_tracked"] == 0
    assert (m.state_dict()["1.running_var"][:3] == 0).all()
    assert m.params.dtype == np.float32


# -- the client ----------------------------------------------------------------------------------
def test_client_fit_is_the_engines_fit():
    """One client round equals model.fit with the same seed: no other training loop."""
    X, y = _data()
    server = federated.get_weights(_model(seed=5))
    client = federated.FlowerClient(_model(seed=9), X, y, epochs=2, batch_size=16, lr=0.05, seed=3)
    arrays, rows, metrics = client.fit(server, {"server_round": 4})
    assert rows == len(X)
    direct = _model(seed=5)
    direct.compile("sgd", lr=0.05)
    hist = direct.fit(X, y, epochs=2, batch_size=16, verbose=False, rng=np.random.default_rng([3, 4]))
    for a, b in zip(arrays, federated.get_weights(direct)):
        np.testing.assert_array_equal(a, b)
    assert metrics["loss"] == pytest.approx(hist["loss"][-1])
    assert metrics["accuracy"] == pytest.approx(hist["accuracy"][-1])
    assert metrics["train_seconds"] > 0 and metrics["copy_seconds"] >= 0


def test_server_config_overrides_the_clients_settings():
    X, y = _data()
    server = federated.get_weights(_model(seed=5))
    client = federated.FlowerClient(_model(), X, y, epochs=3, batch_size=8, lr=0.5)
    a, _, _ = client.fit(server, {"epochs": 1, "batch_size": 32, "lr": 0.01, "optimizer": "adam"})
    direct = _model(seed=5)
    direct.compile("adam", lr=0.01)
    direct.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=np.random.default_rng([0, 0]))
    for x, z in zip(a, federated.get_weights(direct)):
        np.testing.assert_array_equal(x, z)


def test_evaluate_scores_the_servers_weights():
    X, y = _data()
    Xv, yv = _data(60, seed=1)
    trained = _model(seed=5)
    trained.fit(X, y, epochs=3, verbose=False)
    client = federated.FlowerClient(_model(), X, y, validation=(Xv, yv))
    loss, rows, metrics = client.evaluate(federated.get_weights(trained), {})
    want = trained.evaluate(Xv, yv)
    assert rows == 60 and loss == pytest.approx(want[0]) and metrics == {"accuracy": pytest.approx(want[1])}


def test_fedbn_keeps_the_clients_batchnorm():
    X, y = _data()
    mine = _model(True, seed=1)
    mine.fit(X, y, epochs=1, verbose=False)
    local = {k: v for k, v in mine.state_dict().items() if k.startswith("1.")}
    client = federated.FlowerClient(mine, X, y, batchnorm="local")
    server = _model(True, seed=2)
    loss, _, _ = client.evaluate(federated.get_weights(server), {})
    after = mine.state_dict()
    for k, v in local.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    np.testing.assert_array_equal(after["0.weight"], server.state_dict()["0.weight"])
    assert len(client.get_parameters({})) == len(after)     # the full list still travels


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(lr=0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(proximal_mu=-1), "proximal_mu"), (dict(batchnorm="x"), "batchnorm"),
    (dict(optimizer="nope"), "nope")])
def test_client_arguments_are_checked(kwargs, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match):
        federated.FlowerClient(_model(), X, y, **kwargs)


def test_client_refuses_what_is_not_a_model_or_data():
    X, y = _data()
    with pytest.raises(TypeError, match="Sequential"):
        federated.FlowerClient(object(), X, y)
    with pytest.raises(ValueError):
        federated.FlowerClient(_model(), X[:, :3], y)
    with pytest.raises(ValueError, match="at least one"):
        federated.FlowerClient(_model(), X[:0], y[:0])


def test_client_is_a_flower_numpy_client():
    from flwr.client import NumPyClient
    from flwr.common import Code, FitIns, ndarrays_to_parameters, parameters_to_ndarrays

    X, y = _data()
    client = federated.FlowerClient(_model(), X, y, seed=1)
    assert isinstance(client, NumPyClient)
    res = client.to_client().fit(FitIns(ndarrays_to_parameters(federated.get_weights(_model(seed=4))),
                                        {"server_round": 1}))
    assert res.status.code == Code.OK and res.num_examples == len(X)
    assert [a.shape for a in parameters_to_ndarrays(res.parameters)] == [a.shape for a in client.get_parameters({})]


def test_flowers_fedavg_averages_two_clients_by_rows():
    """Flower's own aggregation over two clients' fastwb arrays: the row-weighted mean."""
    from flwr.server.strategy.aggregate import aggregate

    X, y = _data()
    start = federated.get_weights(_model(seed=5))
    a = federated.FlowerClient(_model(), X[:60], y[:60], seed=1).fit(start, {})
    b = federated.FlowerClient(_model(), X[60:], y[60:], seed=2).fit(start, {})
    mean = aggregate([(a[0], a[1]), (b[0], b[1])])
    for wa, wb, w in zip(a[0], b[0], mean):
        np.testing.assert_allclose(w, (60 * wa + 180 * wb) / 240, rtol=1e-6, atol=1e-7)


# -- FedProx: fit's proximal term ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_proximal_step_adds_mu_times_the_distance_to_the_anchor(dtype):
    X, y = _data(32, dtype=np.dtype(dtype))
    m = _model(dtype=dtype, seed=3)
    anchor = m.params.copy() + np.asarray(0.25, dtype)
    g = m.copy()
    g.gradients(X, y)
    lr, mu = 0.1, 0.7
    want = m.params - np.asarray(lr, dtype) * (g.grads + np.asarray(mu, dtype) * (m.params - anchor))
    m.compile("sgd", lr=lr)
    m.fit(X, y, epochs=1, batch_size=32, shuffle=False, verbose=False, proximal=dict(mu=mu, anchor=anchor))
    np.testing.assert_allclose(m.params, want, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-7)


def test_proximal_zero_or_anchored_at_the_start_changes_nothing_in_the_first_step():
    X, y = _data(32)
    plain, prox0, prox = _model(seed=3), _model(seed=3), _model(seed=3)
    for m in (plain, prox0, prox):
        m.compile("sgd", lr=0.1)
    plain.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=1)
    prox0.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=1, proximal=dict(mu=0.0))
    prox.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=1, proximal=dict(mu=5.0))   # w == anchor
    np.testing.assert_array_equal(plain.params, prox0.params)
    np.testing.assert_array_equal(plain.params, prox.params)


def test_proximal_pulls_towards_the_anchor():
    X, y = _data()
    start = _model(seed=3)
    far = {}
    for mu in (0.0, 1.0):
        m = start.copy()
        m.compile("sgd", lr=0.1)
        m.fit(X, y, epochs=5, batch_size=16, verbose=False, rng=1, proximal=dict(mu=mu))
        far[mu] = float(np.linalg.norm(m.params - start.params))
    assert far[1.0] < 0.8 * far[0.0]


@pytest.mark.parametrize("proximal, error", [
    (0.1, TypeError), (dict(m=1), TypeError), (dict(mu=-1.0), ValueError), (dict(mu=float("inf")), ValueError),
    (dict(mu=True), ValueError), (dict(mu=0.1, anchor=np.zeros(3, np.float32)), ValueError),
    (dict(mu=0.1, extra=1), TypeError)])
def test_proximal_arguments_are_checked(proximal, error):
    X, y = _data(32)
    m = _model()
    before = m.params.copy()
    with pytest.raises(error):
        m.fit(X, y, epochs=1, verbose=False, proximal=proximal)
    np.testing.assert_array_equal(m.params, before)


# -- partitions --------------------------------------------------------------------------------------
def test_iid_partition_covers_every_row_once():
    y = np.repeat(np.arange(10), 103)
    parts = federated.partition(y, 7, "iid", seed=3)
    assert sorted(len(p) for p in parts) == [147] * 6 + [148]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    again = federated.partition(y, 7, "iid", seed=3)
    assert all((a == b).all() for a, b in zip(parts, again))


def test_shards_are_mcmahans_pathological_split():
    """MNIST's recipe: 100 clients, 200 shards of 300 label-sorted rows, two each."""
    y = np.repeat(np.arange(10), 6000)
    np.random.default_rng(0).shuffle(y)
    parts = federated.partition(y, 100, "shards", seed=1)
    assert [len(p) for p in parts] == [600] * 100
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(60000))
    labels = [len(np.unique(y[p])) for p in parts]
    assert max(labels) <= 2 + 2             # a shard may straddle two labels
    assert np.mean(labels) < 2.5            # most clients see two digits or fewer


def test_partition_arguments_are_checked():
    y = np.arange(10) % 3
    with pytest.raises(ValueError, match="scheme"):
        federated.partition(y, 2, "dirichlet")
    with pytest.raises(ValueError, match="clients"):
        federated.partition(y, 0)
    with pytest.raises(ValueError, match="rows"):
        federated.partition(y, 11)
    with pytest.raises(ValueError, match="shards"):
        federated.partition(y, 6, "shards")
    with pytest.raises(ValueError, match="label per row"):
        federated.partition(y.reshape(2, 5), 2)


# -- privacy accounting -------------------------------------------------------------------------------
# (noise multiplier, sampling rate, rounds) -> epsilon at delta 1e-5, from Google's dp_accounting 0.6.0
# (RdpAccountant over orders 2..255, PoissonSampledDpEvent(GaussianDpEvent)): an independent implementation.
DP_ACCOUNTING = [((1.0, 0.1, 50), 6.0214919768356925), ((1.1, 0.01, 1000), 1.7252908180449444),
                 ((2.0, 1.0, 10), 8.087861628831664), ((0.5, 0.1, 20), 18.710022915808338)]


@pytest.mark.parametrize("args, want", DP_ACCOUNTING)
def test_epsilon_matches_google_dp_accounting(args, want):
    assert federated.epsilon(*args, delta=1e-5) == pytest.approx(want, rel=1e-9)


def test_epsilon_edges_and_monotonicity():
    assert federated.epsilon(1.0, 0.1, 0) == 0.0
    assert federated.epsilon(1.0, 0.0, 10) == 0.0
    assert federated.epsilon(0.0, 0.1, 10) == math.inf
    eps = [federated.epsilon(1.0, 0.1, t) for t in (1, 10, 100)]
    assert eps == sorted(eps)
    assert federated.epsilon(2.0, 0.1, 50) < federated.epsilon(1.0, 0.1, 50)
    assert federated.epsilon(1.0, 0.05, 50) < federated.epsilon(1.0, 0.1, 50)
    for bad in (dict(noise_multiplier=-1), dict(sampling_rate=1.5), dict(delta=0), dict(rounds=-1)):
        args = dict(noise_multiplier=1.0, sampling_rate=0.1, rounds=5, delta=1e-5) | bad
        with pytest.raises(ValueError):
            federated.epsilon(**args)


def test_rounds_to_reach():
    assert federated.rounds_to_reach([0.99, 0.5, 0.96, 0.97, 0.98], 0.97) == 3
    assert federated.rounds_to_reach([0.1, 0.5], 0.97) is None


# -- the simulation on Flower's engine ------------------------------------------------------------------
def _digits_model(bn=False):
    layers = [nn.Linear(64, 32)] + ([nn.BatchNorm1d(32)] if bn else []) + [nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*layers, rng=0)


@needs_ray
def test_simulation_trains_and_scores_every_round():
    pytest.importorskip("sklearn", reason="the embedded digits come with scikit-learn")
    model = _digits_model()
    seen = []
    h = federated.simulate(model, dataset="digits", clients=6, fraction=0.5, rounds=4, batch_size=10, lr=0.1,
                           target=0.5, seed=2, cpus=2, on_round=lambda *a: seen.append(a))
    assert len(h["accuracy"]) == len(h["loss"]) == len(h["seconds"]) == 5
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4]
    assert h["accuracy"][-1] > h["accuracy"][0] + 0.2
    assert h["rounds_to_target"] is not None and h["epsilon"] is None and h["clients"] == [3] * 4
    assert h["train_seconds"] > 0 and 0 <= h["copy_seconds"] < h["train_seconds"]
    from fastwb import datasets
    X, y, Xt, yt = datasets.load("digits", rng=2)
    assert model.evaluate(Xt, yt)[1] == pytest.approx(h["accuracy"][-1])     # the final global weights


@needs_ray
def test_simulation_with_fedprox_fedbn_and_client_level_privacy():
    pytest.importorskip("sklearn", reason="the embedded digits come with scikit-learn")
    model = _digits_model(bn=True)
    h = federated.simulate(model, dataset="digits", clients=4, fraction=0.5, rounds=3, scheme="shards",
                           batch_size=10, lr=0.1, proximal_mu=0.01, batchnorm="local", clip=5.0, noise=0.5,
                           seed=1, cpus=2)
    assert len(h["accuracy"]) == 4 and all(np.isfinite(h["loss"]))
    assert h["epsilon"] == pytest.approx(federated.epsilon(0.5, 0.5, 3, 1e-5))


def test_simulation_checks_its_arguments_before_starting():
    for bad in (dict(clients=0), dict(fraction=0), dict(fraction=1.5), dict(scheme="x"), dict(lr=-1),
                dict(batchnorm="x"), dict(clip=0), dict(noise=-1), dict(rounds=0)):
        with pytest.raises(ValueError):
            federated.simulate(_digits_model(), dataset="digits", **bad)


def test_module_pickles_nothing_large_into_the_client_app():
    """Ray ships the client function with every message: the blueprint is small."""
    big = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    assert len(pickle.dumps(federated._blueprint(big))) < 1000
    rebuilt = federated._build(federated._blueprint(big))
    assert federated.weight_names(rebuilt) == federated.weight_names(big)
