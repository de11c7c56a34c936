"""The bounded cache: --cache-max-bytes evicts least recently used versions, never one in use; a model
larger than the bound is refused with nothing evicted; ``cache ls`` and ``cache gc``."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from model_files import safetensors_bytes, sample_tensors

from preloader.__main__ import main
from preloader.cache import ModelCache
from preloader.errors import CacheTooSmall
from preloader.plan import ModelFile, ObjectInfo, S3Location
from preloader.preload import preload

pytestmark = pytest.mark.integration


@pytest.fixture
def three_models(s3: Any, bucket: str) -> int:
    """Models a, b, c of one size each; returns that size."""
    for seed, name in enumerate("abc"):
        s3.put_object(Bucket=bucket, Key=f"{name}/model.safetensors", Body=safetensors_bytes(sample_tensors(50 + seed)))
    return len(safetensors_bytes(sample_tensors(50)))


def uris(cache: Path) -> list[str]:
    return sorted(e.uri for e in ModelCache(cache).entries())


def age(cache_path: str | None, seconds: float) -> None:
    """Make an entry look last used ``seconds`` ago (its lease file's mtime is the LRU clock)."""
    lease = Path(cache_path or "").parent / ".lease"
    then = time.time() - seconds
    os.utime(lease, (then, then))


def test_least_recently_used_version_is_evicted_first(
    bucket: str, three_models: int, make_config: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    bound = str(int(three_models * 2.5))

    def run(name: str) -> Any:
        return preload(make_config(f"s3://{bucket}/{name}/", "--cache-dir", str(cache), "--cache-max-bytes", bound))

    a, b = run("a"), run("b")
    age(a.result.cache_path, 100)
    age(b.result.cache_path, 50)
    assert run("a").result.cache == "hit"  # a is now the most recently used
    assert run("c").result.cache == "miss"
    assert uris(cache) == [f"s3://{bucket}/a/", f"s3://{bucket}/c/"]  # b went, not a
    assert not Path(b.result.cache_path or "").exists()


def test_an_entry_being_read_is_never_evicted(bucket: str, three_models: int, make_config: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bound = str(int(three_models * 1.5))  # room for one model only
    a = preload(make_config(f"s3://{bucket}/a/", "--cache-dir", str(cache), "--cache-max-bytes", bound))
    lease = ModelCache(cache).lease(Path(a.result.cache_path or "").parent, timeout=1)  # a reader of a
    assert lease is not None
    with lease, pytest.raises(CacheTooSmall, match="entries in use"):
        preload(make_config(f"s3://{bucket}/b/", "--cache-dir", str(cache), "--cache-max-bytes", bound))
    assert uris(cache) == [f"s3://{bucket}/a/"]
    assert (
        preload(make_config(f"s3://{bucket}/b/", "--cache-dir", str(cache), "--cache-max-bytes", bound)).result.cache
        == "miss"
    )
    assert uris(cache) == [f"s3://{bucket}/b/"]  # with the reader gone, a could go


def test_a_model_larger_than_the_bound_is_refused_and_nothing_is_evicted(
    bucket: str, three_models: int, make_config: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    preload(make_config(f"s3://{bucket}/a/", "--cache-dir", str(cache)))
    with pytest.raises(CacheTooSmall, match="--cache-max-bytes is 1000"):
        preload(make_config(f"s3://{bucket}/b/", "--cache-dir", str(cache), "--cache-max-bytes", "1000"))
    assert uris(cache) == [f"s3://{bucket}/a/"]


def test_cache_ls_and_gc(
    bucket: str, three_models: int, make_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    a = preload(make_config(f"s3://{bucket}/a/", "--cache-dir", str(cache)))
    b = preload(make_config(f"s3://{bucket}/b/", "--cache-dir", str(cache)))
    age(a.result.cache_path, 100)
    unfinished = Path(b.result.cache_path or "").parent.parent / ("f" * 32)
    (unfinished / "files").mkdir(parents=True)
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", str(cache), "--json"], {}) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (listed[0]["uri"], listed[0]["complete"]) == (f"s3://{bucket}/a/", True)  # oldest first
    assert sorted(e["complete"] for e in listed) == [False, True, True]
    assert all(e["bytes"] >= three_models for e in listed if e["complete"])
    assert main(["cache", "gc", "--cache-dir", str(cache), "--max-bytes", str(int(three_models * 1.5))], {}) == 0
    out = capsys.readouterr().out
    assert "removed 2" in out and not unfinished.exists()
    assert uris(cache) == [f"s3://{bucket}/b/"]
    assert main(["cache", "ls"], {"PRELOADER_CACHE_DIR": str(cache)}) == 0
    assert f"s3://{bucket}/b/" in capsys.readouterr().out
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "missing")], {}) == 2


def test_job_flag_and_environment_bound(make_config: Any, tmp_path: Path) -> None:
    config = make_config("s3://b/m/", "--cache-dir", str(tmp_path), "--cache-max-bytes", "2GiB")
    assert config.cache_max_bytes == 2 << 30
    env_config = make_config("s3://b/m/", PRELOADER_CACHE_DIR=str(tmp_path), PRELOADER_CACHE_MAX_BYTES="1G")
    assert (env_config.cache_dir, env_config.cache_max_bytes) == (tmp_path, 10**9)


def _model(name: str, size: int) -> tuple[S3Location, list[ModelFile]]:
    return S3Location("models", f"{name}/"), [
        ModelFile(ObjectInfo(f"{name}/model.safetensors", size, f'"{name}"'), PurePosixPath("model.safetensors"))
    ]


def test_two_writers_of_different_models_cannot_together_overshoot_the_bound(tmp_path: Path) -> None:
    """Writer a has reserved its model but written nothing yet when writer b sizes the bound: b must
    count a's reservation (and a is in use, so not evictable) instead of the empty directory it sees."""
    cache = ModelCache(tmp_path / "cache", max_bytes=15_000)
    a_loc, a_files = _model("a", 10_000)
    b_loc, b_files = _model("b", 10_000)
    writer_a = cache.writer("http://s3", a_loc, a_files, cache.lock("http://s3", a_loc, 1))
    (listed,) = cache.entries()
    assert listed.bytes >= 10_000 and not listed.complete  # `cache ls` shows what a will hold
    with cache.lock("http://s3", b_loc, 1) as lock_b, pytest.raises(CacheTooSmall, match="entries in use"):
        cache.writer("http://s3", b_loc, b_files, lock_b)
    assert [e.path for e in cache.entries()] == [writer_a.entry]  # b left nothing behind
    writer_a.abort()
    writer_b = cache.writer("http://s3", b_loc, b_files, cache.lock("http://s3", b_loc, 1))  # now it fits
    writer_b.abort()


def test_a_killed_writers_reservation_is_reclaimed_by_the_next_writer(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", max_bytes=15_000)
    a_loc, a_files = _model("a", 10_000)
    b_loc, b_files = _model("b", 10_000)
    killed = cache.writer("http://s3", a_loc, a_files, cache.lock("http://s3", a_loc, 1))
    assert killed._lease is not None
    killed._lease.release()  # what the kernel does to a killed run's flocks; its directory stays
    writer_b = cache.writer("http://s3", b_loc, b_files, cache.lock("http://s3", b_loc, 1))
    assert not killed.entry.exists() and [e.path for e in cache.entries()] == [writer_b.entry]
    writer_b.abort()


def test_sizing_the_bound_waits_for_another_writers_accounting(tmp_path: Path) -> None:
    """Counting, evicting and reserving are one step under the cache-wide room lock: two writers that
    counted at the same moment would each see room for one model."""
    cache = ModelCache(tmp_path / "cache", max_bytes=15_000)
    loc, model_files = _model("a", 10_000)
    made: list[Any] = []
    with cache.room(timeout=1):  # another writer is counting
        thread = threading.Thread(
            target=lambda: made.append(cache.writer("http://s3", loc, model_files, cache.lock("http://s3", loc, 1)))
        )
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not made
    thread.join(10)
    assert made and made[0].entry.exists()
    made[0].abort()
