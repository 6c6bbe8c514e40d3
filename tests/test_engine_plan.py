"""fastwb._engine.Plan, the compiled step of any fastwb.nn.Sequential, against
the same kernels called one by one from Python (python_forward / _backward
below, how Sequential ran before the Plan): the same kernels in the same
order with the same arguments, so every output, gradient,
running statistic and loss must be bitwise identical, for every stage kind,
every loss, both dtypes, several batch sizes and 1/2/4 threads; and a call
allocates nothing."""

import gc
import tracemalloc

import numpy as np
import pytest

import fastwb
from fastwb import _dense, _engine, _gemm, _norm, nn
from fastwb.nn.plan import _stage_dicts as stage_dicts


# -- the oracle: the same kernels called one by one from Python ----------------------------
# (Sequential ran this way before the Plan; kept here as the Plan's bitwise reference)

def _matmul(a, b, out):
    """The engine's GEMM, whole, on one thread: fastwb/_gemm.pyx's tiles when NumPy's
    OpenBLAS is bound (tests/test_gemm.py checks them against np.matmul), else np.matmul."""
    if _gemm.available():
        _gemm.gemm(a, b, out, 1)
    else:
        np.matmul(a, b, out=out)


def _drop(model, k, src, dst, ws):
    st = model._plan[k]
    _norm.dropout(src.reshape(-1), dst.reshape(-1), st.p, model._seed(st), model.step_count, ws.nt_drop[k])
    return dst


def python_forward(model, X, ws, training):
    x = X
    for k, st in enumerate(model._plan):
        out = ws.out[k]
        p = st.p if training else 0.0
        if st.kind == "dense":
            prm = model._params[st.index]
            dst = ws.pre[k] if p else out
            _matmul(x, prm["weight"], dst)
            if prm.get("bias") is not None or st.code:
                _dense.bias_act_rows(dst, prm.get("bias"), dst, st.code, st.alpha, ws.nt_act[k])
            if p:
                _drop(model, k, dst, out, ws)
        elif st.kind == "bn":
            layer, prm, buf = st.layer, model._params[st.index], model._buffers[st.index]
            track = layer.track_running_stats
            factor = 0.0
            if training and track:
                i = model._nbt_index[st.index]
                model.num_batches_tracked[i] += 1
                factor = layer.momentum if layer.momentum is not None else 1.0 / float(model.num_batches_tracked[i])
            running = (buf["running_mean"], buf["running_var"]) if track else (None, None)
            _norm.batch_norm(x, out, ws.mean[k], ws.invstd[k], prm.get("weight"), prm.get("bias"), *running,
                             factor, layer.eps, training or not track, st.code, st.alpha, p, model._seed(st),
                             model.step_count, ws.nt_bn[k])
        elif st.kind == "act":
            dst = ws.pre[k] if p else out
            _dense.act_flat(x.reshape(-1), dst.reshape(-1), st.code, st.alpha, ws.nt_act[k])
            if p:
                _drop(model, k, dst, out, ws)
        elif p:
            _drop(model, k, x, out, ws)
        else:
            np.copyto(out, x)
        x = out
    return x


def python_loss_and_grad(model, X, y, ws, training):
    out = python_forward(model, X, ws, training)
    return model.loss.kernel(out, y, ws.grad_out, ws.row_loss, ws.nt_loss)


def python_backward(model, X, ws, training, weights=True, input_gradient=False):
    g = ws.grad_out
    for k in range(len(model._plan) - 1, -1, -1):
        st = model._plan[k]
        x = X if k == 0 else ws.out[k - 1]
        p = st.p if training else 0.0
        gx = ws.grad_in[k]
        if p and st.kind in ("dense", "act"):
            g = _drop(model, k, g, ws.work[k], ws)
        a = ws.pre[k] if p else ws.out[k]
        if st.kind == "dense":
            if weights:
                gb = model._grads[st.index].get("bias")
                gb = ws.gb[k] if gb is None else gb
                if st.code:
                    _dense.act_grad_colsum(g, a, g, gb, st.code, st.alpha, ws.nt_col[k])
                else:
                    _dense.colsum(g, gb, ws.nt_col[k])
                _matmul(x.T, g, model._grads[st.index]["weight"])
            elif st.code:
                _dense.act_grad_flat(g.reshape(-1), a.reshape(-1), g.reshape(-1), st.code, st.alpha, ws.nt_act[k])
            if k > 0 or input_gradient:
                _matmul(g, model._params[st.index]["weight"].T, gx)
        elif st.kind == "bn":
            prm, grd = model._params[st.index], model._grads[st.index]
            gg, gbeta = (grd.get("weight"), grd.get("bias")) if weights else (None, None)
            _norm.batch_norm_backward(g, x, ws.work[k], gx, ws.mean[k], ws.invstd[k], prm.get("weight"),
                                      prm.get("bias"), gg, gbeta, training or not st.layer.track_running_stats,
                                      st.code, st.alpha, p, model._seed(st), model.step_count, ws.nt_bn[k])
        elif st.kind == "act":
            _dense.act_grad_flat(g.reshape(-1), a.reshape(-1), gx.reshape(-1), st.code, st.alpha, ws.nt_act[k])
        elif p:
            _drop(model, k, g, gx, ws)
        else:
            np.copyto(gx, g)
        g = gx
    return g


def make_plan(model, ws, threads=None, pinned_x=None):
    """A Plan over the model's workspace; ``threads`` forces every kernel's
    thread count (the kernels' results do not depend on it)."""
    stages = stage_dicts(model, ws)
    nt_loss = ws.nt_loss
    if threads is not None:
        for d in stages:
            d.update(nt_act=threads, nt_col=threads, nt_drop=threads, nt_bn=threads)
        nt_loss = threads
    return _engine.Plan(stages, ws.grad_out, ws.row_loss, model.loss.name, nt_loss, model.num_batches_tracked,
                        pinned_x=pinned_x)


# -- models -----------------------------------------------------------------------------

ACTS = {"identity": nn.Identity, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh}


def _models():
    """name -> (builder of the layer list, loss, input width)."""
    m = {}
    for act, A in ACTS.items():
        m[f"dense_{act}"] = (lambda A=A: [nn.Linear(7, 12), A(), nn.Linear(12, 9), A(), nn.Linear(9, 5)],
                             "cross_entropy")
    m["dense_nobias"] = (lambda: [nn.Linear(7, 12, bias=False), nn.ReLU(), nn.Linear(12, 5, bias=False)],
                         "cross_entropy")
    m["dense_nobias_identity"] = (lambda: [nn.Linear(7, 12, bias=False), nn.Linear(12, 5)], "mse")
    m["dense_dropout"] = (lambda: [nn.Linear(7, 12), nn.Tanh(), nn.Dropout(0.3), nn.Linear(12, 5), nn.Dropout(0.1)],
                          "cross_entropy")
    m["dense_identity_dropout"] = (lambda: [nn.Linear(7, 12), nn.Dropout(0.4), nn.Linear(12, 5)], "mse")
    for affine in (True, False):
        for track in (True, False):
            for mom in (0.1, None):
                name = f"bn_a{int(affine)}_t{int(track)}_m{'none' if mom is None else mom}"
                m[name] = (lambda affine=affine, track=track, mom=mom: [
                    nn.Linear(7, 16), nn.BatchNorm1d(16, momentum=mom, affine=affine, track_running_stats=track),
                    nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 5)], "cross_entropy")
    m["bn_plain"] = (lambda: [nn.Linear(7, 16), nn.BatchNorm1d(16), nn.Linear(16, 5)], "cross_entropy")
    m["bn_leaky"] = (lambda: [nn.Linear(7, 16), nn.BatchNorm1d(16, momentum=None), nn.LeakyReLU(0.1),
                              nn.Linear(16, 5)], "bce_with_logits")
    m["bn_sigmoid_nodrop_first"] = (lambda: [nn.BatchNorm1d(7, eps=1e-3), nn.Sigmoid(), nn.Linear(7, 5)], "mse")
    m["bn_tanh_dropout_last"] = (lambda: [nn.Linear(7, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.5)],
                                 "mse")
    m["bn_dropout_no_act"] = (lambda: [nn.Linear(7, 16), nn.BatchNorm1d(16, affine=False), nn.Dropout(0.25),
                                       nn.Linear(16, 5)], "bce_with_logits")
    m["two_bn"] = (lambda: [nn.Linear(7, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                            nn.BatchNorm1d(16, momentum=None), nn.ReLU(), nn.Linear(16, 5)], "cross_entropy")
    m["dense_then_act_stage"] = (lambda: [nn.Linear(7, 12), nn.Linear(12, 12), nn.BatchNorm1d(12), nn.Linear(12, 5)],
                                 "mse")
    m["act_stages"] = (lambda: [nn.ReLU(), nn.Linear(7, 12), nn.BatchNorm1d(12), nn.Sigmoid(), nn.Tanh(),
                                nn.LeakyReLU(0.3), nn.Linear(12, 5), nn.Identity()], "cross_entropy")
    m["act_dropout_stage"] = (lambda: [nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 12), nn.Sigmoid(), nn.Tanh(),
                                       nn.Dropout(0.2), nn.Linear(12, 5)], "bce_with_logits")
    m["dropout_stages"] = (lambda: [nn.Dropout(0.3), nn.Linear(7, 12), nn.ReLU(), nn.Dropout(0.0), nn.Dropout(0.5),
                                    nn.Linear(12, 5), nn.Dropout(0.2)], "mse")
    m["identity_stages"] = (lambda: [nn.Identity(), nn.Linear(7, 12), nn.Identity(), nn.Identity(),
                                     nn.Linear(12, 5)], "cross_entropy")
    m["width_one_out"] = (lambda: [nn.Linear(7, 12), nn.ReLU(), nn.Linear(12, 1)], "bce_with_logits")
    m["width_one_in"] = (lambda: [nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 1), nn.Linear(1, 3)], "mse")
    m["width_one_bn"] = (lambda: [nn.Linear(7, 1), nn.BatchNorm1d(1), nn.ReLU(), nn.Linear(1, 2)], "cross_entropy")
    return m


MODELS = _models()
DTYPES = ["float32", "float64"]


def _build(name, dtype, seed=3):
    layers, loss = MODELS[name]
    model = nn.Sequential(*layers(), dtype=dtype, rng=seed, in_features=1 if name == "width_one_in" else 7)
    model.compile("sgd", lr=0.05, momentum=0.9, loss=loss)
    return model


def _data(model, n, seed=0):
    r = np.random.default_rng(seed)
    X = (r.standard_normal((n, model.in_features)) * 1.5).astype(model.dtype)
    if model.loss.name == "cross_entropy":
        y = r.integers(0, model.out_features, n)
    elif model.loss.name == "mse":
        y = r.standard_normal((n, model.out_features))
    else:
        y = (r.random((n, model.out_features)) < 0.4).astype(np.float64)
    return model._check_batch(X, y)


def _same(a, b, what):
    """Bitwise equality (sign of zero and NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: {np.max(np.abs(a.astype(float) - b.astype(float)))} off"


def _state(model, ws):
    """Everything a step writes (stage 0's grad_in only when asked: compared apart; the
    backward pass stops at the first stage with parameters, whose grad_in is not needed)."""
    first = next((k for k, st in enumerate(model._plan) if st.kind in ("dense", "bn") and st.layer.param_names),
                 len(model._plan))
    return [model.params, model.grads, model.buffers, model.num_batches_tracked, ws.grad_out] + \
        [a for a in ws.out + ws.pre + ws.mean + ws.invstd + ws.grad_in[first + 1:] if a is not None]


def _same_state(ref, ws_ref, got, ws_got, what):
    for i, (a, b) in enumerate(zip(_state(ref, ws_ref), _state(got, ws_got))):
        _same(b, a, f"{what}: array {i}")


def _python_gradients(model, X, y, ws, training, weights, input_gradient):
    loss = python_loss_and_grad(model, X, y, ws, training)
    g = python_backward(model, X, ws, training, weights=weights, input_gradient=input_gradient)
    return loss, g


def _pair(name, dtype, n, threads=None):
    ref = _build(name, dtype)
    got = ref.copy()
    ws_ref, ws_got = ref._workspace(n), got._workspace(n)
    return ref, ws_ref, got, ws_got, make_plan(got, ws_got, threads)


# -- bitwise against the Python path ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_match_python_path(name, dtype):
    """Several optimizer steps (training mode, dropout masks of each step, running
    statistics and num_batches_tracked moving), then eval-mode forward."""
    for n in (2, 17):
        ref, ws_ref, got, ws_got, plan = _pair(name, dtype, n)
        for step in range(4):
            X, y = _data(ref, n, seed=step)
            want = python_loss_and_grad(ref, X, y, ws_ref, True)
            python_backward(ref, X, ws_ref, True)
            loss = plan.gradients(X, y, True, got.step_count)
            assert type(loss) is float and loss == want, (step, loss, want)
            _same_state(ref, ws_ref, got, ws_got, f"{name} n={n} step {step}")
            for model in (ref, got):
                model.optimizer._apply([model.grads])
                model.step_count += 1
        _same(got.params, ref.params, "parameters after the steps")
        X, _ = _data(ref, n, seed=99)
        for training in (False, True):
            want = python_forward(ref, X, ws_ref, training)
            out = plan.forward(X, training, got.step_count)
            assert out is ws_got.out[-1]
            _same(out, want, f"forward training={training}")
            _same_state(ref, ws_ref, got, ws_got, f"{name} forward training={training}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("training,weights,input_gradient", [
    (True, True, False), (True, True, True), (False, True, False), (False, False, True), (True, False, True),
    (False, False, False)])
def test_gradient_modes_match_python_path(name, dtype, training, weights, input_gradient):
    n = 3
    ref, ws_ref, got, ws_got, plan = _pair(name, dtype, n)
    # move the running statistics away from their initial values first
    for step in range(2):
        X, y = _data(ref, n, seed=10 + step)
        python_loss_and_grad(ref, X, y, ws_ref, True)
        plan.forward(X, True, got.step_count)
    # known contents, so that "not written" is visible too
    for a in (ws_ref.grad_in[0], ws_got.grad_in[0]):
        a[...] = 7.0
    for model in (ref, got):
        model.grads[...] = 5.0
        model.step_count = 11
    X, y = _data(ref, n, seed=1)
    want, g_ref = _python_gradients(ref, X, y, ws_ref, training, weights, input_gradient)
    loss = plan.gradients(X, y, training, got.step_count, weights, input_gradient)
    assert loss == want
    _same_state(ref, ws_ref, got, ws_got, f"{name} {training} {weights} {input_gradient}")
    if input_gradient:
        _same(ws_got.grad_in[0], g_ref, "input gradient")
    if input_gradient or got._plan[0].layer.param_names:     # else the backward stops before stage 0
        _same(ws_got.grad_in[0], ws_ref.grad_in[0], "stage 0 grad_in")
    if not weights:
        assert np.all(got.grads == 5.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 3, 17, 128])
@pytest.mark.parametrize("name", ["bn_a1_t1_m0.1", "bn_a0_t0_mnone", "act_dropout_stage", "dropout_stages",
                                  "two_bn", "dense_leaky_relu", "bn_leaky", "width_one_out"])
def test_batch_sizes(name, dtype, n):
    ref, ws_ref, got, ws_got, plan = _pair(name, dtype, n)
    for step in range(3):
        X, y = _data(ref, n, seed=step)
        want, _ = _python_gradients(ref, X, y, ws_ref, True, True, True)
        assert plan.gradients(X, y, True, step, True, True) == want
        _same_state(ref, ws_ref, got, ws_got, f"{name} n={n}")
        _same(ws_got.grad_in[0], ws_ref.grad_in[0], "input gradient")
        ref.step_count = got.step_count = step + 1


# -- threads ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["two_bn", "act_dropout_stage", "bn_tanh_dropout_last", "dense_sigmoid",
                                  "dropout_stages", "bn_leaky"])
def test_forced_thread_counts_bitwise_equal(name, dtype):
    """Every kernel on 1, 2 and 4 threads (forced, whatever the size): the same
    bits as the Python path at its own thread counts."""
    n = 128
    X, y = _data(_build(name, dtype), n)
    ref = _build(name, dtype)
    ws_ref = ref._workspace(n)
    want, g_ref = _python_gradients(ref, X, y, ws_ref, True, True, True)
    for t in (1, 2, 4):
        got = _build(name, dtype)
        ws_got = got._workspace(n)
        plan = make_plan(got, ws_got, threads=t)
        assert plan.gradients(X, y, True, 0, True, True) == want
        _same_state(ref, ws_ref, got, ws_got, f"{t} threads")
        _same(ws_got.grad_in[0], g_ref, "input gradient")


@pytest.mark.parametrize("dtype", DTYPES)
def test_planned_threads_bitwise_equal(dtype):
    """A model large enough that the planner itself picks several threads, under
    fastwb.threads(1, 2, 4): plan and Python path agree, and all counts agree."""
    n = 128
    layers = lambda: [nn.Linear(64, 2048), nn.BatchNorm1d(2048), nn.Tanh(), nn.Dropout(0.2), nn.Linear(2048, 1024),
                      nn.Sigmoid(), nn.Dropout(0.1), nn.Linear(1024, 10)]
    results = []
    for t in (1, 2, 4):
        with fastwb.threads(t):
            ref = nn.Sequential(*layers(), dtype=dtype, rng=0).compile("sgd", lr=0.01)
            got = ref.copy()
            ws_ref, ws_got = ref._workspace(n), got._workspace(n)
            plan = make_plan(got, ws_got)
            if t > 1:
                assert max(ws_got.nt_bn + ws_got.nt_act) > 1
            losses = []
            for step in range(2):
                X, y = _data(ref, n, seed=step)
                ref.step_count = got.step_count = step
                want, _ = _python_gradients(ref, X, y, ws_ref, True, True, False)
                loss = plan.gradients(X, y, True, got.step_count)
                assert loss == want
                _same_state(ref, ws_ref, got, ws_got, f"{t} threads")
                losses.append(loss)
        results.append((losses, got.grads.copy(), got.buffers.copy(), ws_got.out[-1].copy()))
    for losses, grads, buffers, out in results[1:]:
        assert losses == results[0][0]
        _same(grads, results[0][1], "grads across thread counts")
        _same(buffers, results[0][2], "buffers across thread counts")
        _same(out, results[0][3], "output across thread counts")


# -- allocation, references, arguments ----------------------------------------------------------------

def _traced(f, calls=20):
    """(growth, peak above the start) of traced memory over `calls` calls of f."""
    f()
    tracemalloc.start()
    try:
        f()
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        for i in range(calls):
            f(i)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current - start, peak - start


@pytest.mark.parametrize("name", ["two_bn", "act_dropout_stage", "dense_relu", "bn_a1_t1_mnone", "dropout_stages"])
def test_calls_allocate_nothing(name):
    """After the first call nothing is allocated, not even for a moment: the
    traced peak is that of a loop calling a function that does nothing."""
    n = 32
    model = _build(name, "float32")
    ws = model._workspace(n)
    X, y = _data(model, n)
    plan = make_plan(model, ws, pinned_x=X)        # fit's gathered batch: its GEMM arguments are kept

    def steps(i=0):
        plan.gradients(X, y, True, i)
        plan.gradients(X, y, False, i, False, True)
        plan.gradients(X, y, True, i, True, True)
        plan.forward(X, i % 2 == 0, i)

    _, baseline = _traced(lambda i=0: None)
    grown, peak = _traced(steps)
    assert grown <= 0 and peak <= baseline, (grown, peak, baseline)


def test_plan_keeps_its_arrays_alive():
    n = 8
    model = _build("two_bn", "float64")
    ws = model._workspace(n)
    plan = make_plan(model, ws)
    X, y = _data(model, n)
    plan.gradients(X, y, True, 0)
    want = plan.forward(X, False, 0).copy()
    del model, ws
    gc.collect()
    _same(plan.forward(X, False, 0), want, "eval forward after the model is gone")


def test_bad_arguments():
    n = 4
    model = _build("two_bn", "float32")
    ws = model._workspace(n)
    plan = make_plan(model, ws)
    X, y = _data(model, n)
    for bad in (X.astype(np.float64), X[:2], np.asfortranarray(np.zeros((n, 7), np.float32)), X.tolist()):
        with pytest.raises(ValueError, match="X must be"):
            plan.forward(bad, True, 0)
    with pytest.raises(ValueError, match="y must be"):
        plan.gradients(X, y.astype(np.int32), True, 0)
    stages = stage_dicts(model, ws)
    with pytest.raises(ValueError, match="unknown loss"):
        _engine.Plan(stages, ws.grad_out, ws.row_loss, "hinge", 1, model.num_batches_tracked)
    broken = [dict(d) for d in stages]
    broken[0]["dweight"] = broken[0]["dweight"].astype(np.float64)
    with pytest.raises(ValueError, match="stage 0: 'dweight'"):
        _engine.Plan(broken, ws.grad_out, ws.row_loss, "cross_entropy", 1, model.num_batches_tracked)
    broken = [dict(d) for d in stages]
    broken[1]["nbt_index"] = 5
    with pytest.raises(ValueError, match="nbt_index"):
        _engine.Plan(broken, ws.grad_out, ws.row_loss, "cross_entropy", 1, model.num_batches_tracked)
    with pytest.raises(ValueError, match="stage 1 takes 7 features but stage 0 gives 5"):
        _engine.Plan(stages[4:] + stages[:1], ws.grad_out, ws.row_loss, "cross_entropy", 1,
                     model.num_batches_tracked)


def test_inference_workspaces_have_forward_only_plans():
    model = _build("two_bn", "float32")
    X, y = _data(model, 6)
    model.logits(X)
    (ws,) = model._pool.workspaces()
    assert ws.grad_in == [None] * len(model._plan) and ws.work == [None] * len(model._plan)
    with pytest.raises(RuntimeError, match="no backward pass"):
        ws.plan.gradients(X, y, False, 0)
    with pytest.raises(RuntimeError, match="inference mode only"):
        ws.plan.forward(X, True, 0)
    np.testing.assert_array_equal(ws.plan.forward(X, False, 0), model.logits(X))


def test_a_plan_keeps_no_callers_array_alive():
    """Only the pinned input (fit's own gather buffer) is kept between calls: a
    caller's X (or the base array of a chunk view) is free once the call returns."""
    import weakref

    model = _build("dense_relu", "float64")
    ws = model._workspace(4)
    for call in (lambda X, y: ws.plan.gradients(X, y, True, 0), lambda X, y: ws.plan.forward(X, False, 0),
                 lambda X, y: model.logits(X), lambda X, y: model.train_step(X, y)):
        X, y = _data(model, 4)
        big = np.concatenate([X, X])
        ref = weakref.ref(big)
        call(big[:4], y)
        del big
        gc.collect()
        assert ref() is None
