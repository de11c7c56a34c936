"""Pure decisions about sharded safetensors checkpoints (``model.safetensors.index.json``).

A sharded checkpoint is an index (``{"weight_map": {tensor: shard file}}``) beside its shards
(``model-00001-of-00030.safetensors`` ...). Before anything is fetched, the index is checked against
the listing: every shard it names exists under the prefix, no name leaves the prefix, no tensor is
listed twice, and no shard of the checkpoint is left out of it. Each shard's own header is then
checked against the index as it arrives: exactly the tensors the index puts there. Only the shards
the index names are loaded; another ``.safetensors`` file beside them (``consolidated.safetensors``)
is cached as a plain file, not loaded, so no tensor is loaded twice.

Nothing here does I/O or imports torch (the ``--device none`` run uses it too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from preloader.errors import ShardIndexInvalid, ShardMismatch, ShardMissing, ShardNotInIndex, UnsafeKey
from preloader.plan import ModelFile, safe_relative_path

INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20  # real indexes are well under 1 MiB (a few thousand tensor names)


@dataclass(frozen=True)
class ShardIndex:
    """A checked index: which file holds each tensor, the shards in file order."""

    index: PurePosixPath  # the index file, relative to the model root
    weight_map: dict[str, PurePosixPath]  # tensor name -> shard path (relative to the model root)
    shards: tuple[PurePosixPath, ...]

    def tensors_of(self, shard: PurePosixPath) -> frozenset[str]:
        return frozenset(name for name, where in self.weight_map.items() if where == shard)


def find_index(files: Sequence[ModelFile]) -> ModelFile | None:
    """The model's index file, or None (an unsharded model); two indexes at the root are refused."""
    found = [f for f in files if f.path.name.endswith(INDEX_SUFFIX) and len(f.path.parts) == 1]
    if len(found) > 1:
        names = ", ".join(str(f.path) for f in found)
        raise ShardIndexInvalid(f"more than one safetensors index at the model root ({names}); which one is the model?")
    return found[0] if found else None


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ShardIndexInvalid(f"tensor {key[:200]!r} is listed twice in the index")
        seen[key] = value
    return seen


def parse_index(raw: bytes, index: PurePosixPath) -> dict[str, str]:
    """The index's weight map (tensor -> shard name as written); a tensor named twice is refused
    (``json.loads`` would keep the last one silently)."""
    if len(raw) > MAX_INDEX_BYTES:
        raise ShardIndexInvalid(f"{index}: {len(raw)} bytes; an index over {MAX_INDEX_BYTES} is refused")
    try:
        doc = json.loads(raw, object_pairs_hook=_no_duplicates)
    except ShardIndexInvalid as exc:
        raise ShardIndexInvalid(f"{index}: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ShardIndexInvalid(f"{index}: not valid JSON ({str(exc)[:120]})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ShardIndexInvalid(f"{index}: no weight_map (an object naming each tensor's shard)")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise ShardIndexInvalid(f"{index}: weight_map values must be shard file names")
    return {str(k): str(v) for k, v in weight_map.items()}


def check_index(index: PurePosixPath, weight_map: dict[str, str], files: Sequence[ModelFile]) -> ShardIndex:
    """The index against the listing: shards inside the prefix, all present, none left out."""
    folder = index.parent
    listed = {f.path for f in files}
    resolved: dict[str, PurePosixPath] = {}
    for tensor, name in weight_map.items():
        try:
            rel = safe_relative_path(name)
        except UnsafeKey:
            raise ShardIndexInvalid(f"{index}: shard {name[:200]!r} (of tensor {tensor[:80]!r}) is outside the "
                                    "model's prefix") from None
        resolved[tensor] = folder / rel
    shards = sorted(set(resolved.values()), key=str)
    missing = [s for s in shards if s not in listed]
    if missing:
        raise ShardMissing(
            f"{index} names {len(missing)} shard(s) not in the model's prefix: {', '.join(map(str, missing[:5]))}"
        )
    not_safetensors = [s for s in shards if not s.name.endswith(".safetensors")]
    if not_safetensors:
        raise ShardIndexInvalid(f"{index}: shard {not_safetensors[0]} is not a .safetensors file")
    stem = index.name[: -len(INDEX_SUFFIX)]
    named = set(shards)
    extra = [
        f.path
        for f in files
        if f.path.parent == folder
        and f.path.name.startswith(f"{stem}-")
        and f.path.name.endswith(".safetensors")
        and f.path not in named
    ]
    if extra:
        raise ShardNotInIndex(
            f"{', '.join(map(str, extra[:5]))}: shard(s) of the checkpoint beside {index} that it does not name"
        )
    return ShardIndex(index, resolved, tuple(shards))


def check_shard_header(index: ShardIndex, shard: PurePosixPath, names: Sequence[str]) -> None:
    """A shard's header holds exactly the tensors the index puts in it."""
    have = set(names)
    want = index.tensors_of(shard)
    elsewhere = sorted(n for n in have - want if n in index.weight_map)
    unknown = sorted(n for n in have - want if n not in index.weight_map)
    absent = sorted(want - have)
    problems = []
    if elsewhere:
        problems.append(f"holds {elsewhere[0]!r} which the index puts in {index.weight_map[elsewhere[0]]}"
                        + (f" (and {len(elsewhere) - 1} more)" if len(elsewhere) > 1 else ""))
    if unknown:
        problems.append(f"holds {unknown[0]!r} which the index does not list"
                        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    if absent:
        problems.append(f"lacks {absent[0]!r} which the index puts there"
                        + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""))
    if problems:
        raise ShardMismatch(f"{shard} disagrees with {index.index}: " + "; ".join(problems))


def loaded_files(files: Sequence[ModelFile], index: ShardIndex | None) -> set[PurePosixPath]:
    """The files whose tensors are loaded: the index's shards, or without an index every
    safetensors and PyTorch file (as before sharding was known)."""
    if index is not None:
        return set(index.shards) | {f.path for f in files if f.format == "torch"}
    return {f.path for f in files if f.format != "other"}
