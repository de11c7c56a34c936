"""Model files read back from the node cache, a shard at a time, without holding the model in memory.

``MappedFile`` maps one cache file privately (copy-on-write, never written): tensors are views of
its pages, which the kernel reads from the disk (or finds in the page cache) as they are touched
and can drop again at any time, so they are not the process's own memory. ``release_pages`` drops
the mapping's resident pages from this process (MADV_DONTNEED: they stay in the page cache and a
later touch faults them back in), which is how a CPU load goes shard by shard. ``read_layout``
reads a safetensors header with two small reads. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

from preloader.errors import CorruptModel
from preloader.plan import TensorSpec, parse_header, plan_safetensors, safetensors_header_size

MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+; Python 3.11 lacks the name
READ_CHUNK = 16 << 20


def read_layout(path: Path, size: int, name: str) -> tuple[int, list[TensorSpec]]:
    """(offset of the data section, validated tensor specs) of a safetensors file on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        try:
            header_len = safetensors_header_size(os.pread(fd, 8, 0), size)
        except CorruptModel as exc:
            raise CorruptModel(f"{name}: {exc}") from None
        raw = os.pread(fd, header_len, 8)
    finally:
        os.close(fd)
    if len(raw) != header_len:
        raise CorruptModel(f"{name}: safetensors header cut short")
    data_start = 8 + header_len
    try:
        return data_start, plan_safetensors(parse_header(raw, name), size - data_start)
    except CorruptModel as exc:
        raise CorruptModel(f"{name}: {exc}") from None


class MappedFile:
    """One cache file mapped for reading (privately: a stray write never reaches the cache)."""

    def __init__(self, path: Path, size: int) -> None:
        self.size = size
        self.mapping: mmap.mmap | None = None
        if size:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                self.mapping = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)

    def view(self) -> memoryview:
        return memoryview(self.mapping) if self.mapping is not None else memoryview(bytearray())

    def _pages(self, start: int, end: int | None) -> tuple[int, int]:
        """[start, end) widened to whole pages (madvise wants a page-aligned start), within the file."""
        end = self.size if end is None else min(end, self.size)
        first = start - start % mmap.PAGESIZE
        return first, max(end - first, 0)

    def populate(self, start: int = 0, end: int | None = None) -> None:
        """Read bytes [start, end) in now (one call, not a fault per page); where the kernel lacks
        MADV_POPULATE_READ, touch one byte per page."""
        first, length = self._pages(start, end)
        if self.mapping is None or not length:
            return
        try:
            self.mapping.madvise(MADV_POPULATE_READ, first, length)
        except OSError:
            view = memoryview(self.mapping)
            for offset in range(first, first + length, mmap.PAGESIZE):
                _ = view[offset]
            view.release()

    def release_pages(self, start: int = 0, end: int | None = None) -> None:
        """Drop this process's resident pages of bytes [start, end); tensors made from them stay valid
        (a touch reads them again from the page cache or the disk)."""
        first, length = self._pages(start, end)
        if self.mapping is not None and length:
            with contextlib.suppress(OSError):
                self.mapping.madvise(mmap.MADV_DONTNEED, first, length)


def read_through(path: Path, size: int) -> None:
    """Read a file once, so it is in the page cache (``--page-cache``); memory: one 16 MiB buffer."""
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
        offset = 0
        while offset < size:
            n = os.preadv(fd, [view], offset)
            if n == 0:
                break
            offset += n
    finally:
        os.close(fd)
