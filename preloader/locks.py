"""flock-based locks of the node cache: a writer's exclusive lock, a reader's shared lease.

The kernel drops a flock when its holder dies, so a killed run never leaves anything locked.
``take_lock`` waits (bounded, then CacheBusy); ``try_exclusive`` never waits, for eviction, which
must not block on readers.

A shared lock (a reader's lease) needs no write access: ``flock`` does not look at the mode a file
was opened in, so where the cache is read-only (a read-only mount, a directory this user may not
write) the lease file the writer left is opened read-only and the hit is served.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from preloader.errors import CacheBusy
from preloader.files import disk_error

log = logging.getLogger("preloader.cache")

_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class FileLock:
    """A flock held on one file; ``release`` (or leaving ``with``) drops it."""

    def __init__(self, path: Path, fd: int, waited: float = 0.0) -> None:
        self.path = path
        self.waited = waited
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of this open file drops the flock

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take_lock(
    path: Path,
    exclusive: bool,
    timeout: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> FileLock:
    """flock ``path`` (created if missing), waiting up to ``timeout`` seconds; CacheBusy after that.

    A shared lock on a read-only cache is taken through a read-only descriptor of the existing file.
    """
    try:
        fd = _open(path, read_only_ok=not exclusive)
    except OSError as exc:
        raise disk_error(exc, path) from None
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    started = clock()
    delay = 0.05
    logged = False
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return FileLock(path, fd, clock() - started if logged else 0.0)
            except BlockingIOError:
                pass
            waited = clock() - started
            if waited >= timeout:
                raise CacheBusy(
                    f"another run has held {what} for over {timeout:g}s (lock {path}); raise --lock-timeout, "
                    "or check for a stuck preloader on this node"
                )
            if not logged:
                log.info("another run holds %s; waiting for it (lock %s)", what, path)
                logged = True
            sleep(min(delay, max(timeout - waited, 0.0)))
            delay = min(delay * 2, 2.0)
    except BaseException:
        os.close(fd)
        raise


def _open(path: Path, read_only_ok: bool) -> int:
    """The lock file, created if missing; read-only where the cache refuses writes and ``read_only_ok``."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if not read_only_ok or exc.errno not in _READ_ONLY:
            raise
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            raise exc from None  # e.g. no lease file to share: report why it could not be created


def try_exclusive(path: Path) -> FileLock | None:
    """The lock if nobody holds it, else None; never waits (eviction must not block on readers)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return FileLock(path, fd)
