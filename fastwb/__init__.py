"""fastwb: a fast CPU backend for the weights and biases of neural networks.

Public layer (start reading here):

* :mod:`fastwb.functional`: dense layers (``linear``, ``linear_backward``),
  activations and their backward passes, ``softmax`` and
  ``softmax_cross_entropy``; all re-exported here.
* :mod:`fastwb.reference`: the pure-NumPy twin of every public function, the
  correctness reference and the benchmark baseline.
* the slide API (:mod:`fastwb.slides`, re-exported here): the course
  slides' functions and classes under their own names and signatures;
* :mod:`fastwb.nn`: models composed of layers (``Linear``, ``BatchNorm1d``,
  ``Dropout``, activations) in ``Sequential``, trained in fused steps;
* :mod:`fastwb.normalization` (batch norm, dropout), :mod:`fastwb.metrics`;
* :mod:`fastwb.optim` (fused in-place SGD, Momentum, Adam, AdamW, RMSprop),
  :mod:`fastwb.prune` (magnitude pruning by O(n) selection, schedules),
  :mod:`fastwb.init` (initialisers), :mod:`fastwb.regularization`;
* threads: :func:`set_num_threads`, :func:`get_num_threads`, :func:`threads`;
  :func:`show_config` reports the build, OpenMP runtime and BLAS.
* features built on the engine, imported on first use (``fastwb.explain``
  ...): :mod:`fastwb.explain` (saliency maps, attributions),
  :mod:`fastwb.adversarial` (FGSM, PGD, robust accuracy),
  :mod:`fastwb.ensemble` (deep ensembles, MC dropout, uncertainty),
  :mod:`fastwb.quantize` (int8 dynamic quantization for inference),
  :mod:`fastwb.distributed` (data-parallel training over MPI; mpi4py is
  imported only when it is used), :mod:`fastwb.federated` and
  :mod:`fastwb.flower_app` (federated learning on Flower),
  :mod:`fastwb.tune` (hyperparameter search on Optuna), :mod:`fastwb.sklearn`
  (scikit-learn estimators).  ``import fastwb`` imports none of their
  optional packages; a missing one is a one-line ImportError naming the extra.

The compiled kernels live in the private ``fastwb._dense``, ``_losses``,
``_optim`` and ``_prune`` (Cython + OpenMP) over C helpers in ``csrc/``.
"""

# Importing _runtime loads the OpenMP runtime (with passive waiting unless the
# user chose a policy) before any other compiled module of fastwb.
from fastwb._runtime import get_num_threads, plan_threads, set_num_threads, show_config, threads
from fastwb._version import __version__
from fastwb import functional, init, metrics, normalization, optim, prune, regularization, slides  # noqa: F401
from fastwb.mlp import MLP
from fastwb import nn  # noqa: E402,F401  (the engine of layer-composed models)
from fastwb.functional import *  # noqa: F401,F403  (the names listed in functional.__all__)
from fastwb.slides import *  # noqa: F401,F403  (the names listed in slides.__all__)

__all__ = [
    "__version__",
    "get_num_threads",
    "set_num_threads",
    "threads",
    "show_config",
    "plan_threads",
    "MLP",
] + functional.__all__ + [n for n in slides.__all__ if n not in functional.__all__]


#: modules built on the engine, imported when first used as ``fastwb.<name>``
FEATURES = ("explain", "adversarial", "ensemble", "quantize", "distributed", "federated", "flower_app", "tune",
            "sklearn")


def __getattr__(name):
    if name in FEATURES:
        import importlib
        return importlib.import_module(f"fastwb.{name}")
    raise AttributeError(f"module 'fastwb' has no attribute {name!r}")
