"""Files written at random offsets and renamed into place, and the OS calls behind them.

``FileSink`` is one file being filled (a cache entry's or the initializer's DEST's): under a
temporary name, by positional writes or through a shared mapping, renamed by ``finish``.
``FileSystem`` holds the write calls, a seam so tests can make a disk full without root.
``disk_error`` is the one place an OSError from a write becomes DiskFull or CacheUnwritable.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath

from preloader.errors import CacheUnwritable, DiskFull, PreloadError, UnsafeKey
from preloader.plan import safe_relative_path

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# O_DIRECT needs buffer address, file offset and length aligned to the logical block size; a page
# covers every block size in use (512 B, 4 KiB).
DIRECT_ALIGN = mmap.PAGESIZE


def disk_error(exc: OSError, path: Path) -> PreloadError:
    """ENOSPC and friends are DiskFull; anything else means the cache volume itself is unusable."""
    if exc.errno in _FULL:
        return DiskFull(f"cache disk full while writing {path}: {exc.strerror}")
    return CacheUnwritable(f"cannot write the cache at {path}: {exc.strerror or exc}")


class FileSystem:
    """The OS write calls the cache makes; a seam so tests can simulate a full disk without root."""

    # Whether files may be filled through a shared mapping (see FileSink.map); a test seam that
    # fails writes turns it off to exercise the positional-write path.
    map_writes = True

    def free_bytes(self, path: Path) -> int:
        return shutil.disk_usage(path).free

    def open_new(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def open_direct(self, path: Path) -> int | None:
        """A second descriptor for writes that bypass the page cache; None where the filesystem refuses
        O_DIRECT (tmpfs before Linux 6.6, some FUSE and overlay mounts)."""
        try:
            return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise

    def fallocate(self, fd: int, size: int) -> None:
        os.posix_fallocate(fd, 0, size)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def write_all(self, fd: int, data: memoryview) -> None:
        """os.write may write less than asked; loop on `write` so a test seam sees every call."""
        done = 0
        while done < len(data):
            done += self.write(fd, data[done:])

    def pwrite_all(self, fd: int, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            done += self.pwrite(fd, data[done:], offset + done)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def safe_join(base: Path, rel: PurePosixPath) -> Path:
    """base/rel, refusing any existing symlink on the way and anything resolving outside base."""
    current = base
    for part in safe_relative_path(str(rel)).parts:
        current = current / part
        if current.is_symlink():
            raise UnsafeKey(f"{rel}: {current} is a symbolic link; refusing to follow it")
    root = os.path.realpath(base)
    if os.path.commonpath([root, os.path.realpath(current)]) != root:
        raise UnsafeKey(f"{rel} resolves outside {base}")
    return current


class FileSink:
    """One file being written at random offsets under a temporary name, renamed into place by ``finish``.

    Used for cache entries and for the initializer's DEST alike. The temporary name never embeds the
    final one, so a 255-byte file name still fits. ``map`` offers the file itself as the download
    buffer: the bytes are received straight into its page-cache pages, one copy fewer than receiving
    into memory and writing that out.
    """

    def __init__(self, fs: FileSystem, final: Path, size: int, direct: bool = False) -> None:
        self.fs = fs
        self.final = final
        self.temp = final.parent / f".tmp-{secrets.token_hex(4)}"
        self.size = size
        self.fd: int | None = None
        self.direct_fd: int | None = None
        self.mapped: mmap.mmap | None = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.fd = fs.open_new(self.temp)
            os.ftruncate(self.fd, size)
            if direct and size:
                self.direct_fd = fs.open_direct(self.temp)
        except OSError as exc:
            self.discard()
            raise disk_error(exc, final) from None
        if direct and size:
            self.reserve()

    def map(self) -> memoryview | None:
        """The whole file as a writable buffer, its blocks reserved first; None where that cannot be
        (a filesystem without fallocate, an empty file): then the caller writes with ``write``.

        The space is reserved with fallocate before anything is mapped, so a full disk is a DiskFull
        here rather than a SIGBUS on a later store into the mapping.
        """
        if self.fd is None or self.size == 0 or not self.fs.map_writes or not self.reserve():
            return None
        try:
            self.mapped = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            return None  # a filesystem that cannot map shared writable files: the blocks stay reserved
        return memoryview(self.mapped)

    def reserve(self) -> bool:
        """Allocate the file's blocks now, so a full disk is a DiskFull before any byte is fetched
        (and never a SIGBUS in a mapping); False where the filesystem has no fallocate."""
        assert self.fd is not None
        try:
            self.fs.fallocate(self.fd, self.size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return False
            self.discard()
            raise disk_error(exc, self.final) from None
        return True

    def write(self, offset: int, data: memoryview) -> None:
        """Write a range at its offset: its block-aligned body with O_DIRECT when the sink was opened
        for it (the disk's DMA reads the caller's buffer; no page-cache pages to fault in, zero and
        copy into, which on a CPU-bound node costs as much as receiving the bytes), the rest, and
        everything on filesystems without O_DIRECT, through the page cache."""
        assert self.fd is not None
        try:
            body = _direct_length(offset, data) if self.direct_fd is not None else 0
            if body:
                try:
                    self.fs.pwrite_all(self.direct_fd, data[:body], offset)  # type: ignore[arg-type]
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._stop_direct()  # an alignment the device refuses: page cache from now on
                    body = 0
            if body < len(data):
                self.fs.pwrite_all(self.fd, data[body:], offset + body)
        except OSError as exc:
            raise disk_error(exc, self.final) from None

    def _stop_direct(self) -> None:
        if self.direct_fd is not None:
            fd, self.direct_fd = self.direct_fd, None
            os.close(fd)

    def finish(self) -> None:
        self._stop_direct()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        try:
            self.fs.replace(self.temp, self.final)
        except OSError as exc:
            self.discard()
            raise disk_error(exc, self.final) from None

    def discard(self) -> None:
        self._stop_direct()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        self.temp.unlink(missing_ok=True)


def _direct_length(offset: int, data: memoryview) -> int:
    """How many leading bytes of ``data`` can go with O_DIRECT at ``offset``: a whole number of
    aligned blocks from an aligned address and offset; 0 when either is unaligned or read-only."""
    if offset % DIRECT_ALIGN or data.readonly or not data.contiguous or len(data) < DIRECT_ALIGN:
        return 0
    address = ctypes.addressof(ctypes.c_char.from_buffer(data))
    if address % DIRECT_ALIGN:
        return 0
    return len(data) - len(data) % DIRECT_ALIGN
