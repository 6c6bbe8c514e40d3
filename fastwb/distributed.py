"""Synchronous data-parallel training over MPI (mpi4py): ``fit(..., comm=comm)``.

    # mpirun -n 2 python -m mpi4py train.py
    from mpi4py import MPI
    from fastwb import distributed, nn
    comm = MPI.COMM_WORLD
    rows = distributed.shard(len(X), comm)             # this rank's contiguous block of rows
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10), rng=0)
    model.compile("adam", lr=1e-3)
    model.fit(X[rows], y[rows], epochs=5, batch_size=256, comm=comm)   # 256: the global batch

Every rank holds its shard of the data and a copy of the model.  At the start
of ``fit`` rank 0's parameters, running statistics, optimizer state and seed
are broadcast (``Bcast``, buffer protocol), so every rank starts from rank 0's
weights.  ``batch_size`` is the *global* batch: each rank takes
``batch_size // size`` rows of its shard per step (``batch_size`` must be a
multiple of the number of ranks).  A step computes the mean gradient of the
local rows into the model's flat gradient buffer, scales it by
``local rows / global rows`` of this step and sums it over the ranks with one
in-place ``Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)`` on the whole flat
buffer (no pickling), so the gradient is the mean over the global batch, also
for unequal last batches; then every rank runs the same fused optimizer pass.

What the fast path guarantees:

* The ranks stay bitwise identical: every rank receives the same bits from
  the Allreduce (the MPI standard advises it; Open MPI's algorithms give it,
  and :class:`CheckIdentical` / :func:`check_identical` verify it) and runs the
  same deterministic optimizer pass on them.
* The update equals the single-process update on the same global batch up to
  float rounding (the local GEMMs and sums see other row blocks), not bit for
  bit, and the result may change with the number of ranks.

The shards may differ in size, but every rank must take the same number of
steps per epoch (``ceil(n_rank / (batch_size // size))``), else ``fit`` raises
ValueError on every rank; ``batch_size``, ``epochs``, the model's size and
dtype, the optimizer and the step counts must agree across ranks too (checked
once at the start, in one small ``allgather``).

Logs, validation, callbacks, output:

* ``loss`` and the training metric are averaged over all rows of all ranks
  (one small Allreduce per epoch: exact for the loss and the accuracy; R^2 of
  a regression is the row-weighted mean of the shards' R^2).
* ``validation_data`` is evaluated on rank 0 only (other ranks may pass None),
  and rank 0's logs are broadcast, so every rank's history and callbacks see
  the same numbers.
* Callbacks run on every rank (a learning-rate schedule, early stopping or an
  unfreeze must happen everywhere, or the ranks would drift apart), except
  those that write files: :class:`fastwb.nn.callbacks.ModelCheckpoint` and
  any callback with ``root_only = True`` run on rank 0 only.  Whether to stop
  is agreed on by all ranks (any rank stopping stops all).
* Only rank 0 prints progress.

BatchNorm: batch statistics are local (each rank normalises its own
``batch_size // size`` rows, as PyTorch's DistributedDataParallel without
SyncBatchNorm); the gradients are still summed exactly.  Running statistics
are updated locally during the epoch and averaged over the ranks at the end of
every epoch (before validation), so all ranks hold the same buffers again:
the averaged running mean is the running mean of the global batches' means;
the averaged running variance is the mean of the local variances (it leaves
out the spread of the local means between ranks).

Dropout: each rank mixes its rank into the model's dropout seed during
``fit`` (restored after), so the ranks draw independent masks, as the rows of
one global batch would.

Errors: an exception on one rank leaves the others waiting in a collective.
Run scripts as ``mpirun -n N python -m mpi4py script.py``: mpi4py then aborts
every rank when one fails.

mpi4py is an optional dependency (``pip install 'fastwb[distributed]'``),
imported only when this module's functions are used with a communicator.
"""

import hashlib
import time

import numpy as np

from fastwb.nn.callbacks import Callback, ModelCheckpoint

__all__ = ["CheckIdentical", "Reducer", "broadcast_model", "check_identical", "fit_deterministic",
           "parameters_hash", "require_mpi", "shard"]


def require_mpi():
    """mpi4py's ``MPI`` module, or a one-line ImportError naming the extra."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("fastwb.distributed needs mpi4py: pip install 'fastwb[distributed]' "
                          "(and an MPI library such as Open MPI)") from None
    return MPI


def shard(n, comm):
    """This rank's contiguous block of ``range(n)`` as a slice (blocks as
    ``np.array_split``: sizes differ by at most one row)."""
    size, rank = comm.Get_size(), comm.Get_rank()
    base, extra = divmod(int(n), size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def _state_arrays(model):
    """The arrays that make a model's training state, in a fixed order: parameters,
    running statistics, their counts, and the optimizer's state arrays."""
    arrays = [model.params, model.buffers, model.num_batches_tracked]
    opt = model.optimizer
    if opt is not None:
        for state in opt.state:
            arrays.extend(state[k] for k in sorted(state))
    return [a for a in arrays if a.size]


def broadcast_model(model, comm, root=0):
    """Give every rank ``root``'s parameters, running statistics and optimizer
    state (in place, one ``Bcast`` per flat array).  Collective."""
    for a in _state_arrays(model):
        if not a.flags.c_contiguous:
            raise ValueError("broadcast_model: a state array is not contiguous")
        comm.Bcast(a, root=root)


def parameters_hash(model):
    """SHA-256 (hex) of the model's parameters, running statistics and their counts."""
    h = hashlib.sha256()
    for a in (model.params, model.buffers, model.num_batches_tracked):
        h.update(a.tobytes())
    return h.hexdigest()


def check_identical(model, comm):
    """Raise RuntimeError on every rank unless all ranks hold bitwise identical
    parameters and running statistics.  Collective; returns the hash."""
    hashes = comm.allgather(parameters_hash(model))
    if len(set(hashes)) != 1:
        differ = [r for r, h in enumerate(hashes) if h != hashes[0]]
        raise RuntimeError(f"the ranks' models differ: ranks {differ} do not match rank 0")
    return hashes[0]


class CheckIdentical(Callback):
    """A callback that checks after every epoch that all ranks hold bitwise
    identical models (:func:`check_identical`; RuntimeError otherwise) and
    records the hashes in ``hashes``.  Runs on every rank (it is collective)."""

    root_only = False

    def __init__(self, comm):
        self.comm = comm
        self.hashes = []

    def on_epoch_end(self, epoch, logs):
        self.hashes.append(check_identical(self.model, self.comm))


def _root_only(cb):
    if getattr(cb, "root_only", False):
        return True
    return isinstance(cb, ModelCheckpoint)


class Reducer:
    """The MPI side of ``Sequential.fit(..., comm=comm)``: made once per fit (a
    collective call on every rank), it checks that the ranks agree, broadcasts
    rank 0's state, and then serves the engine:
    :meth:`begin` when training starts, :meth:`reduce` once per step, :meth:`end_epoch`,
    :meth:`share` and :meth:`stop` once per epoch, :meth:`close` at the end.

    ``n``: this rank's rows; ``batch_size``: the global batch (a multiple of
    the number of ranks).  Attributes: ``rank``, ``size``, ``root`` (rank 0),
    ``local_batch``, ``steps`` (per epoch, equal on every rank)."""

    def __init__(self, model, comm, n, batch_size, epochs):
        MPI = require_mpi()
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator (MPI.COMM_WORLD), got {type(comm).__name__}")
        if comm.Is_inter():
            raise ValueError("comm must be an intracommunicator")
        self.MPI, self.comm, self.model = MPI, comm, model
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.root = self.rank == 0
        opt = model.optimizer
        mine = {"batch_size": int(batch_size), "epochs": int(epochs), "parameters": int(model.params.size),
                "buffers": int(model.buffers.size), "dtype": str(model.dtype),
                "optimizer": type(opt).__name__ if opt is not None else None,
                "optimizer steps": int(opt.step_count) if opt is not None else 0,
                "model steps": int(model.step_count), "epochs done": int(model.epochs_done),
                "loss": model.loss.name, "rows": int(n), "seed": int(model.seed)}
        everyone = comm.allgather(mine)         # once per fit: small, pickled
        for key in mine:
            if key not in ("rows", "seed") and any(d[key] != everyone[0][key] for d in everyone):
                values = ", ".join(f"rank {r}: {d[key]}" for r, d in enumerate(everyone))
                raise ValueError(f"fit(comm=...): the ranks disagree on {key} ({values})")
        if batch_size % self.size:
            raise ValueError(f"fit(comm=...): batch_size {batch_size} (the global batch) must be a multiple of "
                             f"the number of ranks, {self.size}")
        self.local_batch = lb = batch_size // self.size
        self.rows = rows = [d["rows"] for d in everyone]
        steps = [-(-r // lb) for r in rows]
        if len(set(steps)) != 1:
            raise ValueError(f"fit(comm=...): the shards of {', '.join(map(str, rows))} rows give "
                             f"{', '.join(map(str, steps))} steps of {lb} rows per epoch; every rank must "
                             f"take the same number of steps (shard the data evenly, e.g. distributed.shard)")
        self.steps = steps[0]
        # each step's weight of this rank's mean gradient: its rows over the step's global rows
        self._scale = []
        for s in range(self.steps):
            m = [max(0, min(lb, r - s * lb)) for r in rows]
            self._scale.append(m[self.rank] / sum(m))
        self._k = 0
        self.rows_total = sum(rows)
        broadcast_model(model, comm)
        model.seed = everyone[0]["seed"]        # rank 0's dropout seed too, as its weights
        self._seed = None

    def begin(self):
        """At the start of training (inside fit's ``try``, :meth:`close` in its
        ``finally``): independent dropout masks per rank, the rank mixed into the
        seed that the training plans are made with."""
        model = self.model
        self._seed = model.seed
        if self.size > 1:
            model.seed = int(np.random.default_rng([model.seed, self.rank, 0x5EED]).integers(0, 2**31 - 1))
            model._workspaces.clear()

    def reduce(self, grads, rows):
        """Turn this rank's mean gradient over ``rows`` rows into the mean over the
        step's global batch, on every rank: one in-place Allreduce of the flat buffer."""
        k = self._k
        self._k = k + 1 if k + 1 < self.steps else 0
        scale = self._scale[k]
        if scale != 1.0:
            grads *= scale
        self.comm.Allreduce(self.MPI.IN_PLACE, grads, op=self.MPI.SUM)

    def end_epoch(self, logs, n):
        """Average the epoch's logs over all rows of all ranks and the running
        statistics over the ranks (in place).  Collective."""
        self._k = 0
        if self.size == 1:
            return logs
        keys = list(logs)
        local = np.array([float(logs[k]) * n for k in keys] + [float(n)], np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, local, op=self.MPI.SUM)
        for i, k in enumerate(keys):
            logs[k] = float(local[i] / local[-1])
        buffers = self.model.buffers
        if buffers.size and self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buffers, op=self.MPI.SUM)
            buffers *= buffers.dtype.type(1.0 / self.size)
        return logs

    def share(self, logs):
        """Rank 0's logs (validation included), on every rank.  Collective."""
        return self.comm.bcast(logs if self.root else None, root=0)

    def callbacks(self, callbacks):
        """The callbacks this rank runs: all on rank 0; on the others, all but
        those that write files (ModelCheckpoint, ``root_only``)."""
        return list(callbacks) if self.root else [cb for cb in callbacks if not _root_only(cb)]

    def stop(self, flag):
        """Whether any rank wants to stop (so all stop together).  Collective."""
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def close(self):
        """Restore the model's own dropout seed."""
        if self._seed is not None and self.model.seed != self._seed:
            self.model.seed = self._seed
            self.model._workspaces.clear()


# -- the deterministic mode --------------------------------------------------------------

def _tree_sum(slots):
    """Sum the rows of ``slots`` (a power-of-two count) in place in the balanced
    pairwise tree over their index: ((0 + 1) + (2 + 3)) + ...; returns row 0."""
    stride = 1
    while stride < len(slots):
        for i in range(0, len(slots), 2 * stride):
            slots[i] += slots[i + stride]
        stride *= 2
    return slots[0]


def fit_deterministic(model, X, y, comm=None, epochs=1, batch_size=128, micro_batch=32, shuffle=True, rng=None,
                      verbose=True):
    """Data-parallel training whose result does not depend on the number of ranks.

    Every rank passes the *same* global X, y (each reads only its rows).  Each
    global batch of ``batch_size`` rows (after a shuffle drawn from ``rng`` and
    the epoch, as ``fit``) is cut into ``k = batch_size // micro_batch``
    micro-batches; rank r computes micro-batches ``r*k/size ... (r+1)*k/size - 1``,
    each one alone (its mean gradient, weighted by its share of the global
    batch's rows), and the k weighted gradients are summed in one fixed
    balanced pairwise tree over the micro-batch index: first each rank's own
    block, then across ranks by recursive doubling (``Sendrecv`` with rank
    ``r ^ d`` for d = 1, 2, 4, ...: the upper levels of the same tree).  Every
    sum is the same, in the same order, on 1, 2, 4 ... ranks, so the weights
    after an epoch are bitwise identical whatever the number of ranks (on the
    same kind of CPU and the same build).  ``k`` must be a power of two and a
    multiple of the number of ranks, itself a power of two; ``comm=None`` is
    one process (no mpi4py needed).

    BatchNorm normalises each micro-batch by its own statistics (ghost batch
    normalisation); the running statistics move once per step, to the
    row-weighted mean of what each micro-batch alone would make them (the
    same tree).  Dropout masks depend on the step and the micro-batch index,
    not on the rank.  The loss and accuracy ride in the same tree.

    It trains in place with the model's optimizer (Adam when none was
    compiled), starts every rank from rank 0's state, prints on rank 0 only,
    and returns ``{"loss": [...], "accuracy": [...]}`` (no validation,
    callbacks, pruning or adversarial training: use ``fit(comm=...)`` for those).
    Costs against the fast path: a micro-batch's GEMMs are smaller, the
    exchange moves log2(size) whole gradients per step instead of one Allreduce."""
    from fastwb._validate import check_int
    from fastwb.nn.progress import Progress
    from fastwb.nn.sequential import _gather

    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    micro_batch = check_int("micro_batch", micro_batch, 1)
    X, y = model._check_batch(X, y)
    n = X.shape[0]
    if n == 0:
        raise ValueError("the batch is empty")
    if batch_size % micro_batch:
        raise ValueError(f"batch_size {batch_size} must be a multiple of micro_batch {micro_batch}")
    k = batch_size // micro_batch
    size, rank = (1, 0) if comm is None else (comm.Get_size(), comm.Get_rank())
    if k & (k - 1) or size & (size - 1) or k % size:
        raise ValueError(f"{k} micro-batches per step on {size} ranks: both must be powers of two, "
                         f"the micro-batches a multiple of the ranks")
    if model.optimizer is None:
        model.compile(groups=model.groups)
    if comm is not None:
        require_mpi()
        Reducer(model, comm, n, batch_size, epochs)      # the agreement checks and rank 0's state
        digest = hashlib.sha256(memoryview(X).cast("B")).hexdigest() + hashlib.sha256(
            memoryview(np.ascontiguousarray(y)).cast("B")).hexdigest()
        if len(set(comm.allgather(digest))) != 1:
            raise ValueError("fit_deterministic: every rank must pass the same global X and y")
    mine = k // size
    P, B = model.params.size, model.buffers.size
    slots = np.zeros((mine, P + B + 2), model.dtype)        # [gradient, buffers, loss, correct] * weight
    recv = np.empty(P + B + 2, model.dtype) if size > 1 else None
    seed = int(rng) if isinstance(rng, (int, np.integer)) else int(
        np.random.default_rng(rng).integers(0, 2**63 - 1))
    if comm is not None:
        seed = comm.bcast(seed, root=0)
    history = {"loss": [], "accuracy": []}
    if not model._training_lock.acquire(blocking=False):
        raise RuntimeError("fit_deterministic: the model is already being trained by another call")
    was_training = model.training
    model.train()
    try:
        for _ in range(epochs):
            epoch = model.epochs_done
            order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
            steps = -(-n // batch_size)
            bar = Progress(steps, f"epoch {epoch + 1}", verbose and rank == 0)
            t0 = time.perf_counter()
            loss_sum = correct = 0.0
            for s in range(0, n, batch_size):
                batch = order[s:s + batch_size]
                M = len(batch)
                base = model.step_count
                b0 = model.buffers.copy() if B else None
                nbt = model.num_batches_tracked.copy()
                slots[:] = 0
                for i in range(mine):
                    j = rank * mine + i
                    idx = batch[j * micro_batch:(j + 1) * micro_batch]
                    if not len(idx):
                        continue                    # a short last batch: an empty micro-batch adds zero
                    ws = model._workspace(len(idx))
                    yb = _gather(ws, X, y, idx)
                    model.step_count = base * k + j      # the dropout counter: the micro-batch, not the rank
                    try:
                        loss = model._gradients(ws.x, yb, ws)
                    finally:
                        model.step_count = base
                    w = model.dtype.type(len(idx) / M)
                    row = slots[i]
                    np.multiply(model.grads, w, out=row[:P])
                    if B:
                        np.multiply(model.buffers, w, out=row[P:P + B])
                        model.buffers[...] = b0
                        model.num_batches_tracked[...] = nbt
                    row[P + B] = loss * w
                    row[P + B + 1] = model._correct(ws, yb)
                total = _tree_sum(slots)
                d = 1
                while d < size:
                    comm.Sendrecv(total, dest=rank ^ d, recvbuf=recv, source=rank ^ d)
                    total += recv
                    d *= 2
                model.grads[...] = total[:P]
                if B:
                    model.buffers[...] = total[P:P + B]
                    model.num_batches_tracked += 1
                model.optimizer._apply([model.grads])
                model.step_count = base + 1
                loss_sum += float(total[P + B]) * M
                correct += float(total[P + B + 1])
                bar.update(float(total[P + B]))
            history["loss"].append(loss_sum / n)
            history["accuracy"].append(correct / n)
            model.epochs_done += 1
            bar.close(f"epoch {epoch + 1}: loss {loss_sum / n:.4f}, accuracy {correct / n:.4f}, "
                      f"{time.perf_counter() - t0:.2f} s")
    finally:
        model.train(was_training)
        model._training_lock.release()
    return history
