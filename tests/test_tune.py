"""fastwb.tune and ``fastwb tune`` (issue 15): tiny Optuna studies on the embedded digits.

Skipped as a whole when Optuna is missing (``pip install "fastwb[tune]"``), except
the checks that ``import fastwb`` never needs it and that a missing Optuna is a
one-line error, which run in child processes that hide it.  Child processes run
from ``tmp_path`` (the installed fastwb, not the source tree) with
``sys.executable``.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

optuna = pytest.importorskip("optuna", reason="fastwb.tune needs optuna: pip install 'fastwb[tune]'")
pytest.importorskip("sqlalchemy", reason="Optuna's RDB storage needs sqlalchemy: pip install 'fastwb[tune]'")

from fastwb import datasets, nn, tune
from fastwb.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)
TrialState = optuna.trial.TrialState

# a fixed, quick model for the tests that are about the machinery, not the search
FIXED = {"hidden": [32], "activation": "relu", "dropout": 0.0, "weight_decay": 0.0, "batch_size": 64,
         "optimizer": "adam", "lr": 1e-2}


@pytest.fixture(scope="module")
def digits():
    X, y, _, _ = datasets.load("digits")
    X_train, X_val, y_train, y_val = datasets.train_test_split(X, y, 0.2, rng=0)
    return X_train, y_train, X_val, y_val


def child(code, cwd, **kwargs):
    """A Python child process running ``code`` from ``cwd``, with SIGINT raising
    KeyboardInterrupt even when the test runner was started with SIGINT ignored."""
    prelude = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def cli_child(argv, cwd):
    return child(f"from fastwb.cli import main; sys.exit(main({list(map(str, argv))!r}))", cwd)


def load_trials(url, name):
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


# -- the optional dependency ---------------------------------------------------------------

def test_import_fastwb_never_imports_optuna(tmp_path):
    code = ("import sys; import fastwb, fastwb.tune, fastwb.cli; "
            "assert 'optuna' not in sys.modules, 'optuna imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_missing_optuna_is_one_line_naming_the_extra(tmp_path):
    hide = "import sys; sys.modules['optuna'] = None\n"
    out = subprocess.run([sys.executable, "-c", hide + "from fastwb import tune; tune.create_study()"],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    assert out.returncode != 0
    assert "fastwb.tune needs optuna: pip install 'fastwb[tune]'" in out.stderr
    out = subprocess.run([sys.executable, "-c", hide + "from fastwb.cli import main; sys.exit(main(['tune']))"],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastwb tune: fastwb tune needs optuna: pip install 'fastwb[tune]'")


# -- PruningCallback ---------------------------------------------------------------------------

def test_pruning_stops_a_bad_trial_early(digits):
    X_train, y_train, X_val, y_val = digits
    space = dict(FIXED, lr={"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
                 optimizer={"type": "categorical", "choices": ["adam", "sgd"]})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    study.enqueue_trial({"lr": 1e-2, "optimizer": "adam"})      # learns: ~90% after one epoch
    study.enqueue_trial({"lr": 1e-6, "optimizer": "sgd"})       # cannot move: chance level
    study.optimize(tune.objective(X_train, y_train, X_val, y_val, space, epochs=6), n_trials=2)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE
    assert good.user_attrs["epochs"] == 6 and sorted(good.intermediate_values) == [0, 1, 2, 3, 4, 5]
    assert good.value > 0.8
    assert bad.state == TrialState.PRUNED
    assert bad.user_attrs["epochs"] == 1 and list(bad.intermediate_values) == [0]
    assert bad.intermediate_values[0] < 0.3


def _model(seed=0):
    return tune.build_model(FIXED, 64, 10, rng=seed)


def test_callback_reports_every_epoch_and_prunes(digits):
    X_train, y_train, X_val, y_val = digits
    assert issubclass(tune.PruningCallback, nn.Callback)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    cb = tune.PruningCallback(trial, "val_accuracy", interval=2)
    history = _model().fit(X_train, y_train, epochs=5, validation_data=(X_val, y_val), callbacks=[cb], verbose=False)
    assert sorted(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1, 3]     # every 2nd epoch
    assert trial.storage.get_trial(trial._trial_id).intermediate_values[3] == history["val_accuracy"][3]
    assert cb.epochs_run == 5 and cb.pruned_epoch is None

    # a pruner that prunes whatever it sees: the trial stops at the first report, inside fit
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    trial = study.ask()
    model = _model()
    cb = tune.PruningCallback(trial, "val_loss")
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        model.fit(X_train, y_train, epochs=4, validation_data=(X_val, y_val), callbacks=[cb], verbose=False)
    assert model.epochs_done == 1 and cb.pruned_epoch == 0 and model.training


def test_callback_missing_metric_is_an_error_at_the_first_epoch(digits):
    X_train, y_train, _, _ = digits
    trial = optuna.create_study(direction="maximize").ask()
    model = _model()
    logs = r"'val_accuracy' is not in this epoch's logs \(accuracy, loss.*validation_data"
    with pytest.raises(ValueError, match=logs):
        model.fit(X_train, y_train, epochs=3, callbacks=[tune.PruningCallback(trial)], verbose=False)
    assert model.epochs_done == 1
    with pytest.raises(ValueError, match="'val_acc' is not in"):
        _model().fit(X_train, y_train, epochs=3, validation_data=digits[2:],
                     callbacks=[tune.PruningCallback(trial, "val_acc", mode="max")], verbose=False)


@pytest.mark.parametrize("monitor, direction, mode", [("val_loss", "maximize", "auto"),
                                                      ("val_accuracy", "minimize", "auto"),
                                                      ("loss", "maximize", "min"),
                                                      ("val_loss", "minimize", "max")])
def test_callback_direction_contradicting_the_study_is_an_error(digits, monitor, direction, mode):
    X_train, y_train, X_val, y_val = digits
    trial = optuna.create_study(direction=direction).ask()
    model = _model()
    with pytest.raises(ValueError, match=f"monitors '{monitor}', which is to be .* the study is set to {direction}"):
        model.fit(X_train, y_train, epochs=3, validation_data=(X_val, y_val),
                  callbacks=[tune.PruningCallback(trial, monitor, mode=mode)], verbose=False)
    assert model.epochs_done == 0       # refused before the first epoch was trained


def test_callback_argument_errors():
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    with pytest.raises(ValueError, match="single-objective"):
        _model().fit(np.zeros((4, 64), np.float32), np.arange(4), epochs=1,
                     callbacks=[tune.PruningCallback(trial)], verbose=False)
    with pytest.raises(ValueError, match="mode must be"):
        tune.PruningCallback(trial, mode="up")
    for interval in (0, 1.5, True):
        with pytest.raises(ValueError, match="interval must be"):
            tune.PruningCallback(trial, interval=interval)
    with pytest.raises(TypeError, match="monitor must be"):
        tune.PruningCallback(trial, monitor=None)


# -- the search space ------------------------------------------------------------------------------

def test_default_space_is_the_slide():
    s = tune.DEFAULT_SPACE
    assert s["lr"] == {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}
    assert s["weight_decay"] == {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}
    assert s["dropout"] == {"type": "float", "low": 0.1, "high": 0.5}
    assert {"n_layers", "hidden", "activation", "batch_size", "optimizer"} <= set(s)


def _structure(model):
    linear = [la for la in model.layers if isinstance(la, nn.Linear)]
    return ([la.out_features_ for la in linear], [type(la).__name__ for la in model.layers])


def test_suggest_model_over_the_default_space():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        model, config = tune.suggest_model(trial, in_features=64, out_features=10)
        p = trial.params
        n = p["n_layers"]
        assert config["hidden"] == [p[f"hidden_{i + 1}"] for i in range(n)] and config["n_layers"] == n
        assert set(p) == {"lr", "weight_decay", "dropout", "n_layers", "activation", "batch_size", "optimizer",
                          *(f"hidden_{i + 1}" for i in range(n))}
        widths, kinds = _structure(model)
        assert widths == config["hidden"] + [10]
        act = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "tanh": "Tanh"}[p["activation"]]
        assert kinds == [k for _ in range(n) for k in ("Linear", act, "Dropout")] + ["Linear"]
        assert all(la.p == p["dropout"] for la in model.layers if isinstance(la, nn.Dropout))
        opt = model.optimizer
        assert type(opt) is type(nn.Sequential(nn.Linear(2, 2)).compile(p["optimizer"]).optimizer)
        assert opt.hyper["lr"] == p["lr"] and opt.hyper["weight_decay"] == p["weight_decay"]
        assert config["batch_size"] == p["batch_size"] in (32, 64, 128, 256)
        d = trial.distributions
        assert (d["lr"].low, d["lr"].high, d["lr"].log) == (1e-5, 1e-1, True)
        assert (d["weight_decay"].low, d["weight_decay"].high, d["weight_decay"].log) == (1e-6, 1e-2, True)
        assert (d["dropout"].low, d["dropout"].high) == (0.1, 0.5)
        seen.add(n)
        study.tell(trial, 0.5)
    assert len(seen) > 1


def test_suggest_model_over_an_edited_space():
    space = copy.deepcopy(tune.DEFAULT_SPACE)
    space["lr"]["high"] = 1e-3
    space["activation"] = "tanh"
    space["batchnorm"] = True
    space["hidden"] = [48, 24]
    del space["n_layers"]
    space["optimizer"] = {"type": "categorical", "choices": ["sgd"]}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    model, config = tune.suggest_model(trial, space, in_features=64, out_features=10, dtype="float64")
    assert set(trial.params) == {"lr", "weight_decay", "dropout", "batch_size", "optimizer"}
    assert trial.distributions["lr"].high == 1e-3 and trial.params["lr"] <= 1e-3
    widths, kinds = _structure(model)
    assert widths == [48, 24, 10] and model.dtype == np.float64
    assert kinds == ["Linear", "BatchNorm1d", "Tanh", "Dropout"] * 2 + ["Linear"]
    assert config["activation"] == "tanh" and config["batchnorm"] is True and config["optimizer"] == "sgd"
    # edit_space does the same from a partial dict (as fastwb tune --space)
    edited = tune.edit_space({"hidden": [48, 24], "activation": "tanh"})
    assert "n_layers" not in edited and edited["lr"] == tune.DEFAULT_SPACE["lr"]
    # a FixedTrial rebuilds a configuration from known parameters
    fixed = optuna.trial.FixedTrial(trial.params)
    assert tune.suggest_config(fixed, space) == config


@pytest.mark.parametrize("edit, message", [
    ({"n_layer": 1}, "unknown key"),
    ({"lr": {"type": "float", "low": 1e-1, "high": 1e-5}}, "low 0.1 is above high"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "log scale needs low > 0"),
    ({"lr": {"type": "real", "low": 0.1, "high": 1.0}}, "'type' must be"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1.0, "lg": True}}, "unknown field"),
    ({"activation": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"activation": {"type": "categorical", "choices": ["relu", "swish"]}}, "'activation': must be one of"),
    ({"optimizer": "lbfgs"}, "'optimizer': must be one of"),
    ({"dropout": {"type": "float", "low": 0.1, "high": 1.0}}, "'dropout': must be in"),
    ({"hidden": [64, 0]}, "'hidden'"),
    ({"hidden": {"type": "int", "low": 0.5, "high": 8}}, "must be an integer"),
    ({"batch_size": 0}, "'batch_size': must be an integer >= 1"),
])
def test_space_errors_name_the_key(edit, message):
    with pytest.raises(ValueError, match=message):
        tune.edit_space(edit)
    with pytest.raises(TypeError):
        tune.edit_space([("lr", 1e-3)])
    with pytest.raises(ValueError, match="fixes the depth"):
        tune.check_space({"hidden": [8], "n_layers": 1})


# -- searching, resuming, sharing ------------------------------------------------------------------

def test_search_counts_finished_trials_and_resumes(tmp_path, digits):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    objective = tune.objective(*digits, space=FIXED, epochs=1)
    study = tune.create_study(url, "s", pruner="none", seed=0)
    assert tune.search(study, objective, trials=3) == [0, 1, 2]
    again = tune.create_study(url, "s", pruner="none", seed=0)       # loaded, not created
    assert tune.finished_count(again) == 3
    assert tune.search(again, objective, trials=5) == [3, 4]         # counts the 3 already there
    assert tune.search(again, objective, trials=4) == []
    trials = load_trials(url, "s")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert all(t.user_attrs["config"]["hidden"] == [32] and t.user_attrs["epochs"] == 1 for t in trials)
    with pytest.raises(ValueError, match="stored as maximize, not minimize"):
        tune.create_study(url, "s", direction="minimize")


def _running_after_a_complete(url, name, proc, settle=0.3, limit=90):
    """Wait until the study holds a COMPLETE trial and a RUNNING one that is still
    running ``settle`` seconds later (its heartbeat written); returns its number."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = load_trials(url, name)
        except KeyError:                  # the study is not created yet
            trials = []
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if running and any(t.state == TrialState.COMPLETE for t in trials):
            time.sleep(settle)
            if load_trials(url, name)[running[0]].state == TrialState.RUNNING:
                return running[0]
        time.sleep(0.05)
    raise AssertionError("no trial was running after a complete one")


LONG = json.dumps(dict(FIXED, hidden=[128], batch_size=32))       # ~1 s per trial of 300 epochs (idle)


def test_ctrl_c_marks_the_running_trial_failed_and_the_study_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    argv = ["tune", "--trials", "50", "--epochs", "300", "--pruner", "none", "--space", LONG,
            "--storage", url, "--study-name", "c"]
    proc = cli_child(argv, tmp_path)
    running = _running_after_a_complete(url, "c", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("fastwb tune: interrupted")
    trials = load_trials(url, "c")                      # loadable
    states = {t.number: t.state for t in trials}
    assert states[running] == TrialState.FAIL           # not RUNNING, not lost
    done = [n for n, s in states.items() if s == TrialState.COMPLETE]
    assert done and all(s in (TrialState.COMPLETE, TrialState.FAIL) for s in states.values())
    # the same command goes on: failed trials do not count toward --trials
    target = len(done) + 1
    argv[2] = str(target)
    resumed = cli_child(argv + ["--epochs", "2", "--json", "--no-retrain"], tmp_path)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    report = json.loads(out)
    assert report["trials_before"] == len(trials) and report["ran"] == [len(trials)]
    after = load_trials(url, "c")
    assert sum(t.state == TrialState.COMPLETE for t in after) == target
    assert after[running].state == TrialState.FAIL


def test_killed_process_leaves_a_loadable_study(tmp_path, digits):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    proc = cli_child(["tune", "--trials", "50", "--epochs", "300", "--pruner", "none", "--space", LONG,
                      "--storage", url, "--study-name", "k"], tmp_path)
    running = _running_after_a_complete(url, "k", proc)
    proc.kill()                                         # SIGKILL: no handler runs
    proc.communicate(timeout=30)
    trials = load_trials(url, "k")
    assert trials[running].state == TrialState.RUNNING
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done and all(t.user_attrs["epochs"] == 300 for t in done)
    # the dead trial's heartbeat stops: a search on a storage with a short grace period fails it
    time.sleep(2.2)
    study = tune.create_study(url, "k", pruner="none", heartbeat=1)
    tune.search(study, tune.objective(*digits, space=FIXED, epochs=1), trials=len(done) + 1)
    assert load_trials(url, "k")[running].state == TrialState.FAIL


def test_two_processes_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    argv = ["tune", "--trials", "10", "--epochs", "2", "--storage", url, "--study-name", "p", "--json",
            "--no-retrain"]
    procs = [cli_child(argv + ["--seed", str(k)], tmp_path) for k in range(2)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    ran = [set(r["ran"]) for r in reports]
    assert ran[0] and ran[1] and not ran[0] & ran[1]               # both searched, no trial twice
    trials = load_trials(url, "p")
    assert len(trials) == len(ran[0]) + len(ran[1])                # nothing lost
    assert {t.number for t in trials} == ran[0] | ran[1]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == len(trials) and 10 <= len(finished) <= 11
    assert all(r["threads"] == 1 for r in reports)                 # one thread per process with --storage


# -- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "argument --trials"),
    (["--timeout", "-5"], "argument --timeout"),
    (["--epochs", "1.5"], "argument --epochs"),
    (["--storage", "tune.db"], "argument --storage: must be a database URL"),
    (["--storage", "sqlite:/x.db"], "argument --storage: must be sqlite:///PATH"),
    (["--storage", "sqlite:////no/such/folder/x.db"], "argument --storage: SQLite database"),
    (["--pruner", "hyperband"], "argument --pruner"),
    (["--sampler", "grid"], "argument --sampler"),
    (["--threads", "0"], "argument --threads"),
    (["--val-size", "0"], "argument --val-size"),
    (["--val-size", "1.0"], "argument --val-size"),
    (["--seed", "-1"], "argument --seed"),
    (["--dataset", "cifar"], "argument --dataset"),
    (["--space", '{"depth": 2}'], "argument --space: search space: unknown key"),
    (["--space", "{not json"], "argument --space: not valid JSON"),
    (["--space", "no-such-file.json"], "argument --space: cannot read"),
    (["--save", "/no/such/folder/m.npz"], "argument --save"),
])
def test_cli_option_errors(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["tune", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_plots_folder_errors(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    for path, message in ((tmp_path / "file", "is not a folder"), (tmp_path / "a" / "b", "does not exist")):
        with pytest.raises(SystemExit):
            main(["tune", "--plots", str(path)])
        assert message in capsys.readouterr().err


def test_cli_search_table_plots_and_retrained_model(tmp_path, capsys):
    plots, saved = tmp_path / "plots", tmp_path / "best.npz"
    status = main(["tune", "--trials", "6", "--epochs", "2", "--plots", str(plots), "--save", str(saved),
                   "--seed", "1", "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert len(report["trials"]) == 6 and report["finished"] == 6 and report["storage"] is None
    assert report["best"]["state"] == "COMPLETE" and 0.0 <= report["test_accuracy"] <= 1.0
    assert report["best"]["value"] == max(t["value"] for t in report["trials"] if t["state"] == "COMPLETE")
    rows = [line for line in captured.err.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 6 and captured.err.count(tune.TABLE_HEADER) == 1      # the live table (stderr with --json)
    for stem in tune.PLOTS:
        data = (plots / f"{stem}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not [p for p in os.listdir(plots) if not p.endswith(".png")]     # no temporary files left
    model = nn.load(saved)
    _, _, X_test, y_test = datasets.load("digits", rng=1)         # --seed 1: the split of seed 1
    assert model.evaluate(X_test, y_test)[1] == pytest.approx(report["test_accuracy"])
    assert [w.shape[1] for w in model.W][:-1] == report["best"]["config"]["hidden"]


def test_cli_text_output_and_stored_direction(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    optuna.create_study(storage=url, study_name="m", direction="minimize")
    assert main(["tune", "--storage", url, "--study-name", "m", "--trials", "1"]) == 2
    assert "stored as minimize" in capsys.readouterr().err
    assert main(["tune", "--save", str(tmp_path / "m.npz"), "--no-retrain"]) == 2
    assert "cannot be combined with --no-retrain" in capsys.readouterr().err
    assert main(["tune", "--trials", "3", "--epochs", "1", "--pruner", "none", "--sampler", "random"]) == 0
    out = capsys.readouterr().out
    assert tune.TABLE_HEADER in out and "best trial #" in out and "test accuracy" in out
