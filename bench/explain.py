"""Saliency speed: ``fastwb.explain.saliency`` on 10,000 MNIST-shaped rows of a
784-256-10 ReLU MLP (float32, eval mode), against the full gradient
computation of the same batch and against PyTorch autograd's input gradient.

    python bench/explain.py [--repeats N] [--rounds R] [--threads N] [--no-torch]

Contenders (fastwb in this process, interleaved in rotating order; PyTorch in
a fresh process of its own each round, as fastwb/benchmark.py's
``_INFER_CHILD``, because it shares libgomp with fastwb):

* ``saliency``: ``explain.saliency(model, X)``, |d logit / d x| of each row's
  predicted class: an inference pass for the predictions, then the engine's
  forward and input-gradient-only backward (``output_gradient``);
* ``saliency, targets given``: the same with ``target=`` (no inference pass);
* ``gradients``: ``model.gradients(X, y)``, the engine's full gradient
  computation (forward, loss, every weight gradient; the backward pass stops
  at the first layer, whose input gradient it does not need);
* ``gradients + input gradient``: the same compiled call asked for the input
  gradient too (weight gradients and input gradient: what a saliency map
  costs through a full backward pass);
* ``PyTorch``: ``torch.nn.Sequential`` of the same weights in ``eval()``, the
  parameters ``requires_grad_(False)``, the input ``requires_grad``;
  ``z = net(x); z[range(n), z.argmax(1)].sum().backward(); x.grad.abs()``.

Targets (issue): gradients / saliency >= 1.4 and PyTorch / saliency >= 3.
A ratio within one process is the median of the paired per-repetition ratios
of a round; across processes the ratio of the two round medians; the figure
reported is the median over rounds, with the smallest and largest round.

The pytest-benchmark suite of the same contenders is bench/test_bench_explain.py.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import fastwb
from fastwb import benchmark as B
from fastwb import explain

SIZES = (784, 256, 10)
ROWS = 10_000
TARGETS = {"gradients / saliency": 1.4, "PyTorch / saliency": 3.0}
NAMES = ("saliency", "saliency, targets given", "gradients", "gradients + input gradient")
TORCH = "PyTorch"


def data(seed=0):
    """MNIST-shaped rows (pixels in [0, 1)) and labels."""
    r = np.random.default_rng(seed)
    return r.random((ROWS, SIZES[0]), dtype=np.float32), r.integers(0, SIZES[-1], ROWS)


def fastwb_model():
    return fastwb.MLP(SIZES, activation="relu", dtype="float32", rng=0).eval()


def fastwb_contenders(model=None, X=None, y=None):
    """``{name: callable}`` of the fastwb contenders."""
    model = model or fastwb_model()
    if X is None:
        X, y = data()
    t = model.predict(X)
    labels = model.loss.targets(y, len(X), model.out_features, model.dtype)
    ws = model._workspace(len(X))

    def full():     # the compiled call with weight gradients and the input gradient (eval mode)
        with model._training_lock:
            model._gradients(X, labels, ws, False, weights=True, input_gradient=True)
        return ws.grad_in[0]

    return {"saliency": lambda: explain.saliency(model, X),
            "saliency, targets given": lambda: explain.saliency(model, X, target=t),
            "gradients": lambda: model.gradients(X, y),
            "gradients + input gradient": full}


def save_problem(path, model=None, X=None):
    """The weights (PyTorch's layout) and rows the PyTorch process reads."""
    model = model or fastwb_model()
    X = data()[0] if X is None else X
    np.savez(path, X=X, **{f"W{i}": W.T for i, W in enumerate(model.W)}, **{f"b{i}": b for i, b in enumerate(model.b)})


def torch_contender(path):
    """PyTorch's saliency of the saved problem (call in a process where torch was imported first)."""
    import torch

    with np.load(path) as f:
        X = torch.from_numpy(f["X"])
        shapes = [f[f"W{i}"].shape for i in range(len(SIZES) - 1)]
        layers = []
        for i, (out, inp) in enumerate(shapes):
            lin = torch.nn.Linear(inp, out)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(f[f"W{i}"]))
                lin.bias.copy_(torch.from_numpy(f[f"b{i}"]))
            layers += [lin] + ([torch.nn.ReLU()] if i < len(shapes) - 1 else [])
    net = torch.nn.Sequential(*layers).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    rows = torch.arange(X.shape[0])

    def run():
        x = X.detach().requires_grad_(True)
        z = net(x)
        z[rows, z.argmax(dim=1)].sum().backward()
        return x.grad.abs()
    return run


# Answers one JSON line per command: "time REPEATS" (seconds per repetition),
# "run K" (K calls, for pytest-benchmark), "save PATH" (its map, for the check).
_WORKER = r"""
import json, sys
import torch                    # first: PyTorch loads the OpenMP runtime with its own defaults
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
import numpy as np
import explain as E
from fastwb import benchmark as B
fn = E.torch_contender(sys.argv[3])
print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "time":
        print(json.dumps(B.interleaved({"f": fn}, int(args[0]), 0)["f"].tolist()), flush=True)
    elif cmd == "run":
        for _ in range(int(args[0])):
            fn()
        print(json.dumps({"done": True}), flush=True)
    elif cmd == "save":
        np.save(args[0], fn().numpy())
        print(json.dumps({"done": True}), flush=True)
"""


def torch_worker(threads, path):
    """A fresh interpreter holding PyTorch's contender at ``threads`` threads
    (``fastwb.benchmark._Worker``; its "ready" line in ``.info``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    worker = B._Worker(f"import sys; sys.argv[1:] = [{str(int(threads))!r}, {here!r}, {path!r}]\n" + _WORKER,
                       timeout=900)
    return worker.ready()


def measure(repeats=15, rounds=5, threads=None, torch=True, say=lambda *a: None):
    """``rounds`` rounds: PyTorch in a fresh process (when asked and installed),
    then fastwb's contenders interleaved here, ``repeats`` repetitions each.

    Returns ``{"threads", "rounds", "repeats", "cpu", "load": (before, after),
    "torch": version or None, "skipped", "max_abs_diff" (PyTorch's map against
    fastwb's), "seconds": {name: [round median]}, "ratios": {label: [round ratio]}}``."""
    threads = threads or fastwb.get_num_threads()
    report = {"threads": threads, "rounds": rounds, "repeats": repeats, "cpu": B.cpu_name(), "torch": None,
              "skipped": None, "max_abs_diff": None, "seconds": {}, "ratios": {}}
    load_before = B.load_average()
    use_torch = torch
    if not torch:
        report["skipped"] = "not asked for (--no-torch)"
    elif B._importable("torch"):
        report["skipped"] = "PyTorch is not installed (pip install torch)"
        use_torch = False
    model = fastwb_model()
    X, y = data()
    mine = fastwb_contenders(model, X, y)
    with tempfile.TemporaryDirectory(prefix="fastwb-explain-") as tmp:
        path = os.path.join(tmp, "problem.npz")
        save_problem(path, model, X)
        for r in range(rounds):
            got = {}
            if use_torch:
                say(f"round {r + 1}/{rounds}: PyTorch in a fresh process")
                try:
                    with torch_worker(threads, path) as worker:
                        report["torch"] = worker.info["torch"]
                        if report["max_abs_diff"] is None:
                            worker.ask(f"save {os.path.join(tmp, 'torch.npy')}")
                            with fastwb.threads(threads):
                                ours = explain.saliency(model, X)
                            report["max_abs_diff"] = float(np.abs(np.load(os.path.join(tmp, "torch.npy"))
                                                                  - ours).max())
                        got[TORCH] = worker.ask(f"time {repeats}")
                except RuntimeError as e:
                    report["skipped"] = f"its process failed: {e}"
                    use_torch = False
            load = B.load_average()
            say(f"round {r + 1}/{rounds}: fastwb in this process (load average {B._load_fmt(load)})")
            with fastwb.threads(threads):
                got.update({k: v.tolist() for k, v in B.interleaved(mine, repeats, 0).items()})
            record(report, got)
            report.setdefault("round_load", []).append(load)
    report["load"] = (load_before, B.load_average())
    return report


RATIOS = (  # label, numerator, denominator, target, paired within one process
    ("gradients / saliency", "gradients", "saliency", TARGETS["gradients / saliency"], True),
    ("PyTorch / saliency", TORCH, "saliency", TARGETS["PyTorch / saliency"], False),
    ("gradients / saliency, targets given", "gradients", "saliency, targets given", None, True),
    ("gradients + input gradient / saliency", "gradients + input gradient", "saliency", None, True),
    ("gradients + input gradient / saliency, targets given", "gradients + input gradient",
     "saliency, targets given", None, True),
    ("PyTorch / saliency, targets given", TORCH, "saliency, targets given", None, False),
)


def record(report, got):
    """One round's times into the report (fastwb.benchmark.record_round)."""
    B.record_round(report, got, RATIOS)


def verdicts(report):
    """``(label, median, smallest, largest, target, met)`` per ratio (fastwb.benchmark.ratio_verdicts)."""
    return B.ratio_verdicts(report, RATIOS)


def lines(report):
    t = report["threads"]
    load = report.get("load") or (None, None)
    peer = f"PyTorch {report['torch']}" if report.get("torch") else "PyTorch"
    out = [f"saliency maps, {ROWS:,} rows of {'-'.join(map(str, SIZES))} ReLU float32, eval mode ({report['cpu']}; "
           f"{t} thread{'s' * (t > 1)}; load average {B._load_fmt(load[0])} before, {B._load_fmt(load[1])} after; "
           f"{report['rounds']} rounds of {report['repeats']} interleaved repetitions; fastwb in this process, "
           f"{peer} in a fresh process of its own each round)", ""]
    rows = [["contender", "median", "min round", "max round"]]
    for name in NAMES + (TORCH,):
        s = report["seconds"].get(name)
        if s:
            rows.append([name, B._fmt_time(float(np.median(s))), B._fmt_time(min(s)), B._fmt_time(max(s))])
    out += B._text_table(rows, 34, 12) + [""]
    short = dict(zip(NAMES + (TORCH,), ("saliency", "targets given", "gradients", "grads + input", "PyTorch")))
    names = [n for n in NAMES + (TORCH,) if n in report["seconds"]]
    per_round = [["round", "load avg"] + [short[n] for n in names]]
    for r, load in enumerate(report.get("round_load", [])):
        per_round.append([str(r + 1), B._load_fmt(load)] + [B._fmt_time(report["seconds"][n][r]) for n in names])
    out += ["  " + "".join(c.rjust(w) for c, w in zip(row, [5, 10] + [15] * len(names))) for row in per_round]
    out.append("")
    out += B.verdict_lines(verdicts(report), width=52)
    if report.get("max_abs_diff") is not None:
        out.append(f"\n  PyTorch's map against fastwb's: max |diff| {report['max_abs_diff']:.1e}")
    if report.get("skipped"):
        out.append(f"  PyTorch skipped: {report['skipped']}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved repetitions per round (default 15)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, PyTorch in a fresh process each (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="threads of fastwb and PyTorch (default fastwb's)")
    ap.add_argument("--no-torch", action="store_true", help="fastwb only")
    args = ap.parse_args(argv)
    for name in ("repeats", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be at least 1")
    t0 = time.perf_counter()
    report = measure(args.repeats, args.rounds, args.threads, torch=not args.no_torch,
                     say=lambda m: print(f"  [{time.perf_counter() - t0:5.0f} s] {m}", file=sys.stderr, flush=True))
    print("\n".join(lines(report)))


if __name__ == "__main__":
    main()
