"""S3 access: LIST/HEAD through botocore, ranged GETs straight off the socket into our buffer.

``list_model`` is what every run asks first (one HEAD for a key, the LIST for a prefix): the caller's
authorisation and the model's current sizes and ETags. Only a download HEADs a prefix's objects
(``head_all``), for the checksums S3 stored with them.

botocore resolves the endpoint, addressing style, region and credentials, retries throttling and
5xx for HEAD/LIST (retry mode ``standard``/``adaptive``), and presigns each GET. The GET itself goes
over ``http.client`` so the body can be ``readinto`` a slice of the preallocated buffer: botocore's
``StreamingBody.read()`` would allocate and copy every byte once more. Because botocore does not
see those GETs, this module retries them itself: 5xx/429 answers and streaming failures (reset
connection, truncated body), with full-jitter backoff; 404/412 are final. A 403 drops the cached
presigned URL and retries the range once with a fresh one (temporary credentials, STS or IRSA web
identity, may have expired under the old signature; botocore refreshes them when presigning); a
second 403 is final. Presigned URLs carry credentials, so they are never logged.

The GETs honour ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` as botocore does for LIST/HEAD (read
from the environment by ``preloader.config``): an ``https`` endpoint is reached through a CONNECT
tunnel, an ``http`` one with absolute-URI requests to the proxy. Only ``http://`` proxies are
supported (TLS to the proxy itself is not).
"""

from __future__ import annotations

import base64
import http.client
import logging
import random
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig

from preloader.checksums import checksum_from_head
from preloader.config import S3Settings, TransferSettings
from preloader.errors import (
    AccessDenied,
    BucketNotFound,
    EmptyPrefix,
    ObjectChanged,
    ObjectNotFound,
    PreloadError,
    TransferFailed,
    UsageError,
)
from preloader.plan import (
    ByteRange,
    ObjectInfo,
    S3Location,
    backoff_delay,
    listing_disagreement,
    range_response_problem,
)

log = logging.getLogger(__name__)

_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}
_STREAMING_ERRORS = (OSError, http.client.HTTPException)
URL_REUSE_SECONDS = 300.0  # a presigned URL is reused this long (it is valid for an hour)


def translate_error(exc: Exception, where: str) -> PreloadError:
    """The one place botocore failures become domain errors with a message naming the problem."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AccessDenied(
            f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a web identity, "
            "or awsAnonymousCredential=true for a public bucket)"
        )
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return BucketNotFound(f"{where}: bucket does not exist")
        if code in _MISSING_KEY:
            return ObjectNotFound(f"{where}: no such key")
        if code in _DENIED:
            return AccessDenied(f"{where}: access denied ({code})")
        return TransferFailed(f"{where}: S3 error {code or 'unknown'}")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionError):
        return TransferFailed(f"{where}: cannot reach the S3 endpoint ({type(exc).__name__})")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return TransferFailed(f"{where}: {exc}")
    return TransferFailed(f"{where}: {type(exc).__name__}: {exc}")


def _parts_in_etag(etag: str) -> int:
    """A multipart upload's ETag ends in ``-<parts>``."""
    count = etag.strip('"').rpartition("-")[2]
    return int(count) if "-" in etag and count.isdigit() else 0


class S3Client:
    """LIST, HEAD and presign for one endpoint; thread-safe (botocore clients are)."""

    def __init__(self, settings: S3Settings, pool_size: int = 10) -> None:
        self.settings = settings
        boto_config = BotoConfig(
            retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
            s3={"addressing_style": settings.addressing_style},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_pool_connections=pool_size,
            signature_version=UNSIGNED if settings.anonymous else None,
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            verify=settings.verify,
            config=boto_config,
        )

    @property
    def endpoint(self) -> str:
        """The endpoint actually used, part of the cache key so two S3s never share entries."""
        return str(self._client.meta.endpoint_url)

    def head(self, location: S3Location) -> ObjectInfo:
        """Size, ETag, version id and S3's stored checksum (checksum mode on; no body is sent).

        For a COMPOSITE checksum the part sizes are read too (``HEAD ?partNumber=N`` per part), since
        checking it needs the part boundaries.
        """
        try:
            response = self._client.head_object(Bucket=location.bucket, Key=location.key, ChecksumMode="ENABLED")
            checksum = checksum_from_head(response)
            parts: tuple[int, ...] = ()
            count = int(response.get("PartsCount") or 0)
            if checksum is not None and checksum[2] == "COMPOSITE":
                parts = self._part_sizes(location, count or _parts_in_etag(str(response.get("ETag", ""))))
        except Exception as exc:
            raise translate_error(exc, str(location)) from exc
        return ObjectInfo(
            key=location.key,
            size=int(response["ContentLength"]),
            etag=response.get("ETag", ""),
            version_id=str(response.get("VersionId") or ""),
            checksum=checksum,
            part_sizes=parts,
        )

    def _part_sizes(self, location: S3Location, count: int) -> tuple[int, ...]:
        sizes = []
        for number in range(1, count + 1):
            part = self._client.head_object(Bucket=location.bucket, Key=location.key, PartNumber=number)
            sizes.append(int(part["ContentLength"]))
        return tuple(sizes)

    def head_all(self, bucket: str, objects: list[ObjectInfo], workers: int = 16) -> list[ObjectInfo]:
        """HEAD every listed object in parallel, before a download: checksums, version ids, part sizes."""
        listed = [o for o in objects if not o.key.endswith("/")]
        if not listed:
            return []
        with ThreadPoolExecutor(max_workers=min(workers, len(listed)), thread_name_prefix="head") as pool:
            return list(pool.map(lambda obj: self.head_listed(bucket, obj), listed))

    def head_listed(self, bucket: str, listed: ObjectInfo) -> ObjectInfo:
        """HEAD one object a LIST named; ObjectChanged when S3 now describes another size or ETag."""
        headed = self.head(S3Location(bucket, listed.key))
        problem = listing_disagreement(listed, headed)
        if problem:
            raise ObjectChanged(
                f"s3://{bucket}/{listed.key}: the object changed between the LIST and the HEAD ({problem}); "
                "run again to fetch its current version"
            )
        return headed

    def list_objects(self, location: S3Location) -> list[ObjectInfo]:
        objects: list[ObjectInfo] = []
        kwargs: dict[str, str] = {"Bucket": location.bucket, "Prefix": location.key}
        try:
            while True:
                page = self._client.list_objects_v2(**kwargs)
                for item in page.get("Contents", []):
                    objects.append(ObjectInfo(key=item["Key"], size=int(item["Size"]), etag=item.get("ETag", "")))
                if not page.get("IsTruncated"):
                    return objects
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        except Exception as exc:
            raise translate_error(exc, str(location)) from exc

    def list_model(self, location: S3Location) -> tuple[S3Location, list[ObjectInfo]]:
        """The model's objects as S3 shows them to the caller's credentials: the authorisation and the
        freshness check of a cache hit.

        One key: its HEAD, which is also all a download needs. A prefix: its LIST (keys, sizes and ETags,
        no checksums; ``head_all`` adds those before a download) and one HEAD of its first object (read
        permission, which a LIST does not prove). A key that is not an object but a
        "directory" (KServe's ``storageUri: s3://models/mnist``) is read as the prefix ``mnist/``. A
        missing key is told apart from a missing bucket.
        """
        if not location.is_prefix:
            try:
                return location, [self.head(location)]
            except ObjectNotFound:
                as_dir = S3Location(location.bucket, location.key + "/")
                objects = self.list_objects(as_dir)  # raises BucketNotFound when it is the bucket that is missing
                if not objects:
                    raise
                return as_dir, objects
        objects = self.list_objects(location)
        files = [o for o in objects if not o.key.endswith("/")]
        if not files:
            raise EmptyPrefix(f"{location}: no objects under this prefix")
        # S3 grants a LIST by s3:ListBucket, not s3:GetObject: one HEAD (the first key) asks whether the caller
        # may READ the model, so a caller who may only list it is refused a hit as a download would be.
        self.head_listed(location.bucket, files[0])
        return location, objects

    def presign_get(self, bucket: str, key: str) -> str:
        """A GET URL botocore built and (unless anonymous) signed; Range/If-Match go as headers."""
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
            )
        except Exception as exc:
            raise translate_error(exc, f"s3://{bucket}/{key}") from exc
        return url


@dataclass(frozen=True)
class Proxy:
    """Where to send the requests for one endpoint, and the header that authenticates to it."""

    host: str
    port: int
    authorization: str | None = None  # value of Proxy-Authorization, from user:password in the URL

    @property
    def headers(self) -> dict[str, str]:
        return {"Proxy-Authorization": self.authorization} if self.authorization else {}


def proxy_for(scheme: str, netloc: str, proxies: Mapping[str, str]) -> Proxy | None:
    """The proxy for requests to ``scheme://netloc``, or None to connect directly.

    ``proxies`` is urllib's mapping (``{"https": ..., "http": ..., "no": "host,.domain"}``);
    NO_PROXY is applied by ``urllib.request.proxy_bypass_environment``, which botocore's own
    ``should_bypass_proxies`` also relies on, so LIST/HEAD and GETs take the same route.
    """
    url = proxies.get(scheme)
    if not url:
        return None
    if urllib.request.proxy_bypass_environment(netloc, dict(proxies)):  # type: ignore[attr-defined]
        return None
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise UsageError(
            f"{scheme.upper()}_PROXY must be an http://host:port proxy for the ranged GETs, got scheme "
            f"{parsed.scheme!r}; set NO_PROXY for the S3 endpoint to reach it directly"
        )
    try:
        port = parsed.port or 80
    except ValueError:
        raise UsageError(f"{scheme.upper()}_PROXY has an invalid port") from None
    authorization = None
    if parsed.username is not None:
        user = urllib.parse.unquote(parsed.username)
        password = urllib.parse.unquote(parsed.password or "")
        authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return Proxy(parsed.hostname, port, authorization)


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


class RangeFetcher:
    """Fetches one byte range of one object into a memoryview, retrying what is worth retrying.

    Each worker thread keeps its own keep-alive connection per host. ``sleep`` and ``jitter`` are
    seams for tests.
    """

    def __init__(
        self,
        client: S3Client,
        transfer: TransferSettings,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._transfer = transfer
        self._timeout = client.settings.read_timeout
        self._ssl = _ssl_context(client.settings.verify)
        self._local = threading.local()
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        self._urls: dict[tuple[str, str], tuple[float, str]] = {}
        self._urls_lock = threading.Lock()

    def _url(self, bucket: str, key: str) -> str:
        """Presign once per object and reuse it for URL_REUSE_SECONDS.

        Short reuse, because temporary credentials may expire long before the URL's own hour.
        """
        now = self._clock()
        with self._urls_lock:
            cached = self._urls.get((bucket, key))
            if cached and now - cached[0] < URL_REUSE_SECONDS:
                return cached[1]
        url = self._client.presign_get(bucket, key)
        with self._urls_lock:
            self._urls[(bucket, key)] = (now, url)
        return url

    def _forget_url(self, bucket: str, key: str, url: str) -> None:
        """Drop a URL S3 refused, unless another thread already replaced it with a fresh one."""
        with self._urls_lock:
            cached = self._urls.get((bucket, key))
            if cached and cached[1] == url:
                del self._urls[(bucket, key)]

    def _new_connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        proxy = proxy_for(scheme, netloc, self._client.settings.proxies)
        if scheme == "https":
            if proxy is None:
                return http.client.HTTPSConnection(netloc, timeout=self._timeout, context=self._ssl)
            conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=self._timeout, context=self._ssl)
            conn.set_tunnel(netloc, headers=proxy.headers)  # CONNECT, then TLS with the endpoint
            return conn
        if proxy is None:
            return http.client.HTTPConnection(netloc, timeout=self._timeout)
        return _ForwardProxyConnection(proxy, scheme, netloc, timeout=self._timeout)

    @contextmanager
    def _connection(self, scheme: str, netloc: str) -> Iterator[http.client.HTTPConnection]:
        conns: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            conn = self._new_connection(scheme, netloc)
            conns[(scheme, netloc)] = conn
        try:
            yield conn
        except BaseException:
            conn.close()
            del conns[(scheme, netloc)]
            raise

    def fetch(
        self,
        bucket: str,
        obj: ObjectInfo,
        rng: ByteRange,
        dest: memoryview,
        progress: Callable[[int], None],
    ) -> None:
        """Fill ``dest`` (exactly rng.length bytes) with the range, or raise a PreloadError."""
        where = f"s3://{bucket}/{obj.key} {rng.header}"
        last = "no attempt made"
        refreshed = False
        attempt = 1
        while True:
            got = 0
            try:
                got = self._attempt(bucket, obj, rng, dest, progress, where)
                return
            except _Forbidden as exc:
                if refreshed:
                    raise AccessDenied(f"{where}: access denied (403), also with a freshly presigned URL") from None
                # The signature's credentials may have expired (STS, web identity): presign again
                # (botocore refreshes them) and retry this range once, without using up an attempt.
                log.info("%s: 403 on a presigned URL; presigning again and retrying once", where)
                self._forget_url(bucket, obj.key, exc.url)
                refreshed = True
                continue
            except _RetryableError as exc:
                last = str(exc)
                got = exc.received
            except _STREAMING_ERRORS as exc:
                last = f"{type(exc).__name__}: {exc}"
            if got:
                progress(-got)  # rewind, as s3transfer does, so progress never over-counts
            if attempt >= self._transfer.max_attempts:
                break
            delay = backoff_delay(attempt, self._transfer.backoff_base, self._transfer.backoff_cap, self._jitter())
            log.warning("%s: attempt %d failed (%s); retrying in %.2fs", where, attempt, last, delay)
            self._sleep(delay)
            attempt += 1
        raise TransferFailed(f"{where}: failed after {self._transfer.max_attempts} attempts: {last}")

    def _attempt(
        self,
        bucket: str,
        obj: ObjectInfo,
        rng: ByteRange,
        dest: memoryview,
        progress: Callable[[int], None],
        where: str,
    ) -> int:
        presigned = self._url(bucket, obj.key)
        url = urllib.parse.urlsplit(presigned)
        target = url.path + (f"?{url.query}" if url.query else "")
        headers = {"Range": rng.header, "Accept-Encoding": "identity"}
        if obj.etag:
            headers["If-Match"] = obj.etag
        with self._connection(url.scheme, url.netloc) as conn:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            status = response.status
            if status in (403, 404, 412) or status in _RETRYABLE_STATUS or status >= 300:
                response.read()  # drain so the connection can be reused
                if status == 403:
                    raise _Forbidden(presigned)
                if status == 404:
                    raise ObjectNotFound(f"{where}: no such key")
                if status == 412:
                    raise ObjectChanged(f"{where}: the object changed during the download (ETag {obj.etag})")
                if status in _RETRYABLE_STATUS:
                    raise _RetryableError(f"HTTP {status}", 0)
                raise TransferFailed(f"{where}: unexpected HTTP {status}")
            problem = range_response_problem(
                status, response.getheader("Content-Range"), response.getheader("Content-Length"), rng, obj.size
            )
            if problem:
                raise TransferFailed(f"{where}: {problem}")
            got = 0
            while got < rng.length:
                try:
                    n = response.readinto(dest[got:])
                except _STREAMING_ERRORS as exc:
                    raise _RetryableError(f"{type(exc).__name__} after {got} bytes", got) from exc
                if not n:
                    raise _RetryableError(f"body truncated at {got} of {rng.length} bytes", got)
                got += n
                progress(n)
            return got


class _ForwardProxyConnection(http.client.HTTPConnection):
    """Plain HTTP through a forward proxy: connect to the proxy, send absolute-URI requests.

    http.client derives the Host header from an absolute URL, so only the request line changes.
    """

    def __init__(self, proxy: Proxy, scheme: str, netloc: str, timeout: float) -> None:
        super().__init__(proxy.host, proxy.port, timeout=timeout)
        self._origin = f"{scheme}://{netloc}"
        self._proxy_headers = proxy.headers

    def request(  # type: ignore[override]
        self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().request(method, self._origin + url, body=body, headers={**(headers or {}), **self._proxy_headers})


class _Forbidden(Exception):
    """A 403 on a presigned URL; ``fetch`` presigns again once before it becomes AccessDenied."""

    def __init__(self, url: str) -> None:
        super().__init__("HTTP 403")
        self.url = url


class _RetryableError(Exception):
    """A streaming failure worth another attempt; remembers how much progress to rewind."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received
