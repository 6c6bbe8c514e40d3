"""fastwb.sklearn's MLPClassifier side by side with scikit-learn's: same hyperparameters, same data.

    python bench/sklearn_compare.py [--rounds R] [--epochs E] [--digits-epochs E] [--batch B] [--threads 1,2]
        [--dtypes float32,float64] [--datasets digits,mnist,fashion-mnist] [--data-path DIR]
        [--fashion-path DIR] [--grid-epochs E] [--no-grid] [--no-defaults] [--json PATH] [--quick]

(a) Digits (the 8x8 images embedded in scikit-learn, a seeded 80/20 split), MNIST and
    Fashion-MNIST (their own 60000/10000 splits): an ``in-256-10`` network (784-256-10 for
    the MNISTs, 64-256-10 for digits), ReLU, Adam (lr 1e-3), alpha 1e-4, ``--batch`` rows
    (default 200), ``--epochs`` epochs on the MNISTs (default 5) and ``--digits-epochs`` on
    digits (default 20: its 1437 training images make 8 steps an epoch; ``n_iter_no_change``
    above the epochs, so both run every epoch), shuffled, ``random_state`` = the round's number for both (so both start
    from the same weights).  Per data set, dtype (the data is given to scikit-learn in that
    dtype, which it keeps; fastwb gets ``dtype=``) and thread count (``threadpoolctl``'s
    limit around both, and fastwb's ``n_threads``): fit time, predict time over the test
    set, test accuracy.  Targets: fastwb's fit >= 2x faster, test accuracy within 0.5 points.
(b) Defaults: ``MLPClassifier(random_state=r)`` of each, on digits given as float64 (what
    scikit-learn's ``load_digits`` returns; fastwb trains in float32, its default), at the
    machine's default thread count: both train until their (identical) stopping rule or 200
    epochs.
(c) ``GridSearchCV`` over alpha (1e-5, 1e-4, 1e-3) x hidden_layer_sizes ((64,), (128,),
    (256,)), 3 folds, on digits, ``--grid-epochs`` epochs (default 50), float32 data: total time.

Rounds alternate which side runs first; a ratio is the median over rounds of the round's
ratio (scikit-learn's time over fastwb's).  MNIST is found with ``--data-path``, else
``$FASTWB_MNIST``, else ``../shared/data/mnist`` beside the repository; Fashion-MNIST with
``--fashion-path``, else ``$FASTWB_FASHION_MNIST``, else Debian's dataset-fashion-mnist folder
(``/usr/share/datasets/fashion-mnist``); a data set that is absent is skipped with a message.
The CPU model and the load average (before and after) are printed: on a busy machine the
figures are not trustworthy.
"""

import argparse
import contextlib
import json
import os
import sys
import time
import warnings

import numpy as np

import fastwb
from fastwb import benchmark as B
from fastwb import datasets

TARGET = 2.0            # fit speed-up, at least
ACCURACY_POINTS = 0.5   # test accuracy within this many points
HIDDEN = 256
GRID = {"alpha": [1e-5, 1e-4, 1e-3], "hidden_layer_sizes": [(64,), (128,), (256,)]}


def default_mnist_folder():
    """``$FASTWB_MNIST``, else ``../shared/data/mnist`` beside the repository."""
    return os.environ.get(datasets.MNIST_ENV) or os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))


def default_fashion_folder():
    """``$FASTWB_FASHION_MNIST``, else Debian's dataset-fashion-mnist folder."""
    return os.environ.get(datasets.FASHION_MNIST_ENV) or datasets.DEBIAN_FASHION_MNIST


def load_data(name, path):
    """``(X_train, y_train, X_test, y_test)`` in float64, or None with a message when absent."""
    try:
        if name == "digits":
            return datasets.load("digits", dtype=np.float64)
        return datasets.load(name, path=path, dtype=np.float64)
    except (FileNotFoundError, ImportError) as e:
        print(f"  {name}: skipped ({e})")
        return None


def limits(n):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


@contextlib.contextmanager
def _quiet():
    """ConvergenceWarning off: both sides run exactly --epochs epochs on purpose."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def predict_seconds(est, X, repeats=5):
    est.predict(X)
    return float(np.median([timed(lambda: est.predict(X))[0] for _ in range(repeats)]))


def side_by_side(data, dtype, threads, rounds, epochs, batch):
    """Workload (a) for one data set, dtype and thread count: per contender the lists of
    fit seconds, predict seconds and test accuracies, one entry per round."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastwb.sklearn import MLPClassifier as FwMLP

    X_train, y_train, X_test, y_test = (np.ascontiguousarray(a.astype(dtype)) if a.dtype.kind == "f" else a
                                        for a in data)
    hyper = dict(hidden_layer_sizes=(HIDDEN,), solver="adam", learning_rate_init=1e-3, alpha=1e-4, batch_size=batch,
                 max_iter=epochs, n_iter_no_change=epochs + 1, shuffle=True)
    out = {side: {"fit": [], "predict": [], "accuracy": []} for side in ("fastwb", "sklearn")}
    for r in range(rounds):
        makers = {"fastwb": lambda: FwMLP(random_state=r, dtype=dtype, n_threads=threads, **hyper),
                  "sklearn": lambda: SkMLP(random_state=r, **hyper)}
        order = ["fastwb", "sklearn"] if r % 2 == 0 else ["sklearn", "fastwb"]
        for side in order:
            est = makers[side]()
            with limits(threads), _quiet():
                t_fit, _ = timed(lambda: est.fit(X_train, y_train))
                t_pred = predict_seconds(est, X_test)
            out[side]["fit"].append(t_fit)
            out[side]["predict"].append(t_pred)
            out[side]["accuracy"].append(float(np.mean(est.predict(X_test) == y_test)))
    return out


def defaults_case(data, rounds):
    """Workload (b): each library's defaults on digits given as float64."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastwb.sklearn import MLPClassifier as FwMLP

    X_train, y_train, X_test, y_test = data
    out = {side: {"fit": [], "predict": [], "accuracy": [], "epochs": []} for side in ("fastwb", "sklearn")}
    for r in range(rounds):
        order = [("fastwb", FwMLP), ("sklearn", SkMLP)]
        for side, cls in (order if r % 2 == 0 else order[::-1]):
            est = cls(random_state=r)
            with _quiet():
                t_fit, _ = timed(lambda: est.fit(X_train, y_train))
            out[side]["fit"].append(t_fit)
            out[side]["predict"].append(predict_seconds(est, X_test))
            out[side]["accuracy"].append(float(np.mean(est.predict(X_test) == y_test)))
            out[side]["epochs"].append(est.n_iter_)
    return out


def grid_case(data, rounds, epochs, threads):
    """Workload (c): GridSearchCV 3 x 3, 3 folds, on digits (float32), total seconds per round."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastwb.sklearn import MLPClassifier as FwMLP

    X_train, y_train, X_test, y_test = data
    X_train, X_test = X_train.astype(np.float32), X_test.astype(np.float32)
    out = {side: {"seconds": [], "accuracy": [], "best": []} for side in ("fastwb", "sklearn")}
    for r in range(rounds):
        order = [("fastwb", FwMLP(max_iter=epochs, random_state=r, n_threads=threads)),
                 ("sklearn", SkMLP(max_iter=epochs, random_state=r))]
        for side, est in (order if r % 2 == 0 else order[::-1]):
            grid = GridSearchCV(est, GRID, cv=3)
            with limits(threads), _quiet():
                seconds, _ = timed(lambda: grid.fit(X_train, y_train))
            out[side]["seconds"].append(seconds)
            out[side]["accuracy"].append(float(grid.score(X_test, y_test)))
            out[side]["best"].append({k: list(v) if isinstance(v, tuple) else v for k, v in grid.best_params_.items()})
    return out


def paired_ratio(num, den):
    """Median over rounds of num[r] / den[r]."""
    return float(np.median(np.asarray(num) / np.asarray(den)))


def summary_row(name, res):
    fw, sk = res["fastwb"], res["sklearn"]
    fit_ratio = paired_ratio(sk["fit"], fw["fit"])
    pred_ratio = paired_ratio(sk["predict"], fw["predict"])
    acc_fw, acc_sk = 100 * np.mean(fw["accuracy"]), 100 * np.mean(sk["accuracy"])
    met = fit_ratio >= TARGET and acc_fw >= acc_sk - ACCURACY_POINTS
    return {"case": name, "fit_fastwb_s": float(np.median(fw["fit"])), "fit_sklearn_s": float(np.median(sk["fit"])),
            "fit_ratio": fit_ratio, "fit_ratio_min": float(np.min(np.asarray(sk["fit"]) / np.asarray(fw["fit"]))),
            "fit_ratio_max": float(np.max(np.asarray(sk["fit"]) / np.asarray(fw["fit"]))),
            "predict_fastwb_ms": 1e3 * float(np.median(fw["predict"])),
            "predict_sklearn_ms": 1e3 * float(np.median(sk["predict"])), "predict_ratio": pred_ratio,
            "accuracy_fastwb": float(acc_fw), "accuracy_sklearn": float(acc_sk), "target_met": bool(met)}


def print_rows(rows, header=True):
    head = (f"{'case':34s} {'fit fastwb':>10s} {'fit sklearn':>11s} {'ratio':>6s} {'(min-max)':>11s} "
            f"{'pred fw ms':>10s} {'pred sk ms':>10s} {'ratio':>6s} {'acc fw':>7s} {'acc sk':>7s}  target")
    if header:
        print(head)
    for r in rows:
        print(f"{r['case']:34s} {r['fit_fastwb_s']:9.2f}s {r['fit_sklearn_s']:10.2f}s {r['fit_ratio']:5.2f}x "
              f"{r['fit_ratio_min']:5.2f}-{r['fit_ratio_max']:<5.2f} {r['predict_fastwb_ms']:10.2f} "
              f"{r['predict_sklearn_ms']:10.2f} {r['predict_ratio']:5.2f}x {r['accuracy_fastwb']:6.2f}% "
              f"{r['accuracy_sklearn']:6.2f}%  " + {True: "met", False: "MISSED", None: "(info)"}[r["target_met"]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs of (a) on the MNISTs (default 5)")
    ap.add_argument("--digits-epochs", type=int, default=20, help="epochs of (a) on digits (default 20)")
    ap.add_argument("--batch", type=int, default=200, help="batch size of (a) (default 200)")
    ap.add_argument("--threads", default="1,2", help="thread counts of (a), comma-separated (default 1,2)")
    ap.add_argument("--dtypes", default="float32,float64", help="dtypes of (a) (default float32,float64)")
    ap.add_argument("--datasets", default="digits,mnist,fashion-mnist", help="data sets of (a)")
    ap.add_argument("--data-path", default=None, help="MNIST folder (default $FASTWB_MNIST or ../shared/data/mnist)")
    ap.add_argument("--fashion-path", default=None,
                    help="Fashion-MNIST folder (default $FASTWB_FASHION_MNIST or Debian's folder)")
    ap.add_argument("--grid-epochs", type=int, default=50, help="epochs of each GridSearchCV fit (default 50)")
    ap.add_argument("--no-grid", action="store_true", help="skip (c)")
    ap.add_argument("--no-defaults", action="store_true", help="skip (b)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="1 round, digits only, 2 epochs (a smoke test)")
    args = ap.parse_args(argv)
    try:
        import sklearn
        import threadpoolctl  # noqa: F401
    except ImportError as e:
        print(f"scikit-learn and threadpoolctl are needed: pip install 'fastwb[sklearn]' ({e})")
        return 1
    if args.quick:
        args.rounds, args.epochs, args.digits_epochs, args.datasets, args.grid_epochs = 1, 2, 2, "digits", 5
    threads = [int(t) for t in args.threads.split(",")]
    dtypes = args.dtypes.split(",")
    paths = {"mnist": args.data_path or default_mnist_folder(), "fashion-mnist": args.fashion_path or
             default_fashion_folder(), "digits": None}
    load_before = os.getloadavg()
    print(f"CPU: {B.cpu_name()} ({os.cpu_count()} logical cores); fastwb {fastwb.__version__}, "
          f"scikit-learn {sklearn.__version__}, NumPy {np.__version__}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    report = {"cpu": B.cpu_name(), "cores": os.cpu_count(), "sklearn": sklearn.__version__, "numpy": np.__version__,
              "args": vars(args), "load_before": load_before, "rows": [], "raw": {}}
    rows = report["rows"]
    print(f"\n(a) in-{HIDDEN}-10 adam, {args.epochs} epochs ({args.digits_epochs} on digits), batch {args.batch}, "
          f"{args.rounds} rounds")
    for name in args.datasets.split(","):
        data = load_data(name, paths.get(name))
        if data is None:
            continue
        for dtype in dtypes:
            for t in threads:
                case = f"{name} {dtype} {t} thread{'s' if t > 1 else ''}"
                epochs = args.digits_epochs if name == "digits" else args.epochs
                res = side_by_side(data, dtype, t, args.rounds, epochs, args.batch)
                report["raw"][case] = res
                rows.append(summary_row(case, res))
                print_rows(rows[-1:], header=len(rows) == 1)
                sys.stdout.flush()
    digits = load_data("digits", None)
    if digits is not None and not args.no_defaults:
        print(f"\n(b) defaults, digits given as float64, {args.rounds} rounds, threads "
              f"{fastwb.get_num_threads()}")
        res = defaults_case(digits, args.rounds)
        report["raw"]["defaults"] = res
        row = summary_row("digits defaults", res)
        row["target_met"] = None
        report["defaults"] = row
        print_rows([row])
        print(f"  epochs run: fastwb {res['fastwb']['epochs']}, scikit-learn {res['sklearn']['epochs']}")
    if digits is not None and not args.no_grid:
        grid_threads = threads[0]
        print(f"\n(c) GridSearchCV 3x3, 3 folds, digits float32, {args.grid_epochs} epochs each, "
              f"{grid_threads} thread(s), {args.rounds} rounds")
        res = grid_case(digits, args.rounds, args.grid_epochs, grid_threads)
        report["raw"]["grid"] = res
        fw, sk = res["fastwb"], res["sklearn"]
        report["grid"] = {"fastwb_s": float(np.median(fw["seconds"])), "sklearn_s": float(np.median(sk["seconds"])),
                          "ratio": paired_ratio(sk["seconds"], fw["seconds"]),
                          "accuracy_fastwb": 100 * float(np.mean(fw["accuracy"])),
                          "accuracy_sklearn": 100 * float(np.mean(sk["accuracy"])),
                          "best_fastwb": fw["best"], "best_sklearn": sk["best"]}
        g = report["grid"]
        print(f"  total: fastwb {g['fastwb_s']:.1f}s, scikit-learn {g['sklearn_s']:.1f}s, ratio {g['ratio']:.2f}x; "
              f"test accuracy of the refit best: {g['accuracy_fastwb']:.2f}% vs {g['accuracy_sklearn']:.2f}%")
    load_after = os.getloadavg()
    report["load_after"] = load_after
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    met = [r for r in rows if r["target_met"]]
    print(f"targets (fit >= {TARGET:g}x, accuracy within {ACCURACY_POINTS} points): {len(met)} of {len(rows)} met"
          + ("" if len(met) == len(rows) else "; missed: " + "; ".join(r["case"] for r in rows if not r["target_met"])))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
