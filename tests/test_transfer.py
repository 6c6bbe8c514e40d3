"""Transfer learning on fastwb.nn.Sequential: freezing, replacing layers,
parameter groups, the Unfreeze callback and fit(cache_frozen=True)."""

import copy
import pickle

import numpy as np
import pytest

import fastwb
from fastwb import nn

THREADS = (1, 2, 4)


def _data(n=96, d=12, k=4, seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d)).astype(dtype), r.integers(0, k, n)


def _model(bn=True, dropout=0.0, dtype="float32", seed=0):
    layers = [nn.Linear(12, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, 8), nn.Tanh()]
    layers += [nn.Dropout(dropout)] if dropout else []
    layers += [nn.Linear(8, 4)]
    return nn.Sequential(*layers, dtype=dtype, rng=seed)


def _trained(bn=True, dropout=0.0, dtype="float32"):
    """A model after one epoch, so that running statistics and optimizer state are not trivial."""
    X, y = _data(dtype=dtype)
    m = _model(bn, dropout, dtype)
    m.compile("adam", lr=1e-2)
    m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=0)
    return m


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


# -- freezing ---------------------------------------------------------------------------------

def test_patterns_select_state_dict_names():
    m = _model()
    m.freeze("0.*")
    assert m.frozen == {"0.weight", "0.bias"}
    m.freeze("1.running_*", "3.weight")          # the running statistics and their count go together
    assert m.frozen == {"0.weight", "0.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
                        "3.weight"}
    m.unfreeze("0.b*")
    assert not m.trainable("0.weight") and m.trainable("0.bias")
    m.freeze()
    assert m.frozen == set(m.state_dict())
    m.unfreeze()
    assert m.frozen == set()
    with pytest.raises(ValueError, match=r"pattern '9\.\*' matches none of the names \(0.weight, 0.bias"):
        m.freeze("9.*")
    with pytest.raises(TypeError, match="a pattern is a string"):
        m.freeze(0)
    with pytest.raises(KeyError, match="no parameter or buffer called 'x'"):
        m.trainable("x")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", ["sgd", "adam", "rmsprop"])
def test_frozen_parameters_and_their_state_do_not_move(opt, dtype):
    X, y = _data(dtype=dtype)
    m = _trained(dtype=dtype)
    m.compile(opt, lr=1e-2)
    m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=1)
    m.freeze("0.*", "1.*")
    before, state = m.state_dict(), {k: v.copy() for k, v in m.optimizer.state[0].items()}
    m.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=2)
    after = m.state_dict()
    for name in before:
        frozen = name.startswith(("0.", "1."))
        assert (_bits(before[name]) == _bits(after[name])) == frozen, name
    for name, kind, off, shape in m._names:
        if kind == "param" and name.startswith(("0.", "1.")):
            for k, v in m.optimizer.state[0].items():
                assert _bits(v[off:off + np.prod(shape)]) == _bits(state[k][off:off + np.prod(shape)]), (name, k)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_head_gradients_equal_the_unfrozen_models(dropout):
    """Freezing the base changes nothing in the head's gradients (bit for bit): the
    backward pass only stops earlier.  The frozen layers' gradients stay 0."""
    X, y = _data()
    full = _trained(bn=False, dropout=dropout)
    part = full.copy()
    part.freeze("0.*")
    full.gradients(X, y)
    part.gradients(X, y)
    g_full, g_part = full.grad_dict(), part.grad_dict()
    for name in g_full:
        if name.startswith("0."):
            assert not g_part[name].any()
        else:
            assert _bits(g_full[name]) == _bits(g_part[name]), name
    # a frozen middle layer: the first layer's gradients are still exact
    mid = full.copy()
    mid.freeze("2.*")
    mid.gradients(X, y)
    assert _bits(mid.grad_dict()["0.weight"]) == _bits(g_full["0.weight"])
    assert not mid.grad_dict()["2.weight"].any()


def test_frozen_batchnorm_uses_and_keeps_its_running_statistics():
    X, y = _data()
    m = _trained()
    m.freeze("1.*")
    stats = m.buffers.copy(), m.num_batches_tracked.copy()
    m.train()
    out_train = m._forward(m._check_x(X), m._workspace(X.shape[0]), True).copy()
    np.testing.assert_array_equal(out_train, m.logits(X))          # training forward = inference
    m.fit(X, y, epochs=1, batch_size=32, verbose=False)
    assert _bits(m.buffers) == _bits(stats[0]) and (m.num_batches_tracked == stats[1]).all()
    # its gradients are those of the eval-mode network
    ref = m.copy().unfreeze()
    ref.eval()
    ref.gradients(X, y)
    m.train().gradients(X, y)
    for name in ("3.weight", "5.weight", "0.weight"):
        np.testing.assert_allclose(m.grad_dict()[name], ref.grad_dict()[name], rtol=1e-5, atol=1e-7)
    # freezing only gamma keeps batch statistics in training
    m2 = _trained()
    m2.freeze("1.weight")
    m2.fit(X, y, epochs=1, batch_size=32, verbose=False)
    assert m2.num_batches_tracked[0] > stats[1][0]


def test_frozen_training_is_the_same_on_any_thread_count():
    X, y = _data(n=300)
    results = []
    for t in THREADS:
        m = _trained()
        m.freeze("0.*", "1.*")
        with fastwb.threads(t):
            m.fit(X, y, epochs=2, batch_size=64, verbose=False, rng=3)
        results.append(_bits(m.params))
    assert len(set(results)) == 1


def test_input_gradient_runs_through_frozen_layers():
    X, y = _data()
    m = _trained()
    ref = m.input_gradient(X, y)
    m.freeze()
    np.testing.assert_array_equal(m.input_gradient(X, y), ref)


def test_everything_frozen_trains_nothing():
    X, y = _data()
    m = _trained()
    m.freeze()
    before = m.params.copy()
    m.fit(X, y, epochs=1, batch_size=32, verbose=False)
    np.testing.assert_array_equal(m.params, before)
    with pytest.raises(ValueError, match="every layer is frozen"):
        m.fit(X, y, epochs=1, verbose=False, cache_frozen=True)


def test_unfrozen_parameters_count_their_own_steps():
    """Adam's bias correction of a parameter trained for the first time starts at step 1,
    as in PyTorch: the same as a fresh optimizer over that parameter."""
    X, y = _data()
    m = _model(bn=False)
    m.compile("adam", lr=1e-2)
    m.freeze("0.*")
    m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=0)
    steps = dict(zip([n for n, k, *_ in m._names if k == "param"], m.optimizer.units[0].steps))
    assert steps["0.weight"] == 0 and steps["2.weight"] == 3
    m.unfreeze()
    m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=1)
    assert m.optimizer.units[0].steps.tolist() == [3, 3, 6, 6, 6, 6]


def test_unfreeze_callback():
    X, y = _data()
    m = _trained()
    m.freeze("0.*")
    w0 = m.W[0].copy()
    history = {}

    class Watch(nn.Callback):
        def on_epoch_end(self, epoch, logs):
            history[epoch] = m.W[0].copy()

    m.fit(X, y, epochs=3, batch_size=32, verbose=False, callbacks=[Watch(), nn.Unfreeze(at_epoch=2, pattern="0.*")])
    first = min(history)
    np.testing.assert_array_equal(history[first], w0)               # epoch 1 (index 1): frozen
    assert not np.array_equal(history[first + 1], w0)               # epoch 2: trained
    assert m.frozen == set()
    with pytest.raises(ValueError, match="at_epoch must be >= 0"):
        nn.Unfreeze(at_epoch=-1)
    with pytest.raises(TypeError, match="pattern"):
        nn.Unfreeze(at_epoch=1, pattern=3)


# -- replacing layers ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["setitem", "replace"])
def test_replace_keeps_everything_else_bit_for_bit(how):
    X, y = _data()
    m = _trained()
    m.freeze("0.*")
    m.prune(0.3)
    before = m.state_dict()
    opt_before = {name: {k: v[off:off + np.prod(shape)].copy() for k, v in m.optimizer.state[0].items()}
                  for name, kind, off, shape in m._names if kind == "param"}
    steps_before = m.optimizer.units[0].steps.copy()
    if how == "setitem":
        m[-1] = nn.Linear(8, 3)
    else:
        m.replace(5, nn.Linear(8, 3), rng=1)
    after = m.state_dict()
    assert after["5.weight"].shape == (8, 3) and m.out_features == 3
    for name in before:
        if not name.startswith("5."):
            assert _bits(before[name]) == _bits(after[name]), name
    for name, kind, off, shape in m._names:
        if kind != "param":
            continue
        for k, v in m.optimizer.state[0].items():
            got = v[off:off + np.prod(shape)]
            if name.startswith("5."):
                assert not got.any(), (name, k)
            else:
                assert _bits(got) == _bits(opt_before[name][k]), (name, k)
    assert m.frozen == {"0.weight", "0.bias"}
    assert m.optimizer.units[0].steps.tolist() == steps_before[:-2].tolist() + [0, 0]
    assert m.masks[-1].all() and len(m.masks) == 3
    m.fit(X, y % 3, epochs=1, batch_size=32, verbose=False)           # trains on: the plans were made again
    assert m.logits(X).shape == (X.shape[0], 3)


def test_replace_is_reproducible():
    """Without rng the new layer's weights come from the model's seed, position and step:
    the same in every run (and another seed for another position or step)."""
    a, b = _trained(), _trained()
    a[-1], b[-1] = nn.Linear(8, 3), nn.Linear(8, 3)
    assert _bits(a.W[-1]) == _bits(b.W[-1])
    b.step_count += 1
    b[-1] = nn.Linear(8, 3)
    assert _bits(a.W[-1]) != _bits(b.W[-1])
    c = _trained()
    c.replace(-1, nn.Linear(8, 3), rng=7)
    d = _trained()
    d.replace(-1, nn.Linear(8, 3), rng=7)
    assert _bits(c.W[-1]) == _bits(d.W[-1]) != _bits(a.W[-1])


def test_replace_errors():
    m = _model()
    with pytest.raises(ValueError, match="layer sizes do not match"):
        m[-1] = nn.Linear(9, 3)
    with pytest.raises(IndexError, match="index 6 is out of range"):
        m[6] = nn.ReLU()
    with pytest.raises(TypeError, match="not a fastwb.nn layer"):
        m[0] = "Linear"
    with pytest.raises(ValueError, match="already in the model"):
        m[2] = m[2]
    assert m.out_features == 4 and len(m) == 6          # unchanged after the errors
    mlp = fastwb.MLP([12, 8, 4])
    with pytest.raises(TypeError, match="cannot be replaced"):
        mlp[-1] = nn.Linear(8, 2)


# -- parameter groups -----------------------------------------------------------------------

def test_groups_give_each_parameter_its_hyperparameters():
    X, y = _data()
    a = _trained(bn=False)
    b = a.copy()
    # a group with the base values changes nothing, bit for bit
    a.compile("adam", lr=1e-2)
    b.compile("adam", lr=1e-2, groups={"0.*": {"lr": 1e-2}})
    for m in (a, b):
        m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=0)
    assert _bits(a.params) == _bits(b.params)
    # lr 0 on the base: it stays, the head moves; weight decay on the head only
    c = a.copy()
    c.compile("adam", lr=1e-2, groups={"0.*": {"lr": 0.0}, "4.weight": {"weight_decay": 0.5}})
    w0, w4 = c.W[0].copy(), c.W[2].copy()
    c.fit(X, y, epochs=1, batch_size=32, verbose=False)
    np.testing.assert_array_equal(c.W[0], w0)
    assert not np.array_equal(c.W[2], w4)
    with pytest.raises(ValueError, match="may set only lr, weight_decay, l1"):
        c.compile("adam", groups={"0.*": {"momentum": 0.9}})
    with pytest.raises(ValueError, match="matches none"):
        c.compile("adam", groups={"7.*": {"lr": 0.1}})
    with pytest.raises(TypeError, match="groups must be a dict"):
        c.compile("adam", groups=[("0.*", {})])


def test_scheduler_scales_the_groups_learning_rates():
    X, y = _data()
    m = _trained(bn=False)
    m.compile("sgd", lr=0.1, groups={"0.*": {"lr": 0.01}})
    m.fit(X, y, epochs=2, batch_size=32, verbose=False,
          callbacks=[nn.LearningRateScheduler(lambda epoch, lr: lr * 0.5)])
    assert m.optimizer.hyper["lr"] == pytest.approx(0.025)
    assert m.optimizer.groups[0]["lr"] == pytest.approx(0.0025)


def test_checkpoints_copies_and_pickles_keep_frozen_and_groups(tmp_path):
    X, y = _data()
    m = _trained()
    m.compile("adam", lr=1e-2, groups={"3.*": {"lr": 1e-3}})
    m.freeze("0.*", "1.*")
    m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=0)
    m.save(tmp_path / "m.fwb", with_optimizer=True)
    others = [nn.load(tmp_path / "m.fwb"), m.copy(), copy.deepcopy(m), pickle.loads(pickle.dumps(m))]
    m.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=5)
    for o in others:
        assert o.frozen == m.frozen and o.groups == m.groups
        o.fit(X, y, epochs=1, batch_size=32, verbose=False, rng=5)
        assert _bits(o.params) == _bits(m.params)


# -- cache_frozen ---------------------------------------------------------------------------

@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_cache_frozen_trains_as_without_it(dropout):
    X, y = _data(n=200)
    a = _trained(dropout=dropout)
    a.freeze("0.*", "1.*")
    b = a.copy()
    ha = a.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=4)
    hb = b.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=4, cache_frozen=True)
    assert b._frozen_prefix() == 2
    np.testing.assert_allclose(hb["loss"], ha["loss"], rtol=1e-5)
    np.testing.assert_allclose(b.params, a.params, rtol=1e-4, atol=1e-6)
    assert _bits(b.buffers) == _bits(a.buffers)


def test_cache_frozen_follows_an_unfreeze_and_needs_a_deterministic_prefix():
    X, y = _data(n=200)
    m = _trained(dropout=0.3)
    m.freeze("0.*")                 # BatchNorm 1 still on batch statistics: nothing to cache
    assert m._frozen_prefix() == 1  # the Linear alone
    m.freeze("1.*", "3.*")          # stage 2 (Linear 3 + Tanh + Dropout) has dropout: not cached
    assert m._frozen_prefix() == 2
    ref = m.copy()
    cb = [nn.Unfreeze(at_epoch=m.epochs_done + 1)]
    m.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=0, cache_frozen=True, callbacks=cb)
    ref.fit(X, y, epochs=2, batch_size=32, verbose=False, rng=0, callbacks=[nn.Unfreeze(at_epoch=ref.epochs_done + 1)])
    assert m.frozen == set() and m._frozen_prefix() == 0
    # not 0.bias: before a BatchNorm its gradient is 0 but for rounding, whose sign Adam's
    # first step turns into +-lr (and 1.running_mean follows it)
    got, want = m.state_dict(), ref.state_dict()
    for name in want:
        if name not in ("0.bias", "1.running_mean"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_frozen_batchnorm_keeps_the_dropout_after_it():
    """BatchNorm -> ReLU -> Dropout with frozen statistics: the dropout still drops in
    training (its mask changes with the step), on top of the running-statistics output."""
    X, y = _data(n=64)
    m = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4), rng=0)
    m.compile("sgd", lr=0.1)
    m.fit(X, y, epochs=1, batch_size=32, verbose=False)
    m.freeze("1.*")
    ws = m._workspace(64)
    Xc = m._check_x(X)
    outs = []
    for step in (5, 6):
        m.step_count = step
        m._forward(Xc, ws, True)
        outs.append(ws.out[1].copy())           # the BatchNorm stage's output, after its dropout
    eval_out = np.maximum(((X @ m.W[0] + m.b[0]) - m.buffers[:32]) / np.sqrt(m.buffers[32:] + 1e-5)
                          * m.params[416:448] + m.params[448:480], 0)
    for out in outs:
        kept = out != 0
        assert 0.35 < 1 - kept[eval_out > 0].mean() < 0.65         # about half of the ReLU's output dropped
        np.testing.assert_allclose(out[kept], 2 * eval_out[kept], rtol=1e-4, atol=1e-5)
    assert not np.array_equal(outs[0] != 0, outs[1] != 0)


# -- review findings ------------------------------------------------------------------------

def test_a_checkpoint_loads_after_a_replace_left_a_group_naming_nothing(tmp_path):
    m = _trained()
    m.compile("adam", groups={"1.*": {"lr": 1e-4}})
    m[1] = nn.Dropout(0.0)
    m.save(tmp_path / "m.fwb", with_optimizer=True)
    assert nn.load(tmp_path / "m.fwb").groups == {"1.*": {"lr": 1e-4}}


def test_a_failed_compile_changes_nothing():
    X, y = _data()
    m = _trained()
    m.freeze("0.*")
    opt, units, loss = m.optimizer, m.optimizer.units[0], m.loss
    for groups in ({"3.*": {"lr": -1}}, {"3.*": 0.1}, {"3.*": {"momentum": 0.9}}):
        with pytest.raises((TypeError, ValueError), match="groups"):
            m.compile("adamw", loss="mse", weight_decay=0.1, groups=groups)
    assert m.optimizer is opt and m.optimizer.units[0] is units and m.loss is loss
    w = m.W[0].copy()
    m.fit(X, y, epochs=1, verbose=False)
    np.testing.assert_array_equal(m.W[0], w)


def test_groups_hold_checked_python_numbers_and_survive_a_save_without_optimizer(tmp_path):
    X, y = _data()
    m = _trained(bn=False)
    m.compile("adam", groups={"0.*": {"lr": np.float32(0.0)}})
    assert type(m.groups["0.*"]["lr"]) is float
    m.save(tmp_path / "m.fwb")
    back = nn.load(tmp_path / "m.fwb")
    w = back.W[0].copy()
    back.fit(X, y, epochs=1, verbose=False)          # compiles implicitly: the group still holds layer 0
    np.testing.assert_array_equal(back.W[0], w)


def test_cache_frozen_sees_a_layer_setting_changed_before_fit():
    X, y = _data(n=200)
    layers = lambda: [nn.Linear(12, 16), nn.Dropout(0.0), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)]  # noqa
    a = nn.Sequential(*layers(), dtype="float64", rng=0)
    a.compile("sgd", lr=0.1)
    a.fit(X.astype(np.float64), y, epochs=1, verbose=False, rng=0)
    a.freeze("0.*", "2.*")
    b = a.copy()
    b.layers[1].p = 0.5
    a.layers[1].p = 0.5
    a.fit(X.astype(np.float64), y, epochs=1, verbose=False, rng=1)
    b.fit(X.astype(np.float64), y, epochs=1, verbose=False, rng=1, cache_frozen=True)
    np.testing.assert_allclose(b.params, a.params, rtol=1e-10, atol=1e-12)


def test_running_statistics_freeze_together():
    X, y = _data()
    m = _trained()
    m.freeze("1.running_var")
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= m.frozen
    before = m.buffers.copy(), m.num_batches_tracked.copy()
    m.fit(X, y, epochs=1, verbose=False)
    assert _bits(m.buffers) == _bits(before[0]) and (m.num_batches_tracked == before[1]).all()
    m.unfreeze("1.num_batches_tracked")
    assert not m.frozen & {"1.running_mean", "1.running_var", "1.num_batches_tracked"}


def test_scheduler_keeps_group_ratios_through_a_zero_rate():
    X, y = _data()
    m = _trained(bn=False)
    m.compile("sgd", lr=1e-2, groups={"0.*": {"lr": 1e-3}})
    rates = iter([0.0, 1e-2])
    m.fit(X, y, epochs=2, verbose=False, callbacks=[nn.LearningRateScheduler(lambda e, lr: next(rates))])
    assert m.optimizer.groups[0]["lr"] == pytest.approx(1e-3)


def test_unfreeze_checks_its_pattern_when_training_begins():
    X, y = _data()
    m = _trained()
    with pytest.raises(ValueError, match="Unfreeze: pattern '9.\\*' matches none"):
        m.fit(X, y, epochs=3, verbose=False, callbacks=[nn.Unfreeze(at_epoch=2, pattern="9.*")])
    assert m.epochs_done == 1                       # nothing was trained first
