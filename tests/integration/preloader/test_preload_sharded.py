"""Sharded checkpoints end to end against moto: loaded shard by shard from the cache, checked against
their index, each bad input a named error that removes the partial entry and touches nothing else;
``--device none`` (the cache only, torch never imported); a model too large for the device is still
cached. A disk that fills mid-model is simulated through the ``FileSystem`` seam (ENOSPC from the
second shard's reservation, and from a write), in process: mounting a small filesystem needs root."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.__main__ import main
from preloader.cache import ModelCache
from preloader.errors import (
    CorruptModel,
    DeviceOutOfMemory,
    DiskFull,
    ShardIndexInvalid,
    ShardMismatch,
    ShardMissing,
    ShardNotInIndex,
)
from preloader.files import FileSystem
from preloader.preload import preload

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
N = 3


def shard_name(i: int) -> str:
    return f"model-{i + 1:05d}-of-{N:05d}.safetensors"


def shards() -> dict[str, dict[str, torch.Tensor]]:
    """Three shards of distinct tensors (sample_tensors' names, prefixed per shard)."""
    return {shard_name(i): {f"s{i}.{k}": v for k, v in sample_tensors(20 + i, scale=2).items()} for i in range(N)}


def index_of(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    return {"metadata": {}, "weight_map": {t: name for name, ts in parts.items() for t in ts}}


def upload(s3: Any, bucket: str, parts: dict[str, dict[str, torch.Tensor]], index: dict[str, Any] | None = None,
           prefix: str = "llm/") -> None:
    for name, tensors in parts.items():
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=safetensors_bytes(tensors))
    s3.put_object(Bucket=bucket, Key=prefix + "model.safetensors.index.json",
                  Body=json.dumps(index or index_of(parts)).encode())
    s3.put_object(Bucket=bucket, Key=prefix + "config.json", Body=b'{"hidden": 512}')


def entries(cache: Path) -> list[str]:
    return sorted(f"{e.path.parent.name}/{e.path.name}:{e.complete}" for e in ModelCache(cache).entries())


@pytest.fixture
def other_entry(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> Path:
    """Another model already cached: a failed run must leave it alone."""
    s3.put_object(Bucket=bucket, Key="other/model.safetensors", Body=safetensors_bytes(sample_tensors(5)))
    cache = tmp_path / "cache"
    preload(make_config(f"s3://{bucket}/other/", "--cache-dir", str(cache)))
    return cache


def test_a_sharded_model_loads_shard_by_shard_from_the_cache_bit_exact(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    cache = str(tmp_path / "cache")
    for expected in ("miss", "hit"):
        out = preload(make_config(f"s3://{bucket}/llm/", "--cache-dir", cache))
        assert out.result.cache == expected
        for name, tensors in parts.items():
            assert_bit_exact(tensors, out.tensors[name])
        assert out.tensors["config.json"] == {} and out.tensors["model.safetensors.index.json"] == {}
        figures = out.result.to_dict()
        assert [s["path"] for s in figures["shards"]] == list(parts)
        assert [s["tensors"] for s in figures["shards"]] == [len(t) for t in parts.values()]
        assert all(s["device"] == "cpu" for s in figures["shards"])
        assert figures["devices"]["cpu"]["shards"] == N


def test_without_a_cache_the_index_is_checked_too(s3: Any, bucket: str, make_config: Any) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    out = preload(make_config(f"s3://{bucket}/llm/"))
    assert out.result.cache == "off" and len(out.result.to_dict()["shards"]) == N
    for name, tensors in parts.items():
        assert_bit_exact(tensors, out.tensors[name])
    s3.put_object(Bucket=bucket, Key="llm/" + shard_name(1), Body=safetensors_bytes(parts[shard_name(0)]))
    with pytest.raises(ShardMismatch, match=shard_name(1)):
        preload(make_config(f"s3://{bucket}/llm/"))


def test_a_shard_missing_from_s3_is_named_before_anything_is_fetched(
    s3: Any, bucket: str, make_config: Any, other_entry: Path
) -> None:
    parts = shards()
    index = index_of(parts)
    del parts[shard_name(2)]
    upload(s3, bucket, parts, index)
    before = entries(other_entry)
    with pytest.raises(ShardMissing, match=shard_name(2)):
        preload(make_config(f"s3://{bucket}/llm/", "--cache-dir", str(other_entry)))
    assert entries(other_entry) == before


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda idx: idx["weight_map"].update({"s0.ids": "../x.safetensors"}), ShardIndexInvalid, "outside"),
        (lambda idx: idx["weight_map"].update({"s0.ids": "/abs/x.safetensors"}), ShardIndexInvalid, "outside"),
        (lambda idx: idx["weight_map"].pop("s2.mask"), ShardMismatch, "holds 's2.mask' which the index does not"),
        (lambda idx: idx["weight_map"].update({"extra": shard_name(0)}), ShardMismatch, "lacks 'extra'"),
    ],
    ids=["dotdot", "absolute", "tensor-not-in-index", "index-tensor-not-in-shard"],
)
def test_a_bad_index_is_a_named_error_and_the_partial_entry_is_removed(
    s3: Any, bucket: str, make_config: Any, other_entry: Path, change: Any, error: type[Exception], message: str
) -> None:
    parts = shards()
    index = index_of(parts)
    change(index)
    upload(s3, bucket, parts, index)
    before = entries(other_entry)
    with pytest.raises(error, match=message):
        preload(make_config(f"s3://{bucket}/llm/", "--cache-dir", str(other_entry)))
    assert entries(other_entry) == before


def test_a_shard_the_index_leaves_out_is_refused(s3: Any, bucket: str, make_config: Any, other_entry: Path) -> None:
    parts = shards()
    index = index_of({k: v for k, v in parts.items() if k != shard_name(2)})
    for t in parts[shard_name(2)]:
        index["weight_map"][t] = shard_name(1)  # the index moved them; the old shard is still there
    upload(s3, bucket, parts, index)
    with pytest.raises(ShardNotInIndex, match=shard_name(2)):
        preload(make_config(f"s3://{bucket}/llm/", "--cache-dir", str(other_entry)))


def test_duplicate_tensor_names_across_shards_are_refused(
    s3: Any, bucket: str, make_config: Any, other_entry: Path
) -> None:
    parts = shards()
    index = index_of(parts)
    parts[shard_name(2)]["s0.ids"] = parts[shard_name(0)]["s0.ids"]  # also in shard 1 (where the index has it)
    upload(s3, bucket, parts, index)
    before = entries(other_entry)
    with pytest.raises(ShardMismatch, match=rf"{shard_name(2)} disagrees .* holds 's0.ids' which the index puts in "
                       rf"{shard_name(0)}"):
        preload(make_config(f"s3://{bucket}/llm/", "--cache-dir", str(other_entry)))
    assert entries(other_entry) == before


@pytest.mark.parametrize("device", ["cpu", "none"])
def test_a_corrupt_shard_is_named_and_never_cached(
    s3: Any, bucket: str, make_config: Any, other_entry: Path, device: str
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    body = bytearray(safetensors_bytes(parts[shard_name(1)]))
    body[8:10] = b"[["  # the JSON header garbled
    s3.put_object(Bucket=bucket, Key="llm/" + shard_name(1), Body=bytes(body))
    before = entries(other_entry)
    with pytest.raises(CorruptModel, match=shard_name(1)):
        run(make_config, f"s3://{bucket}/llm/", device, other_entry)
    assert entries(other_entry) == before


def run(make_config: Any, uri: str, device: str, cache: Path, *extra: str) -> Any:
    config = make_config(uri, "--cache-dir", str(cache), "--device", device, *extra)
    if device == "none":
        from preloader.warm import warm

        return warm(config)
    return preload(config).result


class _FillsUp(FileSystem):
    """The cache disk fills once the first shard is in: ENOSPC from the next reservation (or write)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.reserved = 0
        self.written = 0

    def fallocate(self, fd: int, size: int) -> None:
        self.reserved += 1
        if self.where == "fallocate" and self.reserved > 2:  # index.json and shard 1 got theirs
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().fallocate(fd, size)

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        self.written += len(data)
        if self.where == "pwrite" and self.written > 600_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().pwrite(fd, data, offset)


@pytest.mark.parametrize("where", ["fallocate", "pwrite"])
@pytest.mark.parametrize("device", ["cpu", "none"])
def test_a_disk_that_fills_mid_model_is_disk_full_and_the_partial_entry_removed(
    s3: Any, bucket: str, make_config: Any, other_entry: Path, where: str, device: str
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    before = entries(other_entry)
    config = make_config(f"s3://{bucket}/llm/", "--cache-dir", str(other_entry), "--device", device)
    with pytest.raises(DiskFull, match="cache disk full"):
        if device == "none":
            from preloader.warm import warm

            warm(config, fs=_FillsUp(where))
        else:
            preload(config, fs=_FillsUp(where))
    assert entries(other_entry) == before
    leftovers = [p for p in other_entry.rglob("*") if p.name.startswith(".tmp-") or "model-0000" in p.name]
    assert leftovers == []


def test_device_none_fills_the_cache_without_torch(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    cache = tmp_path / "cache"
    probe = (
        "import sys, json; from preloader.__main__ import main; "
        "code = main(sys.argv[1:]); print(json.dumps({'torch': 'torch' in sys.modules})); sys.exit(code)"
    )
    args = [f"s3://{bucket}/llm/", "--device", "none", "--cache-dir", str(cache), "--progress", "never",
            "--termination-log", str(tmp_path / "t"), "--part-size", "256KiB"]
    for expected, extra in (("miss", []), ("hit", ["--page-cache"])):
        done = subprocess.run([sys.executable, "-c", probe, *args, *extra], capture_output=True, text=True,
                              env={**os.environ, **env, "PYTHONPATH": str(REPO)}, cwd=REPO, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.strip().splitlines()
        result, probe_out = json.loads(lines[-2]), json.loads(lines[-1])
        assert probe_out == {"torch": False}
        assert result["device"] == "none" and result["cache"] == expected and result["tensors"] == 0
        assert result["page_cache"] == bool(extra)
        by_path = {s["path"]: s for s in result["shards"]}
        assert [by_path[name]["tensors"] for name in parts] == [len(t) for t in parts.values()]
        assert "tensors" not in by_path["config.json"]
    # The cached files are the model's, as the initializer will link them.
    files = Path(result["cache_path"])
    for name, tensors in parts.items():
        assert (files / name).read_bytes() == safetensors_bytes(tensors)


def test_device_none_needs_a_cache_and_page_cache_needs_device_none(bucket: str, make_config: Any) -> None:
    assert main([f"s3://{bucket}/llm/", "--device", "none", "--progress", "never"], {}) == 2
    assert main([f"s3://{bucket}/llm/", "--device", "cpu", "--page-cache", "--cache-dir", "/tmp/x"], {}) == 2


def test_a_model_too_large_for_the_device_is_still_cached_then_refused(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    cache = tmp_path / "cache"
    with pytest.raises(DeviceOutOfMemory, match="the model is in the node cache"):
        preload(make_config(f"s3://{bucket}/llm/", "--cache-dir", str(cache), "--max-device-bytes", "1000"))
    assert [e.complete for e in ModelCache(cache).entries()] == [True]
    hit = run(make_config, f"s3://{bucket}/llm/", "none", cache)
    assert hit.cache == "hit"
    # Without a cache there is nothing to keep: refused before anything is fetched, as before.
    with pytest.raises(DeviceOutOfMemory, match=r"needs \d+ bytes on cpu"):
        preload(make_config(f"s3://{bucket}/llm/", "--max-device-bytes", "1000"))


class _FakeGpus:
    """Two 'GPUs' for the placement wiring on a machine without CUDA: the copies stay on the CPU,
    the free memory is ours to set (and to shrink as shards land, as a real GPU's would)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, free: list[int]) -> None:
        import preloader.preload as module

        self.free = free
        self.copied: list[tuple[str, int]] = []
        gpus = [torch.device("cuda", i) for i in range(len(free))]
        monkeypatch.setattr(module, "resolve_device", lambda spec: gpus[0])
        monkeypatch.setattr(module, "target_devices", lambda device, spec: gpus)
        monkeypatch.setattr(module, "available_bytes", lambda d: self.free[d.index])
        monkeypatch.setattr(module, "synchronize", lambda d: None)
        monkeypatch.setattr(module, "memory_used", lambda d, ts: 0)
        monkeypatch.setattr(module, "to_device", self.to_device)
        monkeypatch.setattr(module, "pinned_allocate", module.host_allocate)

    def to_device(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        self.free[device.index] -= size
        self.copied.append((str(device), size))
        return tensor


@pytest.mark.parametrize("cache", [True, False])
def test_shards_spread_over_gpus_each_checked_for_room_before_its_copy(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: bool
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    size = max(len(safetensors_bytes(t)) for t in parts.values())
    _FakeGpus(monkeypatch, [2 * size + size // 2, 2 * size + size // 2])  # two shards each
    extra = ("--cache-dir", str(tmp_path / "c")) if cache else ()
    out = preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda", *extra))
    figures = out.result.to_dict()
    assert [s["device"] for s in figures["shards"]] == ["cuda:0", "cuda:0", "cuda:1"]
    assert {k: v["shards"] for k, v in figures["devices"].items()} == {"cuda:0": 2, "cuda:1": 1}
    for name, tensors in parts.items():
        assert_bit_exact(tensors, out.tensors[name])


def test_a_gpu_that_lost_its_room_meanwhile_sends_the_shard_to_the_next(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    size = max(len(safetensors_bytes(t)) for t in parts.values())
    gpus = _FakeGpus(monkeypatch, [4 * size, 4 * size])
    real = gpus.to_device

    def another_process_takes_gpu0(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        gpus.free[0] = min(gpus.free[0], size // 2)
        return real(tensor, device)

    monkeypatch.setattr("preloader.preload.to_device", another_process_takes_gpu0)
    out = preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda", "--cache-dir", str(tmp_path / "c")))
    assert [s["device"] for s in out.result.to_dict()["shards"]] == ["cuda:0", "cuda:1", "cuda:1"]


def test_a_model_for_no_combination_of_gpus_names_the_sizes_and_is_cached(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = shards()
    upload(s3, bucket, parts)
    size = max(len(safetensors_bytes(t)) for t in parts.values())
    _FakeGpus(monkeypatch, [size + size // 2, size + size // 2])
    with pytest.raises(DeviceOutOfMemory, match=r"in 3 shard\(s\).* does not fit 2 GPU\(s\).*the model is in the node"):
        preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda", "--cache-dir", str(tmp_path / "c")))
    assert [e.complete for e in ModelCache(tmp_path / "c").entries()] == [True]
    with pytest.raises(DeviceOutOfMemory, match=r"does not fit 2 GPU\(s\)"):
        preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda"))  # no cache: refused before fetching


@pytest.mark.parametrize("device", ["cpu", "none"])
def test_a_hit_on_an_entry_written_with_larger_parts_streams_them_whole(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, device: str
) -> None:
    """The entry's recorded chunks (1 MiB here) are longer than this run's --part-size (256 KiB): each is
    read and CRC-checked whole, in a buffer of its length."""
    parts = shards()
    upload(s3, bucket, parts)
    cache = tmp_path / "cache"
    run(make_config, f"s3://{bucket}/llm/", device, cache, "--part-size", "1MiB")
    hit = run(make_config, f"s3://{bucket}/llm/", device, cache, "--concurrency", "2")
    assert hit.cache == "hit" and hit.to_dict()["shards"]
