"""Finite-difference checks of the analytic gradients, in float64.

Central differences with step h have truncation error O(h^2) and rounding
error O(eps/h); h = 1e-6 balances them at about 1e-10 relative, so 1e-6 is a
safe tolerance that still catches any wrong formula (those are off by O(1)).
"""

import numpy as np
import pytest

import fastwb

ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
H = 1e-6


def numeric_grad(f, a):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + H
        fp = f()
        a[i] = old - H
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * H)
    return g


@pytest.mark.parametrize("act", ACTS)
def test_linear_backward_finite_differences(act, rng):
    n, k, m = 5, 4, 3
    x = rng.standard_normal((n, k))
    W = rng.standard_normal((k, m))
    b = rng.standard_normal(m)
    # keep pre-activations away from the ReLU kink, where the derivative jumps
    z = x @ W + b
    b += np.where(np.abs(z) < 1e-3, 1e-2, 0.0).max(axis=0)
    C = rng.standard_normal((n, m))  # loss = sum(C * y)

    def loss():
        return float(np.sum(C * fastwb.linear(x, W, b, act, alpha=0.1)))

    y = fastwb.linear(x, W, b, act, alpha=0.1)
    gx, gW, gb = fastwb.linear_backward(C, y, x, W, act, alpha=0.1)
    for analytic, param in ((gx, x), (gW, W), (gb, b)):
        np.testing.assert_allclose(analytic, numeric_grad(loss, param), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_softmax_cross_entropy_finite_differences(scale, rng):
    z = rng.standard_normal((6, 5)) * scale
    labels = rng.integers(0, 5, 6)
    loss, grad = fastwb.softmax_cross_entropy(z, labels)
    numeric = numeric_grad(lambda: fastwb.softmax_cross_entropy(z, labels)[0], z)
    # the difference quotient's rounding error is about eps * |loss| / H
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9 * max(1.0, abs(loss)))


def test_softmax_backward_finite_differences(rng):
    z = rng.standard_normal((4, 6))
    C = rng.standard_normal((4, 6))
    dz = fastwb.softmax_backward(C, fastwb.softmax(z))
    numeric = numeric_grad(lambda: float(np.sum(C * fastwb.softmax(z))), z)
    np.testing.assert_allclose(dz, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activation_backward_finite_differences(name, rng):
    x = rng.standard_normal(20)
    x[np.abs(x) < 1e-3] = 0.5
    C = rng.standard_normal(20)
    f = getattr(fastwb, name)
    dz = getattr(fastwb, name + "_backward")(C, f(x))
    numeric = numeric_grad(lambda: float(np.sum(C * f(x))), x)
    np.testing.assert_allclose(dz, numeric, rtol=1e-6, atol=1e-9)
