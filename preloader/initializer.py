"""The serving pod's storage initializer: ``preloader SRC DEST`` fills DEST with the model's files.

KServe's calling convention (a ``ClusterStorageContainer`` runs the image with the storage URI and
``/mnt/models``); the files land under DEST with the names KServe's own initializer gives them
(the key relative to the prefix; the base name for one object). Nothing here imports torch.

With a node cache (``--cache-dir`` / ``PRELOADER_CACHE_DIR``), a current, verified entry fills
DEST without a download: every range is checked against its CRC, then each file is hard-linked
into DEST when both are on one filesystem, else copied. A miss streams from S3 through one reused
buffer per connection into the cache entry's files (and into DEST's, when DEST is on another
filesystem), so memory stays at connections x part size whatever the model's size.

Serving never fails because of the cache. Where the cache cannot be used (unwritable, e.g. KServe
running this container as Istio's UID 1337 against a cache owned by the pre-warm Job's user; full;
locked by another run for longer than ``SERVING_LOCK_WAIT``; corrupt beyond what this run can
repair), the files the cached attempt put in DEST are removed and the model is downloaded straight
into DEST, with a warning and ``"cache": "bypassed"``, ``"cacheBypassReason": <reason>`` in the
result. S3's own failures (access denied, a missing object) still fail the run with their reasons.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Literal, TextIO

from preloader.archives import single_archive, unpack
from preloader.cache import CacheCorrupt, EntryWriter, Manifest, ModelCache, model_version
from preloader.checksums import aligned_ranges
from preloader.config import Config
from preloader.errors import (
    CacheBusy,
    CacheTooSmall,
    CacheUnwritable,
    DestinationNotUsable,
    DiskFull,
    PreloadError,
    UnsafeKey,
)
from preloader.files import FileSink, FileSystem, safe_join
from preloader.plan import ByteRange, ModelFile, S3Location, total_bytes
from preloader.result import Result
from preloader.s3 import RangeFetcher
from preloader.session import CachedEntry, CachedRun
from preloader.store import Store
from preloader.transfer import PartSource, Transfer

log = logging.getLogger(__name__)

# Why a run went on without the node cache: the result's "cacheBypassReason".
CACHE_UNWRITABLE = "CacheUnwritable"  # the cache refuses writes (read-only, another user's, not a directory)
CACHE_FULL = "CacheFull"  # the cache's disk is full, or --cache-max-bytes leaves no room
CACHE_LOCKED = "CacheLocked"  # another run held the entry's lock or lease longer than the wait below
CACHE_CORRUPT = "CacheCorrupt"  # an entry failed verification, or foreign files block the cache's layout
# Seconds a serving pod waits for another run's lock on the cache entry (a writer of the same model, a
# repair) before it downloads without the cache. Long enough for a concurrent pull of a large model to
# finish and become a hit, short enough that a stuck holder delays serving by minutes, not --lock-timeout's
# half hour; a smaller --lock-timeout lowers it.
SERVING_LOCK_WAIT = 300.0
# errno values that mean the cache's layout holds something foreign, not that writes are refused.
_LAYOUT_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.ENOTEMPTY}


def initialize(config: Config, fs: FileSystem | None = None, stderr: TextIO | None = None) -> Result:
    """Fill config.dest; raises PreloadError subclasses for every failure a user must act on.

    A cache that cannot be used is bypassed (see the module's docstring), never a reason to fail.
    """
    assert config.dest is not None, "initializer mode needs DEST"
    fs = fs or FileSystem()
    stream = stderr or sys.stderr
    if not config.cache_dir:
        return _Fill(config, config.dest, None, fs, stream).run()
    cache = ModelCache(config.cache_dir, fs, config.cache_max_bytes)
    bounded = replace(config, lock_timeout=min(config.lock_timeout, SERVING_LOCK_WAIT))
    fill = _Fill(bounded, config.dest, cache, fs, stream)
    before = dest_snapshot(config.dest)
    try:
        return fill.run()
    except PreloadError as exc:
        reason = bypass_reason(exc, corrupt_seen=fill.rejected is not None)
        if reason is None:
            raise
        why = f"{exc.reason}: {exc}"
    removed = remove_new_files(config.dest, before)
    log.warning(
        "cache bypassed (%s): %s; %sdownloading %s straight into %s without the node cache",
        reason,
        why,
        f"removed {removed} file(s) the cached attempt left in DEST; " if removed else "",
        fill.location,
        config.dest,
    )
    result = fill.without_cache()
    return replace(result, cache="bypassed", extra={**result.extra, "cacheBypassReason": reason})


def bypass_reason(error: PreloadError, corrupt_seen: bool) -> str | None:
    """The named reason to go on without the cache, or None when the error is not the cache's (S3's,
    DEST's, the model's) and must fail the run. ``corrupt_seen``: an entry failed verification in this
    run, and its repair is what failed."""
    if isinstance(error, CacheBusy):
        return CACHE_LOCKED
    if isinstance(error, DiskFull | CacheTooSmall):
        return CACHE_FULL
    if isinstance(error, CacheUnwritable):
        # disk_error raises CacheUnwritable from inside its ``except OSError``: the OSError is its context.
        cause = error.__context__
        if corrupt_seen or (isinstance(cause, OSError) and cause.errno in _LAYOUT_ERRNOS):
            return CACHE_CORRUPT
        return CACHE_UNWRITABLE
    return None


def dest_snapshot(dest: Path) -> dict[Path, tuple[int, int]]:
    """Every file and directory under DEST with its identity (inode, mtime), before a cached attempt."""
    found: dict[Path, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            found[path] = (st.st_ino, st.st_mtime_ns)
    return found


def remove_new_files(dest: Path, before: dict[Path, tuple[int, int]]) -> int:
    """Remove what a failed cached attempt wrote into DEST (files and directories that are new or were
    replaced since ``before``), so the uncached download starts from DEST as it was. Returns the count
    of files removed."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
        for name in filenames:
            path = Path(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if before.get(path) != (st.st_ino, st.st_mtime_ns):
                    path.unlink()
                    removed += 1
        for name in dirnames:
            path = Path(dirpath, name)
            if path not in before:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only once empty: a directory the attempt made
    return removed


def prepare_dest(dest: Path) -> None:
    """DEST must be (or become) a writable directory; fail before any download if it cannot."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        probe = dest / f".tmp-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DestinationNotUsable(f"cannot write to {dest}: {exc.strerror or exc}") from None


def check_dest_contents(dest: Path, paths: Sequence[PurePosixPath]) -> None:
    """DEST may hold only this model's files (a restarted init container finds its earlier work);
    anything else means DEST is not ours to fill. Unfinished ``.tmp-*`` files are removed. A model that
    is one archive may find anything its earlier unpacking left: unpacking again overwrites it."""
    if single_archive(paths) is not None:
        return
    wanted = set(paths)
    parents = {parent for p in paths for parent in p.parents}
    for dirpath, dirnames, filenames in os.walk(dest):
        rel = PurePosixPath(Path(dirpath).relative_to(dest).as_posix())
        for name in filenames:
            path = Path(dirpath, name)
            if name.startswith(".tmp-"):
                path.unlink(missing_ok=True)
                continue
            if (rel / name) not in wanted:
                raise DestinationNotUsable(
                    f"{dest} already holds {rel / name}, which is not part of this model; "
                    "the storage initializer fills an empty directory"
                )
        for name in dirnames:
            if (rel / name) not in parents:
                raise DestinationNotUsable(f"{dest} already holds the directory {rel / name}, not part of this model")


def same_filesystem(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


class _Fill(CachedRun[Result]):
    def __init__(self, config: Config, dest: Path, cache: ModelCache | None, fs: FileSystem, stream: TextIO) -> None:
        super().__init__(config, cache)
        self.dest = dest
        self.fs = fs
        self.stream = stream
        prepare_dest(dest)
        self.linkable = cache is not None and _cache_dir_ready(cache) and same_filesystem(cache.root, dest)

    def _dest_sink(self, file: ModelFile) -> FileSink:
        return FileSink(self.fs, safe_join(self.dest, file.path), file.obj.size)

    def serve(self, cache: ModelCache, manifest: Manifest, entry: Path) -> Result:
        hit = CachedEntry(cache, manifest, entry)
        files = hit.files
        check_dest_contents(self.dest, [f.path for f in files])
        log.info("cache hit: %s", entry)
        # Linking: verify every range first (reading is all the transfer does). Copying: each verified
        # range is written to DEST as it is read.
        store = None
        if not self.linkable:
            store = Store(lambda f: [self._dest_sink(f)], verify=False, unmap=True)
        seconds, transfer = self._transfer(files, hit.ranges_of, _unreadable_is_corrupt(hit.read), store, "cache")
        fill = time.perf_counter()
        if self.linkable:
            for f in files:
                _link_or_copy(cache.file_path(entry, f.path), safe_join(self.dest, f.path))
        unpacked = self._unpack_single_archive(files)
        return self._result(
            files,
            "hit",
            seconds,
            transfer,
            store,
            time.perf_counter() - fill,
            0.0,
            str(entry / "files"),
            manifest.model_version,
            "cache",
            unpacked=unpacked,
        )

    def download(self, resolved: S3Location, files: list[ModelFile], writer: EntryWriter | None) -> Result:
        check_dest_contents(self.dest, [f.path for f in files])
        fetcher = RangeFetcher(self.client, self.config.transfer)

        def from_s3(file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
            fetcher.fetch(resolved.bucket, file.obj, rng, dest, progress)

        def sinks(file: ModelFile) -> list[FileSink]:
            if writer is None:
                return [self._dest_sink(file)]
            if self.linkable:
                return [writer.open(file)]
            return [writer.open(file), self._dest_sink(file)]  # one download, written twice

        log.info("downloading %s: %d file(s), %d bytes, to %s", resolved, len(files), total_bytes(files), self.dest)
        # Received straight into the first file's mapped pages (the cache's, else DEST's); copied from
        # there into DEST when DEST is on another filesystem; streamed where a file cannot be mapped.
        store = Store(sinks, cache=writer, unmap=True)
        part = self.config.transfer.part_size
        seconds, transfer = self._transfer(files, lambda f: aligned_ranges(f.obj, part), from_s3, store, "download")
        version = model_version(files, resolved.is_prefix)
        fill = time.perf_counter()
        if writer is not None and self.linkable:
            # Linked while the writer still holds the new entry's lease, so no eviction can take it first.
            for f in files:
                _link_or_copy(safe_join(writer.entry / "files", f.path), safe_join(self.dest, f.path))
        fill_seconds = time.perf_counter() - fill
        commit = time.perf_counter()
        cache_path = str(writer.commit(version)) if writer is not None else None
        commit_seconds = time.perf_counter() - commit
        unpacked = self._unpack_single_archive(files)
        return self._result(
            files,
            "miss" if writer else "off",
            seconds,
            transfer,
            store,
            fill_seconds,
            commit_seconds,
            cache_path,
            version,
            store.summary(),
            model=str(resolved),
            unpacked=unpacked,
        )

    def without_cache(self) -> Result:
        """The fall-back: this run's listing, straight from S3 into DEST; the cache is not touched."""
        self.cache = None
        self.linkable = False
        return self.run()

    def _unpack_single_archive(self, files: Sequence[ModelFile]) -> int | None:
        """KServe's rule: one object that is a tar or zip is unpacked into DEST and removed from it (the
        cache keeps the archive). Returns how many members were unpacked, None when there was nothing to."""
        path = single_archive([f.path for f in files])
        if path is None:
            return None
        log.info("unpacking %s into %s", path, self.dest)
        try:
            return unpack(safe_join(self.dest, path), self.dest, free=self.fs.free_bytes(self.dest))
        except OSError as exc:
            reason = exc.strerror or exc
            raise DestinationNotUsable(f"cannot unpack {path} into {self.dest}: {reason}") from None

    def _transfer(
        self,
        files: Sequence[ModelFile],
        ranges: Callable[[ModelFile], list[ByteRange]],
        source: PartSource,
        store: Store | None,
        label: str,
    ) -> tuple[float, Transfer]:
        with self.transferring(source, files, label, store, stream=self.stream,
                               check_values=label == "download") as transfer:
            transfer.start(files, ranges, store.allocate if store is not None else None)
            return transfer.finish(), transfer

    def _result(
        self,
        files: Sequence[ModelFile],
        cache_state: Literal["hit", "miss", "off"],
        download_seconds: float,
        transfer: Transfer,
        store: Store | None,
        fill_seconds: float,
        commit_seconds: float,
        cache_path: str | None,
        version: str,
        verified: str,
        model: str | None = None,
        unpacked: int | None = None,
    ) -> Result:
        return self.cache_only_result(
            model=model or str(self.location), files=files, cache_state=cache_state, transfer=transfer,
            store=store, download_seconds=download_seconds, commit_seconds=commit_seconds,
            fill_seconds=fill_seconds, cache_path=cache_path, version=version, verified=verified,
            extra={
                "dest": str(self.dest),
                "linked": bool(self.linkable and cache_state != "off"),
                **({"unpacked": unpacked} if unpacked is not None else {}),
            },
        )


def _cache_dir_ready(cache: ModelCache) -> bool:
    """Create the cache root if needed, so its filesystem can be compared with DEST's."""
    try:
        cache.root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False  # the lock step raises CacheUnwritable with the reason, and the run bypasses the cache
    return True


def _unreadable_is_corrupt(read: PartSource) -> PartSource:
    """A cache file that cannot be read (EIO, a symbolic link planted in the entry) is a corrupt entry:
    repaired where the cache is writable, bypassed where not; never a failure of the serving pod."""

    def checked(file: ModelFile, rng: ByteRange, dest: memoryview, progress: Callable[[int], None]) -> None:
        try:
            read(file, rng, dest, progress)
        except UnsafeKey as exc:
            raise CacheCorrupt(str(exc)) from None
        except OSError as exc:
            raise CacheCorrupt(f"{file.path}: {exc.strerror or exc}") from None

    return checked


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link a verified cache file into DEST (replacing a same-named file atomically); copy when
    the kernel refuses the link (another filesystem, a filesystem without links)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".tmp-{os.getpid()}-{target.name[:32]}"
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise DestinationNotUsable(f"cannot link {target}: {exc.strerror}") from None
        try:
            shutil.copyfile(source, temp)
        except OSError as copy_exc:
            temp.unlink(missing_ok=True)
            raise DestinationNotUsable(f"cannot copy into {target}: {copy_exc.strerror}") from None
    os.replace(temp, target)
