"""Build script for fastwb's compiled kernels.

Everything about *how* the extensions are compiled lives here, once:

* the list of Cython extension modules (one per concern);
* the OpenMP probe: a tiny C program is compiled and linked with the OpenMP
  flag; when that fails the package is built serial and says so loudly, unless
  ``FASTWB_FAIL_NO_OPENMP=1`` makes it fatal (CI sets it), and
  ``FASTWB_NO_OPENMP=1`` skips the probe to build serial kernels on purpose;
* compiler flags: ``-O3 -fno-math-errno -fno-trapping-math -ffp-contract=off``
  (exactly rounded IEEE results, no fused multiply-add, branch-free clamps
  that vectorise; FP exception flags are not observed), never
  GCC's fast-math mode (NaN and Inf must behave as in NumPy), ``-march=native`` only
  when ``FASTWB_NATIVE=1`` asks for it;
* the Cython directives; ``FASTWB_DEBUG=1`` turns bounds checking back on;
* ``FASTWB_SANITIZE=address`` compiles and links with AddressSanitizer
  (``-fsanitize=address -fno-omit-frame-pointer``); such a build only loads
  into a Python started with ``LD_PRELOAD`` set to the compiler's libasan
  (``.ci/asan`` builds one in a fresh environment and runs the tests with it).

The flags are compiled into ``fastwb._threads`` as a JSON string, so that
``fastwb.show_config()`` reports what the installed binary was really built with.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = ["_threads", "_dense", "_losses", "_optim", "_prune", "_gemm", "_engine", "_norm", "_adversarial", "_quant"]

_OMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d %d\\n", n, omp_get_max_threads());
        return n < 1;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _openmp_flags(compiler):
    """Return (compile_args, link_args) for OpenMP, or None when it does not work."""
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    elif sys.platform == "win32":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for cflags, lflags in candidates:
        tmp = tempfile.mkdtemp(prefix="fastwb-omp-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as fh:
                fh.write(_OMP_PROBE)
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
            exe = os.path.join(tmp, "probe")
            compiler.link_executable(objs, exe, extra_postargs=lflags)
            subprocess.run([exe], check=True, capture_output=True, timeout=60)
            return cflags, lflags
        except Exception:  # any failure means "this flag set does not work"
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return None


def _sanitizer_flags():
    """Compile-and-link flags for ``FASTWB_SANITIZE`` (empty when unset)."""
    which = os.environ.get("FASTWB_SANITIZE", "").strip().lower()
    if not which:
        return []
    if which != "address":
        raise RuntimeError(f"fastwb: FASTWB_SANITIZE={which!r} is not supported; the only value is 'address'")
    return ["-fsanitize=address", "-fno-omit-frame-pointer"]


def _cython_directives():
    debug = _env_flag("FASTWB_DEBUG")
    return {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": debug,
        "nonecheck": False,
        "embedsignature": True,
    }


class BuildExt(build_ext):
    """build_ext that probes OpenMP and applies fastwb's flags to every extension."""

    def build_extensions(self):
        unix = self.compiler.compiler_type == "unix"
        cflags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"] if unix else ["/O2"]
        if _env_flag("FASTWB_DEBUG") and unix:
            cflags += ["-g", "-O1"]
        if _env_flag("FASTWB_NATIVE") and unix:
            cflags += ["-march=native", "-DFWB_NO_CLONES"]
        sanitize = _sanitizer_flags()
        if sanitize and not unix:
            raise RuntimeError("fastwb: FASTWB_SANITIZE needs a GCC- or clang-style compiler")
        cflags += sanitize
        omp = None if _env_flag("FASTWB_NO_OPENMP") else _openmp_flags(self.compiler)
        if omp is None:
            if _env_flag("FASTWB_FAIL_NO_OPENMP"):
                raise RuntimeError(
                    "fastwb: the C compiler cannot build OpenMP programs and "
                    "FASTWB_FAIL_NO_OPENMP=1 is set. Install an OpenMP runtime "
                    "(libgomp with GCC, libomp with clang) or unset the variable "
                    "to build serial kernels."
                )
            banner = "*" * 78
            msg = (
                f"\n{banner}\nfastwb WARNING: OpenMP is not available with this compiler.\n"
                "Building SERIAL kernels: every fastwb function will use one thread.\n"
                "Set FASTWB_FAIL_NO_OPENMP=1 to make this an error.\n"
                f"{banner}\n"
            )
            sys.stderr.write(msg)
            omp_c, omp_l = [], []
        else:
            omp_c, omp_l = omp
        info = json.dumps(
            {
                "compiler": self.compiler.compiler_so[0] if hasattr(self.compiler, "compiler_so") else self.compiler.compiler_type,
                "cflags": cflags + omp_c,
                "ldflags": omp_l + sanitize,
                "openmp_at_build": omp is not None,
                "debug": _env_flag("FASTWB_DEBUG"),
                "native": _env_flag("FASTWB_NATIVE"),
                "sanitize": os.environ.get("FASTWB_SANITIZE", "").strip().lower() or None,
            }
        )
        c_string = '"' + info.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for ext in self.extensions:
            ext.extra_compile_args = cflags + omp_c
            ext.extra_link_args = omp_l + sanitize
            ext.define_macros = list(ext.define_macros) + [("FWB_BUILD_INFO", c_string)]
        super().build_extensions()


def _extensions():
    import numpy as np
    from Cython.Build import cythonize

    csrc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
    headers = [os.path.join("csrc", name) for name in sorted(os.listdir(csrc)) if name.endswith(".h")]
    exts = [
        Extension(
            f"fastwb.{name}",
            [f"fastwb/{name}.pyx"],
            include_dirs=["csrc", np.get_include()],
            depends=headers,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for name in EXTENSIONS
    ]
    return cythonize(exts, compiler_directives=_cython_directives(), quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
