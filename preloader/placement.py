"""Pure decision: which GPU takes which shard, for a model larger than one GPU.

Shards go in file order to the first GPU that still has room, filling GPU 0 before GPU 1 (the
layers of a checkpoint are in order, so each GPU holds a contiguous run of them, as a pipeline or
``device_map="sequential"`` places them); when the order leaves too much room unused, largest
first. A shard is never split. Nothing here reads the devices:
the caller passes each GPU's free bytes (``torch.cuda.mem_get_info``), and checks them again before
each copy (``room_for``), because memory taken by another process meanwhile is not ours to use.
"""

from __future__ import annotations

from collections.abc import Sequence

from preloader.errors import DeviceOutOfMemory


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def place_shards(sizes: Sequence[int], free: Sequence[int], labels: Sequence[str] | None = None) -> list[int]:
    """Index of the GPU for each shard (sizes in file order). In order when that fits; else largest
    shard first, each to the first GPU with room (first-fit decreasing, which finds a packing in
    every case met in practice, not in every case there is); else DeviceOutOfMemory naming the sizes."""
    if not free:
        raise DeviceOutOfMemory("no GPU to place the model on")
    in_order = _in_order(sizes, free)
    if in_order is not None:
        return in_order
    left = list(free)
    placed = [-1] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        gpu = next((g for g in range(len(left)) if sizes[i] <= left[g]), None)
        if gpu is None:
            name = labels[i] if labels else f"shard {i}"
            raise DeviceOutOfMemory(
                f"the model ({_gib(sum(sizes))} in {len(sizes)} shard(s), largest {_gib(max(sizes))}) does not fit "
                f"{len(free)} GPU(s) with {', '.join(_gib(f) for f in free)} free: {name} ({_gib(sizes[i])}) "
                "found no room"
            )
        left[gpu] -= sizes[i]
        placed[i] = gpu
    return placed


def _in_order(sizes: Sequence[int], free: Sequence[int]) -> list[int] | None:
    """Fill GPU 0, then GPU 1, ... in file order; None when that runs out of GPUs."""
    left = list(free)
    placed: list[int] = []
    gpu = 0
    for size in sizes:
        while gpu < len(left) and size > left[gpu]:
            gpu += 1
        if gpu == len(left):
            return None
        left[gpu] -= size
        placed.append(gpu)
    return placed


def room_for(size: int, planned: int, free_now: Sequence[int]) -> int:
    """The GPU to copy a shard to now: the planned one if it still has room, else the next one
    that has; DeviceOutOfMemory when none has (another process took the memory)."""
    candidates: list[int] = [planned, *range(planned + 1, len(free_now))]
    for gpu in candidates:
        if size <= free_now[gpu]:
            return gpu
    raise DeviceOutOfMemory(
        f"a {_gib(size)} shard planned for GPU {planned} no longer fits: free now "
        f"{', '.join(_gib(f) for f in free_now)}"
    )
