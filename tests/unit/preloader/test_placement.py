"""Shards over several GPUs: a pure function of shard sizes and free memory per GPU."""

from __future__ import annotations

import pytest

from preloader.errors import DeviceOutOfMemory
from preloader.placement import place_shards, room_for

GiB = 1 << 30


def test_one_gpu_with_room_takes_every_shard() -> None:
    assert place_shards([GiB] * 4, [80 * GiB]) == [0, 0, 0, 0]


def test_a_model_larger_than_one_gpu_fills_them_in_order() -> None:
    # 70 GiB in 14 shards of 5 GiB over two 40 GiB GPUs: 8 shards on GPU 0, 6 on GPU 1.
    assert place_shards([5 * GiB] * 14, [40 * GiB, 40 * GiB]) == [0] * 8 + [1] * 6


def test_a_shard_that_does_not_fit_what_is_left_moves_on_and_later_ones_follow() -> None:
    assert place_shards([3 * GiB, 3 * GiB, GiB], [5 * GiB, 5 * GiB]) == [0, 1, 1]


def test_unequal_free_memory_is_respected() -> None:
    assert place_shards([2 * GiB] * 5, [2 * GiB, 10 * GiB]) == [0, 1, 1, 1, 1]


def test_a_model_that_fits_no_combination_names_the_sizes() -> None:
    expected = (r"the model \(15.00 GiB in 3 shard\(s\), largest 5.00 GiB\) does not fit "
                r"2 GPU\(s\) with 6.00 GiB, 6.00 GiB free: c.safetensors \(5.00 GiB\)")
    with pytest.raises(DeviceOutOfMemory, match=expected):
        place_shards([5 * GiB] * 3, [6 * GiB, 6 * GiB], ["a.safetensors", "b.safetensors", "c.safetensors"])


def test_when_the_order_wastes_room_largest_first_still_finds_a_placement() -> None:
    # In order: 3 -> GPU 0, 5 -> GPU 1, then 3 fits neither; largest first: 5 -> 0, 3 -> 1, 3 -> 1.
    assert place_shards([3 * GiB, 5 * GiB, 3 * GiB], [5 * GiB, 6 * GiB]) == [1, 0, 1]


def test_a_shard_larger_than_every_gpu_is_refused() -> None:
    with pytest.raises(DeviceOutOfMemory, match="shard 0"):
        place_shards([9 * GiB], [8 * GiB, 8 * GiB])


def test_no_gpu_is_refused() -> None:
    with pytest.raises(DeviceOutOfMemory, match="no GPU"):
        place_shards([1], [])


def test_before_each_copy_the_planned_gpu_is_checked_again() -> None:
    assert room_for(GiB, 0, [2 * GiB, 2 * GiB]) == 0
    assert room_for(GiB, 0, [GiB // 2, 2 * GiB]) == 1  # another process took GPU 0's memory meanwhile
    with pytest.raises(DeviceOutOfMemory, match="planned for GPU 1 no longer fits"):
        room_for(GiB, 1, [4 * GiB, GiB // 2])  # never back to a GPU earlier shards filled
