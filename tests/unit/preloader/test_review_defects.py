"""Defects from the preloader's review that pure code decides: safetensors headers the reference
library rejects, key shapes that cannot be files, torch files told apart by content, the torch floor."""

from __future__ import annotations

import io
import re
import struct
import tomllib
from pathlib import Path

import pytest
import torch

from preloader.errors import CorruptModel, UnsafeKey, UnsafePickle
from preloader.formats import load_torch, safetensors_layout
from preloader.plan import (
    MAX_TENSORS,
    ObjectInfo,
    S3Location,
    check_key,
    is_torch_file,
    plan_safetensors,
    safe_relative_path,
    select_files,
)

REPO = Path(__file__).resolve().parents[3]


def _layout(header: bytes | str) -> None:
    raw = header.encode() if isinstance(header, str) else header
    blob = struct.pack("<Q", len(raw)) + raw + b"\x00" * 8
    safetensors_layout(memoryview(blob), len(blob), lambda n: None, "m.safetensors")


class TestSafetensorsHeaders:
    @pytest.mark.parametrize(
        ("header", "needle"),
        [
            ({"__metadata__": {"format": 1}}, "strings to strings"),
            ({"__metadata__": ["x"]}, "strings to strings"),
            ({"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, "bad shape"),
            ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}, "bad data_offsets"),
            ({"a": {"dtype": "U8", "shape": [2**64], "data_offsets": [0, 1]}}, "bad shape"),
            ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 2**70]}}, "bad data_offsets"),
            ({"a": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, "overflows"),
            ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, "unsupported dtype"),
        ],
    )
    def test_what_the_reference_library_rejects_is_rejected(self, header: object, needle: str) -> None:
        with pytest.raises(CorruptModel, match=needle):
            plan_safetensors(header, 8)

    def test_too_many_tensors_is_refused_before_planning_them(self) -> None:
        header = {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_TENSORS + 1)}
        with pytest.raises(CorruptModel, match="tensors; more than"):
            plan_safetensors(header, 0)

    @pytest.mark.parametrize(
        ("header", "needle"),
        [
            ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
            ('{"a": {"dtype": "U8", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 1]}}', "unreadable number"),
            (b'{"a": "\xff\xfe"}', "not valid JSON"),
        ],
    )
    def test_malformed_json_is_corrupt_not_an_internal_error(self, header: bytes | str, needle: str) -> None:
        with pytest.raises(CorruptModel, match=needle):
            _layout(header)


class TestKeys:
    def test_a_file_and_a_directory_of_the_same_name_are_refused(self) -> None:
        objects = [ObjectInfo("m/a", 1, "e"), ObjectInfo("m/a/b", 1, "e")]
        with pytest.raises(UnsafeKey, match="cannot both be files"):
            select_files(objects, S3Location("b", "m/"))

    def test_a_255_byte_segment_is_a_name_a_256_byte_one_is_refused(self) -> None:
        assert safe_relative_path("d/" + "x" * 255).name == "x" * 255
        with pytest.raises(UnsafeKey, match="longer than 255 bytes"):
            safe_relative_path("d/" + "x" * 256)

    @pytest.mark.parametrize("key", ["a/../m.safetensors", "a//m.safetensors", "./m.safetensors", "a/./b/"])
    def test_single_object_and_prefix_keys_get_the_same_rule(self, key: str) -> None:
        with pytest.raises(UnsafeKey):
            check_key(S3Location("b", key))

    def test_plain_keys_pass(self) -> None:
        check_key(S3Location("b", "llm/model.safetensors"))
        check_key(S3Location("b", "llm/"))
        check_key(S3Location("b", ""))


class TestTorchFilesByContent:
    def test_torch_save_outputs_are_torch_files(self) -> None:
        for legacy in (False, True):
            buffer = io.BytesIO()
            torch.save({"w": torch.ones(2)}, buffer, _use_new_zipfile_serialization=not legacy)
            assert is_torch_file(buffer.getvalue()[:4])

    @pytest.mark.parametrize("head", [b"\n\x0esentencepiece", b"GGUF\x03\x00", b"ggml", b"\x00\x00\x80\x3f", b""])
    def test_other_bin_files_are_not(self, head: bytes) -> None:
        assert not is_torch_file(head)

    def test_a_garbled_pickle_is_corrupt_not_unsafe(self) -> None:
        with pytest.raises(CorruptModel, match="not a readable PyTorch file"):
            load_torch(memoryview(b"\x80\x02garbage" * 10), "x.pt")

    def test_a_non_torch_bin_given_to_load_torch_is_named_truthfully(self) -> None:
        with pytest.raises(CorruptModel, match="neither a zip archive nor a pickle"):
            load_torch(memoryview(b"GGUF\x03\x00\x00\x00"), "model.bin")
        assert not issubclass(CorruptModel, UnsafePickle)


def _version(text: str) -> tuple[int, int, int]:
    major, minor, patch = ([int(x) for x in re.findall(r"\d+", text)[:3]] + [0, 0])[:3]
    return major, minor, patch


def test_torch_floor_is_past_the_weights_only_advisories() -> None:
    """torch <= 2.5.1 lets a pickle bypass weights_only=True (CVE-2025-32434, fixed in 2.6); a later
    advisory is fixed only in 2.10. pyproject's floor and the image's pin must both be past them, the
    pin inside pyproject's range, and the CI pin (constraints.txt) admitted too."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [spec] = [d for d in extras["preloader"] if d.replace(" ", "").startswith("torch")]
    floor = _version(spec.split(">=")[1].split(",")[0])
    assert floor >= (2, 10, 0), spec
    [pin] = re.findall(r"^torch==(\S+)", (REPO / "requirements-preloader-gpu.lock").read_text(), re.MULTILINE)
    assert floor <= _version(pin) < (3, 0, 0), pin
    [ci] = re.findall(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert _version(ci) >= floor, ci
