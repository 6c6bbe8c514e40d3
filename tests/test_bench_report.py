"""The benchmark report says one thing per comparison, explains itself and warns
when its figures cannot be trusted (issue 8, "Also"); its files are written
atomically.  Built on small synthetic reports, plus one run of the quickest
mode."""

import copy
import json
import os
import re

import numpy as np
import pytest

from fastwb import benchmark as B


def _row(name, fastwb, numpy=None, torch=None, unit="GB/s", share=0.5, spread=0.0, cached=False, dtype="float32"):
    med = {"fastwb": fastwb}
    speed = {}
    for key, t in (("numpy", numpy), ("torch", torch)):
        if t is not None:
            med[key] = t
            speed[key] = t / fastwb
    return {"name": name, "dtype": dtype, "median_s": med, "speedup": speed, "rate": 10.0, "unit": unit,
            "fraction_of_limit": share, "spread": spread, "fits_in_cache": cached}


def synthetic(load=(0.4, 0.6), own=True):
    """A quick-mode report like the one of the issue: in this process PyTorch's
    training step looks 1.64x slower than fastwb's, in processes of their own
    0.65x; two memory-bound rows in cache at 243% and 293% of the limit."""
    results = [
        _row("Adam step 1M", 1e-3, numpy=12e-3, torch=1.2e-3, share=2.43, cached=True),
        _row("SGD-momentum step 1M", 1e-3, numpy=7e-3, torch=4e-3, share=2.93, cached=True),
        _row("prune_weights p90 1M", 1e-3, numpy=6e-3, torch=50e-3, share=0.14),
        _row("train step 784-256-10 b128", 1e-3, numpy=1.6e-3, torch=1.64e-3, unit="GFLOP/s", share=0.6),
    ]
    results[-1]["speedup"]["gemms"] = 0.9
    report = {
        "machine": {"cpu": "test CPU", "cores": 2, "platform": "test", "python": "3", "numpy": np.__version__,
                    "fastwb": "0", "threads": 2, "blas": {}, "openmp_runtime": "", "wait_policy": "passive",
                    "torch": "2", "copy_GBps": {"numpy": 20.0, "threads": 30.0}, "best_copy_GBps": 30.0,
                    "stream_GBps": 45.0, "llc_bytes": 32 << 20,
                    "gemm_GFLOPs": {"float32": 190.0, "float64": 65.0}},
        "threads": 2, "quick": True, "results": results,
        "size_scaling": {"sizes": [1024, 4096], "seconds": {"Adam step": [1e-6, 3e-6], "relu": [5e-7, 9e-7]}},
        "thread_scaling": {"threads": [1, 2], "cores": 2,
                           "seconds": {"Adam step 1M": [2e-3, 1.1e-3], "train step 784-256-10 b128": [1e-3, 7e-4]}},
        "own_processes": None, "load": {"before": load[0], "after": load[1], "cores": 2}, "when": "now",
    }
    if own:
        report["own_processes"] = {
            "torch": {"train step 784-256-10 b128": 0.65e-3, "Adam step 1M": 1.5e-3},
            "fastwb": {"train step 784-256-10 b128": 1e-3, "Adam step 1M": 1e-3},
            "ratio": {"train step 784-256-10 b128": 0.65, "Adam step 1M": 1.5},
            "spread": {"train step 784-256-10 b128": 0.05, "Adam step 1M": 0.1}, "rounds": 5}
    return B.merge_own_processes(report)


def _table_cells(lines, name):
    """The cells of the text table's row for ``name`` (float32)."""
    for line in lines:
        if line.startswith(name + " ") and " float32 " in line:
            return line[len(name):].split()
    raise AssertionError(f"no table row for {name!r}")


def _target(lines, *words):
    hits = [line for line in lines if line[:6] in ("  ok  ", "  MISS", "  n/a ") and all(w in line for w in words)]
    assert len(hits) == 1, (words, hits)
    return hits[0].rsplit(": ", 1)[1]


def test_one_pytorch_figure_per_workload():
    report = synthetic()
    lines = B.text_report(report)
    text = "\n".join(lines)
    cells = _table_cells(lines, "train step 784-256-10 b128")
    # the own-process ratio is the table's and the target's, marked, and the in-process one is gone
    assert "0.65x" + B.OWN in cells
    assert _target(lines, "784-256-10", "PyTorch") == "0.65x"
    assert "1.64x" not in text and "1.64x" not in B.markdown(report)
    row = B._find(report, "train step 784-256-10 b128")
    assert row["torch_in_process"]["speedup"] == pytest.approx(1.64)
    assert row["speedup"]["torch"] == 0.65 and row["torch_measured"] == "own process"
    assert "each in its own process" in [line for line in lines if "1.5x faster than PyTorch" in line][0]


def test_in_process_pytorch_figures_are_labelled():
    lines = B.text_report(synthetic())
    cells = _table_cells(lines, "prune_weights p90 1M")
    assert "50.00x" in cells and B.OWN not in " ".join(cells)
    assert _target(lines, "prune_weights", "torch") == "50.00x"
    assert "both in this process" in [line for line in lines if "torch l1_unstructured" in line][0]


def test_merging_twice_changes_nothing():
    report = synthetic()
    again = B.merge_own_processes(copy.deepcopy(report))
    assert again["results"] == report["results"]


def test_every_target_figure_is_the_table_figure():
    report = synthetic()
    lines = B.text_report(report)
    for name, words in (("Adam step 1M", ("Adam 1M", "PyTorch")), ("prune_weights p90 1M", ("prune_weights", "NumPy")),
                        ("train step 784-256-10 b128", ("784-256-10", "NumPy twin"))):
        value = _target(lines, *words)
        assert value.strip("*") and any(c.rstrip(B.OWN) == value for c in _table_cells(lines, name)), (name, value)
    share = _target(lines, "Adam 1M", "memory limit")
    assert share == "243%*" and share in _table_cells(lines, "Adam step 1M")


def test_shares_above_100_percent_are_marked_and_explained():
    report = synthetic()
    lines = B.text_report(report)
    assert "293%*" in _table_cells(lines, "SGD-momentum step 1M")
    assert "14%" in _table_cells(lines, "prune_weights p90 1M")
    notes = " ".join(B.column_notes(report))
    for words in ("write-allocate", "in-place", "32 MiB last-level cache", "pass 100%", "x torch", "rate"):
        assert words in notes
    md = B.markdown(report)
    assert "243%\\*" in md and "Columns and marks" in md and "write-allocate" in md


def test_quiet_machine_gets_no_warning():
    lines = B.text_report(synthetic())
    assert not [line for line in lines if "WARNING" in line]
    assert lines[-1].startswith("spread: no comparison")
    assert any(line.startswith("load average (1 min): 0.40 before, 0.60 after") for line in lines)


@pytest.mark.parametrize("load", [(2.5, 0.3), (0.3, 7.0)])
def test_load_above_the_core_count_warns(load):
    report = synthetic(load=load)
    warn = B.trust_warnings(report)
    assert len(warn) == 1 and "load average" in warn[0] and "2 cores" in warn[0]
    assert "WARNING: the load average" in "\n".join(B.text_report(report))
    assert "## Warnings" in B.markdown(report)


def test_unknown_load_is_said_and_not_a_warning():
    report = synthetic(load=(None, None))
    assert B.trust_warnings(report) == []
    assert "unknown before, unknown after" in B.load_line(report)


def test_unstable_comparisons_are_marked_and_warned():
    report = synthetic()
    report["results"][2]["spread"] = 0.35
    report["own_processes"]["spread"]["Adam step 1M"] = 0.25
    lines = B.text_report(report)
    assert any(line.startswith("prune_weights p90 1M " + B.UNSTABLE) for line in lines)
    warn = B.trust_warnings(report)
    assert len(warn) == 2
    assert "1 of 4 comparisons are unstable" in warn[0] and "prune_weights p90 1M float32 (35%)" in warn[0]
    assert "Adam step 1M (25%)" in warn[1]


def test_halves_spread():
    base = np.ones(6)
    assert B.halves_spread({"a": base, "b": base}, "a", "b") == 0.0
    drift = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    assert B.halves_spread({"a": drift, "b": base}, "a", "b") == pytest.approx(1.0)
    assert B.halves_spread({"a": np.ones(1), "b": np.ones(1)}, "a", "b") == 0.0


def test_text_report_prints_thread_and_size_tables():
    text = "\n".join(B.text_report(synthetic()))
    assert "thread scaling (seconds per call; 2-core machine):" in text
    assert re.search(r"Adam step 1M\s+2\.00 ms\s+1\.10 ms", text)
    assert "cost against problem size (float32, seconds per call):" in text
    assert re.search(r"4,096\s+3\.0 us\s+0\.9 us", text)
    assert "PyTorch and fastwb each in its own process" in text


def test_report_without_pytorch_or_scaling():
    report = synthetic(own=False)
    for r in report["results"]:
        for key in ("torch",):
            r["median_s"].pop(key, None)
            r["speedup"].pop(key, None)
    report["size_scaling"], report["thread_scaling"] = {}, {}
    text = "\n".join(B.text_report(report))
    assert B.OWN + " " not in text.split("columns and marks")[0]
    assert "thread scaling" not in text and "each in its own process" not in text
    assert "cost against problem size" not in text
    assert "| comparison |" in B.markdown(report)


def _png_ok():
    pytest.importorskip("matplotlib")


def test_write_files(tmp_path):
    _png_ok()
    report = synthetic()
    paths = [str(tmp_path / "r.json"), str(tmp_path / "r.png"), str(tmp_path / "R.md")]
    assert B.write_files(report, *paths) == paths
    assert json.loads((tmp_path / "r.json").read_text())["results"][3]["speedup"]["torch"] == 0.65
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "R.md").read_text()
    assert "![speedups, limits, scaling](r.png)" in md and "0.65x" + B.OWN in md
    assert sorted(os.listdir(tmp_path)) == ["R.md", "r.json", "r.png"]


def test_regenerated_markdown_keeps_the_hand_written_sections(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    kept = B.KEPT_MARKER + "\n\n## Federated learning\n\nrounds to 97%: 56\n"
    md.write_text("# fastwb benchmarks\n\nold generated part\n\n" + kept)
    B.write_files(synthetic(), markdown_path=str(md))
    text = md.read_text()
    assert "old generated part" not in text and "## Comparisons" in text
    assert text.endswith(kept) and text.count(B.KEPT_MARKER) == 1
    md.write_text("no marker here\n")
    B.write_files(synthetic(), markdown_path=str(md))
    assert "no marker here" not in md.read_text() and B.KEPT_MARKER not in md.read_text()


def test_failed_figure_leaves_the_previous_file(tmp_path, monkeypatch):
    _png_ok()
    old = tmp_path / "r.png"
    old.write_bytes(b"previous")

    class Broken:
        def savefig(self, fh, **kw):
            fh.write(b"half a picture")
            raise RuntimeError("renderer died")
    monkeypatch.setattr(B, "figure", lambda report: Broken())
    with pytest.raises(RuntimeError, match="renderer died"):
        B.write_files(synthetic(), plot_path=str(old))
    assert old.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["r.png"]


@pytest.mark.parametrize("kind", ["json_path", "plot_path", "markdown_path"])
def test_interrupted_write_leaves_the_previous_file(tmp_path, monkeypatch, kind):
    """Ctrl-C after the data went out but before it reached the disk: the old
    file stays whole (a plain open() would have truncated it already)."""
    if kind == "plot_path":
        _png_ok()
    old = tmp_path / {"json_path": "r.json", "plot_path": "r.png", "markdown_path": "R.md"}[kind]
    old.write_bytes(b"previous")

    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        B.write_files(synthetic(), **{kind: str(old)})
    assert old.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == [old.name]


def test_quickest_mode_runs():
    """One comparison of the quick mode, for real: the machine's limits, the load
    and the spread are measured and the report prints."""
    report = B.run(quick=True, name_filter="softmax CE fwd+bwd 128x10", progress=False)
    m = report["machine"]
    assert m["stream_GBps"] > 0 and m["best_copy_GBps"] > 0
    assert report["load"]["cores"] >= 1
    (row,) = report["results"]
    assert row["spread"] >= 0 and isinstance(row["fits_in_cache"], bool)
    if m["llc_bytes"]:
        assert row["fits_in_cache"]         # 128 x 10 floats fit in any cache
    assert row.get("torch_measured") in (None, "in process")
    lines = B.text_report(report)
    assert any(line.startswith("softmax CE fwd+bwd 128x10") for line in lines)
    assert any(line.startswith("load average (1 min):") for line in lines)


# ---------------------------------------------------------------------------
# training speed over time (issue 17)
# ---------------------------------------------------------------------------

def _with_decay(late_over_early=1.02, torch_late=2e-3, epochs=(0.60, 0.61, 0.59), late_epochs=(0.62, 0.60, 0.61)):
    report = synthetic()
    report["decay"] = {
        "late_step": 3000, "timed": 100, "rounds": 3, "batch": "MNIST",
        "fastwb": {"early_s": 1e-3, "late_s": 1e-3 * late_over_early, "late_over_early": late_over_early},
        "torch": {"early_s": 2e-3, "late_s": torch_late, "late_over_early": 1.0},
        "torch_over_fastwb_late": torch_late / (1e-3 * late_over_early),
        "mnist": {"early": list(epochs), "late": list(late_epochs), "late_epochs": [10, 11, 12], "accuracy_5": 0.978},
    }
    return report


def test_decay_targets_and_table():
    lines = B.text_report(_with_decay())
    assert _target(lines, "memorised-batch step 784-256-10: at step 3000 within 1.1x") == "1.02x"
    assert _target(lines, "memorised-batch step at step 3000", "PyTorch") == "1.96x"
    assert _target(lines, "MNIST: epoch 10 within 1.05x of epoch 1") == "1.03x"     # median of 1.03, 0.98, 1.03
    assert _target(lines, "97.5%") == "97.80%"
    assert all(line.startswith("  ok  ") for line in lines if "memorised-batch" in line or "MNIST:" in line)
    table = [line for line in lines if line.startswith("  fastwb") or line.startswith("  torch")]
    assert any("1.00 ms" in line and "1.02 ms" in line and "1.02x" in line for line in table)
    assert any("MNIST epochs 1-3 vs 10-12" in line for line in lines)
    md = B.markdown(_with_decay())
    assert "## training speed over time" in md and "| fastwb MNIST epochs 1-3 vs 10-12 |" in md


def test_decay_targets_missed_are_said():
    lines = B.text_report(_with_decay(late_over_early=2.6, torch_late=1.19e-3, late_epochs=(0.70, 0.71, 0.69)))
    missed = [line for line in lines if line.startswith("  MISS") and ("memorised" in line or "MNIST" in line)]
    assert len(missed) == 3, missed


def test_memorised_batch_without_mnist_has_always_zero_pixels(monkeypatch):
    monkeypatch.delenv("FASTWB_MNIST", raising=False)
    X, y, source = B.memorised_batch()
    assert source == "synthetic MNIST-like" and X.shape == (128, 784) and X.dtype == np.float32
    assert y.shape == (128,) and y.min() >= 0 and y.max() <= 9
    images = X.reshape(128, 28, 28)
    assert not images[:, :4].any() and not images[:, 24:].any() and images.any()


def test_early_late_times_alternate():
    calls = []

    def make():
        n = len([c for c in calls if c == "make"])
        calls.append("make")
        return lambda: calls.append(n)
    early, late = B._early_late(make, late=5, timed=4)
    assert len(early) == len(late) == 4
    assert calls[:7] == ["make", "make", 1, 1, 1, 1, 1]
    assert calls[7:] == [0, 1, 1, 0, 0, 1, 1, 0]        # the order flips every pair


def test_batchnorm_dropout_and_bn_model_cases_run():
    """Every contender of the issue-9 comparisons runs once (small sizes)."""
    for contenders in (B._bn_case(8, 16, np.float32, 1), B._dropout_case(1000, 0.2, np.float32, 1),
                       B._bn_train_case(16, np.float32, 1), B._bn_train_case(8, np.float32, 1, B.BN_TINY, 0.0)):
        assert {"fastwb", "numpy"} <= set(contenders)
        for fn in contenders.values():
            fn()
    names = [c[0] for c in B.cases(True, ("float32",))]
    assert {"BatchNorm1d fwd+bwd 128x256", "BatchNorm1d fwd+bwd 4096x1024", "dropout p0.2 1M",
            "train step 784-256bn-10 b128", "train step 16-32bn-32bn-4 b32"} <= set(names)


def test_gemms_yardstick_from_own_processes_replaces_the_in_process_one():
    report = synthetic()
    row = B._find(report, "train step 784-256-10 b128")
    if "gemms" not in row["speedup"]:
        row["speedup"]["gemms"], row["median_s"]["gemms"] = 0.45, 0.45e-3       # in process: 2.22x
    in_process = row["speedup"]["gemms"]
    report["own_processes"]["gemms"] = {"train step 784-256-10 b128": 0.8e-3}
    report["own_processes"]["gemms_ratio"] = {"train step 784-256-10 b128": 1.25}
    B.merge_own_processes(report)
    assert row["gemms_measured"] == "own process" and row["gemms_in_process"]["speedup"] == in_process
    assert row["speedup"]["gemms"] == pytest.approx(0.8)
    line = [x for x in B.text_report(report) if "within 1.25x of its own GEMMs" in x][0]
    assert "each in its own process" in line and line.rstrip().endswith("1.25x")
    assert B.merge_own_processes(copy.deepcopy(report))["results"] == report["results"]     # idempotent
