"""One benchmark variant per fresh process: ``python -m bench.preload_variants NAME ENDPOINT BUCKET KEY``.

Each variant goes S3 (nginx, unsigned, path-style) -> torch tensors in host memory, the way its
library is normally used, allocation included, and prints one JSON line: total seconds, the
download-only seconds where the variant has a separate download step, and peak RSS (VmHWM).
A fresh process per run means peak RSS belongs to that variant alone.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

MiB = 1 << 20


def vm_hwm() -> int:
    with open("/proc/self/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def unsigned_client(endpoint: str) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, max_pool_connections=32),
    )


def preloader_run(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    from preloader.config import load_config
    from preloader.preload import preload

    config = load_config(
        [f"s3://{bucket}/{key}", "--device", "cpu", "--progress", "never"],
        {"AWS_ENDPOINT_URL": endpoint, "awsAnonymousCredential": "true", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    start = time.perf_counter()
    result = preload(config).result
    total = time.perf_counter() - start
    return {"seconds": total, "download_seconds": result.seconds.download}


def boto3_read(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    from safetensors.torch import load

    start = time.perf_counter()
    body = unsigned_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    downloaded = time.perf_counter()
    tensors = load(body)
    assert tensors
    return {"seconds": time.perf_counter() - start, "download_seconds": downloaded - start}


def _download_fileobj(endpoint: str, bucket: str, key: str, config: Any) -> dict[str, float]:
    from safetensors.torch import load

    start = time.perf_counter()
    buffer = io.BytesIO()
    unsigned_client(endpoint).download_fileobj(bucket, key, buffer, Config=config)
    downloaded = time.perf_counter()
    tensors = load(buffer.getvalue())
    assert tensors
    return {"seconds": time.perf_counter() - start, "download_seconds": downloaded - start}


def fileobj_default(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    return _download_fileobj(endpoint, bucket, key, TransferConfig())


def fileobj_16x16(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(max_concurrency=16, multipart_chunksize=16 * MiB, multipart_threshold=16 * MiB)
    return _download_fileobj(endpoint, bucket, key, config)


def _crt_client() -> Any:
    """The CRT S3 client as both CRT variants use it: plain HTTP, 8 MiB parts, a 10 Gb/s target."""
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
    from awscrt.s3 import S3Client, S3RequestTlsMode

    elg = EventLoopGroup()
    bootstrap = ClientBootstrap(elg, DefaultHostResolver(elg))
    return S3Client(
        bootstrap=bootstrap,
        region="us-east-1",
        tls_mode=S3RequestTlsMode.DISABLED,
        part_size=8 * MiB,
        throughput_target_gbps=10.0,
    )


def crt(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    """awscrt's S3 client (what boto3[crt] uses), unsigned, into a buffer, then safetensors.load."""
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.s3 import S3RequestType
    from safetensors.torch import load

    start = time.perf_counter()
    size = unsigned_client(endpoint).head_object(Bucket=bucket, Key=key)["ContentLength"]
    client = _crt_client()
    buffer = np.empty(size, dtype=np.uint8)
    view = buffer.data
    host = urlsplit(endpoint).netloc

    def on_body(chunk: bytes, offset: int, **_: Any) -> None:
        view[offset : offset + len(chunk)] = chunk

    request = HttpRequest("GET", f"/{bucket}/{key}", HttpHeaders([("Host", host)]))
    client.make_request(type=S3RequestType.GET_OBJECT, request=request, on_body=on_body).finished_future.result()
    downloaded = time.perf_counter()
    tensors = load(buffer.tobytes())
    assert tensors
    return {"seconds": time.perf_counter() - start, "download_seconds": downloaded - start}


def crt_file(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    """awscrt writing straight to a RAM-backed file (its fastest mode), then safetensors.load_file."""
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.s3 import S3RequestType
    from safetensors.torch import load_file

    target = f"/dev/shm/bench-crt-{os.getpid()}.safetensors"
    start = time.perf_counter()
    client = _crt_client()
    request = HttpRequest("GET", f"/{bucket}/{key}", HttpHeaders([("Host", urlsplit(endpoint).netloc)]))
    try:
        client.make_request(
            type=S3RequestType.GET_OBJECT, request=request, recv_filepath=target
        ).finished_future.result()
        downloaded = time.perf_counter()
        tensors = load_file(target)
        assert tensors
        return {"seconds": time.perf_counter() - start, "download_seconds": downloaded - start}
    finally:
        os.unlink(target)


def kserve_storage(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    """KServe's own storage initializer (the ``kserve-storage`` package): what KServe users run today.

    ``Storage.download`` into a directory, as the storage-initializer container does, with KServe's
    environment for an anonymous S3-compatible endpoint. DEST comes from ``BENCH_DEST``.
    """
    os.environ.update(AWS_ENDPOINT_URL=endpoint, awsAnonymousCredential="true", AWS_DEFAULT_REGION="us-east-1")
    os.environ.setdefault("S3_USE_HTTPS", "0")
    import importlib

    storage: Any = importlib.import_module("kserve_storage").Storage  # no type information shipped
    dest = os.environ["BENCH_DEST"]
    start = time.perf_counter()
    storage.download(f"s3://{bucket}/{key}", out_dir=dest)
    assert os.path.getsize(os.path.join(dest, os.path.basename(key))) > 0
    return {"seconds": time.perf_counter() - start}


def _runai(endpoint: str, bucket: str, key: str, tuned: bool) -> dict[str, float]:
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
        AWS_EC2_METADATA_DISABLED="true",
        RUNAI_STREAMER_S3_UNSIGNED="1",
        AWS_DEFAULT_REGION="us-east-1",
    )
    if tuned:
        os.environ.update(RUNAI_STREAMER_CONCURRENCY="4", RUNAI_STREAMER_CHUNK_BYTESIZE=str(16 * MiB))
    from runai_model_streamer import SafetensorsStreamer

    start = time.perf_counter()
    tensors = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(f"s3://{bucket}/{key}")
        for name, tensor in streamer.get_tensors():
            tensors[name] = tensor.clone()  # the streamer reuses its buffer; keep the weights
    assert tensors
    return {"seconds": time.perf_counter() - start}


def runai_default(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    return _runai(endpoint, bucket, key, tuned=False)


def runai_tuned(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    return _runai(endpoint, bucket, key, tuned=True)


def _raw_get(host: str, port: int, path: str, view: memoryview, start: int, end: int) -> None:
    """Minimal HTTP/1.1 client: one request, headers skipped, body recv_into the buffer."""
    with socket.create_connection((host, port)) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={start}-{end - 1}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        _header, _, rest = head.partition(b"\r\n\r\n")
        view[start : start + len(rest)] = rest
        got = start + len(rest)
        while got < end:
            n = sock.recv_into(view[got:end])
            if not n:
                raise RuntimeError("short body")
            got += n


def _ceiling(endpoint: str, bucket: str, key: str, connections: int, touched: bool = True) -> dict[str, float]:
    """Raw GETs into one buffer. Touched: allocated and written before the clock starts, so the figure
    is the network path alone. Fresh: allocated untouched, so its page faults run inside the timing,
    as they do for every client that keeps the bytes (the Job's tensors need that memory too)."""
    url = urlsplit(endpoint)
    size = unsigned_client(endpoint).head_object(Bucket=bucket, Key=key)["ContentLength"]
    if touched:
        buffer = np.ones(size, dtype=np.uint8)
    bounds = [size * i // connections for i in range(connections + 1)]
    start = time.perf_counter()
    if not touched:
        buffer = np.empty(size, dtype=np.uint8)
    view = buffer.data
    threads = [
        threading.Thread(target=_raw_get, args=(url.hostname, url.port, f"/{bucket}/{key}", view, a, b))
        for a, b in itertools.pairwise(bounds)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - start}


def ceiling_one(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    return _ceiling(endpoint, bucket, key, 1)


def ceiling_parallel(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    return _ceiling(endpoint, bucket, key, 4)


def ceiling_fresh(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    return _ceiling(endpoint, bucket, key, 4, touched=False)


def ceiling_fresh_after_torch(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    """The fresh-buffer ceiling started as late as the Job starts its download: after importing torch.
    On a VM that hands freed memory back to its host, memory first touched later is slower."""
    import torch  # noqa: F401  (imported for its start-up time only)

    return _ceiling(endpoint, bucket, key, 4, touched=False)


def memcpy(endpoint: str, bucket: str, key: str) -> dict[str, float]:
    source = np.ones(1 << 30, dtype=np.uint8)
    dest = np.zeros(1 << 30, dtype=np.uint8)
    dest[:] = 1
    start = time.perf_counter()
    np.copyto(dest, source)
    return {"seconds": time.perf_counter() - start, "bytes": float(1 << 30)}


VARIANTS: dict[str, Callable[[str, str, str], dict[str, float]]] = {
    "preloader": preloader_run,
    "boto3_read": boto3_read,
    "fileobj_default": fileobj_default,
    "fileobj_16x16": fileobj_16x16,
    "crt": crt,
    "crt_file": crt_file,
    "kserve_storage": kserve_storage,
    "runai_default": runai_default,
    "runai_tuned": runai_tuned,
    "ceiling_one": ceiling_one,
    "ceiling_parallel": ceiling_parallel,
    "ceiling_fresh": ceiling_fresh,
    "ceiling_fresh_after_torch": ceiling_fresh_after_torch,
    "memcpy": memcpy,
}


def main() -> None:
    name, endpoint, bucket, key = sys.argv[1:5]
    outcome = VARIANTS[name](endpoint, bucket, key)
    print(json.dumps({**outcome, "peak_rss_bytes": vm_hwm()}))


if __name__ == "__main__":
    main()
