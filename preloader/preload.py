"""One preload run: cache lookup, listing, the download/deserialise/to-device pipeline, result.

This is the only module that wires the others together. The pipeline overlaps its phases: the
transfer threads fill file after file while this thread turns each file's bytes into tensors as
soon as they arrive (for safetensors, tensor by tensor as the contiguous prefix grows), copies
them to the device, and hands the file to a cache-writer thread.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, TextIO

import torch

from preloader.cache import (
    CacheCorrupt,
    CachedFile,
    CacheLock,
    EntryWriter,
    FileSystem,
    Manifest,
    ModelCache,
    version_key,
)
from preloader.config import Config
from preloader.device import available_bytes, memory_used, resolve_device, synchronize, to_device
from preloader.formats import load_torch, safetensors_layout, tensor_view
from preloader.plan import ByteRange, ModelFile, S3Location, check_fits, parse_s3_uri, select_files
from preloader.progress import Progress
from preloader.result import Phases, Result, peak_rss_bytes
from preloader.s3 import RangeFetcher, S3Client
from preloader.transfer import FileBuffer, PartSource, Transfer

log = logging.getLogger(__name__)


@dataclass
class Preloaded:
    result: Result
    # file path (relative to the model root) -> tensor name -> tensor on the device
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class _Timings:
    deserialise: float = 0.0
    to_device: float = 0.0


def _needs_device_memory(files: Sequence[ModelFile]) -> int:
    return sum(f.obj.size for f in files if f.format != "other")


def preload(config: Config, fs: FileSystem | None = None, stderr: TextIO | None = None) -> Preloaded:
    """Run once; raises PreloadError subclasses for every failure a user must act on."""
    return _Run(config, fs, stderr or sys.stderr).run()


class _Run:
    """One preload: a cache hit if there is a usable entry, else a download under the cache lock."""

    def __init__(self, config: Config, fs: FileSystem | None, stream: TextIO) -> None:
        self.started = time.perf_counter()
        self.config = config
        self.stream = stream
        self.device = resolve_device(config.device)
        self.location = parse_s3_uri(config.uri)
        self.client = S3Client(config.s3, pool_size=max(10, config.transfer.concurrency))
        self.endpoint = self.client.endpoint
        self.cache = ModelCache(config.cache_dir, fs) if config.cache_dir else None
        self.list_seconds = 0.0
        self.listed: tuple[S3Location, list[ModelFile]] | None = None
        # The entry this run already rejected (older version, failed verification), by the identity
        # of its manifest file, so a re-check under the lock does not verify it a second time.
        self.rejected: tuple[Path, int, int] | None = None

    def run(self) -> Preloaded:
        cache = self.cache
        if cache is None:
            return self._download(None, None)
        found = self._usable(cache)
        if found is not None:
            hit = self._serve(cache, *found)
            if hit is not None:
                return hit
        lock = cache.lock(self.endpoint, self.location, self.config.lock_timeout)
        try:
            # Look again: a run that held the lock (or finished just before we asked) may have
            # written the entry, which makes this run a hit instead of a second download.
            found = self._usable(cache)
            if found is not None:
                lock.release()  # a hit needs no lock: readers verify every chunk they use
                hit = self._serve(cache, *found)
                if hit is not None:
                    return hit
                lock = cache.lock(self.endpoint, self.location, self.config.lock_timeout)
            return self._download(cache, lock)
        finally:
            lock.release()

    def _list(self) -> tuple[S3Location, list[ModelFile]]:
        if self.listed is None:
            t = time.perf_counter()
            resolved, objects = self.client.resolve(self.location)
            self.listed = (resolved, select_files(objects, resolved))
            self.list_seconds += time.perf_counter() - t
        return self.listed

    def _usable(self, cache: ModelCache) -> tuple[Manifest, Path] | None:
        """The current entry, unless this run already rejected it or (--revalidate) it is outdated."""
        found = cache.lookup(self.endpoint, self.location)
        if found is None:
            return None
        manifest, entry = found
        try:
            st = (entry / "manifest.json").stat()
        except OSError:
            return None  # replaced or removed since the lookup: a writer is at work
        stamp = (entry, st.st_ino, st.st_mtime_ns)
        if stamp == self.rejected:
            return None
        if self.config.revalidate and version_key(self._list()[1]) != manifest.version:
            log.info("cache entry for %s is an older version; fetching the new one", self.location)
            self.rejected = stamp
            return None
        return manifest, entry

    def _serve(self, cache: ModelCache, manifest: Manifest, entry: Path) -> Preloaded | None:
        try:
            return _from_cache(
                self.config,
                cache,
                manifest.files,
                manifest.chunk_size,
                entry,
                self.device,
                self.stream,
                self.started,
                self.list_seconds,
            )
        except CacheCorrupt as exc:
            log.warning("cache entry for %s failed verification (%s); downloading and repairing it", self.location, exc)
            try:
                st = (entry / "manifest.json").stat()
                self.rejected = (entry, st.st_ino, st.st_mtime_ns)
            except OSError:
                pass  # already being rewritten; the re-check under the lock decides
            return None

    def _download(self, cache: ModelCache | None, lock: CacheLock | None) -> Preloaded:
        config, device = self.config, self.device
        resolved, files = self._list()
        check_fits(_needs_device_memory(files), config.max_device_bytes or available_bytes(device), str(device))
        writer = None
        if cache is not None and lock is not None:
            writer = cache.writer(self.endpoint, self.location, files, config.transfer.part_size, lock)
        fetcher = RangeFetcher(self.client, config.transfer)

        def from_s3(file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
            fetcher.fetch(resolved.bucket, file.obj, rng, dest, progress)

        log.info(
            "downloading %s: %d file(s), %d bytes, to %s", resolved, len(files), sum(f.obj.size for f in files), device
        )
        return _pipeline(
            config,
            files,
            from_s3,
            config.transfer.part_size,
            device,
            writer,
            self.stream,
            self.started,
            self.list_seconds,
            "miss" if cache else "off",
            str(resolved),
        )


def _from_cache(
    config: Config,
    cache: ModelCache,
    cached: Sequence[CachedFile],
    chunk: int,
    entry: Path,
    device: torch.device,
    stream: TextIO,
    started: float,
    list_seconds: float,
) -> Preloaded:
    by_path: dict[PurePosixPath, CachedFile] = {c.path: c for c in cached}
    files = [c.model_file for c in cached]
    check_fits(_needs_device_memory(files), config.max_device_bytes or available_bytes(device), str(device))

    def from_disk(file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
        cache.read_verified(entry, by_path[file.path], chunk, rng, dest)
        progress(rng.length)

    log.info("cache hit: %s", entry)
    # Verify every byte before any tensor is used: a corrupt entry must never reach the device.
    return _pipeline(
        config,
        files,
        from_disk,
        chunk,
        device,
        None,
        stream,
        started,
        list_seconds,
        "hit",
        str(parse_s3_uri(config.uri)),
        verify_first=True,
        cache_path=str(entry / "files"),
    )


def _pipeline(
    config: Config,
    files: Sequence[ModelFile],
    source: PartSource,
    part_size: int,
    device: torch.device,
    writer: EntryWriter | None,
    stream: TextIO,
    started: float,
    list_seconds: float,
    cache_state: Literal["hit", "miss", "off"],
    model: str,
    verify_first: bool = False,
    cache_path: str | None = None,
) -> Preloaded:
    total = sum(f.obj.size for f in files)
    bar = config.progress == "always" or (config.progress == "auto" and stream.isatty())
    progress = Progress(total, stream, bar, "cache" if cache_state == "hit" else "download")
    transfer = Transfer(
        source, part_size, config.transfer.concurrency, config.transfer.max_inflight_bytes, progress.add
    )
    timings = _Timings()
    out: dict[str, dict[str, torch.Tensor]] = {}
    writes: list[Future[CachedFile]] = []
    write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-write") if writer else None
    try:
        buffers = transfer.start(files, pinned=device.type == "cuda")
        if verify_first:
            transfer.finish()
        for buf in buffers:
            out[str(buf.file.path)] = _load_file(buf, device, timings)
            if writer is not None and write_pool is not None:
                writes.append(write_pool.submit(writer.write_file, buf.file, buf.buffer()))
            if device.type == "cuda":
                synchronize(device)  # the async copies out of this pinned buffer are done
                if writes:
                    writes[-1].result()
                buf.release()
        download_seconds = transfer.finish()
        for write in writes:
            write.result()
        if writer is not None:
            cache_path = str(writer.commit())
        synchronize(device)
    finally:
        transfer.close()
        progress.close()
        if write_pool is not None:
            write_pool.shutdown(wait=True, cancel_futures=True)
    tensors = [t for per_file in out.values() for t in per_file.values()]
    result = Result(
        model=model,
        files=len(files),
        bytes=total,
        seconds=Phases(
            list=list_seconds,
            download=download_seconds,
            deserialise=timings.deserialise,
            to_device=timings.to_device,
            total=time.perf_counter() - started,
        ),
        device=str(device),
        cache=cache_state,
        peak_rss_bytes=peak_rss_bytes(),
        device_memory_bytes=memory_used(device, tensors),
        tensors=len(tensors),
        cache_path=cache_path,
    )
    return Preloaded(result=result, tensors=out)


def _load_file(buf: FileBuffer, device: torch.device, timings: _Timings) -> dict[str, torch.Tensor]:
    """Bytes -> tensors on the device for one file; safetensors tensor by tensor as bytes arrive."""
    name = str(buf.file.obj.key)
    loaded: dict[str, torch.Tensor] = {}
    if buf.file.format == "safetensors":
        view = buf.buffer()
        t = time.perf_counter()
        data_start, specs = safetensors_layout(view, buf.file.obj.size, buf.wait_for, name)
        base = buf.tensor
        assert base is not None
        timings.deserialise += time.perf_counter() - t
        for spec in specs:
            buf.wait_for(data_start + spec.end)
            t = time.perf_counter()
            host = tensor_view(base, data_start, spec)
            t2 = time.perf_counter()
            loaded[spec.name] = to_device(host, device)
            t3 = time.perf_counter()
            timings.deserialise += t2 - t
            timings.to_device += t3 - t2
    elif buf.file.format == "torch":
        buf.wait()
        t = time.perf_counter()
        host_tensors = load_torch(buf.buffer(), name)
        t2 = time.perf_counter()
        loaded = {k: to_device(v, device) for k, v in host_tensors.items()}
        timings.deserialise += t2 - t
        timings.to_device += time.perf_counter() - t2
    else:
        buf.wait()
    return loaded
