"""``fastwb bench --contention``, ``--cgroup`` and ``--inference``: the busy
processes never outlive their use, and each section's report has its parts on
tiny runs (a few seconds each).  Nothing here asserts a timing."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastwb import benchmark as B
from fastwb import cli


def _gone(pid):
    """True when no process has this pid (os.kill(pid, 0) raises)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _gone_or_zombie(pid):
    """Gone, or a zombie its new parent has not reaped yet (it no longer runs)."""
    if _gone(pid):
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return _gone(pid)


# -- the busy processes ------------------------------------------------------------------

def test_busy_processes_leave_nothing_behind():
    with B.BusyProcesses(2) as busy:
        pids = busy.pids
        assert len(pids) == 2 and os.getpid() not in pids
        assert not any(_gone(pid) for pid in pids)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert busy.pids == []


def test_busy_processes_stopped_on_keyboard_interrupt():
    pids = []
    with pytest.raises(KeyboardInterrupt):
        with B.BusyProcesses(3) as busy:
            pids = busy.pids
            raise KeyboardInterrupt
    assert len(pids) == 3
    assert all(_gone(pid) for pid in pids)


def test_interrupted_start_kills_the_ones_started(monkeypatch):
    started, real = [], subprocess.Popen

    def popen(*args, **kw):
        if len(started) == 2:
            raise KeyboardInterrupt
        p = real(*args, **kw)
        started.append(p.pid)
        return p
    monkeypatch.setattr(subprocess, "Popen", popen)
    busy = B.BusyProcesses(4)
    with pytest.raises(KeyboardInterrupt):
        busy.start()
    assert len(started) == 2
    assert all(_gone(pid) for pid in started)
    assert busy.pids == []


def test_stop_twice_and_zero_processes():
    busy = B.BusyProcesses(0).start()
    assert busy.pids == []
    busy.stop()
    busy.stop()
    with pytest.raises(ValueError, match="n must be >= 0"):
        B.BusyProcesses(-1)


_PARENT = r"""
import sys, time
from fastwb.benchmark import BusyProcesses
busy = BusyProcesses(2).start()
print(" ".join(map(str, busy.pids)), flush=True)
time.sleep(120)
"""


def test_busy_processes_exit_when_their_parent_is_killed(tmp_path):
    """A parent killed with SIGKILL runs no finally block: the spinners notice
    by themselves that it is gone."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while not all(_gone_or_zombie(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = [pid for pid in pids if not _gone_or_zombie(pid)]
    for pid in alive:                   # do not leave them spinning even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive


# -- the contention section --------------------------------------------------------------

def test_contention_report_structure():
    """One load level (1 busy process), one workload, few repetitions, no PyTorch
    (its import alone takes seconds; the PyTorch rounds are tested below with a
    stand-in): every part of the report is there, the busy processes are gone
    afterwards, the text says it."""
    report = B.contention(quick=True, levels=(1,), name_filter="linear", repeats=3, settle_s=0, torch=False)
    assert report["torch_skipped"] == "not asked for" and report["rounds"] == 0
    assert report["cores"] >= 1 and report["default_threads"] >= 1
    assert report["cpu_budget"]["cpus"] >= 1
    (level,) = report["levels"]
    assert level["busy"] == 1 and len(level["pids"]) == 1
    assert all(_gone(pid) for pid in level["pids"])
    (name,) = level["workloads"]
    assert name == "linear fwd relu 128x784x256"
    w = level["workloads"][name]
    assert w["default_s"] > 0 and w["one_thread_s"] > 0 and w["ratio"] > 0 and w["spread"] >= 0
    if level["torch"] is not None:
        assert "error" in level["torch"] or (level["torch"]["ratio"] > 0 and level["torch"]["torch_threads"] >= 1)
    else:
        assert report["torch_skipped"]
    json.dumps(report)
    lines = B.contention_lines(report)
    text = "\n".join(lines)
    assert "1 busy processes" in text and "linear fwd relu 128x784x256" in text
    assert any("every workload at the default" in line for line in lines)
    if level["torch"] and "ratio" in level["torch"]:
        assert any("faster than PyTorch at its defaults" in line for line in lines)


_FAKE_TORCH = r"""
import json, sys
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    reps, budget = line.split()
    if reps == "die":
        sys.exit("the stand-in gave up")
    print(json.dumps({"seconds": 0.004, "threads": 3}), flush=True)
"""


def test_pytorch_rounds_through_a_worker_process():
    """The own-process protocol of the PyTorch comparison, with a stand-in worker:
    one answer per line, the ratio its time over fastwb's, the process gone after."""
    calls = []
    with B._Worker(_FAKE_TORCH) as worker:
        assert worker.read() == {"ready": True}
        got = B._torch_rounds(worker, lambda: calls.append(1), 1, True, 2, 1, lambda *a: None, budget=0.01)
        proc = worker.proc
    assert proc.poll() is not None
    assert got["rounds"] == 2 and got["torch_threads"] == 3 and got["torch_s"] == 0.004
    assert got["ratio"] == pytest.approx(0.004 / got["fastwb_s"], rel=1.0) and got["ratio"] > 0
    assert len(calls) >= 2 * (3 + 5)            # warm-up and at least five timed steps per round


def test_a_failing_worker_is_reported_not_raised():
    with B._Worker(_FAKE_TORCH) as worker:
        worker.read()
        with pytest.raises(RuntimeError, match="the stand-in gave up"):
            worker.ask("die 0")
        assert B._torch_rounds(worker, lambda: None, 1, True, 1, 1, lambda *a: None, 0.01)["error"]
    level = {"busy": 1, "workloads": {}, "torch": {"error": "it broke"}, "load_start": None, "load_during": None,
             "runnable_during": None}
    report = {"default_threads": 2, "cpu_budget": {"cpus": 2, "source": "affinity"}, "cpu": "x", "cores": 2,
              "repeats": 3, "load_before": None, "load_after": None, "levels": [level], "torch_skipped": None}
    assert "    PyTorch: its process failed: it broke" in B.contention_lines(report)


def test_contention_targets_from_a_synthetic_report():
    level = {"busy": 2, "workloads": {"a": {"ratio": 1.1}, "b": {"ratio": 1.3}},
             "torch": {"ratio": 6.0}}
    rows = B.contention_targets({"default_threads": 2, "levels": [level]})
    assert [(v, ok) for _, v, ok in rows] == [("1.30x", False), ("6.00x", True)]
    assert "worst: b" in rows[0][0]


def test_contention_workloads_are_the_issues():
    names = set(B.contention_workloads())
    assert names == {"train step 784-256-10 b32", "train step 784-256-10 b128", "train step 784-256-10 b1024",
                     "train step 784-1024-1024-10 b128", "predict 784-256-10 b1", "predict 784-256-10 b32",
                     "predict 784-256-10 b1024", "linear fwd relu 128x784x256", "Adam step 1M"}
    assert set(B.contention_workloads("PREDICT")) == {n for n in names if n.startswith("predict")}


# -- the cut CPU budget ------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="os.sched_setaffinity is not available here")
def test_child_with_one_core_of_affinity_reports_a_budget_of_one():
    report = B.budget_case(quick=True, method="sched_setaffinity", repeats=3)
    assert report["method"] == "sched_setaffinity" and "error" not in report, report
    child = report["child"]
    assert child["affinity"] == 1
    assert child["cpu_budget"]["cpus"] == 1 and child["cpu_budget"]["affinity"] == 1
    assert child["num_threads"] == 1 and report["adapted"]
    assert set(child["seconds"]) == {"default", "1 thread"}
    text = "\n".join(B.budget_lines(report))
    assert "os.sched_setaffinity to one core" in text and "the default adapted" in text


def test_cgroup_child_where_one_can_be_made():
    """As root with a writable cgroup hierarchy: the child runs in a 1-CPU quota
    cgroup, reads that quota as its budget, and the cgroup is removed."""
    kind, where = B.CpuCgroup.place()
    if kind is None:
        pytest.skip(f"no CPU-quota cgroup can be made here: {where}")
    report = B.budget_case(quick=True, method="cgroup", repeats=3)
    assert report["method"] in ("cgroup v2 cpu.max", "cgroup v1 cfs quota")
    assert report["cgroup_removed"] and not os.path.exists(report["cgroup_path"])
    assert "error" not in report, report
    child = report["child"]
    if os.path.basename(report["cgroup_path"]) in (child["cgroup"] or ""):
        # the child sees the cgroup under the mount point: fastwb reads its quota
        assert child["cpu_budget"]["quota"] == 1.0 and child["cpu_budget"]["source"] == report["method"]
        assert child["cpu_budget"]["cpus"] == 1 and child["num_threads"] == 1 and report["adapted"]
    assert "removed afterwards" in "\n".join(B.budget_lines(report))


def test_cgroup_place_in_a_fake_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert B.CpuCgroup.place(str(tmp_path)) == (None, "not running as root")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert B.CpuCgroup.place(str(tmp_path))[0] is None
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert B.CpuCgroup.place(str(tmp_path)) == ("v1", str(tmp_path / "cpu,cpuacct"))
    (tmp_path / "cgroup.subtree_control").write_text("cpuset cpu io memory pids\n")
    assert B.CpuCgroup.place(str(tmp_path)) == ("v2", str(tmp_path))


def test_budget_case_rejects_unknown_methods():
    with pytest.raises(ValueError, match="method must be"):
        B.budget_case(method="nice")


# -- inference ---------------------------------------------------------------------------

def _check_inference(report, peers):
    assert report["batches"] == [1, 32, 1024]
    assert set(report["fastwb"]) == {1, 32, 1024} and all(v > 0 for v in report["fastwb"].values())
    for name, c in report["contenders"].items():
        assert name.startswith(peers)
        assert set(c["ratio"]) == {1, 32, 1024} and all(v > 0 for v in c["ratio"].values())
        assert c["max_abs_diff"] < 1e-3        # the same weights: the same logits, up to rounding
    json.dumps(report)


def test_inference_skips_onnx_runtime_where_it_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # import onnxruntime fails
    report = B.inference(quick=True, rounds=1, repeats=3)
    assert "onnxruntime" in report["skipped"]["ONNX Runtime"]
    assert not any(n.startswith("ONNX") for n in report["contenders"])
    _check_inference(report, ("PyTorch",))
    lines = B.inference_lines(report)
    assert any(line.strip().startswith("ONNX Runtime skipped: onnxruntime") and "not installed" in line
               for line in lines)      # "onnxruntime not installed", or "onnxruntime and onnx ..." where onnx is absent too
    assert any(line.strip().startswith("fastwb") for line in lines)
    assert not any("ONNX Runtime" in line for line in lines if "target" in line or "within" in line)


def test_inference_against_onnx_runtime(monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "torch", None)            # only ONNX Runtime, to keep it short
    report = B.inference(quick=True, rounds=1, repeats=3)
    assert "PyTorch" in report["skipped"]
    assert len(report["contenders"]) == 2, report["skipped"]
    _check_inference(report, ("ONNX Runtime",))
    rows = B.inference_targets(report)
    assert [r[0].split(":")[0] for r in rows] == ["inference b32", "inference b1024"]


def test_onnx_graph_computes_the_mlp():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import fastwb

    model = fastwb.MLP([12, 7, 5, 3], rng=1)
    X = np.random.default_rng(2).standard_normal((9, 12)).astype(np.float32)
    s = ort.InferenceSession(B.onnx_mlp(B.mlp_weights(model)), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(s.run(None, {"x": X})[0], model.logits(X), rtol=1e-5, atol=1e-5)


# -- the command line --------------------------------------------------------------------

@pytest.mark.parametrize("extra", [["--plot", "x.png"], ["--markdown", "x.md"]])
def test_sections_refuse_the_comparison_reports_files(tmp_path, capsys, extra):
    extra = [extra[0], str(tmp_path / extra[1])]
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--cgroup", *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and extra[0] in err and "--cgroup" in err
    assert not os.path.exists(extra[1])


def test_sections_run_from_the_command_line(monkeypatch, tmp_path, capsys):
    """The flags reach run_sections in order, and --json gets the reports."""
    seen = {}

    def fake(sections, quick, threads, name_filter, progress):
        seen.update(sections=sections, quick=quick, threads=threads, name_filter=name_filter)
        return {"cgroup": {"method": "sched_setaffinity", "why_not_cgroup": "not asked for", "cgroup_path": None,
                           "error": "test"}}
    monkeypatch.setattr(B, "run_sections", fake)
    path = tmp_path / "s.json"
    assert cli.main(["bench", "--inference", "--cgroup", "--quick", "--threads", "1", "--json", str(path)]) == 0
    assert seen == {"sections": ["cgroup", "inference"], "quick": True, "threads": 1, "name_filter": None}
    assert json.loads(path.read_text())["cgroup"]["error"] == "test"
    assert "the child failed: test" in capsys.readouterr().out


def test_a_cgroup_that_cannot_take_the_child_falls_back_to_affinity(monkeypatch, tmp_path):
    """Moving the child into the cgroup fails: the child is killed, the cgroup
    removed, and the case runs with sched_setaffinity, saying why."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("os.sched_setaffinity is not available here")
    made = tmp_path / "cg"
    made.mkdir()
    pids = []

    class Refusing(B.CpuCgroup):
        def add(self, pid):
            pids.append(pid)
            raise PermissionError("refused")
    monkeypatch.setattr(B.CpuCgroup, "make", classmethod(lambda cls, cpus=1: (Refusing("v1", str(made)), None)))
    report = B.budget_case(quick=True, repeats=3)
    assert report["method"] == "sched_setaffinity" and "refused" in report["why_not_cgroup"]
    assert report["child"]["cpu_budget"]["cpus"] == 1 and report["adapted"]
    assert len(pids) == 1 and _gone(pids[0]) and not made.exists()
    with pytest.raises(PermissionError):
        B.budget_case(quick=True, method="cgroup", repeats=3)
