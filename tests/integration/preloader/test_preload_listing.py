"""What a run asks S3 before it serves or fetches a model: a prefix's hit is checked by its LIST and
authorised by one HEAD (read permission; not a HEAD per object); a miss HEADs each listed object for
its checksum, and a HEAD that disagrees with the LIST (another size or ETag) means the object changed
in between."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from model_files import safetensors_bytes, sample_tensors

from preloader.config import load_config
from preloader.errors import AccessDenied, ObjectChanged
from preloader.initializer import initialize
from preloader.plan import ObjectInfo, S3Location
from preloader.preload import preload
from preloader.s3 import S3Client

pytestmark = pytest.mark.integration


@pytest.fixture
def heads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key the preloader HEADs, in order (the seam: S3Client.head)."""
    seen: list[str] = []
    real = S3Client.head

    def counting(self: S3Client, location: S3Location) -> ObjectInfo:
        seen.append(location.key)
        return real(self, location)

    monkeypatch.setattr(S3Client, "head", counting)
    return seen


def test_a_prefix_hit_lists_and_heads_one_object(
    s3: Any, bucket: str, make_config: Any, env: dict[str, str], tmp_path: Path, heads: list[str]
) -> None:
    """It used to HEAD every object after listing them: 2,000 files took seconds to hit, not a LIST.
    The LIST's ETags and sizes are the freshness check; one HEAD asks whether the caller may read
    (S3 grants a LIST by s3:ListBucket alone)."""
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"m/shard-{i}.safetensors", Body=safetensors_bytes(sample_tensors(60 + i)))
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"))
    assert preload(config).result.cache == "miss"
    assert len(heads) == 6  # the read check, then every object (checksums, version ids) for the download
    heads.clear()
    assert preload(config).result.cache == "hit"
    assert heads == ["m/shard-0.safetensors"]
    heads.clear()
    argv = [f"s3://{bucket}/m/", str(tmp_path / "dest"), "--cache-dir", str(tmp_path / "cache"), "--progress", "never"]
    dest = load_config(argv, env)
    assert initialize(dest).cache == "hit"
    assert heads == ["m/shard-0.safetensors"]


def test_a_caller_who_may_list_but_not_read_gets_no_hit(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto does not enforce IAM here, so S3's refusal of the HEAD (s3:GetObject denied while
    s3:ListBucket is allowed) is stood in for at the S3Client.head seam."""
    for i in range(2):
        s3.put_object(Bucket=bucket, Key=f"p/shard-{i}.safetensors", Body=safetensors_bytes(sample_tensors(70 + i)))
    config = make_config(f"s3://{bucket}/p/", "--cache-dir", str(tmp_path / "cache"))
    assert preload(config).result.cache == "miss"

    def refused(self: S3Client, location: S3Location) -> ObjectInfo:
        raise AccessDenied(f"s3://{location.bucket}/{location.key}: Access Denied")

    monkeypatch.setattr(S3Client, "head", refused)
    with pytest.raises(AccessDenied):
        preload(config)


def test_a_single_object_hit_is_still_checked_by_its_head(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, heads: list[str]
) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(66)))
    config = make_config(f"s3://{bucket}/m/model.safetensors", "--cache-dir", str(tmp_path / "cache"))
    assert preload(config).result.cache == "miss"
    assert heads == ["m/model.safetensors"]  # one HEAD serves the check and the download
    assert preload(config).result.cache == "hit"
    assert heads == ["m/model.safetensors"] * 2


class _ListDisagrees(BaseHTTPRequestHandler):
    """An S3 whose LIST describes ``m/blob.dat`` with ``listed_size`` / ``listed_etag``, while HEAD and
    GET serve BODY with ETag "v1": the object was replaced between the LIST and the HEAD."""

    body = bytes(range(256)) * 1024
    listed_size = len(body)
    listed_etag = '"v1"'

    def _send(self, status: int, length: int, headers: dict[str, str], payload: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def do_HEAD(self) -> None:
        self._send(200, len(self.body), {"ETag": '"v1"'})

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if "list-type=2" in url.query:
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                "<Name>bkt</Name><Prefix>m/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
                "<IsTruncated>false</IsTruncated><Contents><Key>m/blob.dat</Key>"
                "<LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                f"<ETag>{self.listed_etag.replace(chr(34), '&quot;')}</ETag><Size>{self.listed_size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
            ).encode()
            self._send(200, len(xml), {"Content-Type": "application/xml"}, xml)
            return
        start, end = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        chunk = self.body[start : end + 1]
        self._send(206, len(chunk), {"ETag": '"v1"', "Content-Range": f"bytes {start}-{end}/{len(self.body)}"}, chunk)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def disagreeing_s3() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ListDisagrees)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("listed", "what"),
    [({"listed_size": len(_ListDisagrees.body) - 1000}, "size"), ({"listed_etag": '"v0"'}, "ETag")],
)
def test_a_head_that_disagrees_with_the_listing_is_a_changed_object(
    disagreeing_s3: str, listed: dict[str, Any], what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used not to be noticed: HEAD's values silently replaced the listed ones (and a check built on
    the listed size would have reported ChecksumMismatch, blaming the bytes for a changed object)."""
    for name, value in listed.items():
        monkeypatch.setattr(_ListDisagrees, name, value)
    env = {"AWS_ENDPOINT_URL": disagreeing_s3, "awsAnonymousCredential": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    cache = tmp_path / "cache"
    argv = ["s3://bkt/m/", "--device", "cpu", "--progress", "never", "--cache-dir", str(cache)]
    with pytest.raises(ObjectChanged, match=f"changed between.*{what}") as raised:
        preload(load_config(argv, env))
    assert raised.value.exit_code == 5 and raised.value.reason == "ObjectChanged"
    assert not [p for p in (cache / "preloader-v2").glob("*/*") if p.is_dir()]
    # Once LIST and HEAD agree again, the same run succeeds.
    monkeypatch.setattr(_ListDisagrees, "listed_size", len(_ListDisagrees.body))
    monkeypatch.setattr(_ListDisagrees, "listed_etag", '"v1"')
    assert preload(load_config(argv, env)).result.cache == "miss"
