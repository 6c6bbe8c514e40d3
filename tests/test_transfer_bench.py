"""bench/transfer.py, the transfer-learning benchmark, measures what it says: both
sides of each comparison compute the same training (same losses from the same
weights, the same head after the same batches, the base left alone), and its
ratios, spreads and verdicts follow from the times it records."""

import importlib.util
import os

import numpy as np
import pytest

from fastwb import benchmark as B

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "transfer.py")
_spec = importlib.util.spec_from_file_location("fastwb_bench_transfer", _PATH)
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)

HEAD = {"4.weight", "4.bias"}


@pytest.fixture(scope="module", autouse=True)
def worker():
    """bench/transfer.py's PyTorch worker (one thread), started with the module's first
    test: it imports PyTorch while this process does."""
    if B._importable("torch"):
        yield None
        return
    w = T.torch_worker(1, ready=False)
    try:
        yield w
    finally:
        w.proc.kill()                   # no need to wait for PyTorch's interpreter to wind down
        w.close()


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed")


def _torch_state(net):
    """The net's parameters in fastwb's layout (Linear weights (in, out))."""
    return {k: (v.detach().numpy().T if v.ndim == 2 else v.detach().numpy()).copy() for k, v in net.state_dict().items()}


def test_frozen_steps_are_the_same_computation_on_both_sides():
    """(a): from the same weights, fastwb's and PyTorch's frozen steps give the same
    losses and move the head alike; neither moves the base; PyTorch's Adam holds
    only the head's parameters, and the unfrozen net trains everything."""
    _torch()
    X, y = T.step_data()
    model = T.fastwb_model(T.STEP_SIZES)
    net = T.torch_net(T.fastwb_model(T.STEP_SIZES))
    before = model.state_dict()
    assert _torch_state(net).keys() == before.keys()
    for k, v in _torch_state(net).items():
        np.testing.assert_array_equal(v, before[k])
    step = T.torch_step(net, X, y)
    ours = [float(model.train_step(X, y)) for _ in range(3)]
    theirs = [step().item() for _ in range(3)]
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)
    assert ours[2] < ours[0]                                  # the head did learn
    got, want = model.state_dict(), _torch_state(net)
    for k in before:
        if k in HEAD:
            assert not np.array_equal(got[k], before[k]), k
            np.testing.assert_allclose(want[k], got[k], rtol=1e-4, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], before[k])
            np.testing.assert_array_equal(want[k], before[k])
    assert sum(p.numel() for g in T.torch_adam(net).param_groups for p in g["params"]) == 128 * 10 + 10
    full = T.torch_net(T.fastwb_model(T.STEP_SIZES, frozen=False))
    assert all(p.requires_grad for p in full.parameters())
    assert T.fastwb_model(T.STEP_SIZES, frozen=False).frozen == set()


def test_finetunes_train_the_same_head():
    """(b): over the same batches (no shuffling), fastwb's fit with and without
    cache_frozen and PyTorch's loop with and without the base's output computed
    once end with the same head, the base untouched."""
    _torch()
    X, y = T.finetune_data()
    assert X.shape == (500, 784) and np.bincount(y).tolist() == [100] * 5
    heads = []
    for cache in (True, False):
        m = T.fastwb_model(T.FT_SIZES)
        m.fit(X, y, epochs=2, batch_size=T.FT_BATCH, shuffle=False, verbose=False, cache_frozen=cache)
        heads.append(m.state_dict())
    for once in (False, True):
        net = T.torch_net(T.fastwb_model(T.FT_SIZES))
        T.torch_finetune(net, X, y, epochs=2, shuffle=False, features_once=once)()
        heads.append(_torch_state(net))
    start = T.fastwb_model(T.FT_SIZES).state_dict()
    for state in heads:
        for k in start:
            if k in HEAD:
                np.testing.assert_allclose(state[k], heads[1][k], rtol=1e-4, atol=2e-6, err_msg=k)
                assert not np.array_equal(state[k], start[k])
            else:
                np.testing.assert_array_equal(state[k], start[k])


def test_torch_worker_answers_its_commands(worker):
    """PyTorch's process of its own: ready, the same first losses as fastwb's, and work done."""
    if worker is None:
        pytest.skip("PyTorch is not installed")
    worker.info = worker.read()
    assert worker.info["ready"] and worker.info["threads"] == 1
    np.testing.assert_allclose(worker.ask("losses 2"), T.fastwb_first_losses(2), rtol=1e-5)
    assert worker.ask("run PyTorch frozen 2") == {"done": True}
    assert worker.ask("run PyTorch features once 1") == {"done": True}


def _got(frozen=1.0, unfrozen=(2.1, 2.3, 1.9), torch_frozen=1.5):
    got = {"fastwb frozen": [frozen] * 3, "fastwb unfrozen": list(unfrozen),
           "fastwb cache_frozen": [0.04] * 2, "fastwb": [0.12, 0.14]}
    if torch_frozen is not None:
        got.update({"PyTorch frozen": [torch_frozen, torch_frozen * 2, torch_frozen],
                    "PyTorch unfrozen": [3.0] * 3, "PyTorch": [0.3, 0.32], "PyTorch features once": [0.2] * 2})
    return got


def test_ratios_spreads_and_verdicts():
    report = {"threads": 2, "rounds": 2, "repeats": 3, "ft_repeats": 2, "cpu": "test CPU", "torch": "2.x",
              "skipped": None, "seconds": {}, "ratios": {}, "load": (0.5, 1.5),
              "losses": {"fastwb": [2.3, 2.2], "PyTorch": [2.3, 2.2000001]}}
    T.record(report, _got())
    T.record(report, _got(frozen=0.5, torch_frozen=1.25))
    r = report["ratios"]
    # within a process: the paired median; across processes: the ratio of the medians
    assert r["(a) fastwb unfrozen / fastwb frozen"] == pytest.approx([2.1, 4.2])
    assert r["(a) PyTorch frozen / fastwb frozen"] == pytest.approx([1.5, 2.5])
    assert r["(b) PyTorch / fastwb cache_frozen"] == pytest.approx([0.31 / 0.04] * 2)
    assert report["seconds"]["fastwb frozen"] == [1.0, 0.5]
    v = {label: rest for label, *rest in T.verdicts(report)}
    assert v["(a) fastwb unfrozen / fastwb frozen"] == pytest.approx([3.15, 2.1, 4.2, 2.0, True])
    assert v["(a) PyTorch frozen / fastwb frozen"] == pytest.approx([2.0, 1.5, 2.5, 2.0, True])
    assert v["(b) fastwb / fastwb cache_frozen"][3:] == [None, None]
    text = "\n".join(T.lines(report))
    assert "test CPU" in text and "load average 0.50 before, 1.50 after" in text and "PyTorch 2.x" in text
    assert "2 of 2 targets met" in text and "MISSED" not in text and "max |diff| 1.0e-07" in text
    # one round under the target: missed, and said so
    report["ratios"]["(a) PyTorch frozen / fastwb frozen"] = [1.5, 1.9, 2.6]
    text = "\n".join(T.lines(report))
    assert "1 of 2 targets met; missed: (a) PyTorch frozen / fastwb frozen" in text
    assert ">= 2x MISSED" in text


def test_without_torch_only_fastwb_is_judged():
    report = {"threads": 1, "rounds": 1, "repeats": 3, "ft_repeats": 2, "cpu": "c", "torch": None,
              "skipped": "PyTorch is not installed (pip install torch)", "seconds": {}, "ratios": {},
              "losses": {"fastwb": [2.3, 2.2]}}
    T.record(report, _got(torch_frozen=None))
    assert set(report["ratios"]) == {"(a) fastwb unfrozen / fastwb frozen", "(b) fastwb / fastwb cache_frozen"}
    text = "\n".join(T.lines(report))
    assert "PyTorch skipped: PyTorch is not installed" in text and "1 of 1 targets met" in text
    assert "first frozen steps" not in text and "load average unknown before" in text


def test_measure_times_the_fastwb_side(monkeypatch):
    monkeypatch.setattr(T, "FT_EPOCHS", 1)
    report = T.measure(repeats=2, ft_repeats=1, rounds=2, threads=1, torch=False)
    assert set(report["seconds"]) == {"fastwb frozen", "fastwb unfrozen", "fastwb cache_frozen", "fastwb"}
    assert all(len(v) == 2 and min(v) > 0 for v in report["seconds"].values())
    assert len(report["ratios"]["(a) fastwb unfrozen / fastwb frozen"]) == 2
    assert report["skipped"] == "not asked for (--no-torch)" and report["cpu"] == B.cpu_name()
    assert len(report["losses"]["fastwb"]) == 2
