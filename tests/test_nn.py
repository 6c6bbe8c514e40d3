"""fastwb.nn: layer-composed models (issue 9).  Structure, state dicts,
checkpoints and resume, callbacks, gradients by finite differences, and
100 training steps against PyTorch's nn.Sequential with the same weights
and the same dropout masks."""

import numpy as np
import pytest

import fastwb
from fastwb import nn, normalization


def _bn_model(dtype="float64", p=0.2, rng=0):
    return nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3),
                         dtype=dtype, rng=rng)


def _data(n=32, d=12, c=3, dtype=np.float64, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d)).astype(dtype), r.integers(0, c, n)


# -- structure ---------------------------------------------------------------------------

def test_state_dict_names_follow_pytorch():
    m = _bn_model()
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                    "1.num_batches_tracked", "4.weight", "4.bias"]
    sd = m.state_dict()
    assert sd["0.weight"].shape == (12, 16) and sd["1.num_batches_tracked"].dtype == np.int64
    assert np.all(sd["1.weight"] == 1) and np.all(sd["1.running_var"] == 1)
    assert m.n_params == 12 * 16 + 16 + 2 * 16 + 16 * 3 + 3


def test_mismatched_layer_sizes_name_both():
    with pytest.raises(ValueError, match=r"layer 0 .* gives 16 features, but layer 1 .* takes 8"):
        nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(8))
    with pytest.raises(ValueError, match="in_features"):
        nn.Sequential(nn.ReLU())


@pytest.mark.parametrize("call,exc,match", [
    (lambda: _bn_model().compile("adam", loss="hinge"), ValueError, "valid names are cross_entropy"),
    (lambda: _bn_model().compile("lbfgs"), ValueError, "valid names are sgd"),
    (lambda: nn.Dropout(1.0), ValueError, "p must be < 1"),
    (lambda: nn.BatchNorm1d(0), ValueError, "num_features"),
    (lambda: nn.Linear(3, 2, init="magic"), ValueError, "valid names are torch"),
    (lambda: nn.Sequential(nn.Linear(3, 2), "relu"), TypeError, "not a fastwb.nn layer"),
])
def test_bad_construction(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_targets_and_state_dicts():
    m = _bn_model()
    X, y = _data()
    with pytest.raises(ValueError, match=r"y\[3\] = 7 is not a class index"):
        m.train_step(X, np.where(np.arange(32) == 3, 7, y))
    r = nn.Sequential(nn.Linear(12, 2), dtype="float64", rng=0).compile("sgd", lr=0.1, loss="mse")
    with pytest.raises(ValueError, match=r"shape \(32,\), but the mse loss needs targets shaped like the output"):
        r.train_step(X, np.zeros(32))
    sd = m.state_dict()
    with pytest.raises(ValueError, match="missing 1.running_var"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "1.running_var"})
    with pytest.raises(ValueError, match="unexpected 9.weight"):
        m.load_state_dict({**sd, "9.weight": np.zeros(2)})
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(16, 12\)"):
        m.load_state_dict({**sd, "0.weight": sd["0.weight"].T})
    with pytest.raises(ValueError, match="convert_dtype=True"):
        m.load_state_dict({k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in sd.items()})
    m.load_state_dict({k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in sd.items()},
                      convert_dtype=True)


# -- modes and BatchNorm semantics -----------------------------------------------------------

def test_train_updates_running_stats_and_eval_uses_them():
    m = _bn_model(p=0.0)
    X, y = _data()
    m.compile("sgd", lr=0.0)
    m.train_step(X, y)
    sd = m.state_dict()
    z = X @ sd["0.weight"] + sd["0.bias"]
    np.testing.assert_allclose(sd["1.running_mean"], 0.1 * z.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sd["1.running_var"], 0.9 + 0.1 * z.var(0, ddof=1), rtol=1e-12)
    assert sd["1.num_batches_tracked"] == 1
    before = m.state_dict()
    m.logits(X)
    m.evaluate(X, y)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])          # inference changes nothing
    h = (z - sd["1.running_mean"]) / np.sqrt(sd["1.running_var"] + 1e-5)
    want = np.maximum(h, 0) @ sd["4.weight"] + sd["4.bias"]
    np.testing.assert_allclose(m.logits(X), want, rtol=1e-12)


def test_batch_of_one_row_in_training_is_an_error():
    m = _bn_model()
    X, y = _data(1)
    with pytest.raises(ValueError):
        m.train_step(X, y)
    assert m.logits(X).shape == (1, 3)                        # inference is fine


# -- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce_with_logits"])
def test_parameter_and_input_gradients_by_finite_differences(loss):
    m = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 3),
                      nn.Sigmoid(), nn.Linear(3, 3), dtype="float64", rng=1)
    m.compile("sgd", lr=0.0, loss=loss)
    r = np.random.default_rng(2)
    X = r.standard_normal((9, 5))
    y = r.integers(0, 3, 9) if loss == "cross_entropy" else (r.random((9, 3)) > 0.5).astype(float)
    base = m.gradients(X, y)
    grads = m.grads.copy()
    buffers = m.buffers.copy()
    eps = 1e-6
    for j in np.random.default_rng(3).choice(m.n_params, 25, replace=False):
        old = m.params[j]
        m.params[j] = old + eps
        up = m.gradients(X, y)
        m.params[j] = old - eps
        down = m.gradients(X, y)
        m.params[j] = old
        m.buffers[...] = buffers
        assert (up - down) / (2 * eps) == pytest.approx(grads[j], rel=1e-5, abs=1e-8), j
    assert np.isfinite(base)
    gx = m.input_gradient(X, y, training=True)
    for i, k in [(0, 0), (4, 2), (8, 4)]:
        Xp, Xm = X.copy(), X.copy()
        Xp[i, k] += eps
        Xm[i, k] -= eps
        fd = (m.gradients(Xp, y) - m.gradients(Xm, y)) / (2 * eps)
        m.buffers[...] = buffers
        assert fd == pytest.approx(gx[i, k], rel=1e-5, abs=1e-8)


# -- training against PyTorch -------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["adam", "momentum"])
def test_100_steps_match_pytorch_with_the_same_dropout_masks(opt):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: pip install torch==2.13.0")
    tnn = torch.nn
    m = _bn_model(p=0.2, rng=4)
    hyper = {"lr": 1e-3} if opt == "adam" else {"lr": 0.05, "momentum": 0.9}
    m.compile("adam" if opt == "adam" else "sgd", **hyper)
    sd = m.state_dict()
    lin1, bn, lin2 = tnn.Linear(12, 16, dtype=torch.float64), tnn.BatchNorm1d(16, dtype=torch.float64), \
        tnn.Linear(16, 3, dtype=torch.float64)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor(sd["0.weight"].T)); lin1.bias.copy_(torch.tensor(sd["0.bias"]))
        lin2.weight.copy_(torch.tensor(sd["4.weight"].T)); lin2.bias.copy_(torch.tensor(sd["4.bias"]))
    params = list(lin1.parameters()) + list(bn.parameters()) + list(lin2.parameters())
    topt = torch.optim.Adam(params, foreach=False, **hyper) if opt == "adam" else \
        torch.optim.SGD(params, foreach=False, **hyper)
    X, y = _data(64)
    st = m._plan[1]                                  # the BatchNorm + ReLU + Dropout stage
    for step in range(100):
        mask = normalization.dropout_mask((64, 16), 0.2, m._seed(st), m.step_count)
        m.train_step(X, y)
        topt.zero_grad()
        h = torch.relu(bn(lin1(torch.tensor(X))))
        h = h * torch.tensor(mask) / 0.8
        loss = tnn.functional.cross_entropy(lin2(h), torch.tensor(y))
        loss.backward()
        topt.step()
    got = m.state_dict()
    np.testing.assert_allclose(got["0.weight"], lin1.weight.detach().numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["1.weight"], bn.weight.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["1.running_var"], bn.running_var.numpy(), rtol=1e-10)
    np.testing.assert_allclose(got["4.bias"], lin2.bias.detach().numpy(), rtol=1e-10, atol=1e-12)
    bn.eval()
    with torch.no_grad():
        want = lin2(torch.relu(bn(lin1(torch.tensor(X))))).numpy()
    np.testing.assert_allclose(m.logits(X), want, rtol=1e-9, atol=1e-12)


# -- fit, callbacks, checkpoints ------------------------------------------------------------------

def test_fit_history_and_early_stopping_restores_the_best():
    X, y = _data(200, seed=5)
    m = _bn_model(dtype="float32")
    m.compile("adam", lr=0.05)
    stop = nn.EarlyStopping("val_loss", patience=1)
    h = m.fit(X.astype(np.float32), y, epochs=30, batch_size=32, rng=0, validation_data=(X[:50].astype(np.float32),
              y[:50]), callbacks=[stop], verbose=False)
    assert set(h) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert len(h["loss"]) < 30 and stop.stopped_epoch is not None
    assert m.evaluate(X[:50].astype(np.float32), y[:50])[0] == pytest.approx(min(h["val_loss"]), rel=1e-5)


def test_learning_rate_scheduler():
    X, y = _data(64)
    m = _bn_model()
    m.compile("sgd", lr=0.1)
    h = m.fit(X, y, epochs=3, batch_size=16, rng=0, verbose=False,
              callbacks=[nn.LearningRateScheduler(lambda epoch, lr: lr / 2)])
    assert h["lr"] == [0.05, 0.025, 0.0125] and m.optimizer.hyper["lr"] == 0.0125


def test_resumed_fit_continues_bit_for_bit(tmp_path):
    X, y = _data(96, seed=6)
    a = _bn_model(rng=7)
    a.compile("adam", lr=1e-2)
    a.fit(X, y, epochs=4, batch_size=32, rng=3, verbose=False)
    b = _bn_model(rng=7)
    b.compile("adam", lr=1e-2)
    b.fit(X, y, epochs=2, batch_size=32, rng=3, verbose=False,
          callbacks=[nn.ModelCheckpoint(tmp_path / "m-{epoch}.fwb")])
    c = nn.load(tmp_path / "m-2.fwb")
    c.fit(X, y, epochs=2, batch_size=32, rng=3, verbose=False)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(c.state_dict()[k], v)
    np.testing.assert_array_equal(c.optimizer.state[0]["exp_avg"], a.optimizer.state[0]["exp_avg"])


def test_checkpoint_round_trip_and_hostile_sizes(tmp_path):
    m = _bn_model(dtype="float32")
    path = tmp_path / "m.fwb"
    m.save(path)
    assert path.exists() and not (tmp_path / "m.fwb.npz").exists()
    back = nn.load(path)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    import json
    import zipfile
    spec = m.spec()
    spec["layers"][0]["out_features"] = 10**8            # claims a huge model in a tiny file
    spec["layers"][1]["num_features"] = 10**8
    spec["layers"][4]["in_features"] = 10**8
    hostile = tmp_path / "h.fwb"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "spec.npy":
                buf = __import__("io").BytesIO()
                np.save(buf, np.array(json.dumps(spec)))
                data = buf.getvalue()
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="params is float32"):
        nn.load(hostile)


def test_v1_mlp_checkpoints_load_through_nn(tmp_path):
    mlp = fastwb.MLP([4, 5, 3], rng=0)
    mlp.save(tmp_path / "v1.npz")
    back = nn.load(tmp_path / "v1.npz")
    np.testing.assert_array_equal(back.params, mlp.params)


def test_regression_and_multilabel_train():
    r = np.random.default_rng(8)
    X = r.standard_normal((256, 6))
    W = r.standard_normal((6, 2))
    reg = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2), dtype="float64", rng=0)
    reg.compile("adam", lr=1e-2, loss="mse")
    h = reg.fit(X, X @ W, epochs=40, batch_size=32, rng=0, verbose=False)
    assert h["r2"][-1] > 0.95 and reg.evaluate(X, X @ W)[1] > 0.95
    ml = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2), dtype="float64", rng=0)
    ml.compile("adam", lr=1e-2, loss="bce_with_logits")
    T = (X @ W > 0).astype(np.float64)
    h = ml.fit(X, T, epochs=40, batch_size=32, rng=0, verbose=False)
    assert h["binary_accuracy"][-1] > 0.9 and set(np.unique(ml.predict(X))) <= {0, 1}


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce_with_logits"])
def test_twenty_steps_match_the_numpy_twin(loss):
    from fastwb.reference import nn as rnn

    layers = [nn.Linear(6, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.1), nn.Dropout(0.25), nn.Linear(8, 8),
              nn.Tanh(), nn.Sigmoid(), nn.Dropout(0.1), nn.Linear(8, 5, bias=False), nn.BatchNorm1d(5, momentum=None)]
    m = nn.Sequential(*layers, dtype="float64", rng=9)
    # SGD with momentum: Adam would blow the rounding noise of the exactly-zero gradient of
    # the bias before a BatchNorm up to steps of size lr, differently in any two implementations
    m.compile("sgd", lr=0.05, momentum=0.9, loss=loss)
    twin = rnn.Sequential(layers, m.state_dict(), m.seed, loss).compile("sgd", lr=0.05, momentum=0.9)
    r = np.random.default_rng(10)
    X = r.standard_normal((24, 6))
    y = r.integers(0, 5, 24) if loss == "cross_entropy" else (r.random((24, 5)) > 0.5).astype(float)
    for _ in range(20):
        assert m.train_step(X, y) == pytest.approx(twin.train_step(X, y), rel=1e-12)
    for k, v in m.state_dict().items():
        np.testing.assert_allclose(v, twin.state[k], rtol=1e-10, atol=1e-13, err_msg=k)
    np.testing.assert_allclose(m.logits(X), twin.logits(X), rtol=1e-10, atol=1e-13)


def test_no_array_is_allocated_after_the_first_step():
    import tracemalloc

    m = _bn_model(dtype="float32")
    m.compile("adam", lr=1e-3)
    X, y = _data(64, dtype=np.float32)
    yi = np.ascontiguousarray(y, np.intp)
    for _ in range(3):
        m.train_step(X, yi)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(20):
            m.train_step(X, yi)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 4096, grown          # a few Python floats, never an array


def test_steps_are_bitwise_identical_for_any_thread_count():
    X, y = _data(512, d=12, seed=11)
    results = []
    for n in (1, 2, 4):
        with fastwb.threads(n):
            m = nn.Sequential(nn.Linear(12, 1024), nn.BatchNorm1d(1024), nn.Tanh(), nn.Dropout(0.3),
                              nn.Linear(1024, 3), dtype="float32", rng=12)
            m.compile("adam", lr=1e-3)
            for _ in range(3):
                m.train_step(X.astype(np.float32), y)
            results.append(m.state_dict())
    for other in results[1:]:
        for k, v in results[0].items():
            np.testing.assert_array_equal(other[k], v, err_msg=k)


def test_sequential_in_a_forked_child():
    import multiprocessing as mp

    m = nn.Sequential(nn.Linear(12, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Dropout(0.1), nn.Linear(2048, 3),
                      dtype="float32", rng=13)
    X, y = _data(512, d=12, seed=14)
    X = X.astype(np.float32)
    m.compile("sgd", lr=0.1)
    m.train_step(X, y)                              # the parent ran multi-threaded kernels
    want = m.copy()
    want.train_step(X, y)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.train_step(X, y)
        q.put(m.params.copy())
    proc = ctx.Process(target=child)
    proc.start()
    got = q.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(got, want.params)


def test_copy_is_independent_and_trains_like_the_original():
    import copy

    m = _bn_model()
    m.compile("adam", lr=1e-2)
    X, y = _data()
    m.train_step(X, y)
    for c in (m.copy(), copy.deepcopy(m)):
        assert np.shares_memory(c._params[0]["weight"], c.params) and not np.shares_memory(c.params, m.params)
        c.train_step(X, y)
    m.train_step(X, y)
    np.testing.assert_array_equal(c.params, m.params)
    np.testing.assert_array_equal(c.buffers, m.buffers)


def test_fit_refuses_a_last_batch_of_one_row_before_training():
    m = _bn_model()
    X, y = _data(33)
    before = m.params.copy()
    with pytest.raises(ValueError, match="last batch of one row"):
        m.fit(X, y, epochs=1, batch_size=16, verbose=False)
    np.testing.assert_array_equal(m.params, before)


# -- per-layer gradients, pickling, threads, progress (MLP preset in tests/test_mlp.py) ------------

@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce_with_logits"])
def test_grad_dict_gives_each_layers_gradient_as_the_twin(loss):
    from fastwb.reference import nn as rnn

    layers = [nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4, affine=False)]
    m = nn.Sequential(*layers, dtype="float64", rng=3).compile("sgd", loss=loss)
    r = np.random.default_rng(4)
    X = r.standard_normal((10, 6))
    y = r.integers(0, 4, 10) if loss == "cross_entropy" else (r.random((10, 4)) > 0.5).astype(float)
    m.gradients(X, y)
    twin = rnn.Sequential(layers, m.state_dict(), m.seed, loss)
    out, record = twin.forward(X, True)
    _, g = rnn._LOSSES[loss](out, y)
    _, expected = twin.backward(g, record, True)
    grads = m.grad_dict()
    assert list(grads) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight"]
    assert set(grads) == set(expected)
    for k, v in grads.items():
        assert np.shares_memory(v, m.grads)
        np.testing.assert_allclose(v, expected[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_pickle_keeps_one_buffer_and_trains_on():
    import pickle

    m = _bn_model().compile("adam", lr=1e-2)
    X, y = _data()
    m.train_step(X, y)
    other = pickle.loads(pickle.dumps(m))
    for d, flat in ((other._params, other.params), (other._grads, other.grads), (other._buffers, other.buffers)):
        assert all(np.shares_memory(v, flat) for layer in d for v in layer.values())
    assert other.optimizer.params[0] is other.params
    assert other.train_step(X, y) == m.train_step(X, y)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_inference_from_many_threads_and_one_training_call_at_a_time():
    import threading

    m = _bn_model(dtype="float32").compile("adam")
    X, y = _data(300, dtype=np.float32)
    m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=0)
    expected = m.logits(X, batch_size=64)
    results, errors = [], []

    def infer(i):
        try:
            for _ in range(20):
                results.append(np.array_equal(m.logits(X, batch_size=64), expected))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 80 and all(results)
    with m._training_lock:                       # as if another thread were training
        with pytest.raises(RuntimeError, match="Sequential.train_step: the model is already being trained"):
            m.train_step(X[:32], y[:32])
    m.train_step(X[:32], y[:32])


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_progress_bar_on_a_terminal(monkeypatch, capsys, with_tqdm):
    import io

    from fastwb.nn import progress

    if with_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setattr(progress, "_tqdm", lambda: None)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    monkeypatch.delenv("FASTWB_NO_PROGRESS", raising=False)
    X, y = _data(64)
    m = _bn_model()
    m.fit(X, y, epochs=2, batch_size=16, verbose=True, rng=0)
    drawn = term.getvalue()
    assert "epoch 1/2" in drawn and "epoch 2/2" in drawn and "/4" in drawn
    assert ("step" in drawn) if with_tqdm else ("loss" in drawn and "[" in drawn)
    out = capsys.readouterr().out
    assert "epoch 2/2: loss" in out and "samples/s" in out
    term.truncate(0)
    m.fit(X, y, epochs=1, batch_size=16, verbose=False, rng=0)
    assert term.getvalue() == "" and capsys.readouterr().out == ""


def test_one_chunk_inference_returns_its_own_array():
    m = _bn_model().eval()
    X, _ = _data(8)
    first = m.logits(X[:1])
    kept = first.copy()
    m.logits(X[1:2])                                # same batch size: the same pooled workspace
    np.testing.assert_array_equal(first, kept)
    rows = np.concatenate([m.logits(X[i:i + 1]) for i in range(8)])     # BLAS rounds 1-row products its own way
    np.testing.assert_allclose(m.logits(X, batch_size=3), rows, rtol=1e-12, atol=1e-14)
    p = m.predict_proba(X[:1])
    assert p.shape == (1, 3) and abs(p.sum() - 1) < 1e-12 and m.predict(X[:1])[0] == p.argmax()


def test_batchnorm_without_running_stats_normalises_all_rows_together():
    m = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU(), nn.Linear(16, 3),
                      dtype="float64", rng=0)
    X, y = _data(1025)
    whole = m.logits(X, batch_size=1024)             # was: a last chunk of one row, an error
    np.testing.assert_array_equal(whole, m.logits(X, batch_size=5000))   # the statistics of all 1025 rows
    assert m.predict(X).shape == (1025,)
    with pytest.raises(ValueError, match="at least 2 validation rows"):
        m.fit(X[:64], y[:64], epochs=1, batch_size=32, validation_data=(X[:1], y[:1]), verbose=False)
    assert m.step_count == 0                         # refused before training


def test_changed_layer_settings_are_honoured():
    X, y = _data(32)
    a, b = _bn_model(rng=1), _bn_model(rng=1)
    a.train_step(X, y)
    b.train_step(X, y)
    a.layers[1].momentum = 0.5
    a.layers[3].p = 0.0
    fresh = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16, momentum=0.5), nn.ReLU(), nn.Dropout(0.0),
                          nn.Linear(16, 3), dtype="float64", rng=1)
    fresh.load_state_dict(b.state_dict())
    fresh.seed, fresh.step_count = b.seed, b.step_count
    fresh.compile("adam")
    fresh.optimizer.load_state_dict(b.optimizer.state_dict())
    assert a.train_step(X, y) == fresh.train_step(X, y)
    np.testing.assert_array_equal(a.state_dict()["1.running_mean"], fresh.state_dict()["1.running_mean"])
    a.layers[0].out_features_ = 8
    with pytest.raises(ValueError, match="changed its sizes"):
        a.train_step(X, y)


def test_pruning_masks_survive_a_v2_checkpoint(tmp_path):
    X, y = _data(64)
    m = _bn_model()
    m.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=0, prune_schedule=0.5)
    m.save(tmp_path / "p.fwb", with_optimizer=True)
    back = nn.load(tmp_path / "p.fwb")
    assert back.masks is not None and all(np.array_equal(a, b) for a, b in zip(back.masks, m.masks))
    back.compile("adam", lr=0.1)                       # a new optimizer keeps the masks too
    back.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=1)
    assert back.sparsity() >= 0.5 - 1e-9
