"""Real model files for the tests: safetensors written by the safetensors library, torch files by
torch.save, and the bit-exact comparison the round-trip tests use."""

from __future__ import annotations

import torch
from safetensors.torch import save


def sample_tensors(seed: int, scale: int = 1) -> dict[str, torch.Tensor]:
    """A few MB of tensors in several dtypes, including ones numpy lacks (bf16, fp8)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(256 * scale, 512, generator=gen),
        "layer.0.bias": torch.randn(7, generator=gen).to(torch.float16),
        "layer.0.weight": torch.randn(300, 301, generator=gen).to(torch.bfloat16),
        "layer.1.fp8": torch.randn(64, 33, generator=gen).to(torch.float8_e4m3fn),
        "ids": torch.randint(-(2**40), 2**40, (1000,), generator=gen, dtype=torch.int64),
        "mask": torch.rand(999, generator=gen) > 0.5,
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save(tensors, metadata={"format": "pt"})


def assert_bit_exact(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        got = actual[name]
        assert got.dtype == tensor.dtype, name
        assert got.shape == tensor.shape, name
        assert torch.equal(as_bytes(got.cpu()), as_bytes(tensor)), name


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so NaNs and -0.0 compare bit for bit, not by value."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)
