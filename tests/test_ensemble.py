"""Deep ensembles (fastwb.ensemble.Ensemble), batched ensemble training, the
uncertainty summary and MC dropout; the real MNIST / Fashion-MNIST at the end
(skipped without the files)."""

import math
import os
import threading

import numpy as np
import pytest

from fastwb import MLP, datasets, metrics, nn
from fastwb.ensemble import (
    ENSEMBLE_FORMAT,
    Ensemble,
    entropy,
    load,
    mc_dropout,
    summarize,
)


def _data(n=120, d=12, k=4, seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, d)).astype(dtype)
    y = (X[:, :k].argmax(axis=1) + (r.random(n) < 0.2)) % k       # learnable, with label noise
    return X, y


def _net(seed, dtype="float32", bn=False, dropout=0.0):
    layers = [nn.Linear(12, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    layers += [nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4)]
    return nn.Sequential(*layers, dtype=dtype, rng=seed)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def _same_model(a, b):
    """Bit for bit the same trained state: parameters, gradients, buffers, counts, optimizer."""
    assert _bits(a.params) == _bits(b.params)
    assert _bits(a.buffers) == _bits(b.buffers)
    assert np.array_equal(a.num_batches_tracked, b.num_batches_tracked)
    assert (a.step_count, a.epochs_done, a.seed) == (b.step_count, b.epochs_done, b.seed)
    assert a.optimizer.step_count == b.optimizer.step_count
    for name, buf in a.optimizer.state[0].items():
        assert _bits(buf) == _bits(b.optimizer.state[0][name]), name


# -- construction ----------------------------------------------------------------------------

def test_factory_with_index_and_list_of_models():
    ens = Ensemble(lambda i: MLP([12, 16, 4], rng=i), n_members=3)
    assert len(ens) == 3 and [m.params[0] for m in ens] == [MLP([12, 16, 4], rng=i).params[0] for i in range(3)]
    models = [_net(s) for s in range(4)]
    ens = Ensemble(models)
    assert ens.members == models and all(a is b for a, b in zip(ens, models)) and ens[2] is models[2]
    assert len(Ensemble(lambda: _net(None))) == 5          # the default size
    assert "Ensemble(4 members of Sequential 12 -> 4, float32)" == repr(Ensemble(models))


def test_a_fixed_seed_factory_gets_distinct_reproducible_members():
    """factory() giving the same weights each call: members after the first are
    initialised again from the ensemble's rng, exactly as a new model of that seed."""
    a = Ensemble(lambda: _net(0), n_members=4, rng=7)
    b = Ensemble(lambda: _net(0), n_members=4, rng=7)
    assert _bits(a[0].params) == _bits(_net(0).params)                # the first is kept
    for i in range(4):
        assert _bits(a[i].params) == _bits(b[i].params) and a[i].seed == b[i].seed
        for j in range(i):
            assert not np.array_equal(a[i].params, a[j].params) and a[i].seed != a[j].seed
    seed = int(np.random.default_rng([7, 2, 1]).integers(0, 2**63 - 1))
    assert _bits(a[2].params) == _bits(_net(seed).params) and a[2].seed == _net(seed).seed
    c = Ensemble(lambda: _net(0), n_members=4, rng=8)
    assert not np.array_equal(a[1].params, c[1].params)


BAD_MEMBERS = [
    (lambda: Ensemble(_net(0)), TypeError, "a list of models or a factory"),
    (lambda: Ensemble([]), ValueError, "at least one member"),
    (lambda: Ensemble([_net(0), "x"]), TypeError, r"members\[1\] is a str, not a fastwb.nn.Sequential"),
    (lambda: Ensemble([_net(0), _net(1)], n_members=3), ValueError, "n_members is 3 but 2 models"),
    (lambda: Ensemble(lambda i: _net(i), n_members=0), ValueError, "n_members must be >= 1"),
    (lambda: Ensemble([_net(0), nn.Sequential(nn.Linear(10, 4))]), ValueError, r"members\[1\] has in_features 10"),
    (lambda: Ensemble([_net(0), _net(1, dtype="float64")]), ValueError, r"members\[1\] has dtype float64"),
    (lambda: Ensemble([_net(0), nn.Sequential(nn.Linear(12, 4)).compile(loss="mse")]), ValueError,
     r"members\[1\] trains with 'mse'"),
    (lambda: Ensemble(5), TypeError, "members must be a factory or a list of models, got int"),
]


@pytest.mark.parametrize("call,exc,match", BAD_MEMBERS)
def test_bad_members(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_a_factory_must_build_new_models():
    one = _net(0)
    with pytest.raises(ValueError, match=r"the factory returned\[1\] is the same object as \[0\]"):
        Ensemble(lambda: one, n_members=2)
    m = _net(0)
    with pytest.raises(ValueError, match=r"members\[1\] is the same object"):
        Ensemble([m, m])


# -- training --------------------------------------------------------------------------------

def test_independent_fit_is_each_members_own_fit():
    X, y = _data()
    ens = Ensemble(lambda i: _net(i, dropout=0.2), n_members=3, rng=5)
    copies = [m.copy() for m in ens]
    seeds = ens.shuffle_seeds()
    assert len(set(seeds)) == 3
    histories = ens.fit(X, y, epochs=2, batch_size=32, verbose=False)
    for m, c, seed, h in zip(ens, copies, seeds, histories):
        hc = c.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=seed)
        _same_model(m, c)
        assert h["loss"] == hc["loss"]
    seeds2 = ens.shuffle_seeds(rng=3)
    assert seeds2 == ens.shuffle_seeds(rng=3) != seeds


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["mlp", "bn_dropout"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_fit_equals_each_members_fit_on_the_shared_batches(dtype, kind, optimizer):
    """A batched fit is bit for bit each member's own fit on member 0's shuffling:
    parameters, gradients, running statistics, dropout masks, optimizer state,
    counts and histories."""
    X, y = _data(dtype=dtype)
    Xv, yv = _data(n=40, seed=1, dtype=dtype)

    def factory(i):
        m = MLP([12, 16, 8, 4], dtype=dtype, rng=i) if kind == "mlp" else _net(i, dtype, bn=True, dropout=0.3)
        return m.compile("sgd", lr=0.05, momentum=0.9) if optimizer == "sgd" else m

    ens = Ensemble(factory, n_members=3, rng=11)
    copies = [m.copy() for m in ens]
    seed = ens.shuffle_seeds()[0]
    histories = ens.fit(X, y, batched=True, epochs=3, batch_size=32, verbose=False, validation_data=(Xv, yv))
    for m, c, h in zip(ens, copies, histories):
        hc = c.fit(X, y, epochs=3, batch_size=32, verbose=False, validation_data=(Xv, yv), rng=seed)
        _same_model(m, c)
        assert _bits(m.grads) == _bits(c.grads)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "sparsity"):
            assert h[key] == hc[key], key
        assert set(h) == set(hc) and len(h["seconds"]) == 3
    assert type(ens[0]) is (MLP if kind == "mlp" else nn.Sequential)


def test_batched_members_are_ordinary_models_afterwards(tmp_path):
    """After a batched fit each member trains, predicts and saves on its own, and goes
    on exactly as a copy trained the same way does."""
    X, y = _data()
    ens = Ensemble(lambda i: _net(i), n_members=2, rng=1)
    copies = [m.copy() for m in ens]
    seed = ens.shuffle_seeds()[0]
    ens.fit(X, y, batched=True, epochs=1, batch_size=40, verbose=False)
    for m, c in zip(ens, copies):
        c.fit(X, y, epochs=1, batch_size=40, verbose=False, rng=seed)
        m.fit(X, y, epochs=1, batch_size=40, verbose=False, rng=3)
        c.fit(X, y, epochs=1, batch_size=40, verbose=False, rng=3)
        _same_model(m, c)
        m.save(tmp_path / "m.fwb", with_optimizer=True)
        assert _bits(nn.load(tmp_path / "m.fwb").params) == _bits(m.params)
    # batched again after independent epochs: it picks up each member's state
    copies = [m.copy() for m in ens]
    ens.fit(X, y, batched=True, epochs=1, batch_size=40, verbose=False, shuffle=False)
    for m, c in zip(ens, copies):
        c.fit(X, y, epochs=1, batch_size=40, verbose=False, shuffle=False)
        _same_model(m, c)


def test_batched_fit_rejects_what_it_cannot_share():
    X, y = _data()
    ens = Ensemble(lambda i: _net(i), n_members=2)
    before = [m.params.copy() for m in ens]
    with pytest.raises(TypeError, match=r"fit\(batched=True\) does not take callbacks, prune_schedule"):
        ens.fit(X, y, batched=True, callbacks=[], prune_schedule=0.5)
    ens[1].compile("sgd", lr=0.1)
    with pytest.raises(ValueError, match="member 1's optimizer .*differs from member 0's"):
        ens.fit(X, y, batched=True, verbose=False)
    ens[1].compile("adam", lr=1e-3)
    ens[0].fit(X, y, epochs=1, verbose=False)          # member 0's Adam is one epoch ahead
    with pytest.raises(ValueError, match=r"member 1.s optimizer .*step 0\).*member 0.s .*step 1\)"):
        ens.fit(X, y, batched=True, verbose=False)
    ens = Ensemble(lambda i: _net(i), n_members=2)
    ens[1].freeze("0.*")
    with pytest.raises(ValueError, match="member 1 has frozen parameters"):
        ens.fit(X, y, batched=True, verbose=False)
    ens[1].unfreeze()
    ens.fit(X, y, batched=True, epochs=1, verbose=False, optimizer="rmsprop")
    assert all(type(m.optimizer).__name__ == "RMSprop" and m.step_count == 1 for m in ens)
    assert all(not np.array_equal(m.params, b) for m, b in zip(ens, before))
    with pytest.raises(ValueError, match="leave a last batch of one row"):
        Ensemble(lambda i: _net(i, bn=True), n_members=2).fit(X[:33], y[:33], batched=True, batch_size=32)


def test_batched_fit_is_one_training_call_per_member():
    X, y = _data()
    ens = Ensemble(lambda i: _net(i), n_members=2)
    ens[1]._training_lock.acquire()
    try:
        with pytest.raises(RuntimeError, match="member 1 is already being trained"):
            ens.fit(X, y, batched=True, verbose=False)
        assert not ens[0]._training_lock.locked()           # what it took, it gave back
    finally:
        ens[1]._training_lock.release()


def test_fit_prints_member_lines_when_verbose(capsys):
    X, y = _data()
    ens = Ensemble(lambda i: _net(i), n_members=2)
    ens.fit(X, y, epochs=1, verbose=True)
    out = capsys.readouterr().out
    assert "member 1/2" in out and "member 2/2" in out
    ens.fit(X, y, epochs=1, verbose=True, batched=True)
    assert "(2 members, batched): mean loss" in capsys.readouterr().out


# -- predictions and uncertainty ---------------------------------------------------------------

def test_summarize_by_hand():
    # two members certain of different classes: mean (0.5, 0.5), total entropy log 2, all of it epistemic
    u = summarize(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
    np.testing.assert_allclose(u.proba, [[0.5, 0.5]])
    assert u.entropy[0] == pytest.approx(math.log(2)) and u.expected_entropy[0] == 0.0
    assert u.mutual_information[0] == pytest.approx(math.log(2))
    np.testing.assert_allclose(u.std, [[math.sqrt(0.5), math.sqrt(0.5)]])      # ddof=1 as torch.std
    assert u.n_members == 2 and u.prediction.tolist() == [0]
    # members that agree: no epistemic part, std 0; a single member: std zeros
    same = np.tile(np.array([[[0.2, 0.3, 0.5]]]), (3, 1, 1))
    u = summarize(same)
    assert u.mutual_information[0] == 0.0 and np.all(u.std < 1e-15)
    assert u.entropy[0] == pytest.approx(-(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5)))
    assert np.all(summarize(same[:1]).std == 0)
    assert entropy(np.array([1.0, 0.0, 0.0])) == 0.0


def test_summarize_random_against_numpy(rng):
    P = rng.dirichlet(np.ones(5), (4, 30)).astype(np.float32)
    u = summarize(P)
    P64 = P.astype(np.float64)
    mean = P64.mean(axis=0)
    h = -(mean * np.log(mean)).sum(axis=1)
    eh = (-(P64 * np.log(P64)).sum(axis=2)).mean(axis=0)
    assert u.proba.dtype == np.float32 and u.std.dtype == np.float32
    np.testing.assert_allclose(u.entropy, h, rtol=1e-12)
    np.testing.assert_allclose(u.expected_entropy, eh, rtol=1e-12)
    np.testing.assert_allclose(u.mutual_information, h - eh, rtol=1e-9, atol=1e-15)
    assert np.all(u.mutual_information >= 0)
    np.testing.assert_allclose(u.std, P64.std(axis=0, ddof=1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(members, n, classes\)"):
        summarize(P[0])
    with pytest.raises(TypeError, match="float32 or float64"):
        summarize(P.astype(int))


def test_predictions_average_the_members_probabilities():
    X, y = _data()
    ens = Ensemble(lambda i: _net(i), n_members=3)
    ens.fit(X, y, epochs=2, verbose=False)
    members = np.stack([m.predict_proba(X) for m in ens])
    np.testing.assert_array_equal(ens.member_proba(X), members)
    p = ens.predict_proba(X)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, members.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert np.array_equal(ens.predict(X), p.argmax(axis=1))
    u = ens.predict_uncertainty(X)
    np.testing.assert_array_equal(u.proba, p)
    mean, std = ens.ensemble_predict(X)
    np.testing.assert_array_equal(mean, p)
    np.testing.assert_allclose(std, members.astype(np.float64).std(axis=0, ddof=1), rtol=1e-5, atol=1e-7)
    s = ens.scores(X, y)
    assert s == {"accuracy": metrics.accuracy(y, p.argmax(axis=1)), "nll": metrics.nll(y, p),
                 "brier": metrics.brier_score(y, p), "ece": metrics.expected_calibration_error(y, p)}
    assert ens.evaluate(X, y) == (s["nll"], s["accuracy"])
    # Jensen: the NLL of the mean is at most the members' mean NLL
    assert s["nll"] <= np.mean([metrics.nll(y, m) for m in members]) + 1e-6


def test_inference_from_many_threads():
    X, y = _data()
    ens = Ensemble(lambda i: _net(i), n_members=3)
    ens.fit(X, y, epochs=1, verbose=False)
    expected = ens.predict_uncertainty(X)
    results, errors = [None] * 4, []

    def work(k):
        try:
            for _ in range(5):
                results[k] = ens.predict_uncertainty(X)
        except Exception as e:          # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r.proba, expected.proba)


# -- files -------------------------------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    X, y = _data()
    ens = Ensemble(lambda i: MLP([12, 16, 4], rng=i) if i else _net(i, bn=True, dropout=0.1), n_members=3, rng=4)
    ens.fit(X, y, epochs=1, verbose=False)
    path = tmp_path / "ens.npz"
    ens.save(path)
    assert sorted(os.listdir(tmp_path)) == ["ens.npz"]          # no temporary file left
    back = load(path)
    assert type(back[1]) is MLP and back.seed == ens.seed and len(back) == 3
    np.testing.assert_array_equal(back.predict_proba(X), ens.predict_proba(X))
    for a, b in zip(ens, back):
        _same_model(a, b)
    # both go on identically
    ens.fit(X, y, epochs=1, verbose=False)
    back.fit(X, y, epochs=1, verbose=False)
    for a, b in zip(ens, back):
        _same_model(a, b)
    assert isinstance(Ensemble.load(path), Ensemble)


def test_a_bad_ensemble_file_is_a_value_error_naming_it(tmp_path):
    ens = Ensemble(lambda i: _net(i), n_members=2)
    good = tmp_path / "ens.npz"
    ens.save(good)
    raw = good.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        load(bad)
    other = tmp_path / "model.npz"
    ens[0].save(other)
    with pytest.raises(ValueError, match="model.npz.*no format or spec|model.npz.*format"):
        load(other)
    fields = dict(np.load(good))
    fields["spec"] = np.array('{"n_members": 3, "seed": 1}')
    np.savez(tmp_path / "count.npz", **fields)
    with pytest.raises(ValueError, match="do not match n_members=3: missing member_2"):
        load(tmp_path / "count.npz")
    fields = dict(np.load(good))
    fields["member_1"] = fields["member_1"][:100]
    np.savez(tmp_path / "member.npz", **fields)
    with pytest.raises(ValueError, match="member.npz.*member_1"):
        load(tmp_path / "member.npz")
    fields = dict(np.load(good))
    fields["format"] = np.array("fastwb-ensemble-9")
    np.savez(tmp_path / "version.npz", **fields)
    with pytest.raises(ValueError, match=f"'fastwb-ensemble-9' is not '{ENSEMBLE_FORMAT}'"):
        load(tmp_path / "version.npz")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


def test_an_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    ens = Ensemble(lambda i: _net(i), n_members=2)
    path = tmp_path / "ens.npz"
    ens.save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(KeyboardInterrupt):
        Ensemble(lambda i: _net(i + 5), n_members=2).save(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["ens.npz"]


# -- MC dropout ----------------------------------------------------------------------------------

def _dropout_model(dtype="float32", bn=True):
    X, y = _data(dtype=dtype)
    layers = [nn.Linear(12, 32)] + ([nn.BatchNorm1d(32)] if bn else []) + [nn.ReLU(), nn.Dropout(0.3),
                                                                          nn.Linear(32, 4)]
    m = nn.Sequential(*layers, dtype=dtype, rng=0)
    m.fit(X, y, epochs=3, batch_size=32, verbose=False, rng=0)
    return m, X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bn", [True, False])
def test_mc_dropout_leaves_the_model_as_it_was(dtype, bn):
    m, X, _ = _dropout_model(dtype, bn)
    state, steps, seed, training = m.state_dict(), m.step_count, m.seed, m.training
    opt = {k: v.copy() for k, v in m.optimizer.state[0].items()}
    eval_before = m.predict_proba(X)
    u = mc_dropout(m, X, n=10, rng=0)
    for k, v in m.state_dict().items():
        assert _bits(v) == _bits(state[k]), k
    assert (m.step_count, m.seed, m.training, m.frozen) == (steps, seed, training, set())
    assert all(_bits(v) == _bits(opt[k]) for k, v in m.optimizer.state[0].items())
    np.testing.assert_array_equal(m.predict_proba(X), eval_before)
    assert u.proba.dtype == np.dtype(dtype) and u.n_members == 10


def test_mc_dropout_passes_differ_and_are_reproducible():
    """With BatchNorm -> ReLU -> Dropout (the engine fuses that Dropout into the
    BatchNorm stage): the passes differ, a seed repeats them, another seed does not."""
    m, X, y = _dropout_model()
    a, b, c = mc_dropout(m, X, n=8, rng=1), mc_dropout(m, X, n=8, rng=1), mc_dropout(m, X, n=8, rng=2)
    assert np.all(a.mutual_information >= 0) and a.mutual_information.mean() > 1e-3
    assert np.all(a.std.max(axis=1) > 0)
    np.testing.assert_array_equal(a.proba, b.proba)
    assert not np.array_equal(a.proba, c.proba)
    # many passes average towards the inference-mode prediction
    many = mc_dropout(m, X, n=200, rng=3)
    assert metrics.accuracy(y, many.prediction) >= metrics.accuracy(y, m.predict(X)) - 0.1
    assert np.mean(many.prediction == m.predict(X)) > 0.85


def test_mc_dropout_uses_running_statistics():
    """Each row's passes depend on its own values only (BatchNorm on running
    statistics, as in inference): changing the other rows of the chunk changes
    nothing, where batch statistics would change every row."""
    m, X, _ = _dropout_model()
    other = X.copy()
    other[5:] = X[5:] * 3 + 1
    a = mc_dropout(m, X[:10], n=6, rng=4)
    b = mc_dropout(m, other[:10], n=6, rng=4)
    np.testing.assert_array_equal(a.proba[:5], b.proba[:5])
    assert not np.array_equal(a.proba[5:], b.proba[5:])
    # one row at a time works too (batch statistics could not normalise it)
    assert mc_dropout(m, X[:1], n=4, rng=0).proba.shape == (1, 4)
    # chunks: every chunk gets its own masks, and the result has every row
    u = mc_dropout(m, X, n=4, rng=0, batch_size=7)
    assert u.proba.shape == (len(X), 4) and np.allclose(u.proba.sum(axis=1), 1, atol=1e-5)


def test_mc_dropout_bad_input():
    m, X, _ = _dropout_model()
    with pytest.raises(ValueError, match="no Dropout with p > 0"):
        mc_dropout(MLP([12, 8, 4]), X)
    with pytest.raises(ValueError, match="n must be >= 2"):
        mc_dropout(m, X, n=1)
    with pytest.raises(TypeError, match="must be a fastwb.nn.Sequential"):
        mc_dropout("model", X)
    with pytest.raises(TypeError, match="X has dtype float64 but the model is float32"):
        mc_dropout(m, X.astype(np.float64))
    with pytest.raises(ValueError, match="X is empty"):
        mc_dropout(m, X[:0])
    reg = nn.Sequential(nn.Linear(12, 4), nn.Dropout(0.5)).compile(loss="mse")
    with pytest.raises(ValueError, match="trains with 'mse'"):
        mc_dropout(reg, X)


# -- the real data ------------------------------------------------------------------------------

def _fashion_folder():
    folder = os.environ.get(datasets.FASHION_MNIST_ENV) or datasets.DEBIAN_FASHION_MNIST
    if not os.path.exists(os.path.join(folder, "t10k-images-idx3-ubyte.gz")) and \
            not os.path.exists(os.path.join(folder, "t10k-images-idx3-ubyte")):
        pytest.skip("Fashion-MNIST IDX files not found (set FASTWB_FASHION_MNIST or install dataset-fashion-mnist)")
    return folder


def test_ensemble_on_real_mnist(mnist_folder):
    """Three small members, 2 epochs on 12000 MNIST rows, batched and independent: the
    ensemble's NLL is below its members' mean (Jensen), its accuracy is theirs
    at least, and batched members reach the accuracy of independent ones.
    Fashion-MNIST (when installed) is out of distribution: entropy detects it."""
    X, y, Xt, yt = datasets.load("mnist", mnist_folder)
    X, y, Xt, yt = X[:12000], y[:12000], Xt[:3000], yt[:3000]
    scores = {}
    for batched in (False, True):
        ens = Ensemble(lambda i: MLP([784, 64, 10], rng=i), n_members=3, rng=0)
        ens.fit(X, y, epochs=2, batch_size=128, verbose=False, batched=batched)
        s = ens.scores(Xt, yt)
        members = [metrics.nll(yt, m.predict_proba(Xt)) for m in ens]
        accs = [m.evaluate(Xt, yt)[1] for m in ens]
        assert s["nll"] <= np.mean(members) and s["accuracy"] >= min(accs) and min(accs) > 0.85
        assert s["ece"] < 0.15          # short training: the ensemble is underconfident
        scores[batched] = (s, accs)
    assert abs(np.mean(scores[True][1]) - np.mean(scores[False][1])) < 0.02
    folder = _fashion_folder()
    Xf = datasets.load_mnist(folder, "test", name="fashion-mnist")[0][:3000]
    h_in, h_out = ens.predict_uncertainty(Xt).entropy, ens.predict_uncertainty(Xf).entropy
    assert metrics.auroc(h_out, h_in) > 0.65        # chance is 0.5; 0.74 measured


# -- the benchmark scripts run ---------------------------------------------------------------------

def _bench(name):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensemble_speed_script_runs(capsys, tmp_path):
    bench = _bench("ensemble_speed.py")
    assert bench.main(["--rounds", "1", "--rows", "640", "--members", "2", "--repeats", "1",
                       "--data", str(tmp_path / "no-mnist")]) == 0
    out = capsys.readouterr().out
    assert "random data (MNIST not found)" in out and "independent / batched, CPU time: median" in out
    assert "wide forward bit for bit equal to the members' GEMMs" in out


def test_uncertainty_script_runs(mnist_folder, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    bench = _bench("uncertainty.py")
    figure = tmp_path / "entropy.png"
    assert bench.main(["--epochs", "1", "--rows", "1000", "--test-rows", "500", "--members", "2", "--passes", "2",
                       "--mnist", mnist_folder,
                       "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "| ensemble, batched |" in out and "| MC dropout (2 passes) |" in out
    if "fashion-mnist: skipped" not in out:
        assert "OOD AUROC entropy" in out and figure.stat().st_size > 1000
