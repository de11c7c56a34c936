"""The Job's cache writes: each range goes from the tensors' own buffer to the cache file, on writer
threads of its own, its aligned body with O_DIRECT (no page cache to allocate, zero and copy into),
the rest through the page cache; filesystems without O_DIRECT, and devices that refuse an alignment,
get plain writes. End to end against moto; the FileSystem seam records which descriptor each byte
went through (the seam's "direct" descriptor is an ordinary one, so the logic is tested whatever the
test machine's filesystem supports)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.files import DIRECT_ALIGN, FileSystem, _direct_length
from preloader.preload import preload

pytestmark = pytest.mark.integration


class _RecordsDirect(FileSystem):
    def __init__(self, direct: bool = True, refuse_direct_writes: bool = False) -> None:
        self.direct = direct
        self.refuse = refuse_direct_writes
        self.direct_fds: set[int] = set()
        self.direct_bytes = 0
        self.buffered_bytes = 0
        self.threads: set[str] = set()

    def open_direct(self, path: Path) -> int | None:
        if not self.direct:
            return None  # like tmpfs before Linux 6.6
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self.direct_fds.add(fd)
        return fd

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        self.threads.add(threading.current_thread().name.rpartition("_")[0])
        if fd in self.direct_fds:
            if self.refuse:
                raise OSError(errno.EINVAL, "Invalid argument")
            assert offset % DIRECT_ALIGN == 0 and len(data) % DIRECT_ALIGN == 0
            self.direct_bytes += len(data)
        else:
            self.buffered_bytes += len(data)
        return super().pwrite(fd, data, offset)


def cached_bytes(result_path: str | None) -> bytes:
    return (Path(result_path or "") / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("fs", "direct_share"),
    [
        (_RecordsDirect(), "most"),
        (_RecordsDirect(direct=False), "none"),
        (_RecordsDirect(refuse_direct_writes=True), "none"),
    ],
    ids=["o-direct", "no-o-direct-filesystem", "device-refuses-alignment"],
)
def test_the_jobs_cache_is_written_from_its_buffer_bit_exact(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, fs: _RecordsDirect, direct_share: str
) -> None:
    tensors = sample_tensors(41, scale=4)
    body = safetensors_bytes(tensors)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=body)
    out = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache")), fs=fs)

    assert out.result.cache == "miss"
    assert_bit_exact(tensors, out.tensors["model.safetensors"])
    assert cached_bytes(out.result.cache_path) == body
    assert fs.direct_bytes + fs.buffered_bytes == len(body)
    # Written by the cache's own writer threads, so no receiving connection waited for the disk.
    assert fs.threads == {"cache-write"}
    if direct_share == "most":
        # 256 KiB parts: every part's body is aligned; only the last part's tail is not.
        assert fs.direct_bytes == len(body) - len(body) % DIRECT_ALIGN
    else:
        assert fs.direct_bytes == 0
    # The next run is a hit, its every range checked against the CRCs recorded while writing.
    again = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache")))
    assert again.result.cache == "hit"
    assert_bit_exact(tensors, again.tensors["model.safetensors"])


def test_only_aligned_writable_buffers_at_aligned_offsets_go_direct() -> None:
    page = DIRECT_ALIGN
    raw = bytearray(4 * page)
    view = memoryview(raw)
    skip = -_address(view) % page
    aligned = view[skip : skip + 3 * page]
    assert _direct_length(0, aligned) == 3 * page
    assert _direct_length(page, aligned[: page + 10]) == page  # the tail goes through the page cache
    assert _direct_length(1, aligned) == 0  # unaligned file offset
    assert _direct_length(0, aligned[1:]) == 0  # unaligned buffer address
    assert _direct_length(0, aligned[: page - 1]) == 0  # less than one block
    assert _direct_length(0, memoryview(bytes(2 * page))) == 0  # read-only


def _address(view: memoryview) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(view))
