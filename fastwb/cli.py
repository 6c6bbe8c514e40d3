"""The ``fastwb`` command line.

    fastwb info                  the build, OpenMP runtime, threads and BLAS
    fastwb train [options]       train an MLP (embedded digits by default) and report
    fastwb bench [options]       benchmark fastwb against NumPy and PyTorch, side by side
"""

import argparse
import json
import sys
import time

DEFAULTS = {  # per data set: hidden sizes, epochs, batch size
    "digits": ([128], 30, 32),
    "mnist": ([256], 5, 128),
    "fashion-mnist": ([256], 5, 128),
}


def _cmd_info(args):
    import fastwb

    if args.json:
        json.dump(fastwb._runtime.config(), sys.stdout, indent=2)
        print()
    else:
        fastwb.show_config()
    return 0


def _cmd_train(args):
    import numpy as np

    import fastwb
    from fastwb import datasets, slides

    if args.threads:
        fastwb.set_num_threads(args.threads)
    hidden, epochs, batch = DEFAULTS[args.dataset]
    hidden = args.hidden or hidden
    epochs = args.epochs or epochs
    batch = args.batch_size or batch
    dtype = np.dtype(args.dtype)
    try:
        X_train, y_train, X_test, y_test = datasets.load(args.dataset, args.data_path, dtype, rng=args.seed)
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"fastwb train: cannot load {args.dataset}: {e}", file=sys.stderr)
        return 2
    sizes = [X_train.shape[1], *hidden, int(max(y_train.max(), y_test.max())) + 1]
    model = fastwb.MLP(sizes, args.activation, dtype=dtype, rng=args.seed)
    hyper = {"lr": args.lr} if args.lr is not None else {}
    model.compile(args.optimizer, **hyper)
    say = print if not args.quiet else (lambda *a, **k: None)
    say(f"fastwb {fastwb.__version__}: training {model} on {args.dataset} "
        f"({len(X_train)} train / {len(X_test)} test), {args.optimizer} "
        f"lr {model.optimizer.hyper['lr']}, batch {batch}, {epochs} epochs, {fastwb.get_num_threads()} threads")
    t0 = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=epochs, batch_size=batch, rng=args.seed,
                        validation_data=(X_test, y_test), prune_schedule=args.prune, verbose=not args.quiet)
    seconds = time.perf_counter() - t0
    loss, accuracy = model.evaluate(X_test, y_test)
    train_seconds = sum(history["seconds"])
    say(f"\ntest accuracy {accuracy:.4f} (loss {loss:.4f})")
    say(f"training: {seconds:.2f} s, {epochs * len(X_train) / train_seconds:,.0f} samples/s")
    say("\nweight and bias statistics")
    for s in slides.weight_statistics(model):
        say(f"  layer {s['layer']}: W mean {s['W_mean']:+.4f} std {s['W_std']:.4f} | "
            f"b mean {s['b_mean']:+.4f} std {s['b_std']:.4f}")
    if args.prune is not None:
        say("sparsity per layer: " + ", ".join(f"{s:.3f}" for s in model.layer_sparsity()))
    if args.save:
        model.save(args.save)
        say(f"saved {args.save}")
    if args.plot:
        try:
            fastwb.visualize_weights(model).savefig(args.plot, dpi=80)
        except ImportError as e:
            print(f"fastwb train: no plot: {e}", file=sys.stderr)
            return 2
        say(f"wrote {args.plot}")
    if args.quiet:
        print(f"{accuracy:.4f}")
    return 0


def _cmd_bench(args):
    from fastwb import benchmark

    return benchmark.main(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="fastwb", description="fastwb: fast CPU kernels for weights and biases")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print the build, OpenMP runtime, thread count and BLAS")
    info.add_argument("--json", action="store_true", help="print the configuration as JSON")
    info.set_defaults(func=_cmd_info)

    train = sub.add_parser("train", help="train an MLP classifier and report accuracy, statistics and speed",
                           description="Train an MLP with softmax cross-entropy. Defaults: the embedded 8x8 "
                                       "digits, one hidden layer of 128 ReLU units, Adam, 30 epochs.")
    train.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    train.add_argument("--data-path", help="folder of the MNIST/Fashion-MNIST IDX files (default: $FASTWB_MNIST)")
    train.add_argument("--hidden", type=int, nargs="+", help="hidden layer sizes (digits: 128, mnist: 256)")
    train.add_argument("--activation", default="relu", choices=["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
    train.add_argument("--epochs", type=int, help="passes over the data (digits: 30, mnist: 5)")
    train.add_argument("--batch-size", type=int, help="mini-batch size (digits: 32, mnist: 128)")
    train.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd", "momentum", "rmsprop"])
    train.add_argument("--lr", type=float, help="learning rate (default: the optimizer's)")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--threads", type=int, help="fastwb threads (default: OMP_NUM_THREADS or all cores)")
    train.add_argument("--prune", type=float, metavar="SPARSITY",
                       help="prune weights gradually (cubic schedule) to this final sparsity, e.g. 0.9")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--plot", metavar="PNG", help="save the weight and bias plots here")
    train.add_argument("--save", metavar="NPZ", help="save the trained model here")
    train.add_argument("--quiet", action="store_true", help="print only the test accuracy")
    train.set_defaults(func=_cmd_train)

    bench = sub.add_parser("bench", help="measure the machine, then time fastwb against NumPy and PyTorch",
                           description="Measure copy bandwidth and GEMM rate, then time every comparison "
                                       "interleaved (paired median ratios) and print one table.")
    bench.add_argument("--quick", action="store_true", help="smaller problems and fewer repetitions (minutes)")
    bench.add_argument("--threads", type=int, help="fastwb and PyTorch threads (default: all)")
    bench.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32")
    bench.add_argument("--filter", help="only comparisons whose name contains this text (skips the scaling runs)")
    bench.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    bench.add_argument("--plot", metavar="PNG", help="write the figure (speedups, limits, size and thread scaling)")
    bench.add_argument("--markdown", metavar="MD", help="write BENCHMARKS.md-style Markdown")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
