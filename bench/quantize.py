"""int8 dynamic quantization (issue 13): fastwb's quantized inference against its
own float32 inference, PyTorch's and ONNX Runtime's dynamic quantization.

    python bench/quantize.py [--quick] [--models 784-256-10,4096-4096-4096-10] [--batches 1,32,128,1024]
                             [--threads N] [--repeats N] [--rounds R] [--per-channel] [--mnist [PATH]]
                             [--no-torch] [--no-ort] [--json PATH]
    python bench/quantize.py --gemm [--threads N] [--repeats N]

Two float32 MLPs with ReLU hidden layers and untrained weights
(``fastwb.nn.Sequential(Linear(784, 256), ReLU(), Linear(256, 10), rng=0)``
and 4096-4096-4096-10 the same way), at batch 1, 32, 128 and 1024:

- fastwb float32: ``model.eval(); model.logits(X)``;
- fastwb int8: ``q = fastwb.quantize.quantize_dynamic(model)`` (its defaults:
  per-channel weights, ``reduce_range=None``), ``q.logits(X)``; the report
  gives ``q.path`` (the kernel path) and ``q.nbytes`` against the float
  model's Linear weight bytes;
- fastwb int8 8-bit: ``quantize_dynamic(model, reduce_range=False)``, 8-bit
  activations whatever the kernel path (the default, ``None``, takes 7-bit ones
  on the avx2 path: ``fastwb.quantize.auto_reduce_range``), for information;
- PyTorch float32 and ``torch.ao.quantization.quantize_dynamic(net,
  {torch.nn.Linear}, dtype=torch.qint8)`` (its defaults: per-tensor weights,
  the default quantized engine), same weights, ``eval()``, under
  ``torch.inference_mode()``;
- ONNX Runtime float32 (the graph of ``model.export_onnx``) and
  ``onnxruntime.quantization.quantize_dynamic(..., weight_type=QuantType.QInt8)``
  (per-tensor weights by default, per-channel with ``--per-channel``); sessions
  with ``intra_op_num_threads`` = threads, ``inter_op_num_threads`` = 1,
  sequential execution, otherwise ORT's defaults.

Every contender runs at the same thread count (``--threads``, default 2:
``fastwb.set_num_threads``, ``torch.set_num_threads``, ORT's
``intra_op_num_threads``).  fastwb runs in this process; PyTorch and ONNX
Runtime each in a fresh process of their own every round
(``fastwb.benchmark._Worker``: PyTorch shares the system libgomp with fastwb,
whose passive wait policy would slow it), the order of the three sides
rotating from round to round.  Within a side its two contenders (float32 and
int8) are timed interleaved in rotating order (``fastwb.benchmark.interleaved``).
A ratio is the median over rounds of the round's ratio (paired within one
process, else the ratio of the two medians), the spread its smallest and
largest round.

Targets: fastwb int8 >= 5x faster than fastwb float32 for 4096-4096-4096-10
at batch 128, >= 2.5x for 784-256-10 at batch 128; fastwb int8 faster than
PyTorch int8 and ONNX Runtime int8 at every batch and model; fastwb's logit
drift no larger than ONNX Runtime's.  For information: each peer's own
float32 / int8 speedup, and fastwb's 8-bit model against its float32 and
against PyTorch's int8 model.

Logit drift: on the same weights and the same inputs, the largest
|logits(int8) - logits(float32)| of each contender against its own float32
logits (fastwb per-channel and per-tensor, PyTorch, ONNX Runtime), with the
share of rows whose top class is unchanged; inputs: 256 rows of N(0, 1), and
for 784-input models the 10,000 MNIST test rows (scaled to [0, 1] as ``fastwb
train`` loads them) when found (``--mnist PATH``, ``$FASTWB_MNIST`` or
``../shared/data/mnist``), in calls of 256 rows (dynamic quantization takes
its activation range per call).  Each peer's float32 logits are checked
against fastwb's (same weights).

``--gemm``: the int8 GEMM alone at 1024 x 4096 x 4096, in TOPS, against the
peak cores x GHz x int8 ops per cycle of the kernel path (:func:`gemm_tops`).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

import fastwb
from fastwb import benchmark as B
from fastwb import nn

MODELS = ("784-256-10", "4096-4096-4096-10")
BATCHES = (1, 32, 128, 1024)
THREADS = 2
SPEEDUP_TARGETS = {"4096-4096-4096-10": (128, 5.0), "784-256-10": (128, 2.5)}   # model: (batch, f32 / int8)
PEER_TARGET = 1.0                      # peer int8 time / fastwb int8 time, more than
TARGET_S = 0.01                        # consecutive calls per timed batch: ~10 ms of them
DRIFT_ROWS = 256                       # rows of N(0, 1) for the logit drift
DRIFT_CHUNK = 256                      # rows per call in the drift runs
FULL = {"repeats": 5, "rounds": 5}
QUICK = {"repeats": 3, "rounds": 2}

SIDES = {"fastwb": ("fastwb f32", "fastwb int8", "fastwb int8 8-bit"), "torch": ("PyTorch f32", "PyTorch int8"),
         "ort": ("ORT f32", "ORT int8")}
NAMES = sum(SIDES.values(), ())
UNAVAILABLE = "fastwb.quantize not available yet"


# -- the models and the data --------------------------------------------------------------------

def parse_sizes(spec):
    """``"784-256-10"`` -> ``(784, 256, 10)``."""
    try:
        sizes = tuple(int(s) for s in spec.split("-"))
    except ValueError:
        raise ValueError(f"a model is layer sizes joined by '-', like 784-256-10; got {spec!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"a model needs at least two sizes >= 1, like 784-256-10; got {spec!r}")
    return sizes


def build_model(sizes, seed=0):
    """Linear -> ReLU -> ... -> Linear of ``sizes``, float32, untrained (``rng=seed``), eval mode."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers, dtype="float32", rng=seed).eval()


def linear_weight_bytes(model):
    """Bytes of the float model's Linear weight matrices (biases left out)."""
    return int(sum(W.nbytes for W, _ in B.mlp_weights(model)))


def timing_rows(n_in, rows, seed=1):
    """The timed inputs: ``rows`` x ``n_in`` of N(0, 1), float32 (a batch b is the first b rows)."""
    return np.random.default_rng(seed).standard_normal((rows, n_in)).astype(np.float32)


def default_mnist_folder():
    """``$FASTWB_MNIST``, else ``../shared/data/mnist`` beside the repository."""
    from fastwb import datasets

    return os.environ.get(datasets.MNIST_ENV) or os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))


def load_mnist_test(path):
    """The MNIST test rows (10000 x 784, [0, 1], float32) from ``path`` through
    :func:`fastwb.datasets.load_mnist`."""
    from fastwb import datasets

    X, _ = datasets.load_mnist(path, "test", np.float32, name="mnist")
    return np.ascontiguousarray(X)


def drift_sets(n_in, mnist=None, seed=2):
    """``{name: rows}``: DRIFT_ROWS rows of N(0, 1), and the MNIST test rows when
    given and the model takes 784 features."""
    sets = {"N(0,1)": np.random.default_rng(seed).standard_normal((DRIFT_ROWS, n_in)).astype(np.float32)}
    if mnist is not None and n_in == mnist.shape[1]:
        sets["MNIST test"] = mnist
    return sets


def chunked(fn, X, chunk=DRIFT_CHUNK):
    """``fn`` over X in calls of ``chunk`` rows, the outputs stacked (float64)."""
    return np.concatenate([np.asarray(fn(np.ascontiguousarray(X[s:s + chunk])), np.float64)
                           for s in range(0, len(X), chunk)])


def drift(reference, quantized):
    """``{"max": largest |quantized - reference|, "top1": share of rows with the same
    top class, "scale": largest |reference|}`` of two logit arrays."""
    return {"max": float(np.max(np.abs(quantized - reference))),
            "top1": float(np.mean(np.argmax(quantized, 1) == np.argmax(reference, 1))),
            "scale": float(np.max(np.abs(reference)))}


# -- fastwb, in this process ----------------------------------------------------------------------

def quantizer():
    """``(fastwb.quantize.quantize_dynamic, None)``, or ``(None, why)`` while the
    module does not exist or cannot be imported."""
    try:
        from fastwb.quantize import quantize_dynamic
    except ImportError as e:
        return None, f"{UNAVAILABLE} ({e})"
    return quantize_dynamic, None


class FastwbSide:
    """One model's fastwb contenders: the float model, its int8 quantization
    (defaults: per-channel weights, the activation width of the kernel path),
    the 8-bit one (``reduce_range=False``) and, for the drift, the per-tensor
    one."""

    def __init__(self, sizes, quantize_dynamic=None):
        self.sizes = sizes
        self.model = build_model(sizes)
        self.q = self.q_tensor = self.q8 = None
        if quantize_dynamic is not None:
            self.q = quantize_dynamic(self.model)
            self.q_tensor = quantize_dynamic(self.model, per_channel=False)
            self.q8 = quantize_dynamic(self.model, reduce_range=False)

    def info(self):
        """The quantized model's kernel path and size against the float weights."""
        out = {"float_weight_bytes": linear_weight_bytes(self.model)}
        if self.q is not None:
            out.update(path=self.q.path, nbytes=self.q.nbytes, reduce_range=self.q.reduce_range)
        return out

    def calls(self, X):
        """``{name: fn}`` on the batch X."""
        out = {"fastwb f32": lambda: self.model.logits(X)}
        if self.q is not None:
            out["fastwb int8"] = lambda: self.q.logits(X)
            out["fastwb int8 8-bit"] = lambda: self.q8.logits(X)
        return out

    def drift(self, sets):
        """``{set: {contender: drift}}`` against the float model's logits."""
        out = {}
        for name, X in sets.items():
            ref = chunked(self.model.logits, X)
            out[name] = {}
            if self.q is not None:
                out[name]["fastwb int8"] = drift(ref, chunked(self.q.logits, X))
                out[name]["fastwb int8 per-tensor"] = drift(ref, chunked(self.q_tensor.logits, X))
                out[name]["fastwb int8 8-bit"] = drift(ref, chunked(self.q8.logits, X))
        return out


def side_times(tag, calls_at, batches, X, repeats, target_s=TARGET_S):
    """One side's contenders at each batch, interleaved per batch: ``{"TAG bB NAME":
    [seconds per call, one per repetition]}``; ``calls_at(x)`` gives ``{NAME: fn}``."""
    out = {}
    for b in batches:
        x = np.ascontiguousarray(X[:b])
        for name, ts in B.interleaved(calls_at(x), repeats, target_s).items():
            out[f"{tag} b{b} {name}"] = ts.tolist()
    return out


# -- the peers, each in a process of its own ------------------------------------------------------

def peer_data(tmp, tag, side, X, sets):
    """Write what a peer's process needs for one model into ``tmp``: ``TAG.npz``
    (the weights W0, b0, ... stored (in, out), the timed rows, the drift sets
    and fastwb's float32 logits on them) and, when ONNX is installed, the float
    graph ``TAG.onnx`` (``model.export_onnx``)."""
    weights = B.mlp_weights(side.model)
    arrays = {"layers": len(weights), "X": X, "sets": np.array(list(sets))}
    for i, (W, b) in enumerate(weights):
        arrays[f"W{i}"], arrays[f"b{i}"] = W, b
    for i, (name, rows) in enumerate(sets.items()):
        arrays[f"set{i}"] = rows
        arrays[f"ref{i}"] = chunked(side.model.logits, rows).astype(np.float32)
    np.savez(os.path.join(tmp, f"{tag}.npz"), **arrays)
    if not B._importable("onnx"):
        side.model.export_onnx(os.path.join(tmp, f"{tag}.onnx"))


class _Peer:
    """What both peers share: the data of each model, the timing and the drift.
    ``config``: ``{"dir", "tags", "batches", "threads", "per_channel"}``."""

    names = ()

    def __init__(self, config):
        self.config = config
        self.data = {}
        for tag in config["tags"]:
            with np.load(os.path.join(config["dir"], f"{tag}.npz")) as z:
                self.data[tag] = {k: z[k] for k in z.files}

    def times(self, repeats, target_s):
        out = {}
        for tag in self.config["tags"]:
            out.update(side_times(tag, lambda x, tag=tag: self.calls(tag, x), self.config["batches"],
                                  self.data[tag]["X"], repeats, target_s))
        return out

    def drift(self):
        """``{tag: {set: {"PEER int8": drift, "PEER f32 vs fastwb f32": largest |diff|}}}``."""
        f32, int8 = self.names
        out = {}
        for tag, d in self.data.items():
            out[tag] = {}
            def run(name, x, tag=tag):
                return self.calls(tag, x)[name]()
            for i, name in enumerate(d["sets"].tolist()):
                rows = d[f"set{i}"]
                ref = chunked(lambda x: run(f32, x), rows)
                out[tag][name] = {int8: drift(ref, chunked(lambda x: run(int8, x), rows)),
                                  f"{f32} vs fastwb f32": float(np.max(np.abs(ref - d[f"ref{i}"])))}
        return out


class TorchPeer(_Peer):
    """PyTorch's float32 nets (the same weights) and their
    ``torch.ao.quantization.quantize_dynamic`` (qint8, its defaults)."""

    names = SIDES["torch"]

    def __init__(self, config):
        import torch

        super().__init__(config)
        torch.set_num_threads(config["threads"])
        self.nets = {}
        for tag, d in self.data.items():
            layers = []
            for i in range(int(d["layers"])):
                W, b = d[f"W{i}"], d[f"b{i}"]
                lin = torch.nn.Linear(*W.shape)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                    lin.bias.copy_(torch.from_numpy(b))
                layers += [lin] + ([torch.nn.ReLU()] if i < int(d["layers"]) - 1 else [])
            net = torch.nn.Sequential(*layers).eval()
            qnet = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
            self.nets[tag] = (net, qnet)
        self.info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                     "engine": torch.backends.quantized.engine}

    def calls(self, tag, x):
        import torch

        tx = torch.from_numpy(x)
        net, qnet = self.nets[tag]

        def run(m):
            def call():
                with torch.inference_mode():
                    return m(tx).numpy()
            return call
        return {"PyTorch f32": run(net), "PyTorch int8": run(qnet)}


class OrtPeer(_Peer):
    """ONNX Runtime sessions of the float graph and of its
    ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights; per-channel
    when ``config["per_channel"]``), written once into the data folder."""

    names = SIDES["ort"]

    def __init__(self, config):
        import onnxruntime as ort

        super().__init__(config)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = config["threads"]
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sessions, seconds = {}, 0.0
        for tag in config["tags"]:
            f32 = os.path.join(config["dir"], f"{tag}.onnx")
            int8 = os.path.join(config["dir"], f"{tag}.{'channel' if config['per_channel'] else 'tensor'}.int8.onnx")
            if not os.path.exists(int8):
                from onnxruntime.quantization import QuantType, quantize_dynamic

                t0 = time.perf_counter()
                quantize_dynamic(f32, int8, weight_type=QuantType.QInt8, per_channel=config["per_channel"])
                seconds += time.perf_counter() - t0
            self.sessions[tag] = tuple(ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
                                       for p in (f32, int8))
        self.info = {"onnxruntime": ort.__version__, "threads": config["threads"],
                     "per_channel": config["per_channel"], "quantize_seconds": seconds}

    def calls(self, tag, x):
        s32, s8 = self.sessions[tag]
        return {"ORT f32": lambda: s32.run(None, {"x": x})[0], "ORT int8": lambda: s8.run(None, {"x": x})[0]}


# The start of a peer worker: PyTorch or ONNX Runtime imported first, the peer
# built on the models of ``config``, its "ready" line printed (bench/test_bench_quantize.py
# adds its own commands after it).
WORKER_START = r"""
import json, sys
which, config = sys.argv[1], json.loads(sys.argv[2])
if which == "torch":
    import torch                    # first: PyTorch loads the OpenMP runtime with its own defaults
    torch.set_num_threads(config["threads"])
else:
    import onnxruntime
sys.path.insert(0, config["here"])
import quantize as Q
peer = (Q.TorchPeer if which == "torch" else Q.OrtPeer)(config)
print(json.dumps({"ready": True, **peer.info}), flush=True)
"""

# Answers one JSON line per command: "time REPEATS TARGET_S" (the peer's contenders
# at every model and batch), "drift" (its int8 logits against its float32 ones).
_WORKER = WORKER_START + r"""
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "time":
        print(json.dumps(peer.times(int(args[0]), float(args[1]))), flush=True)
    elif cmd == "drift":
        print(json.dumps(peer.drift()), flush=True)
"""


def peer_worker(which, config):
    """A fresh interpreter (``fastwb.benchmark._Worker``, from a neutral folder)
    holding peer ``which`` ("torch" or "ort") on the models of ``config``, its
    "ready" line in ``.info``.  A context manager: leaving it ends the process."""
    config = dict(config, here=os.path.dirname(os.path.abspath(__file__)))
    worker = B._Worker(f"import sys; sys.argv[1:] = [{which!r}, {json.dumps(config)!r}]\n" + _WORKER, timeout=900)
    return worker.ready()


# -- the measurement ----------------------------------------------------------------------------

def ratio_specs(tags, batches):
    """``(label, numerator, denominator, target or None, paired)`` per model and batch."""
    out = []
    for tag in tags:
        goal = SPEEDUP_TARGETS.get(tag)
        for b in batches:
            k = f"{tag} b{b}"
            out += [(f"{k}: fastwb f32 / fastwb int8", f"{k} fastwb f32", f"{k} fastwb int8",
                     goal[1] if goal and goal[0] == b else None, True),
                    (f"{k}: PyTorch int8 / fastwb int8", f"{k} PyTorch int8", f"{k} fastwb int8", PEER_TARGET, False),
                    (f"{k}: ORT int8 / fastwb int8", f"{k} ORT int8", f"{k} fastwb int8", PEER_TARGET, False),
                    (f"{k}: PyTorch int8 / fastwb int8 8-bit", f"{k} PyTorch int8", f"{k} fastwb int8 8-bit", None,
                     False),
                    (f"{k}: fastwb f32 / fastwb int8 8-bit", f"{k} fastwb f32", f"{k} fastwb int8 8-bit", None, True),
                    (f"{k}: PyTorch f32 / PyTorch int8", f"{k} PyTorch f32", f"{k} PyTorch int8", None, True),
                    (f"{k}: ORT f32 / ORT int8", f"{k} ORT f32", f"{k} ORT int8", None, True)]
    return tuple(out)


def measure(models=MODELS, batches=BATCHES, repeats=FULL["repeats"], rounds=FULL["rounds"], threads=THREADS,
            torch=True, ort=True, per_channel=False, mnist=None, say=lambda *a: None):
    """Time every contender ``rounds`` times and measure the logit drift (see the
    module's docstring).  ``mnist``: the MNIST test rows, or None.

    Returns ``{"models", "batches", "threads", "rounds", "repeats", "cpu", "cores",
    "load": (before, after), "fastwb_int8": None or why it is missing,
    "quantized": {model: {"path", "nbytes", "float_weight_bytes"}}, "peers":
    {peer: its process's versions and settings}, "skipped": {peer: why},
    "drift": {model: {set: {contender: {"max", "top1", "scale"} or a float}}},
    "seconds": {"MODEL bB NAME": [round median, ...]}, "ratios": {label:
    [round ratio, ...]}}``."""
    tags = ["-".join(map(str, parse_sizes(m))) for m in models]
    report = {"models": tags, "batches": list(batches), "threads": threads, "rounds": rounds, "repeats": repeats,
              "cpu": B.cpu_name(), "cores": os.cpu_count(), "fastwb_int8": None, "quantized": {}, "peers": {},
              "skipped": {}, "drift": {}, "seconds": {}, "ratios": {}, "per_channel_ort": per_channel,
              "mnist_rows": 0 if mnist is None else len(mnist)}
    load_before = B.load_average()
    quantize_dynamic, why = quantizer()
    report["fastwb_int8"] = why
    peers = []
    for peer, wanted, modules, install in (("torch", torch, ("torch",), "torch"),
                                           ("ort", ort, ("onnxruntime", "onnx"), "onnxruntime onnx")):
        missing = B._importable(*modules)
        if not wanted:
            report["skipped"][peer] = "not asked for"
        elif missing:
            report["skipped"][peer] = f"{' and '.join(missing)} not installed (pip install {install})"
        else:
            peers.append(peer)
    ratios = ratio_specs(tags, batches)
    with tempfile.TemporaryDirectory(prefix="fastwb-quantize-") as tmp, fastwb.threads(threads):
        sides, rows = {}, {}
        for tag in tags:
            say(f"{tag}: building the fastwb models" + ("" if quantize_dynamic is None else " and quantizing"))
            sizes = parse_sizes(tag)
            sides[tag] = side = FastwbSide(sizes, quantize_dynamic)
            rows[tag] = timing_rows(sizes[0], max(batches))
            sets = drift_sets(sizes[0], mnist)
            report["quantized"][tag] = side.info()
            report["drift"][tag] = side.drift(sets)
            peer_data(tmp, tag, side, rows[tag], sets)
        config = {"dir": tmp, "tags": tags, "batches": list(batches), "threads": threads, "per_channel": per_channel}
        order = peers + ["fastwb"]
        for r in range(rounds):
            got = {}
            for which in order[r % len(order):] + order[:r % len(order)]:
                if which == "fastwb":
                    say(f"round {r + 1}/{rounds}: fastwb in this process")
                    for tag in tags:
                        got.update(side_times(tag, sides[tag].calls, batches, rows[tag], repeats))
                    continue
                if which in report["skipped"]:
                    continue
                say(f"round {r + 1}/{rounds}: {'PyTorch' if which == 'torch' else 'ONNX Runtime'} in a fresh process")
                try:
                    with peer_worker(which, config) as worker:
                        info = {k: v for k, v in worker.info.items() if k != "ready"}
                        if which not in report["peers"]:
                            report["peers"][which] = info
                            for tag, sets in worker.ask("drift").items():
                                for name, d in sets.items():
                                    report["drift"][tag][name].update(d)
                        got.update(worker.ask(f"time {repeats} {TARGET_S}"))
                except RuntimeError as e:
                    report["skipped"][which] = f"its process failed: {e}"
            B.record_round(report, got, ratios)
    report["load"] = (load_before, B.load_average())
    return report


def drift_verdicts(report):
    """``(label, ORT drift / fastwb drift, same, same, 1.0, met)`` per model and
    drift set (met: fastwb's drift no larger than ORT's), in the form of
    :func:`fastwb.benchmark.ratio_verdicts` for :func:`fastwb.benchmark.targets_line`."""
    out = []
    for tag, sets in report["drift"].items():
        for name, d in sets.items():
            if "fastwb int8" in d and "ORT int8" in d:
                mine, theirs = d["fastwb int8"]["max"], d["ORT int8"]["max"]
                r = theirs / mine if mine > 0 else float("inf")
                out.append((f"{tag} {name}: drift ORT int8 / fastwb int8", r, r, r, 1.0, mine <= theirs))
    return out


def lines(report):
    """The report as text lines: the times, the ratios with their spread and
    targets, the quantized models, the drift, the targets line."""
    t = report["threads"]
    load = report.get("load") or (None, None)
    peers = report["peers"]
    names = []
    if "torch" in peers:
        p = peers["torch"]
        names.append(f"PyTorch {p['torch']} (quantized engine {p['engine']})")
    if "ort" in peers:
        p = peers["ort"]
        names.append(f"ONNX Runtime {p['onnxruntime']} ({'per-channel' if p['per_channel'] else 'per-tensor'} "
                     f"int8 weights)")
    head = (f"int8 dynamic quantization, float32 MLPs with ReLU, untrained weights ({report['cpu']}, "
            f"{report['cores']} CPUs; {t} thread{'s' * (t > 1)} each; load average {B._load_fmt(load[0])} before, "
            f"{B._load_fmt(load[1])} after; {report['rounds']} round{'s' * (report['rounds'] > 1)} of "
            f"{report['repeats']} interleaved repetitions; fastwb in this process, "
            f"{', '.join(names) or 'no peer'} each in a fresh process of its own every round)")
    out = [head, ""]
    rows = [["model, batch (median s/call)"] + list(NAMES)]
    for tag in report["models"]:
        for b in report["batches"]:
            cells = []
            for name in NAMES:
                s = report["seconds"].get(f"{tag} b{b} {name}")
                cells.append(B._fmt_time(float(np.median(s))) if s else "-")
            rows.append([f"{tag} b{b}"] + cells)
    out += B._text_table(rows, 28, 18)
    out.append("")
    verdicts = B.ratio_verdicts(report, ratio_specs(report["models"], report["batches"]))
    out += B.verdict_lines(verdicts, 54)
    out.append("")
    for tag, q in report["quantized"].items():
        fb = q["float_weight_bytes"]
        if report["fastwb_int8"] is None:
            nb = q.get("nbytes")
            size = (f"{nb / 2**20:.2f} MiB, {nb / fb:.3f} of the float32 weights' {fb / 2**20:.2f} MiB"
                    if nb else f"unknown (float32 weights {fb / 2**20:.2f} MiB)")
            bits = {True: "7-bit", False: "8-bit"}.get(q.get("reduce_range"), "?")
            out.append(f"  fastwb int8 {tag}: kernel path {q.get('path')}, {bits} activations by default; "
                       f"q.nbytes {size}")
    if report["fastwb_int8"]:
        out.append(f"  fastwb int8: {report['fastwb_int8']}")
    out.append(f"  logit drift: largest |int8 - float32 logits| against the contender's own float32 logits, "
               f"calls of {DRIFT_CHUNK} rows; top-1: rows whose top class is unchanged; |logits|: largest float32 "
               "logit")
    for tag, sets in report["drift"].items():
        for name, d in sets.items():
            parts = []
            scale = None
            for key, v in d.items():
                if isinstance(v, dict):
                    scale = v["scale"]
                    parts.append(f"{key} {v['max']:.3g} (top-1 {100 * v['top1']:.2f}%)")
            checks = [f"{k} {v:.1e}" for k, v in d.items() if not isinstance(v, dict)]
            rows_n = report["mnist_rows"] if name == "MNIST test" else DRIFT_ROWS
            out.append(f"    {tag}, {rows_n} rows of {name}" + (f", |logits| <= {scale:.3g}" if scale else "")
                       + ": " + ("; ".join(parts) or "no int8 contender"))
            if checks:
                out.append("      same weights, float32 logits against fastwb's: " + "; ".join(checks))
    for peer, why in report["skipped"].items():
        out.append(f"  {'PyTorch' if peer == 'torch' else 'ONNX Runtime'} skipped: {why}")
    busy = [v for v in load if v is not None and v > report["cores"]]
    if busy:
        out.append(f"  WARNING: load average {max(busy):.2f} above the {report['cores']} CPUs: other processes took "
                   "cores from the contenders, and multi-threaded calls that wait for a descheduled thread (PyTorch's "
                   "above all) slow down by whole time slices; rerun on a quiet machine")
    dv = drift_verdicts(report)
    for label, r, _, _, _, met in dv:
        out.append(f"  {label}: {r:.2f}x  >= 1x {'ok' if met else 'MISSED'}")
    summary = B.targets_line(verdicts + dv)
    if summary:
        out.append(summary)
    return out


# -- the int8 GEMM alone ----------------------------------------------------------------------------

GEMM_SHAPE = (1024, 4096, 4096)                 # M, K, N
OPS_PER_CYCLE = {"avx512vnni": 256, "avxvnni": 128, "avx2": 64, "scalar": 2}   # int8 ops per cycle per core


def cpu_ghz():
    """The largest "cpu MHz" of /proc/cpuinfo, in GHz, or None."""
    try:
        with open("/proc/cpuinfo") as fh:
            mhz = [float(line.split(":", 1)[1]) for line in fh if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return None
    return max(mhz) / 1000 if mhz else None


def gemm_tops(args):
    """``--gemm``: the int8 GEMM at 1024 x 4096 x 4096 in TOPS (2 M K N ops per
    second) against the peak threads x GHz x int8 ops per cycle and core of
    the kernel path (OPS_PER_CYCLE; GHz: the largest "cpu MHz" of
    /proc/cpuinfo), beside NumPy's float32 GEMM of the same shape through the
    float model's ``logits``.  Returns the figures as a dict.

    FALLBACK MEASURE: this times ``q.logits`` of a single 4096 -> 4096 Linear
    (identity activation) at batch 1024, so it also counts the activation
    quantization, the bias and the float epilogue (a few MB against 34 GOP).
    Replace the timed call with fastwb._quant's GEMM-only benchmark
    (``gemm_bench(M, K, N, n_threads, repeats)`` or similar) once it exists."""
    M, K, N = GEMM_SHAPE
    threads = args.threads
    repeats = args.repeats or (3 if args.quick else 7)
    model = nn.Sequential(nn.Linear(K, N), nn.Identity(), dtype="float32", rng=0).eval()
    X = timing_rows(K, M)
    quantize_dynamic, why = quantizer()
    calls = {"float32 (NumPy BLAS)": lambda: model.logits(X)}
    q = None
    if quantize_dynamic is not None:
        q = quantize_dynamic(model)
        calls["int8"] = lambda: q.logits(X)                  # the fallback measure: see the docstring
    load = B.load_average()
    with fastwb.threads(threads):
        t = B.interleaved(calls, repeats, 0)
    ops = 2.0 * M * K * N
    ghz = cpu_ghz()
    out = {"shape": GEMM_SHAPE, "threads": threads, "repeats": repeats, "cpu": B.cpu_name(), "ghz": ghz,
           "load": (load, B.load_average()), "seconds": {k: float(np.median(v)) for k, v in t.items()},
           "fastwb_int8": why}
    print(f"GEMM {M} x {K} x {N} ({out['cpu']}; {threads} thread{'s' * (threads > 1)}; median of {repeats} "
          f"interleaved repetitions; load average {B._load_fmt(load)} before, {B._load_fmt(B.load_average())} after)")
    for name, s in out["seconds"].items():
        unit = "TOPS" if name == "int8" else "TFLOP/s"
        print(f"  {name:<22} {B._fmt_time(s):>12}  {ops / s / 1e12:.3f} {unit}")
    if q is None:
        print(f"  int8: {why}")
        return out
    path = getattr(q, "path", None)
    per_cycle = OPS_PER_CYCLE.get(path)
    out.update(path=path, tops=ops / out["seconds"]["int8"] / 1e12)
    if per_cycle and ghz:
        peak = threads * ghz * per_cycle / 1e3
        out["peak_tops"] = peak
        print(f"  peak: {threads} cores x {ghz:.2f} GHz x {per_cycle} int8 ops/cycle ({path}) = {peak:.3f} TOPS; "
              f"int8 reaches {out['tops'] / peak:.0%} of it")
    else:
        print(f"  peak: unknown (kernel path {path!r}, cpu MHz {ghz})")
    print(f"  int8 / float32 speedup on the GEMM: "
          f"{out['seconds']['float32 (NumPy BLAS)'] / out['seconds']['int8']:.2f}x")
    print("  (fallback measure: q.logits of one Linear layer, activation quantization and epilogue included)")
    return out


def write_json(path, report):
    """``report`` as JSON at ``path``, atomically (fastwb._io.atomic_open)."""
    from fastwb._io import atomic_open

    text = json.dumps(report, indent=1, default=str)
    with atomic_open(path, "w") as fh:
        fh.write(text)


def _csv(kind, parse):
    def convert(text):
        try:
            items = [parse(s.strip()) for s in text.split(",") if s.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not items:
            raise argparse.ArgumentTypeError(f"give at least one {kind}")
        return items
    return convert


def _batch(text):
    b = int(text)
    if b < 1:
        raise ValueError(f"a batch is at least 1, got {b}")
    return b


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=_csv("model", lambda s: "-".join(map(str, parse_sizes(s)))),
                    default=list(MODELS), help=f"comma-separated layer sizes (default {','.join(MODELS)})")
    ap.add_argument("--batches", type=_csv("batch", _batch), default=list(BATCHES),
                    help=f"comma-separated batch sizes (default {','.join(map(str, BATCHES))})")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"threads of every contender (default {THREADS})")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK['repeats']} repetitions and {QUICK['rounds']} rounds (default {FULL['repeats']} "
                         f"and {FULL['rounds']})")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repetitions per round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds, each peer in a fresh process every round")
    ap.add_argument("--per-channel", action="store_true", help="ONNX Runtime's quantize_dynamic with per_channel=True")
    ap.add_argument("--mnist", nargs="?", const="", default=None, metavar="PATH",
                    help="MNIST folder for the drift (default: $FASTWB_MNIST or ../shared/data/mnist when found)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out")
    ap.add_argument("--gemm", action="store_true", help="only the int8 GEMM at 1024 x 4096 x 4096, in TOPS")
    ap.add_argument("--json", metavar="PATH", help="also write the report as JSON (atomically)")
    args = ap.parse_args(argv)
    for name in ("threads", "repeats", "rounds"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name} must be at least 1")
    fastwb.set_num_threads(args.threads)
    if args.gemm:
        out = gemm_tops(args)
        if args.json:
            write_json(args.json, out)
        return 0
    mnist = None
    folder = args.mnist or default_mnist_folder()
    if any(parse_sizes(m)[0] == 784 for m in args.models):
        try:
            mnist = load_mnist_test(folder)
        except (FileNotFoundError, ValueError) as e:
            if args.mnist is not None:          # asked for: not finding it is an error
                ap.error(f"--mnist: {e}")
            print(f"  MNIST not used for the drift: {e}", file=sys.stderr)
    plan = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    report = measure(args.models, args.batches, args.repeats or plan["repeats"], args.rounds or plan["rounds"],
                     args.threads, torch=not args.no_torch, ort=not args.no_ort, per_channel=args.per_channel,
                     mnist=mnist, say=lambda m: print(f"  [{time.perf_counter() - t0:5.0f} s] {m}", file=sys.stderr,
                                                      flush=True))
    report["mnist_folder"] = folder if mnist is not None else None
    print("\n".join(lines(report)))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
