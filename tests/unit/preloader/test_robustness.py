"""The output contract on unexpected failures, torch without OutOfMemoryError, proxies, URL reuse."""

from __future__ import annotations

import base64
import http.client
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import preloader.__main__ as cli
import preloader.device
from preloader.config import S3Settings, TransferSettings, load_config, proxies_from_env
from preloader.errors import DeviceOutOfMemory, InternalError, Interrupted, UsageError
from preloader.s3 import URL_REUSE_SECONDS, Proxy, RangeFetcher, proxy_for


class TestOutputContract:
    @pytest.mark.parametrize("failure", [RuntimeError("CUDA error: an illegal memory access"), MemoryError()])
    def test_unexpected_exception_still_ends_with_a_json_line(
        self,
        failure: Exception,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        def broken(config: Any) -> Any:
            raise failure

        monkeypatch.setattr(cli, "run", broken)
        log = tmp_path / "termination-log"
        code = cli.main(["s3://b/m/", "--device", "cpu", "--termination-log", str(log)], {})
        assert code == InternalError.exit_code == 70
        out = capsys.readouterr().out
        line = json.loads(out.strip().splitlines()[-1])
        assert line == {
            "model": "s3://b/m/",
            "error": "InternalError",
            "message": f"{type(failure).__name__}: {failure}",
            "exit_code": 70,
        }
        assert json.loads(log.read_text()) == line
        # The traceback goes to the log (stderr in a real run; pytest captures logging itself).
        assert "Traceback" in caplog.text and type(failure).__name__ in caplog.text

    def test_keyboard_interrupt_exits_130_with_a_json_line(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def interrupted(config: Any) -> Any:
            raise KeyboardInterrupt

        monkeypatch.setattr(cli, "run", interrupted)
        code = cli.main(["s3://b/m/", "--termination-log", str(tmp_path / "t")], {})
        assert code == Interrupted.exit_code == 130
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"] == "Interrupted"


class _FakeTensor:
    def to(self, device: torch.device, non_blocking: bool = False) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_device_oom_is_caught_on_a_torch_without_torch_OutOfMemoryError(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch < 2.5 has only torch.cuda.OutOfMemoryError; the module must import and map it."""
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
    try:
        device = importlib.reload(preloader.device)
        assert device.OUT_OF_MEMORY is torch.cuda.OutOfMemoryError
        with pytest.raises(DeviceOutOfMemory, match="out of memory on cuda:0"):
            device.to_device(_FakeTensor(), torch.device("cuda", 0))  # type: ignore[arg-type]
    finally:
        monkeypatch.undo()
        importlib.reload(preloader.device)


def test_lock_timeout_flag() -> None:
    assert load_config(["s3://b/k"], {}).lock_timeout == 1800
    assert load_config(["s3://b/k", "--lock-timeout", "2.5"], {}).lock_timeout == 2.5
    with pytest.raises(UsageError, match="lock-timeout"):
        load_config(["s3://b/k", "--lock-timeout", "-1"], {})


class TestProxies:
    def test_read_from_env_like_urllib(self) -> None:
        env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "HTTP_PROXY": "http://p:3"}
        assert proxies_from_env({**env, "NO_PROXY": "a,b"}) == {
            "https": "http://lower:2",
            "http": "http://p:3",
            "no": "a,b",
        }
        assert "http" not in proxies_from_env({**env, "REQUEST_METHOD": "GET"})  # CGI: HTTP_PROXY is a header
        assert load_config(["s3://b/k"], {"HTTPS_PROXY": "http://p:3128"}).s3.proxies == {"https": "http://p:3128"}

    @pytest.mark.parametrize(
        ("scheme", "netloc", "expected"),
        [
            ("https", "s3.us-east-1.amazonaws.com", Proxy("proxy.corp", 3128)),
            ("https", "bucket.s3.amazonaws.com:443", Proxy("proxy.corp", 3128)),
            ("http", "minio:9000", Proxy("plain.corp", 80)),
            ("https", "minio.models.svc.cluster.local:9000", None),  # NO_PROXY suffix .cluster.local
            ("https", "internal.example", None),  # NO_PROXY exact host
            ("https", "sub.internal.example", None),  # ... and its subdomains
            ("https", "notinternal.example", Proxy("proxy.corp", 3128)),
            ("ftp", "x", None),  # no proxy for that scheme
        ],
    )
    def test_decision(self, scheme: str, netloc: str, expected: Proxy | None) -> None:
        proxies = {
            "https": "http://proxy.corp:3128",
            "http": "plain.corp",  # a bare host:port, as people write it
            "no": "internal.example, .cluster.local",
        }
        assert proxy_for(scheme, netloc, proxies) == expected

    def test_no_proxy_star_and_credentials(self) -> None:
        assert proxy_for("https", "s3", {"https": "http://p:1", "no": "*"}) is None
        proxy = proxy_for("https", "s3", {"https": "http://us%40er:pa%3Ass@p:1"})
        assert proxy is not None
        assert proxy.headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"us@er:pa:ss").decode()}

    def test_tls_or_socks_proxy_is_refused_clearly(self) -> None:
        with pytest.raises(UsageError, match="HTTPS_PROXY must be an http://host:port proxy"):
            proxy_for("https", "s3", {"https": "socks5://p:1080"})

    def test_https_endpoint_is_tunnelled(self) -> None:
        settings = S3Settings(
            endpoint_url="https://s3.example", anonymous=True, region="us-east-1", proxies={"https": "http://p:3128"}
        )
        fetcher = RangeFetcher(_client(settings), TransferSettings())
        conn = fetcher._new_connection("https", "bucket.s3.example")
        assert isinstance(conn, http.client.HTTPSConnection)
        assert (conn.host, conn.port) == ("p", 3128)
        assert (conn._tunnel_host, conn._tunnel_port) == ("bucket.s3.example", 443)  # type: ignore[attr-defined]
        direct = RangeFetcher(_client(S3Settings(anonymous=True, region="us-east-1")), TransferSettings())
        conn = direct._new_connection("https", "bucket.s3.example")
        assert (conn.host, conn._tunnel_host) == ("bucket.s3.example", None)  # type: ignore[attr-defined]


class _Presigner:
    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.count = 0

    def presign_get(self, bucket: str, key: str) -> str:
        self.count += 1
        return f"https://s3.example/{bucket}/{key}?sig={self.count}"


def _client(settings: S3Settings) -> Any:
    return _Presigner(settings)


def test_presigned_urls_are_reused_for_five_minutes_only() -> None:
    now = [1000.0]
    client = _Presigner(S3Settings())
    fetcher = RangeFetcher(client, TransferSettings(), clock=lambda: now[0])  # type: ignore[arg-type]
    assert URL_REUSE_SECONDS == 300
    first = fetcher._url("b", "k")
    now[0] += URL_REUSE_SECONDS - 1
    assert fetcher._url("b", "k") == first
    now[0] += 2
    assert fetcher._url("b", "k") != first and client.count == 2
