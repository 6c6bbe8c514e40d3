"""Optional dependencies: ``import fastwb`` (and its command line) imports none of
them, and a feature whose package is missing says in one line which extra to
install.  Each check runs in a fresh interpreter from a neutral folder, so that
modules other tests imported do not count."""

import os
import subprocess
import sys
import textwrap

import pytest

OPTIONAL = ("mpi4py", "flwr", "ray", "optuna", "sklearn", "scipy", "torch", "onnx", "onnxruntime", "matplotlib")


def _python(code, tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_fastwb_imports_no_optional_package(tmp_path):
    run = _python(f"""
        import sys
        import fastwb, fastwb.cli, fastwb.nn
        print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))
        """, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("feature, blocked, extra", [
    ("federated", "flwr", "federated"),
    ("tune", "optuna", "tune"),
    ("sklearn", "sklearn", "sklearn"),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, feature, blocked, extra):
    run = _python(f"""
        import sys
        sys.modules[{blocked!r}] = None          # as if it were not installed
        import fastwb
        try:
            getattr(fastwb, {feature!r})
            import fastwb.{feature} as m
            if {feature!r} == "tune":            # fastwb.tune imports optuna where a function needs it
                m.create_study()
        except ImportError as e:
            print("ImportError:", e)
        """, tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ImportError:"), run.stdout
    assert f"fastwb[{extra}]" in lines[0]
