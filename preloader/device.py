"""The target device: resolve --device, check it has room, copy tensors there, measure use.

Knows nothing about S3 or files. The CPU path is a no-op copy (tensors stay views onto the host
buffer); the CUDA path copies from pinned memory with ``non_blocking=True`` so copies overlap with
downloads and deserialisation, then synchronises once.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from preloader.errors import DeviceOutOfMemory, UsageError

# torch.OutOfMemoryError exists from torch 2.5 on (and torch.cuda.OutOfMemoryError is then an alias
# of it); before that only torch.cuda.OutOfMemoryError exists. Resolved once, at import.
OUT_OF_MEMORY: type[Exception] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def resolve_device(spec: str, cuda_available: bool | None = None) -> torch.device:
    """'auto' -> cuda:current when CUDA is present else cpu; 'cuda'/'cuda:N' must exist."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if has_cuda else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if not has_cuda:
        raise UsageError(f"--device {spec} but CUDA is not available on this machine")
    index = int(match.group(1)) if match.group(1) else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def target_devices(device: torch.device, spec: str) -> list[torch.device]:
    """The devices a model may be spread over: every visible GPU for ``cuda``/``auto`` on CUDA (the
    Job holds as many as the predictor asks for), only that one for ``cuda:N``, the CPU for cpu."""
    if device.type == "cuda" and spec in ("auto", "cuda"):
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable from the kernel: what a CPU-device load may use without swapping or OOM."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("MemAvailable not found in /proc/meminfo")


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return tensor
    try:
        return tensor.to(device, non_blocking=True)
    except OUT_OF_MEMORY as exc:
        raise DeviceOutOfMemory(f"out of memory on {device} while copying tensors: {exc}") from None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_used(device: torch.device, tensors: list[torch.Tensor]) -> int:
    """Device bytes held: the CUDA allocator's count, or the tensors' bytes on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return sum(t.numel() * t.element_size() for t in tensors)
