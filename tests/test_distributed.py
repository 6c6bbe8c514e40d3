"""fastwb.distributed: synchronous data-parallel training over real MPI.

The pytest process itself never imports mpi4py (MPI initialised in it would
outlive the test, and other tests fork): each scenario runs in a small script
under ``mpirun -n N --oversubscribe`` launched by subprocess with a timeout,
which writes one JSON file per rank; the tests read them.  Without mpi4py or
mpirun the MPI tests skip, saying which is missing.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from fastwb import nn

MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (MPIRUN and HAVE_MPI4PY),
    reason="real-MPI tests need " + " and ".join(
        w for w, ok in (("mpirun (apt-get install openmpi-bin libopenmpi-dev)", MPIRUN),
                        ("mpi4py (pip install 'fastwb[distributed]')", HAVE_MPI4PY)) if not ok))

# Run under mpirun: every rank runs every scenario and writes its results to OUT/rank<r>.json.
WORKER = textwrap.dedent(r'''
    import hashlib, json, os, sys
    import numpy as np
    from mpi4py import MPI
    from fastwb import distributed, nn
    from fastwb.nn.callbacks import Callback, ModelCheckpoint, LearningRateScheduler

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out_dir = sys.argv[1]
    res = {"rank": rank, "size": size}

    def data(n, d, classes, seed, dtype):
        g = np.random.default_rng(seed)
        X = g.standard_normal((n, d)).astype(dtype)
        y = (X[:, :classes].argmax(axis=1) + (X[:, -1] > 1.0)).astype(np.int64) % classes
        return X, y

    def mlp(dtype, seed, bn=False, p=0.0):
        layers = [nn.Linear(12, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
        layers += ([nn.Dropout(p)] if p else []) + [nn.Linear(16, 3)]
        return nn.Sequential(*layers, dtype=dtype, rng=seed)

    # 1. equivalence with one process on the same global batches; shards of unequal size
    #    (the last step has 4 rows on rank 0 and 1 row on rank 1: the weighting is exercised)
    lb, rows = 8, [36, 33] + [36] * (size - 2)
    X, y = data(sum(rows), 12, 3, 7, np.float64)
    starts = np.cumsum([0] + rows)
    mine = slice(starts[rank], starts[rank + 1])
    model = mlp("float64", seed=100 + rank)         # different initial weights: rank 0's must win
    model.compile("sgd", lr=0.05, momentum=0.9)
    hist = model.fit(X[mine], y[mine], epochs=3, batch_size=lb * size, shuffle=False, verbose=False,
                     comm=comm)
    res["equiv_hash"] = distributed.parameters_hash(model)
    res["equiv_loss"] = hist["loss"]
    if rank == 0:
        # the global batch of step s: block s of every rank's shard, in rank order
        blocks = [np.arange(starts[r], starts[r + 1]) for r in range(size)]
        order = np.concatenate([b[s:s + lb] for s in range(0, max(rows), lb) for b in blocks])
        ref = mlp("float64", seed=100)
        ref.compile("sgd", lr=0.05, momentum=0.9)
        # one process, the same global batches (their sizes: 8*size, ..., 4 + 1 + ...)
        ref_hist = {"loss": []}
        for e in range(3):
            total = 0.0
            for s in range(0, max(rows), lb):
                idx = np.concatenate([b[s:s + lb] for b in blocks])
                total += ref.train_step(X[idx], y[idx]) * len(idx)
            ref_hist["loss"].append(total / len(X))
        res["equiv_maxdiff"] = float(np.max(np.abs(ref.params - model.params)))
        res["equiv_scale"] = float(np.max(np.abs(ref.params)))
        res["equiv_ref_loss"] = ref_hist["loss"]
        res["moved"] = float(np.max(np.abs(ref.params - mlp("float64", seed=100).params)))

    # 2. BatchNorm + dropout + Adam, shuffled, float32: identical every epoch (hash callback),
    #    rank-0-only checkpoints and root_only callbacks, callbacks that must run everywhere
    class Mark(Callback):
        root_only = True
        def on_epoch_end(self, epoch, logs):
            open(os.path.join(out_dir, f"mark{rank}.txt"), "a").write(f"{epoch}\n")

    X, y = data(64 * size, 12, 3, 11 + rank, np.float32)      # a different shard on every rank
    model = mlp("float32", seed=5 + rank, bn=True, p=0.25)
    model.compile("adam", lr=1e-2)
    check = distributed.CheckIdentical(comm)
    sched = LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    ck = ModelCheckpoint(os.path.join(out_dir, f"ck{rank}.npz"))
    hist = model.fit(X, y, epochs=3, batch_size=16 * size, rng=3, verbose=True, comm=comm,
                     callbacks=[check, sched, ck, Mark()])
    res["bn_hashes"] = check.hashes
    res["bn_history"] = {k: v for k, v in hist.items() if v}
    res["bn_lr"] = model.optimizer.hyper["lr"]
    res["bn_seed"] = model.seed
    res["bn_running_mean"] = model.state_dict()["1.running_mean"].tolist()

    # 3. validation on rank 0 only, its logs shared; early stopping agreed by all ranks
    class StopOnRank(Callback):
        def on_epoch_end(self, epoch, logs):
            if rank == size - 1 and epoch == 1:
                self.model.stop_training = True
    Xv, yv = data(40, 12, 3, 99, np.float32)
    model = mlp("float32", seed=1)
    hist = model.fit(X, y, epochs=5, batch_size=16 * size, verbose=False, comm=comm,
                     validation_data=(Xv, yv) if rank == 0 else None, callbacks=[StopOnRank()])
    res["val_loss"] = hist["val_loss"]
    res["stop_epochs"] = len(hist["loss"])
    if rank == 0:
        res["val_direct"] = float(model.evaluate(Xv, yv)[0])

    # 4. disagreements raise ValueError on every rank (no hang)
    errors = []
    for kwargs, Xs in ((dict(batch_size=16 * size + rank), X),
                       (dict(batch_size=16 * size), X[: 16 + 17 * rank]),
                       (dict(batch_size=16 * size + 1), X)):
        try:
            mlp("float32", seed=1).fit(Xs, y[: len(Xs)], epochs=1, verbose=False, comm=comm, **kwargs)
            errors.append(None)
        except ValueError as e:
            errors.append(str(e))
    res["errors"] = errors
    json.dump(res, open(os.path.join(out_dir, f"rank{rank}.json"), "w"))
''')


def _mpirun(n, script, out_dir, timeout=60):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", FASTWB_NO_PROGRESS="1")
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe", sys.executable, "-m", "mpi4py", str(script), str(out_dir)]
    try:
        # from the job's own folder: the installed fastwb, never the (unbuilt) source tree
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=out_dir)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpirun -n {n} did not finish in {timeout} s (a rank waiting in a collective?)\n"
                    f"{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"mpirun -n {n} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc, [json.load(open(out_dir / f"rank{r}.json")) for r in range(n)]


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    if not (MPIRUN and HAVE_MPI4PY):
        pytest.skip("no MPI")
    d = tmp_path_factory.mktemp("mpi2")
    script = d / "worker.py"
    script.write_text(WORKER)
    proc, results = _mpirun(2, script, d)
    return proc, results, d


@needs_mpi
def test_ranks_start_from_rank0_and_stay_identical(run2):
    _, (r0, r1), _ = run2
    assert r0["equiv_hash"] == r1["equiv_hash"]
    assert r0["equiv_loss"] == r1["equiv_loss"]
    # BatchNorm (local batch statistics, averaged running statistics) and dropout, every epoch
    assert len(r0["bn_hashes"]) == 3 and r0["bn_hashes"] == r1["bn_hashes"]
    assert r0["bn_running_mean"] == r1["bn_running_mean"]
    assert r0["bn_history"] == r1["bn_history"]


@needs_mpi
def test_update_equals_one_process_on_the_global_batch(run2):
    _, (r0, _), _ = run2
    assert r0["moved"] > 1e-2                   # training did something
    # float64: the same global batches (unequal last batches weighted by rows), rounding apart
    assert r0["equiv_maxdiff"] <= 1e-12 * max(1.0, r0["equiv_scale"]), r0["equiv_maxdiff"]
    np.testing.assert_allclose(r0["equiv_loss"], r0["equiv_ref_loss"], rtol=1e-12)


@needs_mpi
def test_only_rank0_prints_and_writes(run2):
    proc, _, d = run2
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], proc.stdout
    assert "samples/s" in lines[0]
    assert (d / "ck0.npz").exists() and not (d / "ck1.npz").exists()
    assert (d / "mark0.txt").read_text().split() == ["0", "1", "2"] and not (d / "mark1.txt").exists()


@needs_mpi
def test_callbacks_logs_and_stopping_agree(run2):
    _, (r0, r1), _ = run2
    assert r0["bn_lr"] == r1["bn_lr"] == pytest.approx(1e-2 / 8)       # the schedule ran on both ranks
    assert r0["bn_seed"] == r1["bn_seed"]                               # the model's own seed restored
    # validation on rank 0 only, shared with every rank
    assert len(r0["val_loss"]) == 2 and r0["val_loss"] == r1["val_loss"]
    assert r0["val_loss"][-1] == pytest.approx(r0["val_direct"], rel=1e-6)
    assert r0["stop_epochs"] == r1["stop_epochs"] == 2                  # rank 1 stopped: everyone did


@needs_mpi
def test_disagreements_raise_on_every_rank(run2):
    _, (r0, r1), _ = run2
    assert r0["errors"] == r1["errors"]
    batch, steps, divisible = r0["errors"]
    assert "disagree on batch_size" in batch and "rank 0: 32, rank 1: 33" in batch
    assert "same number of steps" in steps and "16, 33 rows" in steps
    assert "multiple of the number of ranks" in divisible


@needs_mpi
def test_one_rank_equals_plain_fit(tmp_path):
    script = tmp_path / "one.py"
    script.write_text(textwrap.dedent('''
        import json, os, sys
        import numpy as np
        from mpi4py import MPI
        from fastwb import nn
        g = np.random.default_rng(0)
        X = g.standard_normal((50, 12)).astype(np.float32); y = g.integers(0, 3, 50)
        out = []
        for comm in (MPI.COMM_WORLD, None):
            m = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3), rng=4)
            h = m.fit(X, y, epochs=2, batch_size=16, rng=1, verbose=False, comm=comm)
            out.append((m.params.tobytes().hex(), m.buffers.tobytes().hex(), h["loss"]))
        json.dump({"same": out[0] == out[1]}, open(os.path.join(sys.argv[1], "rank0.json"), "w"))
    '''))
    _, (r0,) = _mpirun(1, script, tmp_path)
    assert r0["same"]          # one rank: bit for bit the plain fit (dropout seed unmixed, scale 1)


def test_comm_none_is_the_plain_fit():
    g = np.random.default_rng(0)
    X = g.standard_normal((40, 6)).astype(np.float32)
    y = g.integers(0, 2, 40)
    a = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2), rng=2)
    b = a.copy()
    ha = a.fit(X, y, epochs=2, batch_size=8, rng=0, verbose=False)
    hb = b.fit(X, y, epochs=2, batch_size=8, rng=0, verbose=False, comm=None)
    assert a.params.tobytes() == b.params.tobytes()
    assert ha["loss"] == hb["loss"]


def test_import_fastwb_does_not_import_mpi4py():
    code = "import sys, fastwb, fastwb.distributed; assert 'mpi4py' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tempfile.gettempdir())


def test_missing_mpi4py_names_the_extra(monkeypatch):
    from fastwb import distributed
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"fastwb\[distributed\]"):
        distributed.require_mpi()
    model = nn.Sequential(nn.Linear(3, 2), rng=0)
    with pytest.raises(ImportError, match=r"fastwb\[distributed\]"):
        model.fit(np.zeros((4, 3), np.float32), np.zeros(4, np.int64), verbose=False, comm=object())


def test_shard_covers_every_row_once():
    class Comm:
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return self.size

    for n in (0, 1, 7, 64, 65):
        for size in (1, 2, 3, 4):
            parts = [np.arange(n)[distributed_shard(n, Comm(r, size))] for r in range(size)]
            assert np.array_equal(np.concatenate(parts), np.arange(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def distributed_shard(n, comm):
    from fastwb.distributed import shard
    return shard(n, comm)


DETERMINISTIC = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    from mpi4py import MPI
    from fastwb import distributed, nn
    comm = MPI.COMM_WORLD
    g = np.random.default_rng(0)
    X = g.standard_normal((200, 12)).astype(np.float32)      # the same global data on every rank
    y = (X[:, :3].argmax(axis=1)).astype(np.int64)
    res = {}
    for name, layers in (("bn_dropout", [nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                                          nn.Linear(16, 3)]),
                         ("plain", [nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)])):
        model = nn.Sequential(*layers, rng=3 + comm.Get_rank())
        model.compile("adam", lr=1e-2)
        # 200 rows in global batches of 64 = 4 micro-batches of 16 (the last batch: 8 rows, two empty)
        h = distributed.fit_deterministic(model, X, y, comm, epochs=2, batch_size=64, micro_batch=16, rng=5,
                                          verbose=False)
        res[name] = [distributed.parameters_hash(model), h["loss"], h["accuracy"]]
    if comm.Get_rank() == 0:                     # comm=None: one process, no MPI in the loop
        model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3),
                              rng=3)
        model.compile("adam", lr=1e-2)
        h = distributed.fit_deterministic(model, X, y, None, epochs=2, batch_size=64, micro_batch=16, rng=5,
                                          verbose=False)
        res["no_comm"] = [distributed.parameters_hash(model), h["loss"], h["accuracy"]]
        res["moved"] = h["loss"][-1] < h["loss"][0]
    json.dump(res, open(os.path.join(sys.argv[1], f"rank{comm.Get_rank()}.json"), "w"))
''')


@needs_mpi
def test_deterministic_mode_is_bitwise_identical_on_1_2_4_ranks(tmp_path):
    script = tmp_path / "det.py"
    script.write_text(DETERMINISTIC)
    runs = {}
    for n in (1, 2, 4):
        d = tmp_path / f"n{n}"
        d.mkdir()
        runs[n] = _mpirun(n, script, d, timeout=90)[1]
    first = runs[1][0]
    assert first["moved"]
    assert first["no_comm"] == first["bn_dropout"]
    for n, results in runs.items():
        for r, res in enumerate(results):
            assert res["bn_dropout"] == first["bn_dropout"], (n, r)
            assert res["plain"] == first["plain"], (n, r)


@needs_mpi
def test_fastwb_train_distributed(tmp_path):
    """``mpirun -n 2 fastwb train --distributed``: rank 0 alone prints (one
    accuracy line with --quiet) and writes the model; the saved model is the
    ranks' common one, and a global batch the ranks cannot split is an error."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")

    def train(*argv):
        cmd = [MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "mpi4py", "-m", "fastwb", "train",
               "--distributed", "--epochs", "2", "--hidden", "16", *argv]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)

    done = train("--quiet", "--save", "m.fwb")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert len(lines) == 1 and 0.0 < float(lines[0]) <= 1.0, done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fwb"]
    from fastwb import datasets, nn
    model = nn.load(str(tmp_path / "m.fwb"))
    _, _, X_test, y_test = datasets.load("digits", rng=0)
    assert model.evaluate(X_test, y_test)[1] == pytest.approx(float(lines[0]), abs=5e-5)
    bad = train("--batch-size", "33")
    assert bad.returncode != 0 and "multiple of the 2 ranks" in bad.stderr


# Every rank gets the SAME rows and (broadcast) the same weights, so the activations before
# the dropout are the same on every rank and only the dropout masks can tell the ranks apart.
# The masks are read at each step's Allreduce (Reducer.reduce wrapped) from the step's
# workspace: the Linear+ReLU+Dropout stage keeps its activation before the dropout (pre) and
# after it (out = 0 or pre / (1 - p)).  Run twice: as fit runs (the rank mixed into the dropout
# seed by Reducer.begin) and, as a control that shows the probe sees identical masks, with
# Reducer.begin disabled (every rank on rank 0's seed).
DROPOUT = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    from mpi4py import MPI
    from fastwb import distributed, nn

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    g = np.random.default_rng(0)
    X = g.standard_normal((64, 12)).astype(np.float32)        # the same 64 rows on every rank
    y = g.integers(0, 3, 64)
    res = {}
    reduce, begin = distributed.Reducer.reduce, distributed.Reducer.begin
    for scenario in ("fit", "unmixed"):
        if scenario == "unmixed":
            distributed.Reducer.begin = lambda self: None
        model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3), rng=7 + rank)
        model.compile("adam", lr=1e-2)
        steps = []

        def spy(self, grads, n):
            ws = next(reversed(model._workspaces.values()))      # the workspace this step ran in
            pre, out = ws.pre[0], ws.out[0]
            steps.append({"pre": pre.tobytes().hex(), "kept": (out != 0).astype(int).tolist(),
                          "active": (pre != 0).astype(int).tolist(),
                          "probe": bool(np.all((out == 0) | (out == 2 * pre))),
                          "grad": grads.tobytes().hex()})     # this rank's gradient, before the sum
            reduce(self, grads, n)

        distributed.Reducer.reduce = spy
        check = distributed.CheckIdentical(comm)
        try:
            model.fit(X, y, epochs=2, batch_size=32, shuffle=False, verbose=False, comm=comm, callbacks=[check])
        finally:
            distributed.Reducer.reduce, distributed.Reducer.begin = reduce, begin
        res[scenario] = {"steps": steps, "hashes": check.hashes, "params": model.params.tobytes().hex(),
                         "seed": model.seed}
    json.dump(res, open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w"))
''')


@needs_mpi
def test_dropout_masks_differ_across_ranks_while_weights_stay_identical(tmp_path):
    script = tmp_path / "dropout.py"
    script.write_text(DROPOUT)
    _, (r0, r1) = _mpirun(2, script, tmp_path)
    for scenario in ("fit", "unmixed"):
        a, b = r0[scenario], r1[scenario]
        assert len(a["steps"]) == len(b["steps"]) == 8          # 2 epochs of 64 rows per rank, 16 a step
        for s, (x, z) in enumerate(zip(a["steps"], b["steps"])):
            assert x["probe"] and z["probe"], (scenario, s)      # out is pre dropped or scaled by 2
            assert x["pre"] == z["pre"], (scenario, s)           # the same rows through the same weights
        # the weights: bitwise identical on both ranks after every epoch
        assert len(a["hashes"]) == 2 and a["hashes"] == b["hashes"], scenario
        assert a["params"] == b["params"] and a["seed"] == b["seed"], scenario
    # fit: every step, the two ranks drew different masks, so their gradients differ
    fit0, fit1 = r0["fit"]["steps"], r1["fit"]["steps"]
    agree = []
    for s, (x, z) in enumerate(zip(fit0, fit1)):
        kept0, kept1, active = (np.array(v, bool) for v in (x["kept"], z["kept"], x["active"]))
        assert not np.array_equal(kept0, kept1), f"step {s}: both ranks drew the same dropout mask"
        assert x["grad"] != z["grad"], s
        for kept in (kept0, kept1):
            assert 0.3 < kept[active].mean() < 0.7, s            # p = 0.5 on the active units
        agree.append(kept0[active] == kept1[active])
    # independent masks agree on about half of the units (p = 0.5)
    assert 0.4 < np.concatenate(agree).mean() < 0.6, np.concatenate(agree).mean()
    # and a rank's mask changes from step to step
    assert len({str(x["kept"]) for x in fit0}) == len(fit0)
    # the control: on one seed the ranks draw the same masks and compute the same gradients,
    # so the checks above would fail if fit did not mix the rank into the seed
    for x, z in zip(r0["unmixed"]["steps"], r1["unmixed"]["steps"]):
        assert x["kept"] == z["kept"] and x["grad"] == z["grad"]
    # different masks, yet the models agree: the ranks start from rank 0's weights and sum gradients
    assert r0["fit"]["params"] != r0["unmixed"]["params"]
