"""Two runs of one model on one node: the cache lock makes the second wait and then hit."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.cache import ModelCache
from preloader.errors import CacheBusy
from preloader.files import FileSystem
from preloader.plan import parse_s3_uri
from preloader.preload import Preloaded, preload
from preloader.s3 import S3Client

pytestmark = pytest.mark.integration


class _SignalWhenWaiting(logging.Handler):
    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "another run holds the cache entry" in record.getMessage():
            self.event.set()


class _HoldsTheLock(FileSystem):
    """The first run's seam: once it holds the lock (free space is checked under it), it stops
    until the second run has reported that it is waiting for that lock, so the two overlap for sure."""

    def __init__(self, locked: threading.Event, other_waiting: threading.Event) -> None:
        self.locked = locked
        self.other_waiting = other_waiting

    def free_bytes(self, path: Path) -> int:
        self.locked.set()
        assert self.other_waiting.wait(30), "the second run never waited for the lock"
        return super().free_bytes(path)


def test_concurrent_runs_of_one_model_download_once_and_both_succeed(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tensors = sample_tensors(11, scale=4)
    body = safetensors_bytes(tensors)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=body)
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="preloader.cache")
    locked, waiting = threading.Event(), threading.Event()
    handler = _SignalWhenWaiting(waiting)
    logging.getLogger("preloader.cache").addHandler(handler)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(preload, config, _HoldsTheLock(locked, waiting))
            assert locked.wait(30)
            second = pool.submit(preload, config)
            results: list[Preloaded] = [first.result(timeout=60), second.result(timeout=60)]
    finally:
        logging.getLogger("preloader.cache").removeHandler(handler)
    assert [r.result.cache for r in results] == ["miss", "hit"]  # only the first one downloaded
    for r in results:
        assert_bit_exact(tensors, r.tensors["model.safetensors"])
    assert results[0].result.cache_path == results[1].result.cache_path
    assert Path(results[0].result.cache_path or "", "model.safetensors").read_bytes() == body
    assert not list((tmp_path / "cache").rglob(".tmp-*"))
    assert preload(config).result.cache == "hit"


def test_concurrent_runs_in_separate_processes_both_verify(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path
) -> None:
    """Real processes (flock is per open file, so it works across them too); no ordering is forced."""
    tensors = sample_tensors(12, scale=4)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(tensors))
    argv = [sys.executable, "-m", "preloader", f"s3://{bucket}/m/", "--device", "cpu", "--progress", "never"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--part-size", "256KiB"]
    child_env = {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    child_env |= {"AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [*argv, "--termination-log", str(tmp_path / f"log{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    lines = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(line["cache"] for line in lines) in (["hit", "miss"], ["miss", "miss"])
    cache_path = lines[0]["cache_path"]
    assert lines[1]["cache_path"] == cache_path
    assert Path(cache_path, "model.safetensors").read_bytes() == safetensors_bytes(tensors)
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_lock_held_too_long_is_a_clear_error(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(13)))
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"), "--lock-timeout", "0.3")
    cache = ModelCache(tmp_path / "cache")
    busy = pytest.raises(CacheBusy, match=r"another run has held the cache entry .* for over 0.3s .*--lock-timeout")
    with cache.lock(S3Client(config.s3).endpoint, parse_s3_uri(config.uri), timeout=0), busy:
        preload(config)
    assert preload(config).result.cache == "miss"  # once released, the next run proceeds


def test_a_killed_writers_leftovers_are_removed_under_the_lock(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(14)))
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"))
    first = preload(config)
    files = Path(first.result.cache_path or "")
    (files / ".tmp-model.safetensors-dead").write_bytes(b"partial")  # a run killed mid-write
    (files.parent / "manifest.json").unlink()
    assert preload(config).result.cache == "miss"
    assert not list((tmp_path / "cache").rglob(".tmp-*"))
