"""Pure-NumPy twins of fastwb's public functions and classes.

Each twin has the name, signature and results of its fastwb counterpart and
is written the way a competent NumPy user would write it: vectorised, in
place where that is natural, dtype-preserving (NumPy 2 scalar promotion keeps
float32 as float32), following the documented formulas (PyTorch's docs for
the optimizers, the slides for the slide API, with the slides' bugs fixed).
It is the correctness reference of the tests and the baseline of the
benchmarks, so it is neither slowed down nor made clever.

* ``fastwb.reference`` itself: the twins of :mod:`fastwb.functional` and of
  the slide API (:mod:`fastwb.slides`);
* :mod:`fastwb.reference.optim`, :mod:`~fastwb.reference.prune`,
  :mod:`~fastwb.reference.regularization`, :mod:`~fastwb.reference.normalization`:
  twins of those modules; :mod:`fastwb.reference.nn`: the twin of
  :class:`fastwb.nn.Sequential`.

The initialisers of :mod:`fastwb.init` are plain NumPy with no compiled part,
so they are their own twins (``fastwb.reference.init`` is ``fastwb.init``).
"""

from fastwb import init  # noqa: F401  (its own twin: no compiled part)
from fastwb.reference import nn, normalization, optim, prune, regularization  # noqa: F401
from fastwb.reference.functional import *  # noqa: F401,F403
from fastwb.reference.classifier import MNISTClassifier, evaluate_model  # noqa: F401
from fastwb.reference.slides import *  # noqa: F401,F403
