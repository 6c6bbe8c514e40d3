"""pytest-benchmark suite of int8 dynamic quantization (issue 13, bench/quantize.py):
inference through the float32 MLPs 784-256-10 (at batch 1, 32, 128 and 1024) and
4096-4096-4096-10 (at batch 1 and 128), ReLU hidden layers, untrained weights
(``quantize.build_model``), on rows of N(0, 1) (``quantize.timing_rows``).  One
group per model and batch:

- fastwb f32: ``model.logits(x)``;
- fastwb int8: ``fastwb.quantize.quantize_dynamic(model)`` (its defaults:
  per-channel weights, ``reduce_range=None``, which is 7-bit activations on the
  avx2 kernel path), ``q.logits(x)``;
- fastwb int8 reduce_range: ``quantize_dynamic(model, reduce_range=True)``
  (PyTorch's 7-bit activations);
- NumPy twin int8: ``fastwb.reference.quantize.quantize_dynamic(model).logits(x)``,
  the honest baseline; only 784-256-10 at batch 1, 32 and 128 (it takes 0.5 s
  per call at batch 1024 and 28 s at 4096-4096-4096-10 batch 128);
- PyTorch f32 and int8 (``torch.ao.quantization.quantize_dynamic``, its
  defaults) and ONNX Runtime f32 and int8 (``onnxruntime.quantization.
  quantize_dynamic``, QInt8 per-tensor weights): ``quantize.TorchPeer`` and
  ``quantize.OrtPeer`` on the same weights and rows, each peer in a process of
  its own (started once for the module), skipped when not installed.

    pytest bench/test_bench_quantize.py --benchmark-only --benchmark-group-by=group [--quick]
    python bench/quantize.py [--quick] [--threads N]    # interleaved rounds, paired ratios, drift, targets

``--quick`` leaves out 4096-4096-4096-10 and times ``--benchmark-min-rounds``
rounds (default 5) instead of ROUNDS.  A round is the same work for every
contender of a group: CALLS consecutive calls (enough that a round of the
fastest contender outlasts the 0.1 ms pipe round trip to a peer's process).
fastwb runs in this process at ``fastwb.get_num_threads()`` threads, the peers
at the same count; PyTorch shares libgomp with fastwb, so PyTorch and ONNX
Runtime each run in a process of their own (as in bench/quantize.py), which
each round asks to do the round's work and waits for: a pipe round trip of
some 0.1 ms.

A benchmark of a wrong result fails: before timing, each fastwb int8 contender's
output must equal the NumPy twin's of the same recipe bit for bit
(``np.array_equal``; the twin's outputs are computed once per batch and
activation width: some 30 s of the full suite go to the twin at
4096-4096-4096-10 batch 128, per width), the twin's must equal fastwb's int8, fastwb's float32 must
match a float64 NumPy forward pass within float32 rounding, each peer's float32
output fastwb's float32 one within rounding, and each peer's int8 output the
float32 one within a coarse sanity bound (half the largest logit: it catches
a broken run, not drift; bench/quantize.py measures the drift).
pytest-benchmark runs a group's members one after the other, so on a shared
machine its ratios are noisier than the interleaved ones of the script.
"""

import contextlib
import json
import os
import tempfile

import numpy as np
import pytest
import quantize as Q  # bench/quantize.py: the models, the rows, the peers

import fastwb
from fastwb import benchmark as B
from fastwb.quantize import quantize_dynamic
from fastwb.reference import quantize as twin

BIG = "4096-4096-4096-10"
MODELS = {"784-256-10": (1, 32, 128, 1024), BIG: (1, 128)}
TWIN_AT = {"784-256-10": (1, 32, 128)}     # where the NumPy twin is timed
CALLS = {("784-256-10", 1): 100, ("784-256-10", 32): 20, ("784-256-10", 128): 5, ("784-256-10", 1024): 1,
         (BIG, 1): 2, (BIG, 128): 1}       # consecutive calls per round
ROUNDS = 15
FASTWB = {"fastwb f32": None, "fastwb int8": {}, "fastwb int8 reduce_range": {"reduce_range": True}}
TWIN = "NumPy twin int8"
PEERS = {"torch": (Q.SIDES["torch"], ("torch",), "torch"),
         "ort": (Q.SIDES["ort"], ("onnxruntime", "onnx"), "onnxruntime onnx")}   # names, modules, pip install
F32_RTOL, F32_ATOL = 1e-4, 1e-4            # float32 against float64: atol times the largest |logit|
INT8_SANITY = 0.5                          # a peer's int8 logits within this times the largest |logit|
#                                            (measured at 784-256-10: PyTorch 0.025-0.033, ORT 0.08-0.31, worst at b1)


def _cases():
    out = []
    for tag, batches in MODELS.items():
        for b in batches:
            names = list(FASTWB) + ([TWIN] if b in TWIN_AT.get(tag, ()) else [])
            names += [n for names_, _, _ in PEERS.values() for n in names_]
            out += [pytest.param(tag, b, n, id=f"{tag}-b{b}-{n.replace(' ', '_')}") for n in names]
    return out


# -- fastwb and its twin, in this process ---------------------------------------------------------

class Problem:
    """One model: the float32 model, its two int8 quantizations, its timing rows,
    and the reference outputs (computed once per batch)."""

    def __init__(self, tag):
        self.sizes = sizes = Q.parse_sizes(tag)
        self.side = Q.FastwbSide(sizes)                    # the float model alone (no quantizer given)
        self.model = self.side.model
        self.X = Q.timing_rows(sizes[0], max(MODELS[tag]))
        self.q = {name: quantize_dynamic(self.model, **kw) for name, kw in FASTWB.items() if kw is not None}
        self.twin = twin.quantize_dynamic(self.model)     # the twin of the defaults: the timed baseline
        self._twins = {self.twin.reduce_range: self.twin}
        self._twin_out, self._f64 = {}, {}

    def x(self, b):
        return np.ascontiguousarray(self.X[:b])

    def call(self, name, b):
        """Contender ``name`` on the first ``b`` rows, as a function of nothing."""
        x = self.x(b)
        if name == "fastwb f32":
            return lambda: self.model.logits(x)
        if name == TWIN:
            return lambda: self.twin.logits(x)
        q = self.q[name]
        return lambda: q.logits(x)

    def twin_logits(self, b, reduce_range):
        """The twin's output at batch ``b`` with that activation width (per-channel
        weights, as both fastwb int8 contenders), computed once."""
        key = (b, bool(reduce_range))
        if key not in self._twin_out:
            t = self._twins.get(bool(reduce_range))
            if t is None:
                t = self._twins[bool(reduce_range)] = twin.quantize_dynamic(self.model, reduce_range=bool(reduce_range))
            self._twin_out[key] = t.logits(self.x(b))
        return self._twin_out[key]

    def float64_logits(self, b):
        """A float64 NumPy forward pass of the float model's weights (Linear, ReLU)."""
        if b not in self._f64:
            y = self.x(b).astype(np.float64)
            weights = B.mlp_weights(self.model)
            for i, (W, bias) in enumerate(weights):
                y = y @ W.astype(np.float64) + bias
                if i < len(weights) - 1:
                    y = np.maximum(y, 0)
            self._f64[b] = y
        return self._f64[b]

    def check(self, name, b, out):
        """Fail unless ``out`` (contender ``name``'s output at batch ``b``) is right."""
        assert out.shape == (b, self.sizes[-1]) and out.dtype == np.float32, f"{name}: {out.shape} {out.dtype}"
        if name == "fastwb f32":
            ref = self.float64_logits(b)
            np.testing.assert_allclose(out, ref, rtol=F32_RTOL, atol=F32_ATOL * np.abs(ref).max())
        elif name == TWIN:
            assert np.array_equal(out, self.q["fastwb int8"].logits(self.x(b))), "the twin differs from fastwb int8"
        else:
            q = self.q[name]
            assert np.array_equal(out, self.twin_logits(b, q.reduce_range)), \
                f"{name} (reduce_range={q.reduce_range}, path {q.path}) differs from the NumPy twin"


# -- the peers, each in a process of its own ------------------------------------------------------

# "run TAG B CALLS NAME...": CALLS calls of contender NAME at batch B of model TAG;
# "save TAG B PATH NAME...": one call's output into PATH (.npy).  One JSON line each.
_WORKER = Q.WORKER_START + r"""
import numpy as np
calls = {}
for line in sys.stdin:
    cmd, tag, b, arg, *name = line.split()
    key = (tag, int(b))
    if key not in calls:
        calls[key] = peer.calls(tag, np.ascontiguousarray(peer.data[tag]["X"][:int(b)]))
    fn = calls[key][" ".join(name)]
    if cmd == "run":
        for _ in range(int(arg)):
            fn()
    elif cmd == "save":
        np.save(arg, np.asarray(fn(), np.float32))
    print(json.dumps({"done": True}), flush=True)
"""


class Peers:
    """The peers' processes, started on first use, on the models of ``tags``
    (their data written once into a temporary folder by ``quantize.peer_data``)."""

    def __init__(self, problem, tags):
        self.problem, self.tags = problem, tags
        self.stack = contextlib.ExitStack()
        self.dir = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="fastwb-bench-quantize-"))
        self.workers, self.checked, self.written = {}, set(), False

    def worker(self, kind):
        """The worker of peer ``kind``; skips the test when the peer is not installed
        and fails it when its process did not start."""
        if kind not in self.workers:
            _, modules, install = PEERS[kind]
            missing = B._importable(*modules)
            if missing:
                self.workers[kind] = ("skip", f"{' and '.join(missing)} not installed (pip install {install})")
            else:
                try:
                    self.workers[kind] = self.stack.enter_context(self._start(kind))
                except RuntimeError as e:
                    self.workers[kind] = ("fail", f"the {kind} process failed: {e}")
        w = self.workers[kind]
        if isinstance(w, tuple):
            (pytest.skip if w[0] == "skip" else pytest.fail)(w[1])
        return w

    def _start(self, kind):
        if not self.written:
            for tag in self.tags:
                p = self.problem(tag)
                Q.peer_data(self.dir, tag, p.side, p.X, Q.drift_sets(p.X.shape[1]))
            self.written = True
        config = {"dir": self.dir, "tags": list(self.tags), "batches": [], "threads": fastwb.get_num_threads(),
                  "per_channel": False, "here": os.path.dirname(os.path.abspath(__file__))}
        script = f"import sys; sys.argv[1:] = [{kind!r}, {json.dumps(config)!r}]\n" + _WORKER
        return B._Worker(script, timeout=900).ready()

    def check(self, kind, tag, b, name):
        """Fail unless the peer's output at batch ``b`` is right (once per contender)."""
        key = (kind, tag, b, name)
        if key in self.checked:
            return
        path = os.path.join(self.dir, "out.npy")
        self.worker(kind).ask(f"save {tag} {b} {path} {name}")
        out = np.load(path)
        ref = self.problem(tag).float64_logits(b)
        scale = np.abs(ref).max()
        assert out.shape == ref.shape, f"{name}: shape {out.shape}, expected {ref.shape}"
        if name.endswith("f32"):
            np.testing.assert_allclose(out, ref, rtol=F32_RTOL, atol=F32_ATOL * scale, err_msg=name)
        else:
            err = float(np.abs(out - ref).max())
            assert err <= INT8_SANITY * scale, f"{name}: largest |int8 - float| {err:.3g} against |logits| {scale:.3g}"
        self.checked.add(key)


@pytest.fixture(scope="module")
def problem():
    made = {}

    def get(tag):
        if tag not in made:
            made[tag] = Problem(tag)
        return made[tag]
    return get


@pytest.fixture(scope="module")
def peers(request, problem):
    quick = request.config.getoption("quick")
    p = Peers(problem, [t for t in MODELS if not (quick and t == BIG)])
    with p.stack:
        yield p


def _rounds(config):
    """ROUNDS (at least ``--benchmark-min-rounds``), or that option alone under ``--quick``."""
    least = config.getoption("benchmark_min_rounds")
    return least if config.getoption("quick") else max(ROUNDS, least)


@pytest.mark.parametrize("tag,b,name", _cases())
def test_quantize(benchmark, request, problem, tag, b, name):
    if tag == BIG and request.config.getoption("quick"):
        pytest.skip(f"--quick leaves {BIG} out")
    calls = CALLS[tag, b]
    benchmark.group = (f"quantize {tag} f32 ReLU b{b}, {calls} call{'s' * (calls > 1)} per round: fastwb f32 and "
                       "int8, NumPy twin, PyTorch and ONNX Runtime (each in its own process)")
    kind = next((k for k, (names, _, _) in PEERS.items() if name in names), None)
    if kind is not None:
        peers = request.getfixturevalue("peers")
        peers.check(kind, tag, b, name)              # skips without the peer
        worker, line = peers.worker(kind), f"run {tag} {b} {calls} {name}"

        def run():
            worker.ask(line)
        run()                                        # warm up
    else:
        p = problem(tag)
        fn = p.call(name, b)
        p.check(name, b, fn())                       # the result first; also the warm-up

        def run():
            for _ in range(calls):
                fn()
    benchmark.pedantic(run, rounds=_rounds(request.config), iterations=1)
