"""Data loading (IDX files, digits, split), the CLI, the slide classifier and its plots."""

import gzip
import struct

import numpy as np
import pytest
from conftest import close

import fastwb
import fastwb.reference as R
from fastwb import cli, datasets


def _write_idx(path, array, magic, compress):
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def idx_folder(tmp_path, rng):
    images = rng.integers(0, 256, (7, 28, 28))
    labels = rng.integers(0, 10, 7)
    for split, compress in (("train", True), ("t10k", False)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, 2051, compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, 2049, compress)
    return tmp_path, images, labels


def test_load_mnist_gz_and_plain(idx_folder, monkeypatch):
    path, images, labels = idx_folder
    X, y = datasets.load_mnist(path, "train")
    assert X.shape == (7, 784) and X.dtype == np.float32 and X.max() <= 1
    np.testing.assert_array_equal(np.round(X * 255).astype(np.uint8), images.reshape(7, -1))
    np.testing.assert_array_equal(y, labels)
    X2, y2 = datasets.load_mnist(path, "test", dtype=np.float64, flatten=False)
    assert X2.shape == (7, 28, 28) and X2.dtype == np.float64
    monkeypatch.setenv(datasets.MNIST_ENV, str(path))
    assert len(datasets.load_mnist(split="both")) == 4


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(b"\x00\x00\x08\x01" + bytes(20)), "magic number 2049 is not 2051"),
    (lambda p: p.write_bytes(struct.pack(">4I", 2051, 7, 28, 28) + bytes(100)), "header promises 5488 bytes"),
    (lambda p: p.write_bytes(b"\x00\x00"), "shorter than its header"),
])
def test_damaged_idx_files_are_clear_errors(idx_folder, damage, match):
    path = idx_folder[0]
    damage(path / "t10k-images-idx3-ubyte")
    with pytest.raises(ValueError, match=match):
        datasets.load_mnist(path, "test")


def test_missing_mnist_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.MNIST_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="FASTWB_MNIST"):
        datasets.load_mnist()
    with pytest.raises(FileNotFoundError, match="neither"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="split"):
        datasets.load_mnist(tmp_path, "val")


def test_digits_and_split():
    pytest.importorskip("sklearn", reason='the embedded digits come with scikit-learn: pip install "fastwb[datasets]"')
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.max() == 1 and set(np.unique(y)) == set(range(10))
    a = datasets.train_test_split(X, y, 0.25, rng=5)
    b = datasets.train_test_split(X, y, 0.25, rng=5)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert len(a[1]) == 449 and len(a[0]) == 1348
    with pytest.raises(ValueError, match="test_size"):
        datasets.train_test_split(X, y, 0)


def test_cli_train_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    model_path, plot_path = tmp_path / "m.npz", tmp_path / "w.png"
    assert cli.main(["train", "--epochs", "3", "--save", str(model_path), "--plot", str(plot_path)]) == 0
    out = capsys.readouterr().out
    for text in ("epoch 3/3", "test accuracy", "samples/s", "weight and bias statistics", "layer 2: W mean"):
        assert text in out
    assert plot_path.stat().st_size > 10_000 and plot_path.read_bytes()[:4] == b"\x89PNG"
    assert fastwb.MLP.load(model_path).layer_sizes == [64, 128, 10]


def test_cli_trains_batchnorm_and_dropout_models_on_the_engine(tmp_path, capsys):
    pytest.importorskip("sklearn")
    path = tmp_path / "bn.fwb"
    assert cli.main(["train", "--epochs", "8", "--batchnorm", "--dropout", "0.1", "--hidden", "64", "32",
                     "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm1d(num_features=64" in out and "Dropout(p=0.1)" in out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9
    model = fastwb.nn.load(path)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert model.num_batches_tracked.tolist() == [8 * 45, 8 * 45]       # 1438 rows in batches of 32


def test_cli_train_options_and_errors(tmp_path, capsys, idx_folder, monkeypatch):
    pytest.importorskip("sklearn")
    assert cli.main(["train", "--epochs", "2", "--hidden", "16", "8", "--activation", "tanh", "--optimizer", "sgd",
                     "--lr", "0.05", "--dtype", "float64", "--threads", "1", "--prune", "0.5", "--quiet"]) == 0
    accuracy = float(capsys.readouterr().out.strip())
    assert 0 <= accuracy <= 1
    assert cli.main(["train", "--dataset", "mnist", "--data-path", str(tmp_path / "nowhere")]) == 2
    assert "cannot load mnist" in capsys.readouterr().err
    monkeypatch.setattr(datasets.DATASETS["mnist"], "counts", {"train": 7, "test": 7})   # the folder's 7 images
    assert cli.main(["train", "--dataset", "mnist", "--data-path", str(idx_folder[0]), "--epochs", "1", "--quiet"]) == 0


def test_classifier_matches_twin(rng):
    X = rng.random((64, 784))
    y = rng.integers(0, 10, 64)
    mine, twin = fastwb.MNISTClassifier(rng=1), R.MNISTClassifier(rng=1)
    np.testing.assert_array_equal(mine.W1, twin.W1)
    for _ in range(10):
        close(mine.train_step(X, y), twin.train_step(X, y), np.float64)
    close(mine.forward(X), twin.forward(X), np.float64, scale=True)
    for (a, b), (c, d) in zip(mine.backward(X, y, 64), twin.backward(X, y, 64)):
        close(a, c, np.float64, scale=True)
        close(b, d, np.float64, scale=True)
    acc, pred = fastwb.evaluate_model(mine, X, y)
    racc, rpred = R.evaluate_model(twin, X, y)
    assert acc == racc
    np.testing.assert_array_equal(pred, rpred)
    with pytest.raises(ValueError, match="batch_size=32"):
        mine.backward(X, y, 32)


def test_classifier_defaults_and_float32():
    np.random.seed(0)
    m = fastwb.MNISTClassifier()
    np.random.seed(0)
    np.testing.assert_array_equal(m.W1, np.random.randn(784, 256) * np.sqrt(2.0 / 784))
    assert m.W1.dtype == np.float64 and m.b1.shape == (256,) and m.W2.shape == (256, 10)
    f = fastwb.MNISTClassifier(20, 8, 3, dtype=np.float32, rng=0)
    assert f.forward(np.ones((2, 20))).dtype == np.float32
    stats = fastwb.weight_statistics(f)
    assert [s["layer"] for s in stats] == [1, 2] and stats[0]["b_std"] == 0


def test_visualize_weights_png(tmp_path):
    pytest.importorskip("matplotlib")
    for model in (fastwb.MNISTClassifier(rng=0), fastwb.MLP([30, 20, 5], rng=0)):
        fig = fastwb.visualize_weights(model)
        path = tmp_path / "w.png"
        fig.savefig(path, dpi=50)
        assert path.read_bytes()[:4] == b"\x89PNG"
        assert [ax.get_title() for ax in fig.axes][:2] == ["Weight Distributions", fig.axes[1].get_title()]
    with pytest.raises(TypeError, match="W1"):
        fastwb.visualize_weights(object())


def test_cli_bench_quickest_mode_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    json_path, png_path, md_path = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "B.md"
    assert cli.main(["bench", "--quick", "--quiet", "--filter", "softmax CE fwd+bwd 128x10", "--json", str(json_path),
                     "--plot", str(png_path), "--markdown", str(md_path)]) == 0
    out = capsys.readouterr().out
    assert "softmax CE fwd+bwd 128x10" in out and "limits: copy" in out
    import json

    report = json.loads(json_path.read_text())
    assert report["machine"]["cores"] >= 1 and report["threads"] >= 1 and report["results"]
    row = report["results"][0]
    assert set(row["median_s"]) >= {"fastwb", "numpy"} and row["unit"] == "GB/s"
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    assert "| comparison |" in md_path.read_text()


@pytest.mark.parametrize("test_size,exc", [(True, TypeError), (-1, ValueError), (1.5, ValueError),
                                           (float("nan"), ValueError), ("0.2", TypeError), (10, ValueError)])
def test_train_test_split_rejects_bad_sizes(test_size, exc):
    with pytest.raises(exc, match="test_size"):
        datasets.train_test_split(np.zeros((10, 2)), np.zeros(10), test_size=test_size)
