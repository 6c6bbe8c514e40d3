"""One MLP shared by many threads, and its bounded workspace caches.

* Inference (logits, predict, predict_proba, evaluate) from many threads at
  once gives exactly the single-threaded answers.  Before the fix every call of
  one batch size shared one cached workspace: four threads got 43 wrong results
  in 480 calls.
* Training one model from two threads at once (train_step, fit, gradients,
  input_gradient) raises RuntimeError.
* Workspaces stay bounded: before the fix, predicting on 1,000 input lengths
  kept 1,000 workspaces.

Every thread is joined with a deadline, so a deadlock fails instead of hanging.
"""

import copy
import pickle
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import close
from hypothesis import given
from hypothesis import strategies as st

import fastwb
from fastwb.nn import plan as plan_module

DEADLINE = 60.0


def _run_threads(target, n_threads):
    """target(i) in n_threads threads started together; re-raise the first failure."""
    barrier = threading.Barrier(n_threads)
    errors = []

    def run(i):
        try:
            barrier.wait(DEADLINE)
            target(i)
        except BaseException as e:      # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), f"threads still running after {DEADLINE:.0f} s"
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def shared():
    rng = np.random.default_rng(8)
    model = fastwb.MLP([64, 256, 10], activation="tanh", rng=0)
    X = rng.standard_normal((600, 64)).astype(np.float32)
    y = rng.integers(0, 10, 600)
    return model, X, y


def test_inference_from_many_threads_matches_one_thread(shared):
    model, X, y = shared
    # every thread uses the same lengths and batch sizes, so they want the same workspaces
    cases = [(200, 1024), (200, 64), (600, 256), (37, 1024)]
    expected = {(n, b): (model.logits(X[:n], b), model.predict(X[:n], b), model.predict_proba(X[:n], b),
                         model.evaluate(X[:n], y[:n], b))
                for n, b in cases}
    wrong = []

    def work(i):
        for r in range(10):
            n, b = cases[(i + r) % len(cases)]
            logits, labels, proba, scores = expected[(n, b)]
            which = (i + r) % 4
            if which == 0:
                ok = np.array_equal(model.logits(X[:n], b), logits)
            elif which == 1:
                ok = np.array_equal(model.predict(X[:n], b), labels)
            elif which == 2:
                ok = np.array_equal(model.predict_proba(X[:n], b), proba)
            else:
                ok = model.evaluate(X[:n], y[:n], b) == scores
            if not ok:
                wrong.append((i, r, which, n, b))

    _run_threads(work, 6)
    assert wrong == [], f"{len(wrong)} wrong results of 60 concurrent inference calls"
    cached = model._pool.workspaces()
    assert len(cached) <= plan_module.INFER_SIZES * plan_module.INFER_IDLE


def _blocked_fit(model, X, y):
    """A thread running model.fit, stopped inside it (in its prune schedule) until released."""
    inside, release = threading.Event(), threading.Event()

    def schedule(step):
        inside.set()
        assert release.wait(DEADLINE)
        return 0.0

    thread = threading.Thread(target=model.fit, args=(X, y),
                              kwargs=dict(epochs=1, batch_size=len(X), verbose=False, prune_schedule=schedule),
                              daemon=True)
    thread.start()
    assert inside.wait(DEADLINE)
    return thread, release


def test_training_from_two_threads_is_an_error(rng):
    X = rng.standard_normal((40, 6)).astype(np.float64)
    y = rng.integers(0, 3, 40)
    model = fastwb.MLP([6, 8, 3], dtype=np.float64, rng=0)
    expected = model.logits(X)
    thread, release = _blocked_fit(model, X, y)
    try:
        for call in (lambda: model.train_step(X, y), lambda: model.gradients(X, y),
                     lambda: model.input_gradient(X, y),
                     lambda: model.fit(X, y, epochs=1, verbose=False)):
            with pytest.raises(RuntimeError, match="already being trained.*two threads"):
                call()
        # inference still works (the blocked fit has not changed the parameters yet)
        np.testing.assert_array_equal(model.logits(X), expected)
    finally:
        release.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    model.train_step(X, y)                        # the guard was released
    assert np.isfinite(model.gradients(X, y)[0])


def test_training_reentered_from_a_callback_is_an_error(rng):
    X = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    model = fastwb.MLP([4, 5, 2], rng=0)
    seen = []

    def schedule(step):
        with pytest.raises(RuntimeError, match="MLP.train_step"):
            model.train_step(X, y)
        seen.append(step)
        return 0.0

    model.fit(X, y, epochs=1, batch_size=16, verbose=False, prune_schedule=schedule)
    assert seen == [0]


def test_concurrent_training_calls_never_run_together(rng):
    """Many threads call train_step at once: each call either trains or raises RuntimeError."""
    X = rng.standard_normal((256, 32)).astype(np.float32)
    y = rng.integers(0, 4, 256)
    model = fastwb.MLP([32, 64, 4], rng=0)
    outcomes = []

    def work(i):
        for _ in range(20):
            try:
                outcomes.append(np.isfinite(model.train_step(X, y)))
            except RuntimeError as e:
                assert "already being trained" in str(e)
                outcomes.append("refused")

    _run_threads(work, 4)
    assert len(outcomes) == 80 and True in outcomes and False not in outcomes


def test_inference_cache_is_bounded_over_many_lengths(rng):
    model = fastwb.MLP([8, 64, 3], rng=0)
    X = rng.standard_normal((1100, 8)).astype(np.float32)
    model.predict(X[:1])
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(1, 1001):
            model.predict(X[:n], batch_size=512)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cached = model._pool.workspaces()
    assert len({ws.batch for ws in cached}) <= plan_module.INFER_SIZES
    assert 512 in {ws.batch for ws in cached}          # the fixed chunk size stays cached
    # the old cache kept one workspace per length: 1000 of them, about 210 MB here
    assert after - before < 2 * 2**20, f"inference kept {(after - before) / 2**20:.1f} MiB"


def test_training_cache_keeps_a_few_batch_sizes(rng):
    model = fastwb.MLP([8, 16, 3], rng=0)
    X = rng.standard_normal((100, 8)).astype(np.float32)
    y = rng.integers(0, 3, 100)
    for n in range(1, 40):
        model.train_step(X[:n], y[:n])
    assert len(model._workspaces) <= plan_module.TRAIN_SIZES
    model.fit(X, y, epochs=2, batch_size=32, verbose=False)      # batches of 32 and a last one of 4
    assert {32, 4} <= set(model._workspaces)


_HYP_MODEL = fastwb.MLP([5, 7, 3], activation="sigmoid", dtype=np.float64, rng=1)
_HYP_X = np.random.default_rng(2).standard_normal((300, 5))
_HYP_WHOLE = _HYP_MODEL.logits(_HYP_X, batch_size=len(_HYP_X))


@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=12),
       batch_size=st.integers(1, 400))
def test_chunked_inference_matches_one_pass(lengths, batch_size):
    """Any lengths and chunk size: each row's logits are those of one pass over all rows
    (to rounding: BLAS may take another path for another shape), and the cache stays
    within its bound."""
    model, X = _HYP_MODEL, _HYP_X
    for n in lengths:
        close(model.logits(X[:n], batch_size), _HYP_WHOLE[:n], np.float64, scale=True)
    cached = model._pool.workspaces()
    assert len({ws.batch for ws in cached}) <= plan_module.INFER_SIZES
    assert len(cached) <= plan_module.INFER_SIZES * plan_module.INFER_IDLE


def test_copies_and_pickles_have_their_own_workspaces(shared):
    model, X, y = shared
    expected = model.logits(X)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other._pool is not model._pool and other._training_lock is not model._training_lock
        np.testing.assert_array_equal(other.logits(X), expected)
        other.train_step(X[:32], y[:32])
    np.testing.assert_array_equal(model.logits(X), expected)
