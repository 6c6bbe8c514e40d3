"""The ``fastwb`` command line.

    fastwb info                  the build, OpenMP runtime, threads and BLAS
    fastwb info MODEL            a saved model: layers, parameters, sparsity, dtype, loss, steps
    fastwb train [options]       train an MLP (embedded digits by default) and report
    fastwb bench [options]       benchmark fastwb against NumPy and PyTorch, side by side
    fastwb export MODEL --onnx OUT.onnx [--softmax] [--opset N] [--keep-batchnorm]
                                 write a saved model's eval-mode network as ONNX
    fastwb attack MODEL --eps 0.1 [--attack fgsm|pgd] [--dataset mnist] [--save-examples PNG]
                                 clean and robust accuracy of a saved classifier under attack
    fastwb quantize MODEL -o OUT [--per-tensor] [--reduce-range | --full-range] [--dataset digits]
                                 write a saved model's int8 version and compare it with the float one
    fastwb federated [--dataset mnist] [--clients 100] [--fraction 0.1] [--rounds 50] [--partition iid,shards]
                                 federated learning on Flower's simulation engine: FedAvg, FedProx, DP
    fastwb tune [--dataset mnist] [--trials 50] [--timeout 600] [--storage sqlite:///tune.db] [--plots DIR]
                                 an Optuna search over MLP hyperparameters (pruned, resumable, shareable)
    fastwb --version

Every option is checked while the command line is parsed, before any data is
loaded or any work done: a bad value is one line on stderr and exit status 2.
Output paths (``--save``, ``--plot``, ``--plots``, ``--json``, ``--markdown``, ``--onnx``, ``-o``) are checked
up front too, so a typo never costs a finished run, and what ``train`` writes
is written atomically (:func:`fastwb._io.atomic_open`).
"""

import argparse
import inspect
import json
import math
import os
import sys
import time

from fastwb import optim
from fastwb._io import check_writable_path, write_figure
from fastwb._version import __version__

DEFAULTS = {  # per data set: hidden sizes, epochs, batch size
    "digits": ([128], 30, 32),
    "mnist": ([256], 5, 128),
    "fashion-mnist": ([256], 5, 128),
}

# Learning rates that differ from the optimizer class's own default.  Plain SGD's
# PyTorch-style default of 1e-3 reaches only 81.7% test accuracy with the MNIST
# defaults (784-256-10, 5 epochs, batch 128); 0.1 reaches 96.2%.  (momentum keeps
# its 0.01 with momentum 0.9.)
DEFAULT_LR = {"sgd": 0.1}
OPTIMIZERS = list(optim.BY_NAME)

MAX_THREADS = 1024  # more than any machine's cores; also keeps the count a C int


def default_lr(optimizer):
    """The learning rate ``fastwb train --optimizer NAME`` uses without ``--lr``:
    :data:`DEFAULT_LR`, else the optimizer class's own default."""
    if optimizer in DEFAULT_LR:
        return DEFAULT_LR[optimizer]
    return inspect.signature(optim.by_name(optimizer)).parameters["lr"].default


# -- argparse types: each turns one command-line word into a checked value, or
# raises ArgumentTypeError, which argparse reports as "argument --x: <message>".

def _number(text, kind, what):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text):
    """An integer >= 1 (sizes, counts, epochs)."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text):
    """An integer >= 0 (random seeds)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def thread_count(text):
    """An integer in [1, MAX_THREADS]."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {text!r}")
    return value


def positive_float(text):
    """A finite real number > 0 (learning rates)."""
    value = _number(text, float, "a positive number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def fraction(text):
    """A real number in [0, 1) (final sparsities)."""
    value = _number(text, float, "a number in [0, 1)")
    if not 0.0 <= value < 1.0:      # also false for NaN
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def output_path(text):
    """A file name that can be created: its folder exists and is writable."""
    try:
        return check_writable_path(text, "file")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def figure_path(text):
    """An :func:`output_path` whose extension matplotlib can write (none: PNG),
    with matplotlib installed."""
    path = output_path(text)
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise argparse.ArgumentTypeError('plots need matplotlib: pip install "fastwb[plots]"') from None
    extension = os.path.splitext(path)[1][1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if extension and extension not in formats:
        raise argparse.ArgumentTypeError(
            f"matplotlib cannot write .{extension} files ({path!r}); use one of: {', '.join(sorted(formats))}")
    return path


def onnx_path(text):
    """An :func:`output_path` for an ONNX file, with the onnx package installed."""
    path = output_path(text)
    try:
        import onnx  # noqa: F401
    except ImportError:
        from fastwb.nn.deploy import ONNX_MISSING

        raise argparse.ArgumentTypeError(ONNX_MISSING) from None
    return path


def opset_version(text):
    """An ONNX opset version, an integer >= 17 (the newest the installed onnx
    knows is checked when the model is exported)."""
    from fastwb.nn.deploy import MIN_OPSET

    value = _number(text, int, f"an integer >= {MIN_OPSET}")
    if value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"must be an integer >= {MIN_OPSET} (fastwb writes ONNX opset "
                                         f"{MIN_OPSET} or newer), got {text!r}")
    return value


def split_size(text):
    """A validation split: a row count >= 1 ("10000") or a fraction in (0, 1) ("0.2")."""
    what = f"must be a fraction in (0, 1) or a row count >= 1, got {text!r}"
    try:
        count = int(text)
    except ValueError:
        value = _number(text, float, "a fraction in (0, 1) or a row count >= 1")
        if not 0.0 < value < 1.0:       # also false for NaN
            raise argparse.ArgumentTypeError(what) from None
        return value
    if count < 1:
        raise argparse.ArgumentTypeError(what)
    return count


def storage_url(text):
    """An Optuna RDB storage URL (``sqlite:///file.db``, ``postgresql://...``); for
    SQLite the database file's folder must exist and be writable."""
    if text.startswith("sqlite:"):
        if not text.startswith("sqlite:///") or text == "sqlite:///":
            raise argparse.ArgumentTypeError(f"must be sqlite:///PATH (three slashes, then the file), got {text!r}")
        path = text[len("sqlite:///"):]
        if path != ":memory:":
            try:
                check_writable_path(path, "SQLite database")
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
    elif "://" not in text or text.startswith("://"):
        raise argparse.ArgumentTypeError(f"must be a database URL such as sqlite:///tune.db, got {text!r}")
    return text


def search_space(text):
    """``fastwb tune --space``: a JSON object (inline, or the path of a file holding
    one) whose keys replace those of :data:`fastwb.tune.DEFAULT_SPACE`; checked now."""
    from fastwb import tune

    source = text
    if not text.lstrip().startswith("{"):
        try:
            with open(text, encoding="utf-8") as fh:
                source = fh.read(1 << 20)
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {text!r}: {e.strerror or e}") from None
    try:
        edits = json.loads(source)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    try:
        return tune.edit_space(edits)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def plots_folder(text):
    """A folder for figures: an existing writable folder, or one that can be made
    (its parent exists and is writable); matplotlib must be installed."""
    if not text:
        raise argparse.ArgumentTypeError("the plots folder is empty")
    if os.path.exists(text):
        if not os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
        if not os.access(text, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"folder {text!r} is not writable")
    else:
        try:
            check_writable_path(text, "plots folder")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError('plots need matplotlib: pip install "fastwb[tune]"') from None
    return text


def non_negative_float(text):
    """A finite real number >= 0."""
    value = _number(text, float, "a number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def unit_fraction(text):
    """A real number in (0, 1] (a share of clients)."""
    value = _number(text, float, "a number in (0, 1]")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def open_unit(text):
    """A real number in (0, 1) (an accuracy target, a delta)."""
    value = _number(text, float, "a number in (0, 1)")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def partitions(text):
    """A comma-separated list of data partitions: iid, shards."""
    names = [t.strip() for t in text.split(",")]
    bad = [n for n in names if n not in ("iid", "shards")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"must be iid, shards or both (iid,shards), got {text!r}")
    return list(dict.fromkeys(names))


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error on one line of stderr and exit status 2."""

    def error(self, message):
        message = " ".join(str(message).split("\n"))    # a value may hold a newline
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# -- the commands ---------------------------------------------------------------

def _fail(command, message, status=2):
    """One line on stderr, ``fastwb COMMAND: message``; returns the exit status."""
    print(f"fastwb {command}: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def _load_model(command, path, load=None):
    """``(model, None)`` from the checkpoint at ``path`` (:func:`fastwb.nn.load`, or
    ``load``), or ``(None, exit status)`` after one line on stderr for a missing or bad file."""
    if load is None:
        from fastwb.nn import load

    try:
        return load(path), None
    except OSError as e:
        return None, _fail(command, f"cannot load {path}: {e.strerror or e}")
    except ValueError as e:             # a damaged or foreign file: the message usually names it first
        return None, _fail(command, f"cannot load {e}" if str(e).startswith(f"{path}:") else f"cannot load {path}: {e}")


def _data_path_option(parser):
    """``--data-path``, where the MNIST/Fashion-MNIST IDX files are (every command that loads a data set)."""
    parser.add_argument("--data-path", help="folder of the MNIST/Fashion-MNIST IDX files "
                                            "(default: $FASTWB_MNIST, or $FASTWB_FASHION_MNIST for fashion-mnist)")


def _test_data_options(parser, default):
    """``--dataset`` and ``--data-path`` of a command that reads a test split (:func:`_test_split`)."""
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default=default,
                        help=f"the test images (default: {default}; the model must take their pixel count)")
    _data_path_option(parser)


def _test_split(command, model, args):
    """``(X, y, None)``: the test split of ``args.dataset`` in the model's dtype, its
    width checked against the model's; or ``(None, None, exit status)`` after one line on stderr."""
    from fastwb import datasets

    try:
        _, _, X, y = datasets.load(args.dataset, args.data_path, model.dtype, rng=args.seed)
    except (ImportError, FileNotFoundError, ValueError) as e:
        return None, None, _fail(command, f"cannot load {args.dataset}: {e}")
    if X.shape[1] != model.in_features:
        return None, None, _fail(command, f"{args.model} takes {model.in_features} features, but the "
                                          f"{args.dataset} images have {X.shape[1]}")
    return X, y, None


def model_summary(model):
    """What ``fastwb info MODEL`` reports, JSON-serialisable: class, dtype, widths,
    loss, step count, epochs done, the total parameter count, the overall Linear
    sparsity, and per layer its index, type, repr, configuration, parameter
    count and (Linear layers; None for the others) sparsity."""
    from fastwb.nn import Linear

    linear_sparsity = iter(model.layer_sparsity())
    layers = []
    for i, layer in enumerate(model.layers):
        layers.append({"index": i, "type": type(layer).__name__, "repr": repr(layer), "config": layer.config(),
                       "parameters": sum(math.prod(s) for s in layer.param_shapes().values()),
                       "sparsity": next(linear_sparsity) if isinstance(layer, Linear) else None})
    return {"class": type(model).__name__, "dtype": model.dtype.name, "in_features": model.in_features,
            "out_features": model.out_features, "loss": model.loss.name, "step_count": model.step_count,
            "epochs_done": model.epochs_done, "parameters": model.n_params, "sparsity": model.sparsity(),
            "layers": layers}


def summary_lines(summary, name):
    """:func:`model_summary` as text lines."""
    s = summary
    lines = [f"{name}: {s['class']}, {s['dtype']}, {s['in_features']} -> {s['out_features']} features, loss "
             f"{s['loss']}, {s['step_count']} steps, {s['epochs_done']} epochs done"]
    rows = [("#", "layer", "parameters", "sparsity")]
    rows += [(str(la["index"]), la["repr"], f"{la['parameters']:,}",
              "" if la["sparsity"] is None else f"{la['sparsity']:.4f}") for la in s["layers"]]
    rows.append(("total", "", f"{s['parameters']:,}", f"{s['sparsity']:.4f}"))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}".rstrip())
    lines.append("  (sparsity: the fraction of exactly-zero Linear weights; total: over all Linear weights)")
    return lines


def _checkpoint_kind(path):
    """What the fastwb file at ``path`` holds, from its zip directory and format
    member alone: "quantized" (:meth:`fastwb.quantize.QuantizedModel.save`),
    "ensemble" (:meth:`fastwb.ensemble.Ensemble.save`), or None: a float
    checkpoint, or a file whose loader will say what is wrong with it."""
    from fastwb._io import NpzReader
    from fastwb.ensemble import ENSEMBLE_FORMAT

    try:
        with NpzReader(path) as npz:
            if "quantized" in npz.members:
                return "quantized"
            if "format" in npz.members and str(npz.read("format", max_bytes=1024)) == ENSEMBLE_FORMAT:
                return "ensemble"
    except (OSError, ValueError):
        pass
    return None


def quantized_summary(q):
    """What ``fastwb info MODEL`` reports for a quantized model, JSON-serialisable:
    its repr, kernel path (and the paths this CPU can run), the bytes of its
    arrays, and its specification (:meth:`fastwb.quantize.QuantizedModel.spec`)."""
    from fastwb import quantize

    return {"class": type(q).__name__, "repr": repr(q), "kernel_path": q.path,
            "available_paths": quantize.available_paths(), "nbytes": q.nbytes, "in_features": q.in_features,
            "out_features": q.out_features, **q.spec()}


def quantized_lines(summary, name):
    """:func:`quantized_summary` as text lines."""
    s = summary
    lines = [f"{name}: {s['repr']}",
             (f"  kernel path {s['kernel_path']} (this CPU runs {', '.join(s['available_paths'])}; "
              "FASTWB_INT8_PATH chooses)"),
             f"  {s['nbytes']:,} bytes of arrays: packed int8 weights, int32 column sums, float32 scales and biases",
             (f"  {'per-channel' if s['per_channel'] else 'per-tensor'} weight scales, "
              f"{'7' if s['reduce_range'] else '8'}-bit activations, loss {s['loss']}")]
    rows = [("#", "layer", "activation", "bias")]
    rows += [(str(i), f"Linear({la['in_features']}, {la['out_features']}) int8", la["activation"],
              "yes" if la["bias"] else "no") for i, la in enumerate(s["layers"])]
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    return lines


def _info_file(args, load, summarise, lines):
    """``fastwb info MODEL``: the summary of a model file, as text or JSON."""
    model, status = _load_model("info", args.model, load)
    if model is None:
        return status
    summary = summarise(model)
    if args.json:
        json.dump({"model": args.model, **summary}, sys.stdout, indent=2)
        print()
    else:
        print("\n".join(lines(summary, args.model)))
    return 0


def _cmd_info(args):
    import fastwb

    if args.model is not None and _checkpoint_kind(args.model) == "quantized":
        from fastwb import quantize
        return _info_file(args, quantize.load, quantized_summary, quantized_lines)
    if args.model is not None:
        return _info_file(args, None, model_summary, summary_lines)
    if args.json:
        json.dump(fastwb._runtime.config(), sys.stdout, indent=2)
        print()
    else:
        fastwb.show_config()
    return 0


def build_model(sizes, activation, batchnorm=False, dropout=0.0, dtype="float32", seed=0):
    """The model ``fastwb train`` trains: ``fastwb.MLP(sizes, activation)``, or with
    ``batchnorm`` / ``dropout`` a :class:`fastwb.nn.Sequential` whose hidden layers are
    Linear -> [BatchNorm1d] -> activation -> [Dropout(dropout)] (He-initialised as the MLP)."""
    import fastwb
    from fastwb import nn

    if not batchnorm and not dropout:
        return fastwb.MLP(sizes, activation, dtype=dtype, rng=seed)
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(nn.Linear(n_in, n_out, init="he"))
        if batchnorm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.activation_layer(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-2], sizes[-1], init="he"))
    return nn.Sequential(*layers, dtype=dtype, rng=seed)


def _cmd_train(args):
    import numpy as np

    import fastwb
    from fastwb import datasets, slides

    def fail(message, status=2):
        print(f"fastwb train: {message}", file=sys.stderr)
        return status

    hidden, epochs, batch = DEFAULTS[args.dataset]
    hidden = args.hidden if args.hidden is not None else hidden
    epochs = args.epochs if args.epochs is not None else epochs
    batch = args.batch_size if args.batch_size is not None else batch
    lr = args.lr if args.lr is not None else default_lr(args.optimizer)
    if args.threads is not None:
        fastwb.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype)
    try:
        X_train, y_train, X_test, y_test = datasets.load(args.dataset, args.data_path, dtype, rng=args.seed)
    except (ImportError, FileNotFoundError, ValueError) as e:
        return fail(f"cannot load {args.dataset}: {e}")
    sizes = [X_train.shape[1], *hidden, int(max(y_train.max(), y_test.max())) + 1]
    try:
        model = build_model(sizes, args.activation, args.batchnorm, args.dropout, dtype, args.seed)
    except (MemoryError, ValueError) as e:
        return fail(f"cannot build a {'-'.join(map(str, sizes))} model: {e}")
    model.compile(args.optimizer, lr=lr)
    say = print if not args.quiet else (lambda *a, **k: None)
    comm, root = None, True
    if args.distributed:
        if args.ensemble:
            return fail("--distributed trains one model: it cannot be combined with --ensemble")
        try:
            from fastwb import distributed
            comm = distributed.require_mpi().COMM_WORLD
        except ImportError as e:
            return fail(str(e))
        if batch % comm.Get_size():
            return fail(f"--batch-size {batch} is the global batch: it must be a multiple of the "
                        f"{comm.Get_size()} ranks")
        root = comm.Get_rank() == 0
        rows = distributed.shard(len(X_train), comm)
        X_train, y_train = X_train[rows], y_train[rows]
        if not root:                    # rank 0 alone prints, saves and plots
            say, args.quiet, args.save, args.plot = (lambda *a, **k: None), False, None, None
    if args.ensemble:
        return _train_ensemble(args, model, sizes, dtype, lr, epochs, batch, (X_train, y_train, X_test, y_test),
                               say, fail)
    n_rows = len(X_train) if comm is None else comm.allreduce(len(X_train))
    ranks = "" if comm is None else f" over {comm.Get_size()} ranks"
    say(f"fastwb {fastwb.__version__}: training {model} on {args.dataset} "
        f"({n_rows} train{ranks} / {len(X_test)} test), {args.optimizer} "
        f"lr {model.optimizer.hyper['lr']}, batch {batch}, {epochs} epochs, {fastwb.get_num_threads()} threads")
    t0 = time.perf_counter()
    try:
        adversarial = None if args.adversarial is None else dict(attack="fgsm", eps=args.adversarial, ratio=0.5)
        history = model.fit(X_train, y_train, epochs=epochs, batch_size=batch, rng=args.seed,
                            validation_data=(X_test, y_test), prune_schedule=args.prune,
                            verbose=not args.quiet and root, adversarial=adversarial, comm=comm)
    except ValueError as e:         # what fit refuses before training (e.g. BatchNorm and a one-row last batch)
        return fail(str(e))
    seconds = time.perf_counter() - t0
    loss, accuracy = model.evaluate(X_test, y_test)
    train_seconds = sum(history["seconds"])
    say(f"\ntest accuracy {accuracy:.4f} (loss {loss:.4f})")
    say(f"training: {seconds:.2f} s, {epochs * n_rows / max(train_seconds, 1e-9):,.0f} samples/s{ranks}")
    say("\nweight and bias statistics")
    for s in slides.weight_statistics(model):
        say(f"  layer {s['layer']}: W mean {s['W_mean']:+.4f} std {s['W_std']:.4f} | "
            f"b mean {s['b_mean']:+.4f} std {s['b_std']:.4f}")
    if args.prune is not None:
        say("sparsity per layer: " + ", ".join(f"{s:.3f}" for s in model.layer_sparsity()))
    status = _save(model, args.save, say, fail)
    if args.plot:
        try:
            write_figure(fastwb.visualize_weights(model), args.plot, dpi=80)
            say(f"wrote {args.plot}")
        except OSError as e:
            status = fail(f"cannot write {args.plot}: {e}", 1)
    if args.quiet and root:
        print(f"{accuracy:.4f}")
    return status


def _save(trained, path, say, fail):
    """``fastwb train --save``: the model or ensemble to ``path`` (when given); the exit status."""
    if not path:
        return 0
    try:
        trained.save(path)
        say(f"saved {path}")
        return 0
    except OSError as e:
        return fail(f"cannot save {path}: {e}", 1)


def _train_ensemble(args, first, sizes, dtype, lr, epochs, batch, data, say, fail):
    """``fastwb train --ensemble N``: N members built as the single model is (seeds
    seed, seed + 1, ...), trained independently or batched, scored together."""
    import numpy as np

    import fastwb
    from fastwb.ensemble import Ensemble

    X_train, y_train, X_test, y_test = data

    def member(i):
        model = first if i == 0 else build_model(sizes, args.activation, args.batchnorm, args.dropout, dtype,
                                                 args.seed + i)
        return model if i == 0 else model.compile(args.optimizer, lr=lr)

    ens = Ensemble(member, n_members=args.ensemble, rng=args.seed)
    say(f"fastwb {fastwb.__version__}: training {args.ensemble} members of {first!r} on {args.dataset} "
        f"({len(X_train)} train / {len(X_test)} test), {args.optimizer} lr {first.optimizer.hyper['lr']}, "
        f"batch {batch}, {epochs} epochs{', batched' if args.batched else ''}, {fastwb.get_num_threads()} threads")
    kwargs = dict(epochs=epochs, batch_size=batch, validation_data=(X_test, y_test), verbose=not args.quiet)
    if args.adversarial is not None:
        kwargs["adversarial"] = dict(attack="fgsm", eps=args.adversarial, ratio=0.5)
    if args.prune is not None:
        kwargs["prune_schedule"] = args.prune
    t0 = time.perf_counter()
    try:
        ens.fit(X_train, y_train, batched=args.batched, **kwargs)
    except (TypeError, ValueError) as e:
        return fail(str(e))
    seconds = time.perf_counter() - t0
    scores = ens.scores(X_test, y_test)
    members = [float(np.mean(m.predict(X_test) == y_test)) for m in ens.members]
    say(f"\nensemble test accuracy {scores['accuracy']:.4f}, NLL {scores['nll']:.4f}, "
        f"Brier {scores['brier']:.4f}, ECE {scores['ece']:.4f}")
    say("members' test accuracy: " + ", ".join(f"{a:.4f}" for a in members))
    say(f"training: {seconds:.2f} s, {args.ensemble * epochs * len(X_train) / max(seconds, 1e-9):,.0f} samples/s")
    status = _save(ens, args.save, say, fail)
    if args.quiet:
        print(f"{scores['accuracy']:.4f}")
    return status


def _cmd_bench(args):
    from fastwb import benchmark

    sections = [f"--{s}" for s in ("contention", "cgroup", "inference") if getattr(args, s, False)]
    extra = [f"--{o}" for o in ("plot", "markdown") if getattr(args, o, None)]
    if sections and extra:
        # a usage error like the parser's: one line on stderr, exit status 2, before any work
        print(f"fastwb bench: error: {' and '.join(extra)}: for the comparison report only, not with "
              f"{' '.join(sections)} (use --json; see 'fastwb bench --help')", file=sys.stderr)
        raise SystemExit(2)
    return benchmark.main(args)


def _cmd_export(args):
    model, status = _load_model("export", args.model)
    if model is None:
        return status
    try:
        model.export_onnx(args.onnx, opset=args.opset, softmax=args.softmax, fold_batchnorm=not args.keep_batchnorm)
    except ImportError as e:
        return _fail("export", e)
    except ValueError as e:             # an opset newer than onnx knows, a BatchNorm without running statistics
        return _fail("export", f"cannot export {args.model}: {e}")
    except OSError as e:
        return _fail("export", f"cannot write {args.onnx}: {e}", 1)
    outputs = "logits" + (" and probabilities" if args.softmax else "")
    print(f"wrote {args.onnx}: ONNX opset {args.opset}, {model.dtype.name}, input x (batch, {model.in_features}), "
          f"{outputs} (batch, {model.out_features}), BatchNorm "
          + ("kept" if args.keep_batchnorm else "folded into the Linear layers"))
    return 0


def _cmd_explain(args):
    import numpy as np

    import fastwb
    from fastwb import explain

    model, status = _load_model("explain", args.model)
    if model is None:
        return status
    if args.threads is not None:
        fastwb.set_num_threads(args.threads)
    X, y, status = _test_split("explain", model, args)
    if X is None:
        return status
    X, y = np.ascontiguousarray(X[:args.n]), y[:args.n]
    kw = {"wrt": args.wrt, "labels": y if args.wrt == "loss" else None}
    try:
        if args.method == "saliency":
            maps = explain.saliency(model, X, **kw)
        elif args.method == "gradient_x_input":
            maps = explain.gradient_x_input(model, X, **kw)
        elif args.method == "smoothgrad":
            maps = explain.smoothgrad(model, X, rng=args.seed, **kw)
        else:
            maps = explain.integrated_gradients(model, X, **kw)
    except (TypeError, ValueError) as e:       # wrt="prob" of a regression model, class labels for another loss
        return _fail("explain", f"cannot explain {args.model}: {e}")
    classes = model.loss.name == "cross_entropy"
    predicted = model.predict(X) if classes else None
    titles = [f"label {label}" + (f", predicted {p}" if classes else "")
              for label, p in zip(y.tolist(), predicted.tolist() if classes else y.tolist())]
    side = math.isqrt(X.shape[1])
    shape = (side, side) if side * side == X.shape[1] else (1, X.shape[1])
    signed = args.method in ("gradient_x_input", "integrated_gradients")
    try:
        write_figure(explain.plot_saliency(X, maps, shape, titles, cmap="bwr" if signed else "hot"), args.out, dpi=80)
    except OSError as e:
        return _fail("explain", f"cannot write {args.out}: {e}", 1)
    right = f", {int(np.count_nonzero(predicted == y))} of them predicted correctly" if classes else ""
    print(f"wrote {args.out}: {args.method} ({args.wrt}) of the first {len(X)} {args.dataset} test images{right}")
    return 0


METRIC_NAMES = {"cross_entropy": "accuracy", "bce_with_logits": "accuracy", "mse": "R^2"}


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:             # one of them does not exist (yet)
        return False


def _cmd_quantize(args):
    import numpy as np

    import fastwb
    from fastwb import quantize

    kind = _checkpoint_kind(args.model)
    if kind == "quantized":
        return _fail("quantize", f"{args.model} is already an int8 model (fastwb quantize); quantize the float "
                                 "model it was made from")
    if kind == "ensemble":
        return _fail("quantize", f"{args.model} is a deep ensemble (fastwb train --ensemble); fastwb quantize "
                                 "takes one model")
    if _same_file(args.model, args.output):
        return _fail("quantize", f"-o {args.output} is the float model itself; write the int8 model to another file")
    model, status = _load_model("quantize", args.model)
    if model is None:
        return status
    if args.threads is not None:
        fastwb.set_num_threads(args.threads)
    model.eval()
    try:
        q = quantize.quantize_dynamic(model, per_channel=not args.per_tensor,
                                      reduce_range=args.reduce_range)
    except ValueError as e:         # training-only layers in the wrong place, NaN weights, a float16 model, ...
        return _fail("quantize", f"cannot quantize {args.model}: {e}")
    X, y, status = _test_split("quantize", model, args)
    if X is None:
        return status
    if model.loss.name == "cross_entropy" and len(y) and int(y.max()) >= model.out_features:
        return _fail("quantize", f"{args.model} has {model.out_features} classes, but the {args.dataset} labels "
                                 f"go up to {int(y.max())}")
    X = np.ascontiguousarray(X)
    X32 = X if X.dtype == np.float32 else X.astype(np.float32)
    try:
        before = model.evaluate(X, y, batch_size=args.batch_size)[1]
        after = q.evaluate(X32, y, batch_size=args.batch_size)[1]
    except ValueError as e:         # labels that do not fit the model's loss
        return _fail("quantize", f"cannot evaluate {args.model} on the {args.dataset} test split: {e}")
    seconds = []
    for run in (lambda: model.logits(X, args.batch_size), lambda: q.logits(X32, args.batch_size)):
        run()                       # warm: workspaces and plans exist, caches are filled
        t0 = time.perf_counter()
        out = run()
        seconds.append(time.perf_counter() - t0)
        if len(seconds) == 1:
            float_logits = out
    drift = float(np.max(np.abs(out.astype(np.float64) - float_logits))) if out.size else 0.0
    try:
        q.save(args.output)
    except OSError as e:
        return _fail("quantize", f"cannot write {args.output}: {e}", 1)
    size_before, size_after = model.params.nbytes, q.nbytes
    metric = METRIC_NAMES.get(model.loss.name, "score")
    threads = fastwb.get_num_threads()
    if args.json:
        print(json.dumps({"model": args.model, "output": args.output, "dataset": args.dataset, "n": len(X),
                          "kernel_path": q.path, "per_channel": q.per_channel, "reduce_range": q.reduce_range,
                          "nbytes_before": size_before, "nbytes_after": size_after, "metric": metric,
                          "before": before, "after": after, "max_abs_logit_diff": drift,
                          "seconds_before": seconds[0], "seconds_after": seconds[1], "threads": threads}))
        return 0
    change = (f"{100 * (after - before):+.2f} points" if metric == "accuracy" else f"{after - before:+.4f}")
    print(f"wrote {args.output}: {q!r}")
    print(f"kernel path      {q.path} (this CPU runs {', '.join(quantize.available_paths())})")
    print(f"size             {size_before:,} -> {size_after:,} bytes ({size_before / max(size_after, 1):.2f}x smaller: "
          f"{model.dtype.name} parameters -> int8 weights with their scales, column sums and biases)")
    print(f"test {metric:<12}{before:.4f} -> {after:.4f} ({change}) on {len(X)} {args.dataset} test images")
    print(f"max |logit diff| {drift:.4g} ({model.dtype.name} model vs int8, over the test split)")
    print(f"inference        {seconds[0] * 1e3:.3g} ms -> {seconds[1] * 1e3:.3g} ms "
          f"(speed-up {seconds[0] / max(seconds[1], 1e-12):.2f}x; one warm run each, batch {args.batch_size}, "
          f"up to {threads} thread{'s' if threads > 1 else ''})")
    return 0


def attack_budget(text):
    """An attack budget: a finite real number >= 0 (input units: pixels in [0, 1])."""
    value = _number(text, float, "a number >= 0")
    if not (math.isfinite(value) and value >= 0.0):      # also false for NaN
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _cmd_attack(args):
    import numpy as np

    import fastwb
    from fastwb import adversarial

    if args.attack == "fgsm":
        given = [o for o, v in (("--steps", args.steps), ("--alpha", args.alpha)) if v is not None]
        if given:       # a usage error like the parser's, before any work
            what = "PGD options" if len(given) > 1 else "a PGD option"
            print(f"fastwb attack: error: {' and '.join(given)}: {what}, not for --attack fgsm "
                  "(see 'fastwb attack --help')", file=sys.stderr)
            raise SystemExit(2)
    model, status = _load_model("attack", args.model)
    if model is None:
        return status
    if model.loss.name != "cross_entropy":
        return _fail("attack", f"{args.model} is trained with {model.loss.name}; robust accuracy needs a "
                               "classifier trained with cross_entropy")
    if args.threads is not None:
        fastwb.set_num_threads(args.threads)
    X, y, status = _test_split("attack", model, args)
    if X is None:
        return status
    if int(y.max()) >= model.out_features:
        return _fail("attack", f"{args.model} has {model.out_features} classes, but the {args.dataset} labels go "
                               f"up to {int(y.max())}")
    if args.limit is not None:
        X, y = X[:args.limit], y[:args.limit]
    X = np.ascontiguousarray(X)
    options = {}
    if args.attack == "pgd":
        steps = args.steps if args.steps is not None else 10
        options = {"steps": steps, "alpha": args.alpha, "rng": args.seed}
    t0 = time.perf_counter()
    try:
        report = adversarial.robustness(model, X, y, attack=args.attack, eps=args.eps, batch_size=args.batch_size,
                                        return_examples=args.save_examples is not None, **options)
    except ValueError as e:         # a model whose output is not finite (NaN in the gradient), ...
        return _fail("attack", f"cannot attack {args.model}: {e}")
    seconds = time.perf_counter() - t0
    if args.attack == "pgd":
        alpha = args.alpha if args.alpha is not None else 2.5 * args.eps / options["steps"]
        how = f"PGD, {options['steps']} steps of {alpha:g} from a random start (seed {args.seed})"
    else:
        how = "FGSM"
    n = report["n"]
    summary = {"model": args.model, "dataset": args.dataset, "n": n, "attack": args.attack, "eps": args.eps,
               **({"steps": options["steps"], "alpha": alpha} if args.attack == "pgd" else {}),
               "clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["robust_accuracy"],
               "seconds": seconds}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.model} on {n} {args.dataset} test images, {how}, eps {args.eps:g} (L-inf, pixels in [0, 1])")
        print(f"clean accuracy   {report['clean_accuracy']:.4f}")
        print(f"robust accuracy  {report['robust_accuracy']:.4f}")
        print(f"attack and both evaluations: {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f} images/s, "
              f"{fastwb.get_num_threads()} threads)")
    if args.save_examples:
        try:
            figure = adversarial.plot_examples(X, report["adversarial"], y, report["clean_predictions"],
                                               report["adversarial_predictions"],
                                               title=f"{how}, eps {args.eps:g}: originals, adversarial examples, "
                                                     "perturbations")
            write_figure(figure, args.save_examples, dpi=80)
        except OSError as e:
            return _fail("attack", f"cannot write {args.save_examples}: {e}", 1)
        if not args.json:
            print(f"wrote {args.save_examples}")
    return 0


def _cmd_tune(args):
    from fastwb._extras import require

    try:
        optuna = require("optuna", "fastwb tune", "tune")
        if args.storage:
            require("sqlalchemy", "fastwb tune --storage", "tune")
    except ImportError as e:
        return _fail("tune", e)
    from fastwb import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.plots:
        import matplotlib
        matplotlib.use("Agg")               # headless: no window, whatever the environment says
    if args.save and args.no_retrain:
        return _fail("tune", "--save writes the retrained model: it cannot be combined with --no-retrain")
    threads = args.threads if args.threads is not None else (1 if args.storage else None)
    try:
        data = tune.load_split(args.dataset, args.data_path, args.val_size, args.seed)
    except (ImportError, FileNotFoundError, ValueError) as e:
        return _fail("tune", f"cannot load {args.dataset}: {e}")
    out = sys.stderr if args.json else sys.stdout

    def say(line):
        print(line, file=out, flush=True)

    name = args.study_name or f"fastwb-{args.dataset}"
    try:
        report = tune.run(data, trials=args.trials, timeout=args.timeout, storage=args.storage, study_name=name,
                          epochs=args.epochs, pruner=args.pruner, sampler=args.sampler, seed=args.seed,
                          n_threads=threads, space=args.space, plots=args.plots, retrain_best=not args.no_retrain,
                          save=args.save, say=say, table=say)
    except KeyboardInterrupt:
        if not args.storage:
            return _fail("tune", "interrupted; the study was in memory (no --storage), so it is gone", 130)
        return _fail("tune", f"interrupted: a trial that was running is recorded as FAIL in the study; the same "
                             f"command (--storage {args.storage} --study-name {name}) goes on from there", 130)
    except ValueError as e:          # a stored study of another direction, a space the engine refuses
        return _fail("tune", e)
    except OSError as e:
        return _fail("tune", f"cannot write: {e}", 1)
    if args.json:
        import fastwb

        report.update(dataset=args.dataset, epochs=args.epochs, pruner=args.pruner, sampler=args.sampler,
                      threads=threads if threads is not None else fastwb.get_num_threads())
        print(tune.dumps(report))
    return 0


def _cmd_federated(args):
    import numpy as np

    import fastwb
    from fastwb import datasets

    try:
        from fastwb import federated
    except ImportError as e:
        return _fail("federated", e)
    if args.clip is None and args.noise:
        return _fail("federated", "--noise needs --clip (the noise is a multiple of the clipping norm)")
    try:
        X_train, y_train, X_test, _ = datasets.load(args.dataset, args.data_path, np.float32, rng=args.seed)
    except (ImportError, FileNotFoundError, ValueError) as e:
        return _fail("federated", f"cannot load {args.dataset}: {e}")
    hidden = args.hidden if args.hidden is not None else ([200, 200] if args.dataset != "digits" else [32])
    sizes = [X_train.shape[1], *hidden, int(y_train.max()) + 1]
    say = print if not args.json else (lambda *a, **k: None)
    sampled = max(1, round(args.fraction * args.clients))
    summary = {"dataset": args.dataset, "model": "-".join(map(str, sizes)), "clients": args.clients,
               "fraction": args.fraction, "sampled": sampled, "rounds": args.rounds, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "strategy": "FedProx" if args.proximal_mu else "FedAvg",
               "proximal_mu": args.proximal_mu, "target": args.target, "runs": {}}
    strategy = f"FedProx (mu {args.proximal_mu:g})" if args.proximal_mu else "FedAvg"
    say(f"fastwb {fastwb.__version__}: {strategy} on Flower's simulation engine, {args.dataset} "
        f"{summary['model']}, {args.clients} clients ({sampled} a round), {args.rounds} rounds, E={args.epochs}, "
        f"B={args.batch_size}, SGD lr {args.lr:g}"
        + ("" if args.clip is None else f", client-level DP: clip {args.clip:g}, noise multiplier {args.noise:g}"))
    curves = {}
    for scheme in args.partition:
        say(f"\n{scheme} partition:")
        model = build_model(sizes, args.activation, args.batchnorm, 0.0, "float32", args.seed)

        def progress(r, accuracy, loss, seconds):
            say(f"round {r:4d}  accuracy {accuracy:.4f}  loss {loss:.4f}  {seconds:6.2f} s", flush=True)

        try:
            h = federated.simulate(model, dataset=args.dataset, data_path=args.data_path, clients=args.clients,
                                   fraction=args.fraction, rounds=args.rounds, scheme=scheme, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, proximal_mu=args.proximal_mu,
                                   batchnorm="local" if args.fedbn else "average", clip=args.clip,
                                   noise=args.noise, delta=args.delta, target=args.target, seed=args.seed,
                                   threads_per_client=args.threads_per_client, on_round=progress)
        except (ValueError, RuntimeError) as e:
            return _fail("federated", e, 1)
        reached = h["rounds_to_target"]
        say(f"{scheme}: " + (f"{args.target:.0%} test accuracy after {reached} rounds" if reached else
                             f"{args.target:.0%} not reached in {args.rounds} rounds")
            + f"; final {h['accuracy'][-1]:.4f}; client training {h['train_seconds']:.1f} s, copying "
              f"{h['copy_seconds']:.2f} s ({h['copy_seconds'] / max(h['train_seconds'], 1e-9):.1%})"
            + ("" if h["epsilon"] is None else f"; ({h['epsilon']:.2f}, {args.delta:g})-DP per client"))
        summary["runs"][scheme] = h
        curves["IID" if scheme == "iid" else "non-IID (shards)"] = h["accuracy"]
    if len(args.partition) > 1:
        say("\nrounds to " + f"{args.target:.0%}: " + ", ".join(
            f"{s} {summary['runs'][s]['rounds_to_target'] or f'>{args.rounds}'}" for s in args.partition))
    if args.plot:
        try:
            write_figure(federated.plot_accuracy(curves, args.target,
                                                  f"{strategy}, {summary['model']}, C={args.fraction:g}, "
                                                  f"E={args.epochs}, B={args.batch_size}"), args.plot, dpi=90)
        except OSError as e:
            return _fail("federated", f"cannot write {args.plot}: {e}", 1)
        say(f"wrote {args.plot}")
    if args.json:
        print(json.dumps(summary))
    return 0


def build_parser():
    from fastwb.nn.deploy import MIN_OPSET

    parser = _Parser(prog="fastwb", description="fastwb: fast CPU kernels for weights and biases")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print the build, OpenMP runtime, thread count and BLAS, or describe a "
                                       "saved model")
    info.add_argument("model", nargs="?", metavar="MODEL",
                      help="a model saved by fastwb (Sequential.save, fastwb train --save): print its layers, "
                           "parameter counts, Linear sparsity, dtype, loss, steps and epochs instead; for an int8 "
                           "model (fastwb quantize) its layers, kernel path and size in bytes")
    info.add_argument("--json", action="store_true", help="print the configuration (or the model's summary) as JSON")
    info.set_defaults(func=_cmd_info)

    train = sub.add_parser("train", help="train an MLP classifier and report accuracy, statistics and speed",
                           description="Train an MLP with softmax cross-entropy. Defaults: the embedded 8x8 "
                                       "digits, one hidden layer of 128 ReLU units, Adam, 30 epochs.")
    train.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    _data_path_option(train)
    train.add_argument("--hidden", type=positive_int, nargs="+", metavar="N",
                       help="hidden layer sizes (digits: 128, mnist: 256)")
    train.add_argument("--activation", default="relu", choices=["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
    train.add_argument("--epochs", type=positive_int, help="passes over the data (digits: 30, mnist: 5)")
    train.add_argument("--batch-size", type=positive_int, help="mini-batch size (digits: 32, mnist: 128)")
    train.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    train.add_argument("--lr", type=positive_float, help="learning rate (default: " + ", ".join(
        f"{name} {default_lr(name):g}" for name in OPTIMIZERS) + ")")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--threads", type=thread_count, help="fastwb threads (default: OMP_NUM_THREADS, else the CPUs this process may use: affinity and cgroup quota)")
    train.add_argument("--prune", type=fraction, metavar="SPARSITY",
                       help="prune weights gradually (cubic schedule) to this final sparsity in [0, 1), e.g. 0.9")
    train.add_argument("--batchnorm", action="store_true", help="BatchNorm1d after every hidden Linear layer")
    train.add_argument("--dropout", type=fraction, default=0.0, metavar="P",
                       help="dropout probability after every hidden activation (default 0: none)")
    train.add_argument("--adversarial", type=positive_float, metavar="EPS",
                       help="adversarial training: each batch half clean, half FGSM examples at this eps "
                            "(pixels in [0, 1]), e.g. 0.1")
    train.add_argument("--ensemble", type=positive_int, metavar="N",
                       help="train a deep ensemble of N members (seeds seed, seed + 1, ...) and score it "
                            "(accuracy, NLL, Brier, ECE); --save writes the ensemble")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over MPI (run under mpirun -n N): each rank trains on its block of the "
                            "training set, --batch-size is the global batch; only rank 0 prints and saves")
    train.add_argument("--batched", action="store_true",
                       help="with --ensemble: all members on one shared sequence of batches, one fused "
                            "optimizer pass (faster, less diverse)")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--plot", type=figure_path, metavar="PNG",
                       help="save the weight and bias plots here (format from the extension)")
    train.add_argument("--save", type=output_path, metavar="NPZ", help="save the trained model here")
    train.add_argument("--quiet", action="store_true", help="print only the test accuracy")
    train.set_defaults(func=_cmd_train)

    bench = sub.add_parser("bench", help="measure the machine, then time fastwb against NumPy and PyTorch",
                           description="Measure copy bandwidth and GEMM rate, then time every comparison "
                                       "interleaved (paired median ratios) and print one table.")
    bench.add_argument("--quick", action="store_true", help="smaller problems and fewer repetitions (minutes)")
    bench.add_argument("--threads", type=thread_count, help="fastwb and PyTorch threads (default: all)")
    bench.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32")
    bench.add_argument("--filter", help="only comparisons whose name contains this text (skips the scaling runs; "
                                         "'decay' runs only the training-speed-over-time section)")
    bench.add_argument("--json", type=output_path, metavar="PATH", help="write the full report as JSON")
    bench.add_argument("--plot", type=figure_path, metavar="PNG",
                       help="write the figure (speedups, limits, size and thread scaling)")
    bench.add_argument("--markdown", type=output_path, metavar="MD", help="write BENCHMARKS.md-style Markdown")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    sections = bench.add_argument_group(
        "sections", "each runs instead of the comparison report; several run in this order; --quick, --threads "
                    "(fastwb's default thread count), --filter (--contention's workloads) and --json apply")
    sections.add_argument("--contention", action="store_true",
                          help="under load: N = cores and 2 x cores busy processes; every workload at the default "
                               "threads vs 1 thread, and PyTorch's 784-256-10 step at its defaults")
    sections.add_argument("--cgroup", action="store_true",
                          help="a child process with its CPU budget cut to 1 CPU (a CPU-quota cgroup as root, "
                               "else sched_setaffinity): does the default thread count adapt?")
    sections.add_argument("--inference", action="store_true",
                          help="784-256-10 float32 inference at batch 1, 32, 1024 against PyTorch and ONNX Runtime, "
                               "each in its own process")
    bench.set_defaults(func=_cmd_bench)

    export = sub.add_parser("export", help="write a saved model as ONNX (eval mode, BatchNorm folded)",
                            description="Write the eval-mode network of a saved model as an ONNX model with a "
                                        "dynamic batch dimension (input x, output logits). Needs the onnx package.")
    export.add_argument("model", metavar="MODEL", help="a model saved by fastwb (Sequential.save, fastwb train --save)")
    export.add_argument("--onnx", type=onnx_path, required=True, metavar="PATH", help="the ONNX file to write")
    export.add_argument("--softmax", action="store_true",
                        help="add a second output, probabilities = Softmax(logits) over the last axis")
    export.add_argument("--opset", type=opset_version, default=MIN_OPSET, metavar="N",
                        help=f"ONNX opset version, >= {MIN_OPSET} (default {MIN_OPSET})")
    export.add_argument("--keep-batchnorm", action="store_true",
                        help="BatchNormalization nodes instead of folding each BatchNorm1d into the Linear before it")
    export.set_defaults(func=_cmd_export)
    explain = sub.add_parser("explain", help="draw saliency maps of a saved model on test images",
                             description="Draw test images beside their saliency maps (fastwb.explain) for a saved "
                                         "model, in eval mode, for each image's predicted class.")
    explain.add_argument("model", metavar="MODEL",
                         help="a model saved by fastwb (Sequential.save, fastwb train --save)")
    _test_data_options(explain, "digits")
    explain.add_argument("--n", type=positive_int, default=16, metavar="N",
                         help="how many test images, from the first (default 16)")
    explain.add_argument("--method", default="saliency",
                         choices=["saliency", "smoothgrad", "integrated_gradients", "gradient_x_input"],
                         help="saliency (|gradient|, default), smoothgrad (25 noisy copies, sigma 0.15), "
                              "integrated_gradients (black baseline, 50 steps) or gradient_x_input")
    explain.add_argument("--wrt", default="logit", choices=["logit", "prob", "loss"],
                         help="the gradient of the predicted class's logit (default), its probability, or the "
                              "loss against the true label")
    explain.add_argument("--out", type=figure_path, default="saliency.png", metavar="PNG",
                         help="the figure to write (default saliency.png; format from the extension)")
    explain.add_argument("--seed", type=non_negative_int, default=0,
                         help="seed of smoothgrad's noise (and of the digits split)")
    explain.add_argument("--threads", type=thread_count, help="fastwb threads (default: as fastwb train)")
    explain.set_defaults(func=_cmd_explain)
    attack = sub.add_parser("attack", help="clean and robust accuracy of a saved classifier under FGSM or PGD",
                            description="Attack the test images of a data set with FGSM or PGD (fastwb.adversarial, "
                                        "L-infinity budget, pixels kept in [0, 1]) and print the clean and robust "
                                        "accuracy of a saved cross-entropy classifier.")
    attack.add_argument("model", metavar="MODEL", help="a model saved by fastwb (Sequential.save, fastwb train --save)")
    attack.add_argument("--eps", type=attack_budget, default=0.1,
                        help="the L-infinity budget, in pixel units of [0, 1] (default 0.1)")
    attack.add_argument("--attack", choices=["fgsm", "pgd"], default="fgsm",
                        help="fgsm (one signed-gradient step, default) or pgd (projected gradient descent, "
                             "random start)")
    attack.add_argument("--steps", type=positive_int, metavar="N", help="PGD steps (default 10)")
    attack.add_argument("--alpha", type=positive_float, metavar="A",
                        help="PGD step size (default 2.5 * eps / steps: 0.025 for eps 0.1 and 10 steps)")
    _test_data_options(attack, "mnist")
    attack.add_argument("--limit", type=positive_int, metavar="N", help="only the first N test images")
    attack.add_argument("--batch-size", type=positive_int, default=1024, metavar="N",
                        help="rows per gradient call (memory only; default 1024)")
    attack.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of PGD's random start (and of the digits split)")
    attack.add_argument("--threads", type=thread_count, help="fastwb threads (default: as fastwb train)")
    attack.add_argument("--save-examples", type=figure_path, metavar="PNG",
                        help="write a figure of originals, adversarial examples (with predictions) and "
                             "perturbations here (needs matplotlib)")
    attack.add_argument("--json", action="store_true", help="print the results as one JSON line")
    attack.set_defaults(func=_cmd_attack)
    quantize = sub.add_parser("quantize", help="write a saved model's int8 version and compare it with the float one",
                              description="Quantize a saved float model to int8 (fastwb.quantize.quantize_dynamic: "
                                          "int8 weights, activations quantized per batch at inference), write it, "
                                          "and print the sizes, the test accuracy, the largest logit difference "
                                          "and the inference time of the float and the int8 model.")
    quantize.add_argument("model", metavar="MODEL",
                          help="a float model saved by fastwb (Sequential.save, fastwb train --save)")
    quantize.add_argument("-o", "--output", type=output_path, required=True, metavar="PATH",
                          help="the int8 model to write (read it with fastwb.quantize.load)")
    quantize.add_argument("--per-tensor", action="store_true",
                          help="one weight scale per Linear layer instead of one per output column")
    width = quantize.add_mutually_exclusive_group()
    width.add_argument("--reduce-range", dest="reduce_range", action="store_const", const=True, default=None,
                       help="7-bit activations (0..127, PyTorch's default); default: 7-bit on the avx2 kernel path, "
                            "8-bit on the others (fastwb.quantize.auto_reduce_range)")
    width.add_argument("--full-range", dest="reduce_range", action="store_const", const=False,
                       help="8-bit activations (0..255) on every kernel path")
    _test_data_options(quantize, "digits")
    quantize.add_argument("--batch-size", type=positive_int, default=1024, metavar="N",
                          help="rows per inference call; each batch gets its own activation scales (default 1024)")
    quantize.add_argument("--seed", type=non_negative_int, default=0, help="seed of the digits split")
    quantize.add_argument("--threads", type=thread_count, help="fastwb threads (default: as fastwb train)")
    quantize.add_argument("--json", action="store_true", help="print the results as one JSON line")
    quantize.set_defaults(func=_cmd_quantize)
    tune_ = sub.add_parser("tune", help="search MLP hyperparameters with Optuna (pruned, resumable, shareable)",
                           description="Search the hyperparameters of an MLP (fastwb.tune.DEFAULT_SPACE: learning "
                                       "rate, L2, dropout, depth, widths, activation, batch size, optimizer) with "
                                       "Optuna on a validation split of the training set, printing a row per "
                                       "trial; then retrain the best configuration on the whole training set and "
                                       "report its test accuracy (the test set's one use). With --storage the "
                                       "study lives in a database: rerunning the command resumes it, and several "
                                       "processes given the same --storage and --study-name search together.")
    tune_.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits",
                       help="the data (default: digits, the embedded 8x8 images; mnist needs --data-path or "
                            "$FASTWB_MNIST)")
    _data_path_option(tune_)
    tune_.add_argument("--trials", type=positive_int, default=20, metavar="N",
                       help="stop when the study holds N finished (complete or pruned) trials, counting those "
                            "already in --storage; failed ones are run again (default 20)")
    tune_.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                       help="start no new trial after this many seconds of this process (the running one finishes)")
    tune_.add_argument("--storage", type=storage_url, metavar="URL",
                       help="an Optuna RDB storage, e.g. sqlite:///tune.db: the study survives the process, "
                            "resumes, and is shared by every process given the same URL and --study-name "
                            "(default: in memory)")
    tune_.add_argument("--study-name", metavar="NAME", help="the study's name (default: fastwb-DATASET)")
    tune_.add_argument("--space", type=search_space, metavar="JSON",
                       help="edits of the default search space, as a JSON object or a file holding one: each key "
                            "replaces the default's, e.g. '{\"n_layers\": 1, \"activation\": \"relu\", "
                            "\"lr\": {\"type\": \"float\", \"low\": 1e-4, \"high\": 1e-2, \"log\": true}}' "
                            "(see fastwb.tune.DEFAULT_SPACE)")
    tune_.add_argument("--epochs", type=positive_int, default=3,
                       help="epochs per trial, and of the retraining (default 3)")
    tune_.add_argument("--val-size", type=split_size, metavar="F|N",
                       help="the validation split of the training set: a fraction (0.2) or a row count "
                            "(default: 10000 for mnist and fashion-mnist, 0.2 for digits)")
    tune_.add_argument("--pruner", choices=["median", "none"], default="median",
                       help="median: Optuna's MedianPruner (5 startup trials), judged on val_accuracy after every "
                            "epoch; none: every trial trains all its epochs (default median)")
    tune_.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="Optuna's sampler (default tpe)")
    tune_.add_argument("--seed", type=non_negative_int, default=0,
                       help="seed of the validation split, the models and the sampler (default 0)")
    tune_.add_argument("--threads", type=thread_count,
                       help="fastwb threads of this process (default: 1 with --storage, where processes run side by "
                            "side, one per core; else as fastwb train)")
    tune_.add_argument("--plots", type=plots_folder, metavar="DIR",
                       help="write optimization_history.png, param_importances.png and parallel_coordinate.png "
                            "(Optuna's matplotlib plots) into this folder")
    tune_.add_argument("--save", type=output_path, metavar="NPZ", help="save the retrained best model here")
    tune_.add_argument("--no-retrain", action="store_true",
                       help="skip the retraining and the test accuracy (e.g. all but one of several processes "
                            "sharing a study)")
    tune_.add_argument("--json", action="store_true",
                       help="print the report as one JSON line on stdout (the table and messages go to stderr)")
    tune_.set_defaults(func=_cmd_tune)
    fed = sub.add_parser("federated", help="federated learning of an MLP on Flower's simulation engine (FedAvg)",
                         description="Simulate federated learning with Flower (pip install 'fastwb[federated]'): "
                                     "--clients virtual clients hold a partition of the training set, each round "
                                     "FedAvg (FedProx with --proximal-mu) samples --fraction of them, each trains "
                                     "--epochs local epochs, and the server scores the averaged weights on the "
                                     "test set. Prints accuracy per round and the rounds to --target.")
    fed.add_argument("--dataset", choices=sorted(DEFAULTS), default="mnist")
    _data_path_option(fed)
    fed.add_argument("--clients", type=positive_int, default=100)
    fed.add_argument("--fraction", type=unit_fraction, default=0.1, help="share of clients sampled per round")
    fed.add_argument("--rounds", type=positive_int, default=50)
    fed.add_argument("--partition", type=partitions, default=["iid"], metavar="iid|shards[,...]",
                     help="iid, or shards (McMahan et al.'s non-IID split: label-sorted shards, two per client); "
                          "iid,shards runs both")
    fed.add_argument("--epochs", type=positive_int, default=1, help="local epochs per round (E)")
    fed.add_argument("--batch-size", type=positive_int, default=10, help="local batch size (B)")
    fed.add_argument("--lr", type=positive_float, default=0.1, help="the clients' SGD learning rate")
    fed.add_argument("--hidden", type=positive_int, nargs="+", metavar="N",
                     help="hidden layer sizes (default: 200 200, the 2NN; 32 for digits)")
    fed.add_argument("--activation", default="relu", choices=["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
    fed.add_argument("--batchnorm", action="store_true", help="BatchNorm1d after every hidden Linear layer")
    fed.add_argument("--fedbn", action="store_true", help="keep BatchNorm local to each client (FedBN)")
    fed.add_argument("--proximal-mu", type=non_negative_float, default=0.0, help="FedProx's mu (0: FedAvg)")
    fed.add_argument("--clip", type=positive_float, help="client-level DP: clip each update to this L2 norm")
    fed.add_argument("--noise", type=non_negative_float, default=0.0,
                     help="client-level DP: Gaussian noise multiplier (of the clipping norm)")
    fed.add_argument("--delta", type=open_unit, default=1e-5, help="the delta of the reported (epsilon, delta)")
    fed.add_argument("--target", type=open_unit, default=0.97, help="the test accuracy to count rounds to")
    fed.add_argument("--threads-per-client", type=thread_count, default=1)
    fed.add_argument("--seed", type=non_negative_int, default=0)
    fed.add_argument("--plot", type=figure_path, help="write the accuracy curves (PNG)")
    fed.add_argument("--json", action="store_true", help="print one JSON summary instead of the progress")
    fed.set_defaults(func=_cmd_federated)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status.  Usage errors raise ``SystemExit(2)`` after one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
