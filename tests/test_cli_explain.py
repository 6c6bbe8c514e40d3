"""``fastwb explain MODEL``: every bad option is a one-line usage error before any
work; a good command line writes the figure of test images beside their maps,
for every method and every ``--wrt``; errors after loading (a missing model, a
width that does not fit the data set, a question the model cannot answer) are
one line each."""

import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastwb
from fastwb import cli, datasets, nn
from test_cli import _bad_choice, _bad_count, _bad_path, _bad_seed, _bad_threads, assert_usage_error, run_cli

METHODS = ["saliency", "smoothgrad", "integrated_gradients", "gradient_x_input"]
WRT = ["logit", "prob", "loss"]

BAD = {
    "--dataset": _bad_choice(cli.DEFAULTS),
    "--n": _bad_count,
    "--method": _bad_choice(METHODS),
    "--wrt": _bad_choice(WRT),
    "--out": _bad_path(figure=True),
    "--seed": _bad_seed,
    "--threads": _bad_threads,
}
GOOD = ["--dataset=digits", "--n=4", "--method=smoothgrad", "--wrt=prob", "--seed=3", "--threads=1"]


def test_every_explain_option_has_a_bad_value_strategy():
    parser = cli.build_parser()
    explain = parser._subparsers._group_actions[0].choices["explain"]
    options = {s for a in explain._actions for s in a.option_strings if s.startswith("--")}
    assert options - {"--help", "--data-path"} == set(BAD)


@given(st.sampled_from(sorted(BAD)).flatmap(lambda o: st.tuples(st.just(o), BAD[o])),
       st.lists(st.sampled_from(GOOD), unique=True, max_size=3))
def test_every_bad_option_value_is_a_one_line_usage_error(case, good):
    option, value = case
    assert_usage_error(["explain", "model.npz", *good, f"{option}={value}"], option)


def test_the_model_is_required():
    assert_usage_error(["explain"])


def test_output_path_is_checked_first(tmp_path):
    assert_usage_error(["explain", "m.npz", "--out", str(tmp_path / "no-such-folder" / "s.png")], "--out")
    assert_usage_error(["explain", "m.npz", "--out", str(tmp_path / "s.notaformat")], "--out")


# -- good command lines ---------------------------------------------------------------------------

def _digits_like(name="digits", path=None, dtype=np.float32, rng=0):
    """(X_train, y_train, X_test, y_test) of 8x8 images: noise plus a bright row per class."""
    r = np.random.default_rng(rng)
    y = np.arange(60) % 8
    X = r.random((60, 8, 8)) * 0.3
    X[np.arange(60), y, :] = 1.0
    X = X.reshape(60, 64).astype(dtype)
    return X[:40], y[:40], X[40:], y[40:]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    X, y, _, _ = _digits_like()
    model = fastwb.MLP([64, 16, 8], rng=0)
    model.fit(X, y, epochs=30, batch_size=8, verbose=False, rng=0)
    path = tmp_path_factory.mktemp("explain") / "digits.npz"
    model.save(str(path))
    return str(path)


def _run(argv):
    with mock.patch.object(datasets, "load", _digits_like):
        return run_cli(argv, work=None)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("wrt", WRT)
def test_explain_writes_the_figure(tmp_path, digits_model, method, wrt):
    pytest.importorskip("matplotlib")
    out = tmp_path / "s.png"
    status, stdout, err = _run(["explain", digits_model, "--n", "6", "--method", method, "--wrt", wrt,
                                "--out", str(out)])
    assert status == 0, err
    assert err == ""
    assert stdout.startswith(f"wrote {out}: {method} ({wrt}) of the first 6 digits test images, ")
    assert stdout.endswith(" of them predicted correctly\n")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]        # written atomically, nothing left beside it


def test_explain_draws_the_maps_of_fastwb_explain(tmp_path, digits_model):
    pytest.importorskip("matplotlib")
    from fastwb import explain

    drawn = {}
    plot = explain.plot_saliency

    def record(X, maps, shape, titles, cmap):
        drawn.update(X=X, maps=maps, shape=shape, titles=titles)
        return plot(X, maps, shape, titles, cmap=cmap)

    with mock.patch.object(explain, "plot_saliency", record):
        status, _, err = _run(["explain", digits_model, "--n", "5", "--out", str(tmp_path / "s.svg")])
    assert status == 0, err
    model = nn.load(digits_model)
    X, y = _digits_like()[2][:5], _digits_like()[3][:5]
    np.testing.assert_array_equal(drawn["X"], X)
    np.testing.assert_array_equal(drawn["maps"], explain.saliency(model, X))
    assert drawn["shape"] == (8, 8)
    pred = model.predict(X)
    assert drawn["titles"] == [f"label {a}, predicted {b}" for a, b in zip(y, pred)]
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")


def test_n_larger_than_the_test_set_takes_all_of_it(tmp_path, digits_model):
    pytest.importorskip("matplotlib")
    status, stdout, _ = _run(["explain", digits_model, "--n", "1000", "--out", str(tmp_path / "s.png")])
    assert status == 0 and "of the first 20 digits test images" in stdout


# -- errors after loading ---------------------------------------------------------------------------

def _one_line(status, stdout, err, start, want_status=2):
    assert status == want_status and stdout == "", (status, err)
    assert len(err.splitlines()) == 1 and err.startswith(start) and "Traceback" not in err, err


def test_missing_or_damaged_model_is_one_line(tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "s.png")
    _one_line(*_run(["explain", str(tmp_path / "none.npz"), "--out", out]), "fastwb explain: cannot load ")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    _one_line(*_run(["explain", str(bad), "--out", out]), "fastwb explain: cannot load ")
    assert not os.path.exists(out)


def test_a_model_of_another_width_is_one_line(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "wide.npz")
    fastwb.MLP([784, 8, 10], rng=0).save(path)
    _one_line(*_run(["explain", path, "--out", str(tmp_path / "s.png")]),
              f"fastwb explain: {path} takes 784 features, but the digits images have 64")


def test_a_question_the_model_cannot_answer_is_one_line(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "reg.npz")
    nn.Sequential(nn.Linear(64, 3), rng=0).compile(loss="mse").save(path)
    _one_line(*_run(["explain", path, "--wrt", "prob", "--out", str(tmp_path / "s.png")]),
              "fastwb explain: cannot explain ")
    assert "needs a classifier" in _run(["explain", path, "--wrt", "prob", "--out", str(tmp_path / "s.png")])[2]
    # the class labels are not targets of an mse loss either
    _one_line(*_run(["explain", path, "--wrt", "loss", "--out", str(tmp_path / "s.png")]),
              "fastwb explain: cannot explain ")
    # its logits can be explained: the titles then show the labels only
    status, stdout, err = _run(["explain", path, "--out", str(tmp_path / "s.png")])
    assert status == 0 and stdout.endswith("digits test images\n"), err


def test_missing_data_is_one_line(tmp_path, digits_model):
    pytest.importorskip("matplotlib")
    status, stdout, err = run_cli(["explain", digits_model, "--dataset", "mnist", "--data-path",
                                   str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.png")], work=None)
    _one_line(status, stdout, err, "fastwb explain: cannot load mnist: ")


def test_real_mnist(tmp_path, mnist_folder):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "mnist.npz")
    fastwb.MLP([784, 32, 10], rng=0).save(path)
    status, stdout, err = run_cli(["explain", path, "--dataset", "mnist", "--data-path", mnist_folder, "--n", "8",
                                   "--method", "integrated_gradients", "--out", str(tmp_path / "s.png")], work=None)
    assert status == 0, err
    assert stdout.startswith(f"wrote {tmp_path / 's.png'}: integrated_gradients (logit) of the first 8 mnist")
