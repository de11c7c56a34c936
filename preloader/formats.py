"""Deserialisation: safetensors as zero-copy views onto the download buffer; PyTorch files safely.

safetensors is parsed here (an 8-byte length, a JSON header, a flat data section) instead of with
``safetensors.torch.load``, which takes ``bytes`` and so copies the whole model twice; the header is
validated by ``plan.plan_safetensors`` and every tensor is a ``torch.frombuffer`` view. PyTorch
``.pt/.pth/.bin`` files go through ``torch.load(weights_only=True)`` only: a pickle that asks for
any global outside torch's allow-list is refused by torch's restricted unpickler before anything
runs, and we turn that into ``UnsafePickle``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import torch

from preloader.errors import CorruptModel, UnsafePickle
from preloader.plan import (
    TensorSpec,
    is_torch_file,
    parse_header,
    plan_safetensors,
    safetensors_header_size,
)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "I16": torch.int16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "F32": torch.float32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F64": torch.float64,
}


def safetensors_layout(
    view: memoryview, size: int, wait_for: Callable[[int], None], name: str
) -> tuple[int, list[TensorSpec]]:
    """(offset of the data section, validated tensor specs); waits only for the header bytes."""
    wait_for(min(8, size))
    try:
        header_len = safetensors_header_size(view[:8], size)
    except CorruptModel as exc:
        raise CorruptModel(f"{name}: {exc}") from None
    wait_for(8 + header_len)
    header = parse_header(bytes(view[8 : 8 + header_len]), name)
    data_start = 8 + header_len
    try:
        return data_start, plan_safetensors(header, size - data_start)
    except CorruptModel as exc:
        raise CorruptModel(f"{name}: {exc}") from None


def tensor_view(base: torch.Tensor, data_start: int, spec: TensorSpec) -> torch.Tensor:
    """A view of one tensor inside the uint8 buffer; copied only if the offset is misaligned."""
    dtype = TORCH_DTYPES[spec.dtype]
    raw = base[data_start + spec.begin : data_start + spec.end]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if (data_start + spec.begin) % itemsize:
        raw = raw.clone()  # old writers did not pad the header; view(dtype) needs alignment
    return raw.view(dtype).view(spec.shape)


def load_torch(view: memoryview, name: str) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True; refuses code-carrying pickles, never executes them."""
    if not is_torch_file(view[:4]):
        raise CorruptModel(f"{name}: not a PyTorch file (neither a zip archive nor a pickle)")
    try:
        obj = torch.load(io.BytesIO(view), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines() or [""]
        # torch names the offending import "Unsupported global: GLOBAL module.name"; other refusals
        # (a truncated or garbled stream) are a corrupt file, not an unsafe one.
        detail = next((line for line in lines if "unsupported global" in line.lower()), "")
        if not detail:  # refused for being malformed, not for what it would import
            raise CorruptModel(f"{name}: not a readable PyTorch file ({lines[0].strip()[:200]})") from None
        raise UnsafePickle(
            f"{name}: refused to unpickle: the file needs code outside torch's weights-only allow-list "
            f"({detail.strip()}); convert it to safetensors"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, RecursionError) as exc:
        raise CorruptModel(f"{name}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from None
    return dict(_flatten(obj, ""))


def _flatten(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Name every tensor of a (possibly nested) state dict as dotted paths."""
    if isinstance(obj, torch.Tensor):
        yield prefix or "tensor", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            yield from _flatten(value, f"{prefix}.{index}" if prefix else str(index))
