"""Transfer-learning speed: fine-tuning with the base frozen, against the same
work with nothing frozen and against PyTorch doing the same fine-tuning.

    python bench/transfer.py [--repeats N] [--threads N] [--rounds R] [--ft-repeats N] [--breakdown] [--no-torch]

(a) One Adam ``train_step`` (lr 1e-3, float32, cross-entropy) of a
    784-256-128-10 network with ReLU hidden layers on a batch of 128, with the
    base (the first two Linear layers, ``freeze("0.*", "2.*")``) frozen:
    against the same step with nothing frozen (target >= 2x) and against
    PyTorch's fine-tuning step (target >= 2x): ``torch.nn.Sequential`` of the
    same layers and weights, ``requires_grad_(False)`` on the base, Adam
    (``fused=True``) over the head's parameters only, then zero_grad / forward /
    cross_entropy / backward / step.
(b) The worked example's fine-tuning: 500 examples (100 per class, 5 classes)
    of 784 features, 784-256-128-5 with the base frozen, 20 epochs at batch 32:
    fastwb ``fit(..., cache_frozen=True)`` (and without it) against PyTorch's
    usual loop (base ``requires_grad=False``, shuffled mini-batches indexed
    from in-memory tensors, the full forward every step); for information
    also PyTorch with the base's output computed once per fine-tune.

fastwb runs in this process, PyTorch in a fresh process of its own each round
(it shares libgomp with fastwb, whose passive wait policy would slow it down:
see fastwb/benchmark.py).  Every round times its contenders interleaved, in
rotating order (``fastwb.benchmark.interleaved``); a ratio is the median over
rounds of the round's ratio (within a process: the paired median), and the
spread is its smallest and largest round.  Before timing, both sides take the
same first steps from the same weights, and their losses are compared.

The pytest-benchmark suite of the same contenders is bench/test_bench_transfer.py.
"""

import argparse
import itertools
import os
import sys
import time

import numpy as np

import fastwb
from fastwb import benchmark as B
from fastwb import nn

STEP_SIZES = (784, 256, 128, 10)       # (a)
STEP_BATCH = 128
FT_SIZES = (784, 256, 128, 5)          # (b): the worked example
FT_PER_CLASS = 100
FT_EPOCHS = 20
FT_BATCH = 32
BASE = ("0.*", "2.*")                  # the first two Linear layers (1 and 3 are ReLUs)
LR = 1e-3
TARGET = 2.0                           # the speedups of (a), at least
STEP_TARGET_S = 0.02                   # consecutive steps per timed batch: ~20 ms of them

STEP_NAMES = ("fastwb frozen", "fastwb unfrozen", "PyTorch frozen", "PyTorch unfrozen")
FT_NAMES = ("fastwb cache_frozen", "fastwb", "PyTorch", "PyTorch features once")


# -- the workloads ------------------------------------------------------------------------------

def fastwb_model(sizes, frozen=True, seed=0):
    """Linear -> ReLU -> ... -> Linear of ``sizes``, float32, compiled with Adam
    (lr 1e-3) and cross-entropy; the base frozen when ``frozen``."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers, dtype="float32", rng=seed)
    model.compile("adam", lr=LR, loss="cross_entropy")
    if frozen:
        model.freeze(*BASE)
    return model


def step_data(sizes=STEP_SIZES, batch=STEP_BATCH, seed=1):
    """The batch of (a): standard normal features, uniform labels."""
    r = np.random.default_rng(seed)
    return r.standard_normal((batch, sizes[0])).astype(np.float32), r.integers(0, sizes[-1], batch)


def finetune_data(seed=2):
    """The data of (b): FT_PER_CLASS examples of each of FT_SIZES[-1] classes, random features."""
    r = np.random.default_rng(seed)
    k = FT_SIZES[-1]
    X = r.standard_normal((FT_PER_CLASS * k, FT_SIZES[0])).astype(np.float32)
    return X, np.repeat(np.arange(k), FT_PER_CLASS)


def fastwb_contenders():
    """``{"step": {name: fn}, "finetune": {name: fn}}``: fastwb's side of (a) and (b).
    A fine-tune call trains the same model on (its weights go on moving, as
    the time of a step does not depend on them)."""
    X, y = step_data()
    frozen, unfrozen = fastwb_model(STEP_SIZES), fastwb_model(STEP_SIZES, frozen=False)
    Xf, yf = finetune_data()
    cached, plain = fastwb_model(FT_SIZES), fastwb_model(FT_SIZES)
    seeds = itertools.count()

    def fit(model, cache):
        return lambda: model.fit(Xf, yf, epochs=FT_EPOCHS, batch_size=FT_BATCH, verbose=False,
                                 cache_frozen=cache, rng=next(seeds))
    return {"step": {"fastwb frozen": lambda: frozen.train_step(X, y),
                     "fastwb unfrozen": lambda: unfrozen.train_step(X, y)},
            "finetune": {"fastwb cache_frozen": fit(cached, True), "fastwb": fit(plain, False)}}


def torch_net(model):
    """The PyTorch twin of a fastwb model (same layers and weights, training mode),
    with ``requires_grad_(False)`` on the parameters the fastwb model has frozen."""
    net = model.to_torch().train()
    for name, p in net.named_parameters():
        p.requires_grad_(name not in model.frozen)
    return net


def torch_adam(net):
    """PyTorch's Adam (lr 1e-3, fused, its fastest on CPU) over the trained parameters only."""
    import torch

    return torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=LR, fused=True)


def torch_step(net, X, y):
    """One fine-tuning step as PyTorch users write it; returns the loss tensor."""
    import torch

    x, t = torch.from_numpy(X), torch.from_numpy(np.asarray(y, np.int64))
    opt = torch_adam(net)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), t)
        loss.backward()
        opt.step()
        return loss
    return step


def torch_finetune(net, X, y, epochs=FT_EPOCHS, batch_size=FT_BATCH, shuffle=True, features_once=False, seed=0):
    """A fine-tune as PyTorch users write it, without a DataLoader: each epoch a
    ``torch.randperm`` order (``shuffle``) over in-memory tensors, mini-batches by
    indexing, the full forward each step.  ``features_once``: the frozen base's
    output for all of X computed once per call (``torch.no_grad``), then the
    head alone trained on it.  Returns a function running one fine-tune (and
    returning the last batch's loss)."""
    import torch

    Xt, yt = torch.from_numpy(X), torch.from_numpy(np.asarray(y, np.int64))
    opt = torch_adam(net)
    gen = torch.Generator().manual_seed(seed)
    n = Xt.shape[0]
    cut = next(i for i, m in enumerate(net) if any(p.requires_grad for p in m.parameters()))
    base, head = net[:cut], net[cut:]

    def fit():
        net.train()
        data, model = Xt, net
        if features_once:
            with torch.no_grad():
                data, model = base(Xt), head
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(data[idx]), yt[idx])
                loss.backward()
                opt.step()
        return loss
    return fit


def torch_contenders():
    """PyTorch's side of (a) and (b), on the weights of :func:`fastwb_contenders`'
    models (built with the same seeds)."""
    X, y = step_data()
    Xf, yf = finetune_data()
    return {"step": {"PyTorch frozen": torch_step(torch_net(fastwb_model(STEP_SIZES)), X, y),
                     "PyTorch unfrozen": torch_step(torch_net(fastwb_model(STEP_SIZES, frozen=False)), X, y)},
            "finetune": {"PyTorch": torch_finetune(torch_net(fastwb_model(FT_SIZES)), Xf, yf),
                         "PyTorch features once": torch_finetune(torch_net(fastwb_model(FT_SIZES)), Xf, yf,
                                                                 features_once=True)}}


def fastwb_first_losses(steps=2):
    """The losses of fastwb's first ``steps`` frozen steps of (a) from fresh weights."""
    X, y = step_data()
    model = fastwb_model(STEP_SIZES)
    return [float(model.train_step(X, y)) for _ in range(steps)]


def torch_first_losses(steps=2):
    """PyTorch's losses of the same steps, from the same weights."""
    X, y = step_data()
    step = torch_step(torch_net(fastwb_model(STEP_SIZES)), X, y)
    return [step().item() for _ in range(steps)]


def timed(contenders, repeats, ft_repeats):
    """Each workload's contenders interleaved: ``{name: [seconds per call, one per repetition]}``."""
    out = {}
    for kind, reps, target in (("step", repeats, STEP_TARGET_S), ("finetune", ft_repeats, 0)):
        if contenders[kind] and reps:
            out.update({k: v.tolist() for k, v in B.interleaved(contenders[kind], reps, target).items()})
    return out


# -- PyTorch in a process of its own ------------------------------------------------------------

# Answers one JSON line per command line: "time REPEATS FT_REPEATS" (the PyTorch
# contenders interleaved, seconds per repetition), "run NAME K" (K calls of one
# contender, for pytest-benchmark), "losses" (the first frozen steps' losses).
_WORKER = r"""
import json, sys
import torch                    # first: PyTorch loads the OpenMP runtime with its own defaults
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
import transfer as T
contenders = T.torch_contenders()
calls = {**contenders["step"], **contenders["finetune"]}
print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "time":
        print(json.dumps(T.timed(contenders, int(args[0]), int(args[1]))), flush=True)
    elif cmd == "run":
        fn = calls[" ".join(args[:-1])]
        for _ in range(int(args[-1])):
            fn()
        print(json.dumps({"done": True}), flush=True)
    elif cmd == "losses":
        print(json.dumps(T.torch_first_losses(int(args[0]))), flush=True)
"""


def torch_worker(threads, ready=True):
    """A fresh interpreter (``fastwb.benchmark._Worker``, run from a neutral folder)
    holding the PyTorch contenders at ``threads`` threads and answering the
    commands of ``_WORKER``, its "ready" line in ``.info``: read before
    returning when ``ready``, else left for the caller (``worker.ready()``)
    while the worker imports PyTorch.  A context manager: leaving it ends the
    process."""
    here = os.path.dirname(os.path.abspath(__file__))
    worker = B._Worker(f"import sys; sys.argv[1:] = [{str(int(threads))!r}, {here!r}]\n" + _WORKER, timeout=900)
    return worker.ready() if ready else worker


# -- the measurement ----------------------------------------------------------------------------

def measure(repeats=41, ft_repeats=7, rounds=5, threads=None, torch=True, say=lambda *a: None):
    """(a) and (b), ``rounds`` times: each round PyTorch's contenders in a fresh
    process of its own (when ``torch`` and installed), then fastwb's here, each
    side interleaved (``repeats`` repetitions of the step, ``ft_repeats`` of the
    fine-tune).

    Returns ``{"threads", "rounds", "repeats", "ft_repeats", "cpu", "load":
    (before, after), "torch": version or None, "skipped": why PyTorch is
    missing or None, "losses": {"fastwb": [...], "PyTorch": [...]}, "seconds":
    {name: [round median, ...]}, "ratios": {label: [round ratio, ...]}}``."""
    threads = threads or fastwb.get_num_threads()
    report = {"threads": threads, "rounds": rounds, "repeats": repeats, "ft_repeats": ft_repeats,
              "cpu": B.cpu_name(), "torch": None, "skipped": None, "seconds": {}, "ratios": {}}
    load_before = B.load_average()
    use_torch = torch
    if not torch:
        report["skipped"] = "not asked for (--no-torch)"
    elif B._importable("torch"):
        report["skipped"] = "PyTorch is not installed (pip install torch)"
        use_torch = False
    mine = fastwb_contenders()
    with fastwb.threads(threads):
        report["losses"] = {"fastwb": fastwb_first_losses()}
    for r in range(rounds):
        got = {}
        if use_torch:
            say(f"round {r + 1}/{rounds}: PyTorch in a fresh process")
            try:
                with torch_worker(threads) as worker:
                    report["torch"] = worker.info["torch"]
                    if "PyTorch" not in report["losses"]:
                        report["losses"]["PyTorch"] = worker.ask("losses 2")
                    got.update(worker.ask(f"time {repeats} {ft_repeats}"))
            except RuntimeError as e:
                report["skipped"] = f"its process failed: {e}"
                use_torch = False
        say(f"round {r + 1}/{rounds}: fastwb in this process")
        with fastwb.threads(threads):
            got.update(timed(mine, repeats, ft_repeats))
        record(report, got)
    report["load"] = (load_before, B.load_average())
    return report


RATIOS = (  # label, numerator, denominator, target (None: for information), paired within one process
    ("(a) fastwb unfrozen / fastwb frozen", "fastwb unfrozen", "fastwb frozen", TARGET, True),
    ("(a) PyTorch frozen / fastwb frozen", "PyTorch frozen", "fastwb frozen", TARGET, False),
    ("(a) PyTorch unfrozen / PyTorch frozen", "PyTorch unfrozen", "PyTorch frozen", None, True),
    ("(a) PyTorch unfrozen / fastwb unfrozen", "PyTorch unfrozen", "fastwb unfrozen", None, False),
    ("(b) fastwb / fastwb cache_frozen", "fastwb", "fastwb cache_frozen", None, True),
    ("(b) PyTorch / fastwb cache_frozen", "PyTorch", "fastwb cache_frozen", None, False),
    ("(b) PyTorch / fastwb", "PyTorch", "fastwb", None, False),
    ("(b) PyTorch features once / fastwb cache_frozen", "PyTorch features once", "fastwb cache_frozen", None, False),
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
    head = (f"transfer learning, float32, Adam lr {LR:g} ({report['cpu']}; {t} thread{'s' * (t > 1)}; "
            f"load average {B._load_fmt(load[0])} before, {B._load_fmt(load[1])} after; {report['rounds']} rounds "
            f"of {report['repeats']} interleaved step repetitions and {report['ft_repeats']} fine-tunes; fastwb in "
            f"this process, {peer} in a fresh process of its own each round)")
    a = (f"(a) one train_step, {'-'.join(map(str, STEP_SIZES))} ReLU, batch {STEP_BATCH}; frozen: the base "
         f"{', '.join(BASE)}; PyTorch: requires_grad_(False) on the base, fused Adam over the head")
    b = (f"(b) fine-tune, {FT_PER_CLASS * FT_SIZES[-1]} examples, {'-'.join(map(str, FT_SIZES))}, base frozen, "
         f"{FT_EPOCHS} epochs at batch {FT_BATCH}: one whole fine-tune per repetition")
    out = [head, a, b, ""]
    rows = [["contender", "median", "min round", "max round"]]
    for name in STEP_NAMES + FT_NAMES:
        s = report["seconds"].get(name)
        if s:
            rows.append([("(a) " if name in STEP_NAMES else "(b) ") + name, B._fmt_time(float(np.median(s))),
                         B._fmt_time(min(s)), B._fmt_time(max(s))])
    out += B._text_table(rows, 34, 12)
    out.append("")
    out += B.verdict_lines(verdicts(report))
    losses = report.get("losses", {})
    if "PyTorch" in losses:
        diff = max(abs(a - b) for a, b in zip(losses["fastwb"], losses["PyTorch"]))
        out.append(f"\n  first frozen steps from the same weights: losses fastwb "
                   f"{', '.join(f'{v:.6f}' for v in losses['fastwb'])}, PyTorch "
                   f"{', '.join(f'{v:.6f}' for v in losses['PyTorch'])} (max |diff| {diff:.1e})")
    if report.get("skipped"):
        out.append(f"  PyTorch skipped: {report['skipped']}")
    summary = B.targets_line(verdicts(report))
    if summary:
        out.append(summary)
    return out


# -- where fastwb's frozen step spends its time -----------------------------------------------

def breakdown(repeats=41, threads=None):
    """fastwb's frozen step of (a) beside its parts, interleaved in this process:
    the whole step, its gradients without the update (``gradients``), the
    forward alone (``logits``, inference), the head alone
    (a ``Linear(128, 10)`` model's ``train_step`` on the base's output), the
    optimizer update alone (Adam over the flat buffer with the base's slices
    skipped), and the unfrozen step.  Returns ``{part: median seconds}``."""
    X, y = step_data()
    frozen, unfrozen = fastwb_model(STEP_SIZES), fastwb_model(STEP_SIZES, frozen=False)
    head = nn.Sequential(nn.Linear(STEP_SIZES[-2], STEP_SIZES[-1]), dtype="float32", rng=0)
    head.compile("adam", lr=LR)
    features = fastwb_model(STEP_SIZES[:-1]).logits(X)         # the same seed: the same base weights
    features = np.maximum(features, 0, out=features)          # the base's output, after its last ReLU
    frozen.train_step(X, y)
    parts = {"frozen train_step": lambda: frozen.train_step(X, y),
             "forward and head backward (gradients, no update)": lambda: frozen.gradients(X, y),
             "forward alone (logits)": lambda: frozen.logits(X),
             "head alone (train_step on the base's output)": lambda: head.train_step(features, y),
             "optimizer update alone (frozen model)": lambda: frozen.optimizer._apply([frozen.grads]),
             "unfrozen train_step": lambda: unfrozen.train_step(X, y)}
    with fastwb.threads(threads or fastwb.get_num_threads()):
        t = B.interleaved(parts, repeats, STEP_TARGET_S)
    return {k: float(np.median(v)) for k, v in t.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=41, help="interleaved step repetitions per round (default 41)")
    ap.add_argument("--ft-repeats", type=int, default=7, help="interleaved fine-tunes per round (default 7)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, PyTorch in a fresh process each (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="threads of fastwb and PyTorch (default fastwb's)")
    ap.add_argument("--breakdown", action="store_true", help="also time the parts of fastwb's frozen step")
    ap.add_argument("--no-torch", action="store_true", help="fastwb only")
    args = ap.parse_args(argv)
    for name in ("repeats", "ft_repeats", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be at least 1")
    t0 = time.perf_counter()
    report = measure(args.repeats, args.ft_repeats, args.rounds, args.threads, torch=not args.no_torch,
                     say=lambda m: print(f"  [{time.perf_counter() - t0:5.0f} s] {m}", file=sys.stderr, flush=True))
    print("\n".join(lines(report)))
    if args.breakdown:
        parts = breakdown(args.repeats, args.threads)
        step = parts["frozen train_step"]
        print(f"\nfastwb's frozen step, in parts (medians of {args.repeats} interleaved repetitions; load average "
              f"{B._load_fmt(B.load_average())}):")
        print("\n".join(B._text_table([[k, B._fmt_time(v), f"{100 * v / step:.0f}%"] for k, v in parts.items()],
                                      48, 12)))


if __name__ == "__main__":
    main()
