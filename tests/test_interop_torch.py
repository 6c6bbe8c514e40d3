"""fastwb.nn.interop: torch.nn.Sequential -> fastwb (from_torch), back (to_torch),
and PyTorch state dicts (load_state_dict(..., layout="torch")).

Outputs agree to 1e-6 (float32) and 1e-12 (float64), relative to the largest
magnitude of the array compared, in eval and in training mode (without
dropout: the two libraries draw different masks); in training mode the
loss, every gradient and the state after one SGD step (running statistics
included) are compared too."""

import copy
import sys

import numpy as np
import pytest

from fastwb import nn
from fastwb.nn import interop

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch --index-url "
                                            "https://download.pytorch.org/whl/cpu)")
tnn = torch.nn

DTYPES = ["float32", "float64"]
TOL = {"float32": 1e-6, "float64": 1e-12}


def assert_close(actual, expected, dtype, scale=None):
    """Equal to the dtype's tolerance, relative to ``scale``: by default the largest
    magnitude of ``expected``."""
    actual = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    expected = expected.detach().cpu().numpy() if torch.is_tensor(expected) else np.asarray(expected)
    assert actual.shape == expected.shape
    tol = TOL[str(dtype)]
    if scale is None:
        scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale + np.finfo(expected.dtype).tiny)


def tdtype(dtype):
    return torch.float64 if dtype == "float64" else torch.float32


def data(dtype, n=24, d=6, c=4, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d)).astype(dtype), r.integers(0, c, n)


def jitter(net, seed=1):
    """Move BatchNorm's affine parameters away from 1 and 0 and its running
    statistics away from their start (a few training forwards), as a trained
    network has them."""
    g = torch.Generator().manual_seed(seed)
    was = net.training
    with torch.no_grad():
        for m in net:
            if isinstance(m, tnn.BatchNorm1d) and m.affine:
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))
        net.train()
        for _ in range(3):
            first = next(m for m in net if hasattr(m, "in_features"))
            net(torch.randn((16, first.in_features), generator=g, dtype=tdtype_of(net)))
    net.train(was)
    return net


def tdtype_of(net):
    return next(net.parameters()).dtype


# each builder: (dtype, dropout p) -> a torch.nn.Sequential taking 6 features, giving 4 outputs
NETS = {
    "bn_relu": lambda dt, p: tnn.Sequential(
        tnn.Linear(6, 12), tnn.BatchNorm1d(12), tnn.ReLU(), tnn.Dropout(p), tnn.Linear(12, 4)),
    "nobias_noaffine_leaky": lambda dt, p: tnn.Sequential(
        tnn.Linear(6, 12, bias=False), tnn.BatchNorm1d(12, affine=False), tnn.LeakyReLU(0.2), tnn.Dropout(p),
        tnn.Linear(12, 4, bias=False)),
    "flatten_untracked_cumulative": lambda dt, p: tnn.Sequential(
        tnn.Flatten(), tnn.Linear(6, 10), tnn.BatchNorm1d(10, track_running_stats=False), tnn.Tanh(),
        tnn.Linear(10, 8), tnn.BatchNorm1d(8, eps=1e-3, momentum=None), tnn.Sigmoid(), tnn.Linear(8, 4),
        tnn.Identity()),
    "no_bn": lambda dt, p: tnn.Sequential(
        tnn.Linear(6, 9), tnn.LeakyReLU(), tnn.Dropout(p), tnn.Linear(9, 9), tnn.Tanh(), tnn.Linear(9, 4)),
}


def build(name, dtype, p=0.0, seed=0):
    torch.manual_seed(seed)
    return jitter(NETS[name](dtype, p).to(tdtype(dtype)), seed + 1)


def torch_layout(state):
    """A fastwb state dict in PyTorch's layout (Linear weights are the only 2-d entries)."""
    return {k: (v.T if v.ndim == 2 else v) for k, v in state.items()}


def assert_same_state(model, net):
    """The fastwb model holds exactly the torch module's parameters and buffers."""
    sd, tsd = torch_layout(model.state_dict()), net.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        np.testing.assert_array_equal(sd[k], tsd[k].numpy(), err_msg=k)
        assert sd[k].dtype == tsd[k].numpy().dtype, k


def train_mode_check(model, net, X, y, dtype, lr=0.1):
    """In training mode: the same loss and gradients, and after one SGD step the
    same parameters and running statistics."""
    assert model.training and net.training
    loss = model.gradients(X, y)            # changes nothing in the model
    grads = torch_layout({k: v.copy() for k, v in model.grad_dict().items()})
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    opt.zero_grad()
    tloss = tnn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
    tloss.backward()
    assert_close(np.array(loss), tloss, dtype)
    tgrads = {k: p.grad for k, p in net.named_parameters()}
    assert list(grads) == list(tgrads)
    # relative to the largest gradient: a gradient that is 0 in exact arithmetic (a Linear
    # bias before BatchNorm) is rounding noise of the terms it cancels, in both libraries
    scale = max(float(g.abs().max()) for g in tgrads.values())
    for k in grads:
        assert_close(grads[k], tgrads[k], dtype, scale)
    opt.step()
    model.compile("sgd", lr=lr)
    model.train_step(X, y)
    sd, tsd = torch_layout(model.state_dict()), net.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        if k.endswith("num_batches_tracked"):
            assert int(sd[k]) == int(tsd[k]), k
        else:
            assert_close(sd[k], tsd[k], dtype)


def layer_settings(model):
    return [(type(la).__name__, la.config()) for la in model.layers]


# -- from_torch -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(NETS))
def test_from_torch_eval_matches(name, dtype):
    net = build(name, dtype, p=0.3).eval()
    model = nn.from_torch(net)
    assert model.dtype == np.dtype(dtype) and model.training is False
    assert_same_state(model, net)
    X, _ = data(dtype)
    with torch.no_grad():
        expected = net(torch.from_numpy(X))
    assert_close(model.logits(X), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(NETS))
def test_from_torch_train_matches(name, dtype):
    net = build(name, dtype, p=0.0).train()
    model = nn.from_torch(net)
    assert model.training is True
    X, y = data(dtype)
    train_mode_check(model, net, X, y, dtype)


def test_from_torch_copies_settings():
    net = tnn.Sequential(tnn.Linear(5, 7, bias=False), tnn.BatchNorm1d(7, eps=1e-3, momentum=None, affine=False),
                         tnn.LeakyReLU(0.25), tnn.Dropout(0.4), tnn.Linear(7, 6), tnn.BatchNorm1d(6, momentum=0.3,
                         track_running_stats=False), tnn.Sigmoid(), tnn.Flatten(), tnn.Tanh(), tnn.ReLU())
    with torch.no_grad():
        net[1].num_batches_tracked.fill_(41)
    model = nn.from_torch(net.eval())
    assert layer_settings(model) == [
        ("Linear", {"in_features": 5, "out_features": 7, "bias": False, "init": "torch"}),
        ("BatchNorm1d", {"num_features": 7, "eps": 1e-3, "momentum": None, "affine": False,
                         "track_running_stats": True}),
        ("LeakyReLU", {"negative_slope": 0.25}),
        ("Dropout", {"p": 0.4}),
        ("Linear", {"in_features": 7, "out_features": 6, "bias": True, "init": "torch"}),
        ("BatchNorm1d", {"num_features": 6, "eps": 1e-5, "momentum": 0.3, "affine": True,
                         "track_running_stats": False}),
        ("Sigmoid", {}), ("Identity", {}), ("Tanh", {}), ("ReLU", {})]
    sd = model.state_dict()
    assert sd["1.num_batches_tracked"].dtype == np.int64 and int(sd["1.num_batches_tracked"]) == 41
    assert "5.running_mean" not in sd and "1.weight" not in sd and "0.bias" not in sd
    assert model.dtype == np.float32 and not model.training


def test_from_torch_shares_no_memory():
    net = build("bn_relu", "float64")
    model = nn.from_torch(net)
    before = model.state_dict()
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            t.add_(1)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_from_torch_in_features():
    net = tnn.Sequential(tnn.ReLU(), tnn.Tanh())
    with pytest.raises(ValueError, match="in_features"):
        nn.from_torch(net)
    model = nn.from_torch(net, in_features=5)
    assert model.in_features == 5 and model.out_features == 5 and model.dtype == np.float32
    X = np.linspace(-2, 2, 15, dtype=np.float32).reshape(3, 5)
    assert_close(model.logits(X), net(torch.from_numpy(X)), "float32")


# -- to_torch ---------------------------------------------------------------------------------

def fastwb_model(dtype, p=0.0, rng=0):
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12, momentum=None), nn.LeakyReLU(0.05), nn.Dropout(p),
                          nn.Linear(12, 10, bias=False), nn.BatchNorm1d(10, affine=False, eps=1e-4), nn.Tanh(),
                          nn.Linear(10, 8), nn.BatchNorm1d(8, track_running_stats=False, momentum=0.2),
                          nn.Sigmoid(), nn.Identity(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4),
                          dtype=dtype, rng=rng)
    X, y = data(dtype, seed=5)
    model.compile("adam", lr=1e-2)
    for _ in range(3):                      # parameters and running statistics away from their start
        model.train_step(X, y)
    return model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_to_torch_matches(dtype, training):
    model = fastwb_model(dtype).train(training)
    net = model.to_torch()
    assert isinstance(net, tnn.Sequential) and net.training is training
    assert all(m.training is training for m in net)
    assert [type(m).__name__ for m in net] == [type(la).__name__ for la in model.layers]
    assert all(t.dtype == tdtype(dtype) for t in net.parameters())
    assert (net[1].momentum, net[5].affine, net[5].eps, net[8].track_running_stats, net[8].momentum,
            net[2].negative_slope, net[4].bias) == (None, False, 1e-4, False, 0.2, 0.05, None)
    assert_same_state(model, net)
    X, y = data(dtype)
    if not training:
        with torch.no_grad():
            assert_close(net(torch.from_numpy(X)), model.logits(X), dtype)
    else:
        train_mode_check(model, net, X, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_exact(dtype):
    model = fastwb_model(dtype, p=0.25)
    back = nn.from_torch(model.to_torch())
    assert layer_settings(back) == layer_settings(model)
    assert back.dtype == model.dtype and back.training == model.training
    sd, bsd = model.state_dict(), back.state_dict()
    assert list(sd) == list(bsd)
    for k in sd:
        np.testing.assert_array_equal(bsd[k], sd[k])
        assert bsd[k].dtype == sd[k].dtype
    net = build("flatten_untracked_cumulative", dtype).eval()
    again = nn.from_torch(net).to_torch()
    assert type(again[0]).__name__ == "Identity"         # Flatten comes back as Identity
    for (k, v), (k2, v2) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_to_torch_leaves_torch_rng_and_model_alone():
    model = fastwb_model("float32")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    net = model.to_torch()
    assert torch.equal(torch.rand(3), expected)       # nothing drawn from torch's generator
    before = model.state_dict()
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            t.add_(1)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_to_torch_rejects_other_objects():
    with pytest.raises(TypeError, match="fastwb.nn.Sequential"):
        interop.to_torch(tnn.Sequential(tnn.ReLU()))


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, pattern", [
    (tnn.Conv2d(3, 3, 3), r"layer 3 \(Conv2d\) is not supported; fastwb converts Linear, BatchNorm1d"),
    (tnn.Sequential(tnn.ReLU()), r"layer 3 \(Sequential\) is a nested container"),
    (tnn.ModuleList([tnn.ReLU()]), r"layer 3 \(ModuleList\) is a nested container"),
    (tnn.Flatten(0), r"layer 3 \(Flatten\) with start_dim=0, end_dim=-1 is not supported"),
    (tnn.Flatten(1, 2), r"layer 3 \(Flatten\) with start_dim=1, end_dim=2 is not supported"),
    (tnn.GELU(), r"layer 3 \(GELU\) is not supported"),
    (tnn.AlphaDropout(0.1), r"layer 3 \(AlphaDropout\) is not supported"),
    (type("MyReLU", (tnn.ReLU,), {})(), r"layer 3 \(MyReLU\) is not supported"),
    (tnn.LeakyReLU(-0.1), r"layer 3 \(LeakyReLU\) cannot be converted: .*>= 0"),
    (tnn.Dropout(1.0), r"layer 3 \(Dropout\) cannot be converted"),
    (tnn.BatchNorm1d(8, momentum=1.5), r"layer 3 \(BatchNorm1d\) cannot be converted"),
    (tnn.Linear(8, 8).double(), r"layer 3 \(Linear\) has weight of dtype torch.float64 but layer 0 \(Linear\) "
                                r"has torch.float32: mixed dtypes"),
    (tnn.BatchNorm1d(8).half(), r"layer 3 \(BatchNorm1d\) has weight of dtype torch.float16"),
])
def test_unsupported_layers_name_type_and_position(bad, pattern):
    net = tnn.Sequential(tnn.Linear(4, 8), tnn.ReLU(), tnn.Identity(), bad, tnn.Linear(8, 2))
    with pytest.raises(ValueError, match=pattern):
        nn.from_torch(net)


def test_mixed_buffer_dtype_is_named():
    bn = tnn.BatchNorm1d(8)
    bn.running_var = bn.running_var.double()
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm1d\) has running_var of dtype torch.float64 .*mixed"):
        nn.from_torch(tnn.Sequential(tnn.Linear(4, 8), bn))


def test_child_mode_must_match_the_module():
    net = tnn.Sequential(tnn.Linear(4, 8), tnn.BatchNorm1d(8), tnn.Dropout(0.1)).train()
    net[1].eval()
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm1d\) is in eval mode but the Sequential is in "
                                         "training mode"):
        nn.from_torch(net)
    net.eval()
    net[2].train()
    with pytest.raises(ValueError, match=r"layer 2 \(Dropout\) is in training mode"):
        nn.from_torch(net)


def test_non_sequential_is_a_type_error():
    for bad in (tnn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3)), [tnn.Linear(3, 3)]):
        with pytest.raises(TypeError, match="torch.nn.Sequential"):
            nn.from_torch(bad)

    class Residual(tnn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    with pytest.raises(TypeError, match="overrides Sequential.forward"):
        nn.from_torch(Residual(tnn.Linear(3, 3)))

    class Named(tnn.Sequential):            # a subclass that keeps Sequential's forward converts
        pass

    assert nn.from_torch(Named(tnn.Linear(3, 2))).out_features == 2
    with pytest.raises(ValueError, match="empty"):
        nn.from_torch(tnn.Sequential())


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)     # import torch now raises ImportError
    for call in (lambda: interop.from_torch(None), lambda: fastwb_model("float32").to_torch()):
        with pytest.raises(ImportError, match=r"pip install torch.*download.pytorch.org/whl/cpu"):
            call()


# -- PyTorch state dicts ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("as_numpy", [False, True])
def test_load_torch_state_dict(dtype, as_numpy):
    net = build("bn_relu", dtype).eval()
    state = net.state_dict()
    if as_numpy:
        state = {k: v.numpy() for k, v in state.items()}
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.0), nn.Linear(12, 4),
                          dtype=dtype, rng=7).eval()
    model.load_state_dict(state, layout="torch")
    assert_same_state(model, net)
    X, _ = data(dtype)
    with torch.no_grad():
        assert_close(model.logits(X), net(torch.from_numpy(X)), dtype)


def test_from_torch_state_converts_only():
    net = build("bn_relu", "float64")
    net[0].weight.requires_grad_(True)
    model = nn.from_torch(net)
    state = dict(net.state_dict(keep_vars=True))        # tensors that require grad too
    state["extra.thing"] = torch.ones(2)
    state["9.weight"] = np.ones((3, 2))                 # beyond the model's layers: left alone
    state["2.weight"] = np.ones((3, 2))                 # a ReLU's: not a Linear weight, left alone
    out = interop.from_torch_state(model, state)
    assert list(out) == list(state)
    assert out["0.weight"].shape == (6, 12) and out["4.weight"].shape == (12, 4)
    assert out["9.weight"].shape == (3, 2) and out["2.weight"].shape == (3, 2)
    for k, v in out.items():
        assert type(v) is np.ndarray and v.flags.c_contiguous, k
    assert out["1.num_batches_tracked"].dtype == np.int64 and out["1.num_batches_tracked"].shape == ()
    np.testing.assert_array_equal(out["0.weight"], net[0].weight.detach().numpy().T)
    out["1.running_mean"][...] = 99                                 # a copy, not the tensor's memory
    assert not torch.any(net[1].running_mean == 99)
    # integer counts of another width become int64; numpy scalars and lists are array-like
    small = interop.from_torch_state(model, {"1.num_batches_tracked": np.int32(5), "1.bias": [0.5] * 12})
    assert small["1.num_batches_tracked"].dtype == np.int64 and small["1.bias"].shape == (12,)


def test_torch_state_mismatches_are_reported_by_load_state_dict():
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.0), nn.Linear(12, 4),
                          dtype="float64", rng=0)
    good = build("bn_relu", "float64").state_dict()
    before = model.state_dict()
    with pytest.raises(ValueError, match="unexpected extra.thing"):
        model.load_state_dict({**good, "extra.thing": torch.ones(1)}, layout="torch")
    with pytest.raises(ValueError, match="missing 1.running_var"):
        model.load_state_dict({k: v for k, v in good.items() if k != "1.running_var"}, layout="torch")
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(12, 6\)"):   # (in, out) given: transposed
        model.load_state_dict({**good, "0.weight": good["0.weight"].T.contiguous()}, layout="torch")
    with pytest.raises(ValueError, match="dtype float32"):
        model.load_state_dict(build("bn_relu", "float32").state_dict(), layout="torch")
    named = tnn.Sequential()                # names other than positions are not this model's
    for name, m in zip(("fc", "bn", "act", "drop", "out"), build("bn_relu", "float64")):
        named.add_module(name, m)
    with pytest.raises(ValueError, match="unexpected fc.weight"):
        model.load_state_dict(named.state_dict(), layout="torch")
    with pytest.raises(ValueError, match="layout must be"):
        model.load_state_dict(good, layout="keras")
    for k, v in model.state_dict().items():             # nothing changed
        np.testing.assert_array_equal(v, before[k])
    f32 = build("bn_relu", "float32")
    model.load_state_dict(f32.state_dict(), layout="torch", convert_dtype=True)
    np.testing.assert_array_equal(model.state_dict()["4.weight"], f32[4].weight.detach().numpy().T.astype(np.float64))


@pytest.mark.parametrize("value", [object(), "abc", None, {"a": 1}, torch.zeros(2, dtype=torch.bfloat16)])
def test_bad_state_value_names_the_key(value):
    model = nn.Sequential(nn.Linear(2, 2), dtype="float32", rng=0)
    state = {"0.weight": torch.zeros(2, 2), "0.bias": value}
    with pytest.raises(TypeError, match="'0.bias'"):
        model.load_state_dict(state, layout="torch")
    with pytest.raises(TypeError, match="mapping"):
        interop.from_torch_state(model, [("0.weight", np.zeros((2, 2)))])


# -- the round trip: trained in PyTorch, fine-tuned in fastwb, back to PyTorch ------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_train_in_torch_finetune_in_fastwb_and_back(dtype):
    torch.manual_seed(0)
    r = np.random.default_rng(3)
    X = r.standard_normal((128, 10)).astype(dtype)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)
    net = tnn.Sequential(tnn.Linear(10, 32), tnn.BatchNorm1d(32), tnn.ReLU(), tnn.Dropout(0.1),
                         tnn.Linear(32, 16), tnn.LeakyReLU(0.1), tnn.Linear(16, 3)).to(tdtype(dtype))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(5):
        for s in range(0, len(X), 32):
            opt.zero_grad()
            tnn.functional.cross_entropy(net(Xt[s:s + 32]), yt[s:s + 32]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        torch_logits = net(Xt)

    model = nn.from_torch(net)
    assert_close(model.logits(X), torch_logits, dtype)
    trained = copy.deepcopy(net.state_dict())
    model.compile("adam", lr=1e-3)
    model.fit(X, y, epochs=1, batch_size=32, verbose=False)
    assert model.training is False                       # fit restores the mode it found
    assert int(model.state_dict()["1.num_batches_tracked"]) == int(trained["1.num_batches_tracked"]) + 4
    assert not np.allclose(model.state_dict()["0.weight"], trained["0.weight"].numpy().T)   # it did train

    back = model.to_torch()
    assert back.training is False and next(back.parameters()).dtype == tdtype(dtype)
    with torch.no_grad():
        assert_close(back(Xt), model.logits(X), dtype)
    back.train()                                         # and in training mode, without dropout
    back[3].p = 0.0
    model.layers[3].p = 0.0
    train_mode_check(model.train(), back, X[:32], y[:32], dtype)


def test_requires_grad_maps_to_frozen_and_back():
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    for p in list(net[0].parameters()) + [net[1].weight]:
        p.requires_grad_(False)
    model = nn.from_torch(net)
    assert model.frozen == {"0.weight", "0.bias", "1.weight"}
    back = model.to_torch()
    assert [n for n, p in back.named_parameters() if not p.requires_grad] == ["0.weight", "0.bias", "1.weight"]
