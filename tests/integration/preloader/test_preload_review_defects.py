"""Defects from the preloader's review, end to end against moto: failed writes clean up, an unusable
cache is named, non-torch .bin files are copied, single-object keys are checked, S3 checksums hold."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from awscrt import checksums as crt
from boto3.s3.transfer import TransferConfig
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.config import load_config
from preloader.errors import CacheUnwritable, ChecksumMismatch, DiskFull, UnsafeKey, UnsafePickle
from preloader.files import FileSystem
from preloader.preload import preload

pytestmark = pytest.mark.integration


class _FailsMidWrite(FileSystem):
    """The seam: the third positional write fails the way a full disk does (ENOSPC)."""

    map_writes = False  # write range by range, the CUDA path's way, so there are writes to fail

    def __init__(self) -> None:
        self.writes = 0

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        self.writes += 1
        if self.writes == 3:
            raise OSError(28, "No space left on device")
        return super().pwrite(fd, data, offset)


def entry_dirs(cache: Path) -> list[Path]:
    return [p for p in (cache / "preloader-v2").glob("*/*") if p.is_dir()]


def test_a_run_failing_mid_write_removes_what_it_wrote_and_the_next_run_fits(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    big, small = sample_tensors(31, scale=4), sample_tensors(32)
    s3.put_object(Bucket=bucket, Key="big/model.safetensors", Body=safetensors_bytes(big))
    s3.put_object(Bucket=bucket, Key="small/model.safetensors", Body=safetensors_bytes(small))
    cache = tmp_path / "cache"
    with pytest.raises(DiskFull, match="cache disk full"):
        preload(make_config(f"s3://{bucket}/big/", "--cache-dir", str(cache)), fs=_FailsMidWrite())
    assert entry_dirs(cache) == [] and not list(cache.rglob(".tmp-*"))
    out = preload(make_config(f"s3://{bucket}/small/", "--cache-dir", str(cache)))
    assert out.result.cache == "miss"
    assert_bit_exact(small, out.tensors["model.safetensors"])
    assert preload(make_config(f"s3://{bucket}/big/", "--cache-dir", str(cache))).result.cache == "miss"


class _NoRoomToReserve(FileSystem):
    """The seam: reserving a file's blocks (before it is mapped) finds the disk full."""

    def fallocate(self, fd: int, size: int) -> None:
        raise OSError(28, "No space left on device")


def test_a_full_disk_is_found_when_reserving_not_by_a_fault_in_a_mapping(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(37)))
    cache = tmp_path / "cache"
    with pytest.raises(DiskFull, match="cache disk full"):
        preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(cache)), fs=_NoRoomToReserve())
    assert entry_dirs(cache) == [] and not list(cache.rglob(".tmp-*"))


def test_an_unfinished_version_left_by_a_killed_run_is_reclaimed(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(33)))
    cache = tmp_path / "cache"
    first = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(cache)))
    location = Path(first.result.cache_path or "").parent.parent
    killed = location / ("0" * 32)  # another version, killed before its manifest
    (killed / "files").mkdir(parents=True)
    (killed / "files" / ".tmp-deadbeef").write_bytes(b"x" * 1000)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(34)))
    assert preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(cache))).result.cache == "miss"
    assert not killed.exists()


def test_a_cache_directory_that_cannot_be_written_has_its_own_error(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="m.safetensors", Body=safetensors_bytes(sample_tensors(35)))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("a file where the cache should be")
    with pytest.raises(CacheUnwritable, match="cannot write the cache"):
        preload(make_config(f"s3://{bucket}/m.safetensors", "--cache-dir", str(not_a_dir / "cache")))


def test_a_bin_that_is_not_a_torch_file_is_kept_and_a_pickle_bin_still_checked(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    tensors = sample_tensors(36)
    tokenizer = b"\n\x0esentencepiece" + bytes(range(256)) * 10
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(tensors))
    s3.put_object(Bucket=bucket, Key="m/tokenizer.bin", Body=tokenizer)
    s3.put_object(Bucket=bucket, Key="m/openvino_model.bin", Body=b"\x00\x00\x80\x3f" * 100)
    out = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache")))
    assert out.tensors["tokenizer.bin"] == {} and out.tensors["openvino_model.bin"] == {}
    assert_bit_exact(tensors, out.tensors["model.safetensors"])
    assert Path(out.result.cache_path or "", "tokenizer.bin").read_bytes() == tokenizer

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    buffer = io.BytesIO()
    torch.save({"w": torch.ones(1), "x": Exploit()}, buffer)
    s3.put_object(Bucket=bucket, Key="evil/pytorch_model.bin", Body=buffer.getvalue())
    with pytest.raises(UnsafePickle, match="refused to unpickle"):
        preload(make_config(f"s3://{bucket}/evil/"))


@pytest.mark.parametrize("key", ["m/../model.safetensors", "m//model.safetensors"])
def test_a_single_object_key_with_dot_dot_or_empty_segments_is_refused(
    s3: Any, bucket: str, make_config: Any, key: str
) -> None:
    with pytest.raises(UnsafeKey):
        preload(make_config(f"s3://{bucket}/{key}"))


def test_a_multipart_object_is_checked_by_its_composite_checksum(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    """Real multipart upload in moto: CRC32 of the part CRC32s; ranges are cut at the part boundaries."""
    body = bytes(range(256)) * (12 * 4096)  # 12 MiB in three parts of 5 + 5 + 2 MiB
    config = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    s3.upload_fileobj(io.BytesIO(body), bucket, "mp/blob.dat", Config=config)
    cache = str(tmp_path / "cache")
    out = preload(make_config(f"s3://{bucket}/mp/", "--cache-dir", cache, "--part-size", "3MiB"))
    assert out.result.verified == "crc32-composite"
    assert Path(out.result.cache_path or "", "blob.dat").read_bytes() == body


class _LyingS3(BaseHTTPRequestHandler):
    """Serves BODY but advertises S3 checksums (or an MD5 ETag) of other bytes: corruption at rest."""

    body = bytes(range(256)) * 4096
    headers_to_send: dict[str, str] = {}

    def _head(self, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        for name, value in {**self.headers_to_send, **extra}.items():
            self.send_header(name, value)
        self.end_headers()

    def do_HEAD(self) -> None:
        self._head(200, len(self.body), {})

    def do_GET(self) -> None:
        start, end = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        chunk = self.body[start : end + 1]
        self._head(206, len(chunk), {"Content-Range": f"bytes {start}-{end}/{len(self.body)}"})
        self.wfile.write(chunk)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def lying_s3() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LyingS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "advertised",
    [
        {"x-amz-checksum-crc64nvme": base64.b64encode(crt.crc64nvme(b"other").to_bytes(8, "big")).decode()},
        {"x-amz-checksum-crc32c": base64.b64encode(crt.crc32c(b"other").to_bytes(4, "big")).decode()},
        {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(b"other").digest()).decode()},
        {"ETag": f'"{hashlib.md5(b"other").hexdigest()}"'},
    ],
)
def test_bytes_that_do_not_match_s3s_checksum_fail_and_nothing_is_cached(
    lying_s3: str, advertised: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_LyingS3, "headers_to_send", {"ETag": '"v1"', **advertised})
    env = {"AWS_ENDPOINT_URL": lying_s3, "awsAnonymousCredential": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    argv = ["s3://bkt/blob.dat", "--device", "cpu", "--progress", "never", "--part-size", "256KiB"]
    config = load_config([*argv, "--cache-dir", str(tmp_path / "cache")], env)
    with pytest.raises(ChecksumMismatch, match="do not match"):
        preload(config)
    assert entry_dirs(tmp_path / "cache") == []
    # The honest checksum of the same bytes passes.
    good = base64.b64encode(crt.crc64nvme(_LyingS3.body).to_bytes(8, "big")).decode()
    monkeypatch.setattr(_LyingS3, "headers_to_send", {"ETag": '"v1"', "x-amz-checksum-crc64nvme": good})
    assert preload(config).result.verified == "crc64nvme-full-object"


def test_a_250_character_key_segment_is_cached_and_filled_like_any_other(
    s3: Any, bucket: str, make_config: Any, env: dict[str, str], tmp_path: Path
) -> None:
    """It used to end as an internal error: the cache's temporary name embedded the final one."""
    from preloader.initializer import initialize

    name = "t" * 238 + ".safetensors"  # 250 characters
    body = safetensors_bytes(sample_tensors(38))
    s3.put_object(Bucket=bucket, Key=f"long/{name}", Body=body)
    out = preload(make_config(f"s3://{bucket}/long/", "--cache-dir", str(tmp_path / "cache")))
    assert Path(out.result.cache_path or "", name).read_bytes() == body
    argv = [
        f"s3://{bucket}/long/",
        str(tmp_path / "dest"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--progress",
        "never",
    ]
    assert initialize(load_config(argv, env)).cache == "hit"
    assert (tmp_path / "dest" / name).read_bytes() == body
