"""The node-local model cache: layout, keys, atomic verified writes, verified reads.

Layout under ``--cache-dir``::

    preloader-v1/<location>/current.json        -> {"version": <version>}, replaced atomically
    preloader-v1/<location>/<version>/manifest.json
    preloader-v1/<location>/<version>/files/<path relative to the model root>

``location`` hashes (endpoint, bucket, key or prefix), so two models never share a directory;
``version`` hashes every file's (path, size, ETag), so two versions of one model never share one
either. Files are written under a temporary name, fsynced and renamed; the manifest, which
records each file's size, ETag and SHA-256 per chunk, is written last, so an entry without a
manifest is incomplete and never used. Every use re-hashes the bytes it reads against the
manifest, so a same-size corruption is caught; a failed check makes the entry a miss and the
download rewrites it.

Writers of one location are serialised by an exclusive ``flock`` on ``<location>/.lock``, held
from before the writer cleans up a killed run's leftovers until ``current.json`` is replaced; a
second run (two Jobs on a node, a retried pod) waits for it, bounded by a timeout, and then looks
the entry up again, so it becomes a hit instead of a second download. Readers never take the lock:
an entry is used only through its manifest and every chunk is verified. The kernel drops the lock
when its holder dies, so a killed run never leaves the location locked. All filesystem calls go
through ``FileSystem`` so tests can make a disk full without root.
"""

from __future__ import annotations

import errno
import fcntl
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

from preloader.errors import CacheBusy, DiskFull, TransferFailed, UnsafeKey
from preloader.plan import ByteRange, ModelFile, ObjectInfo, S3Location, is_md5_etag, safe_relative_path

log = logging.getLogger(__name__)

FORMAT_DIR = "preloader-v1"
LOCK_FILE = ".lock"
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class CacheCorrupt(Exception):
    """A cache entry failed verification; internal, it turns a hit into a repairing miss."""


def location_key(endpoint: str, location: S3Location) -> str:
    """Stable name for a model location; the endpoint is included so two S3s never collide."""
    raw = "\x00".join([endpoint.rstrip("/"), location.bucket, location.key])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def version_key(files: Sequence[ModelFile]) -> str:
    """Stable name for one version of a model: every file's path, size and ETag."""
    listing = sorted((str(f.path), f.obj.size, f.obj.etag) for f in files)
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CachedFile:
    path: PurePosixPath
    key: str
    size: int
    etag: str
    sha256: tuple[str, ...]  # one digest per chunk_size bytes, so verification runs in parallel

    @property
    def model_file(self) -> ModelFile:
        return ModelFile(ObjectInfo(self.key, self.size, self.etag), self.path)


@dataclass(frozen=True)
class Manifest:
    uri: str
    endpoint: str
    version: str
    chunk_size: int
    files: tuple[CachedFile, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "uri": self.uri,
                "endpoint": self.endpoint,
                "version": self.version,
                "chunk_size": self.chunk_size,
                "files": [
                    {"path": str(f.path), "key": f.key, "size": f.size, "etag": f.etag, "sha256": list(f.sha256)}
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
            chunk = int(raw["chunk_size"])
            files = tuple(
                CachedFile(
                    path=safe_relative_path(str(f["path"])),
                    key=str(f["key"]),
                    size=int(f["size"]),
                    etag=str(f["etag"]),
                    sha256=tuple(str(d) for d in f["sha256"]),
                )
                for f in raw["files"]
            )
            manifest = Manifest(str(raw["uri"]), str(raw["endpoint"]), str(raw["version"]), chunk, files)
        except (ValueError, KeyError, TypeError, UnsafeKey) as exc:
            raise CacheCorrupt(f"unreadable manifest: {exc}") from None
        for f in files:
            if chunk <= 0 or len(f.sha256) != -(-f.size // chunk):
                raise CacheCorrupt(f"manifest has {len(f.sha256)} digests for {f.path}")
        return manifest


def chunk_digests(data: memoryview, chunk_size: int) -> tuple[str, ...]:
    return tuple(
        hashlib.sha256(data[start : start + chunk_size]).hexdigest() for start in range(0, len(data), chunk_size)
    )


class FileSystem:
    """The OS calls the cache makes; a seam so tests can simulate a full disk without root."""

    def free_bytes(self, path: Path) -> int:
        return shutil.disk_usage(path).free

    def open_new(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def write_all(self, fd: int, data: memoryview) -> None:
        """os.write may write less than asked; loop on `write` so a test seam sees every call."""
        done = 0
        while done < len(data):
            done += self.write(fd, data[done:])

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def safe_join(base: Path, rel: PurePosixPath) -> Path:
    """base/rel, refusing any existing symlink on the way and anything resolving outside base."""
    current = base
    for part in safe_relative_path(str(rel)).parts:
        current = current / part
        if current.is_symlink():
            raise UnsafeKey(f"{rel}: {current} is a symbolic link; refusing to follow it out of the cache")
    root = os.path.realpath(base)
    if os.path.commonpath([root, os.path.realpath(current)]) != root:
        raise UnsafeKey(f"{rel} resolves outside the cache directory")
    return current


class CacheLock:
    """An exclusive flock on one location's lock file; ``release`` (or leaving ``with``) drops it."""

    def __init__(self, path: Path, fd: int, waited: float) -> None:
        self.path = path
        self.waited = waited  # seconds spent waiting for another holder; 0.0 when it was free
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of this open file drops the flock

    def __enter__(self) -> CacheLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelCache:
    def __init__(self, root: Path, fs: FileSystem | None = None) -> None:
        self.root = root
        self.fs = fs or FileSystem()

    def location_dir(self, endpoint: str, location: S3Location) -> Path:
        return self.root / FORMAT_DIR / location_key(endpoint, location)

    def lock(
        self,
        endpoint: str,
        location: S3Location,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> CacheLock:
        """Take the location's writer lock, waiting up to ``timeout`` seconds for another run.

        Raises CacheBusy when it stays held, DiskFull/TransferFailed when the lock file cannot be
        created. ``sleep`` and ``clock`` are seams for tests.
        """
        where = self.location_dir(endpoint, location)
        path = where / LOCK_FILE
        try:
            where.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _disk_error(exc, path) from None
        started = clock()
        delay = 0.05
        logged = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return CacheLock(path, fd, clock() - started if logged else 0.0)
                except BlockingIOError:
                    pass
                waited = clock() - started
                if waited >= timeout:
                    raise CacheBusy(
                        f"another run has been writing the cache entry for {location} for over {timeout:g}s "
                        f"(lock {path}); raise --lock-timeout, or check for a stuck preloader on this node"
                    )
                if not logged:
                    log.info("another run is writing the cache entry for %s; waiting for it (lock %s)", location, path)
                    logged = True
                sleep(min(delay, max(timeout - waited, 0.0)))
                delay = min(delay * 2, 2.0)
        except BaseException:
            os.close(fd)
            raise

    def lookup(self, endpoint: str, location: S3Location) -> tuple[Manifest, Path] | None:
        """The current complete entry for a location, or None; a broken one is logged and ignored."""
        where = self.location_dir(endpoint, location)
        try:
            current = json.loads((where / "current.json").read_text())
            version = str(current["version"])
            if not version.isalnum():
                raise CacheCorrupt(f"bad version name {version!r}")
            entry = where / version
            manifest = Manifest.from_json((entry / "manifest.json").read_text())
        except FileNotFoundError:
            return None
        except (CacheCorrupt, ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("cache entry for %s is unusable (%s); it will be rewritten", location, exc)
            return None
        return manifest, entry

    def file_path(self, entry: Path, path: PurePosixPath) -> Path:
        return safe_join(entry / "files", path)

    def read_verified(self, entry: Path, cached: CachedFile, chunk: int, rng: ByteRange, dest: memoryview) -> None:
        """Read one chunk-aligned range into dest and check it against the recorded digest."""
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
        if hashlib.sha256(dest).hexdigest() != cached.sha256[rng.start // chunk]:
            raise CacheCorrupt(f"{cached.path}: bytes {rng.start}-{rng.end} do not match the recorded SHA-256")

    def writer(
        self, endpoint: str, location: S3Location, files: Sequence[ModelFile], chunk: int, lock: CacheLock
    ) -> EntryWriter:
        """A writer for a new entry; ``lock`` must be this location's lock, held until ``commit``."""
        return EntryWriter(self, endpoint, location, files, chunk, lock)


def _disk_error(exc: OSError, path: Path) -> Exception:
    if exc.errno in _FULL:
        return DiskFull(f"cache disk full while writing {path}: {exc.strerror}")
    return TransferFailed(f"cannot write the cache at {path}: {exc.strerror or exc}")


class EntryWriter:
    """Writes one version of one model into the cache; ``commit`` makes it visible.

    Only one writer per location at a time: the caller holds the location's ``CacheLock``, so the
    ``.tmp-*`` files removed here can only be a killed run's, never a live one's.
    """

    def __init__(
        self,
        cache: ModelCache,
        endpoint: str,
        location: S3Location,
        files: Sequence[ModelFile],
        chunk: int,
        lock: CacheLock,
    ) -> None:
        self.cache = cache
        self.fs = cache.fs
        self.endpoint = endpoint
        self.location = location
        self.chunk = chunk
        self.version = version_key(files)
        self.location_dir = cache.location_dir(endpoint, location)
        self.entry = self.location_dir / self.version
        self.written: list[CachedFile] = []
        if not lock.held or lock.path != self.location_dir / LOCK_FILE:
            raise RuntimeError(f"writing {self.entry} needs the held lock {self.location_dir / LOCK_FILE}")
        try:
            (self.entry / "files").mkdir(parents=True, exist_ok=True)
            (self.entry / "manifest.json").unlink(missing_ok=True)  # being rewritten: not complete
            for stale in self.entry.rglob(".tmp-*"):
                stale.unlink(missing_ok=True)  # left by a killed run: partial, never used
            free = self.fs.free_bytes(self.entry)
        except OSError as exc:
            raise self._disk_error(exc, self.entry) from None
        need = sum(f.obj.size for f in files)
        if need > free:
            raise DiskFull(f"cache disk full: {self.entry} has {free} bytes free, the model needs {need}")

    def _disk_error(self, exc: OSError, path: Path) -> Exception:
        return _disk_error(exc, path)

    def write_file(self, file: ModelFile, data: memoryview) -> CachedFile:
        """Atomically write one file, checking size and (single-part) MD5 ETag before the rename."""
        final = self.cache.file_path(self.entry, file.path)
        if len(data) != file.obj.size:
            raise TransferFailed(f"{file.obj.key}: have {len(data)} bytes, S3 said {file.obj.size}")
        temp = final.parent / f".tmp-{final.name}-{secrets.token_hex(4)}"
        md5 = hashlib.md5(usedforsecurity=False) if is_md5_etag(file.obj.etag) else None
        digests: list[str] = []
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.cache.file_path(self.entry, file.path)  # re-check: mkdir must not have met a link
            fd = self.fs.open_new(temp)
            try:
                for start in range(0, len(data), self.chunk):
                    piece = data[start : start + self.chunk]
                    digests.append(hashlib.sha256(piece).hexdigest())
                    if md5 is not None:
                        md5.update(piece)
                    self.fs.write_all(fd, piece)
                self.fs.fsync(fd)
            finally:
                os.close(fd)
            if md5 is not None and md5.hexdigest() != file.obj.etag.strip('"').lower():
                raise TransferFailed(f"{file.obj.key}: downloaded bytes do not match the object's MD5 ETag")
            self.fs.replace(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise self._disk_error(exc, final) from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        cached = CachedFile(file.path, file.obj.key, file.obj.size, file.obj.etag, tuple(digests))
        self.written.append(cached)
        return cached

    def commit(self) -> Path:
        """Write the manifest, then point current.json at this version; returns the files dir."""
        manifest = Manifest(
            uri=str(self.location),
            endpoint=self.endpoint,
            version=self.version,
            chunk_size=self.chunk,
            files=tuple(sorted(self.written, key=lambda f: str(f.path))),
        )
        try:
            self._write_small(self.entry / "manifest.json", manifest.to_json())
            self._write_small(self.location_dir / "current.json", json.dumps({"version": self.version}))
        except OSError as exc:
            raise self._disk_error(exc, self.entry) from None
        return self.entry / "files"

    def _write_small(self, path: Path, text: str) -> None:
        temp = path.parent / f".tmp-{path.name}-{secrets.token_hex(4)}"
        fd = self.fs.open_new(temp)
        try:
            self.fs.write_all(fd, memoryview(text.encode()))
            self.fs.fsync(fd)
        finally:
            os.close(fd)
        self.fs.replace(temp, path)
        self.fs.fsync_dir(path.parent)
