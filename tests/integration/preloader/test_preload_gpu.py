"""The CUDA path: pinned buffers, async copies, device memory reported. Runs only where CUDA is."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.preload import preload

pytestmark = [
    pytest.mark.integration,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine"),
]


def test_safetensors_land_on_the_gpu_bit_exact(s3: Any, bucket: str, make_config: Any, tmp_path: Any) -> None:
    tensors = sample_tensors(1, scale=8)
    s3.put_object(Bucket=bucket, Key="g/model.safetensors", Body=safetensors_bytes(tensors))
    for expected_cache in ("miss", "hit"):
        out = preload(make_config(f"s3://{bucket}/g/", "--device", "cuda", "--cache-dir", str(tmp_path / "c")))
        loaded = out.tensors["model.safetensors"]
        assert all(t.is_cuda for t in loaded.values())
        assert out.result.device.startswith("cuda") and out.result.cache == expected_cache
        assert out.result.device_memory_bytes >= sum(t.numel() * t.element_size() for t in tensors.values())
        assert_bit_exact(tensors, loaded)


def test_model_larger_than_free_gpu_memory_is_refused(s3: Any, bucket: str, make_config: Any) -> None:
    from preloader.errors import DeviceOutOfMemory

    s3.put_object(Bucket=bucket, Key="g.safetensors", Body=safetensors_bytes(sample_tensors(2)))
    with pytest.raises(DeviceOutOfMemory, match="cuda"):
        preload(make_config(f"s3://{bucket}/g.safetensors", "--device", "cuda", "--max-device-bytes", "1000"))


def _upload_shards(s3: Any, bucket: str, n: int) -> dict[str, dict[str, torch.Tensor]]:
    import json

    parts = {f"model-{i + 1:05d}-of-{n:05d}.safetensors": {f"s{i}.{k}": v for k, v in sample_tensors(30 + i, 8).items()}
             for i in range(n)}
    for name, tensors in parts.items():
        s3.put_object(Bucket=bucket, Key=f"llm/{name}", Body=safetensors_bytes(tensors))
    index = {"weight_map": {t: name for name, ts in parts.items() for t in ts}}
    s3.put_object(Bucket=bucket, Key="llm/model.safetensors.index.json", Body=json.dumps(index).encode())
    return parts


@pytest.mark.parametrize("cache", [True, False])
def test_a_sharded_model_lands_on_the_gpu_shard_by_shard(
    s3: Any, bucket: str, make_config: Any, tmp_path: Any, cache: bool
) -> None:
    parts = _upload_shards(s3, bucket, 3)
    extra = ("--cache-dir", str(tmp_path / "c")) if cache else ()
    out = preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda:0", *extra))
    for name, tensors in parts.items():
        assert all(t.device == torch.device("cuda", 0) for t in out.tensors[name].values())
        assert_bit_exact(tensors, out.tensors[name])
    figures = out.result.to_dict()
    assert [s["device"] for s in figures["shards"]] == ["cuda:0"] * 3
    assert figures["devices"]["cuda:0"]["shards"] == 3 and figures["devices"]["cuda:0"]["memory_bytes"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_model_larger_than_one_gpu_is_spread_over_the_gpus(
    s3: Any, bucket: str, make_config: Any, tmp_path: Any
) -> None:
    parts = _upload_shards(s3, bucket, 4)
    shard = max(len(safetensors_bytes(t)) for t in parts.values())
    # Each GPU may take two shards: the model fits two GPUs, not one.
    cap = str(2 * shard + shard // 2)
    out = preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda", "--cache-dir", str(tmp_path / "c"),
                              "--max-device-bytes", cap))
    figures = out.result.to_dict()
    used = {s["device"] for s in figures["shards"]}
    assert len(used) == 2, figures["shards"]
    for name, tensors in parts.items():
        assert_bit_exact(tensors, out.tensors[name])
    assert sum(d["shards"] for d in figures["devices"].values()) == 4


def test_a_model_too_large_for_the_gpus_is_cached_then_refused(
    s3: Any, bucket: str, make_config: Any, tmp_path: Any
) -> None:
    from preloader.errors import DeviceOutOfMemory

    _upload_shards(s3, bucket, 2)
    with pytest.raises(DeviceOutOfMemory, match="the model is in the node cache"):
        preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda", "--cache-dir", str(tmp_path / "c"),
                            "--max-device-bytes", "1000"))
    hit = preload(make_config(f"s3://{bucket}/llm/", "--device", "cuda", "--cache-dir", str(tmp_path / "c")))
    assert hit.result.cache == "hit"
