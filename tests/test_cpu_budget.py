"""fastwb's default thread count: the process's CPU budget (affinity mask and cgroup CPU quota)."""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastwb
from fastwb import _runtime
from fastwb._runtime import cpu_budget

OPENMP = _runtime.config()["openmp"]
# Subprocesses run outside the repository, so that they import the built fastwb.
NEUTRAL = tempfile.gettempdir()
V2 = "cgroup v2 cpu.max"
V1 = "cgroup v1 cfs quota"


def tree(root, cgroup, files=()):
    """A fake /proc/self/cgroup (lines) and files under /sys/fs/cgroup ({relative path: contents})."""
    proc = root / "proc" / "self"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cgroup").write_text("".join(line + "\n" for line in cgroup))
    for rel, text in dict(files).items():
        path = root / "sys" / "fs" / "cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(root)


def budget(root, affinity=16):
    return cpu_budget(root, affinity=affinity)


# -- fake cgroup v2 trees -------------------------------------------------------------

def test_v2_quota_at_the_leaf_one_and_a_half_of_sixteen(tmp_path):
    root = tree(tmp_path, ["0::/kubepods/pod1/c1"], {"kubepods/pod1/c1/cpu.max": "150000 100000\n"})
    assert budget(root) == {"cpus": 2, "affinity": 16, "quota": 1.5, "source": V2}


def test_v2_quota_at_a_parent(tmp_path):
    root = tree(tmp_path, ["0::/a/b/c"], {
        "a/b/c/cpu.max": "max 100000\n",
        "a/b/cpu.max": "max 100000\n",
        "a/cpu.max": "50000 100000\n",
    })
    assert budget(root) == {"cpus": 1, "affinity": 16, "quota": 0.5, "source": V2}


def test_v2_smallest_quota_on_the_way_up(tmp_path):
    root = tree(tmp_path, ["0::/a/b"], {
        "a/b/cpu.max": "300000 100000\n",
        "a/cpu.max": "250000 100000\n",
        "cpu.max": "800000 100000\n",         # the mount root: a container's own cgroup
    })
    assert budget(root) == {"cpus": 3, "affinity": 16, "quota": 2.5, "source": V2}


def test_v2_quota_at_the_mount_root_of_a_container(tmp_path):
    """With a cgroup namespace the process sees "0::/" and its own cgroup mounted at /sys/fs/cgroup."""
    root = tree(tmp_path, ["0::/"], {"cpu.max": "200000 50000\n"})
    assert budget(root) == {"cpus": 4, "affinity": 16, "quota": 4.0, "source": V2}


def test_v2_path_outside_the_namespace_ends_at_the_mount(tmp_path):
    root = tree(tmp_path, ["0::/../../elsewhere/x"], {"cpu.max": "100000 100000"})
    assert budget(root)["cpus"] == 1


def test_v2_max_is_no_quota(tmp_path):
    root = tree(tmp_path, ["0::/a"], {"a/cpu.max": "max 100000\n", "cpu.max": "max 100000\n"})
    assert budget(root) == {"cpus": 16, "affinity": 16, "quota": None, "source": "affinity"}


@pytest.mark.parametrize("text", ["", "abc", "150000", "150000 100000 7", "-5 100000", "0 100000", "100000 0",
                                  "100000 -1", "1.5 1", "max", "150000 abc", "\x00\x01", "9" * 5000 + " 1"])
def test_v2_malformed_is_no_quota(tmp_path, text):
    root = tree(tmp_path, ["0::/a"], {"a/cpu.max": text})
    assert budget(root) == {"cpus": 16, "affinity": 16, "quota": None, "source": "affinity"}


def test_v2_malformed_leaf_valid_parent(tmp_path):
    root = tree(tmp_path, ["0::/a"], {"a/cpu.max": "garbage", "cpu.max": "150000 100000"})
    assert budget(root)["cpus"] == 2


def test_quota_beyond_any_float_is_no_quota(tmp_path):
    root = tree(tmp_path, ["0::/"], {"cpu.max": "1" + "0" * 400 + " 1"})
    assert budget(root) == {"cpus": 16, "affinity": 16, "quota": None, "source": "affinity"}


def test_cpu_max_that_is_a_directory(tmp_path):
    root = tree(tmp_path, ["0::/a"])
    (tmp_path / "sys" / "fs" / "cgroup" / "a" / "cpu.max").mkdir(parents=True)
    assert budget(root)["quota"] is None


def test_v2_on_a_hybrid_system_under_unified(tmp_path):
    root = tree(tmp_path, ["1:cpu:/", "0::/u"], {"unified/u/cpu.max": "150000 100000"})
    assert budget(root) == {"cpus": 2, "affinity": 16, "quota": 1.5, "source": V2}


# -- fake cgroup v1 trees -------------------------------------------------------------

def test_v1_cpu_cpuacct(tmp_path):
    root = tree(tmp_path, ["12:memory:/docker/x", "4:cpu,cpuacct:/docker/x", "1:name=systemd:/docker/x"], {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "150000\n",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
    })
    assert budget(root) == {"cpus": 2, "affinity": 16, "quota": 1.5, "source": V1}


def test_v1_separate_cpu_controller_and_parent_quota(tmp_path):
    root = tree(tmp_path, ["2:cpuacct:/a/b", "1:cpu:/a/b"], {
        "cpu/a/b/cpu.cfs_quota_us": "-1\n",
        "cpu/a/b/cpu.cfs_period_us": "100000\n",
        "cpu/a/cpu.cfs_quota_us": "300000\n",
        "cpu/a/cpu.cfs_period_us": "100000\n",
    })
    assert budget(root) == {"cpus": 3, "affinity": 16, "quota": 3.0, "source": V1}


def test_v1_container_sees_the_host_path_but_its_own_mount(tmp_path):
    """/proc/self/cgroup names /docker/x, but the container mounts that cgroup itself at cpu,cpuacct/."""
    root = tree(tmp_path, ["4:cpu,cpuacct:/docker/x"], {
        "cpu,cpuacct/cpu.cfs_quota_us": "50000",
        "cpu,cpuacct/cpu.cfs_period_us": "100000",
    })
    assert budget(root) == {"cpus": 1, "affinity": 16, "quota": 0.5, "source": V1}


def test_v1_symlinked_cpu_mount(tmp_path):
    root = tree(tmp_path, ["3:cpu,cpuacct:/"], {"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"})
    assert budget(root)["cpus"] == 2


@pytest.mark.parametrize("quota,period", [("-1", "100000"), ("150000", "0"), ("x", "100000"), ("150000", ""),
                                          ("-7", "100000"), ("0", "100000")])
def test_v1_no_or_malformed_quota(tmp_path, quota, period):
    root = tree(tmp_path, ["4:cpu,cpuacct:/"], {"cpu,cpuacct/cpu.cfs_quota_us": quota,
                                                "cpu,cpuacct/cpu.cfs_period_us": period})
    assert budget(root) == {"cpus": 16, "affinity": 16, "quota": None, "source": "affinity"}


def test_v1_period_missing(tmp_path):
    root = tree(tmp_path, ["4:cpu,cpuacct:/"], {"cpu,cpuacct/cpu.cfs_quota_us": "150000"})
    assert budget(root)["quota"] is None


def test_hybrid_smallest_of_v1_and_v2(tmp_path):
    root = tree(tmp_path, ["4:cpu,cpuacct:/", "0::/"], {
        "cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000",
        "unified/cpu.max": "120000 100000",
    })
    assert budget(root) == {"cpus": 2, "affinity": 16, "quota": 1.2, "source": V2}


# -- no cgroup, affinity, rounding ----------------------------------------------------

def test_no_cgroup_files_at_all(tmp_path):
    assert budget(str(tmp_path)) == {"cpus": 16, "affinity": 16, "quota": None, "source": "affinity"}
    assert budget(str(tmp_path / "does-not-exist"), affinity=3)["cpus"] == 3


def test_affinity_smaller_than_quota(tmp_path):
    root = tree(tmp_path, ["0::/"], {"cpu.max": "400000 100000"})
    assert budget(root, affinity=2) == {"cpus": 2, "affinity": 2, "quota": 4.0, "source": "affinity"}


def test_quota_equal_to_affinity_is_decided_by_affinity(tmp_path):
    root = tree(tmp_path, ["0::/"], {"cpu.max": "150000 100000"})
    assert budget(root, affinity=2) == {"cpus": 2, "affinity": 2, "quota": 1.5, "source": "affinity"}


@pytest.mark.parametrize("quota,cpus", [(1, 1), (10000, 1), (99999, 1), (100000, 1), (100001, 2), (150000, 2),
                                        (200000, 2), (1550000, 16), (10 ** 9, 16)])
def test_rounding_up_at_least_one(tmp_path, quota, cpus):
    root = tree(tmp_path, ["0::/"], {"cpu.max": f"{quota} 100000"})
    assert budget(root)["cpus"] == cpus


def test_default_affinity_is_the_process_mask():
    b = cpu_budget()
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert b["affinity"] == expected
    assert 1 <= b["cpus"] <= b["affinity"]
    assert set(b) == {"cpus", "affinity", "quota", "source"}


fragments = st.sampled_from(["0::/", "0::/a", "4:cpu,cpuacct:/", "1:cpu:/a/b", ":", "::", "\n", "/", "..", "cpu",
                             "cpu.max", "max", " ", "100000", "-1", "\x00", "é", "a/b/../../..", ","])
garbage = st.one_of(st.binary(max_size=200), st.lists(fragments, max_size=12).map("".join).map(str.encode))


@settings(max_examples=150, deadline=None)
@given(cgroup=garbage, v2=garbage, v2_parent=garbage, quota=garbage, period=garbage, affinity=st.integers(1, 64))
def test_garbage_never_raises(cgroup, v2, v2_parent, quota, period, affinity):
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "r")
        for rel, data in [("proc/self/cgroup", cgroup), ("sys/fs/cgroup/a/cpu.max", v2),
                          ("sys/fs/cgroup/cpu.max", v2_parent),
                          ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", quota),
                          ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", period),
                          ("sys/fs/cgroup/cpu/a/b/cpu.cfs_quota_us", quota),
                          ("sys/fs/cgroup/cpu/a/b/cpu.cfs_period_us", period)]:
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
        b = cpu_budget(root, affinity=affinity)
    assert set(b) == {"cpus", "affinity", "quota", "source"}
    assert 1 <= b["cpus"] <= affinity and b["affinity"] == affinity
    assert b["quota"] is None or b["quota"] > 0
    assert b["source"] in ("affinity", V1, V2)
    assert (b["source"] == "affinity") == (b["cpus"] == affinity)


# -- the default in this process --------------------------------------------------------

def _in_a_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_config_reports_the_budget(capsys):
    cfg = fastwb.show_config()
    assert cfg["cpu_budget"] == _runtime._budget
    assert set(cfg["cpu_budget"]) == {"cpus", "affinity", "quota", "source"}
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("cpu_budget"))
    assert f"cpus={cfg['cpu_budget']['cpus']}" in line and "source=" in line


def test_new_threads_and_plans_stay_within_the_budget():
    if _runtime._explicit_thread_count():
        pytest.skip("OMP_NUM_THREADS is set: the user's count wins over the budget")
    cpus = _runtime._budget["cpus"]
    counts = _in_a_new_thread(lambda: (fastwb.get_num_threads(),
                                       [fastwb.plan_threads(w) for w in (1, 1 << 20, 1 << 24, 1 << 40)]))
    assert counts[0] <= cpus
    assert all(1 <= n <= cpus for n in counts[1])


def test_cap_where_the_runtime_was_loaded_before_fastwb(monkeypatch):
    """The fallback: the runtime kept its own default (it was loaded before fastwb set
    OMP_NUM_THREADS), so every thread's untouched default is capped at the budget,
    and a count set through fastwb, in any thread, still wins."""
    default = _in_a_new_thread(_runtime._threads.max_threads)
    if not OPENMP or default < 2:
        pytest.skip("needs an OpenMP build whose default is at least 2 threads")
    monkeypatch.setattr(_runtime, "_runtime_default", default)
    monkeypatch.setattr(_runtime, "_cap", 1)

    def work():
        seen = [fastwb.get_num_threads(), fastwb.plan_threads(1 << 40)]
        with fastwb.threads(default):                    # explicit: wins over the cap
            seen += [fastwb.get_num_threads(), fastwb.plan_threads(1 << 40)]
        seen.append(fastwb.get_num_threads())            # back to the capped default
        fastwb.set_num_threads(default)
        seen.append(fastwb.get_num_threads())
        return seen

    assert _in_a_new_thread(work) == [1, 1, default, default, 1, default]
    assert _in_a_new_thread(lambda: fastwb.get_num_threads()) == 1     # a fresh thread again


# -- real processes ---------------------------------------------------------------------

CHILD = """
import json, os, threading, fastwb
from fastwb import _runtime
other = []
t = threading.Thread(target=lambda: other.append([fastwb.get_num_threads(), fastwb.plan_threads(1 << 40)]))
t.start(); t.join()
print(json.dumps({"main": fastwb.get_num_threads(), "plan": fastwb.plan_threads(1 << 40), "other": other[0],
                  "budget": fastwb._runtime.config()["cpu_budget"], "leaked": os.environ.get("OMP_NUM_THREADS"),
                  "cap": _runtime._cap, "policy": _runtime.WAIT_POLICY}))
"""


def _child(preexec=None, omp=None, prelude=""):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    done = subprocess.run([sys.executable, "-c", prelude + CHILD], env=env, capture_output=True, text=True,
                          timeout=120, cwd=NEUTRAL, preexec_fn=preexec)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _one_cpu():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("os.sched_setaffinity is not available on this platform")
    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("this machine gives the process one CPU: restricting affinity changes nothing")
    cpu = min(mask)
    return lambda: os.sched_setaffinity(0, {cpu})


def test_child_restricted_to_one_cpu_runs_one_thread():
    out = _child(preexec=_one_cpu())
    assert out["budget"]["affinity"] == 1 and out["budget"]["cpus"] == 1
    assert out["main"] == 1 and out["plan"] == 1 and out["other"] == [1, 1]


def test_explicit_omp_num_threads_wins_over_the_budget():
    out = _child(preexec=_one_cpu(), omp="2")
    expected = 2 if OPENMP else 1
    assert out["main"] == expected and out["other"][0] == expected
    assert out["leaked"] == "2"                  # the user's own variable is left alone


def _quota_cgroup():
    """A real cgroup with a 1-CPU quota that a child can join: (directory, join, cleanup), or skip."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("making a CPU-quota cgroup needs root")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this machine gives the process one CPU: a 1-CPU quota changes nothing")
    name = f"fastwb-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    attempts = [("/sys/fs/cgroup/cpu,cpuacct", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}),
                ("/sys/fs/cgroup/cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}),
                ("/sys/fs/cgroup", {"cpu.max": "100000 100000"})]
    reasons = []
    for mount, settings_ in attempts:
        d = os.path.join(mount, name)
        try:
            os.mkdir(d)
        except OSError as e:
            reasons.append(f"{d}: {e}")
            continue
        try:
            for f, v in settings_.items():
                with open(os.path.join(d, f), "w") as fh:
                    fh.write(v)
        except OSError as e:
            reasons.append(f"{d}: {e}")
            os.rmdir(d)
            continue

        def join(d=d):
            with open(os.path.join(d, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        return d, join
    pytest.skip("no CPU-quota cgroup can be made here: " + "; ".join(reasons))


@pytest.fixture
def quota_cgroup():
    d, join = _quota_cgroup()
    yield join
    for _ in range(50):             # the child has exited; the kernel may take a moment to empty the group
        try:
            os.rmdir(d)
            return
        except OSError:
            time.sleep(0.02)
    warnings.warn(f"could not remove the test cgroup {d}")


def test_real_cgroup_quota_lowers_the_default(quota_cgroup):
    out = _child(preexec=quota_cgroup)
    assert out["budget"]["cpus"] == 1 and out["budget"]["quota"] == 1.0 and out["budget"]["source"] != "affinity"
    assert out["main"] == 1 and out["plan"] == 1 and out["other"] == [1, 1]
    assert out["leaked"] is None                 # fastwb's OMP_NUM_THREADS lasted only for loading
    assert out["cap"] is None                    # the runtime itself took the budget


def test_real_cgroup_quota_when_the_runtime_was_loaded_first(quota_cgroup):
    if not OPENMP:
        pytest.skip("serial build")
    library = _runtime.config()["openmp_runtime"]
    prelude = f"import ctypes; ctypes.CDLL({library!r}, mode=ctypes.RTLD_GLOBAL)\n"
    out = _child(preexec=quota_cgroup, prelude=prelude)
    assert out["policy"].startswith("runtime default")
    assert out["cap"] == 1
    assert out["main"] == 1 and out["plan"] == 1 and out["other"] == [1, 1]


def test_real_cgroup_quota_explicit_count_wins(quota_cgroup):
    out = _child(preexec=quota_cgroup, omp="2")
    assert out["budget"]["cpus"] == 1
    assert out["main"] == (2 if OPENMP else 1)
