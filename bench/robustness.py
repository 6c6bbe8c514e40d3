"""Robustness of MNIST classifiers: clean accuracy, FGSM and PGD accuracy.

    python bench/robustness.py [--data-path FOLDER] [--epochs 5] [--seed 0] [--markdown]

A 784-256-10 ReLU MLP (float32) is trained on the 60,000 MNIST training
images for 5 epochs (Adam, lr 1e-3, batch 128), then evaluated on the 10,000
test images: clean accuracy, FGSM accuracy at eps 0.05, 0.1 and 0.2, and
PGD-10 accuracy at eps 0.1 (step 0.025, random start), all L-infinity with the
pixels kept in [0, 1] (``fastwb.adversarial``, untargeted, on the true
labels).  When ``Sequential.fit`` takes ``adversarial=`` (FGSM adversarial
training), a second model is trained the same way with
``adversarial=dict(attack="fgsm", eps=0.1, ratio=0.5)`` (each batch's loss
half clean, half on its FGSM examples) and evaluated the same way.

The folder of the MNIST IDX files: ``--data-path``, else ``$FASTWB_MNIST``,
else ``../shared/data/mnist`` beside the checkout.
"""

import argparse
import inspect
import os
import sys
import time

import numpy as np

import fastwb
from fastwb import adversarial, datasets
from fastwb import benchmark as B

SIZES = [784, 256, 10]
EPOCHS, BATCH, LR = 5, 128, 1e-3
FGSM_EPS = (0.05, 0.1, 0.2)
PGD = {"eps": 0.1, "alpha": 0.025, "steps": 10}
ADVERSARIAL = {"attack": "fgsm", "eps": 0.1, "ratio": 0.5}


def default_folder():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get(datasets.MNIST_ENV) or os.path.join(here, "..", "..", "shared", "data", "mnist")


def adversarial_training_available():
    """Whether ``Sequential.fit`` takes ``adversarial=`` (FGSM adversarial training)."""
    return "adversarial" in inspect.signature(fastwb.nn.Sequential.fit).parameters


def train(X, y, seed=0, epochs=EPOCHS, adversarial_training=None, sizes=SIZES):
    """The MLP of ``sizes`` (784-256-10) trained as the module says; returns (model, seconds)."""
    model = fastwb.MLP(list(sizes), dtype=np.float32, rng=seed)
    model.compile("adam", lr=LR)
    kw = {} if adversarial_training is None else {"adversarial": adversarial_training}
    t0 = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=BATCH, rng=seed, verbose=False, **kw)
    return model, time.perf_counter() - t0


def evaluate(model, X, y, seed=0):
    """``{column: accuracy}`` and ``{column: seconds}``: clean, FGSM at each eps, PGD."""
    acc, seconds = {}, {}
    t0 = time.perf_counter()
    acc["clean"] = float(np.mean(model.predict(X) == y))
    seconds["clean"] = time.perf_counter() - t0
    for eps in FGSM_EPS:
        t0 = time.perf_counter()
        acc[f"FGSM {eps:g}"] = adversarial.robust_accuracy(model, X, y, "fgsm", eps=eps)
        seconds[f"FGSM {eps:g}"] = time.perf_counter() - t0
    name = f"PGD-{PGD['steps']} {PGD['eps']:g}"
    t0 = time.perf_counter()
    acc[name] = adversarial.robust_accuracy(model, X, y, "pgd", eps=PGD["eps"], alpha=PGD["alpha"],
                                            steps=PGD["steps"], rng=seed)
    seconds[name] = time.perf_counter() - t0
    return acc, seconds


def measure(folder, seed=0, epochs=EPOCHS, say=lambda *a: None, sizes=SIZES):
    """Train and evaluate the standard model, and the adversarially trained one
    when fit can.  Returns ``{"cpu", "threads", "load", "seed", "epochs",
    "adversarial_training": available?, "rows": [{"model", "train_seconds",
    "accuracy": {column: value}, "seconds": {column: value}}]}``."""
    X, y, Xt, yt = datasets.load("mnist", folder)
    report = {"cpu": B.cpu_name(), "threads": fastwb.get_num_threads(), "load": [B.load_average()], "seed": seed,
              "epochs": epochs, "sizes": list(sizes), "adversarial_training": adversarial_training_available(), "rows": []}
    runs = [("standard", None)]
    if report["adversarial_training"]:
        runs.append((f"FGSM-trained (eps {ADVERSARIAL['eps']:g}, ratio {ADVERSARIAL['ratio']:g})", ADVERSARIAL))
    for name, adv in runs:
        say(f"training the {name} model")
        model, train_s = train(X, y, seed, epochs, adv, sizes)
        say(f"attacking the {name} model")
        acc, secs = evaluate(model, Xt, yt, seed)
        report["rows"].append({"model": name, "train_seconds": train_s, "accuracy": acc, "seconds": secs})
    report["load"].append(B.load_average())
    return report


def lines(report, markdown=False):
    """The table (text, or Markdown with ``markdown``) and its caption."""
    columns = list(report["rows"][0]["accuracy"])
    head = ["model"] + columns + ["training"]
    body = [[r["model"]] + [f"{r['accuracy'][c]:.4f}" for c in columns] + [f"{r['train_seconds']:.1f} s"]
            for r in report["rows"]]
    caption = (f"MNIST test accuracy (10,000 images), {'-'.join(map(str, report.get('sizes', SIZES)))} ReLU float32, {report['epochs']} epochs Adam lr "
               f"{LR:g} batch {BATCH}, seed {report['seed']}; attacks L-inf with pixels in [0, 1], untargeted on "
               f"the true labels; PGD: step {PGD['alpha']:g}, random start ({report['cpu']}, {report['threads']} "
               f"threads, load average {B._load_fmt(report['load'][0])} before, {B._load_fmt(report['load'][-1])} "
               "after)")
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
               for row in [head] + body]
    out.append("")
    out.append(caption)
    if not report["adversarial_training"]:
        out.append("(Sequential.fit has no adversarial= here: the standard model only)")
    timing = report["rows"][0]["seconds"]
    out.append("attack times on the standard model: " + ", ".join(f"{k} {v:.2f} s" for k, v in timing.items()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default=None, help="folder of the MNIST IDX files (default: $FASTWB_MNIST, "
                                                      "else ../shared/data/mnist beside the checkout)")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights, the shuffling and PGD's start")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, metavar="N",
                    help="layer sizes, 784 first and 10 last (default 784 256 10; a deeper net: 784 512 256 10)")
    args = ap.parse_args(argv)
    if len(args.sizes) < 2 or args.sizes[0] != 784 or args.sizes[-1] != 10 or min(args.sizes) < 1:
        ap.error("--sizes must start with 784, end with 10 and hold positive widths")
    if args.epochs < 1:
        ap.error("--epochs must be at least 1")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    folder = args.data_path or default_folder()
    t0 = time.perf_counter()
    try:
        report = measure(folder, args.seed, args.epochs,
                         say=lambda m: print(f"  [{time.perf_counter() - t0:5.0f} s] {m}", file=sys.stderr,
                                             flush=True), sizes=args.sizes)
    except (FileNotFoundError, ValueError) as e:
        ap.exit(2, f"{ap.prog}: cannot load MNIST from {folder}: {e}\n")
    print("\n".join(lines(report, args.markdown)))


if __name__ == "__main__":
    main()
