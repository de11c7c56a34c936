"""``--device none``: fill the node cache and nothing else (no tensors, no GPU, torch never imported).

For runtimes that load their own weights (vLLM, Hugging Face TGI), only the node cache matters: the
serving pod's storage initializer hard-links from it. The Job streams S3 -> the cache file with at
most (connections + writer threads) x part size in host memory, checks a sharded checkpoint's index
before fetching and each shard's header before committing (so a corrupt shard is never cached), and
reports per-file figures. A hit is verified (every range against its CRC), streamed, kept nowhere.
``--page-cache`` reads the committed entry once, so a serving pod starting next reads memory
instead of the disk (docs/benchmarks.md says when that pays).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TextIO

from preloader.cache import EntryWriter, Manifest, ModelCache, model_version
from preloader.checksums import aligned_ranges
from preloader.config import Config
from preloader.files import FileSystem
from preloader.mapped import read_layout, read_through
from preloader.plan import ByteRange, ModelFile, S3Location, total_bytes
from preloader.result import Result
from preloader.s3 import RangeFetcher
from preloader.session import CachedEntry, CachedRun, shard_index_of
from preloader.shards import check_shard_header
from preloader.store import Store
from preloader.transfer import PartSource

log = logging.getLogger(__name__)


def warm(config: Config, fs: FileSystem | None = None, stderr: TextIO | None = None) -> Result:
    """Run once; raises PreloadError subclasses for every failure a user must act on."""
    assert config.cache_dir is not None, "load_config refuses --device none without a cache"
    cache = ModelCache(config.cache_dir, fs, config.cache_max_bytes)
    return _Warm(config, cache, stderr or sys.stderr).run()


class _Warm(CachedRun[Result]):
    def __init__(self, config: Config, cache: ModelCache, stream: TextIO) -> None:
        super().__init__(config, cache)
        self.stream = stream

    def serve(self, cache: ModelCache, manifest: Manifest, entry: Path) -> Result:
        hit = CachedEntry(cache, manifest, entry)
        log.info("cache hit: %s", entry)
        return self._fill(hit.files, hit.ranges_of, hit.read, None, entry, "hit", manifest.model_version,
                          str(self.location))

    def download(self, resolved: S3Location, files: list[ModelFile], writer: EntryWriter | None) -> Result:
        assert writer is not None, "--device none always has a cache"
        fetcher = RangeFetcher(self.client, self.config.transfer)

        def from_s3(file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
            fetcher.fetch(resolved.bucket, file.obj, rng, dest, progress)

        log.info("caching %s: %d file(s), %d bytes (no device)", resolved, len(files), total_bytes(files))
        part = self.config.transfer.part_size
        return self._fill(files, lambda f: aligned_ranges(f.obj, part), from_s3, writer, writer.entry, "miss",
                          model_version(files, resolved.is_prefix), str(resolved))

    def _fill(
        self,
        files: Sequence[ModelFile],
        ranges: Callable[[ModelFile], list[ByteRange]],
        source: PartSource,
        writer: EntryWriter | None,
        entry: Path,
        cache_state: Literal["hit", "miss"],
        version: str,
        model: str,
    ) -> Result:
        assert self.cache is not None
        cache = self.cache
        index = shard_index_of(files, ranges, source)
        store = None
        if writer is not None:
            store = Store(lambda f: [writer.open(f, direct=True)], cache=writer,
                          writers=self.config.transfer.concurrency)
        shards: list[dict[str, object]] = []
        with self.transferring(source, files, "cache" if cache_state == "hit" else "download", store,
                               stream=self.stream, check_values=writer is not None) as transfer:
            buffers = transfer.start(files, ranges, None)
            for buf in buffers:
                buf.wait()
                file = buf.file
                figures: dict[str, object] = {"path": str(file.path), "bytes": file.obj.size}
                if file.format == "safetensors" and (index is None or file.path in index.shards):
                    _, specs = read_layout(cache.file_path(entry, file.path), file.obj.size, str(file.obj.key))
                    if index is not None:
                        check_shard_header(index, file.path, [s.name for s in specs])
                    figures["tensors"] = len(specs)
                done = buf.finished_at or time.perf_counter()
                figures["seconds"] = round(done - transfer.started_at, 4)
                log.info("cached %s (%d bytes) at %.2f s", file.path, file.obj.size, done - transfer.started_at)
                shards.append(figures)
            download_seconds = transfer.finish()
            commit_start = time.perf_counter()
            cache_path = str(entry / "files")
            if writer is not None:
                cache_path = str(writer.commit(version))
            commit_seconds = time.perf_counter() - commit_start
        fill_seconds = 0.0
        if self.config.page_cache:
            t = time.perf_counter()
            for file in files:
                read_through(cache.file_path(entry, file.path), file.obj.size)
            fill_seconds = time.perf_counter() - t
        return self.cache_only_result(
            model=model, files=files, cache_state=cache_state, transfer=transfer, store=store,
            download_seconds=download_seconds, commit_seconds=commit_seconds, fill_seconds=fill_seconds,
            cache_path=cache_path, version=version, verified=store.summary() if store else "cache",
            extra={"shards": shards, "page_cache": self.config.page_cache},
        )
