"""Writing files so that an interrupted write never destroys what was there.

Every checkpoint and report fastwb writes goes through :func:`atomic_open`:
the data goes to a temporary file in the destination's own folder (so the
final rename never crosses a file system), is flushed and ``fsync``-ed, and
only then replaces the destination with ``os.replace``, which is atomic on
POSIX and Windows.  An exception, a full disk or a ``KeyboardInterrupt``
before that point removes the temporary file and leaves the previous file,
if any, exactly as it was.

Every ``.npz`` file fastwb reads goes through :class:`NpzReader`, which
checks each size a file declares against the file's real size before it
allocates anything (see its docstring): a hostile or damaged file costs
at most a small multiple of its own size in memory and time, and is a
``ValueError`` that names the file and the inconsistency.
"""

import contextlib
import math
import os
import stat
import tempfile
import zipfile

import numpy as np

__all__ = ["atomic_open", "write_figure", "check_writable_path", "NpzReader", "NpyMember", "regular_file_size"]


def check_writable_path(path, what="output file"):
    """Raise a one-line error unless a file can be created at ``path``: its
    folder exists and is writable, and ``path`` is not a folder itself.
    Used before long work, so that a typo is found before the work is done."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"the {what} path is empty")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder, not a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r}: folder {folder!r} is not writable")
    return path


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Context manager yielding a file object whose contents replace ``path``
    atomically when the block ends without an exception.

    >>> with atomic_open("model.fwb") as fh:
    ...     fh.write(data)

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8).  The temporary file lives in
    the same folder as ``path`` and is removed if the block raises.  The new
    file gets the permissions a plain ``open`` would give it (umask applied).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def write_figure(figure, path, dpi):
    """Render a matplotlib ``figure`` in memory, then replace ``path`` with it
    through :func:`atomic_open` (format from the extension, PNG when there is
    none): a figure that fails to render leaves the previous file as it was."""
    import io

    extension = os.path.splitext(os.fspath(path))[1][1:].lower()
    data = io.BytesIO()
    figure.savefig(data, format=extension or "png", dpi=dpi)
    with atomic_open(path, "wb") as fh:
        fh.write(data.getvalue())


def _umask():
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)      # elsewhere: read by setting and restoring it
    os.umask(mask)
    return mask


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# reading .npz archives whose sizes cannot be trusted
# ---------------------------------------------------------------------------

# Deflate cannot expand data by more than 1032:1 (RFC 1951: at best 258 bytes
# per 2-bit code, plus block overhead), so a member claiming more is a bomb.
DEFLATE_MAX_RATIO = 1032
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_HEADER = 10000         # NumPy's own bound on a .npy header
_CHUNK = 1 << 20            # data is copied into its array in pieces of this size


def regular_file_size(path, what="file"):
    """Size in bytes of the regular file ``path``.  A missing file is a
    ``FileNotFoundError``; a folder, a device or a pipe is a ``ValueError``
    (reading a pipe could block for ever)."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: is not a regular file, so it cannot be a {what}")
    return st.st_size


class NpyMember:
    """One ``name.npy`` member of an archive, its header already checked:
    ``shape``, ``dtype``, ``fortran_order``, ``nbytes`` (of the data),
    ``header_bytes`` (magic plus header, before the data)."""

    __slots__ = ("name", "info", "shape", "dtype", "fortran_order", "nbytes", "header_bytes")

    def __init__(self, name, info, shape, dtype, fortran_order, nbytes, header_bytes):
        self.name, self.info, self.shape, self.dtype = name, info, shape, dtype
        self.fortran_order, self.nbytes, self.header_bytes = fortran_order, nbytes, header_bytes

    def describe(self):
        """``float32(10,)``: the dtype and shape, for error messages."""
        return f"{self.dtype}{self.shape}"


class NpzReader:
    """Read an ``.npz`` archive (as written by ``np.savez``) without trusting it.

    >>> with NpzReader("model.npz", "checkpoint") as npz:
    ...     npz.members["params"].shape          # checked, nothing read yet
    ...     params = npz.read("params")

    Opening reads only the zip directory and each member's ``.npy`` header,
    and checks, before any data is read or any array allocated:

    * the file is a regular file (a folder is a ``ValueError``, a missing file
      a ``FileNotFoundError``), is a zip archive, and is not a lone ``.npy``;
    * every member is ``NAME.npy``, stored or deflated, named once;
    * its compressed size fits in the file; a stored member's uncompressed
      size equals its compressed size, a deflated one's is at most
      ``DEFLATE_MAX_RATIO`` times it (no zip bombs);
    * its ``.npy`` header is well formed (at most 10000 bytes), its dtype
      holds no Python objects (nothing is ever unpickled) and has a nonzero
      item size and no sub-array shape, its shape is non-negative integers, and
      ``header + prod(shape) * itemsize`` is exactly the member's
      uncompressed size in the zip directory.

    So an array is allocated only once the file has been shown to hold its
    bytes (or, deflated, a thousandth of them), and :meth:`read` fills it in
    pieces of 1 MiB: peak memory is the array plus 1 MiB.  The zip CRC is
    verified as the data is read.  Every inconsistency is a ``ValueError``
    naming the file (``what`` says what kind of file was expected).

    ``file`` is a path or a seekable binary file object.
    """

    def __init__(self, file, what="file"):
        self.what = what
        if hasattr(file, "read"):
            self.name = str(getattr(file, "name", "<file object>"))
            file.seek(0, os.SEEK_END)
            self.size = file.tell()
            file.seek(0)
            start = file.read(8)
            file.seek(0)
        else:
            file = os.fspath(file)
            self.name = str(file)
            self.size = regular_file_size(file, what)
            with open(file, "rb") as fh:
                start = fh.read(8)
        if start.startswith(_NPY_MAGIC):
            raise self.error("it is a single .npy array, not an .npz archive")
        if not start.startswith(_ZIP_MAGICS):
            raise self.error(f"it is not an .npz (zip) archive (it starts with {start[:4]!r})")
        try:
            self._zip = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise self.error(f"damaged zip archive ({e})") from None
        try:
            self.members = {}
            for info in self._zip.infolist():
                member = self._check(info)
                self.members[member.name] = member
        except BaseException:
            self._zip.close()
            raise
        self.total_bytes = sum(m.nbytes for m in self.members.values())

    def error(self, message):
        """A ``ValueError`` naming the file and what it was expected to be."""
        return ValueError(f"{self.name}: not a readable {self.what}: {message}")

    def _check(self, info):
        name = info.filename
        if not name.endswith(".npy") or info.is_dir():
            raise self.error(f"member {name!r} is not a .npy array")
        key = name[:-4]
        if key in self.members:
            raise self.error(f"member {name!r} appears twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self.error(f"member {name!r} uses zip compression method {info.compress_type}, "
                             "not stored or deflated")
        if info.compress_size > self.size:
            raise self.error(f"member {name!r} claims {info.compress_size} compressed bytes, "
                             f"the whole file has {self.size}")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise self.error(f"stored member {name!r} claims {info.file_size} bytes but occupies "
                             f"{info.compress_size}")
        if info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 64:
            raise self.error(f"member {name!r} claims {info.file_size} bytes from {info.compress_size} "
                             f"compressed bytes, more than deflate can expand (a zip bomb)")
        try:
            with self._zip.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fh, _MAX_HEADER)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fh, _MAX_HEADER)
                else:
                    raise ValueError(f".npy format version {version} is not supported")
                header_bytes = fh.tell()
        except (ValueError, TypeError, SyntaxError, OverflowError, EOFError, OSError,
                zipfile.BadZipFile, NotImplementedError) as e:
            raise self.error(f"member {name!r} has a damaged .npy header ({e})") from None
        if dtype.hasobject:
            raise self.error(f"member {name!r} holds Python objects ({dtype}); they are never unpickled")
        if dtype.itemsize == 0 or dtype.subdtype is not None:
            raise self.error(f"member {name!r} has dtype {dtype}, which no saved array has (zero-size or sub-array)")
        if any(n < 0 for n in shape):
            raise self.error(f"member {name!r} declares a negative dimension in shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if header_bytes + nbytes != info.file_size:
            raise self.error(f"member {name!r} declares {dtype}{shape} ({nbytes} bytes of data) but holds "
                             f"{max(info.file_size - header_bytes, 0)} bytes after its header")
        return NpyMember(key, info, shape, dtype, fortran_order, nbytes, header_bytes)

    def read(self, key, max_bytes=None):
        """The array ``key`` (a new, writable array).  ``max_bytes`` bounds
        its data size: larger is a ``ValueError`` before anything is read."""
        if key not in self.members:
            raise self.error(f"has no member {key!r}")
        m = self.members[key]
        if max_bytes is not None and m.nbytes > max_bytes:
            raise self.error(f"member {key!r} is {m.describe()} ({m.nbytes} bytes), more than the "
                             f"{max_bytes} bytes it may have")
        out = np.empty(math.prod(m.shape), m.dtype)
        raw = out.view(np.uint8)
        try:
            with self._zip.open(m.info) as fh:
                fh.read(m.header_bytes)
                done = 0
                while done < m.nbytes:
                    piece = fh.read(min(_CHUNK, m.nbytes - done))
                    if not piece:
                        break
                    raw[done:done + len(piece)] = np.frombuffer(piece, np.uint8)
                    done += len(piece)
                if done == m.nbytes:
                    fh.read(1)               # reach the end, so that the CRC is checked
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise self.error(f"member {key!r} is damaged ({e})") from None
        if done != m.nbytes:
            raise self.error(f"member {key!r} is truncated: {done} of {m.nbytes} bytes")
        return out.reshape(m.shape, order="F" if m.fortran_order else "C")

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
