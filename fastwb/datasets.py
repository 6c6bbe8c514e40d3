"""Data sets for training examples: embedded digits, MNIST-format files, a split helper.

* :func:`load_digits`: the 8x8 handwritten digits (1797 images) that ship
  inside scikit-learn (``pip install "fastwb[datasets]"``), read from the
  package's data file directly (no network; scikit-learn itself, and the
  SciPy BLAS it would bring, is never imported).
* :func:`load_mnist`: the original IDX files of MNIST or Fashion-MNIST
  (``train-images-idx3-ubyte[.gz]`` and friends), from ``path`` or the
  ``FASTWB_MNIST`` environment variable; magic numbers, shapes and sizes are
  checked and a damaged file is a clear ``ValueError``.
* :func:`fetch_openml_mnist`: the slides' ``fetch_openml('mnist_784')``
  route, where scikit-learn and a network are available.
* :func:`train_test_split`: a deterministic shuffled split.

Images come back as float arrays scaled to [0, 1], labels as int64.
"""

import gzip
import importlib.util
import os
import struct

import numpy as np

__all__ = ["load_digits", "load_mnist", "fetch_openml_mnist", "train_test_split", "load", "MNIST_ENV"]

MNIST_ENV = "FASTWB_MNIST"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_digits(dtype=np.float32):
    """The 8x8 digits: ``(X, y)`` with X of shape (1797, 64) in [0, 1] and y in 0..9."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('the embedded digits data set comes with scikit-learn: pip install "fastwb[datasets]"')
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"scikit-learn is installed but its digits data file is missing: {path}")
    data = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 65:
        raise ValueError(f"{path}: expected rows of 64 pixels and a label, got shape {data.shape}")
    return (data[:, :64] / 16.0).astype(dtype), data[:, 64].astype(np.int64)


def _open(base):
    for name in (base, base + ".gz"):
        if os.path.exists(name):
            return name, (gzip.open(name, "rb") if name.endswith(".gz") else open(name, "rb"))
    raise FileNotFoundError(f"neither {base} nor {base}.gz exists")


def _read_idx(base, magic, ndim):
    """Read one IDX file (optionally gzipped): big-endian magic, dimensions, uint8 data."""
    name, fh = _open(base)
    with fh:
        try:
            header = fh.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise ValueError("file is shorter than its header")
            found, *dims = struct.unpack(f">{1 + ndim}I", header)
            if found != magic:
                raise ValueError(f"magic number {found} is not {magic} (a {ndim}-D uint8 IDX file)")
            count = int(np.prod(dims))
            data = fh.read(count + 1)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise ValueError(f"{name}: cannot be read ({e})") from None
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if len(data) != count:
        raise ValueError(f"{name}: header promises {count} bytes of data ({' x '.join(map(str, dims))}), "
                         f"file holds {min(len(data), count)}{' or more' if len(data) > count else ''}")
    return np.frombuffer(data, np.uint8).reshape(dims)


def load_mnist(path=None, split="train", dtype=np.float32, flatten=True):
    """MNIST (or Fashion-MNIST) from its four original IDX files.

    ``path``: the folder holding them (gzipped or not); default: the
    ``FASTWB_MNIST`` environment variable.  ``split``: "train" (60000
    images), "test" (10000) or "both" (returns ``(X_train, y_train, X_test,
    y_test)``).  Pixels are scaled to [0, 1]; ``flatten`` gives rows of 784.
    """
    path = path or os.environ.get(MNIST_ENV)
    if not path:
        raise FileNotFoundError(f"no MNIST folder given: pass path=... or set {MNIST_ENV}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"MNIST folder {path} does not exist")
    if split == "both":
        return load_mnist(path, "train", dtype, flatten) + load_mnist(path, "test", dtype, flatten)
    if split not in _FILES:
        raise ValueError(f"split must be 'train', 'test' or 'both', got {split!r}")
    images_file, labels_file = (os.path.join(path, f) for f in _FILES[split])
    images = _read_idx(images_file, 2051, 3)
    labels = _read_idx(labels_file, 2049, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{split}: label {labels.max()} is not a digit class")
    X = images.reshape(len(images), -1) if flatten else images
    return (X / np.float32(255.0)).astype(dtype, copy=False), labels.astype(np.int64)


def fetch_openml_mnist(dtype=np.float32):
    """The slides' route: ``sklearn.datasets.fetch_openml('mnist_784')`` (needs a
    network and scikit-learn; this one does import scikit-learn)."""
    try:
        from sklearn.datasets import fetch_openml
    except ImportError:
        raise ImportError('fetch_openml needs scikit-learn: pip install "fastwb[datasets]"') from None
    X, y = fetch_openml("mnist_784", version=1, return_X_y=True, as_frame=False)
    return (X / 255.0).astype(dtype), y.astype(np.int64)


def train_test_split(X, y, test_size=0.2, rng=0):
    """Shuffle with a seeded generator and split: ``(X_train, X_test, y_train, y_test)``.

    ``test_size`` is a fraction in (0, 1) or a count; the same ``rng`` gives
    the same split."""
    X, y = np.asarray(X), np.asarray(y)
    n = len(X)
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)}")
    n_test = int(round(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size} leaves no train or no test rows out of {n}")
    from fastwb.init import as_generator

    order = as_generator(rng).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]


def load(name="digits", path=None, dtype=np.float32, rng=0):
    """``(X_train, y_train, X_test, y_test)`` for a named data set: "digits"
    (a seeded 80/20 split), "mnist" or "fashion-mnist" (their own split; the
    folder from ``path`` or ``FASTWB_MNIST``)."""
    if name == "digits":
        X, y = load_digits(dtype)
        X_train, X_test, y_train, y_test = train_test_split(X, y, 0.2, rng)
        return X_train, y_train, X_test, y_test
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(path, "both", dtype)
    raise ValueError(f"unknown data set {name!r}; valid names are 'digits', 'mnist', 'fashion-mnist'")
