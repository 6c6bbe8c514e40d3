"""``fastwb quantize MODEL -o OUT``: the int8 model it writes is the one
:func:`fastwb.quantize.quantize_dynamic` makes in-process (with ``--per-tensor``
and ``--reduce-range`` in its specification), and its report gives the numbers
of the two models; every bad option is one line on stderr and exit status 2
before any work; a file that is not a quantizable float model is one line and
exit status 2, with nothing written; ``fastwb info`` describes the int8 file."""

import json
import os
import re
import subprocess
import tempfile
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastwb
from fastwb import cli, datasets, nn, quantize
from fastwb.ensemble import Ensemble
from test_cli import _bad_choice, _bad_count, _bad_path, _bad_seed, _bad_threads, run_cli

pytest.importorskip("sklearn", reason='the embedded digits come with scikit-learn: pip install "fastwb[datasets]"')


@pytest.fixture(scope="module")
def digits():
    """The embedded digits, split as ``fastwb quantize`` splits them (seed 0)."""
    return datasets.load("digits", None, np.float32, rng=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, digits):
    """A 64-16-10 MLP trained for 3 epochs on the digits, saved: (path, model)."""
    X, y = digits[:2]
    model = fastwb.MLP([64, 16, 10], rng=0)
    model.fit(X, y, epochs=3, batch_size=64, verbose=False, rng=0)
    path = str(tmp_path_factory.mktemp("quantize") / "model.fwb")
    model.save(path)
    return path, model


def quantize_cli(argv):
    """``fastwb quantize ...`` in-process, on the real digits: (status, stdout, stderr)."""
    return run_cli(["quantize", *argv], work=None)


def expected(model, digits, **options):
    """The int8 model ``quantize_dynamic`` makes of ``model`` in-process, and the test split."""
    return quantize.quantize_dynamic(model.copy().eval(), **options), digits[2], digits[3]


# -- bad values: one line, exit status 2, before any work -----------------------------------------

BAD = {
    "--output": _bad_path(figure=False),
    "--dataset": _bad_choice(cli.DEFAULTS),
    "--batch-size": _bad_count,
    "--seed": _bad_seed,
    "--threads": _bad_threads,
}
FREE = {"--help", "--per-tensor", "--reduce-range", "--full-range", "--json", "--data-path"}    # flags, and a folder read later
GOOD = ["--per-tensor", "--reduce-range", "--dataset=digits", "--batch-size=16", "--seed=3", "--threads=1",
        "--json"]


def assert_usage_error(argv, option):
    status, out, err = run_cli(argv)        # loading data or training fails the test
    assert status == 2 and out == "", (argv, status, err)
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith("fastwb quantize: error: argument ") and option in err.split(":")[2], err
    assert "Traceback" not in err


def test_every_option_has_a_bad_value_strategy():
    parser = cli.build_parser()
    command = parser._subparsers._group_actions[0].choices["quantize"]
    options = {s for a in command._actions for s in a.option_strings if s.startswith("--")}
    assert options - FREE == set(BAD)
    assert "-o" in command._option_string_actions


@given(st.data())
def test_every_bad_option_value_is_a_one_line_usage_error(data):
    option = data.draw(st.sampled_from(sorted(BAD)))
    value = data.draw(BAD[option])
    good = data.draw(st.lists(st.sampled_from(GOOD), unique=True, max_size=4))
    where = data.draw(st.integers(0, len(good)))
    output = [] if option == "--output" else ["-o", os.path.join(os.path.abspath(os.sep), "tmp", "q.fwb")]
    assert_usage_error(["quantize", "model.fwb", *output, *good[:where], f"{option}={value}", *good[where:]],
                       option)


def test_the_model_and_the_output_are_required(tmp_path):
    status, out, err = run_cli(["quantize"])
    assert status == 2 and out == "" and "MODEL" in err and len(err.splitlines()) == 1
    status, out, err = run_cli(["quantize", "model.fwb"])
    assert status == 2 and out == "" and "-o/--output" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("where", ["missing folder", "folder", "empty"])
def test_a_bad_output_path_is_a_usage_error_before_loading(tmp_path, saved, where):
    output = {"missing folder": str(tmp_path / "no-such-folder" / "q.fwb"), "folder": str(tmp_path),
              "empty": ""}[where]
    with mock.patch.object(nn, "load", side_effect=AssertionError("loaded")):
        assert_usage_error(["quantize", saved[0], "-o", output], "-o/--output")
    assert os.listdir(tmp_path) == []


# -- what a good command line does ------------------------------------------------------------

def _lines(out):
    lines = out.splitlines()
    assert len(lines) == 6, out
    return lines


def test_quantize_writes_the_int8_model_and_reports_both(tmp_path, saved, digits):
    path, model = saved
    output = tmp_path / "model.int8.fwb"
    status, out, err = quantize_cli([path, "-o", str(output)])
    assert status == 0 and err == "", err
    q, X, y = expected(model, digits)
    got = quantize.load(output)
    assert repr(got) == repr(q) and got.spec() == q.spec()
    assert got.per_channel and got.reduce_range == quantize.auto_reduce_range(quantize.default_path())
    for i in range(len(q)):
        np.testing.assert_array_equal(got.weight(i), q.weight(i))
        np.testing.assert_array_equal(got.scale(i), q.scale(i))
        np.testing.assert_array_equal(got.bias(i), q.bias(i))
    np.testing.assert_array_equal(got.logits(X), q.logits(X))
    np.testing.assert_array_equal(got.predict(X), q.predict(X))

    lines = _lines(out)
    assert lines[0] == f"wrote {output}: {q!r}"
    assert lines[1] == f"kernel path      {q.path} (this CPU runs {', '.join(quantize.available_paths())})"
    m = re.fullmatch(r"size +([\d,]+) -> ([\d,]+) bytes \((\d+\.\d\d)x smaller: float32 parameters -> int8 "
                     r"weights with their scales, column sums and biases\)", lines[2])
    assert m, lines[2]
    before, after = (int(g.replace(",", "")) for g in m.groups()[:2])
    assert (before, after) == (model.params.nbytes, q.nbytes) == ((64 * 16 + 16 + 16 * 10 + 10) * 4, q.nbytes)
    assert m.group(3) == f"{before / after:.2f}"
    acc_float, acc_int8 = model.evaluate(X, y)[1], q.evaluate(X, y)[1]
    assert lines[3] == (f"test accuracy    {acc_float:.4f} -> {acc_int8:.4f} ({100 * (acc_int8 - acc_float):+.2f} "
                        f"points) on {len(X)} digits test images")
    drift = float(np.abs(q.logits(X).astype(np.float64) - model.logits(X)).max())
    assert lines[4] == f"max |logit diff| {drift:.4g} (float32 model vs int8, over the test split)"
    assert 0 < drift < 0.5
    m = re.fullmatch(r"inference +(\S+) ms -> (\S+) ms \(speed-up (\d+\.\d\d)x; one warm run each, batch 1024, "
                     r"up to (\d+) threads?\)", lines[5])
    assert m, lines[5]
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0 and int(m.group(4)) == fastwb.get_num_threads()
    assert sorted(os.listdir(tmp_path)) == ["model.int8.fwb"]       # no temporary file left


@pytest.mark.parametrize("flags", [[], ["--per-tensor"], ["--reduce-range"], ["--per-tensor", "--reduce-range"],
                                   ["--full-range"]], ids=str)
def test_per_tensor_and_reduce_range_reach_the_saved_model(tmp_path, saved, digits, flags):
    path, model = saved
    output = tmp_path / "q.fwb"
    status, out, err = quantize_cli([path, "-o", str(output), *flags])
    assert status == 0 and err == ""
    width = True if "--reduce-range" in flags else False if "--full-range" in flags else None
    options = {"per_channel": "--per-tensor" not in flags, "reduce_range": width}
    q, X, _ = expected(model, digits, **options)
    got = quantize.load(output)
    assert got.spec()["per_channel"] == options["per_channel"]
    auto = quantize.auto_reduce_range(quantize.default_path())
    assert got.spec()["reduce_range"] == (auto if width is None else width)
    np.testing.assert_array_equal(got.logits(X), q.logits(X))
    if "--per-tensor" in flags:
        assert all(len(set(got.scale(i).tolist())) == 1 for i in range(len(got)))
    else:
        assert all(len(set(got.scale(i).tolist())) > 1 for i in range(len(got)))
    assert ("per-tensor" in out) == ("--per-tensor" in flags) and ("7-bit" in out) == got.reduce_range


def test_json_batch_size_and_threads(tmp_path, saved, digits):
    path, model = saved
    reports = []
    for threads in ("1", "2"):
        status, out, err = quantize_cli([path, "-o", str(tmp_path / f"q{threads}.fwb"), "--json",
                                         "--batch-size", "50", "--threads", threads])
        assert status == 0 and err == "" and out.count("\n") == 1
        reports.append(json.loads(out))
    q, X, y = expected(model, digits)
    r = reports[0]
    assert r["threads"] == 1 and reports[1]["threads"] == 2
    assert {k: r[k] for k in ("model", "dataset", "n", "kernel_path", "per_channel", "reduce_range", "nbytes_before",
                              "nbytes_after", "metric", "before")} == {
        "model": path, "dataset": "digits", "n": len(X), "kernel_path": q.path, "per_channel": True,
        "reduce_range": q.reduce_range, "nbytes_before": model.params.nbytes, "nbytes_after": q.nbytes, "metric": "accuracy",
        "before": model.evaluate(X, y)[1]}
    assert r["after"] == q.evaluate(X, y, batch_size=50)[1]           # each batch of 50 its own scales
    assert r["max_abs_logit_diff"] == float(np.abs(q.logits(X, 50).astype(np.float64) - model.logits(X)).max())
    assert r["seconds_before"] > 0 and r["seconds_after"] > 0
    for key in ("after", "max_abs_logit_diff", "nbytes_after"):        # the same for any thread count
        assert reports[1][key] == r[key]
    assert (tmp_path / "q1.fwb").read_bytes() == (tmp_path / "q2.fwb").read_bytes()


def test_a_float64_batchnorm_model(tmp_path, digits):
    X, y, Xt, _ = datasets.load("digits", None, np.float64, rng=0)
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 10),
                          dtype="float64", rng=0)
    model.fit(X, y, epochs=2, batch_size=64, verbose=False)
    model.save(tmp_path / "f64.fwb")
    status, out, err = quantize_cli([str(tmp_path / "f64.fwb"), "-o", str(tmp_path / "q.fwb")])
    assert status == 0 and err == ""
    assert "float64 parameters -> int8" in out and "(float64 model vs int8" in out
    q = quantize.quantize_dynamic(model.eval())
    got = quantize.load(tmp_path / "q.fwb")
    assert got.activations == [("tanh", 0.01), ("identity", 0.01)]       # BatchNorm folded, Dropout gone
    np.testing.assert_array_equal(got.logits(Xt.astype(np.float32)), q.logits(Xt.astype(np.float32)))


def test_a_model_trained_by_the_cli_in_a_fresh_process(tmp_path):
    """``fastwb train --save`` then ``python -m fastwb quantize`` and ``info``, as a user runs them."""
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "fastwb", *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, check=False)

    done = run("train", "--epochs", "2", "--hidden", "8", "--save", "m.fwb", "--quiet")
    assert done.returncode == 0, done.stderr
    done = run("quantize", "m.fwb", "-o", "m.int8.fwb")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("wrote m.int8.fwb: QuantizedModel(64-8-10,") and len(done.stdout.splitlines()) == 6
    done = run("info", "m.int8.fwb")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("m.int8.fwb: QuantizedModel(64-8-10,")
    assert sorted(os.listdir(tmp_path)) == ["m.fwb", "m.int8.fwb"]


# -- files that are not a quantizable float model: one line, exit status 2, nothing written ---------

def _npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


@pytest.mark.parametrize("kind", ["missing", "garbage", "folder", "truncated", "foreign npz", "ensemble", "int8",
                                  "same file", "unquantizable", "too wide", "too few classes"])
def test_a_file_that_is_not_a_quantizable_model_is_one_line(tmp_path, saved, kind):
    path, output = tmp_path / "bad.fwb", tmp_path / "out.fwb"
    says = {"missing": "cannot load", "garbage": "cannot load", "folder": "cannot load", "truncated": "cannot load",
            "foreign npz": "cannot load", "ensemble": "is a deep ensemble", "int8": "is already an int8 model",
            "same file": "is the float model itself", "unquantizable": "cannot quantize",
            "too wide": "takes 12 features, but the digits images have 64",
            "too few classes": "has 3 classes, but the digits labels go up to 9"}[kind]
    if kind == "garbage":
        path.write_bytes(b"not a model at all")
    elif kind == "folder":
        path = tmp_path / "a-folder"
        path.mkdir()
    elif kind == "truncated":
        data = Path(saved[0]).read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "foreign npz":
        _npz(path, weights=np.zeros(3))
    elif kind == "ensemble":
        Ensemble(lambda i: fastwb.MLP([64, 4, 10], rng=i), n_members=2).save(path)
    elif kind == "int8":
        quantize.quantize_dynamic(saved[1].copy().eval()).save(path)
    elif kind == "same file":
        path.write_bytes(Path(saved[0]).read_bytes())
        output = path
    elif kind == "unquantizable":        # a BatchNorm1d with no Linear before it to fold into
        nn.Sequential(nn.BatchNorm1d(64), nn.Linear(64, 10), rng=0).save(path)
    elif kind == "too wide":
        fastwb.MLP([12, 4, 10], rng=0).save(path)
    elif kind == "too few classes":
        fastwb.MLP([64, 4, 3], rng=0).save(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    status, out, err = quantize_cli([str(path), "-o", str(output)])
    assert status == 2 and out == "", (status, out, err)
    assert err.startswith("fastwb quantize: ") and err.count("\n") == 1 and says in err, err
    assert "Traceback" not in err
    if kind in ("missing", "garbage", "folder", "truncated", "foreign npz"):
        assert err.startswith(f"fastwb quantize: cannot load {path}")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before    # nothing written


def test_a_data_set_that_cannot_be_loaded_is_one_line(tmp_path, saved):
    status, out, err = quantize_cli([saved[0], "-o", str(tmp_path / "q.fwb"), "--dataset", "mnist",
                                     "--data-path", str(tmp_path / "no-mnist-here")])
    assert status == 2 and out == "" and err.startswith("fastwb quantize: cannot load mnist: ")
    assert err.count("\n") == 1 and os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, saved):
    output = tmp_path / "q.fwb"
    output.write_bytes(b"the previous model")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    with mock.patch.object(os, "fsync", broken_fsync):
        status, out, err = quantize_cli([saved[0], "-o", str(output)])
    assert status == 1 and out == ""
    assert err == f"fastwb quantize: cannot write {output}: [Errno 28] No space left on device\n"
    assert output.read_bytes() == b"the previous model" and os.listdir(tmp_path) == ["q.fwb"]


# -- fastwb info on an int8 file ----------------------------------------------------------------

def test_info_describes_a_quantized_model(tmp_path, saved):
    q = quantize.quantize_dynamic(saved[1].copy().eval(), per_channel=False, reduce_range=True)
    path = str(tmp_path / "q.fwb")
    q.save(path)
    status, out, err = run_cli(["info", path])
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{path}: {q!r}" and "per-tensor int8 weights, 7-bit activations" in lines[0]
    assert lines[1].startswith(f"  kernel path {q.path} (this CPU runs {', '.join(quantize.available_paths())}")
    assert lines[2].startswith(f"  {q.nbytes:,} bytes of arrays")
    assert lines[3] == "  per-tensor weight scales, 7-bit activations, loss cross_entropy"
    assert lines[4].split() == ["#", "layer", "activation", "bias"]
    assert lines[5].split() == ["0", "Linear(64,", "16)", "int8", "relu", "yes"]
    assert lines[6].split() == ["1", "Linear(16,", "10)", "int8", "identity", "yes"] and len(lines) == 7

    status, out, err = run_cli(["info", path, "--json"])
    assert status == 0 and err == ""
    got = json.loads(out)
    assert got == {"model": path, "class": "QuantizedModel", "repr": repr(q), "kernel_path": q.path,
                   "available_paths": quantize.available_paths(), "nbytes": q.nbytes, "in_features": 64,
                   "out_features": 10, **q.spec()}


def test_info_of_a_damaged_quantized_file_is_one_line(tmp_path):
    path = _npz(tmp_path / "q.fwb", quantized=np.array("fastwb-int8-1"))      # no spec, no weights
    status, out, err = run_cli(["info", str(path)])
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"fastwb info: cannot load {path}: ") and "Traceback" not in err


def test_info_of_a_float_model_is_unchanged(saved):
    status, out, err = run_cli(["info", saved[0]])
    assert status == 0 and err == "" and out.startswith(f"{saved[0]}: MLP, float32, 64 -> 10 features")


def test_importing_the_cli_does_not_import_quantize():
    script = "import sys, fastwb.cli; print(sorted(m for m in sys.modules if 'quant' in m))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                          cwd=tempfile.gettempdir())     # the installed fastwb, not the source tree
    assert done.returncode == 0 and done.stdout == "[]\n", done.stderr
