"""The shape every run shares, the pre-warm Job and the storage initializer alike: list the model
with the caller's credentials, serve a current cache entry under a lease, else download under the
location's writer lock and fill the cache.

A hit is served only after S3 answered, with the caller's own credentials, the request that names
the model (HEAD for one object, the LIST for a prefix; no body) and its sizes and ETags are the
cached version's, so the cache never bypasses S3's authorization nor serves a stale model. A
prefix's objects are HEADed (for their checksums) only when they are to be downloaded: a hit on
thousands of files costs one LIST, not a HEAD each. ``--offline`` skips the check and trusts the
node: any complete, verified entry is served.
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TextIO, TypeVar

from preloader.cache import CacheCorrupt, EntryWriter, Manifest, ModelCache, is_current
from preloader.config import Config
from preloader.errors import ShardIndexInvalid
from preloader.plan import ByteRange, ModelFile, S3Location, check_key, parse_s3_uri, select_files, total_bytes
from preloader.progress import Progress
from preloader.result import Phases, Result, peak_rss_bytes
from preloader.s3 import S3Client
from preloader.shards import MAX_INDEX_BYTES, ShardIndex, check_index, find_index, parse_index
from preloader.store import Store
from preloader.transfer import PartSource, Transfer

log = logging.getLogger(__name__)

T = TypeVar("T")


class CachedEntry:
    """A leased cache entry as a transfer's source: its files, each file's ranges (as recorded when
    it was written), and a reader that verifies every range against its checksum as it copies it."""

    def __init__(self, cache: ModelCache, manifest: Manifest, entry: Path) -> None:
        self.cache = cache
        self.entry = entry
        self.files = [c.model_file for c in manifest.files]
        self._cached = {c.path: c for c in manifest.files}
        self._ranges = {c.path: c.ranges() for c in manifest.files}
        self._index = {path: {r.start: i for i, r in enumerate(rs)} for path, rs in self._ranges.items()}

    def ranges_of(self, file: ModelFile) -> list[ByteRange]:
        return self._ranges[file.path]

    def read(self, file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
        self.cache.read_verified(self.entry, self._cached[file.path], self._index[file.path][rng.start], rng, dest)
        progress(rng.length)


def read_small(file: ModelFile, ranges: Sequence[ByteRange], source: PartSource) -> bytes:
    """A small file's bytes through a transfer's source (S3 or a verified cache entry)."""
    out = bytearray(file.obj.size)
    view = memoryview(out)
    for rng in ranges:
        source(file, rng, view[rng.start : rng.end + 1], lambda _n: None)
    return bytes(out)


def shard_index_of(
    files: Sequence[ModelFile], ranges: Callable[[ModelFile], list[ByteRange]], source: PartSource
) -> ShardIndex | None:
    """The checkpoint's index, read and checked against the listing before anything else is fetched;
    None for a model without one."""
    found = find_index(files)
    if found is None:
        return None
    if found.obj.size > MAX_INDEX_BYTES:
        raise ShardIndexInvalid(f"{found.path}: {found.obj.size} bytes; an index over {MAX_INDEX_BYTES} is refused")
    raw = read_small(found, ranges(found), source)
    return check_index(found.path, parse_index(raw, found.path), files)


class CachedRun(ABC, Generic[T]):
    """One run; subclasses say how a hit is served and how a download is done."""

    def __init__(self, config: Config, cache: ModelCache | None) -> None:
        self.started = time.perf_counter()
        self.config = config
        self.location = parse_s3_uri(config.uri)
        check_key(self.location)
        self.client = S3Client(config.s3, pool_size=max(16, config.transfer.concurrency))
        self.endpoint = self.client.endpoint
        self.cache = cache
        self.list_seconds = 0.0
        self.listed: tuple[S3Location, list[ModelFile]] | None = None  # what list() found
        self.described: list[ModelFile] | None = None  # the listed files with their HEADs (describe())
        self.rejected: Path | None = None  # an entry that failed verification in this run

    def cache_only_result(
        self, *, model: str, files: Sequence[ModelFile], cache_state: Literal["hit", "miss", "off"],
        transfer: Transfer, store: Store | None, download_seconds: float, commit_seconds: float,
        fill_seconds: float, cache_path: str | None, version: str, verified: str, extra: dict[str, Any],
    ) -> Result:
        """The Result of a run that loads nothing onto a device (the cache-only Job, the storage
        initializer): the phases this run measured, and the bytes fetched unless the cache served them."""
        total = total_bytes(files)
        return Result(
            model=model,
            files=len(files),
            bytes=total,
            seconds=Phases(
                list=self.list_seconds,
                download=download_seconds,
                total=time.perf_counter() - self.started,
                hash=transfer.timings.hash,
                cache_write=store.write_seconds if store else 0.0,
                commit=commit_seconds,
                fill=fill_seconds,
            ),
            device="none",
            cache=cache_state,
            peak_rss_bytes=peak_rss_bytes(),
            cache_path=cache_path,
            version=version,
            fetched_bytes=0 if cache_state == "hit" else total,
            verified=verified,
            extra=extra,
        )

    @contextlib.contextmanager
    def transferring(self, source: PartSource, files: Sequence[ModelFile], label: str, store: Store | None, *,
                     stream: TextIO, check_values: bool) -> Iterator[Transfer]:
        """A transfer with this run's knobs and its progress report on `stream` (a bar on a terminal).

        On the way out both are closed; a failure inside also discards what `store` wrote, so a
        failed run leaves no partial cache entry behind.
        """
        config = self.config
        bar = config.progress == "always" or (config.progress == "auto" and stream.isatty())
        progress = Progress(total_bytes(files), stream, bar, label)
        transfer = Transfer(source, config.transfer.part_size, config.transfer.concurrency,
                            config.transfer.max_inflight_bytes, progress.add, hook=store, check_values=check_values)
        try:
            yield transfer
        except BaseException:
            if store is not None:
                store.discard()
            raise
        finally:
            transfer.close()
            if store is not None:
                store.close()
            progress.close()

    @abstractmethod
    def serve(self, cache: ModelCache, manifest: Manifest, entry: Path) -> T:
        """Use a leased entry; raise CacheCorrupt to turn the hit into a repairing miss."""

    @abstractmethod
    def download(self, resolved: S3Location, files: list[ModelFile], writer: EntryWriter | None) -> T:
        """Fetch from S3 (filling ``writer``'s entry when given; the caller commits or aborts it)."""

    def describe(self) -> tuple[S3Location, list[ModelFile]]:
        """The listed files as a download needs them: a prefix's objects HEADed for their checksums,
        version ids and part sizes (ObjectChanged where a HEAD contradicts the LIST)."""
        resolved, files = self.list()
        if not resolved.is_prefix:
            return resolved, files  # the HEAD that listed it described it
        if self.described is None:
            t = time.perf_counter()
            headed = self.client.head_all(resolved.bucket, [f.obj for f in files])
            self.described = [ModelFile(obj, f.path) for obj, f in zip(headed, files, strict=True)]
            self.list_seconds += time.perf_counter() - t
        return resolved, self.described

    def list(self) -> tuple[S3Location, list[ModelFile]]:
        """HEAD (one object) or LIST (a prefix) with the caller's credentials: the authorization and
        freshness check of a hit. A prefix's files carry the LIST's sizes and ETags only."""
        if self.listed is None:
            t = time.perf_counter()
            resolved, objects = self.client.list_model(self.location)
            self.listed = (resolved, select_files(objects, resolved))
            self.list_seconds += time.perf_counter() - t
        return self.listed

    def run(self) -> T:
        cache = self.cache
        if cache is None:
            resolved, files = self.describe()
            return self.download(resolved, files, None)
        hit = self._try_hit(cache)
        if hit is not None:
            return hit
        lock = cache.lock(self.endpoint, self.location, self.config.lock_timeout)
        try:
            # Look again: a run that held the lock (or finished just before we asked) may have
            # written the entry, which makes this run a hit instead of a second download.
            hit = self._try_hit(cache)
            if hit is not None:
                return hit
            resolved, files = self.describe()
            writer = cache.writer(self.endpoint, self.location, files, lock, wait=self.config.lock_timeout)
            try:
                return self.download(resolved, files, writer)
            except BaseException:
                writer.abort()
                raise
        finally:
            lock.release()

    def _try_hit(self, cache: ModelCache) -> T | None:
        found = cache.lookup(self.endpoint, self.location)
        if found is None:
            return None
        manifest, entry = found
        if entry == self.rejected:
            return None
        if not self.config.offline and not is_current(manifest, self.list()[1]):
            log.info("cache entry for %s is not the current version in S3; fetching the current one", self.location)
            return None
        lease = cache.lease(entry, self.config.lock_timeout)
        if lease is None:
            return None
        try:
            return self.serve(cache, manifest, entry)
        except CacheCorrupt as exc:
            log.warning("cache entry for %s failed verification (%s); downloading and repairing it", self.location, exc)
            self.rejected = entry
            return None
        finally:
            lease.release()
