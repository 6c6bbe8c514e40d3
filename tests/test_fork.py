"""A child forked from a process that ran multi-threaded kernels computes correctly.

libgomp's worker threads do not survive fork(): before the fix, the first
multi-threaded kernel in such a child waited forever.  A forked child now runs
every kernel on one thread and says so once with a RuntimeWarning.  Every child
here runs under a deadline (killed when it passes), so a regression fails the
test instead of hanging the suite; results are compared bit for bit with the
parent's through a SHA-256 of the result bytes.
"""

import hashlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import fastwb
from fastwb import _threads

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

DEADLINE = 60.0          # seconds a child may take; a hung child is killed at this point
N = 8_000_000            # float32 elements: plan_threads gives 2 threads (GRAIN_MEMORY is 1M)


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    return h.hexdigest()


def _child_report(work):
    """Run work() in the child; (digest of its arrays, messages of its RuntimeWarnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arrays = work()
    return _digest(*arrays), [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def _fork(fork_fn):
    with warnings.catch_warnings():
        # Python 3.12+ warns (DeprecationWarning) about fork() in a multi-threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        return fork_fn()


def run_os_fork(work):
    """work() in a child made with os.fork; its report, or a test failure when it hangs or fails."""
    read_fd, write_fd = os.pipe()
    pid = _fork(os.fork)
    if pid == 0:                                  # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            with os.fdopen(write_fd, "wb") as out:
                pickle.dump(_child_report(work), out)
            code = 0
        except BaseException:                     # noqa: BLE001 (report anything, then exit)
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + DEADLINE
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        pytest.fail(f"the os.fork child did not finish within {DEADLINE:.0f} s (hung in a kernel?)")
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the os.fork child failed (see its stderr)"
    return pickle.loads(data)


def _mp_target(work, conn):
    conn.send(_child_report(work))
    conn.close()


def run_mp_fork(work):
    """work() in a multiprocessing 'fork' child; its report, or a test failure when it hangs or fails."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mp_target, args=(work, send))
    _fork(proc.start)
    send.close()
    try:
        if not recv.poll(DEADLINE):
            pytest.fail(f"the multiprocessing child did not answer within {DEADLINE:.0f} s (hung in a kernel?)")
        report = recv.recv()
    except EOFError:
        pytest.fail(f"the multiprocessing child died without answering (exit code {proc.exitcode})")
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()
    assert proc.exitcode == 0
    return report


RUNNERS = {"os.fork": run_os_fork, "multiprocessing": run_mp_fork}


@pytest.fixture(scope="module")
def big():
    """An 8M-element float32 array and its relu and sigmoid, computed on 2 threads in this process,
    which leaves libgomp's worker threads running (the state that used to hang children)."""
    x = np.random.default_rng(5).standard_normal(N).astype(np.float32)
    with fastwb.threads(2):
        assert fastwb.plan_threads(x.size) == 2
        relu, sig = fastwb.relu(x), fastwb.sigmoid(x)
    return x, relu, sig


def _one_serial_warning(messages):
    assert len(messages) == 1, messages
    assert "one thread" in messages[0] and "fork" in messages[0]


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_kernels_in_a_forked_child(big, runner):
    x, relu, sig = big

    def work():
        with fastwb.threads(2):
            return fastwb.relu(x), fastwb.sigmoid(x), fastwb.relu(x)

    digest, messages = RUNNERS[runner](work)
    assert digest == _digest(relu, sig, relu)
    _one_serial_warning(messages)


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_thread_controls_in_a_forked_child(big, runner):
    x, relu, _ = big

    def work():
        fastwb.set_num_threads(3)                       # kept, but the child stays serial
        counts = [fastwb.get_num_threads(), fastwb.plan_threads(x.size)]
        with fastwb.threads(2):
            counts.append(fastwb.get_num_threads())
            y = fastwb.relu(x)
        counts.append(_threads.max_threads())           # threads() restored the runtime's setting
        return y, np.array(counts)

    digest, messages = RUNNERS[runner](work)
    assert digest == _digest(relu, np.array([1, 1, 1, 3]))
    _one_serial_warning(messages)


def test_small_work_in_a_forked_child_does_not_warn(big):
    x, relu, _ = big
    digest, messages = run_os_fork(lambda: (fastwb.relu(x[:1000]),))
    assert digest == _digest(relu[:1000])
    assert messages == []


def test_grandchild(big):
    x, relu, _ = big

    def grandchild_work():
        with fastwb.threads(2):
            return (fastwb.relu(x),)

    def work():
        digest, messages = run_os_fork(grandchild_work)
        return np.frombuffer(bytes.fromhex(digest), np.uint8), np.array([len(messages)])

    digest, _ = run_os_fork(work)
    assert digest == _digest(np.frombuffer(bytes.fromhex(_digest(relu)), np.uint8), np.array([1]))


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_fork_while_another_thread_is_inside_a_kernel(big, runner):
    """A parent thread runs 2-thread kernels without pause while the main thread forks."""
    x, relu, sig = big
    stop = threading.Event()
    calls = []

    def busy():
        with fastwb.threads(2):
            while not stop.is_set():
                fastwb.sigmoid(x)
                calls.append(1)

    def work():
        with fastwb.threads(2):
            return fastwb.relu(x), fastwb.sigmoid(x)

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    try:
        while not calls:                         # the worker's pool of OpenMP threads exists
            time.sleep(0.001)
        for _ in range(3):
            digest, messages = RUNNERS[runner](work)
            assert digest == _digest(relu, sig)
            _one_serial_warning(messages)
    finally:
        stop.set()
        worker.join(DEADLINE)
    assert not worker.is_alive()


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_mlp_in_a_forked_child(runner, rng):
    """The parent's cached workspaces were planned for 2 threads; the child must not use them."""
    X = rng.standard_normal((1024, 32)).astype(np.float32)
    y = rng.integers(0, 10, 1024)
    model = fastwb.MLP([32, 512, 10], activation="sigmoid", rng=0)
    with fastwb.threads(2):
        assert fastwb.plan_threads(1024 * 512, fastwb._runtime.GRAIN_COMPUTE) == 2
        model.fit(X, y, epochs=1, batch_size=1024, verbose=False, shuffle=False)
        logits, proba = model.logits(X), model.predict_proba(X)
        loss, acc = model.evaluate(X, y)

    def work():
        with fastwb.threads(2):
            out = [model.logits(X), model.predict_proba(X), np.array(model.evaluate(X, y))]
            model.fit(X, y, epochs=1, batch_size=1024, verbose=False, shuffle=False)
            return out + [model.params]

    digest, messages = RUNNERS[runner](work)
    with fastwb.threads(2):            # the same step here, on 2 threads, from the same state
        model.fit(X, y, epochs=1, batch_size=1024, verbose=False, shuffle=False)
    assert digest == _digest(logits, proba, np.array([loss, acc]), model.params)
    _one_serial_warning(messages)


def test_training_guard_is_free_in_a_child_forked_during_training(rng):
    """A parent thread holds the training guard at fork time; the child can still train."""
    X = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = fastwb.MLP([8, 16, 3], rng=0)
    inside, release = threading.Event(), threading.Event()

    def hold(step):
        inside.set()
        release.wait(DEADLINE)
        return 0.5

    trainer = threading.Thread(target=lambda: model.fit(X, y, epochs=1, batch_size=64, verbose=False,
                                                        prune_schedule=hold), daemon=True)
    trainer.start()
    try:
        assert inside.wait(DEADLINE)
        with pytest.raises(RuntimeError, match="already being trained"):
            model.train_step(X, y)
        digest, _ = run_os_fork(lambda: (np.array([model.train_step(X, y)]),))
        assert len(digest) == 64
    finally:
        release.set()
        trainer.join(DEADLINE)
    assert not trainer.is_alive()


if __name__ == "__main__":                        # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
