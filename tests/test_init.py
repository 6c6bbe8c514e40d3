"""fastwb.init: reproducible, with the moments of their formulas and PyTorch's gains."""

import math

import numpy as np
import pytest

import fastwb
from fastwb import init

SHAPE = (600, 400)   # 240k draws: sample std within ~0.3% of the truth


@pytest.mark.parametrize("name,kw,std,bound", [
    ("uniform", {}, 0.2 / math.sqrt(12), 0.1),
    ("normal", {"std": 0.5}, 0.5, None),
    ("xavier_uniform", {}, math.sqrt(2 / 1000), math.sqrt(6 / 1000)),
    ("xavier_normal", {"gain": 2.0}, 2 * math.sqrt(2 / 1000), None),
    ("kaiming_uniform", {"nonlinearity": "relu"}, math.sqrt(2 / 600), math.sqrt(6 / 600)),
    ("kaiming_normal", {"nonlinearity": "relu"}, math.sqrt(2 / 600), None),
    ("kaiming_normal", {"nonlinearity": "relu", "mode": "fan_out"}, math.sqrt(2 / 400), None),
    ("kaiming_normal", {"a": 0.2}, math.sqrt(2 / 1.04 / 600), None),
    ("lecun_uniform", {}, math.sqrt(1 / 600), math.sqrt(3 / 600)),
    ("lecun_normal", {}, math.sqrt(1 / 600), None),
])
def test_moments_and_reproducibility(name, kw, std, bound):
    fn = getattr(init, name)
    w = fn(SHAPE, rng=42, **kw)
    np.testing.assert_array_equal(w, fn(SHAPE, rng=np.random.default_rng(42), **kw))
    assert not np.array_equal(w, fn(SHAPE, rng=43, **kw))
    assert w.shape == SHAPE and w.dtype == np.float64
    assert w.std() == pytest.approx(std, rel=0.01)
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
    if bound is not None:
        assert np.abs(w).max() <= bound
    assert fn(SHAPE, rng=1, dtype=np.float32, **kw).dtype == np.float32


def test_gains_match_torch_table():
    assert init.calculate_gain("linear") == 1 and init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("selu") == 0.75
    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    for nl, p in [("linear", None), ("tanh", None), ("relu", None), ("leaky_relu", 0.3), ("selu", None)]:
        assert init.calculate_gain(nl, p) == pytest.approx(torch.nn.init.calculate_gain(nl, p))


def test_fans_and_layout():
    assert init.fans((784, 256)) == (784, 256)
    assert init.fans((3, 8, 5, 5)) == (75, 200)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fans((5,))


def test_bias_for_activation():
    assert (init.bias_for_activation(10, 4, "sigmoid") == 0.1).all()
    assert not init.bias_for_activation(10, 4, "linear").any()
    b = init.bias_for_activation(400, 50000, "relu", rng=0)
    assert b.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        init.bias_for_activation(3, 4, "gelu")


@pytest.mark.parametrize("call,exc,match", [
    (lambda: init.calculate_gain("swish"), ValueError, "unknown nonlinearity"),
    (lambda: init.calculate_gain("leaky_relu", "x"), ValueError, "not a valid number"),
    (lambda: init.kaiming_normal((3, 4), mode="fan"), ValueError, "mode"),
    (lambda: init.uniform((3,), 1, 0), ValueError, "low must be <= high"),
    (lambda: init.normal((3,), -1), ValueError, "std"),
    (lambda: init.zeros((-1, 2)), ValueError, r"shape\[0\] must be >= 0"),
    (lambda: init.xavier_uniform((3, 4), rng="seed"), TypeError, "rng must be"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("call,exc,match", [
    (lambda: init.zeros((2.5, 3)), TypeError, r"shape\[0\]"),
    (lambda: init.uniform((3, True)), TypeError, r"shape\[1\]"),
    (lambda: init.normal((3, -1)), ValueError, r"shape\[1\] must be >= 0"),
    (lambda: init.xavier_uniform("ab"), TypeError, r"shape\[0\]"),
    (lambda: fastwb.initialize_weights(-3, 4), ValueError, "input_size must be >= 1"),
    (lambda: fastwb.initialize_weights(3.5, 4), TypeError, "input_size"),
    (lambda: fastwb.initialize_layer_weights(0, 4), ValueError, "input_size"),
    (lambda: fastwb.initialize_layer_weights(2, -4), ValueError, "output_size"),
])
def test_size_arguments_are_validated(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
