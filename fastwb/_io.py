"""Writing files so that an interrupted write never destroys what was there.

Every checkpoint and report fastwb writes goes through :func:`atomic_open`:
the data goes to a temporary file in the destination's own folder (so the
final rename never crosses a file system), is flushed and ``fsync``-ed, and
only then replaces the destination with ``os.replace``, which is atomic on
POSIX and Windows.  An exception, a full disk or a ``KeyboardInterrupt``
before that point removes the temporary file and leaves the previous file,
if any, exactly as it was.
"""

import contextlib
import os
import tempfile

__all__ = ["atomic_open", "check_writable_path"]


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
