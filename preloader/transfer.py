"""Bounded, parallel filling of preallocated buffers, one buffer per model file.

Owns scheduling, not protocols: a ``PartSource`` (ranged GETs from S3, or reads from the cache)
fills one part at a time; this module decides the order (file by file, part by part, so the
first file completes first and can be deserialised while later ones still download), keeps the
number of bytes requested at once under the in-flight budget, allocates each file's buffer on
first use (pinned host memory when the target is CUDA), and tells waiters how far each file's
contiguous prefix has arrived. The first error cancels the rest and is re-raised to waiters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from preloader.plan import ByteRange, ModelFile, byte_ranges, effective_concurrency


class PartSource(Protocol):
    def __call__(self, file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
        """Fill dest with bytes [rng.start, rng.end] of file, or raise."""


def allocate(size: int, pinned: bool) -> torch.Tensor:
    """A uint8 host buffer; numpy's allocator asks for huge pages, which fault in far faster.

    Pinned (page-locked) memory lets host-to-device copies run asynchronously at full PCIe speed.
    """
    if pinned:
        return torch.empty(size, dtype=torch.uint8, pin_memory=True)
    return torch.from_numpy(np.empty(size, dtype=np.uint8))


@dataclass
class FileBuffer:
    """One file being filled: its buffer, and the length of its contiguous completed prefix."""

    file: ModelFile
    parts: list[ByteRange]
    pinned: bool
    tensor: torch.Tensor | None = None
    view: memoryview | None = None
    _done: set[int] = field(default_factory=set)
    _watermark: int = 0  # parts [0, _watermark) are complete
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _error: BaseException | None = None
    finished_at: float | None = None

    def buffer(self) -> memoryview:
        with self._cond:
            if self.view is None:
                self.tensor = allocate(self.file.obj.size, self.pinned)
                self.view = self.tensor.numpy().data.cast("B") if self.file.obj.size else memoryview(b"")
            return self.view

    def part_done(self, index: int) -> None:
        with self._cond:
            self._done.add(index)
            while self._watermark in self._done:
                self._done.discard(self._watermark)
                self._watermark += 1
            if self._watermark == len(self.parts):
                self.finished_at = time.perf_counter()
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    @property
    def received(self) -> int:
        """Bytes of the contiguous prefix that has arrived."""
        with self._cond:
            if self._watermark == len(self.parts):
                return self.file.obj.size
            return self.parts[self._watermark].start if self.parts else 0

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
        self.wait_for(self.file.obj.size)

    def release(self) -> None:
        """Drop the host buffer (after its tensors were copied to the device)."""
        with self._cond:
            self.tensor = None
            self.view = None


class Transfer:
    """Runs a PartSource over all parts of all files on a bounded pool of threads."""

    def __init__(
        self,
        source: PartSource,
        part_size: int,
        concurrency: int,
        max_inflight: int,
        progress: Callable[[int], None],
    ) -> None:
        self._source = source
        self._part_size = part_size
        self._concurrency = concurrency
        self._max_inflight = max_inflight
        self._progress = progress
        self._cancelled = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self.buffers: list[FileBuffer] = []
        self.started_at = 0.0

    def start(self, files: Sequence[ModelFile], pinned: bool) -> list[FileBuffer]:
        self.buffers = [FileBuffer(f, byte_ranges(f.obj.size, self._part_size), pinned) for f in files]
        total_parts = sum(len(b.parts) for b in self.buffers)
        workers = effective_concurrency(self._concurrency, self._part_size, self._max_inflight, total_parts)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preload")
        self.started_at = time.perf_counter()
        for buf in self.buffers:
            if not buf.parts:
                buf.buffer()  # an empty file is complete as soon as it exists
                buf.finished_at = time.perf_counter()
            for index, rng in enumerate(buf.parts):
                # FIFO submission: files complete in order; at most `workers` parts are in flight.
                self._futures.append(self._pool.submit(self._run_part, buf, index, rng))
        return self.buffers

    def _run_part(self, buf: FileBuffer, index: int, rng: ByteRange) -> None:
        if self._cancelled.is_set():
            return
        try:
            dest = buf.buffer()[rng.start : rng.end + 1]
            self._source(buf.file, rng, dest, self._progress)
            buf.part_done(index)
        except BaseException as exc:
            self._cancelled.set()
            for other in self.buffers:
                other.fail(exc)

    def finish(self) -> float:
        """Wait for every part; returns the wall time of the transfer."""
        for future in self._futures:
            future.result()
        for buf in self.buffers:
            buf.wait()
        ends = [b.finished_at for b in self.buffers if b.finished_at is not None]
        return (max(ends) if ends else time.perf_counter()) - self.started_at

    def close(self) -> None:
        self._cancelled.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
