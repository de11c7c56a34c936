"""The preloader at LLM scale (issue 18): peak memory against model size, cache fill against the disk
and the network, and a serving pod's start on a warm node against KServe's storage initializer.

``make bench-preload-llm`` (needs nginx; KServe's initializer comes from the ``bench`` extra). Models
are sparse sharded safetensors checkpoints (``bench.preload_sizes``) served by nginx on loopback:
holes cost no disk and no time to write, and nginx sends their zeros at wire speed. Every variant is
a fresh process; runs of one section are interleaved in a shuffled order (seeded). It prints a
Markdown section for docs/benchmarks.md. Knobs: ``BENCH_SIZES`` (GiB, default 1,2,4,8), ``BENCH_RUNS``
(3), ``BENCH_FILL_GIB`` (4), ``BENCH_SERVE_GIB`` (8), ``BENCH_SEED`` (2026), ``BENCH_ONLY``
(rss,fill,serve).
"""

from __future__ import annotations

import http.client
import json
import mmap
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.preload_sizes import GiB, MiB, run_watched, write_sparse_checkpoint
from devstack.nginx_s3 import have_nginx, nginx

REPO = Path(__file__).resolve().parents[1]
SHARD = 1 * GiB  # shard size of the checkpoints (real ones are 2-10 GB)
PART = 16 * MiB
CONNECTIONS = 8


def _env(endpoint: str) -> dict[str, str]:
    return {**os.environ, "AWS_ENDPOINT_URL": endpoint, "awsAnonymousCredential": "true",
            "AWS_DEFAULT_REGION": "us-east-1", "S3_USE_HTTPS": "0"}


def preloader(endpoint: str, *args: str) -> tuple[dict[str, Any], float, int]:
    """One preloader process: its result, its wall time, its sampled peak RSS."""
    argv = [sys.executable, "-m", "preloader", *args, "--progress", "never", "--termination-log", "/dev/null"]
    done = run_watched(argv, _env(endpoint), 22 * GiB, timeout=900, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"preloader {args} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result, done.seconds, max(done.peak_rss_bytes, int(result.get("peak_rss_bytes", 0)))


def drop_page_cache(folder: Path) -> None:
    """posix_fadvise(DONTNEED) on every file: their clean pages leave the page cache."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_every_byte(folder: Path) -> int:
    """What a model server does first: read each file once (16 MiB reads)."""
    buffer = memoryview(bytearray(PART))
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                while n := os.readv(fd, [buffer]):
                    total += n
            finally:
                os.close(fd)
    return total


def disk_direct_write(folder: Path, size: int) -> float:
    """The disk's own speed: ``size`` bytes in 16 MiB O_DIRECT writes from 8 threads, blocks reserved
    first (as the preloader does); seconds."""
    path = folder / "direct-write-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, size)
    direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
    blocks = list(range(0, size, PART))

    def writer(mine: list[int]) -> None:
        buf = mmap.mmap(-1, PART)
        buf.write(b"\x01" * PART)
        for offset in mine:
            os.pwrite(direct, buf, offset)

    start = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(blocks[i::CONNECTIONS],)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    os.close(direct)
    os.close(fd)
    path.unlink()
    return seconds


def http_ceiling(endpoint: str, paths: list[tuple[str, int]]) -> float:
    """The raw HTTP ceiling: 8 kept-alive connections GET every 16 MiB range into a reused buffer
    each (what streaming to the cache receives into); seconds."""
    host, port = endpoint.removeprefix("http://").split(":")
    work = [(p, o, min(PART, size - o)) for p, size in paths for o in range(0, size, PART)]
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection(host, int(port))
        buf = memoryview(bytearray(PART))
        while True:
            with lock:
                if not work:
                    break
                path, offset, length = work.pop()
            conn.request("GET", path, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
            response = conn.getresponse()
            got = 0
            while got < length:
                n = response.readinto(buf[got:length])
                if not n:
                    raise RuntimeError("short body")
                got += n
            response.read()
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def kserve_download(endpoint: str, uri: str, dest: Path) -> float:
    """KServe's own storage initializer (kserve-storage's Storage.download), a fresh process; seconds."""
    code = "import sys; from kserve_storage import Storage; Storage.download(sys.argv[1], out_dir=sys.argv[2])"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, uri, str(dest)], env=_env(endpoint), check=True,
                   capture_output=True)
    return time.perf_counter() - start


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def rss_section(endpoint: str, work: Path, sizes: list[int], runs: int, rng: random.Random) -> list[str]:
    rows: dict[tuple[int, str], list[tuple[float, float]]] = {}
    plan = [(s, v) for s in sizes for v in ("none", "cpu") for _ in range(runs)]
    plan += [(s, "memory") for s in sizes]
    rng.shuffle(plan)
    for size, variant in plan:
        cache = work / "rss-cache"
        args = [f"s3://m{size}g/llm/"]
        if variant == "memory":
            args += ["--device", "cpu"]
        else:
            args += ["--device", variant, "--cache-dir", str(cache)]
        result, seconds, peak = preloader(endpoint, *args)
        rows.setdefault((size, variant), []).append((peak / GiB, result["bytes"] / seconds / 1e9))
        shutil.rmtree(cache, ignore_errors=True)
    names = {"none": "`--device none`, cache on", "cpu": "`--device cpu`, cache on (loaded shard by shard)",
             "memory": "`--device cpu`, no cache (in memory, as before)"}
    lines = ["| model | " + " | ".join(names.values()) + " |", "|---|" + "---:|" * len(names)]
    for size in sizes:
        cells = []
        for variant in names:
            got = rows[(size, variant)]
            peaks = [p for p, _ in got]
            cells.append(f"{med(peaks)} GiB; {statistics.median(g for _, g in got):.2f} GB/s")
        lines.append(f"| {size} GiB | " + " | ".join(cells) + " |")
    return lines


def fill_section(endpoint: str, work: Path, size: int, runs: int, rng: random.Random) -> list[str]:
    root = work / "root" / f"m{size}g" / "llm"
    paths = [(f"/m{size}g/llm/{p.name}", p.stat().st_size) for p in sorted(root.iterdir())]
    total = sum(s for _, s in paths)
    samples: dict[str, list[float]] = {"disk": [], "http": [], "fill": [], "fill_whole": []}
    for _ in range(runs):
        order = ["disk", "http", "fill"]
        rng.shuffle(order)
        for variant in order:
            if variant == "disk":
                samples["disk"].append(total / disk_direct_write(work, total) / 1e9)
            elif variant == "http":
                samples["http"].append(total / http_ceiling(endpoint, paths) / 1e9)
            else:
                cache = work / "fill-cache"
                result, seconds, _ = preloader(endpoint, f"s3://m{size}g/llm/", "--device", "none",
                                               "--cache-dir", str(cache))
                samples["fill"].append(total / result["seconds"]["download"] / 1e9)
                samples["fill_whole"].append(total / seconds / 1e9)
                shutil.rmtree(cache, ignore_errors=True)
    ratios = [f / min(d, h) for f, d, h in zip(samples["fill"], samples["disk"], samples["http"], strict=True)]
    return [
        f"Cache fill of a {size} GiB checkpoint ({size} shards), `--device none`, cache on the same ext4 disk; "
        f"{runs} interleaved rounds; GB/s median (min-max):",
        "",
        f"- disk, O_DIRECT writes (8 threads x 16 MiB, blocks reserved first): {med(samples['disk'])}",
        f"- raw HTTP ceiling (8 kept-alive connections x 16 MiB ranges into reused buffers): {med(samples['http'])}",
        f"- preloader cache fill, its download phase: {med(samples['fill'])}; whole process "
        f"(start-up, listing, commit included): {med(samples['fill_whole'])}",
        f"- fill / the lower of disk and HTTP, per round: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f}; target >= 0.75)",
    ]


def serve_section(endpoint: str, work: Path, size: int, runs: int, rng: random.Random) -> list[str]:
    uri = f"s3://m{size}g/llm/"
    cache = work / "serve-cache"
    result, _, _ = preloader(endpoint, uri, "--device", "none", "--cache-dir", str(cache))
    entry = Path(result["cache_path"])
    samples: dict[str, list[tuple[float, float]]] = {}

    def initializer(page_cache: bool) -> tuple[float, float]:
        read_every_byte(entry) if page_cache else drop_page_cache(entry)
        dest = work / "dest"
        start = time.perf_counter()
        preloader(endpoint, uri, str(dest), "--cache-dir", str(cache))
        linked = time.perf_counter()
        assert read_every_byte(dest) >= size * GiB
        done = time.perf_counter()
        shutil.rmtree(dest)
        return linked - start, done - start

    def kserve() -> tuple[float, float]:
        dest = work / "dest"
        dest.mkdir()
        start = time.perf_counter()
        kserve_download(endpoint, uri, dest)
        fetched = time.perf_counter()
        assert read_every_byte(dest) >= size * GiB
        done = time.perf_counter()
        shutil.rmtree(dest)
        return fetched - start, done - start

    def readahead() -> tuple[float, float]:
        drop_page_cache(entry)
        start = time.perf_counter()
        read_every_byte(entry)
        return time.perf_counter() - start, 0.0

    variants: dict[str, Callable[[], tuple[float, float]]] = {
        "warm node, entry in the page cache": lambda: initializer(True),
        "warm node, entry not in the page cache": lambda: initializer(False),
        "KServe storage initializer from S3 (kserve-storage)": kserve,
        "the Job's `--page-cache` read of the entry (from disk)": readahead,
    }
    for _ in range(runs):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            samples.setdefault(name, []).append(variants[name]())
    shutil.rmtree(cache, ignore_errors=True)
    lines = [f"Serving start of a {size} GiB sharded checkpoint ({size} shards + index): the initializer's "
             "whole process, then reading every byte of `/mnt/models` as a model server does; "
             f"{runs} interleaved rounds, seconds, median (min-max):", "",
             "| variant | initializer (links or download) | initializer + reading every byte |", "|---|---:|---:|"]
    for name, got in samples.items():
        first = [a for a, _ in got]
        both = [b for _, b in got]
        lines.append(f"| {name} | {med(first)} | {med(both) if any(both) else ''} |")
    return lines


def main() -> None:
    if not have_nginx():
        raise SystemExit("needs nginx (apt-get install nginx)")
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "1,2,4,8").split(",")]
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    fill_gib = int(os.environ.get("BENCH_FILL_GIB", "4"))
    serve_gib = int(os.environ.get("BENCH_SERVE_GIB", "8"))
    only = set(os.environ.get("BENCH_ONLY", "rss,fill,serve").split(","))
    rng = random.Random(int(os.environ.get("BENCH_SEED", "2026")))
    work = Path(tempfile.mkdtemp(prefix="bench-preload-llm-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    try:
        for size in {*sizes, fill_gib, serve_gib}:
            write_sparse_checkpoint(work / "root" / f"m{size}g" / "llm", size * GiB, shards=max(1, size * GiB // SHARD))
        out = [f"Measured {time.strftime('%Y-%m-%d')} by `make bench-preload-llm` on {platform.machine()} with "
               f"{os.cpu_count()} cores, Python {platform.python_version()}; sparse checkpoints of 1 GiB shards "
               "served by nginx on loopback; cache and DEST on the repository's ext4 disk; GB = 10^9 bytes.", ""]
        with nginx(work / "root", work / "nginx") as endpoint:
            if "rss" in only:
                out += ["Peak RSS (VmHWM, GiB, median (min-max)) and GB/s of the whole process against model size:",
                        "", *rss_section(endpoint, work, sizes, runs, rng), ""]
            if "fill" in only:
                out += [*fill_section(endpoint, work, fill_gib, runs, rng), ""]
            if "serve" in only:
                out += [*serve_section(endpoint, work, serve_gib, runs, rng), ""]
        print("\n".join(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
