"""Every failure a user must act on exits non-zero with a message naming the problem."""

from __future__ import annotations

import io
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import moto.settings
import pytest
import torch
from model_files import safetensors_bytes, sample_tensors

from preloader.__main__ import main
from preloader.config import S3Settings, TransferSettings
from preloader.errors import (
    AccessDenied,
    BucketNotFound,
    CorruptModel,
    DeviceOutOfMemory,
    DiskFull,
    EmptyPrefix,
    ObjectNotFound,
    TransferFailed,
    UnsafePickle,
)
from preloader.files import FileSystem
from preloader.plan import ByteRange, ObjectInfo
from preloader.preload import preload
from preloader.s3 import RangeFetcher, S3Client

pytestmark = pytest.mark.integration


def test_missing_bucket(make_config: Any) -> None:
    with pytest.raises(BucketNotFound, match=r"no-such-bucket.*bucket does not exist"):
        preload(make_config("s3://no-such-bucket/model.safetensors"))


def test_missing_key(bucket: str, make_config: Any) -> None:
    with pytest.raises(ObjectNotFound, match="no such key"):
        preload(make_config(f"s3://{bucket}/nope.safetensors"))


def test_empty_prefix(s3: Any, bucket: str, make_config: Any) -> None:
    s3.put_object(Bucket=bucket, Key="other/x.safetensors", Body=b"x")
    with pytest.raises(EmptyPrefix, match="no objects under this prefix"):
        preload(make_config(f"s3://{bucket}/empty/"))


def test_exit_code_and_json_name_the_problem(
    bucket: str, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    code = main([f"s3://{bucket}/gone/", "--device", "cpu", "--termination-log", str(log)], env)
    assert code == EmptyPrefix.exit_code != 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["error"] == "EmptyPrefix" and "no objects" in line["message"]
    assert json.loads(log.read_text()) == line


def test_access_denied_for_a_user_without_permission(
    s3: Any, s3_endpoint: str, bucket: str, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real moto IAM enforcement: a user with no policy is refused by the server itself.

    (moto cannot evaluate unsigned requests once auth is on: it answers 500, so the anonymous
    path against a private bucket is not tested here.)
    """
    s3.put_object(Bucket=bucket, Key="m.safetensors", Body=safetensors_bytes(sample_tensors(1)))
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"nobody-{bucket}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # enforce from now on
    with pytest.raises(AccessDenied, match="access denied"):
        preload(make_config(f"s3://{bucket}/m.safetensors"))


def test_corrupt_safetensors_header(s3: Any, bucket: str, make_config: Any) -> None:
    body = bytearray(safetensors_bytes(sample_tensors(2)))
    body[10:20] = b"!!!!!!!!!!"  # inside the JSON header
    s3.put_object(Bucket=bucket, Key="bad.safetensors", Body=bytes(body))
    with pytest.raises(CorruptModel, match=r"bad\.safetensors"):
        preload(make_config(f"s3://{bucket}/bad.safetensors"))


def test_truncated_safetensors(s3: Any, bucket: str, make_config: Any) -> None:
    body = safetensors_bytes(sample_tensors(3))
    s3.put_object(Bucket=bucket, Key="short.safetensors", Body=body[:-1000])
    with pytest.raises(CorruptModel, match="truncated"):
        preload(make_config(f"s3://{bucket}/short.safetensors"))


def test_model_bigger_than_device_memory_is_refused_before_download(s3: Any, bucket: str, make_config: Any) -> None:
    s3.put_object(Bucket=bucket, Key="big.safetensors", Body=safetensors_bytes(sample_tensors(4)))
    with pytest.raises(DeviceOutOfMemory, match=r"needs \d+ bytes on cpu but only 1000 bytes"):
        preload(make_config(f"s3://{bucket}/big.safetensors", "--max-device-bytes", "1000"))


def test_malicious_pickle_is_refused_and_never_executed(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (subprocess.call, (["touch", str(marker)],))

    buffer = io.BytesIO()
    torch.save({"weight": torch.ones(2), "payload": Exploit()}, buffer)
    s3.put_object(Bucket=bucket, Key="evil/model.pt", Body=buffer.getvalue())
    with pytest.raises(UnsafePickle, match="refused to unpickle"):
        preload(make_config(f"s3://{bucket}/evil/model.pt"))
    assert not marker.exists()


class _FullDisk(FileSystem):
    """The seam: free space looks fine, then the write fails the way a full disk does."""

    map_writes = False  # write range by range, the CUDA path's way, so there are writes to fail

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        raise OSError(28, "No space left on device")


def test_full_disk_during_write_via_filesystem_seam(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(5)))
    with pytest.raises(DiskFull, match="cache disk full"):
        preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache")), fs=_FullDisk())
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem; needs mount privileges (root in CI), skipped otherwise."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?); the FileSystem-seam test covers the write path")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_on_a_real_tiny_filesystem(s3: Any, bucket: str, make_config: Any, tiny_tmpfs: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(6, scale=4)))
    with pytest.raises(DiskFull, match="cache disk full"):
        preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(tiny_tmpfs)))


class _Truncating(BaseHTTPRequestHandler):
    """Serves 1000 bytes; the first GET promises them all and sends only half, then hangs up."""

    body = bytes(range(256)) * 4
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        start, end = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        chunk = self.body[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/1000")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if type(self).calls == 1:
            self.wfile.write(chunk[: len(chunk) // 2])
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args: Any) -> None:
        pass


def test_truncated_range_is_retried_not_accepted() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Truncating)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        client = S3Client(S3Settings(endpoint_url=endpoint, anonymous=True, region="us-east-1"))
        sleeps: list[float] = []
        fetcher = RangeFetcher(client, TransferSettings(max_attempts=3), sleep=sleeps.append, jitter=lambda: 1.0)
        dest = bytearray(1000)
        progress: list[int] = []
        fetcher.fetch("b", ObjectInfo("k", 1000, ""), ByteRange(0, 999), memoryview(dest), progress.append)
        assert bytes(dest) == _Truncating.body[:1000]
        assert _Truncating.calls == 2 and len(sleeps) == 1
        assert sum(progress) == 1000  # the half-read first attempt was rewound

        # An answer for another object size is refused outright, not retried into a success.
        with pytest.raises(TransferFailed, match="object size changed"):
            fetcher.fetch("b", ObjectInfo("k", 2000, ""), ByteRange(0, 999), memoryview(dest), progress.append)
    finally:
        server.shutdown()
