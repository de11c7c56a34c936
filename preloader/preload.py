"""The pre-warm Job's run: S3 (or the node cache) -> host memory -> tensors on the device.

The pipeline overlaps its phases: the transfer threads fill file after file, checking and writing
each range to the cache as it arrives, while this thread turns each file's bytes into tensors as
soon as they arrive (for safetensors, tensor by tensor as the contiguous prefix grows) and copies
them to the device. A hit reads the cache entry back, each range checked against its CRC before
any tensor is made from it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import torch

from preloader.cache import EntryWriter, Manifest, ModelCache, model_version
from preloader.checksums import aligned_ranges
from preloader.config import Config
from preloader.device import available_bytes, memory_used, resolve_device, synchronize, to_device
from preloader.files import FileSystem
from preloader.formats import load_torch, safetensors_layout, tensor_view
from preloader.plan import ByteRange, ModelFile, S3Location, check_fits, is_torch_file, total_bytes
from preloader.result import Phases, Result, peak_rss_bytes
from preloader.s3 import RangeFetcher
from preloader.session import CachedEntry, CachedRun
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

    def serve(self, cache: ModelCache, manifest: Manifest, entry: Path) -> Preloaded:
        hit = CachedEntry(cache, manifest, entry)
        log.info("cache hit: %s", entry)
        # Verify every byte before any tensor is used: a corrupt entry must never reach the device.
        return self._pipeline(
            hit.files,
            hit.ranges_of,
            hit.read,
            None,
            "hit",
            verify_first=True,
            cache_path=str(entry / "files"),
            version=manifest.model_version,
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
        return self._pipeline(
            files,
            lambda f: aligned_ranges(f.obj, part),
            from_s3,
            writer,
            "miss" if writer else "off",
            model=str(resolved),
            version=model_version(files, resolved.is_prefix),
        )

    def _pipeline(
        self,
        files: Sequence[ModelFile],
        ranges: Callable[[ModelFile], list[ByteRange]],
        source: PartSource,
        writer: EntryWriter | None,
        cache_state: Literal["hit", "miss", "off"],
        version: str,
        model: str | None = None,
        verify_first: bool = False,
        cache_path: str | None = None,
    ) -> Preloaded:
        config, device = self.config, self.device
        check_fits(_needs_device_memory(files), config.max_device_bytes or available_bytes(device), str(device))
        total = total_bytes(files)
        store = None
        if cache_state != "hit":
            store = Store(
                lambda f: [writer.open(f, direct=True)] if writer else [],
                cache=writer,
                writers=config.transfer.concurrency if writer else 0,
            )
        # The bytes land in host memory the tensors keep (pinned on CUDA, for async copies) and each range
        # is written to the cache from there as it arrives, with O_DIRECT where the filesystem has it: the
        # disk reads the buffer itself, so filling the cache costs the CPU almost nothing. (Receiving into
        # the mapped cache file instead makes the kernel allocate, zero and track the model's size in page
        # cache inside the download: 15-17% of a 2 GiB pull's CPU samples went to zeroing alone on a 2-core
        # node; docs/preloader.md, "The cache-on Job against the ceiling".)
        allocator: Allocator = pinned_allocate if device.type == "cuda" else host_allocate
        timings = _Timings()
        out: dict[str, dict[str, torch.Tensor]] = {}
        with self.transferring(source, files, "cache" if cache_state == "hit" else "download", store,
                               stream=self.stream, check_values=cache_state != "hit") as transfer:
            buffers = transfer.start(files, ranges, allocator)
            if verify_first:
                transfer.finish()
            for buf in buffers:
                out[str(buf.file.path)] = _load_file(buf, device, timings)
                if device.type == "cuda":
                    synchronize(device)  # the async copies out of this pinned buffer are done
                    buf.wait()  # ... and its cache write
                    buf.release()
            download_seconds = transfer.finish()
            commit_start = time.perf_counter()
            if writer is not None:
                cache_path = str(writer.commit(version))
            commit_seconds = time.perf_counter() - commit_start
            synchronize(device)
        tensors = [t for per_file in out.values() for t in per_file.values()]
        fetched = 0 if cache_state == "hit" else total
        result = Result(
            model=model or str(self.location),
            files=len(files),
            bytes=total,
            seconds=Phases(
                list=self.list_seconds,
                download=download_seconds,
                deserialise=timings.deserialise,
                to_device=timings.to_device,
                total=time.perf_counter() - self.started,
                hash=transfer.timings.hash,
                cache_write=store.write_seconds if store else 0.0,
                commit=commit_seconds,
            ),
            device=str(device),
            cache=cache_state,
            peak_rss_bytes=peak_rss_bytes(),
            device_memory_bytes=memory_used(device, tensors),
            tensors=len(tensors),
            cache_path=cache_path,
            version=version,
            fetched_bytes=fetched,
            verified=store.summary() if store else "cache",
        )
        return Preloaded(result=result, tensors=out)


def _host_tensor(buf: FileBuffer) -> torch.Tensor:
    """The file's host buffer as a uint8 tensor: a pinned tensor already, or host_allocate's array."""
    owner = buf.owner
    if isinstance(owner, torch.Tensor):
        return owner
    assert isinstance(owner, np.ndarray), f"unexpected host buffer {type(owner).__name__}"
    return torch.from_numpy(owner)


def _load_file(buf: FileBuffer, device: torch.device, timings: _Timings) -> dict[str, torch.Tensor]:
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
