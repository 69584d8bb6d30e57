"""Files kcovx reads as untrusted input or writes over: the one place that opens them.

Owns two rules shared by the PC table (pcs.py), cover files (cover.py) and, for reading, the
code cache (instrument/cache.py):

- Reading: a file is opened without blocking (a FIFO with no writer does not hang the open),
  must be a regular file (not a FIFO, a device such as /dev/zero, a directory), and is read
  only up to a cap, so a reader's time and memory are bounded whatever is at the path.
- Writing: the new content goes to a temporary file in the same folder, which then replaces
  the path atomically, but only when the path holds a regular file or nothing: a FIFO, a
  device node, a directory or a symlink at the path is an OSError, and the temporary file
  never survives a failure (it is removed whatever interrupted the write).

Stateless; safe from any thread (each call has its own file descriptors and temporary name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(path: str, mode: int) -> OSError:
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return OSError(errno.EINVAL, f"{kind}, not a regular file (kcovx only replaces files)", path)


def check_replaceable(path: str) -> None:
    """OSError unless ``path`` is a regular file (not followed if a symlink) or absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)


def check_writable(path: str) -> None:
    """OSError unless a file can be created at ``path`` now: the folder exists and takes a new
    file, and whatever is at ``path`` may be replaced.  Creates and removes a probe file."""
    check_replaceable(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, probe = _create_temp(folder, os.path.basename(path))
    os.close(fd)
    os.unlink(probe)


def _create_temp(folder: str, base: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        name = os.path.join(folder, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(name, flags, 0o666), name  # the umask applies, as for open()
        except FileExistsError:
            continue


def replace_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring for what is replaced)."""
    check_replaceable(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        check_replaceable(path)  # again: something may have appeared there meanwhile
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_regular(path: str, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The content of the regular file at ``path``, at most ``limit`` bytes: OSError for
    anything that is not a regular file (a symlink too, unless ``follow_symlinks``: ELOOP),
    ValueError when it is larger."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if st.st_size > limit:
            raise ValueError(f"{path}: {st.st_size} bytes, more than the {limit} allowed")
        chunks = []
        left = limit + 1  # the file may grow after fstat: read one byte past the cap to see it
        # The first read asks for the size fstat gave and one byte more (a request of 1 MiB
        # would allocate 1 MiB for a small file: a tenth of a ms on the warm import path).
        want = st.st_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, want))
            want = 1 << 20
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ValueError(f"{path}: more than the {limit} bytes allowed")
    return data
