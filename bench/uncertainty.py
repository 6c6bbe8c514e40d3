"""Uncertainty on MNIST and Fashion-MNIST: one model against a deep ensemble and
MC dropout, and entropy as an out-of-distribution detector.

    python bench/uncertainty.py [--epochs E] [--members M] [--passes N] [--dropout P] [--rows R] [--test-rows T]
                                [--figure ENTROPY.png] [--reliability RELIABILITY.png]
                                [--mnist FOLDER] [--fashion FOLDER]

For each data set (Fashion-MNIST is skipped, saying so, where its files are
not found: ``--fashion``, ``FASTWB_FASHION_MNIST`` or Debian's
dataset-fashion-mnist), trained on its training set (the first ``--rows``
rows when given) for ``--epochs`` epochs (Adam lr 1e-3, batch 128, float32)
and scored on its test set (the first ``--test-rows`` rows when given):

* single: one 784-256-10 MLP (ReLU);
* ensemble: ``--members`` such MLPs (seeds 0..M-1), each on its own shuffling;
* ensemble, batched: the same members trained with ``fit(batched=True)``
  (one shared sequence of batches: less diversity);
* dropout net: 784-256-10 with Dropout(``--dropout``) after the ReLU, in
  inference mode, and with MC dropout (``--passes`` stochastic passes).

Columns: test accuracy, NLL, Brier score, ECE (15 bins), the mean mutual
information of the members (or passes) on the test set (their disagreement:
the diversity an ensemble has), training seconds;
for the models trained on MNIST, the AUROC of the predictive entropy (and of
the mutual information, for the ensemble and MC dropout) as a detector of
Fashion-MNIST test images (out of distribution) among MNIST test images.

``--figure`` writes the entropy histograms of MNIST (in distribution) and
Fashion-MNIST (out of distribution) test images under the MNIST-trained
models; ``--reliability`` their reliability diagrams on MNIST test.
"""

import argparse
import os
import sys
import time

import numpy as np

import fastwb
from fastwb import MLP, datasets, metrics, nn
from fastwb import benchmark as B
from fastwb.ensemble import Ensemble, entropy, mc_dropout

SIZES = [784, 256, 10]


def _default_mnist():
    return os.environ.get(datasets.MNIST_ENV) or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")


def _load(name, folder):
    try:
        return datasets.load(name, folder or None)
    except (FileNotFoundError, ValueError) as e:
        print(f"{name}: skipped ({e})")
        return None


def dropout_net(p, seed=0):
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Dropout(p), nn.Linear(256, 10), rng=seed)


def train_all(X, y, args):
    """{method: (what predicts: a model, an Ensemble or the dropout net, seconds)}."""
    fit = dict(epochs=args.epochs, batch_size=128, verbose=False)
    out = {}
    t0 = time.perf_counter()
    single = MLP(SIZES, rng=0)
    single.fit(X, y, rng=0, **fit)
    out["single"] = (single, time.perf_counter() - t0)
    for name, batched in (("ensemble", False), ("ensemble, batched", True)):
        t0 = time.perf_counter()
        ens = Ensemble(lambda i: MLP(SIZES, rng=i), n_members=args.members, rng=0)
        ens.fit(X, y, batched=batched, **fit)
        out[name] = (ens, time.perf_counter() - t0)
    t0 = time.perf_counter()
    drop = dropout_net(args.dropout)
    drop.fit(X, y, rng=0, **fit)
    out["dropout net"] = (drop, time.perf_counter() - t0)
    return out


def predictions(trained, X, args):
    """{method: (probabilities, entropy, mutual information or None)}."""
    out = {}
    for name, (model, _) in trained.items():
        if isinstance(model, Ensemble):
            u = model.predict_uncertainty(X)
            out[name] = (u.proba, u.entropy, u.mutual_information)
        else:
            p = model.predict_proba(X)
            out[name] = (p, entropy(p), None)
    drop = trained["dropout net"][0]
    u = mc_dropout(drop, X, n=args.passes, rng=0)
    out[f"MC dropout ({args.passes} passes)"] = (u.proba, u.entropy, u.mutual_information)
    return out


def table(title, trained, preds, y, ood=None):
    cols = "| method | accuracy | NLL | Brier | ECE | mean MI | train s |" + (
        " OOD AUROC entropy | OOD AUROC MI |" if ood else "")
    print(f"\n{title}\n\n{cols}\n|" + "---|" * (cols.count("|") - 1))
    rows = {}
    for name, (p, h, mi) in preds.items():
        s = {"accuracy": metrics.accuracy(y, p.argmax(axis=1)), "nll": metrics.nll(y, p),
             "brier": metrics.brier_score(y, p), "ece": metrics.expected_calibration_error(y, p)}
        seconds = trained["dropout net" if name.startswith("MC dropout") else name][1]
        s["mean_mi"] = float(np.mean(mi)) if mi is not None else None
        line = (f"| {name} | {s['accuracy']:.4f} | {s['nll']:.4f} | {s['brier']:.4f} | {s['ece']:.4f} | "
                + (f"{s['mean_mi']:.4f}" if mi is not None else "-")
                + f" | {seconds:.1f}{' (the dropout net)' if name.startswith('MC') else ''} |")
        if ood:
            h_out, mi_out = ood[name][1], ood[name][2]
            s["auroc_entropy"] = metrics.auroc(h_out, h)
            s["auroc_mi"] = metrics.auroc(mi_out, mi) if mi is not None else None
            line += f" {s['auroc_entropy']:.4f} | " + (f"{s['auroc_mi']:.4f} |" if mi is not None else "- |")
        print(line)
        rows[name] = s
    return rows


def entropy_figure(path, preds, ood):
    from matplotlib.figure import Figure

    names = list(preds)
    fig = Figure(figsize=(4 * len(names), 3.6))
    axes = fig.subplots(1, len(names), sharey=True)
    top = np.log(10)
    bins = np.linspace(0, top, 41)
    for ax, name in zip(axes, names):
        h_in, h_out = preds[name][1], ood[name][1]
        ax.hist(h_in, bins=bins, alpha=0.6, density=True, label="MNIST test (in)")
        ax.hist(h_out, bins=bins, alpha=0.6, density=True, label="Fashion-MNIST test (out)")
        ax.set(title=f"{name}\nAUROC {metrics.auroc(h_out, h_in):.3f}", xlabel="predictive entropy (nats)",
               yscale="log")
    axes[0].set_ylabel("density (log scale)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def reliability_figure(path, preds, y):
    from matplotlib.figure import Figure

    names = list(preds)
    fig = Figure(figsize=(4 * len(names), 4))
    axes = fig.subplots(1, len(names), sharey=True)
    for ax, name in zip(axes, names):
        d = metrics.reliability_diagram(y, preds[name][0])
        used = d["count"] > 0
        w = np.diff(d["edges"])
        ax.bar(d["edges"][:-1][used], d["accuracy"][used], width=w[used], align="edge", edgecolor="black")
        ax.plot([0, 1], [0, 1], "k--")
        ax.set(title=f"{name}\nECE {metrics.expected_calibration_error(y, preds[name][0]):.4f}",
               xlabel="confidence", xlim=(0, 1), ylim=(0, 1))
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--passes", type=int, default=30)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--rows", type=int, default=None, help="train on the first ROWS training rows only")
    p.add_argument("--test-rows", type=int, default=None, help="score on the first TEST_ROWS test rows only")
    p.add_argument("--figure", help="entropy histograms (PNG) of the MNIST-trained models")
    p.add_argument("--reliability", help="reliability diagrams (PNG) of the MNIST-trained models")
    p.add_argument("--mnist", default=_default_mnist())
    p.add_argument("--fashion", default=None, help="Fashion-MNIST folder (default: FASTWB_FASHION_MNIST or "
                                                   "Debian's /usr/share/datasets/fashion-mnist)")
    args = p.parse_args(argv)
    print(f"{B.cpu_name()}, fastwb {fastwb.__version__}, {fastwb.get_num_threads()} threads, "
          f"load {B.load_average()}; {args.epochs} epochs, {args.members} members, dropout {args.dropout}, "
          f"{args.passes} MC passes")
    mnist = _load("mnist", args.mnist)
    fashion = _load("fashion-mnist", args.fashion)
    if mnist is None and fashion is None:
        print("no data: nothing to do")
        return 1
    for name, data, other in (("MNIST", mnist, fashion), ("Fashion-MNIST", fashion, None)):
        if data is None:
            continue
        X, y, Xt, yt = data
        if args.rows:
            X, y = X[:args.rows], y[:args.rows]
        if args.test_rows:
            Xt, yt = Xt[:args.test_rows], yt[:args.test_rows]
        trained = train_all(X, y, args)
        preds = predictions(trained, Xt, args)
        ood = predictions(trained, other[2][:len(Xt)], args) if other is not None else None
        title = f"{name}: trained on {len(X)} rows, scored on its {len(Xt)} test rows" + (
            "; out of distribution: Fashion-MNIST test" if ood else "")
        table(title, trained, preds, yt, ood)
        if name == "MNIST":
            if args.figure and ood:
                entropy_figure(args.figure, preds, ood)
            if args.reliability:
                reliability_figure(args.reliability, preds, yt)
    print(f"\nload average at the end {B.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
