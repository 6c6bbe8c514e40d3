"""The installed build: OpenMP, configuration report, wait policy, threadpoolctl, CLI."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

import fastwb


# Subprocesses run outside the repository: from its root, "python -c" and
# "python -m" would import the uncompiled source tree instead of the install.
NEUTRAL = tempfile.gettempdir()


def _python(code, **env):
    """Run code in a fresh interpreter with extra environment variables; return stdout."""
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120,
                          cwd=NEUTRAL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_built_with_openmp():
    if os.environ.get("FASTWB_EXPECT_NO_OPENMP") == "1":
        pytest.skip("FASTWB_EXPECT_NO_OPENMP=1: this build is expected to be serial")
    cfg = fastwb._runtime.config()
    assert cfg["openmp"], "fastwb was built without OpenMP (set FASTWB_EXPECT_NO_OPENMP=1 if that is intended)"
    assert cfg["openmp_runtime"], "no OpenMP runtime library found"
    assert "-fopenmp" in " ".join(cfg["build"]["cflags"]) or os.name == "nt"


def test_build_flags_are_safe():
    flags = fastwb._runtime.config()["build"]["cflags"]
    assert "-ffast-math" not in flags
    assert "-O3" in flags and "-fno-math-errno" in flags
    assert ("-march=native" in flags) == bool(fastwb._runtime.config()["build"]["native"])


def test_show_config_prints_and_returns(capsys):
    cfg = fastwb.show_config()
    printed = capsys.readouterr().out
    for key in ("version", "openmp", "openmp_runtime", "num_threads", "wait_policy", "blas", "build"):
        assert key in cfg and key in printed
    assert cfg["version"] == fastwb.__version__
    assert cfg["num_threads"] == fastwb.get_num_threads()


def test_cli_info():
    out = subprocess.run([sys.executable, "-m", "fastwb", "info", "--json"], capture_output=True, text=True,
                         timeout=120, cwd=NEUTRAL)
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["version"] == fastwb.__version__
    plain = subprocess.run([sys.executable, "-m", "fastwb", "info"], capture_output=True, text=True, timeout=120,
                           cwd=NEUTRAL)
    assert "wait_policy" in plain.stdout


def test_passive_wait_is_default_and_does_not_leak():
    out = _python("import os, fastwb; print(fastwb._runtime.WAIT_POLICY); "
                  "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    policy, leaked = out.strip().splitlines()
    if not fastwb._runtime.config()["openmp"]:
        pytest.skip("serial build")
    assert policy == f"passive after a short spin (GOMP_SPINCOUNT={fastwb._runtime.SPIN_GRACE}; fastwb default)"
    assert leaked == "None None"


def test_user_wait_policy_is_respected():
    out = _python("import os, fastwb; print(fastwb._runtime.WAIT_POLICY); print(os.environ['OMP_WAIT_POLICY'])",
                  OMP_WAIT_POLICY="ACTIVE")
    policy, kept = out.strip().splitlines()
    if fastwb._runtime.config()["openmp"]:
        assert policy == "user setting: OMP_WAIT_POLICY=ACTIVE"
    assert kept == "ACTIVE"


def test_omp_num_threads_honoured():
    assert _python("import fastwb; print(fastwb.get_num_threads())", OMP_NUM_THREADS="3").strip() == (
        "3" if fastwb._runtime.config()["openmp"] else "1"
    )


def test_threadpoolctl_sees_and_limits_the_runtime():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fastwb._runtime.config()["openmp"]:
        pytest.skip("serial build")
    runtime = os.path.realpath(fastwb._runtime.config()["openmp_runtime"])
    seen = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
    assert runtime in {os.path.realpath(i["filepath"]) for i in seen}
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fastwb.get_num_threads() == 1
    with threadpoolctl.threadpool_limits(limits=2, user_api="openmp"):
        assert fastwb.get_num_threads() == 2


# Build-warning regressions, checked in the source files (no rebuild): the build is warning-free.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_license_is_an_spdx_string():
    """The license table form is deprecated in setuptools (a build warning); the
    SPDX string form needs setuptools >= 77 in the build requirements."""
    tomllib = pytest.importorskip("tomllib")
    path = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(path):
        pytest.skip("no pyproject.toml beside the tests (installed tests)")
    with open(path, "rb") as fh:
        meta = tomllib.load(fh)
    assert isinstance(meta["project"]["license"], str)
    setuptools_req = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools_req == ["setuptools>=77"]


def test_shared_header_functions_may_go_uncalled():
    """fwb_rows_impl.h is included by every kernel module, each calling only some
    of its functions: every non-inline static function there is marked
    FWB_HEADER_FN, or GCC warns 'defined but not used'."""
    import re

    path = os.path.join(ROOT, "csrc", "fwb_rows_impl.h")
    if not os.path.exists(path):
        pytest.skip("no csrc/ beside the tests (installed tests)")
    with open(path) as fh:
        source = fh.read()
    definitions = re.findall(r"^([A-Z_ ]*)static (?!inline)", source, flags=re.M)
    assert definitions and all("FWB_HEADER_FN" in prefix for prefix in definitions)
