"""The pre-warm Job's run: S3 (or the node cache) -> host memory -> tensors on the device.

The pipeline overlaps its phases: the transfer threads fill file after file, checking and writing
each range to the cache as it arrives, while this thread turns each file's bytes into tensors as
soon as they arrive (for safetensors, tensor by tensor as the contiguous prefix grows) and copies
them to the device. A hit reads the cache entry back, each range checked against its CRC before
any tensor is made from it.
"""

from __future__ import annotations

import logging
import mmap
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, TextIO

import numpy as np
import torch

from preloader.cache import EntryWriter, Manifest, ModelCache, model_version
from preloader.checksums import aligned_ranges
from preloader.config import Config
from preloader.device import (
    available_bytes,
    memory_used,
    resolve_device,
    synchronize,
    target_devices,
    to_device,
)
from preloader.errors import DeviceOutOfMemory
from preloader.files import FileSystem
from preloader.formats import load_torch, safetensors_layout, tensor_view
from preloader.mapped import MappedFile, read_layout
from preloader.placement import place_shards, room_for
from preloader.plan import ByteRange, ModelFile, S3Location, TensorSpec, check_fits, is_torch_file, total_bytes
from preloader.result import Phases, Result, peak_rss_bytes
from preloader.s3 import RangeFetcher
from preloader.session import CachedEntry, CachedRun, shard_index_of
from preloader.shards import ShardIndex, check_shard_header, loaded_files
from preloader.store import Store
from preloader.transfer import Allocator, FileBuffer, PartSource, host_allocate

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


def pinned_allocate(file: ModelFile) -> tuple[memoryview, object]:
    """Page-locked host memory, so host-to-device copies run asynchronously at full PCIe speed."""
    tensor = torch.empty(file.obj.size, dtype=torch.uint8, pin_memory=True)
    return (tensor.numpy().data.cast("B") if file.obj.size else memoryview(b"")), tensor


def preload(config: Config, fs: FileSystem | None = None, stderr: TextIO | None = None) -> Preloaded:
    """Run once; raises PreloadError subclasses for every failure a user must act on."""
    cache = ModelCache(config.cache_dir, fs, config.cache_max_bytes) if config.cache_dir else None
    return _Run(config, cache, stderr or sys.stderr).run()


class _Run(CachedRun[Preloaded]):
    def __init__(self, config: Config, cache: ModelCache | None, stream: TextIO) -> None:
        super().__init__(config, cache)
        self.stream = stream
        self.device = resolve_device(config.device)
        self.devices = target_devices(self.device, config.device)

    def serve(self, cache: ModelCache, manifest: Manifest, entry: Path) -> Preloaded:
        hit = CachedEntry(cache, manifest, entry)
        log.info("cache hit: %s", entry)
        # Every range is verified against its CRC (streamed, nothing kept) before any tensor is made
        # from the entry's files: a corrupt entry never reaches the device.
        return self._through_cache(
            hit.files, hit.ranges_of, hit.read, None, entry, "hit", version=manifest.model_version
        )

    def download(self, resolved: S3Location, files: list[ModelFile], writer: EntryWriter | None) -> Preloaded:
        fetcher = RangeFetcher(self.client, self.config.transfer)

        def from_s3(file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
            fetcher.fetch(resolved.bucket, file.obj, rng, dest, progress)

        log.info(
            "downloading %s: %d file(s), %d bytes, to %s",
            resolved,
            len(files),
            total_bytes(files),
            self.device,
        )
        part = self.config.transfer.part_size
        version = model_version(files, resolved.is_prefix)
        ranges: Callable[[ModelFile], list[ByteRange]] = lambda f: aligned_ranges(f.obj, part)  # noqa: E731
        if writer is None:
            return self._in_memory(files, ranges, from_s3, model=str(resolved), version=version)
        return self._through_cache(files, ranges, from_s3, writer, writer.entry, "miss", version=version,
                                   model=str(resolved))

    # ---- where each loaded file goes ----

    def _targets(self, files: Sequence[ModelFile], loaded: set[PurePosixPath], host_need: int) -> list[torch.device]:
        """The device of each loaded file, in order: spread over the GPUs by free memory, or the CPU
        (which must hold ``host_need`` bytes); DeviceOutOfMemory naming the sizes when nothing fits."""
        sizes = [f.obj.size for f in files if f.path in loaded]
        if self.device.type != "cuda":
            check_fits(host_need, self.config.max_device_bytes or available_bytes(self.device), str(self.device))
            return [self.device] * len(sizes)
        free = [available_bytes(d) for d in self.devices]
        if self.config.max_device_bytes is not None:
            free = [min(f, self.config.max_device_bytes) for f in free]
        if len(self.devices) == 1:  # one GPU: today's message and check
            check_fits(sum(sizes), free[0], str(self.devices[0]))
        labels = [str(f.path) for f in files if f.path in loaded]
        return [self.devices[i] for i in place_shards(sizes, free, labels)]

    def _room(self, target: torch.device, size: int) -> torch.device:
        """Check the planned GPU still has room right before a shard's copy; else the next one that has."""
        if target.type != "cuda":
            return target
        free = [available_bytes(d) for d in self.devices]
        return self.devices[room_for(size, self.devices.index(target), free)]

    # ---- no cache: the whole model in host memory, as fast as the network ----

    def _in_memory(
        self,
        files: Sequence[ModelFile],
        ranges: Callable[[ModelFile], list[ByteRange]],
        source: PartSource,
        model: str,
        version: str,
    ) -> Preloaded:
        device = self.device
        index = shard_index_of(files, ranges, source)
        loaded = loaded_files(files, index)
        targets = iter(self._targets(files, loaded, sum(f.obj.size for f in files if f.path in loaded)))
        # The bytes land in host memory the tensors keep (pinned on CUDA, for async copies).
        allocator: Allocator = pinned_allocate if device.type == "cuda" else host_allocate
        timings = _Timings()
        out: dict[str, dict[str, torch.Tensor]] = {}
        figures = _Figures()
        with self.transferring(source, files, "download", None, stream=self.stream, check_values=True) as transfer:
            buffers = transfer.start(files, ranges, allocator)
            for buf in buffers:
                if buf.file.path not in loaded:
                    buf.wait()
                    out[str(buf.file.path)] = {}  # a plain file (config, tokenizer): transferred, not loaded
                    continue
                target = self._room(next(targets), buf.file.obj.size)
                t = time.perf_counter()
                out[str(buf.file.path)] = _load_file(buf, target, timings, index)
                if target.type == "cuda":
                    synchronize(target)  # the async copies out of this pinned buffer are done
                    buf.wait()
                    buf.release()
                figures.add(buf.file, target, len(out[str(buf.file.path)]), time.perf_counter() - t)
            download_seconds = transfer.finish()
            for target in self.devices:
                synchronize(target)
        return self._result(files, out, timings, figures, model=model, version=version, cache_state="off",
                            phases=dict(download=download_seconds, hash=transfer.timings.hash),
                            verified="none", cache_path=None)

    # ---- with a cache: streamed to the cache file, loaded from it shard by shard ----

    def _through_cache(
        self,
        files: Sequence[ModelFile],
        ranges: Callable[[ModelFile], list[ByteRange]],
        source: PartSource,
        writer: EntryWriter | None,
        entry: Path,
        cache_state: Literal["hit", "miss"],
        version: str,
        model: str | None = None,
    ) -> Preloaded:
        """S3 (or the entry, verified) -> the cache file, one part per connection in memory; then each
        file is mapped from the cache and its tensors made from the mapping and copied to their device.

        Host memory: the transfer's parts in flight (concurrency x part size) plus, while a file is
        loaded, that one file's pages (the largest shard bounds it; a PyTorch file is read whole).
        A model too large for the device(s) is still cached, then refused (DeviceOutOfMemory).
        """
        assert self.cache is not None
        cache = self.cache
        index = shard_index_of(files, ranges, source)
        loaded = loaded_files(files, index)
        sizes = [f.obj.size for f in files if f.path in loaded]
        deferred: DeviceOutOfMemory | None = None
        targets: list[torch.device] = []
        try:
            targets = self._targets(files, loaded, max(sizes, default=0))
        except DeviceOutOfMemory as exc:
            deferred = exc  # cache it anyway: the node is warm for a runtime that loads its own weights
        store = None
        if writer is not None:
            store = Store(lambda f: [writer.open(f, direct=True)], cache=writer,
                          writers=self.config.transfer.concurrency)
        timings = _Timings()
        out: dict[str, dict[str, torch.Tensor]] = {}
        figures = _Figures()
        with self.transferring(source, files, "cache" if cache_state == "hit" else "download", store,
                               stream=self.stream, check_values=writer is not None) as transfer:
            buffers = transfer.start(files, ranges, None)
            if cache_state == "hit":
                transfer.finish()  # every byte verified before any tensor is made
            queue = iter(targets)
            for buf in buffers:
                buf.wait()
                file = buf.file
                if file.path not in loaded:
                    out[str(file.path)] = {}
                    continue
                path = cache.file_path(entry, file.path)
                layout = None
                if file.format == "safetensors":
                    layout = read_layout(path, file.obj.size, str(file.obj.key))
                    if index is not None:
                        check_shard_header(index, file.path, [s.name for s in layout[1]])
                if deferred is not None:
                    continue  # headers still checked, so a corrupt shard is never committed
                try:
                    target = self._room(next(queue), file.obj.size)
                    t = time.perf_counter()
                    out[str(file.path)] = _load_mapped(path, file, layout, target, timings)
                    figures.add(file, target, len(out[str(file.path)]), time.perf_counter() - t)
                except DeviceOutOfMemory as exc:
                    if writer is None:
                        raise
                    deferred = exc
            download_seconds = transfer.finish()
            commit_start = time.perf_counter()
            cache_path = str(entry / "files")
            if writer is not None:
                cache_path = str(writer.commit(version))
            commit_seconds = time.perf_counter() - commit_start
            for target in self.devices:
                synchronize(target)
        if deferred is not None:
            raise DeviceOutOfMemory(f"{deferred}; the model is in the node cache ({cache_path}) for a runtime "
                                    "that loads its own weights") from None
        return self._result(
            files, out, timings, figures, model=model or str(self.location), version=version, cache_state=cache_state,
            phases=dict(download=download_seconds, hash=transfer.timings.hash,
                        cache_write=store.write_seconds if store else 0.0, commit=commit_seconds),
            verified=store.summary() if store else "cache", cache_path=cache_path,
        )

    def _result(
        self,
        files: Sequence[ModelFile],
        out: dict[str, dict[str, torch.Tensor]],
        timings: _Timings,
        figures: _Figures,
        *,
        model: str,
        version: str,
        cache_state: Literal["hit", "miss", "off"],
        phases: dict[str, float],
        verified: str,
        cache_path: str | None,
    ) -> Preloaded:
        tensors = [t for per_file in out.values() for t in per_file.values()]
        total = total_bytes(files)
        used = {str(d): memory_used(d, [t for t in tensors if t.device == d]) for d in self.devices}
        result = Result(
            model=model,
            files=len(files),
            bytes=total,
            seconds=Phases(
                list=self.list_seconds,
                deserialise=timings.deserialise,
                to_device=timings.to_device,
                total=time.perf_counter() - self.started,
                **phases,
            ),
            device=str(self.device),
            cache=cache_state,
            peak_rss_bytes=peak_rss_bytes(),
            device_memory_bytes=sum(used.values()),
            tensors=len(tensors),
            cache_path=cache_path,
            version=version,
            fetched_bytes=0 if cache_state == "hit" else total,
            verified=verified,
            extra=figures.to_dict(used),
        )
        return Preloaded(result=result, tensors=out)


@dataclass
class _Figures:
    """Per loaded file (shard) and per device, for the result."""

    shards: list[dict[str, object]] = field(default_factory=list)

    def add(self, file: ModelFile, device: torch.device, tensors: int, seconds: float) -> None:
        log.info("loaded %s (%d bytes, %d tensors) onto %s in %.2f s",
                 file.path, file.obj.size, tensors, device, seconds)
        self.shards.append({"path": str(file.path), "bytes": file.obj.size, "tensors": tensors,
                            "device": str(device), "seconds": round(seconds, 4)})

    def to_dict(self, used: dict[str, int]) -> dict[str, object]:
        devices = {}
        for name, allocated in used.items():
            mine = [s for s in self.shards if s["device"] == name]
            devices[name] = {"shards": len(mine), "bytes": sum(int(str(s["bytes"])) for s in mine),
                             "memory_bytes": allocated}
        return {"shards": self.shards, "devices": devices}


RELEASE_EVERY = 256 << 20  # bytes of a mapped file read in before the ones already copied are released


def _load_mapped(
    path: Path, file: ModelFile, layout: tuple[int, list[TensorSpec]] | None, device: torch.device, timings: _Timings
) -> dict[str, torch.Tensor]:
    """One cache file -> tensors on the device, through a private mapping of it.

    Tensor by tensor, each read in with one call and copied to the device; every 256 MiB the pages
    already copied are released from the process (on the CPU the tensors stay views of the mapping,
    read again on use). So the host holds at most the largest tensor + 256 MiB of the file's pages,
    whatever the shard's size. A PyTorch file is read whole (``torch.load`` needs its bytes).
    """
    name = str(file.obj.key)
    mapped = MappedFile(path, file.obj.size)
    loaded: dict[str, torch.Tensor] = {}
    if layout is not None:
        data_start, specs = layout
        empty = not file.obj.size
        base = torch.empty(0, dtype=torch.uint8) if empty else torch.frombuffer(mapped.view(), dtype=torch.uint8)
        released = 0
        for spec in specs:
            t = time.perf_counter()
            mapped.populate(data_start + spec.begin, data_start + spec.end)
            host = tensor_view(base, data_start, spec)
            t2 = time.perf_counter()
            loaded[spec.name] = to_device(host, device)
            timings.deserialise += t2 - t
            timings.to_device += time.perf_counter() - t2
            done = data_start + spec.end
            if done - released >= RELEASE_EVERY:
                synchronize(device)  # the copies out of these pages are complete
                keep = done - done % mmap.PAGESIZE  # the page the next tensor starts in stays
                mapped.release_pages(released, keep)
                released = keep
    else:
        mapped.populate()
        if file.obj.size >= 4 and is_torch_file(mapped.view()[:4]):
            t = time.perf_counter()
            host_tensors = load_torch(mapped.view(), name)
            t2 = time.perf_counter()
            loaded = {k: to_device(v, device) for k, v in host_tensors.items()}
            timings.deserialise += t2 - t
            timings.to_device += time.perf_counter() - t2
        else:
            log.info("%s is not a PyTorch file (no zip or pickle header); kept as a plain file", name)
    synchronize(device)
    mapped.release_pages()
    return loaded


def _host_tensor(buf: FileBuffer) -> torch.Tensor:
    """The file's host buffer as a uint8 tensor: a pinned tensor already, or host_allocate's array."""
    owner = buf.owner
    if isinstance(owner, torch.Tensor):
        return owner
    assert isinstance(owner, np.ndarray), f"unexpected host buffer {type(owner).__name__}"
    return torch.from_numpy(owner)


def _load_file(
    buf: FileBuffer, device: torch.device, timings: _Timings, index: ShardIndex | None = None
) -> dict[str, torch.Tensor]:
    """Bytes -> tensors on the device for one file; safetensors tensor by tensor as bytes arrive."""
    name = str(buf.file.obj.key)
    loaded: dict[str, torch.Tensor] = {}
    if buf.file.format == "safetensors":
        view = buf.buffer()
        waited = 0.0

        def wait_for(offset: int) -> None:
            nonlocal waited
            w = time.perf_counter()
            buf.wait_for(offset)
            waited += time.perf_counter() - w

        t = time.perf_counter()
        data_start, specs = safetensors_layout(view, buf.file.obj.size, wait_for, name)
        if index is not None:
            check_shard_header(index, buf.file.path, [s.name for s in specs])
        base = _host_tensor(buf)
        # Waiting for the header's bytes is the download's time, not parsing's.
        timings.deserialise += time.perf_counter() - t - waited
        for spec in specs:
            buf.wait_for(data_start + spec.end)
            t = time.perf_counter()
            host = tensor_view(base, data_start, spec)
            t2 = time.perf_counter()
            loaded[spec.name] = to_device(host, device)
            t3 = time.perf_counter()
            timings.deserialise += t2 - t
            timings.to_device += t3 - t2
    elif buf.file.format == "torch" and _starts_like_torch(buf):
        buf.wait()
        t = time.perf_counter()
        host_tensors = load_torch(buf.buffer(), name)
        t2 = time.perf_counter()
        loaded = {k: to_device(v, device) for k, v in host_tensors.items()}
        timings.deserialise += t2 - t
        timings.to_device += time.perf_counter() - t2
    else:
        if buf.file.format == "torch":
            log.info("%s is not a PyTorch file (no zip or pickle header); kept as a plain file", name)
        buf.wait()
    return loaded


def _starts_like_torch(buf: FileBuffer) -> bool:
    """Decide by content, not by name: tokenizers, OpenVINO and GGML weights also end in ``.bin``."""
    buf.wait_for(min(4, buf.file.obj.size))
    return is_torch_file(buf.buffer()[:4])
