"""The node-local model cache: layout, keys, verified writes and reads, leases, a size bound.

Layout under ``--cache-dir``::

    preloader-v2/.room.lock                          writers sizing the bound, one at a time (flock)
    preloader-v2/<location>/.lock                    writers of this location, one at a time (flock)
    preloader-v2/<location>/current.json             {"version": <version>}, replaced atomically
    preloader-v2/<location>/<version>/.lease         readers share it, a writer or eviction holds it alone;
                                                     its mtime is the entry's last use (LRU order)
    preloader-v2/<location>/<version>/.reserved      bytes an unfinished entry will hold (for the bound)
    preloader-v2/<location>/<version>/manifest.json  written last: an entry without one is unfinished
    preloader-v2/<location>/<version>/files/<path relative to the model root>

``location`` hashes (endpoint, bucket, key or prefix), so two models never share a directory;
``version`` hashes every file's (path, size, ETag), so two versions of one model never share one
either. Files are written as ``.tmp-<random>`` with positional writes while the download runs
(each range as soon as it arrives), then renamed; the manifest records each file's size, ETag and a
CRC-64/NVME per range, so every use re-checks the bytes it reads. Data is not fsynced: a torn
write after a crash fails that check and the entry is downloaded again, so durability is checked
rather than paid for on every fill. A run that fails removes its unfinished entry; one killed
mid-write leaves an entry without manifest that the next writer of the location, or ``cache gc``,
removes.

Writers of one location are serialised by an exclusive ``flock`` on ``<location>/.lock``; a second
run waits for it (bounded by a timeout), then looks the entry up again and becomes a hit. Readers
hold a shared ``flock`` on the entry's ``.lease`` while they verify and use it; eviction takes that
lease exclusively without waiting, so an entry being read (or written) is never removed. The
kernel drops locks when their holder dies, so a killed run never leaves anything locked
(``preloader.locks``). Files are written through ``preloader.files`` (``FileSink``, and the
``FileSystem`` seam with which tests make a disk full without root).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from preloader.checksums import cache_crc
from preloader.errors import CacheTooSmall, CacheUnwritable, DiskFull, UnsafeKey
from preloader.files import FileSink, FileSystem, disk_error, safe_join
from preloader.locks import FileLock, take_lock, try_exclusive
from preloader.plan import ByteRange, ModelFile, ObjectInfo, S3Location, safe_relative_path, total_bytes

log = logging.getLogger(__name__)

FORMAT_DIR = "preloader-v2"
LOCK_FILE = ".lock"
LEASE_FILE = ".lease"
MANIFEST = "manifest.json"
# An entry being written records the bytes it will hold, so a second writer sizing the bound counts
# them before they are on disk; the cache-wide room lock makes "count, evict, reserve" one step.
RESERVED_FILE = ".reserved"
ROOM_LOCK = ".room.lock"
ROOM_WAIT = 60.0  # seconds a writer waits for another's accounting (a scan and some rmtree calls)


class CacheCorrupt(Exception):
    """A cache entry failed verification; internal, it turns a hit into a repairing miss."""


def location_key(endpoint: str, location: S3Location) -> str:
    """Stable name for a model location; the endpoint is included so two S3s never collide."""
    raw = "\x00".join([endpoint.rstrip("/"), location.bucket, location.key])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def version_key(files: Sequence[ModelFile]) -> str:
    """Stable directory name for one version of a model: every file's path, size and ETag."""
    listing = sorted((str(f.path), f.obj.size, f.obj.etag) for f in files)
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]


def is_current(manifest: Manifest, files: Sequence[ModelFile]) -> bool:
    """Whether S3's listing of the model (path, size, ETag of every file) is the version the entry holds.

    ETags compare without their quotes: a prefix's hit is checked against its LIST, the entry was
    written from HEADs, and servers differ in quoting ETags in listings.
    """

    def key(path: PurePosixPath, size: int, etag: str) -> tuple[str, int, str]:
        return str(path), size, etag.strip('"')

    cached = sorted(key(f.path, f.size, f.etag) for f in manifest.files)
    return cached == sorted(key(f.path, f.obj.size, f.obj.etag) for f in files)


def model_version(files: Sequence[ModelFile], prefix: bool) -> str:
    """The version reported in the result, so the operator can tell "already warm for this version".

    One object: ``versionid:<VersionId>`` on a versioned bucket, else ``etag:<ETag>``. A prefix:
    ``sha256:`` and 32 hex digits over every object's (key, size, ETag).
    """
    if not prefix and len(files) == 1:
        obj = files[0].obj
        return f"versionid:{obj.version_id}" if obj.version_id else f"etag:{obj.etag.strip(chr(34))}"
    listing = sorted((f.obj.key, f.obj.size, f.obj.etag) for f in files)
    return "sha256:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CachedFile:
    path: PurePosixPath
    key: str
    size: int
    etag: str
    # (length, CRC-64/NVME) of each range, in order; together they tile the file.
    chunks: tuple[tuple[int, int], ...]
    version_id: str = ""
    verified: str = "size"  # what the download was checked against: "crc64nvme-full-object", "md5", ...

    @property
    def model_file(self) -> ModelFile:
        return ModelFile(ObjectInfo(self.key, self.size, self.etag, self.version_id), self.path)

    def ranges(self) -> list[ByteRange]:
        out: list[ByteRange] = []
        start = 0
        for length, _ in self.chunks:
            out.append(ByteRange(start, start + length - 1))
            start += length
        return out


@dataclass(frozen=True)
class Manifest:
    uri: str
    endpoint: str
    version: str
    model_version: str
    files: tuple[CachedFile, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "uri": self.uri,
                "endpoint": self.endpoint,
                "version": self.version,
                "model_version": self.model_version,
                "files": [
                    {
                        "path": str(f.path),
                        "key": f.key,
                        "size": f.size,
                        "etag": f.etag,
                        "version_id": f.version_id,
                        "verified": f.verified,
                        "chunks": [[length, f"{value:016x}"] for length, value in f.chunks],
                    }
                    for f in self.files
                ],
            },
            indent=1,
        )

    @staticmethod
    def from_json(text: str) -> Manifest:
        """Parse and validate; any problem is CacheCorrupt (a bad manifest is a miss, not a crash)."""
        try:
            raw: Any = json.loads(text)
            files = tuple(
                CachedFile(
                    path=safe_relative_path(str(f["path"])),
                    key=str(f["key"]),
                    size=int(f["size"]),
                    etag=str(f["etag"]),
                    chunks=tuple((int(length), int(str(value), 16)) for length, value in f["chunks"]),
                    version_id=str(f.get("version_id", "")),
                    verified=str(f.get("verified", "size")),
                )
                for f in raw["files"]
            )
            manifest = Manifest(
                str(raw["uri"]), str(raw["endpoint"]), str(raw["version"]), str(raw["model_version"]), files
            )
        except (ValueError, KeyError, TypeError, UnsafeKey) as exc:
            raise CacheCorrupt(f"unreadable manifest: {exc}") from None
        for f in files:
            if sum(length for length, _ in f.chunks) != f.size or any(length <= 0 for length, _ in f.chunks):
                raise CacheCorrupt(f"manifest's chunks do not tile {f.path}")
        return manifest


@dataclass(frozen=True)
class EntryInfo:
    """One version directory, as ``cache ls`` shows it."""

    path: Path
    uri: str
    model_version: str
    bytes: int
    last_used: float
    complete: bool
    current: bool


class ModelCache:
    def __init__(self, root: Path, fs: FileSystem | None = None, max_bytes: int | None = None) -> None:
        self.root = root
        self.fs = fs or FileSystem()
        self.max_bytes = max_bytes

    @property
    def base(self) -> Path:
        return self.root / FORMAT_DIR

    def location_dir(self, endpoint: str, location: S3Location) -> Path:
        return self.base / location_key(endpoint, location)

    def lock(
        self,
        endpoint: str,
        location: S3Location,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> FileLock:
        """Take the location's writer lock, waiting up to ``timeout`` seconds for another run."""
        where = self.location_dir(endpoint, location)
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, where) from None
        return take_lock(where / LOCK_FILE, True, timeout, f"the cache entry for {location}", sleep, clock)

    def room(self, timeout: float) -> FileLock:
        """The cache-wide lock under which a writer sizes the bound, evicts and records its reservation.

        Held for a directory scan and the evictions only, never for a download; without it two writers
        of different models could each see room for one model and together overshoot the bound.
        """
        try:
            self.base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, self.base) from None
        return take_lock(self.base / ROOM_LOCK, True, timeout, "the cache's size accounting")

    def lookup(self, endpoint: str, location: S3Location) -> tuple[Manifest, Path] | None:
        """The current complete entry for a location, or None; a broken one is logged and ignored."""
        where = self.location_dir(endpoint, location)
        try:
            current = json.loads((where / "current.json").read_text())
            version = str(current["version"])
            if not version.isalnum():
                raise CacheCorrupt(f"bad version name {version!r}")
            entry = where / version
            manifest = Manifest.from_json((entry / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except (CacheCorrupt, ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("cache entry for %s is unusable (%s); it will be rewritten", location, exc)
            return None
        return manifest, entry

    def lease(self, entry: Path, timeout: float) -> FileLock | None:
        """A shared lease on an entry for as long as it is read; None if it was removed meanwhile.

        Taking it also marks the entry used now (the LRU order). Eviction holds the lease alone while
        it removes an entry, so a reader that got the lease re-checks that the manifest is still there.
        On a read-only cache the lease is taken on the writer's lease file opened read-only, and the
        LRU order does not move.
        """
        try:
            lease = take_lock(entry / LEASE_FILE, False, timeout, f"cache entry {entry.name}")
        except (DiskFull, CacheUnwritable):
            return None  # the directory is gone (evicted, rewritten), or read-only without a lease file
        if not (entry / MANIFEST).is_file():
            lease.release()
            return None
        _touch(entry / LEASE_FILE)
        return lease

    def file_path(self, entry: Path, path: PurePosixPath) -> Path:
        return safe_join(entry / "files", path)

    def read_verified(self, entry: Path, cached: CachedFile, index: int, rng: ByteRange, dest: memoryview) -> None:
        """Read one recorded chunk into dest and check it against its CRC-64/NVME."""
        path = self.file_path(entry, cached.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise CacheCorrupt(f"{cached.path}: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_size != cached.size:
                raise CacheCorrupt(f"{cached.path}: size differs from the manifest")
            got = 0
            while got < rng.length:
                n = os.preadv(fd, [dest[got:]], rng.start + got)
                if n == 0:
                    raise CacheCorrupt(f"{cached.path}: short read")
                got += n
        finally:
            os.close(fd)
        if cache_crc(dest) != cached.chunks[index][1]:
            raise CacheCorrupt(f"{cached.path}: bytes {rng.start}-{rng.end} do not match the recorded CRC-64/NVME")

    def writer(
        self, endpoint: str, location: S3Location, files: Sequence[ModelFile], lock: FileLock, wait: float = 0.0
    ) -> EntryWriter:
        """A writer for a new entry; ``lock`` must be this location's lock, held until ``commit``.

        ``wait``: seconds to wait for readers of an old copy of the same version (being repaired).
        """
        return EntryWriter(self, endpoint, location, files, lock, wait)

    # ---- inventory, eviction, garbage collection ----

    def entries(self) -> list[EntryInfo]:
        """Every version directory under the cache, oldest use first."""
        found: list[EntryInfo] = []
        if not self.base.is_dir():
            return found
        for where in sorted(p for p in self.base.iterdir() if p.is_dir() and not p.is_symlink()):
            current = ""
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                current = str(json.loads((where / "current.json").read_text())["version"])
            for entry in sorted(p for p in where.iterdir() if p.is_dir() and not p.name.startswith(".")):
                uri, version = "?", "?"
                try:
                    manifest = Manifest.from_json((entry / MANIFEST).read_text())
                    uri, version, complete = manifest.uri, manifest.model_version, True
                except (OSError, CacheCorrupt):
                    complete = False
                try:
                    used = (entry / LEASE_FILE).stat().st_mtime
                except OSError:
                    used = entry.stat().st_mtime
                size = _tree_bytes(entry) if complete else max(_tree_bytes(entry), _reserved_bytes(entry))
                found.append(EntryInfo(entry, uri, version, size, used, complete, entry.name == current))
        found.sort(key=lambda e: e.last_used)
        return found

    def remove_entry(self, entry: Path, wait: float = 0.0) -> bool:
        """Remove one version directory unless someone holds its lease (reading or writing it).

        With ``wait`` > 0 it waits that long for the readers to finish (then CacheBusy); eviction never
        waits, a rewrite of a corrupt entry does.
        """
        if wait > 0:
            if not (entry / LEASE_FILE).parent.is_dir():
                return False
            lease: FileLock | None = take_lock(entry / LEASE_FILE, True, wait, f"cache entry {entry}")
        else:
            lease = try_exclusive(entry / LEASE_FILE)
        if lease is None:
            return False
        try:
            trash = entry.parent / f".trash-{entry.name}-{secrets.token_hex(4)}"
            try:
                os.rename(entry, trash)
            except FileNotFoundError:
                return False
            shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            lease.release()

    def reclaim_unfinished(self, where: Path, keep: Path | None = None) -> None:
        """Remove version directories without a manifest (a killed or failed run's) nobody is writing."""
        if not where.is_dir():
            return
        for entry in where.iterdir():
            if entry == keep or not entry.is_dir():
                continue
            if entry.name.startswith(".trash-"):
                shutil.rmtree(entry, ignore_errors=True)
            elif not (entry / MANIFEST).exists() and self.remove_entry(entry):
                log.info("removed an unfinished cache entry %s", entry)

    def make_room(self, need: int, keep: Path) -> list[EntryInfo]:
        """Evict least recently used entries until ``need`` more bytes fit under ``max_bytes``.

        Never the entry at ``keep`` (being written) nor one whose lease is held. Raises CacheTooSmall,
        having evicted nothing, when the model alone is larger than the bound, or when the entries in
        use leave too little room.
        """
        if self.max_bytes is None:
            return []
        if need > self.max_bytes:
            raise CacheTooSmall(f"the model needs {need} bytes but --cache-max-bytes is {self.max_bytes}")
        entries = [e for e in self.entries() if e.path != keep]
        used = sum(e.bytes for e in entries)
        if used + need <= self.max_bytes:
            return []
        removable = [e for e in entries if _lease_free(e.path)]
        if used - sum(e.bytes for e in removable) + need > self.max_bytes:
            raise CacheTooSmall(
                f"the model needs {need} bytes; --cache-max-bytes is {self.max_bytes} and entries in use "
                f"hold {used - sum(e.bytes for e in removable)}"
            )
        evicted: list[EntryInfo] = []
        for entry in removable:
            if used + need <= self.max_bytes:
                break
            if self.remove_entry(entry.path):
                used -= entry.bytes
                evicted.append(entry)
                log.info("evicted %s (%s, %d bytes) to stay under the cache bound", entry.uri, entry.path, entry.bytes)
        if used + need > self.max_bytes:
            raise CacheTooSmall(f"could not make {need} bytes of room under --cache-max-bytes {self.max_bytes}")
        return evicted

    def gc(self, max_bytes: int | None) -> list[EntryInfo]:
        """``cache gc``: drop unfinished entries, then least recently used ones down to ``max_bytes``."""
        removed: list[EntryInfo] = []
        for entry in self.entries():
            if not entry.complete and self.remove_entry(entry.path):
                removed.append(entry)
        if max_bytes is not None:
            used = sum(e.bytes for e in self.entries())
            for entry in self.entries():
                if used <= max_bytes:
                    break
                if self.remove_entry(entry.path):
                    used -= entry.bytes
                    removed.append(entry)
        return removed


def _lease_free(entry: Path) -> bool:
    lease = try_exclusive(entry / LEASE_FILE)
    if lease is None:
        return False
    lease.release()
    return True


def _reserved_bytes(entry: Path) -> int:
    """What an unfinished entry's writer said it will hold; 0 if it said nothing (or nothing readable)."""
    try:
        return max(int((entry / RESERVED_FILE).read_text()), 0)
    except (OSError, ValueError):
        return 0


def _touch(path: Path) -> None:
    # A read-only cache still serves hits (its lease is taken read-only, see preloader.locks); the LRU
    # order just does not move.
    with contextlib.suppress(OSError):
        os.utime(path)


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class EntryWriter:
    """Writes one version of one model into the cache; ``commit`` makes it visible, ``abort`` removes it.

    Only one writer per location at a time: the caller holds the location's lock. The writer also
    holds its entry's lease alone until it commits or aborts, so eviction never takes it.
    """

    def __init__(
        self,
        cache: ModelCache,
        endpoint: str,
        location: S3Location,
        files: Sequence[ModelFile],
        lock: FileLock,
        wait: float = 0.0,
    ) -> None:
        self.cache = cache
        self.fs = cache.fs
        self.endpoint = endpoint
        self.location = location
        self.files = list(files)
        self.version = version_key(files)
        self.location_dir = cache.location_dir(endpoint, location)
        self.entry = self.location_dir / self.version
        self.written: dict[PurePosixPath, CachedFile] = {}
        self._sinks: list[FileSink] = []
        self._lease: FileLock | None = None
        self._created = False  # abort removes the entry only once this writer made it
        if not lock.held or lock.path != self.location_dir / LOCK_FILE:
            raise RuntimeError(f"writing {self.entry} needs the held lock {self.location_dir / LOCK_FILE}")
        need = total_bytes(files)
        try:
            # A rewrite (a new download of a version whose entry failed verification) replaces the old
            # directory once its readers are done with it.
            if self.entry.exists():
                cache.remove_entry(self.entry, wait=max(wait, 0.001))
            cache.reclaim_unfinished(self.location_dir)
            (self.entry / "files").mkdir(parents=True)
            self._created = True
            lease = try_exclusive(self.entry / LEASE_FILE)
            if lease is None:
                raise CacheUnwritable(f"cannot lease the new cache entry {self.entry}")
            self._lease = lease
            with cache.room(max(wait, ROOM_WAIT)):
                cache.make_room(need, self.entry)
                # Before the next writer counts; advisory, so not fsynced (a crash leaves an unfinished entry anyway).
                (self.entry / RESERVED_FILE).write_text(str(need))
            free = self.fs.free_bytes(self.entry)
        except OSError as exc:
            self.abort()
            raise disk_error(exc, self.entry) from None
        except BaseException:
            self.abort()
            raise
        if need > free:
            self.abort()
            raise DiskFull(f"cache disk full: {self.entry} has {free} bytes free, the model needs {need}")

    def open(self, file: ModelFile, direct: bool = False) -> FileSink:
        """A file of the entry; ``direct``: its ranges will be written from a buffer that stays in
        memory (the Job's), so they may bypass the page cache."""
        final = self.cache.file_path(self.entry, file.path)
        sink = FileSink(self.fs, final, file.obj.size, direct=direct)
        self.cache.file_path(self.entry, file.path)  # re-check: mkdir must not have met a link
        self._sinks.append(sink)
        return sink

    def finish(self, sink: FileSink, file: ModelFile, chunks: Sequence[tuple[int, int]], verified: str) -> None:
        """Rename one complete, verified file into the entry and remember its chunk checksums."""
        sink.finish()
        obj = file.obj
        self.written[file.path] = CachedFile(
            file.path, obj.key, obj.size, obj.etag, tuple(chunks), obj.version_id, verified
        )

    def commit(self, model_version: str) -> Path:
        """Write the manifest, then point current.json at this version; returns the files dir."""
        missing = [str(f.path) for f in self.files if f.path not in self.written]
        if missing:
            raise RuntimeError(f"commit before every file was written: {missing[:3]}")
        manifest = Manifest(
            uri=str(self.location),
            endpoint=self.endpoint,
            version=self.version,
            model_version=model_version,
            files=tuple(sorted(self.written.values(), key=lambda f: str(f.path))),
        )
        try:
            self._write_small(self.entry / MANIFEST, manifest.to_json())
            (self.entry / RESERVED_FILE).unlink(missing_ok=True)  # complete: its files are what it holds
            self._write_small(self.location_dir / "current.json", json.dumps({"version": self.version}))
        except OSError as exc:
            self.abort()
            raise disk_error(exc, self.entry) from None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self._created = False  # committed: a failure after this (the device's) leaves the entry cached
        return self.entry / "files"

    def abort(self) -> None:
        """Remove everything this writer wrote: a failed run leaves nothing behind."""
        for sink in self._sinks:
            sink.discard()
        if self._created:
            shutil.rmtree(self.entry, ignore_errors=True)
            self._created = False
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _write_small(self, path: Path, text: str) -> None:
        temp = path.parent / f".tmp-{secrets.token_hex(4)}"
        fd = self.fs.open_new(temp)
        try:
            self.fs.write_all(fd, memoryview(text.encode()))
            self.fs.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.fs.replace(temp, path)
        self.fs.fsync_dir(path.parent)
