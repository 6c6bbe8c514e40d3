"""``fastwb federated``: every bad option is one line on stderr and exit status 2
before any work; a real run on the embedded digits (Flower's simulation engine,
Ray) prints every round, the rounds to the target, and writes its curve and
JSON summary."""

import importlib.util
import json

import pytest

from test_cli import run_cli

HAVE_FLWR = importlib.util.find_spec("flwr") is not None
HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.parametrize("argv, message", [
    (["--fraction", "0"], "--fraction: must be a number in (0, 1]"),
    (["--fraction", "1.5"], "--fraction: must be a number in (0, 1]"),
    (["--fraction", "nan"], "--fraction: must be a number in (0, 1]"),
    (["--clients", "0"], "--clients: must be a positive integer"),
    (["--rounds", "-3"], "--rounds: must be a positive integer"),
    (["--partition", "iid,foo"], "--partition: must be iid, shards or both"),
    (["--partition", ""], "--partition: must be iid, shards or both"),
    (["--lr", "0"], "--lr: must be a finite number > 0"),
    (["--proximal-mu", "-1"], "--proximal-mu: must be a finite number >= 0"),
    (["--noise", "inf"], "--noise: must be a finite number >= 0"),
    (["--clip", "0"], "--clip: must be a finite number > 0"),
    (["--delta", "1"], "--delta: must be a number in (0, 1)"),
    (["--target", "0"], "--target: must be a number in (0, 1)"),
    (["--threads-per-client", "0"], "--threads-per-client: must be a positive integer"),
    (["--dataset", "cifar"], "--dataset: invalid choice"),
    (["--plot", "/no-such-folder-fastwb/x.png"], "--plot"),
])
def test_bad_options_are_one_line_and_status_2(argv, message):
    status, out, err = run_cli(["federated", *argv])
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.skipif(not HAVE_FLWR, reason="fastwb federated needs flwr: pip install 'fastwb[federated]'")
def test_noise_without_clip_is_refused_before_any_work():
    status, out, err = run_cli(["federated", "--noise", "1.0"])
    assert status == 2 and "--noise needs --clip" in err


@pytest.mark.skipif(HAVE_FLWR, reason="flwr is installed")
def test_missing_flower_is_one_line_naming_the_extra():
    status, out, err = run_cli(["federated", "--dataset", "digits"])
    assert status == 2 and "fastwb[federated]" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not (HAVE_FLWR and HAVE_RAY), reason="the simulation needs pip install 'fastwb[federated]'")
def test_a_simulation_on_the_digits(tmp_path):
    pytest.importorskip("sklearn", reason="the embedded digits come with scikit-learn")
    plot = tmp_path / "curve.png"
    argv = ["federated", "--dataset", "digits", "--clients", "6", "--fraction", "0.5", "--rounds", "3",
            "--partition", "iid,shards", "--target", "0.3", "--plot", str(plot)]
    status, out, err = run_cli(argv, work=None)
    assert status == 0, err
    assert "FedAvg on Flower's simulation engine, digits 64-32-10, 6 clients (3 a round), 3 rounds" in out
    for scheme in ("iid", "shards"):
        assert f"{scheme} partition:" in out
    assert out.count("round    3  accuracy") == 2
    assert "rounds to 30%: iid " in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    status, out, err = run_cli(argv[:-2] + ["--partition", "iid", "--json"], work=None)
    assert status == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    run = summary["runs"]["iid"]
    assert summary["sampled"] == 3 and len(run["accuracy"]) == 4 and run["epsilon"] is None
    assert run["clients"] == [3, 3, 3] and run["accuracy"][-1] > run["accuracy"][0]
