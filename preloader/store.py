"""Where downloaded ranges go besides memory: S3 checksum checks, cache files, DEST files.

``Store`` is the transfer's ``PartHook``: each range, as soon as it arrives, is written at its
offset into every file it belongs in (the cache entry's, the initializer's DEST, or both when they
are on different filesystems); when a file is complete its S3 checksum is checked and only then is
it renamed into place. A file that fails the check is never renamed, so nothing unverified is
cached or served.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from preloader.cache import EntryWriter
from preloader.checksums import RangeSum, verify_object
from preloader.files import FileSink
from preloader.plan import ByteRange, ModelFile
from preloader.transfer import FileBuffer

OpenSinks = Callable[[ModelFile], list[FileSink]]


class Store:
    """PartHook writing ranges to per-file sinks and verifying each file against S3 before it is kept.

    ``open_sinks`` opens a file's sinks on its first range. ``cache`` (optional) is the entry writer
    whose sinks (the first one ``open_sinks`` returns) must be committed with their chunk checksums.
    ``verify`` is off when the bytes come from the cache, which checks its own per-range values.

    ``writers`` > 0 (the Job) writes ranges on that many threads of their own, so a receiving
    connection is not held while the disk takes its range; a streamed range's scratch buffer goes
    back to the transfer when its write is done (so streaming holds at most connections + writers
    parts in memory). A file is
    finished (verified, renamed) once its pending writes are done; the first failed write fails it.
    """

    def __init__(
        self,
        open_sinks: OpenSinks,
        cache: EntryWriter | None = None,
        verify: bool = True,
        unmap: bool = False,
        writers: int = 0,
    ) -> None:
        self._open_sinks = open_sinks
        self._cache = cache
        self._verify = verify
        self._unmap = unmap  # the initializer keeps nothing mapped once a file is written
        self._sinks: dict[str, list[FileSink]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(writers, thread_name_prefix="cache-write") if writers else None
        self.holds_parts = writers  # a streamed range waits in memory for its writer thread
        self._pending: dict[str, list[Future[None]]] = {}
        self.write_seconds = 0.0  # thread-seconds spent in writes, wherever they ran
        self.verified: dict[str, str] = {}  # file path -> what it was checked against

    def sinks(self, file: ModelFile) -> list[FileSink]:
        key = str(file.path)
        with self._lock:
            if key not in self._sinks:
                self._sinks[key] = self._open_sinks(file)
            return self._sinks[key]

    def allocate(self, file: ModelFile) -> tuple[memoryview, object] | None:
        """An Allocator (the initializer's): the first sink's file, mapped, is the download buffer itself
        (no write-out); None where it cannot be mapped, and the file is streamed through ``part``."""
        sinks = self.sinks(file)
        view = sinks[0].map() if sinks else None
        if view is None:
            return None
        return view, sinks[0].mapped

    def part(self, buf: FileBuffer, index: int, rng: ByteRange, data: memoryview,
             release: Callable[[], None]) -> None:
        sinks = [sink for sink in self.sinks(buf.file) if sink.mapped is None]
        if not sinks or self._pool is None:
            try:
                if sinks:
                    self._write(sinks, rng.start, data)
            finally:
                release()
            return
        future = self._pool.submit(self._write, sinks, rng.start, data, release)
        with self._lock:
            self._pending.setdefault(str(buf.file.path), []).append(future)

    def _write(
        self, sinks: list[FileSink], offset: int, data: memoryview, release: Callable[[], None] | None = None
    ) -> None:
        start = time.perf_counter()
        try:
            for sink in sinks:
                sink.write(offset, data)
        finally:
            if release is not None:
                release()
            elapsed = time.perf_counter() - start
            with self._lock:
                self.write_seconds += elapsed

    def file_done(self, buf: FileBuffer) -> None:
        with self._lock:
            pending = self._pending.pop(str(buf.file.path), [])
        for future in pending:
            future.result()  # re-raises a failed write (DiskFull, CacheUnwritable)
        sinks = self.sinks(buf.file)
        verified = "cache"
        if self._verify:
            sums: Sequence[RangeSum] = [s for s in buf.sums if s is not None]
            verified = verify_object(buf.file.obj, buf.parts, sums, _reader(buf, sinks))
        self.verified[str(buf.file.path)] = verified
        if self._cache is not None:
            self._cache.finish(sinks[0], buf.file, buf.chunks(), verified)
            rest = sinks[1:]
        else:
            rest = sinks
        for sink in rest:
            sink.finish()
        if self._unmap:
            buf.release()

    def summary(self) -> str:
        """One word for the result: what the files were checked against ("crc64nvme-full-object", "mixed")."""
        kinds = set(self.verified.values())
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")

    def close(self) -> None:
        """Stop the writer threads (after finishing or cancelling what they were given)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def discard(self) -> None:
        """Remove every unfinished file (a failed run leaves no partial files behind)."""
        self.close()  # no write may land in a file after it was removed
        with self._lock:
            for sinks in self._sinks.values():
                for sink in sinks:
                    sink.discard()


def _reader(buf: FileBuffer, sinks: list[FileSink]) -> Callable[[int, int], memoryview | bytes]:
    """Read back a complete file, for the checks (SHA, MD5) that need its bytes in order."""
    if buf.in_memory:
        view = buf.buffer()
        return lambda start, length: view[start : start + length]
    if not sinks:
        raise RuntimeError(f"{buf.file.path}: streamed without a file to read it back from")
    path: Path = sinks[0].temp

    def read(start: int, length: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    return read
