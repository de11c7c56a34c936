"""Sharded checkpoints: the index read and checked against the listing and against each shard's header."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

import pytest

from preloader.errors import ShardIndexInvalid, ShardMismatch, ShardMissing, ShardNotInIndex
from preloader.plan import ModelFile, ObjectInfo
from preloader.shards import check_index, check_shard_header, find_index, loaded_files, parse_index

INDEX = PurePosixPath("model.safetensors.index.json")
S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def files(*names: str) -> list[ModelFile]:
    return [ModelFile(ObjectInfo(f"llm/{n}", 10, '"e"'), PurePosixPath(n)) for n in names]


def index_bytes(weight_map: dict[str, str]) -> bytes:
    return json.dumps({"metadata": {"total_size": 20}, "weight_map": weight_map}).encode()


LISTING = files(str(INDEX), S1, S2, "config.json")
MAP = {"a": S1, "b": S1, "c": S2}


def test_a_good_index_names_its_shards_and_their_tensors() -> None:
    index = check_index(INDEX, parse_index(index_bytes(MAP), INDEX), LISTING)
    assert index.shards == (PurePosixPath(S1), PurePosixPath(S2))
    assert index.tensors_of(PurePosixPath(S1)) == {"a", "b"}
    check_shard_header(index, PurePosixPath(S1), ["b", "a"])
    check_shard_header(index, PurePosixPath(S2), ["c"])
    assert loaded_files(LISTING, index) == {PurePosixPath(S1), PurePosixPath(S2)}


def test_the_index_is_found_at_the_root_only_and_once() -> None:
    assert find_index(LISTING) == LISTING[0]
    assert find_index(files(S1, "sub/model.safetensors.index.json")) is None
    with pytest.raises(ShardIndexInvalid, match="more than one"):
        find_index(files("a.safetensors.index.json", "b.safetensors.index.json"))


def test_a_tensor_listed_twice_in_the_index_is_refused() -> None:
    raw = b'{"weight_map": {"a": "' + S1.encode() + b'", "a": "' + S2.encode() + b'"}}'
    with pytest.raises(ShardIndexInvalid, match="'a' is listed twice"):
        parse_index(raw, INDEX)


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"weight_map": {}}', b'{"weight_map": {"a": 3}}'])
def test_an_unusable_index_is_refused(raw: bytes) -> None:
    with pytest.raises(ShardIndexInvalid, match=re.escape("model.safetensors.index.json")):
        parse_index(raw, INDEX)


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/x.safetensors", "a/../../x.safetensors", ""])
def test_a_shard_outside_the_prefix_is_refused(name: str) -> None:
    with pytest.raises(ShardIndexInvalid, match="outside the model's prefix"):
        check_index(INDEX, {"a": name}, LISTING)


def test_a_shard_missing_from_s3_is_named() -> None:
    with pytest.raises(ShardMissing, match=re.escape("model-00002-of-00002.safetensors")):
        check_index(INDEX, parse_index(index_bytes(MAP), INDEX), files(str(INDEX), S1))


def test_a_shard_of_the_checkpoint_the_index_leaves_out_is_refused() -> None:
    listing = files(str(INDEX), S1, S2, "model-00003-of-00003.safetensors")
    with pytest.raises(ShardNotInIndex, match=re.escape("model-00003-of-00003.safetensors")):
        check_index(INDEX, parse_index(index_bytes(MAP), INDEX), listing)


def test_another_safetensors_file_beside_the_checkpoint_is_cached_not_loaded() -> None:
    listing = files(str(INDEX), S1, S2, "consolidated.safetensors")
    index = check_index(INDEX, parse_index(index_bytes(MAP), INDEX), listing)
    assert PurePosixPath("consolidated.safetensors") not in loaded_files(listing, index)


def test_an_index_naming_a_non_safetensors_shard_is_refused() -> None:
    with pytest.raises(ShardIndexInvalid, match=re.escape("not a .safetensors file")):
        check_index(INDEX, {"a": "config.json"}, LISTING)


@pytest.mark.parametrize(
    ("shard", "names", "message"),
    [
        (S1, ["a"], "lacks 'b' which the index puts there"),
        (S1, ["a", "b", "c"], "holds 'c' which the index puts in model-00002"),  # a tensor in two shards
        (S2, ["c", "zzz"], "holds 'zzz' which the index does not list"),
    ],
)
def test_a_shard_header_that_disagrees_with_the_index_is_refused(shard: str, names: list[str], message: str) -> None:
    index = check_index(INDEX, parse_index(index_bytes(MAP), INDEX), LISTING)
    with pytest.raises(ShardMismatch, match=message):
        check_shard_header(index, PurePosixPath(shard), names)


def test_in_a_subfolder_the_shards_are_relative_to_the_index() -> None:
    listing = files("m/model.safetensors.index.json", f"m/{S1}")
    index = check_index(PurePosixPath("m/model.safetensors.index.json"), {"a": S1}, listing)
    assert index.shards == (PurePosixPath(f"m/{S1}"),)


def test_without_an_index_every_model_file_is_loaded() -> None:
    assert loaded_files(LISTING, None) == {PurePosixPath(S1), PurePosixPath(S2)}
