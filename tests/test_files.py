"""Files that must not be lost and files that must cost nothing (issue 8, items 9 and 10),
and the named IDX data sets (item 12's Fashion-MNIST checks).

* Checkpoints are written atomically to exactly the path given; an interrupted save
  (exception, KeyboardInterrupt, full disk, SIGINT) leaves the previous file intact
  and no temporary file behind.
* Every reader (checkpoints, any .npz, IDX files) checks declared sizes against the
  file's real size before it allocates: hostile files are a quick ValueError that
  names the file, and cost memory proportional to the file, never to its claims.
"""

import errno
import gzip
import io
import math
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastwb
from fastwb import _io, datasets

from conftest import real_folder

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = 2.0          # seconds a hostile file may cost, generously (typical: milliseconds)
SMALL = 4 << 20     # bytes of memory a hostile file of a few KB may cost (typical: tens of KB)


def _cost(call):
    """Run ``call``; return (result or the exception it raised, seconds, peak traced bytes)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result = call()
    except Exception as e:        # noqa: BLE001 - the caller checks the type
        result = e
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def _rejected(call, match=None, memory=SMALL):
    """Assert ``call`` raises ValueError (matching ``match``) quickly and cheaply."""
    result, seconds, peak = _cost(call)
    assert isinstance(result, ValueError), f"expected ValueError, got {result!r}"
    if match is not None:
        assert match in str(result), f"{match!r} not in {str(result)!r}"
    assert seconds < FAST, f"rejecting took {seconds:.2f} s"
    assert peak < memory, f"rejecting allocated {peak} bytes"
    return str(result)


# ---------------------------------------------------------------------------
# writing checkpoints (item 9)
# ---------------------------------------------------------------------------

class _FailingFile:
    """A binary file that raises ``exc`` once more than ``limit`` bytes have been
    written to it (after writing the bytes that fit): a full disk, or an
    interrupt arriving in the middle of a write."""

    def __init__(self, fh, limit, exc):
        self.fh, self.limit, self.exc, self.written = fh, limit, exc, 0

    def write(self, data):
        data = bytes(data)
        room = self.limit - self.written
        if len(data) > room:
            if room > 0:
                self.fh.write(data[:room])
                self.written = self.limit
            raise self.exc
        self.written += len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _interrupt_after(monkeypatch, limit, exc):
    """Make the next atomic write fail after ``limit`` bytes with ``exc``."""
    real = os.fdopen
    monkeypatch.setattr(_io.os, "fdopen", lambda *a, **k: _FailingFile(real(*a, **k), limit, exc))


EXCEPTIONS = {
    "KeyboardInterrupt": KeyboardInterrupt(),
    "disk full": OSError(errno.ENOSPC, "No space left on device"),
    "exception": RuntimeError("boom"),
}


def test_save_writes_exactly_the_path_given(tmp_path):
    model = fastwb.MLP([5, 7, 3], rng=1)
    path = tmp_path / "m.ckpt"
    model.save(path)                                # old code wrote m.ckpt.npz
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt"]
    np.testing.assert_array_equal(fastwb.MLP.load(path).params, model.params)
    model.save(str(tmp_path / "noext"))
    assert fastwb.MLP.load(tmp_path / "noext").layer_sizes == [5, 7, 3]
    buffer = io.BytesIO()                           # a file object is written in place
    model.save(buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(fastwb.MLP.load(buffer).params, model.params)


def test_save_is_flushed_synced_then_renamed(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(_io.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(_io.os, "replace", lambda a, b: (calls.append(("replace", os.path.dirname(a))),
                                                         real_replace(a, b))[1])
    fastwb.MLP([3, 2], rng=0).save(tmp_path / "m.npz")
    assert calls[0] == "fsync" and calls[1] == ("replace", str(tmp_path))


@pytest.mark.parametrize("kind", sorted(EXCEPTIONS))
@pytest.mark.parametrize("where", [0.0, 0.001, 0.1, 0.5, 0.999])    # fraction of the file written
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, kind, where):
    path = tmp_path / "m.ckpt"
    old = fastwb.MLP([6, 20, 4], rng=1)
    old.save(path)
    before = path.read_bytes()
    _interrupt_after(monkeypatch, int(where * len(before)), EXCEPTIONS[kind])
    with pytest.raises(type(EXCEPTIONS[kind])):
        fastwb.MLP([6, 20, 4], rng=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.ckpt"], "a temporary file was left behind"
    np.testing.assert_array_equal(fastwb.MLP.load(path).params, old.params)


def test_full_disk_at_fsync_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    fastwb.MLP([3, 2], rng=0).save(path)
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", no_space)
    with pytest.raises(OSError):
        fastwb.MLP([3, 2], rng=5).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.npz"]


def test_a_first_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 50, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        fastwb.MLP([3, 2], rng=0).save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0, 1, exclude_max=True), kind=st.sampled_from(sorted(EXCEPTIONS)))
def test_an_interrupt_anywhere_in_a_save_loses_nothing(tmp_path_factory, fraction, kind):
    """Generated: the write fails after any number of bytes, with any kind of error."""
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "m.ckpt"
    old, new = fastwb.MLP([8, 16, 3], rng=1), fastwb.MLP([8, 16, 3], rng=2)
    old.save(path)
    before = path.read_bytes()
    size = len(before)                      # the new file has the same size
    mp = pytest.MonkeyPatch()
    try:
        _interrupt_after(mp, int(fraction * size), EXCEPTIONS[kind])
        with pytest.raises(type(EXCEPTIONS[kind])):
            new.save(path)
    finally:
        mp.undo()
    assert path.read_bytes() == before and os.listdir(folder) == ["m.ckpt"]


_SAVER = """
import sys, numpy as np, fastwb
model = fastwb.MLP([1000, 1000, 10], rng=0)
model.save(sys.argv[1])
print("ready", flush=True)
while True:
    model.params[:] = 0.5   # every later save writes different contents
    model.save(sys.argv[1])
"""


def test_sigint_during_saves_keeps_a_good_checkpoint(tmp_path):
    """A real SIGINT arriving while a 4 MB checkpoint is being rewritten in a loop."""
    path = tmp_path / "m.ckpt"
    child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=str(tmp_path))
    try:
        assert child.stdout.readline().strip() == b"ready", child.stderr.read().decode()
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert b"KeyboardInterrupt" in err
    model = fastwb.MLP.load(path)           # whichever save was the last complete one
    assert model.layer_sizes == [1000, 1000, 10]
    first = fastwb.MLP([1000, 1000, 10], rng=0).params
    assert (model.params == 0.5).all() or np.array_equal(model.params, first)


# ---------------------------------------------------------------------------
# reading hostile checkpoints (item 10)
# ---------------------------------------------------------------------------

def _npy(descr, shape, data=b"", fortran=False, version=(1, 0)):
    """The bytes of a .npy file with an arbitrary (possibly lying) header."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}"
    prefix = 10 if version == (1, 0) else 12
    header += " " * (-(prefix + len(header) + 1) % 64) + "\n"
    length = struct.pack("<H" if version == (1, 0) else "<I", len(header))
    return b"\x93NUMPY" + bytes(version) + length + header.encode("latin1") + data


def _fields(model):
    return dict(format=np.array("fastwb-mlp-1"), layer_sizes=np.array(model.layer_sizes, np.int64),
                activations=np.array(model.activations), alpha=np.array(model.alpha),
                dtype=np.array(model.dtype.name), params=model.params)


def _archive(members, compression=zipfile.ZIP_STORED):
    """A zip of ``name -> array or raw .npy bytes``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, value, allow_pickle=True)
                value = buffer.getvalue()
            z.writestr(name + ".npy", value)
    return out.getvalue()


def _patch_directory(data, member, compress_size=None, file_size=None):
    """Rewrite the sizes the zip's central directory declares for ``member``.npy."""
    data = bytearray(data)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n_name = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + n_name] == (member + ".npy").encode():
            if compress_size is not None:
                struct.pack_into("<I", data, at + 20, compress_size)
            if file_size is not None:
                struct.pack_into("<I", data, at + 24, file_size)
            return bytes(data)
        at = data.find(b"PK\x01\x02", at + 46)
    raise AssertionError(f"{member} not in the archive")


def _checkpoint(tmp_path, name="m.npz", compression=zipfile.ZIP_STORED, **changes):
    fields = _fields(fastwb.MLP([3, 4, 2], rng=0))
    fields.update(changes)
    path = tmp_path / name
    path.write_bytes(_archive(fields, compression))
    return path


def test_small_checkpoint_claiming_a_huge_model_costs_nothing(tmp_path):
    # 4.8 KB claiming 20000 x 20000: the old loader allocated 4.6 GiB and ran 70 s
    path = _checkpoint(tmp_path, layer_sizes=np.array([20000, 20000, 5]))
    assert path.stat().st_size < 5000
    message = _rejected(lambda: fastwb.MLP.load(path), "the layout [20000, 20000, 5] needs float32(400120005,)")
    assert str(path) in message
    path = _checkpoint(tmp_path, layer_sizes=np.array([10**7, 10**7, 5]))          # old: MemoryError
    _rejected(lambda: fastwb.MLP.load(path), "needs float32(100000060000005,)")


def test_params_header_matching_a_huge_layout_is_checked_against_the_file(tmp_path):
    huge = 20000 * 20000 + 20000 + 20000 * 5 + 5
    forged = _npy("<f4", (huge,), bytes(64))
    path = _checkpoint(tmp_path, layer_sizes=np.array([20000, 20000, 5]), params=forged)
    _rejected(lambda: fastwb.MLP.load(path), "declares float32(400120005,) (1600480020 bytes of data)")
    # the zip directory forged too: the member cannot hold what it claims
    n = 1600480020 + len(_npy("<f4", (huge,)))
    path.write_bytes(_patch_directory(path.read_bytes(), "params", n, n))
    _rejected(lambda: fastwb.MLP.load(path), "whole file has")


def test_npz_member_declaring_2_to_the_40_elements(tmp_path):
    path = _checkpoint(tmp_path, params=_npy("<f4", (2**40,), bytes(16)))
    with pytest.raises(MemoryError):                    # what the plain NumPy reader does
        np.load(path)["params"]
    _rejected(lambda: fastwb.MLP.load(path), "declares float32(1099511627776,)")
    generic = tmp_path / "x.npz"
    generic.write_bytes(_archive({"x": _npy("<f8", (2**40,), bytes(8))}))
    _rejected(lambda: _io.NpzReader(generic), "declares float64(1099511627776,)")


def test_zip_bomb_is_refused_before_reading(tmp_path):
    path = _checkpoint(tmp_path, compression=zipfile.ZIP_DEFLATED)
    assert fastwb.MLP.load(path).layer_sizes == [3, 4, 2]          # compressed checkpoints load
    info = zipfile.ZipFile(path).getinfo("params.npy")
    bomb = _patch_directory(path.read_bytes(), "params", file_size=info.compress_size * 5000)
    path.write_bytes(bomb)
    _rejected(lambda: fastwb.MLP.load(path), "zip bomb")


def test_stored_member_sizes_must_agree(tmp_path):
    path = _checkpoint(tmp_path)
    info = zipfile.ZipFile(path).getinfo("params.npy")
    path.write_bytes(_patch_directory(path.read_bytes(), "params", file_size=info.file_size + 8))
    _rejected(lambda: fastwb.MLP.load(path), "stored member 'params.npy' claims")


def test_a_real_deflated_checkpoint_loads(tmp_path):
    model = fastwb.MLP([30, 50, 4], dtype=np.float64, rng=3)
    path = tmp_path / "z.npz"
    np.savez_compressed(path, **_fields(model))
    np.testing.assert_array_equal(fastwb.MLP.load(path).params, model.params)


def test_version_1_checkpoints_still_load(tmp_path):
    """Files written by the old ``np.savez(path, ...)`` save."""
    model = fastwb.MLP([6, 9, 3], ["tanh"], dtype=np.float64, rng=4, alpha=0.2)
    np.savez(tmp_path / "old.npz", **_fields(model))
    loaded = fastwb.MLP.load(tmp_path / "old.npz")
    np.testing.assert_array_equal(loaded.params, model.params)
    assert loaded.activations == model.activations and loaded.alpha == model.alpha


def test_npy_file_and_folder_and_missing_file(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    # old: TypeError: 'numpy.ndarray' object does not support the context manager protocol
    assert str(tmp_path / "a.npy") in _rejected(lambda: fastwb.MLP.load(tmp_path / "a.npy"), "single .npy array")
    (tmp_path / "dir.npz").mkdir()
    _rejected(lambda: fastwb.MLP.load(tmp_path / "dir.npz"), "is a folder")
    with pytest.raises(FileNotFoundError):
        fastwb.MLP.load(tmp_path / "absent.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    _rejected(lambda: fastwb.MLP.load(tmp_path / "empty.npz"), "not an .npz (zip) archive")


@pytest.mark.parametrize("changes,match", [
    (dict(layer_sizes=np.array([3, -4, 2])), "layer_sizes must all be >= 1"),
    (dict(layer_sizes=np.array([3, 0, 2])), "layer_sizes must all be >= 1"),
    (dict(layer_sizes=np.array([3.0, 4.0, 2.0])), "1-D integer array"),
    (dict(layer_sizes=np.array([[3, 4, 2]])), "1-D integer array"),
    (dict(layer_sizes=np.array([2**62, 2**62, 2])), "needs float32"),
    (dict(layer_sizes=np.array([7])), "at least 2 sizes"),
    (dict(dtype=np.array("int8")), "dtype must be 'float32' or 'float64'"),
    (dict(dtype=np.array(["float32"])), "dtype must be"),
    (dict(activations=np.array(["relu"])), "activations must be 2 names"),
    (dict(activations=np.array(["swish", "identity"])), "unknown activation 'swish'"),
    (dict(alpha=np.array("0.1")), "alpha must be a real scalar"),
    (dict(format=np.array("fastwb-mlp-9")), "checkpoint format fastwb-mlp-9"),
    (dict(params=np.ones(26, ">f4")), "parameters are >f4(26,)"),
    (dict(params=np.ones(26, np.float64)), "parameters are float64(26,)"),
    (dict(params=np.array([None] * 26, dtype=object)), "Python objects"),
    (dict(params=_npy("<x9", (26,), bytes(104))), "damaged .npy header"),
    (dict(params=_npy("<f4", (-26,), bytes(104))), "negative dimension"),
    (dict(params=_npy("<f4", (26,), bytes(104), version=(7, 0))), "damaged .npy header"),
    (dict(params=_npy("<U0", (2**62,))), "zero-size"),
    (dict(params=_npy("(1000000,)<f4", (26,), bytes(104))), "sub-array"),
    (dict(layer_sizes=np.ones(300000, np.int64)), "1048576 bytes it may have"),
])
def test_hostile_checkpoint_fields(tmp_path, changes, match):
    path = _checkpoint(tmp_path, **changes)
    assert str(path) in _rejected(lambda: fastwb.MLP.load(path), match, memory=SMALL + 4 * path.stat().st_size)


def test_truncated_checkpoints(tmp_path):
    good = tmp_path / "good.npz"
    fastwb.MLP([4, 6, 3], rng=0).save(good)
    data = good.read_bytes()
    for cut in range(0, len(data), 37):
        path = tmp_path / "cut.npz"
        path.write_bytes(data[:cut])
        _rejected(lambda: fastwb.MLP.load(path))


def test_corrupted_data_fails_the_crc(tmp_path):
    path = tmp_path / "m.npz"
    fastwb.MLP([4, 6, 3], rng=0).save(path)
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("params.npy")
    data[info.header_offset + 30 + len("params.npy") + 200] ^= 0xFF      # a byte inside the parameters
    path.write_bytes(bytes(data))
    _rejected(lambda: fastwb.MLP.load(path), "damaged")


def test_npz_reader_reads_what_numpy_wrote(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.int16).reshape(3, 4), "f": np.asfortranarray(np.ones((2, 5)) * 3),
              "s": np.array(["x", "yz"]), "r": np.zeros((0, 7)), "b": np.arange(6, dtype=">i4"),
              "rec": np.array([(1, 2.0)], dtype=[("i", "<i2"), ("f", "<f8")])}
    np.savez(tmp_path / "a.npz", **arrays)
    with _io.NpzReader(tmp_path / "a.npz") as npz:
        assert set(npz.members) == set(arrays)
        for key, value in arrays.items():
            got = npz.read(key)
            assert got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got, value)
        with pytest.raises(ValueError, match="more than the 10 bytes"):
            npz.read("a", max_bytes=10)
        with pytest.raises(ValueError, match="no member 'zz'"):
            npz.read("zz")


# ---------------------------------------------------------------------------
# generated hostile checkpoints (item 10: every size a file declares)
# ---------------------------------------------------------------------------

_dims = st.one_of(st.integers(1, 6), st.sampled_from([0, -1, -2**40, 20000, 10**7, 2**31, 2**62]))


@st.composite
def _hostile_checkpoints(draw):
    sizes = draw(st.lists(_dims, min_size=1, max_size=4))
    dtype = draw(st.sampled_from(["float32", "float64", "int8", "float16"]))
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    declared = draw(st.one_of(st.just(n_params), st.integers(0, 200),
                              st.sampled_from([2**40, 2**31, 400120005, -5])))
    honest = dtype in ("float32", "float64") and 0 < n_params <= 5000 and draw(st.booleans())
    if honest:                                  # a real checkpoint, perhaps damaged below
        params = np.arange(n_params, dtype=dtype)
    elif draw(st.booleans()) and 0 <= declared <= 5000:
        params = np.zeros(declared, draw(st.sampled_from(["<f4", "<f8", ">f4", "<i8", "<U3"])))
    else:                                       # a header that may lie about its data
        descr = draw(st.sampled_from(["<f4", "<f8", ">f4", "<i8", "|O", "<U3", "zz"]))
        params = _npy(descr, (declared,), bytes(draw(st.integers(0, 400))))
    fields = dict(format=np.array("fastwb-mlp-1"), layer_sizes=np.array(sizes, np.int64),
                  activations=np.array(["relu"] * max(len(sizes) - 2, 0) + ["identity"]),
                  alpha=np.array(0.01), dtype=np.array(dtype), params=params)
    data = _archive(fields, draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
    forge = draw(st.sampled_from([None, None, None, "compress", "file", "both"]))
    if forge:
        size = draw(st.sampled_from([0, 1, 2**20, 2**31, 2**32 - 1]))
        data = _patch_directory(data, "params", size if forge != "file" else None,
                                size if forge != "compress" else None)
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, len(data))))
    return (data if cut is None else data[:cut]), sizes, dtype, params


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_hostile_checkpoints())
def test_generated_hostile_checkpoints_load_or_fail_cheaply(tmp_path, case):
    data, sizes, dtype, params = case
    path = tmp_path / "h.npz"
    path.write_bytes(data)
    result, seconds, peak = _cost(lambda: fastwb.MLP.load(path))
    assert seconds < FAST and peak < SMALL + 16 * len(data), (seconds, peak)
    if isinstance(result, fastwb.MLP):
        assert result.layer_sizes == sizes and result.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(result.params, params)
    else:
        assert isinstance(result, ValueError), repr(result)
        assert str(path) in str(result)


# ---------------------------------------------------------------------------
# IDX files (item 10) and the named data sets (item 12)
# ---------------------------------------------------------------------------

def _idx(path, magic, dims, data, compress=False):
    """Write an IDX file whose header says ``dims`` and whose data is ``data``."""
    data = data.astype(np.uint8).tobytes() if isinstance(data, np.ndarray) else bytes(data)
    raw = struct.pack(f">{1 + len(dims)}I", magic, *dims) + data
    if compress:
        with gzip.open(str(path) + ".gz", "wb", compresslevel=1) as fh:
            fh.write(raw)
        return str(path) + ".gz"
    path.write_bytes(raw)
    return str(path)


def test_idx_header_of_60000x65536x65536(tmp_path):
    base = tmp_path / "train-images-idx3-ubyte"
    _idx(base, 2051, (60000, 65536, 65536), bytes(1000))
    # old: fh.read(2.6e14)
    message = _rejected(lambda: datasets._read_idx(str(base), 2051, 3), "header promises 257698037760000 bytes")
    assert str(base) in message
    os.unlink(base)
    _idx(base, 2051, (60000, 65536, 65536), bytes(1000), compress=True)
    _rejected(lambda: datasets._read_idx(str(base), 2051, 3), "a gzip file of")


def test_gzip_idx_costs_only_the_data_present(tmp_path):
    """A header claiming what a gzip file could hold, with far less inside."""
    base = tmp_path / "train-images-idx3-ubyte"
    name = _idx(base, 2051, (1, 1000, 1000), bytes(10))
    room = 1032 * os.path.getsize(name)
    _idx(base, 2051, (1, 1, room - 1), bytes(10), compress=True)
    _rejected(lambda: datasets._read_idx(str(base), 2051, 3), "file holds 10", memory=2 << 20)


def test_idx_reader_rejects_folders_and_broken_gzip(tmp_path):
    os.mkdir(tmp_path / "t10k-images-idx3-ubyte")
    _rejected(lambda: datasets._read_idx(str(tmp_path / "t10k-images-idx3-ubyte"), 2051, 3), "is a folder")
    name = _idx(tmp_path / "x", 2051, (2, 2, 2), bytes(8), compress=True)
    with open(name, "r+b") as fh:
        fh.truncate(os.path.getsize(name) - 5)
    _rejected(lambda: datasets._read_idx(str(tmp_path / "x"), 2051, 3), "cannot be read")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ndim=st.sampled_from([1, 3]), data=st.data())
def test_generated_hostile_idx_files_load_or_fail_cheaply(tmp_path, ndim, data):
    dims = data.draw(st.lists(st.one_of(st.integers(0, 12), st.sampled_from([60000, 65536, 2**31, 2**32 - 1])),
                              min_size=ndim, max_size=ndim))
    count = math.prod(dims)
    honest = count <= 3000 and data.draw(st.booleans())
    payload = bytes(range(256)) * 12
    payload = payload[:count] if honest else payload[:data.draw(st.integers(0, 3000))]
    magic = data.draw(st.sampled_from([2049 if ndim == 1 else 2051, 2049, 2051, 0x0801FFFF]))
    compress = data.draw(st.booleans())
    base = tmp_path / "idx"
    for old in (base, tmp_path / "idx.gz"):
        if old.exists():
            old.unlink()
    name = _idx(base, magic, dims, payload, compress)
    if data.draw(st.booleans()):                 # truncate anywhere, header included
        with open(name, "r+b") as fh:
            fh.truncate(data.draw(st.integers(0, os.path.getsize(name))))
    result, seconds, peak = _cost(lambda: datasets._read_idx(str(base), 2049 if ndim == 1 else 2051, ndim))
    assert seconds < FAST and peak < SMALL, (seconds, peak)
    if isinstance(result, np.ndarray):
        assert result.shape == tuple(dims) and result.tobytes() == payload[:count]
    else:
        assert isinstance(result, ValueError), repr(result)
        assert str(base) in str(result)


def _fake_set(folder, n=7, side=28, top_label=9, magic=2051):
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        _idx(folder / f"{split}-images-idx3-ubyte", magic, (n, side, side), rng.integers(0, 256, n * side * side))
        labels = rng.integers(0, top_label + 1, n)
        labels[0] = top_label
        _idx(folder / f"{split}-labels-idx1-ubyte", 2049, (n,), labels, compress=True)
    return folder


@pytest.fixture
def seven(monkeypatch):
    """Pretend the named data sets have 7 train and 7 test images."""
    for spec in datasets.DATASETS.values():
        monkeypatch.setattr(spec, "counts", {"train": 7, "test": 7})


def test_fashion_mnist_loads_when_sized_right(tmp_path, seven):
    folder = _fake_set(tmp_path)
    X_train, y_train, X_test, y_test = datasets.load("fashion-mnist", str(folder))
    assert X_train.shape == (7, 784) and X_test.shape == (7, 784) and y_train.max() == 9
    X, y = datasets.load_mnist(folder, "test", flatten=False, name="fashion-mnist")
    assert X.shape == (7, 28, 28)


@pytest.mark.parametrize("name,title", [("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST")])
@pytest.mark.parametrize("damage,match", [
    (dict(n=7), "has 60000 x 28 x 28"),                          # the real counts, not the fixture's
    (dict(side=32), "header says 7 x 32 x 32"),
    (dict(top_label=10), "label 10 is not a class of"),
    (dict(magic=2049), "magic number 2049 is not 2051"),
])
def test_named_data_set_errors_name_the_data_set(tmp_path, monkeypatch, name, title, damage, match):
    if damage != dict(n=7):
        for spec in datasets.DATASETS.values():
            monkeypatch.setattr(spec, "counts", {"train": 7, "test": 7})
    folder = _fake_set(tmp_path, **damage)
    message = _rejected(lambda: datasets.load(name, str(folder)), match)
    assert message.startswith(title) or f"of {title}" in message
    if title == "MNIST":
        assert "Fashion" not in message


def test_missing_folders_name_the_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.MNIST_ENV, str(tmp_path))           # never used for Fashion-MNIST
    monkeypatch.delenv(datasets.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(datasets.DATASETS["fashion-mnist"], "default_folder", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"no Fashion-MNIST folder given.*{datasets.FASHION_MNIST_ENV}"):
        datasets.load("fashion-mnist")
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST folder .* does not exist"):
        datasets.load_mnist(tmp_path / "gone", name="fashion-mnist")
    with pytest.raises(FileNotFoundError, match="^Fashion-MNIST: neither"):
        datasets.load_mnist(tmp_path, name="fashion-mnist")
    with pytest.raises(ValueError, match="unknown IDX data set 'kmnist'"):
        datasets.load_mnist(tmp_path, name="kmnist")
    _fake_set(tmp_path)
    monkeypatch.setattr(datasets.DATASETS["fashion-mnist"], "counts", {"train": 7, "test": 7})
    monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(tmp_path))
    assert len(datasets.load("fashion-mnist")) == 4


@pytest.fixture
def fashion_folder():
    return real_folder(datasets.FASHION_MNIST_ENV, datasets.DEBIAN_FASHION_MNIST, "Fashion-MNIST",
                        "apt-get install dataset-fashion-mnist")


def test_real_mnist_is_mnist_sized(mnist_folder):
    X, y, X_test, y_test = datasets.load("mnist", mnist_folder, dtype=np.float32)
    assert X.shape == (60000, 784) and X_test.shape == (10000, 784) and set(np.unique(y)) == set(range(10))


def test_real_fashion_mnist_is_fashion_mnist_sized(fashion_folder):
    X, y = datasets.load_mnist(fashion_folder, "test", name="fashion-mnist")
    assert X.shape == (10000, 784) and np.bincount(y).tolist() == [1000] * 10
