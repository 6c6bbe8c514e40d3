"""Sequential.output_gradient: the vector-Jacobian product of the network's output,
against central finite differences in float64, for every layer kind of the engine's
test models, in eval and training mode."""

import numpy as np
import pytest

from test_engine_plan import MODELS, _build


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_gradient_matches_finite_differences(name, training):
    model = _build(name, "float64")
    r = np.random.default_rng(1)
    n = 4
    X = r.standard_normal((n, model.in_features)) * 1.5
    G = r.standard_normal((n, model.out_features))
    model.train(training)
    before = model.state_dict()
    got = model.output_gradient(X, G, training=training)
    for k, v in model.state_dict().items():         # nothing in the model changed
        np.testing.assert_array_equal(v, before[k], err_msg=k)

    def f(Z):
        ws = model._workspace(n)
        with model._buffers_kept(training):
            out = model._forward(np.ascontiguousarray(Z), ws, training)
        return float((out * G).sum())

    h = 1e-6
    fd = np.zeros_like(X)
    for i in range(n):
        for j in range(X.shape[1]):
            Xp, Xm = X.copy(), X.copy()
            Xp[i, j] += h
            Xm[i, j] -= h
            fd[i, j] = (f(Xp) - f(Xm)) / (2 * h)
    # ReLU kinks and batch statistics make a few differences one-sided: a loose but meaningful bound
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_output_gradient_checks_its_arguments():
    model = _build("two_bn", "float32")
    X = np.zeros((3, 7), np.float32)
    with pytest.raises(ValueError, match=r"G must have shape \(3, 5\)"):
        model.output_gradient(X, np.zeros((3, 4)))
    with pytest.raises(TypeError, match="numeric"):
        model.output_gradient(X, np.array([["a"] * 5] * 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        model.output_gradient(X[:1], np.zeros((1, 5)), training=True)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ["two_bn", "bn_tanh_dropout_last", "act_dropout_stage"])
def test_callable_g_uses_one_forward_pass(name, training):
    """G as a function of the output: the same gradient as G given, from the same output."""
    model = _build(name, "float64")
    r = np.random.default_rng(2)
    X = r.standard_normal((5, model.in_features))
    before = model.state_dict()
    seen = []

    def G(out):
        seen.append(out)
        return np.eye(model.out_features)[np.argmax(out, axis=1)]

    grad, out = model.output_gradient(X, G, training=training)
    np.testing.assert_array_equal(out, seen[0])
    want = model.output_gradient(X, G(out), training=training)
    np.testing.assert_array_equal(grad, want)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    if not training:
        np.testing.assert_array_equal(out, model.logits(X))
