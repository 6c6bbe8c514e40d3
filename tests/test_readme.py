"""Every ```python block of README.md runs (issue 8, "Also").

The blocks run in order in one namespace, as a reader would paste them into one
session (the "Training in place" block uses the arrays of the "Example" block),
from a scratch folder holding ``data/mnist``: four small IDX files in the MNIST
format (256 training and 64 test images: noise plus a bright row per class).
``datasets.load("mnist", ...)`` reads them with the real IDX reader,
``datasets.load_mnist``, minus the check of MNIST's true sizes (60000 and
10000 images), so the MNIST example runs as written in a second, without the
real data set.  A block that needs an optional package that is missing is
skipped with the package's name; ```bash blocks are not run.
"""

import importlib.util
import os
import re
import struct
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import fastwb
from fastwb import datasets

README = Path(__file__).resolve().parent.parent / "README.md"

# text in a block -> (module it needs, how to install it)
NEEDS = {"visualize_weights": ("matplotlib", 'pip install "fastwb[plots]"'),
         "plot_saliency": ("matplotlib", 'pip install "fastwb[plots]"'),
         "import torch": ("torch", "pip install torch"),
         "federated": ("flwr", 'pip install "fastwb[federated]"'),
         "fastwb.sklearn": ("sklearn", 'pip install "fastwb[sklearn]"'),
         "import optuna": ("optuna", 'pip install "fastwb[tune]"')}


def python_blocks(text):
    """``[(first line number, source)]`` of every ```python block of a Markdown text."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"^```python[ \t]*\n(.*?)^```", text, re.M | re.S)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8")) if README.exists() else []


def _write_idx(path, array, magic):
    path.write_bytes(struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


def _small_mnist(folder, n_train=256, n_test=64):
    """IDX files in the MNIST format whose images are learnable: noise plus one bright row per class."""
    rng = np.random.default_rng(8)
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 64, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), 2 * labels + 3, :] = 255
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, 2051)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, 2049)


def _any_size(load):
    """``datasets.load`` reading "mnist" and "fashion-mnist" folders of any size."""
    def small(name="digits", path=None, dtype=np.float32, rng=0):
        if name in ("mnist", "fashion-mnist"):
            return datasets.load_mnist(path, "both", dtype)
        return load(name, path, dtype, rng)
    return small


class _Session:
    """Runs the README's blocks in order, each once, in one namespace."""

    def __init__(self, folder):
        self.folder = folder
        self.namespace = {"__name__": "__readme__"}
        self.outcomes = []          # per block: None (ran), a skip reason (str) or the exception

    def outcome(self, index):
        while len(self.outcomes) <= index:
            self.outcomes.append(self._run(*BLOCKS[len(self.outcomes)]))
        return self.outcomes[index]

    def _run(self, line, source):
        for text, (module, install) in NEEDS.items():
            if text in source and importlib.util.find_spec(module) is None:
                return f"README.md line {line} needs {module}: {install}"
        code = compile("\n" * (line - 1) + source, str(README), "exec")    # tracebacks show README lines
        cwd, threads = os.getcwd(), fastwb.get_num_threads()
        os.chdir(self.folder)
        try:
            with mock.patch.object(datasets, "load", _any_size(datasets.load)):
                exec(code, self.namespace)
        except Exception as e:      # reported by this block's own test
            return e
        finally:
            os.chdir(cwd)
            fastwb.set_num_threads(threads)     # the Threads block changes the count
        return None


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    _small_mnist(folder / "data" / "mnist")
    return _Session(folder)


def test_readme_has_python_blocks():
    if not README.exists():
        pytest.skip("README.md is not next to the tests (an installed copy of the tests)")
    assert len(BLOCKS) >= 4, "the regular expression no longer finds the README's python blocks"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs(session, index):
    outcome = session.outcome(index)
    if isinstance(outcome, str):
        pytest.skip(outcome)
    if outcome is not None:
        raise outcome


def test_mnist_example_wrote_its_files(session):
    """The first block's save and plot landed where the README says."""
    index = next((i for i, (_, s) in enumerate(BLOCKS) if 'datasets.load("mnist"' in s), None)
    if index is None:
        pytest.skip("the README no longer has the MNIST example")
    if session.outcome(index) is not None:
        pytest.skip("the MNIST example did not run (see its own test)")
    assert fastwb.MLP.load(session.folder / "mnist.npz").layer_sizes == [784, 256, 10]
    assert (session.folder / "weights.png").read_bytes()[:4] == b"\x89PNG"
