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
