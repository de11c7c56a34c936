"""The preload benchmark's model file (the server it is pulled from is ``devstack.nginx_s3``)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def make_model(path: Path, size: int) -> Path:
    """A safetensors file of about ``size`` bytes: bf16/fp32 layers like a small LLM's, random bits."""
    if path.exists() and abs(path.stat().st_size - size) < (8 << 20):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    remaining, index = size, 0
    while remaining > (1 << 20):
        n = min(64 << 20, remaining) // 2
        rows = n // 4096
        tensors[f"layers.{index}.weight"] = torch.randint(
            0, 2**15, (rows, 4096), generator=gen, dtype=torch.int16
        ).view(torch.bfloat16)
        remaining -= rows * 4096 * 2
        index += 1
    tensors["norm.weight"] = torch.ones(4096, dtype=torch.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
