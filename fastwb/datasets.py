"""Data sets for training examples: embedded digits, MNIST-format files, a split helper.

* :func:`load_digits`: the 8x8 handwritten digits (1797 images) that ship
  inside scikit-learn (``pip install "fastwb[datasets]"``), read from the
  package's data file directly (no network; scikit-learn itself, and the
  SciPy BLAS it would bring, is never imported).
* :func:`load_mnist`: the original IDX files of MNIST or Fashion-MNIST
  (``train-images-idx3-ubyte[.gz]`` and friends), from ``path`` or the
  ``FASTWB_MNIST`` / ``FASTWB_FASHION_MNIST`` environment variable; magic
  numbers, shapes and sizes are checked against the data set and against the
  file's real size before anything is allocated, and a damaged or hostile
  file is a clear ``ValueError`` naming the data set and the file.
* :func:`fetch_openml_mnist`: the slides' ``fetch_openml('mnist_784')``
  route, where scikit-learn and a network are available.
* :func:`train_test_split`: a deterministic shuffled split.

Images come back as float arrays scaled to [0, 1], labels as int64.
"""

import gzip
import importlib.util
import math
import os
import struct
import zlib

import numpy as np

from fastwb import _io
from fastwb._validate import check_int, check_real

__all__ = ["load_digits", "load_mnist", "fetch_openml_mnist", "train_test_split", "load", "MNIST_ENV",
           "FASHION_MNIST_ENV", "DATASETS"]

MNIST_ENV = "FASTWB_MNIST"
FASHION_MNIST_ENV = "FASTWB_FASHION_MNIST"
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"   # Debian's dataset-fashion-mnist package
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


class _Spec:
    """What a named IDX data set must look like."""

    def __init__(self, title, env, default_folder, counts, image_shape=(28, 28), classes=10):
        self.title, self.env, self.default_folder = title, env, default_folder
        self.counts, self.image_shape, self.classes = counts, image_shape, classes


# The named IDX data sets: their title in messages, where to find them, their sizes.
# Fashion-MNIST has its own variable (never FASTWB_MNIST: the files have the
# same sizes, so digits would be loaded silently) and Debian's package folder.
DATASETS = {
    "mnist": _Spec("MNIST", MNIST_ENV, None, {"train": 60000, "test": 10000}),
    "fashion-mnist": _Spec("Fashion-MNIST", FASHION_MNIST_ENV, DEBIAN_FASHION_MNIST, {"train": 60000, "test": 10000}),
}
_GZIP_MAX_RATIO = 1032      # deflate expands at most 1032:1 (RFC 1951)
_CHUNK = 1 << 20            # gzip data is read in pieces of this size


def _find(base, title):
    for name in (base, base + ".gz"):
        if os.path.exists(name):
            return name
    raise FileNotFoundError(f"{title}: neither {base} nor {base}.gz exists")


def _read_bounded(fh, count):
    """Up to ``count + 1`` bytes of ``fh``, read in 1 MiB pieces, so that memory
    grows with the data actually there, not with what a header promises."""
    data = bytearray()
    while len(data) <= count:
        piece = fh.read(min(_CHUNK, count + 1 - len(data)))
        if not piece:
            break
        data += piece
    return data


def _read_idx(base, magic, ndim, title="MNIST-format", dims_expected=None):
    """Read one IDX file (``base`` or ``base.gz``): a big-endian magic number
    (``0x08`` for uint8, then ``ndim``), ``ndim`` big-endian uint32 dimensions,
    then ``prod(dims)`` bytes of data, exactly.

    Before reading any data the header is checked: against ``dims_expected``
    (None entries are free) when given, and against the file's real size: a
    plain file must hold exactly ``header + prod(dims)`` bytes; a gzip file of
    S bytes cannot expand to more than 1032 S.  Gzip data is then read in
    1 MiB pieces, so a lying header costs only the data actually present.
    Every problem is a ValueError naming ``title`` (the data set), the file
    and the inconsistency."""
    name = _find(base, title)
    try:
        size = _io.regular_file_size(name, f"{title} IDX file")
    except ValueError as e:
        raise ValueError(f"{title}: {e}") from None
    packed = name.endswith(".gz")
    header_bytes = 4 + 4 * ndim
    try:
        with (gzip.open(name, "rb") if packed else open(name, "rb")) as fh:
            header = fh.read(header_bytes)
            if len(header) < header_bytes:
                raise ValueError("file is shorter than its header")
            found, *dims = struct.unpack(f">{1 + ndim}I", header)
            if found != magic:
                raise ValueError(f"magic number {found} is not {magic} (a {ndim}-D uint8 IDX file)")
            shape = " x ".join(map(str, dims))
            if dims_expected is not None and any(e is not None and d != e for d, e in zip(dims, dims_expected)):
                want = " x ".join("N" if e is None else str(e) for e in dims_expected)
                raise ValueError(f"header says {shape}, {title} has {want}")
            count = math.prod(dims)
            room = _GZIP_MAX_RATIO * size if packed else size - header_bytes
            if count > room:
                held = f"a gzip file of {size} bytes holds at most {room}" if packed else f"file holds {room}"
                raise ValueError(f"header promises {count} bytes of data ({shape}), {held}")
            data = _read_bounded(fh, count)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{title}: {name}: cannot be read ({e})") from None
    except ValueError as e:
        raise ValueError(f"{title}: {name}: {e}") from None
    if len(data) != count:
        raise ValueError(f"{title}: {name}: header promises {count} bytes of data ({shape}), "
                         f"file holds {min(len(data), count)}{' or more' if len(data) > count else ''}")
    return np.frombuffer(data, np.uint8).reshape(dims)


def load_mnist(path=None, split="train", dtype=np.float32, flatten=True, name=None):
    """MNIST or Fashion-MNIST from its four original IDX files.

    ``path``: the folder holding them (gzipped or not); default: the data
    set's environment variable (``FASTWB_MNIST``, or ``FASTWB_FASHION_MNIST``
    for Fashion-MNIST, whose default is otherwise Debian's
    ``/usr/share/datasets/fashion-mnist`` where that exists).  ``split``:
    "train", "test" or "both" (returns ``(X_train, y_train, X_test,
    y_test)``).  Pixels are scaled to [0, 1]; ``flatten`` gives rows of 784.

    ``name``: "mnist" or "fashion-mnist" checks that the files are that data
    set's size (60000 train / 10000 test images of 28 x 28, labels 0..9),
    from the headers, before any data is read, and every message names the
    data set.  ``None`` accepts any uint8 IDX images with labels 0..9.
    Damaged or hostile files are a ValueError (see :func:`_read_idx`: no
    header can make this allocate more than the file holds).
    """
    if name is not None and name not in DATASETS:
        raise ValueError(f"unknown IDX data set {name!r}; valid names are {', '.join(map(repr, DATASETS))}")
    spec = DATASETS.get(name)
    title = spec.title if spec else "MNIST"
    if not path:
        env = spec.env if spec else MNIST_ENV
        path = os.environ.get(env)
        if not path and spec and spec.default_folder and os.path.isdir(spec.default_folder):
            path = spec.default_folder
        if not path:
            raise FileNotFoundError(f"no {title} folder given: pass path=... or set {env}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{title} folder {path} does not exist")
    if split == "both":
        return (load_mnist(path, "train", dtype, flatten, name) + load_mnist(path, "test", dtype, flatten, name))
    if split not in _FILES:
        raise ValueError(f"split must be 'train', 'test' or 'both', got {split!r}")
    images_file, labels_file = (os.path.join(path, f) for f in _FILES[split])
    n = spec.counts[split] if spec else None
    images = _read_idx(images_file, 2051, 3, title, (n, *spec.image_shape) if spec else None)
    labels = _read_idx(labels_file, 2049, 1, title, (n,) if spec else None)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{title} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    classes = spec.classes if spec else 10
    if labels.size and labels.max() >= classes:
        raise ValueError(f"{title} {split}: label {labels.max()} is not a class of {title} (0..{classes - 1})")
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
    if isinstance(test_size, (float, np.floating)):
        n_test = int(round(check_real("test_size", test_size, 0.0, 1.0) * n))
    else:
        n_test = check_int("test_size", test_size, 0)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size} leaves no train or no test rows out of {n}")
    from fastwb.init import as_generator

    order = as_generator(rng).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]


def load(name="digits", path=None, dtype=np.float32, rng=0):
    """``(X_train, y_train, X_test, y_test)`` for a named data set: "digits"
    (a seeded 80/20 split), "mnist" or "fashion-mnist" (their own split, their
    sizes checked; the folder from ``path`` or the data set's environment
    variable, see :func:`load_mnist`)."""
    if name == "digits":
        X, y = load_digits(dtype)
        X_train, X_test, y_train, y_test = train_test_split(X, y, 0.2, rng)
        return X_train, y_train, X_test, y_test
    if name in DATASETS:
        return load_mnist(path, "both", dtype, name=name)
    raise ValueError(f"unknown data set {name!r}; valid names are 'digits', 'mnist', 'fashion-mnist'")
