"""A read-only cache (baked into a node image, a read-only hostPath or PersistentVolume, a directory
the pod's user may not write) still serves verified hits, and never a corrupt one.

The cache is made read-only twice over: ``chmod -R a-w``, which is what a non-root run meets, and,
since the tests may run as root (which write bits do not stop), through the OS calls themselves:
every open of a path under the cache that asks to write or create fails with EROFS or EACCES, as
on a read-only mount, and so do ``utime``, ``mkdir`` and hard links out of it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.config import load_config
from preloader.errors import CacheUnwritable
from preloader.initializer import initialize
from preloader.preload import preload

pytestmark = pytest.mark.integration

_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def make_read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, int], None]]:
    made: list[Path] = []

    def make(cache: Path, code: int) -> None:
        _chmod_tree(cache, writable=False)
        made.append(cache)
        inside = str(cache.resolve()) + os.sep

        def refuse(path: Any) -> OSError | None:
            if str(Path(os.fsdecode(path)).resolve()).startswith(inside) or Path(os.fsdecode(path)) == cache:
                return OSError(code, os.strerror(code), os.fsdecode(path))
            return None

        real_open, real_utime, real_mkdir, real_link = os.open, os.utime, os.mkdir, os.link

        def open_(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            if flags & _WRITES and (exc := refuse(path)) is not None:
                raise exc
            return real_open(path, flags, mode, dir_fd=dir_fd)

        def utime(path: Any, *args: Any, **kwargs: Any) -> None:
            if (exc := refuse(path)) is not None:
                raise exc
            real_utime(path, *args, **kwargs)

        def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            if (exc := refuse(path)) is not None:
                raise FileExistsError(errno.EEXIST, "File exists", path) if os.path.isdir(path) else exc
            real_mkdir(path, mode, dir_fd=dir_fd)

        def link(src: Any, dst: Any, **kwargs: Any) -> None:
            if refuse(src) is not None:  # a read-only mount is another mount: links out of it cross devices
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fsdecode(src))
            real_link(src, dst, **kwargs)

        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "utime", utime)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "link", link)

    yield make
    for cache in made:
        _chmod_tree(cache, writable=True)  # so tmp_path can be removed by a non-root run


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only-mount", "no-write-permission"])
def test_a_read_only_cache_serves_verified_hits(
    s3: Any, bucket: str, make_config: Any, env: dict[str, str], tmp_path: Path, code: int,
    make_read_only: Callable[[Path, int], None],
) -> None:
    """It used to fail: taking the entry's lease opened its lease file for writing, a refused lease was a
    miss, and the miss could not take the writer lock: CacheUnwritable on a node that had the model."""
    tensors = sample_tensors(70)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(tensors))
    s3.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"layers": 2}')
    cache = tmp_path / "cache"
    filled = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(cache)))
    assert filled.result.cache == "miss"
    before = sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*"))

    make_read_only(cache, code)
    hit = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(cache)))
    assert hit.result.cache == "hit" and hit.result.fetched_bytes == 0
    assert hit.result.cache_path == filled.result.cache_path
    assert_bit_exact(tensors, hit.tensors["model.safetensors"])
    argv = [f"s3://{bucket}/m/", str(tmp_path / "dest"), "--cache-dir", str(cache), "--progress", "never"]
    served = initialize(load_config(argv, env))
    assert served.cache == "hit" and served.fetched_bytes == 0
    assert (tmp_path / "dest" / "config.json").read_bytes() == b'{"layers": 2}'
    assert sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*")) == before  # nothing written


def test_a_corrupt_entry_in_a_read_only_cache_is_never_served(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, make_read_only: Callable[[Path, int], None]
) -> None:
    """Hits are verified as ever; a corrupt one cannot be repaired in place, so the run fails, naming the cache."""
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(71)))
    cache = tmp_path / "cache"
    filled = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(cache)))
    target = Path(filled.result.cache_path or "", "model.safetensors")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    make_read_only(cache, errno.EROFS)
    with pytest.raises(CacheUnwritable, match="Read-only file system"):
        preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(cache)))
