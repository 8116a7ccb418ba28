"""One owner per resource: an exclusive ``flock`` on a file that holds the owner's pid."""

from __future__ import annotations

import errno
import fcntl
import os


class OwnedElsewhere(Exception):
    """Another process holds the lock; ``owner`` is the pid it wrote (or ``unknown``)."""

    def __init__(self, path: str, owner: str) -> None:
        super().__init__(f"{path} is held by pid {owner}")
        self.path = path
        self.owner = owner


def take_ownership(path: str | os.PathLike[str]) -> int:
    """Lock ``path`` for this process and write our pid into it; return the open fd.

    The lock lasts until the fd is closed or the process ends (even by ``kill -9``).
    Raises :class:`OwnedElsewhere` when another process holds it, ``OSError`` otherwise.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise OwnedElsewhere(os.fspath(path), owner) from e
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd
