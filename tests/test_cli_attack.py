"""``fastwb attack MODEL``: clean and robust accuracy of a saved classifier under
FGSM or PGD, the numbers those of :func:`fastwb.adversarial.robustness`; every
bad option is one line on stderr and exit status 2 before any work; the
figure of examples; the real MNIST (skipped without it)."""

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastwb
from fastwb import adversarial, cli, datasets, nn
from test_cli import (_bad_choice, _bad_count, _bad_lr, _bad_path, _bad_seed, _bad_threads, _not_float,
                      assert_usage_error, run_cli)

SIDE = 6                     # the fake data set: 6 x 6 images in [0, 1], 3 classes


def _fake_data(*args, **kwargs):
    """(X_train, y_train, X_test, y_test) of three noisy prototypes, in the dtype asked for."""
    dtype = args[2] if len(args) > 2 else kwargs.get("dtype", np.float32)
    r = np.random.default_rng(0)
    protos = r.random((3, SIDE * SIDE))
    y = r.integers(0, 3, 400)
    X = np.clip(protos[y] + r.normal(0, 0.15, (400, SIDE * SIDE)), 0, 1).astype(dtype)
    return X[:250], y[:250], X[250:], y[250:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 36-16-3 classifier trained on the fake data, saved: (path, model, X_test, y_test)."""
    X, y, Xt, yt = _fake_data(None, None, np.float32)
    model = fastwb.MLP([SIDE * SIDE, 16, 3], rng=0)
    model.fit(X, y, epochs=15, batch_size=25, verbose=False, rng=0)
    path = str(tmp_path_factory.mktemp("attack") / "model.fwb")
    model.save(path)
    return path, model, Xt, yt


def attack_cli(argv):
    """``fastwb attack ...`` in-process on the fake data: (status, stdout, stderr)."""
    with mock.patch.object(datasets, "load", _fake_data):
        return run_cli(["attack", *argv], work=None)


# -- bad values: one line, exit status 2, before any work -----------------------------------------

_bad_budget = st.one_of(st.floats().filter(lambda x: not (0.0 <= x < float("inf"))).map(repr), _not_float,
                        st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e-300", "-0.1", ""]))

#: the table test_cli.py's BAD would hold for "attack" (its own test checks only the commands listed there)
BAD = {
    "--eps": _bad_budget,
    "--attack": _bad_choice(["fgsm", "pgd"]),
    "--steps": _bad_count,
    "--alpha": _bad_lr,
    "--dataset": _bad_choice(cli.DEFAULTS),
    "--limit": _bad_count,
    "--batch-size": _bad_count,
    "--seed": _bad_seed,
    "--threads": _bad_threads,
    "--save-examples": _bad_path(figure=True),
}
FREE = {"--help", "--json", "--data-path"}      # a flag, and a folder checked when the data are loaded
GOOD = ["--eps=0.05", "--attack=pgd", "--steps=2", "--alpha=0.01", "--dataset=digits", "--limit=50",
        "--batch-size=16", "--seed=3", "--threads=1", "--json"]


def test_every_option_has_a_bad_value_strategy():
    parser = cli.build_parser()
    command = parser._subparsers._group_actions[0].choices["attack"]
    options = {s for a in command._actions for s in a.option_strings if s.startswith("--")}
    assert options - FREE == set(BAD)


@given(st.data())
def test_every_bad_option_value_is_a_one_line_usage_error(data):
    option = data.draw(st.sampled_from(sorted(BAD)))
    value = data.draw(BAD[option])
    good = data.draw(st.lists(st.sampled_from(GOOD), unique=True, max_size=4))
    where = data.draw(st.integers(0, len(good)))
    assert_usage_error(["attack", "model.fwb", *good[:where], f"{option}={value}", *good[where:]], option)


@pytest.mark.parametrize("argv", [["--eps", "-0.1"], ["--eps", "nan"], ["--steps", "0"], ["--alpha", "0"],
                                  ["--attack", "cw"], ["--save-examples", "/no-such-folder-fastwb/x.png"]],
                         ids=" ".join)
def test_bad_values_are_usage_errors(argv):
    assert_usage_error(["attack", "model.fwb", *argv], argv[0])


def test_pgd_options_with_fgsm_are_a_usage_error_before_loading_anything():
    for extra, named in ((["--steps", "5"], "--steps: a PGD option"),
                         (["--steps", "5", "--alpha", "0.1"], "--steps and --alpha: PGD options")):
        status, out, err = run_cli(["attack", "/no/such/model.fwb", "--attack", "fgsm", *extra])
        assert status == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"fastwb attack: error: {named}, not for --attack fgsm")


def test_save_examples_without_matplotlib_is_a_usage_error(tmp_path):
    with mock.patch.dict(sys.modules, {"matplotlib": None, "matplotlib.backend_bases": None}):
        status, _, err = run_cli(["attack", "m.fwb", "--save-examples", str(tmp_path / "x.png")])
    assert status == 2 and 'pip install "fastwb[plots]"' in err and len(err.splitlines()) == 1


def test_the_model_is_required():
    status, out, err = run_cli(["attack"])
    assert status == 2 and out == "" and "MODEL" in err and len(err.splitlines()) == 1


# -- what a good command line does ------------------------------------------------------------

def test_fgsm_reports_the_numbers_of_robustness(saved):
    path, model, X, y = saved
    status, out, err = attack_cli([path, "--eps", "0.1", "--dataset", "digits"])
    assert status == 0 and err == "", err
    want = adversarial.robustness(model, X, y, attack="fgsm", eps=0.1)
    assert want["clean_accuracy"] > 0.9 and want["robust_accuracy"] < want["clean_accuracy"]
    lines = out.splitlines()
    assert lines[0] == f"{path} on 150 digits test images, FGSM, eps 0.1 (L-inf, pixels in [0, 1])"
    assert lines[1] == f"clean accuracy   {want['clean_accuracy']:.4f}"
    assert lines[2] == f"robust accuracy  {want['robust_accuracy']:.4f}"
    assert lines[3].startswith("attack and both evaluations: ")


def test_pgd_json(saved):
    path, model, X, y = saved
    status, out, err = attack_cli([path, "--attack", "pgd", "--eps", "0.08", "--steps", "4", "--alpha", "0.03",
                                   "--seed", "2", "--limit", "100", "--batch-size", "32", "--json"])
    assert status == 0 and err == "", err
    got = json.loads(out)
    want = adversarial.robustness(model, X[:100], y[:100], attack="pgd", eps=0.08, steps=4, alpha=0.03, rng=2,
                                  batch_size=32)
    assert got["clean_accuracy"] == want["clean_accuracy"] and got["robust_accuracy"] == want["robust_accuracy"]
    assert (got["n"], got["attack"], got["eps"], got["steps"], got["alpha"]) == (100, "pgd", 0.08, 4, 0.03)
    # the default step: 2.5 * eps / steps
    status, out, _ = attack_cli([path, "--attack", "pgd", "--eps", "0.1", "--json"])
    assert status == 0 and json.loads(out)["steps"] == 10 and json.loads(out)["alpha"] == pytest.approx(0.025)


def test_save_examples_writes_a_figure(saved, tmp_path):
    pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "fastwb[plots]"')
    path = saved[0]
    figure = tmp_path / "examples.png"
    status, out, err = attack_cli([path, "--eps", "0.2", "--save-examples", str(figure)])
    assert status == 0 and err == "", err
    assert out.splitlines()[-1] == f"wrote {figure}"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["examples.png"]        # written atomically: no leftovers


def test_models_and_data_that_do_not_fit_are_one_line_errors(saved, tmp_path):
    path = saved[0]
    status, out, err = attack_cli([str(tmp_path / "missing.fwb")])
    assert status == 2 and out == "" and err.startswith("fastwb attack: cannot load ") and err.count("\n") == 1
    wide = fastwb.MLP([50, 4, 3], rng=0)
    wide.save(str(tmp_path / "wide.fwb"))
    status, out, err = attack_cli([str(tmp_path / "wide.fwb")])
    assert status == 2 and "takes 50 features, but the mnist images have 36" in err and err.count("\n") == 1
    two = fastwb.MLP([36, 4, 2], rng=0)
    two.save(str(tmp_path / "two.fwb"))
    status, out, err = attack_cli([str(tmp_path / "two.fwb")])
    assert status == 2 and "has 2 classes, but the mnist labels go up to 2" in err
    reg = nn.Sequential(nn.Linear(36, 3), dtype="float32", rng=0)
    reg.compile("sgd", loss="mse")
    reg.save(str(tmp_path / "reg.fwb"))
    status, out, err = attack_cli([str(tmp_path / "reg.fwb")])
    assert status == 2 and "trained with mse; robust accuracy needs a classifier" in err and err.count("\n") == 1
    with mock.patch.object(datasets, "load", side_effect=FileNotFoundError("no MNIST folder given")):
        status, out, err = run_cli(["attack", path], work=None)
    assert status == 2 and err == "fastwb attack: cannot load mnist: no MNIST folder given\n"


def test_float64_models_are_attacked_in_float64(tmp_path):
    X, y, Xt, yt = _fake_data(None, None, np.float64)
    model = fastwb.MLP([36, 8, 3], dtype=np.float64, rng=1)
    model.fit(X, y, epochs=5, batch_size=25, verbose=False)
    model.save(str(tmp_path / "m64.fwb"))
    status, out, err = attack_cli([str(tmp_path / "m64.fwb"), "--json"])
    assert status == 0, err
    assert json.loads(out)["robust_accuracy"] == adversarial.robust_accuracy(model, Xt, yt, eps=0.1)


def test_real_mnist_through_the_console_script(mnist_folder, tmp_path):
    X, y, Xt, yt = datasets.load("mnist", mnist_folder)
    model = fastwb.MLP([784, 64, 10], rng=0)
    model.fit(X[:10000], y[:10000], epochs=1, batch_size=64, verbose=False, rng=0)
    path = str(tmp_path / "mnist.fwb")
    model.save(path)
    done = subprocess.run([sys.executable, "-m", "fastwb", "attack", path, "--dataset", "mnist", "--data-path",
                           os.path.abspath(mnist_folder), "--limit", "1000", "--eps", "0.1", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = adversarial.robustness(model, Xt[:1000], yt[:1000], eps=0.1)
    assert got["clean_accuracy"] == want["clean_accuracy"] > 0.85
    assert got["robust_accuracy"] == want["robust_accuracy"] < want["clean_accuracy"] - 0.3
