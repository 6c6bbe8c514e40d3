"""fit(..., adversarial=...): FGSM adversarial training inside the step
(Goodfellow et al. 2015), against the same step made by hand."""

import numpy as np
import pytest

from fastwb import adversarial, datasets, nn


def _model(bn=False, dtype="float64"):
    layers = [nn.Linear(10, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, 3)]
    return nn.Sequential(*layers, dtype=dtype, rng=0)


def _data(n=32, dtype=np.float64):
    r = np.random.default_rng(0)
    return r.random((n, 10)).astype(dtype), r.integers(0, 3, n)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 1.0])
@pytest.mark.parametrize("bn", [False, True])
def test_step_is_the_mix_of_clean_and_fgsm_losses(ratio, bn):
    X, y = _data()
    got, ref = _model(bn), _model(bn)
    for m in (got, ref):
        m.compile("sgd", lr=0.1)
    h = got.fit(X, y, epochs=1, batch_size=32, shuffle=False, verbose=False,
                adversarial=dict(eps=0.05, ratio=ratio))
    # by hand: the clean pass (training mode), its input gradient, the FGSM example, the adversarial pass
    Xc, yc = ref._check_batch(X, y)
    ws = ref._workspace(32)
    loss_c = ref._gradients(Xc, yc, ws, input_gradient=True)
    g_clean = ref.grads.copy()
    x_adv = np.clip(Xc + 0.05 * np.sign(ws.grad_in[0]), 0, 1)
    loss_a = ref._gradients(x_adv, yc, ws)
    grads = (1 - ratio) * g_clean + ratio * ref.grads
    ref.optimizer.step([grads])
    np.testing.assert_allclose(got.params, ref.params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.buffers, ref.buffers, rtol=1e-12)
    assert h["loss"][0] == pytest.approx((1 - ratio) * loss_c + ratio * loss_a, rel=1e-12)


def test_options_are_checked():
    X, y = _data()
    m = _model()
    for bad, err, msg in ((dict(attack="pgd"), ValueError, "must be 'fgsm'"),
                          (dict(eps=-0.1), ValueError, "eps must be >= 0"),
                          (dict(ratio=1.5), ValueError, "ratio"),
                          (dict(clip=(1, 0)), ValueError, "lo 1.0 is above hi 0.0"),
                          (dict(clip=3), TypeError, "pair"),
                          (dict(steps=3), ValueError, "unknown option steps"),
                          ("fgsm", TypeError, "must be a dict")):
        with pytest.raises(err, match=msg):
            m.fit(X, y, epochs=1, verbose=False, adversarial=bad)
    m.freeze("0.*")
    with pytest.raises(ValueError, match="cache_frozen"):
        m.fit(X, y, epochs=1, verbose=False, adversarial={}, cache_frozen=True)


def test_adversarial_training_resists_fgsm():
    """On scikit-learn's 8x8 digits (pixels scaled to [0, 1]): FGSM at eps 0.1 breaks the
    standard model far more than the adversarially trained one, at similar clean accuracy."""
    X, y, Xt, yt = datasets.load("digits")
    lo, hi = X.min(), X.max()
    X, Xt = (X - lo) / (hi - lo), (Xt - lo) / (hi - lo)
    results = {}
    for name, adv in (("standard", None), ("adversarial", dict(eps=0.1, ratio=0.5))):
        m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10), rng=0)
        m.compile("adam", lr=1e-3)
        m.fit(X, y, epochs=30, batch_size=32, verbose=False, rng=0, adversarial=adv)
        clean = float(np.mean(m.predict(Xt) == yt))
        attacked = float(np.mean(m.predict(adversarial.fgsm(m, Xt, yt, eps=0.1)) == yt))
        results[name] = (clean, attacked)
    print(results)
    assert results["adversarial"][0] > 0.9 and results["standard"][0] > 0.9
    assert results["adversarial"][1] > results["standard"][1] + 0.2
