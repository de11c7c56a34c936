"""Ranged GETs against a small local HTTP server: presigned-URL refresh on 403, forward proxies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from preloader.config import S3Settings, TransferSettings
from preloader.errors import AccessDenied
from preloader.plan import ByteRange, ObjectInfo
from preloader.s3 import RangeFetcher, S3Client

pytestmark = pytest.mark.integration

BODY = bytes(range(256)) * 4


class _Server(ThreadingHTTPServer):
    refuse: set[str]
    seen: list[tuple[str, str, str]]  # (request target, Host header, X-Amz-Signature)


class _Handler(BaseHTTPRequestHandler):
    """Serves BODY in ranges; answers 403 to any request signed with a signature in ``refuse``."""

    server: _Server

    def do_GET(self) -> None:
        signature = parse_qs(urlsplit(self.path).query).get("X-Amz-Signature", [""])[0]
        self.server.seen.append((self.path, self.headers.get("Host", ""), signature))
        if signature in self.server.refuse:
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start, end = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        chunk = BODY[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(BODY)}")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.refuse, srv.seen = set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class _CountingPresigner:
    """Test double for S3Client: ``presign_get`` hands out URLs signed sig1, sig2, ... in turn, as
    botocore would after refreshing expired temporary credentials (real presigning within one
    second with unchanged credentials yields the same signature, so it cannot show the refresh)."""

    def __init__(self, endpoint: str, proxies: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self.settings = S3Settings(endpoint_url=endpoint, proxies=proxies or {})
        self.presigned = 0

    def presign_get(self, bucket: str, key: str) -> str:
        self.presigned += 1
        return f"{self.endpoint}/{bucket}/{key}?X-Amz-Signature=sig{self.presigned}"


def _fetcher(client: Any, sleeps: list[float]) -> RangeFetcher:
    return RangeFetcher(client, TransferSettings(max_attempts=3), sleep=sleeps.append, jitter=lambda: 1.0)


def test_403_presigns_again_and_retries_the_range_once(server: _Server) -> None:
    client = _CountingPresigner(f"http://127.0.0.1:{server.server_address[1]}")
    server.refuse = {"sig1"}  # the first URL's credentials have expired
    sleeps: list[float] = []
    fetcher = _fetcher(client, sleeps)
    dest = bytearray(1000)
    progress: list[int] = []
    fetcher.fetch("b", ObjectInfo("k", 1024, ""), ByteRange(0, 999), memoryview(dest), progress.append)
    assert bytes(dest) == BODY[:1000] and sum(progress) == 1000
    assert [sig for _, _, sig in server.seen] == ["sig1", "sig2"]
    assert client.presigned == 2 and sleeps == []  # no backoff: a refresh is not a failure
    # The fresh URL is the one reused for later ranges.
    fetcher.fetch("b", ObjectInfo("k", 1024, ""), ByteRange(1000, 1023), memoryview(dest)[:24], progress.append)
    assert [sig for _, _, sig in server.seen][-1] == "sig2" and client.presigned == 2


def test_a_second_403_with_a_fresh_url_is_access_denied(server: _Server) -> None:
    client = _CountingPresigner(f"http://127.0.0.1:{server.server_address[1]}")
    server.refuse = {"sig1", "sig2", "sig3"}
    fetcher = _fetcher(client, [])
    with pytest.raises(AccessDenied, match=r"access denied \(403\).*freshly presigned"):
        fetcher.fetch("b", ObjectInfo("k", 1024, ""), ByteRange(0, 999), memoryview(bytearray(1000)), lambda n: None)
    assert [sig for _, _, sig in server.seen] == ["sig1", "sig2"]


def test_http_endpoint_is_fetched_through_the_forward_proxy(server: _Server) -> None:
    """The local server plays the proxy; the endpoint's name does not even resolve."""
    proxy = f"http://user:p%40ss@127.0.0.1:{server.server_address[1]}"
    settings = S3Settings(
        endpoint_url="http://s3.invalid:9000",
        region="us-east-1",
        anonymous=True,
        addressing_style="path",
        proxies={"http": proxy, "no": "localhost,.cluster.local"},
    )
    fetcher = _fetcher(S3Client(settings), [])
    dest = bytearray(100)
    fetcher.fetch("b", ObjectInfo("k", 1024, ""), ByteRange(24, 123), memoryview(dest), lambda n: None)
    assert bytes(dest) == BODY[24:124]
    [(target, host, _)] = server.seen
    assert target.startswith("http://s3.invalid:9000/b/k") and host == "s3.invalid:9000"
