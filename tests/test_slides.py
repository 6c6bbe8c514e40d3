"""The slide API against its twin, with the slides' bugs fixed."""

import numpy as np
import pytest
from conftest import close

import fastwb
import fastwb.reference as R
from fastwb import regularization
from fastwb.reference import regularization as Rreg


def test_initialize_weights_is_he_and_seeded():
    np.random.seed(0)
    W, b = fastwb.initialize_weights(784, 256)
    np.random.seed(0)
    expected = np.random.randn(784, 256) * np.sqrt(2.0 / 784)
    np.testing.assert_array_equal(W, expected)
    assert b.shape == (256,) and not b.any()
    W1, _ = fastwb.initialize_weights(10, 5, rng=3)
    W2, _ = fastwb.initialize_weights(10, 5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(W1, W2)
    assert "He" in fastwb.initialize_weights.__doc__


@pytest.mark.parametrize("method", ["glorot", "he", "lecun"])
def test_initialize_layer_weights(method):
    W, b = fastwb.initialize_layer_weights(784, 256, method, rng=1)
    W2, _ = fastwb.initialize_layer_weights(784, 256, method, rng=1)
    np.testing.assert_array_equal(W, W2)
    std = {"glorot": np.sqrt(6 / 1040) / np.sqrt(3), "he": np.sqrt(2 / 784), "lecun": np.sqrt(1 / 784)}[method]
    assert W.std() == pytest.approx(std, rel=0.01)        # 200k samples: sampling error ~0.2%
    assert abs(W.mean()) < 5 * std / np.sqrt(W.size)
    if method == "glorot":
        assert np.abs(W).max() <= np.sqrt(6 / 1040)
    np.random.seed(4)
    a = fastwb.initialize_layer_weights(5, 3, method)[0]
    np.random.seed(4)
    slide = {"glorot": lambda: np.random.uniform(-np.sqrt(6 / 8), np.sqrt(6 / 8), (5, 3)),
             "he": lambda: np.random.randn(5, 3) * np.sqrt(2 / 5),
             "lecun": lambda: np.random.randn(5, 3) * np.sqrt(1 / 5)}[method]()
    np.testing.assert_array_equal(a, slide)


def test_unknown_method_names_raise():
    with pytest.raises(ValueError, match="unknown method 'xavier'; valid names are glorot, he, lecun"):
        fastwb.initialize_layer_weights(3, 4, "xavier")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        fastwb.add_bias_activation(np.ones((1, 3)), np.ones((3, 2)), np.zeros(2), "softplus")
    with pytest.raises(ValueError, match="unknown method 'l3'"):
        fastwb.compute_regularization(np.ones(3), method="l3")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        fastwb.advanced_bias_initialization([3, 4], ["swish"])


def test_update_parameters_matches_twin(dtype, rng):
    W, b = rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal(5).astype(dtype)
    g = (rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal(5).astype(dtype))
    W0, b0 = W.copy(), b.copy()
    got = fastwb.update_parameters(W, b, g, 0.1)
    for a, e in zip(got, R.update_parameters(W, b, g, 0.1)):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "leaky_relu", "identity"])
def test_add_bias_activation(act, dtype, rng):
    x, W, b = rng.standard_normal((4, 6)).astype(dtype), rng.standard_normal((6, 3)).astype(dtype), rng.standard_normal(3).astype(dtype)
    out, z = fastwb.add_bias_activation(x, W, b, act)
    rout, rz = R.add_bias_activation(x, W, b, act)
    close(z, rz, dtype)
    close(out, rout, dtype)
    out1, z1 = fastwb.add_bias_activation(x[0], W, b, act)
    assert out1.shape == (3,) and z1.shape == (3,)
    close(out1, out[0], dtype)


@pytest.mark.parametrize("cls", ["MomentumOptimizer", "AdamOptimizer"])
def test_layer_optimizers_100_steps(cls, dtype, rng):
    shapes = [((20, 10), (10,)), ((10, 3), (3,))]
    layers = [(rng.standard_normal(s).astype(dtype), rng.standard_normal(t).astype(dtype)) for s, t in shapes]
    mine = [getattr(fastwb, cls)() for _ in shapes]
    twin = [getattr(R, cls)() for _ in shapes]
    got, ref = list(layers), list(layers)
    for _ in range(100):
        for i, (s, t) in enumerate(shapes):
            g = (rng.standard_normal(s).astype(dtype) * 0.1, rng.standard_normal(t).astype(dtype) * 0.1)
            before = [a.copy() for a in got[i]]
            got[i] = mine[i].update(*got[i], g)
            ref[i] = twin[i].update(*ref[i], g)
            assert all(a is not b for a, b in zip(got[i], before))
    for (w, b), (rw, rb) in zip(got, ref):
        close(w, rw, dtype, ulps=256, scale=True)
        close(b, rb, dtype, ulps=256, scale=True)
    if cls == "AdamOptimizer":
        assert mine[0].t == twin[0].t == 100
        close(mine[0].m_W, twin[0].m_W, dtype, ulps=256, scale=True)
        close(mine[1].v_b, twin[1].v_b, dtype, ulps=256, scale=True)
    else:
        close(mine[0].velocity_W, twin[0].velocity_W, dtype, ulps=256, scale=True)


@pytest.mark.parametrize("cls", ["MomentumOptimizer", "AdamOptimizer"])
def test_shared_optimizer_shape_error(cls, rng):
    opt = getattr(fastwb, cls)()
    W1, b1 = rng.standard_normal((784, 256)), np.zeros(256)
    opt.update(W1, b1, (np.ones_like(W1), np.ones_like(b1)))
    W2, b2 = rng.standard_normal((256, 10)), np.zeros(10)
    with pytest.raises(ValueError, match="one optimizer per layer"):
        opt.update(W2, b2, (np.ones_like(W2), np.ones_like(b2)))
    with pytest.raises(ValueError, match="shape"):
        opt.update(W1, b1, (np.ones((3, 3)), np.ones_like(b1)))


@pytest.mark.parametrize("method", ["l1", "l2"])
def test_compute_regularization(method, dtype, rng):
    w = (rng.standard_normal((784, 256)) * 0.1).astype(dtype)
    loss, grad = fastwb.compute_regularization(w, 0.01, method)
    rloss, rgrad = R.compute_regularization(w, 0.01, method)
    np.testing.assert_array_equal(grad, rgrad)
    # fastwb sums in double; NumPy's float32 pairwise sum is good to ~1e-6 relative
    assert loss == pytest.approx(float(rloss), rel=1e-12 if dtype == np.float64 else 2e-6)
    exact = float(np.sum(np.abs(w.astype(np.float64)) if method == "l1" else w.astype(np.float64) ** 2))
    assert loss == pytest.approx((0.01 if method == "l1" else 0.005) * exact, rel=1e-12)
    l2, g2 = regularization.penalty(w, 0.5, method)
    rl2, rg2 = Rreg.penalty(w, 0.5, method)
    np.testing.assert_array_equal(g2, rg2)


def test_regularization_thread_independent_and_aliasing(rng):
    w = rng.standard_normal(100003)
    losses = []
    for t in (1, 2, 3, 4):
        with fastwb.threads(t):
            losses.append(regularization.penalty(w, 0.1, "l2")[0])
    assert len(set(losses)) == 1
    expected = regularization.penalty(w, 0.1, "l1")
    w2 = w.copy()
    loss, g = regularization.penalty(w2, 0.1, "l1", out=w2)
    assert g is w2 and loss == expected[0]
    np.testing.assert_array_equal(g, expected[1])


@pytest.mark.parametrize("p", [50, 70, 90, 0, 100])
def test_prune_weights(p, dtype, rng):
    w = (rng.standard_normal((784, 256)) * 0.1).astype(dtype)
    pw, sp, mask = fastwb.prune_weights(w, p)
    rpw, rsp, rmask = R.prune_weights(w, p)
    np.testing.assert_array_equal(mask, rmask)
    np.testing.assert_array_equal(pw, rpw)
    assert sp == rsp


@pytest.mark.parametrize("prune_steps", [10, 4, 1, 37])
def test_dynamic_pruning_matches_twin(prune_steps, rng):
    mine = fastwb.DynamicPruningOptimizer(prune_steps=prune_steps)
    twin = R.DynamicPruningOptimizer(prune_steps=prune_steps)
    W = rng.standard_normal((78, 25)) * 0.1
    Wt = W.copy()
    history = []
    for _ in range(25):
        dW = rng.standard_normal(W.shape) * 0.01
        pw, pg, mask = mine.apply_pruning(W, dW)
        rpw, rpg, rmask = twin.apply_pruning(Wt, dW)
        np.testing.assert_array_equal(mask, rmask)
        np.testing.assert_array_equal(pw, rpw)
        np.testing.assert_array_equal(pg, rpg)
        assert mine.current_sparsity == twin.current_sparsity
        W, Wt = pw - 0.01 * pg, rpw - 0.01 * rpg
        history.append(1 - mask.mean())
    assert history == sorted(history), "sparsity must never fall: pruned weights stay pruned"
    expected = min(0.9, 0.9 / prune_steps * (25 // max(1, prune_steps // 10)))
    assert history[-1] == pytest.approx(expected, abs=0.01)


def test_dynamic_pruning_shape_errors():
    opt = fastwb.DynamicPruningOptimizer()
    opt.apply_pruning(np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="one DynamicPruningOptimizer per layer"):
        opt.apply_pruning(np.ones((4, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="gradients has shape"):
        opt.apply_pruning(np.ones((3, 4)), np.ones(3))


def test_advanced_bias_initialization():
    np.random.seed(7)
    biases = fastwb.advanced_bias_initialization([784, 256, 128, 64, 10], ["relu", "sigmoid", "tanh", "linear"])
    np.random.seed(7)
    relu = np.random.randn(256) * np.sqrt(2.0 / 784)
    limit = np.sqrt(6.0 / (64 + 128))
    tanh = np.random.uniform(-limit, limit, 64)
    np.testing.assert_array_equal(biases[0], relu)
    np.testing.assert_array_equal(biases[1], np.full(128, 0.1))
    np.testing.assert_array_equal(biases[2], tanh)
    np.testing.assert_array_equal(biases[3], np.zeros(10))
    with pytest.raises(ValueError, match="3 layers"):
        fastwb.advanced_bias_initialization([3, 4, 5, 6], ["relu"])


def test_xavier_zero_and_random_initialization():
    np.random.seed(2)
    x = fastwb.xavier_init((2, 3))
    np.random.seed(2)
    np.testing.assert_array_equal(x, np.random.uniform(-np.sqrt(6 / 5), np.sqrt(6 / 5), (2, 3)))
    assert not fastwb.zero_initialization((4, 5)).any()
    r = fastwb.random_initialization((400, 500), rng=0)
    assert r.min() >= -0.1 and r.max() < 0.1 and r.std() == pytest.approx(0.2 / np.sqrt(12), rel=0.01)


def test_lecture_leaky_relu():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(fastwb.leaky_relu(x), [-0.02, 0.0, 3.0])
