"""The command line: every bad option is one line on stderr and exit status 2
before any work; output paths are checked first; plots are written atomically;
``--version``; per-optimizer default learning rates; and ``import fastwb``
from an unbuilt source tree says so in one line (issue 8, item 12 and "Also")."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastwb
from fastwb import benchmark, cli, datasets


def _no_work(*args, **kwargs):
    raise AssertionError("the command started working although an option was bad")


def run_cli(argv, work=_no_work):
    """``cli.main(argv)`` in-process: ``(status, stdout, stderr)``.  Loading data,
    training and benchmarking call ``work`` (by default: fail the test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if work is not None:
            stack.enter_context(mock.patch.object(datasets, "load", work))
            stack.enter_context(mock.patch.object(fastwb.MLP, "fit", work))
            stack.enter_context(mock.patch.object(benchmark, "main", work))
        try:
            status = cli.main(argv)
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


def assert_usage_error(argv, option=None):
    t0 = time.perf_counter()
    status, out, err = run_cli(argv)
    assert status == 2, (argv, status, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), (argv, err)
    assert lines[0].startswith(f"fastwb {argv[0]}: error: "), err
    if option is not None:
        assert f"argument {option}" in lines[0], err
    assert "Traceback" not in err and out == ""
    assert time.perf_counter() - t0 < 5.0


# -- the defects of item 12 ---------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "0"],          # used to train for the default 30 epochs
    ["train", "--batch-size", "0"],      # used the default batch size
    ["train", "--threads", "0"],         # used the default thread count
    ["train", "--epochs", "-1"],         # ZeroDivisionError after loading the data
    ["train", "--lr", "-1"],             # traceback
    ["train", "--lr", "nan"],            # traceback
    ["train", "--hidden", "0"],          # traceback
    ["train", "--hidden", "16", "-4"],
    ["train", "--prune", "1.5"],         # traceback
    ["train", "--seed", "-1"],           # traceback (NumPy rejects negative seeds)
    ["bench", "--threads", "0"],
], ids=" ".join)
def test_bad_values_from_the_issue_are_one_line_usage_errors(argv):
    assert_usage_error(argv, argv[1])


def test_output_paths_are_checked_before_training(tmp_path):
    missing = tmp_path / "no-such-folder"
    assert_usage_error(["train", "--save", str(missing / "m.npz")], "--save")
    assert_usage_error(["train", "--save", str(tmp_path)], "--save")         # a folder
    assert_usage_error(["train", "--plot", str(missing / "w.png")], "--plot")
    assert_usage_error(["train", "--plot", str(tmp_path / "w.notaformat")], "--plot")
    assert_usage_error(["bench", "--json", str(missing / "b.json")], "--json")
    assert_usage_error(["bench", "--markdown", str(missing / "b.md")], "--markdown")
    assert_usage_error(["bench", "--plot", str(missing / "b.png")], "--plot")


def test_plot_without_matplotlib_is_a_usage_error(tmp_path):
    with mock.patch.dict(sys.modules, {"matplotlib": None, "matplotlib.backend_bases": None}):
        status, _, err = run_cli(["train", "--plot", str(tmp_path / "w.png")])
    assert status == 2 and 'pip install "fastwb[plots]"' in err and len(err.splitlines()) == 1


def test_version():
    status, out, err = run_cli(["--version"])
    assert status == 0 and out == f"fastwb {fastwb.__version__}\n" and err == ""


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "fastwb", "train", "--epochs", "0"],
                          capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and "--epochs" in done.stderr


# -- hypothesis: bad values for every option of train and bench ----------------------

def _fails(parse):
    def check(text):
        try:
            parse(text)
        except (ValueError, TypeError, OverflowError):
            return True
        return False
    return check


_words = st.text(max_size=12)
_not_int = _words.filter(_fails(int))
_not_float = _words.filter(_fails(float))
_floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)
_bad_count = st.one_of(st.integers(max_value=0).map(str), _not_int,
                       st.sampled_from(["1.5", "1e3", "nan", "inf", "0x10", "", " "]))
_bad_threads = st.one_of(_bad_count, st.integers(min_value=cli.MAX_THREADS + 1).map(str))
_bad_lr = st.one_of(st.floats(max_value=0.0).map(repr), _not_float,
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0.0", "0"]))
_bad_fraction = st.one_of(st.floats().filter(lambda x: not 0.0 <= x < 1.0).map(repr), _not_float,
                          st.sampled_from(["nan", "1", "1.0", "-1e-300", "inf"]))
_bad_seed = st.one_of(st.integers(max_value=-1).map(str), _not_int, st.sampled_from(["0.5", "nan", ""]))


def _bad_choice(choices):
    return _words.filter(lambda s: s not in choices)


def _bad_path(figure):
    def build(case):
        kind, name = case
        if kind == "missing folder":
            return os.path.join(os.path.abspath(os.sep), "no-such-folder-fastwb", name or "x", "out.png")
        if kind == "folder":
            return os.path.abspath(os.curdir) if name else os.path.abspath(os.sep)
        if kind == "empty":
            return ""
        return os.path.join(tempfile.gettempdir(), f"w.{name}xq")                 # no such format
    kinds = ["missing folder", "folder", "empty"] + (["format"] if figure else [])
    return st.tuples(st.sampled_from(kinds), st.text("abcxyz", max_size=5)).map(build)


BAD = {
    "train": {
        "--dataset": _bad_choice(cli.DEFAULTS),
        "--hidden": _bad_count,
        "--activation": _bad_choice(["relu", "leaky_relu", "sigmoid", "tanh", "identity"]),
        "--epochs": _bad_count,
        "--batch-size": _bad_count,
        "--optimizer": _bad_choice(["adam", "adamw", "sgd", "momentum", "rmsprop"]),
        "--lr": _bad_lr,
        "--dtype": _bad_choice(["float32", "float64"]),
        "--threads": _bad_threads,
        "--prune": _bad_fraction,
        "--dropout": _bad_fraction,
        "--seed": _bad_seed,
        "--adversarial": _bad_lr,
        "--ensemble": _bad_count,
        "--plot": _bad_path(figure=True),
        "--save": _bad_path(figure=False),
    },
    "bench": {
        "--threads": _bad_threads,
        "--dtype": _bad_choice(["float32", "float64", "both"]),
        "--json": _bad_path(figure=False),
        "--plot": _bad_path(figure=True),
        "--markdown": _bad_path(figure=False),
    },
    "export": {
        "--onnx": _bad_path(figure=False),
        "--opset": st.one_of(st.integers(max_value=16).map(str), _not_int, st.sampled_from(["17.0", "nan", ""])),
    },
}

GOOD = {
    "train": ["--dataset=digits", "--hidden=16", "--activation=tanh", "--epochs=2", "--batch-size=8",
              "--optimizer=sgd", "--lr=0.05", "--dtype=float64", "--threads=1", "--prune=0.5", "--seed=3",
              "--quiet"],
    "bench": ["--quick", "--threads=1", "--dtype=both", "--filter=adam", "--quiet"],
    "export": ["--softmax", "--keep-batchnorm", "--opset=18"],
}


def test_every_option_has_a_bad_value_strategy():
    """A new option must get its bad values here too."""
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command, bad in BAD.items():
        options = {s for a in commands[command]._actions for s in a.option_strings if s.startswith("--")}
        valued = {o for o in options
                  if o not in ("--help", "--quiet", "--quick", "--data-path", "--filter", "--batchnorm",
                               "--contention", "--cgroup", "--inference", "--softmax", "--keep-batchnorm",
                               "--batched", "--distributed")}
        assert valued == set(bad), command


@st.composite
def bad_command_lines(draw):
    command = draw(st.sampled_from(sorted(BAD)))
    option = draw(st.sampled_from(sorted(BAD[command])))
    value = draw(BAD[command][option])
    good = draw(st.lists(st.sampled_from(GOOD[command]), unique=True, max_size=4))
    where = draw(st.integers(0, len(good)))
    return command, option, [command, *good[:where], f"{option}={value}", *good[where:]]


@given(bad_command_lines())
def test_every_bad_option_value_is_a_one_line_usage_error(case):
    command, option, argv = case
    assert_usage_error(argv, option)


# -- what a good command line does ------------------------------------------------------

def _small_data(*args, **kwargs):
    rng = np.random.default_rng(0)
    dtype = args[2] if len(args) > 2 else np.float32
    X = rng.random((40, 12)).astype(dtype)
    y = np.arange(40) % 3
    return X[:30], y[:30], X[30:], y[30:]


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("momentum", 0.01), ("adam", 1e-3), ("rmsprop", 1e-2)])
def test_default_learning_rate_per_optimizer(optimizer, lr):
    seen = []
    compile_ = fastwb.MLP.compile

    def record(self, *args, **kwargs):
        model = compile_(self, *args, **kwargs)
        seen.append(model.optimizer.hyper["lr"])
        return model

    with mock.patch.object(datasets, "load", _small_data), mock.patch.object(fastwb.MLP, "compile", record):
        assert run_cli(["train", "--optimizer", optimizer, "--epochs", "1", "--quiet"], work=None)[0] == 0
        assert run_cli(["train", "--optimizer", optimizer, "--lr", "0.05", "--epochs", "1", "--quiet"],
                       work=None)[0] == 0
    assert seen == [pytest.approx(lr), pytest.approx(0.05)]


def test_hidden_size_too_large_to_build_is_one_line():
    with mock.patch.object(datasets, "load", _small_data):
        status, out, err = run_cli(["train", "--hidden", str(10**20)], work=None)
    assert status == 2 and out == "" and err.startswith("fastwb train: cannot build a 12-") and err.count("\n") == 1


def test_train_writes_model_and_plot_and_keeps_old_plot_when_rendering_fails(tmp_path):
    pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "fastwb[plots]"')
    plot, model = tmp_path / "w.png", tmp_path / "m.npz"
    plot.write_bytes(b"the previous plot")
    argv = ["train", "--epochs", "1", "--hidden", "4", "--plot", str(plot), "--save", str(model), "--quiet"]

    class Broken:
        def savefig(self, fh, **kwargs):
            fh.write(b"half a pict")
            raise RuntimeError("renderer crashed")

    with mock.patch.object(datasets, "load", _small_data), mock.patch.object(fastwb, "visualize_weights",
                                                                            lambda m: Broken()):
        with pytest.raises(RuntimeError, match="renderer crashed"):
            run_cli(argv, work=None)
    assert plot.read_bytes() == b"the previous plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "w.png"]     # no temporary file left
    with mock.patch.object(datasets, "load", _small_data):
        status, out, err = run_cli(argv, work=None)
    assert status == 0 and err == "" and 0 <= float(out) <= 1
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert fastwb.MLP.load(model).layer_sizes == [12, 4, 3]


def test_plot_format_follows_the_extension(tmp_path):
    pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "fastwb[plots]"')
    with mock.patch.object(datasets, "load", _small_data):
        assert run_cli(["train", "--epochs", "1", "--plot", str(tmp_path / "w.svg"), "--quiet"], work=None)[0] == 0
    assert b"<svg" in (tmp_path / "w.svg").read_bytes()[:500]


# -- "Also": importing an unbuilt source tree -------------------------------------------

def test_import_from_an_unbuilt_source_tree_says_how_to_build(tmp_path):
    source = os.path.dirname(os.path.abspath(fastwb.__file__))
    shutil.copytree(source, tmp_path / "fastwb",
                    ignore=lambda folder, names: [n for n in names if not (n.endswith(".py") or
                                                                           os.path.isdir(os.path.join(folder, n)))
                                                  or n == "__pycache__"])
    assert not list((tmp_path / "fastwb").glob("*.so")) and (tmp_path / "fastwb" / "__init__.py").exists()
    # Import from the copy only: the current folder comes first on sys.path, and an
    # editable install's finder (which would map fastwb.* back to the built tree) is
    # removed, as in a clean clone where nothing is installed.
    script = (
        "import json, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        "try:\n"
        "    import fastwb\n"
        "except ImportError as e:\n"
        "    print(json.dumps([type(e).__name__, str(e), repr(e.__cause__), e.__suppress_context__]))\n"
        "else:\n"
        "    print(json.dumps(['imported', fastwb.__file__]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kind, message, cause, suppressed = json.loads(done.stdout)
    assert kind == "ImportError", message
    assert "\n" not in message and "circular" not in message
    assert message.startswith("fastwb is not built") and "pip install -e ." in message
    assert cause == "None" and suppressed


# -- fastwb info MODEL and fastwb export ---------------------------------------------------

@pytest.fixture
def saved_model(tmp_path):
    """A trained, pruned BatchNorm model saved to tmp_path/model.fwb: (path, model)."""
    from fastwb import nn

    model = nn.Sequential(nn.Linear(12, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(8, 3), rng=0)
    X, y = _small_data()[:2]
    model.fit(X, y, epochs=2, batch_size=10, verbose=False)
    model.prune(0.5)
    path = tmp_path / "model.fwb"
    model.save(path)
    return str(path), model


def test_info_model_prints_layers_parameters_and_sparsity(saved_model):
    path, model = saved_model
    status, out, err = run_cli(["info", path])
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{path}: Sequential, float32, 12 -> 3 features, loss cross_entropy, 6 steps, 2 epochs done"
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert list(rows) == ["0", "1", "2", "3", "4", "total"]
    for i, layer in enumerate(model.layers):
        assert repr(layer) in rows[str(i)]
    sparsity = model.layer_sparsity()
    assert rows["0"].split()[-2:] == ["96", f"{sparsity[0]:.4f}"]          # 12 x 8, no bias
    assert rows["1"].split()[-1] == "16" and rows["2"].split()[-1] == "0" and rows["3"].split()[-1] == "0"
    assert rows["4"].split()[-2:] == ["27", f"{sparsity[1]:.4f}"]
    assert rows["total"].split()[1:] == [f"{model.n_params:,}", f"{model.sparsity():.4f}"]
    assert model.sparsity() == pytest.approx(0.5, abs=0.01)


def test_info_model_json(saved_model):
    path, model = saved_model
    status, out, err = run_cli(["info", path, "--json"])
    assert status == 0 and err == ""
    got = json.loads(out)
    assert {k: got[k] for k in ("model", "class", "dtype", "in_features", "out_features", "loss", "step_count",
                                "epochs_done", "parameters")} == {
        "model": path, "class": "Sequential", "dtype": "float32", "in_features": 12, "out_features": 3,
        "loss": "cross_entropy", "step_count": 6, "epochs_done": 2, "parameters": model.n_params}
    assert got["sparsity"] == pytest.approx(model.sparsity())
    assert [la["type"] for la in got["layers"]] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert [la["parameters"] for la in got["layers"]] == [96, 16, 0, 0, 27]
    assert sum(la["parameters"] for la in got["layers"]) == model.n_params
    assert [la["sparsity"] for la in got["layers"]] == pytest.approx(
        [model.layer_sparsity()[0], None, None, None, model.layer_sparsity()[1]])
    assert got["layers"][1]["config"] == model.layers[1].config() and got["layers"][4]["repr"] == repr(model.layers[4])


def test_info_of_an_mlp_checkpoint(tmp_path):
    model = fastwb.MLP([12, 5, 3], rng=0)
    model.save(tmp_path / "mlp.fwb")
    status, out, err = run_cli(["info", str(tmp_path / "mlp.fwb"), "--json"])
    assert status == 0 and err == ""
    got = json.loads(out)
    assert got["class"] == "MLP" and got["parameters"] == 12 * 5 + 5 + 5 * 3 + 3 and got["sparsity"] == 0


def test_info_without_a_model_is_the_runtime_configuration():
    status, out, err = run_cli(["info", "--json"])
    assert status == 0 and err == ""
    assert set(json.loads(out)) == set(fastwb._runtime.config())


@pytest.mark.parametrize("command", ["info", "export"])
@pytest.mark.parametrize("kind", ["missing", "garbage", "folder", "truncated"])
def test_a_bad_model_file_is_one_line_on_stderr(tmp_path, saved_model, command, kind):
    path = tmp_path / "bad.fwb"
    if kind == "garbage":
        path.write_bytes(b"not a model at all")
    elif kind == "folder":
        path = tmp_path
    elif kind == "truncated":
        data = open(saved_model[0], "rb").read()
        path.write_bytes(data[:len(data) // 2])
    argv = [command, str(path)] + (["--onnx", str(tmp_path / "out.onnx")] if command == "export" else [])
    with mock.patch.dict(sys.modules, {"onnx": mock.MagicMock()}):     # export fails at the load, onnx or not
        status, out, err = run_cli(argv)
    assert status == 2 and out == ""
    assert err.startswith(f"fastwb {command}: cannot load {path}") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_export_without_onnx_is_a_usage_error(tmp_path, saved_model):
    out_path = tmp_path / "m.onnx"
    with mock.patch.dict(sys.modules, {"onnx": None}):
        status, out, err = run_cli(["export", saved_model[0], "--onnx", str(out_path)])
    assert status == 2 and out == "" and err.count("\n") == 1
    assert "argument --onnx" in err and "pip install onnx" in err
    assert not out_path.exists()


def test_export_paths_and_opset_are_checked_first(tmp_path, saved_model):
    assert_usage_error(["export", saved_model[0], "--onnx", str(tmp_path / "no-such-folder" / "m.onnx")], "--onnx")
    assert_usage_error(["export", saved_model[0], "--onnx", str(tmp_path)], "--onnx")
    assert_usage_error(["export", saved_model[0], "--opset", "16", "--onnx", str(tmp_path / "m.onnx")], "--opset")
    status, out, err = run_cli(["export", saved_model[0]])                # --onnx is required
    assert status == 2 and "--onnx" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["model.fwb"]


@pytest.mark.parametrize("options", [[], ["--softmax"], ["--keep-batchnorm", "--opset", "18"]], ids=str)
def test_export_writes_the_onnx_model(tmp_path, saved_model, options):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install onnx)")
    path, model = saved_model
    out_path = tmp_path / "m.onnx"
    status, out, err = run_cli(["export", path, "--onnx", str(out_path), *options])
    assert status == 0 and err == "" and out.startswith(f"wrote {out_path}: ONNX opset")
    proto = onnx.load(str(out_path))
    ops = [n.op_type for n in proto.graph.node]
    assert ("BatchNormalization" in ops) == ("--keep-batchnorm" in options)
    assert ("Softmax" in ops) == ("--softmax" in options)
    assert proto.opset_import[0].version == (18 if "--opset" in options else 17)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "model.fwb"]
    try:
        import onnxruntime as ort
    except ImportError:
        return
    X = _small_data()[0]
    got = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"]).run(None, {"x": X})
    np.testing.assert_allclose(got[0], model.eval().logits(X), rtol=1e-5, atol=1e-5)
    if "--softmax" in options:
        np.testing.assert_allclose(got[1], model.predict_proba(X), rtol=1e-5, atol=1e-5)


def test_export_errors_after_loading(tmp_path, saved_model):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install onnx)")
    out_path = tmp_path / "m.onnx"
    newest = onnx.defs.onnx_opset_version()
    status, out, err = run_cli(["export", saved_model[0], "--onnx", str(out_path), "--opset", str(newest + 1)])
    assert status == 2 and out == "" and err.count("\n") == 1 and "opset" in err and "Traceback" not in err
    from fastwb import nn

    nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False)).save(tmp_path / "batch.fwb")
    status, out, err = run_cli(["export", str(tmp_path / "batch.fwb"), "--onnx", str(out_path)])
    assert status == 2 and "track_running_stats=False" in err and err.count("\n") == 1
    out_path.write_bytes(b"the previous model")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    with mock.patch.object(os, "fsync", broken_fsync):
        status, out, err = run_cli(["export", saved_model[0], "--onnx", str(out_path)])
    assert status == 1 and err == f"fastwb export: cannot write {out_path}: [Errno 28] No space left on device\n"
    assert out_path.read_bytes() == b"the previous model"
    assert sorted(os.listdir(tmp_path)) == ["batch.fwb", "m.onnx", "model.fwb"]       # no temporary file left


def test_info_model_in_a_fresh_process(tmp_path, saved_model):
    done = subprocess.run([sys.executable, "-m", "fastwb", "info", "model.fwb"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("model.fwb: Sequential, float32, 12 -> 3 features")
    done = subprocess.run([sys.executable, "-m", "fastwb", "info", "missing.fwb"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "fastwb info: cannot load missing.fwb: No such file or directory\n"


@pytest.mark.parametrize("batched", [False, True])
def test_train_ensemble_scores_and_saves_it(tmp_path, batched):
    from fastwb.ensemble import Ensemble
    path = tmp_path / "ens.npz"
    argv = ["train", "--epochs", "2", "--hidden", "4", "--ensemble", "3", "--save", str(path)]
    with mock.patch.object(datasets, "load", _small_data):
        status, out, err = run_cli(argv + (["--batched"] if batched else []), work=None)
    assert status == 0 and err == "", err
    assert "ensemble test accuracy" in out and "members' test accuracy" in out
    assert len(Ensemble.load(path).members) == 3


def test_train_adversarial_runs():
    with mock.patch.object(datasets, "load", _small_data):
        status, out, err = run_cli(["train", "--epochs", "2", "--hidden", "4", "--adversarial", "0.1", "--quiet"],
                                   work=None)
    assert status == 0 and 0 <= float(out) <= 1
