"""Optional dependencies: imported only when the feature that needs them is used.

``import fastwb`` never imports mpi4py, flwr, optuna, Ray or scikit-learn; the
feature modules call :func:`require` at the point of use, and a missing
package becomes one ImportError line that names the extra to install.
"""

import importlib


def require(module, feature, extra):
    """Import and return ``module`` (a dotted name), or raise ImportError
    ``"<feature> needs <top package>: pip install 'fastwb[<extra>]'"``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise ImportError(f"{feature} needs {top}: pip install 'fastwb[{extra}]' ({e})") from None
