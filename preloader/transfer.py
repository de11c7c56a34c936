"""Bounded, parallel transfer of model files, range by range, into memory or through to files.

Owns scheduling, not protocols: a ``PartSource`` (ranged GETs from S3, or reads from the cache)
fills one range at a time; this module decides the order (file by file, range by range, so the
first file completes first and can be deserialised while later ones still download), keeps the
number of bytes requested at once under the in-flight budget, and tells waiters how far each
file's contiguous prefix has arrived. The first error cancels the rest and is re-raised to waiters.

Two modes. In memory (the pre-warm Job) each file gets one buffer from an ``Allocator`` (pinned
host memory when the target is CUDA; the allocator is passed in, so this module needs no torch).
Streaming (the storage initializer) each thread reuses one scratch buffer and nothing stays in
memory: a ``PartHook`` writes every range out as it arrives. Either way, right after a range
arrives the thread computes its check values and hands it to the hook, so hashing and writing run
beside the download, on every connection at once, instead of after it.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from preloader.checksums import RangeSum, range_sum
from preloader.plan import ByteRange, ModelFile, effective_concurrency


class PartSource(Protocol):
    def __call__(self, file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
        """Fill dest with bytes [rng.start, rng.end] of file, or raise."""


class PartHook(Protocol):
    """Called from the transfer threads: ``part`` once per range as it arrives, ``file_done`` once per
    file by the thread that completed it. An exception fails the transfer like a source error.

    ``part`` may go on using ``data`` after it returns (a write in the background); it calls ``release``
    exactly once, when it is done with ``data``, which hands a streamed range's scratch buffer back for
    the next range (a no-op for a file kept in memory)."""

    # How many streamed ranges the hook may hold after ``part`` returns (writes queued on threads of
    # its own); the transfer keeps that many scratch buffers beyond one per connection.
    holds_parts: int

    def part(self, buf: FileBuffer, index: int, rng: ByteRange, data: memoryview,
             release: Callable[[], None]) -> None: ...

    def file_done(self, buf: FileBuffer) -> None: ...


# A file's buffer and what owns its memory; None to stream that file through scratch buffers instead.
Allocator = Callable[[ModelFile], tuple[memoryview, object] | None]


def host_allocate(file: ModelFile) -> tuple[memoryview, object]:
    """A plain host buffer; numpy's allocator asks for huge pages, which fault in far faster. It starts
    on a page boundary, so each range can be written to the cache straight from it with O_DIRECT."""
    size = file.obj.size
    if not size:
        return memoryview(b""), np.empty(0, dtype=np.uint8)
    raw = np.empty(size + mmap.PAGESIZE, dtype=np.uint8)
    skip = -raw.ctypes.data % mmap.PAGESIZE
    array = raw[skip : skip + size]
    return array.data.cast("B"), array


@dataclass
class FileBuffer:
    """One file being transferred: its ranges, their check values, its buffer (in memory mode), and
    the length of its contiguous completed prefix."""

    file: ModelFile
    parts: list[ByteRange]
    allocator: Allocator | None  # None: streaming, the bytes are not kept
    owner: object | None = None  # what holds the memory (a numpy array, a pinned torch tensor)
    view: memoryview | None = None
    sums: list[RangeSum | None] = field(default_factory=list)
    _done: set[int] = field(default_factory=set)
    _watermark: int = 0  # parts [0, _watermark) are complete
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _error: BaseException | None = None
    _streamed: bool = False
    finished_at: float | None = None

    def __post_init__(self) -> None:
        self.sums = [None] * len(self.parts)

    @property
    def in_memory(self) -> bool:
        """Whether the file has a buffer (allocating it on first use); False: streamed."""
        with self._cond:
            if self.allocator is None or self._streamed:
                return False
            if self.view is None:
                allocated = self.allocator(self.file)
                if allocated is None:
                    self._streamed = True
                    return False
                self.view, self.owner = allocated
            return True

    def buffer(self) -> memoryview:
        if not self.in_memory or self.view is None:
            raise RuntimeError(f"{self.file.path} is streamed; its bytes are not kept in memory")
        return self.view

    def part_done(self, index: int) -> bool:
        """Record one finished range; True when this completed the file."""
        with self._cond:
            self._done.add(index)
            while self._watermark in self._done:
                self._done.discard(self._watermark)
                self._watermark += 1
            self._cond.notify_all()
            return self._watermark == len(self.parts) and not self._done

    def complete(self) -> None:
        with self._cond:
            self.finished_at = time.perf_counter()
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def chunks(self) -> list[tuple[int, int]]:
        """(length, CRC-64/NVME) per range, for the cache manifest."""
        return [(s.length, s.cache) for s in self.sums if s is not None]

    def wait_for(self, offset: int) -> None:
        """Block until bytes [0, offset) are in the buffer; re-raise the transfer's error."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                complete = self._watermark == len(self.parts)
                done = self.file.obj.size if complete else self.parts[self._watermark].start
                if done >= offset:
                    return
                self._cond.wait()

    def wait(self) -> None:
        """Block until the file is complete, checked and handed on (``file_done`` has returned)."""
        with self._cond:
            while self.finished_at is None:
                if self._error is not None:
                    raise self._error
                self._cond.wait()

    def release(self) -> None:
        """Drop the host buffer (after its tensors were copied to the device, or a mapped file was
        written out); a mapping is unmapped now unless something still uses it."""
        with self._cond:
            owner, view = self.owner, self.view
            self.owner = None
            self.view = None
        if isinstance(owner, mmap.mmap) and view is not None:
            # Tensors (or slices) may still view it; then it goes when they do.
            with contextlib.suppress(BufferError):
                view.release()
                owner.close()


class _Cancelled(Exception):
    """Internal: a connection waiting for a scratch buffer gives up because the transfer failed."""


@dataclass
class Timings:
    """Thread-seconds spent checksumming across all transfer threads (they overlap with each other);
    the hook's writes are timed by the hook (``Store.write_seconds``), which may run them elsewhere."""

    hash: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, hash_seconds: float) -> None:
        with self._lock:
            self.hash += hash_seconds


MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+; Python 3.11 lacks the name


def _populate(mapped: mmap.mmap, rng: ByteRange) -> None:
    """Fault a mapped file's range in with one call before receiving into it, instead of one page
    fault per 4 KiB while receiving; on kernels without MADV_POPULATE_WRITE the faults happen as before."""
    start = rng.start - rng.start % mmap.PAGESIZE
    with contextlib.suppress(OSError):
        mapped.madvise(MADV_POPULATE_WRITE, start, rng.end + 1 - start)


class Transfer:
    """Runs a PartSource over all ranges of all files on a bounded pool of threads."""

    def __init__(
        self,
        source: PartSource,
        part_size: int,
        concurrency: int,
        max_inflight: int,
        progress: Callable[[int], None],
        hook: PartHook | None = None,
        check_values: bool = True,
    ) -> None:
        self._source = source
        self._part_size = part_size
        self._concurrency = concurrency
        self._max_inflight = max_inflight
        self._progress = progress
        self._hook = hook
        self._check_values = check_values
        self._cancelled = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._scratch_free: list[mmap.mmap] = []
        self._scratch_made = 0
        self._scratch_limit = 0
        self._scratch_ready = threading.Condition()  # guards the three above; notified when a buffer comes back
        self.buffers: list[FileBuffer] = []
        self.started_at = 0.0
        self.timings = Timings()

    def start(
        self,
        files: Sequence[ModelFile],
        ranges: Callable[[ModelFile], list[ByteRange]],
        allocator: Allocator | None,
    ) -> list[FileBuffer]:
        """Queue every range; ``allocator`` None streams (a hook must then take the bytes)."""
        self.buffers = [FileBuffer(f, ranges(f), allocator) for f in files]
        total_parts = sum(len(b.parts) for b in self.buffers)
        workers = effective_concurrency(self._concurrency, self._part_size, self._max_inflight, total_parts)
        self._scratch_limit = workers + (self._hook.holds_parts if self._hook is not None else 0)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preload")
        self.started_at = time.perf_counter()
        for buf in self.buffers:
            if not buf.parts:
                # An empty file is complete as soon as it exists; its hook runs on a pool thread.
                _ = buf.in_memory
                self._futures.append(self._pool.submit(self._finish_file, buf))
            for index, rng in enumerate(buf.parts):
                # FIFO submission: files complete in order; at most `workers` ranges are in flight.
                self._futures.append(self._pool.submit(self._run_part, buf, index, rng))
        return self.buffers

    def _take_scratch(self, length: int) -> mmap.mmap:
        """A free scratch buffer: anonymous pages, page-aligned, so a streamed range can be written to
        the cache with O_DIRECT straight from it. At most ``connections + hook.holds_parts`` exist, so
        streaming holds that many parts in memory whatever the model's size; a connection waits for a
        buffer the hook's writes hand back. A range longer than the part size (a cache entry written
        with a larger ``--part-size``) replaces the buffer it gets with one of its length."""
        with self._scratch_ready:
            while not self._scratch_free:
                if self._scratch_made < self._scratch_limit:
                    self._scratch_made += 1
                    return mmap.mmap(-1, max(length, self._part_size))
                if self._cancelled.is_set():
                    raise _Cancelled()
                self._scratch_ready.wait()
            scratch = self._scratch_free.pop()
        # The smaller one is dropped, not closed: a finished range's memoryview may still reference it.
        return scratch if len(scratch) >= length else mmap.mmap(-1, length)

    def _give_scratch(self, scratch: mmap.mmap) -> None:
        with self._scratch_ready:
            self._scratch_free.append(scratch)
            self._scratch_ready.notify()

    def _run_part(self, buf: FileBuffer, index: int, rng: ByteRange) -> None:
        if self._cancelled.is_set():
            return
        scratch: mmap.mmap | None = None
        handed = False

        def release() -> None:
            if scratch is not None:
                self._give_scratch(scratch)

        try:
            if buf.in_memory:
                dest = buf.buffer()[rng.start : rng.end + 1]
            else:
                scratch = self._take_scratch(rng.length)
                dest = memoryview(scratch)[: rng.length]
            if isinstance(buf.owner, mmap.mmap):
                _populate(buf.owner, rng)
            self._source(buf.file, rng, dest, self._progress)
            t0 = time.perf_counter()
            if self._check_values:
                buf.sums[index] = range_sum(buf.file.obj, dest)
            self.timings.add(time.perf_counter() - t0)
            if self._hook is not None:
                handed = True
                self._hook.part(buf, index, rng, dest, release)
            if buf.part_done(index):
                self._finish_file(buf)
        except _Cancelled:
            return
        except BaseException as exc:
            self._fail(exc)
        finally:
            if not handed:
                release()

    def _finish_file(self, buf: FileBuffer) -> None:
        try:
            if self._hook is not None:
                self._hook.file_done(buf)
            buf.complete()
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._cancelled.set()
        with self._scratch_ready:
            self._scratch_ready.notify_all()  # connections waiting for a buffer give up
        for other in self.buffers:
            other.fail(exc)

    def finish(self) -> float:
        """Wait for every range and file; returns the wall time of the transfer."""
        for future in self._futures:
            future.result()
        for buf in self.buffers:
            buf.wait()
        ends = [b.finished_at for b in self.buffers if b.finished_at is not None]
        return (max(ends) if ends else time.perf_counter()) - self.started_at

    def close(self) -> None:
        self._cancelled.set()
        with self._scratch_ready:
            self._scratch_ready.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
