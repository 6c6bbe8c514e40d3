"""FGSM speed: ``fastwb.adversarial.fgsm`` against PyTorch, and the fused
perturbation step against its NumPy twin.

    python bench/adversarial.py [--rows N] [--repeats N] [--rounds R] [--pairs P] [--threads N]
                                [--no-torch] [--json PATH]

(a) FGSM on ROWS = 10,000 MNIST-shaped rows (784 features in [0, 1], float32)
    through a 784-256-10 ReLU network, eps 0.1, clipped to [0, 1]:
    ``fastwb.adversarial.fgsm(model, X, y, eps=0.1)`` (chunks of 1024 rows:
    one compiled forward + input-gradient-only backward each, then the fused
    ``perturb`` pass) against PyTorch doing the same as its users write it:
    the parameters ``requires_grad_(False)``, ``x.requires_grad_()``,
    ``loss = cross_entropy(net(x), y)``, ``loss.backward()``, then
    ``(x + eps * x.grad.sign()).clamp_(0, 1)`` under ``torch.no_grad()``
    (``x.grad`` reset each call, no copy of x: PyTorch's fastest form, the one
    the target is measured against; target: fastwb >= 3x faster).  For
    information also PyTorch as cleverhans' ``fast_gradient_method`` writes
    it (a detached copy of x each call, the step outside ``no_grad``),
    fastwb in one chunk of all rows, and the floor: the attack's four GEMMs
    alone (``X @ W1``, ``H @ W2``, ``G @ W2.T``, ``D @ W1.T``, 8.1 GFLOP, the
    two big ones 4 GFLOP each) in NumPy's BLAS at the same thread count, in a
    fresh process of their own.
(b) The perturbation step alone on the same 10,000 x 784 float32 arrays:
    ``fastwb.adversarial.perturb`` (one fused pass; NaN check in the pass)
    against the NumPy twin ``np.clip(X + eps * np.sign(g), 0, 1)``.
(c) Adversarial training: one step of ``fit(..., adversarial=dict(eps=0.1,
    ratio=0.5))`` (the clean pass with its input gradient, the FGSM example,
    the adversarial pass, one Adam update) against a standard step, 784-256-10
    batch 128 (target: the adversarial step within 2.2x, i.e. standard /
    adversarial >= 1 / 2.2).

fastwb runs in this process; PyTorch shares the system libgomp with fastwb,
whose passive wait policy would slow it, so it runs in a fresh process of its
own each round (``fastwb.benchmark._Worker``).  Every round times its
contenders interleaved in rotating order (``fastwb.benchmark.interleaved``);
a ratio is the median over rounds of the round's ratio of medians (paired
within a process), and the spread is its smallest and largest round.  Both
sides attack the same weights and data; the report gives the share of
elements on which their adversarial examples agree (a gradient component
whose rounding differs near zero can flip a sign).

Then (a') again call by call: fastwb's FGSM here and PyTorch's in its worker
alternately, 50 ms apart (so that neither's idle threads still spin during
the other's call), each pair's ratio taken; the rounds' halves run seconds
apart and carry the swings of a shared machine's load, the pairs do not.

The pytest-benchmark suite of the same contenders is bench/test_bench_adversarial.py.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

import fastwb
from fastwb import adversarial
from fastwb import benchmark as B
from fastwb.reference import adversarial as twin

ROWS = 10_000
SIZES = (784, 256, 10)
EPS = 0.1
BATCH = 1024                   # fastwb's default chunk
TARGET = 3.0                   # (a): PyTorch / fastwb, at least

FGSM_NAMES = ("fastwb fgsm", "fastwb fgsm one chunk", "PyTorch", "PyTorch cleverhans-style", "GEMMs alone")
STEP_NAMES = ("fastwb perturb", "NumPy perturb")


# -- the workloads ------------------------------------------------------------------------------

def data(rows=ROWS, seed=0):
    """MNIST-shaped rows: uniform pixels in [0, 1] (float32) and labels 0..9."""
    r = np.random.default_rng(seed)
    return r.random((rows, SIZES[0]), dtype=np.float32), r.integers(0, SIZES[-1], rows)


def fastwb_model(seed=0):
    """The 784-256-10 ReLU MLP, float32, He-initialised from ``seed``."""
    return fastwb.MLP(list(SIZES), dtype=np.float32, rng=seed)


def fastwb_contenders(rows=ROWS):
    """``{"fgsm": {name: fn}, "step": {name: fn}}``: fastwb's side of (a) and (b), and
    the NumPy twin of (b)."""
    X, y = data(rows)
    model = fastwb_model()
    g = model.input_gradient(X[:BATCH], y[:BATCH])
    G = np.resize(g, X.shape)           # a real gradient's signs, tiled over all rows
    out = np.empty_like(X)
    return {"fgsm": {"fastwb fgsm": lambda: adversarial.fgsm(model, X, y, eps=EPS),
                     "fastwb fgsm one chunk": lambda: adversarial.fgsm(model, X, y, eps=EPS, batch_size=rows)},
            "step": {"fastwb perturb": lambda: adversarial.perturb(X, G, EPS, out=out),
                     "NumPy perturb": lambda: twin.perturb(X, G, EPS)},
            "train": training_steps(X[:BATCH_TRAIN], y[:BATCH_TRAIN])}


BATCH_TRAIN = 128


def training_steps(X, y):
    """(c): a standard training step and an adversarial one (FGSM, ratio 0.5), each on
    its own model of the same weights, through the steps ``fit`` runs."""
    std, adv = fastwb_model(), fastwb_model()
    options = adv._adversarial_options(dict(attack="fgsm", eps=EPS, ratio=0.5))
    out = {}
    for name, m in (("standard step", std), ("adversarial step", adv)):
        m.compile("adam", lr=1e-3)
        Xc, yc = m._check_batch(X, y)
        ws = m._workspace(len(Xc))
        out[name] = ((lambda m=m, Xc=Xc, yc=yc, ws=ws: m._step(Xc, yc, ws)) if m is std else
                     (lambda m=m, Xc=Xc, yc=yc, ws=ws: m._adversarial_step(Xc, yc, ws, options)))
    return out


def torch_contenders(rows=ROWS):
    """PyTorch's side of (a) on the weights and data of :func:`fastwb_contenders`;
    each returns its adversarial examples (a tensor)."""
    import torch

    X, y = data(rows)
    net = fastwb_model().to_torch().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(X).requires_grad_()
    t = torch.from_numpy(np.asarray(y, np.int64))

    def fast():
        x.grad = None
        torch.nn.functional.cross_entropy(net(x), t).backward()
        with torch.no_grad():
            return (x + EPS * x.grad.sign()).clamp_(0, 1)

    base = torch.from_numpy(X)

    def cleverhans():
        xx = base.clone().detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(xx), t)
        loss.backward()
        adv = xx + EPS * xx.grad.sign()
        return torch.clamp(adv, 0, 1).detach()

    return {"fgsm": {"PyTorch": fast, "PyTorch cleverhans-style": cleverhans}, "step": {}}


def timed(contenders, repeats):
    """Each workload's contenders interleaved: ``{name: [seconds per call, one per repetition]}``."""
    out = {}
    for kind in ("fgsm", "step", "train"):
        if contenders.get(kind):
            out.update({k: v.tolist() for k, v in B.interleaved(contenders[kind], repeats, 0).items()})
    return out


# -- the GEMM floor, in a process of its own ----------------------------------------------------

# argv: threads, rows, repeats.  Prints {"GEMMs alone": [seconds per repetition]}.
_GEMMS = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
threads, rows, repeats = map(int, sys.argv[1:4])
r = np.random.default_rng(0)
X = r.random((rows, 784), dtype=np.float32)
W1 = r.standard_normal((784, 256)).astype(np.float32)
W2 = r.standard_normal((256, 10)).astype(np.float32)
H, Z, G = np.empty((rows, 256), np.float32), np.empty((rows, 10), np.float32), np.ones((rows, 10), np.float32)
D = np.empty((rows, 784), np.float32)
def run():
    np.matmul(X, W1, out=H); np.matmul(H, W2, out=Z); np.matmul(G, W2.T, out=H); np.matmul(H, W1.T, out=D)
with threadpool_limits(threads, user_api="blas"):
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
print(json.dumps({"GEMMs alone": times}))
"""


def gemm_floor(threads, rows=ROWS, repeats=15):
    """``{"GEMMs alone": [seconds]}`` from a fresh process, or ``{}`` when it fails."""
    got, _ = B._fresh_process(_GEMMS, [threads, rows, repeats])
    return got or {}


# -- PyTorch in a process of its own ------------------------------------------------------------

# Answers one JSON line per command: "time REPEATS" (the contenders interleaved),
# "run NAME K" (K calls of one contender, for pytest-benchmark), "once NAME" (one
# call and its time, for the alternating pairs), "compare PATH" (PyTorch's FGSM
# examples against fastwb's, saved at PATH as .npy).
_WORKER = r"""
import json, sys, time
import numpy as np
import torch                    # first: PyTorch loads the OpenMP runtime with its own defaults
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
import adversarial as T
contenders = T.torch_contenders(int(sys.argv[3]))
calls = {**contenders["fgsm"], **contenders["step"]}
print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "time":
        print(json.dumps(T.timed(contenders, int(args[0]))), flush=True)
    elif cmd == "run":
        fn = calls[" ".join(args[:-1])]
        for _ in range(int(args[-1])):
            fn()
        print(json.dumps({"done": True}), flush=True)
    elif cmd == "once":
        fn = calls[" ".join(args)]
        t0 = time.perf_counter()
        fn()
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    elif cmd == "compare":
        mine = np.load(args[0])
        print(json.dumps({name: T.agreement(fn().numpy(), mine) for name, fn in contenders["fgsm"].items()}),
              flush=True)
"""


def agreement(a, b):
    """``{"equal": share of equal elements, "max_diff": largest |a - b|}``."""
    return {"equal": float(np.mean(a == b)), "max_diff": float(np.max(np.abs(a.astype(np.float64) - b)))}


def torch_worker(threads, rows=ROWS):
    """A fresh interpreter holding the PyTorch contenders at ``threads`` threads
    (``fastwb.benchmark._Worker``, from a neutral folder), its "ready" line in
    ``.info``.  A context manager: leaving it ends the process."""
    here = os.path.dirname(os.path.abspath(__file__))
    worker = B._Worker(f"import sys; sys.argv[1:] = [{str(int(threads))!r}, {here!r}, {str(int(rows))!r}]\n"
                       + _WORKER, timeout=900)
    return worker.ready()


# -- the measurement ----------------------------------------------------------------------------

def measure(rows=ROWS, repeats=15, rounds=5, threads=None, torch=True, say=lambda *a: None):
    """(a) and (b), ``rounds`` times: PyTorch's contenders in a fresh process of
    its own (when ``torch`` and installed), then fastwb's and NumPy's here.

    Returns ``{"rows", "threads", "rounds", "repeats", "cpu", "load": (before,
    after), "torch": version or None, "skipped": why PyTorch is missing or None,
    "agreement": {PyTorch contender: {"equal", "max_diff"}}, "seconds": {name:
    [round median, ...]}, "ratios": {label: [round ratio, ...]}}``."""
    threads = threads or fastwb.get_num_threads()
    report = {"rows": rows, "threads": threads, "rounds": rounds, "repeats": repeats, "cpu": B.cpu_name(),
              "torch": None, "skipped": None, "agreement": {}, "seconds": {}, "ratios": {}}
    load_before = B.load_average()
    use_torch = torch
    if not torch:
        report["skipped"] = "not asked for (--no-torch)"
    elif B._importable("torch"):
        report["skipped"] = "PyTorch is not installed (pip install torch)"
        use_torch = False
    mine = fastwb_contenders(rows)
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "fastwb_fgsm.npy")
        with fastwb.threads(threads):
            np.save(reference, mine["fgsm"]["fastwb fgsm"]())
        for r in range(rounds):
            got = {}
            if use_torch:
                say(f"round {r + 1}/{rounds}: PyTorch in a fresh process")
                try:
                    with torch_worker(threads, rows) as worker:
                        report["torch"] = worker.info["torch"]
                        if not report["agreement"]:
                            report["agreement"] = worker.ask(f"compare {reference}")
                        got.update(worker.ask(f"time {repeats}"))
                except RuntimeError as e:
                    report["skipped"] = f"its process failed: {e}"
                    use_torch = False
            say(f"round {r + 1}/{rounds}: the GEMMs alone in a fresh process")
            got.update(gemm_floor(threads, rows, repeats))
            say(f"round {r + 1}/{rounds}: fastwb and NumPy in this process")
            with fastwb.threads(threads):
                got.update(timed(mine, repeats))
            record(report, got)
    report["load"] = (load_before, B.load_average())
    return report


PAUSE_S = 0.05          # between the calls of a pair: PyTorch's and NumPy's idle threads stop spinning


def alternating(pairs=30, threads=None, rows=ROWS, say=lambda *a: None):
    """FGSM call by call: fastwb's in this process and PyTorch's in its worker,
    alternately (the first of each pair alternates too), PAUSE_S apart; the
    ratio of each pair's times is immune to the slow swings of a shared
    machine's load.  Returns ``{"pairs", "fastwb": [s], "PyTorch": [s],
    "ratios": [PyTorch / fastwb per pair]}``, or None without PyTorch."""
    if B._importable("torch"):
        return None
    threads = threads or fastwb.get_num_threads()
    fn = fastwb_contenders(rows)["fgsm"]["fastwb fgsm"]
    out = {"pairs": pairs, "fastwb": [], "PyTorch": [], "ratios": []}
    say(f"{pairs} alternating pairs, PyTorch in a fresh process")
    with torch_worker(threads, rows) as worker, fastwb.threads(threads):
        fn()
        worker.ask("once PyTorch")
        for k in range(pairs):
            times = {}
            for side in (("fastwb", "PyTorch") if k % 2 == 0 else ("PyTorch", "fastwb")):
                time.sleep(PAUSE_S)
                if side == "fastwb":
                    t0 = time.perf_counter()
                    fn()
                    times[side] = time.perf_counter() - t0
                else:
                    times[side] = worker.ask("once PyTorch")["seconds"]
            for side, t in times.items():
                out[side].append(t)
            out["ratios"].append(times["PyTorch"] / times["fastwb"])
    return out


def alternating_lines(alt):
    """The alternating pairs as text lines."""
    q = lambda v: np.percentile(v, [25, 50, 75])      # noqa: E731
    f, t, r = q(alt["fastwb"]), q(alt["PyTorch"]), q(alt["ratios"])
    return [f"(a') FGSM call by call, {alt['pairs']} alternating pairs {PAUSE_S * 1000:.0f} ms apart (median, "
            "quartiles):",
            f"  fastwb fgsm {B._fmt_time(f[1])} ({B._fmt_time(f[0])}-{B._fmt_time(f[2])}), PyTorch "
            f"{B._fmt_time(t[1])} ({B._fmt_time(t[0])}-{B._fmt_time(t[2])}); PyTorch / fastwb per pair "
            f"{r[1]:.2f}x ({r[0]:.2f}x-{r[2]:.2f}x; min {min(alt['ratios']):.2f}x, max {max(alt['ratios']):.2f}x)"]


RATIOS = (  # label, numerator, denominator, target (None: for information), paired within one process
    ("(a) PyTorch / fastwb fgsm", "PyTorch", "fastwb fgsm", TARGET, False),
    ("(a) PyTorch cleverhans-style / fastwb fgsm", "PyTorch cleverhans-style", "fastwb fgsm", None, False),
    ("(a) fastwb one chunk / fastwb fgsm", "fastwb fgsm one chunk", "fastwb fgsm", None, True),
    ("(a) GEMMs alone / fastwb fgsm", "GEMMs alone", "fastwb fgsm", None, False),
    ("(a) GEMMs alone / PyTorch", "GEMMs alone", "PyTorch", None, False),
    ("(b) NumPy perturb / fastwb perturb", "NumPy perturb", "fastwb perturb", None, True),
    ("(c) standard step / adversarial step", "standard step", "adversarial step", 1 / 2.2, True),
)


def record(report, got):
    """One round's times into the report (fastwb.benchmark.record_round)."""
    B.record_round(report, got, RATIOS)


def verdicts(report):
    """``(label, median, smallest, largest, target, met)`` per ratio (fastwb.benchmark.ratio_verdicts)."""
    return B.ratio_verdicts(report, RATIOS)


def lines(report):
    """The report as text lines: the medians, the ratios with their spread and targets."""
    t = report["threads"]
    load = report.get("load") or (None, None)
    peer = f"PyTorch {report['torch']}" if report.get("torch") else "PyTorch"
    out = [f"FGSM, float32, eps {EPS:g} ({report['cpu']}; {t} thread{'s' * (t > 1)}; load average "
           f"{B._load_fmt(load[0])} before, {B._load_fmt(load[1])} after; {report['rounds']} rounds of "
           f"{report['repeats']} interleaved repetitions; fastwb in this process, {peer} in a fresh process of its "
           f"own each round)",
           f"(a) FGSM on {report['rows']:,} x {SIZES[0]} rows, {'-'.join(map(str, SIZES))} ReLU, clip [0, 1]; "
           f"fastwb in chunks of {BATCH} rows",
           f"(b) the perturbation step alone on {report['rows']:,} x {SIZES[0]} float32", ""]
    rows = [["contender", "median", "min round", "max round"]]
    for name in FGSM_NAMES + STEP_NAMES:
        s = report["seconds"].get(name)
        if s:
            rows.append([("(a) " if name in FGSM_NAMES else "(b) ") + name, B._fmt_time(float(np.median(s))),
                         B._fmt_time(min(s)), B._fmt_time(max(s))])
    out += B._text_table(rows, 34, 12)
    out.append("")
    out += B.verdict_lines(verdicts(report))
    target = report["ratios"].get(RATIOS[0][0])
    if target:
        out.append(f"  {RATIOS[0][0]}, round by round: " + ", ".join(f"{r:.2f}" for r in target))
    for name, a in report.get("agreement", {}).items():
        out.append(f"  {name} and fastwb's adversarial examples: {100 * a['equal']:.4f}% of elements equal, "
                   f"largest difference {a['max_diff']:.3g}")
    if report.get("skipped"):
        out.append(f"  PyTorch skipped: {report['skipped']}")
    summary = B.targets_line(verdicts(report))
    if summary:
        out.append(summary)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=ROWS, help=f"rows attacked (default {ROWS})")
    ap.add_argument("--repeats", type=int, default=15, help="interleaved repetitions per round (default 15)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, PyTorch in a fresh process each (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="threads of fastwb and PyTorch (default fastwb's)")
    ap.add_argument("--pairs", type=int, default=30, help="alternating FGSM pairs after the rounds (default 30)")
    ap.add_argument("--no-torch", action="store_true", help="fastwb and NumPy only")
    ap.add_argument("--json", metavar="PATH", help="also write the report (every round's medians) as JSON")
    args = ap.parse_args(argv)
    for name in ("rows", "repeats", "rounds", "pairs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be at least 1")
    t0 = time.perf_counter()
    report = measure(args.rows, args.repeats, args.rounds, args.threads, torch=not args.no_torch,
                     say=lambda m: print(f"  [{time.perf_counter() - t0:5.0f} s] {m}", file=sys.stderr, flush=True))
    print("\n".join(lines(report)))
    if not args.no_torch:
        alt = alternating(args.pairs, args.threads, args.rows,
                          say=lambda m: print(f"  [{time.perf_counter() - t0:5.0f} s] {m}", file=sys.stderr,
                                              flush=True))
        if alt is not None:
            report["alternating"] = alt
            print("\n" + "\n".join(alternating_lines(alt)) + f"  (load average now {B._load_fmt(B.load_average())})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
