"""Hyperparameter search on MNIST with ``fastwb tune`` (issue 15): the figures of
README / BENCHMARKS.md.

    python bench/tune_study.py [--part prune|parallel|best|all] [--data-path DIR]
                               [--trials 40] [--epochs 3] [--repeats 2] [--minutes 10]
                               [--best-epochs 10] [--json OUT] [--keep DIR]

Every search is the real command, ``python -m fastwb tune --dataset mnist
... --json``, in fresh processes started from a scratch folder, each with one
fastwb thread (``--threads 1``): the search uses a 50000 / 10000 validation
split of MNIST's training set, and the test set is looked at once, by the
final retraining.

(prune)    A 40-trial study (3 epochs per trial, TPE sampler) with Optuna's
           MedianPruner and without pruning (NopPruner), ``--repeats`` pairs
           with seeds 0, 1, ... run one after the other, alternating which
           goes first: wall time of each command and the best validation
           accuracy; target: pruning >= 2x faster for a best accuracy within
           0.3 points.
(parallel) The same 40-trial pruned study in one SQLite file: one process,
           against two processes started together on one study (``--trials
           40`` each: they stop together at 40 finished trials): finished
           trials per minute, from the launch to the last exit.
(best)     The best 784-hidden-10 network found in ``--minutes`` minutes: two
           processes on one SQLite study (``--timeout``), the space
           ``{"n_layers": 1, "hidden": 128..2048 log}`` with the rest of the
           default space, ``--best-epochs`` epochs per trial, median pruning;
           then ``fastwb tune --trials 1`` on the same study retrains the best
           configuration on all 60000 training images (2 threads) and reports
           its test accuracy (target >= 98.3%).

Each part prints the CPU model and the load average (``uptime``) before and
after; the machine is shared, so the load is part of the result.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BEST_SPACE = {"n_layers": 1, "hidden": {"type": "int", "low": 128, "high": 2048, "log": True}}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def log(*args):
    print(*args, flush=True)


def tune_command(args, *extra):
    cmd = [sys.executable, "-m", "fastwb", "tune", "--dataset", "mnist", "--json"]
    if args.data_path:
        cmd += ["--data-path", args.data_path]
    return cmd + [str(e) for e in extra]


def launch(cmd, cwd, tag):
    err = open(os.path.join(cwd, f"{tag}.log"), "w")
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True), err


def finish(proc, err, tag):
    out, _ = proc.communicate()
    err.close()
    if proc.returncode != 0:
        with open(err.name) as fh:
            tail = fh.read()[-2000:]
        raise RuntimeError(f"{tag} exited with {proc.returncode}:\n{tail}")
    return json.loads(out.strip().splitlines()[-1])


def run_one(args, cwd, tag, *extra):
    """One command; returns (report, wall seconds from launch to exit)."""
    t0 = time.perf_counter()
    proc, err = launch(tune_command(args, *extra), cwd, tag)
    report = finish(proc, err, tag)
    return report, time.perf_counter() - t0


def best_value(report):
    values = [t["value"] for t in report["trials"] if t["state"] == "COMPLETE"]
    return max(values) if values else None


def states(report):
    out = {}
    for t in report["trials"]:
        out[t["state"]] = out.get(t["state"], 0) + 1
    return out


def part_prune(args, cwd):
    log(f"\n== (prune) {args.trials} trials x {args.epochs} epochs, TPE, median pruner vs none; {cpu_model()}")
    rows = []
    for r in range(args.repeats):
        order = ("median", "none") if r % 2 == 0 else ("none", "median")
        for pruner in order:
            before = uptime()
            report, wall = run_one(args, cwd, f"prune-{pruner}-{r}", "--trials", args.trials, "--epochs",
                                   args.epochs, "--pruner", pruner, "--sampler", "tpe", "--seed", r,
                                   "--threads", 1, "--no-retrain")
            row = {"seed": r, "pruner": pruner, "wall_s": round(wall, 1), "search_s": report["seconds"],
                   "best_val": best_value(report), "states": states(report),
                   "epochs_trained": sum(t["epochs"] or 0 for t in report["trials"]),
                   "uptime_before": before, "uptime_after": uptime()}
            rows.append(row)
            log(f"seed {r} pruner {pruner:6}: wall {wall:7.1f} s (search {report['seconds']:.1f} s), best val "
                f"{row['best_val']:.4f}, {row['states']}, {row['epochs_trained']} epochs trained")
            log(f"   before: {before}\n   after:  {row['uptime_after']}")
    for r in range(args.repeats):
        m = next(x for x in rows if x["seed"] == r and x["pruner"] == "median")
        n = next(x for x in rows if x["seed"] == r and x["pruner"] == "none")
        log(f"seed {r}: none/median wall {n['wall_s'] / m['wall_s']:.2f}x, search {n['search_s'] / m['search_s']:.2f}x,"
            f" epochs {n['epochs_trained'] / m['epochs_trained']:.2f}x; best val none {n['best_val']:.4f} median "
            f"{m['best_val']:.4f} ({100 * (n['best_val'] - m['best_val']):+.2f} points)")
    return rows


def part_parallel(args, cwd):
    log(f"\n== (parallel) {args.trials} trials x {args.epochs} epochs, TPE + median, SQLite; 1 vs 2 processes; "
        f"{cpu_model()}")
    rows = []
    for n_proc in (1, 2):
        db = os.path.join(cwd, f"parallel-{n_proc}.db")
        if os.path.exists(db):
            os.remove(db)
        before = uptime()
        t0 = time.perf_counter()
        procs = [launch(tune_command(args, "--trials", args.trials, "--epochs", args.epochs, "--storage",
                                     f"sqlite:///{db}", "--study-name", "parallel", "--seed", 0, "--threads", 1,
                                     "--no-retrain"), cwd, f"parallel-{n_proc}-{k}") for k in range(n_proc)]
        reports = [finish(p, e, f"parallel-{n_proc}") for p, e in procs]
        wall = time.perf_counter() - t0
        finished = reports[-1]["finished"]
        total = sum(len(r["trials"]) for r in reports)
        search = max(r["seconds"] for r in reports)
        row = {"processes": n_proc, "wall_s": round(wall, 1), "search_s": search, "finished": finished,
               "ran": [r["ran"] for r in reports], "trials_ran": total,
               "trials_per_min": round(60 * total / wall, 2), "trials_per_min_search": round(60 * total / search, 2),
               "epochs_trained": sum(t["epochs"] or 0 for r in reports for t in r["trials"]),
               "uptime_before": before, "uptime_after": uptime()}
        rows.append(row)
        log(f"{n_proc} process(es): {total} trials ran ({finished} finished in the study) in {wall:.1f} s wall "
            f"(search {search:.1f} s): {row['trials_per_min']:.1f} trials/min ({row['trials_per_min_search']:.1f} "
            f"over the search alone), {row['epochs_trained']} epochs trained")
        log(f"   before: {before}\n   after:  {row['uptime_after']}")
    log(f"two processes / one: {rows[1]['trials_per_min'] / rows[0]['trials_per_min']:.2f}x trials per minute")
    return rows


def part_best(args, cwd):
    seconds = 60 * args.minutes
    log(f"\n== (best) 784-hidden-10 in {args.minutes:g} minutes: 2 processes x 1 thread, {args.best_epochs} epochs "
        f"per trial, TPE + median; {cpu_model()}")
    db = os.path.join(cwd, "best.db")
    if os.path.exists(db):
        os.remove(db)
    storage = f"sqlite:///{db}"
    space = json.dumps(BEST_SPACE)
    before = uptime()
    t0 = time.perf_counter()
    procs = [launch(tune_command(args, "--trials", 1000, "--timeout", seconds, "--epochs", args.best_epochs,
                                 "--space", space, "--storage", storage, "--study-name", "best", "--seed", k,
                                 "--threads", 1, "--no-retrain"), cwd, f"best-search-{k}") for k in range(2)]
    reports = [finish(p, e, "best-search") for p, e in procs]
    wall = time.perf_counter() - t0
    after_search = uptime()
    log(f"search: {sum(len(r['trials']) for r in reports)} trials in {wall:.1f} s wall (the last trial started "
        f"before the {seconds} s timeout finishes after it)\n   before: {before}\n   after:  {after_search}")
    final, _ = run_one(args, cwd, "best-retrain", "--trials", 1, "--epochs", args.best_epochs,
                                  "--space", space, "--storage", storage, "--study-name", "best", "--threads", 2)
    best = final["best"]
    log(f"best trial #{best['number']}: val_accuracy {best['value']:.4f}; config {best['config']}")
    log(f"retrained on 60000 images, {args.best_epochs} epochs: test accuracy {final['test_accuracy']:.4f} "
        f"({final['retrain_seconds']:.1f} s)\n   after:  {uptime()}")
    return {"search_wall_s": round(wall, 1), "trials": sum(len(r["trials"]) for r in reports),
            "states": {k: sum(states(r).get(k, 0) for r in reports) for k in ("COMPLETE", "PRUNED", "FAIL")},
            "best": best, "test_accuracy": final["test_accuracy"], "retrain_s": final["retrain_seconds"],
            "uptime_before": before, "uptime_after_search": after_search, "uptime_after": uptime()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["prune", "parallel", "best", "all"], default="all")
    parser.add_argument("--data-path", help="the MNIST folder (default: $FASTWB_MNIST)")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="(prune) pairs of studies, seeds 0, 1, ...")
    parser.add_argument("--minutes", type=float, default=10.0, help="(best) the search's time")
    parser.add_argument("--best-epochs", type=int, default=10, help="(best) epochs per trial and of the retraining")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="a folder for the studies and logs (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.data_path:
        args.data_path = os.path.abspath(args.data_path)
    elif not os.environ.get("FASTWB_MNIST"):
        parser.error("pass --data-path or set FASTWB_MNIST")
    cwd = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="fastwb-tune-bench-")
    os.makedirs(cwd, exist_ok=True)
    log(f"CPU {cpu_model()}, {os.cpu_count()} CPUs; {uptime()}; working in {cwd}")
    results = {"cpu": cpu_model(), "cpus": os.cpu_count()}
    parts = ["prune", "parallel", "best"] if args.part == "all" else [args.part]
    for part in parts:
        results[part] = {"prune": part_prune, "parallel": part_parallel, "best": part_best}[part](args, cwd)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
