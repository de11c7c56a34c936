"""Pure decisions of plan.py: range maths (property-tested), response checks, URIs, safety, formats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from preloader.errors import CorruptModel, DeviceOutOfMemory, UnsafeKey, UsageError
from preloader.plan import (
    ByteRange,
    ObjectInfo,
    backoff_delay,
    byte_ranges,
    check_fits,
    effective_concurrency,
    file_format,
    is_md5_etag,
    listing_disagreement,
    parse_content_range,
    parse_s3_uri,
    plan_safetensors,
    range_response_problem,
    safe_relative_path,
    select_files,
)


class TestByteRanges:
    @given(data=st.data(), size=st.integers(0, 10**12))
    def test_ranges_tile_the_object_exactly(self, data: st.DataObject, size: int) -> None:
        part = data.draw(st.integers(max(1, size // 2000), 10**10))  # keep the list small
        ranges = byte_ranges(size, part)
        assert len(ranges) == -(-size // part)
        assert sum(r.length for r in ranges) == size
        expected_start = 0
        for r in ranges:
            assert r.start == expected_start
            assert 1 <= r.length <= part
            expected_start = r.end + 1
        assert expected_start == size
        assert all(r.length == part for r in ranges[:-1])

    def test_header_is_inclusive(self) -> None:
        assert [r.header for r in byte_ranges(10, 4)] == ["bytes=0-3", "bytes=4-7", "bytes=8-9"]

    def test_empty_object_has_no_ranges(self) -> None:
        assert byte_ranges(0, 5) == []

    @pytest.mark.parametrize("size,part", [(-1, 5), (5, 0)])
    def test_bad_arguments(self, size: int, part: int) -> None:
        with pytest.raises(ValueError):
            byte_ranges(size, part)

    @given(st.integers(1, 64), st.integers(1, 1 << 30), st.integers(1, 1 << 34), st.integers(0, 10**6))
    def test_concurrency_never_exceeds_budget(self, conc: int, part: int, inflight: int, parts: int) -> None:
        n = effective_concurrency(conc, part, inflight, parts)
        assert 1 <= n <= conc
        assert n == 1 or n * part <= inflight
        assert n <= max(parts, 1)


class TestRangeResponses:
    rng = ByteRange(100, 199)

    def test_exact_206_is_accepted(self) -> None:
        assert range_response_problem(206, "bytes 100-199/1000", "100", self.rng, 1000) is None

    @pytest.mark.parametrize(
        "status,content_range,length,needle",
        [
            (206, "bytes 100-198/1000", "99", "Content-Length"),
            (206, "bytes 0-99/1000", "100", "asked for"),
            (206, "bytes 100-199/2000", "100", "size changed"),
            (206, None, "100", "without Content-Range"),
            (206, "bytes x-y/1", "100", "malformed"),
            (200, None, "100", "ignored the Range"),
            (206, "bytes 100-199/1000", None, "no Content-Length"),
            (302, None, "100", "unexpected HTTP status"),
        ],
    )
    def test_mismatches_are_named(
        self, status: int, content_range: str | None, length: str | None, needle: str
    ) -> None:
        problem = range_response_problem(status, content_range, length, self.rng, 1000)
        assert problem is not None and needle in problem

    def test_200_is_fine_for_a_whole_object(self) -> None:
        assert range_response_problem(200, None, "10", ByteRange(0, 9), 10) is None

    @given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(1, 10**13))
    def test_content_range_round_trip(self, a: int, b: int, total: int) -> None:
        assert parse_content_range(f"bytes {a}-{b}/{total}") == (a, b, total)


class TestUris:
    def test_key_and_prefix(self) -> None:
        assert not parse_s3_uri("s3://models/llm/model.safetensors").is_prefix
        assert parse_s3_uri("s3://models/llm/").is_prefix
        assert parse_s3_uri("s3://models").is_prefix

    @pytest.mark.parametrize("uri", ["http://models/x", "s3://", "s3://UPPER/x", "models/x"])
    def test_rejected(self, uri: str) -> None:
        with pytest.raises(UsageError):
            parse_s3_uri(uri)


class TestKeySafety:
    @pytest.mark.parametrize("text", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b", "a\x00b"])
    def test_unsafe(self, text: str) -> None:
        with pytest.raises(UnsafeKey):
            safe_relative_path(text)

    @given(st.lists(st.text(st.characters(blacklist_characters="/\\\x00"), min_size=1), min_size=1, max_size=5))
    def test_accepted_paths_stay_below_the_root(self, parts: list[str]) -> None:
        text = "/".join(parts)
        try:
            path = safe_relative_path(text)
        except UnsafeKey:
            assert any(p in (".", "..") or len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts)
            return
        assert not path.is_absolute() and ".." not in path.parts

    def test_select_files_strips_prefix_skips_markers_and_sorts(self) -> None:
        location = parse_s3_uri("s3://bkt/m/")
        objects = [ObjectInfo("m/z.bin", 1, "e"), ObjectInfo("m/", 0, "e"), ObjectInfo("m/a/b.safetensors", 2, "e")]
        assert [str(f.path) for f in select_files(objects, location)] == ["a/b.safetensors", "z.bin"]

    def test_single_key_uses_its_basename(self) -> None:
        files = select_files([ObjectInfo("m/x/model.pt", 3, "e")], parse_s3_uri("s3://bkt/m/x/model.pt"))
        assert str(files[0].path) == "model.pt"


class TestSmallDecisions:
    @pytest.mark.parametrize(
        "name,fmt",
        [
            ("a.safetensors", "safetensors"),
            ("A.PT", "torch"),
            ("x.pth", "torch"),
            ("p.bin", "torch"),
            ("config.json", "other"),
        ],
    )
    def test_formats(self, name: str, fmt: str) -> None:
        assert file_format(name) == fmt

    def test_md5_etags(self) -> None:
        assert is_md5_etag('"d41d8cd98f00b204e9800998ecf8427e"')
        assert not is_md5_etag('"d41d8cd98f00b204e9800998ecf8427e-3"')
        assert not is_md5_etag('"6b0951c8-3e8"')

    @given(st.integers(1, 50), st.floats(0, 1))
    def test_backoff_is_capped_and_jittered(self, attempt: int, jitter: float) -> None:
        delay = backoff_delay(attempt, 0.2, 10.0, jitter)
        assert 0 <= delay <= 10.0
        assert delay == pytest.approx(min(10.0, 0.2 * 2 ** (attempt - 1)) * jitter)

    def test_fits(self) -> None:
        check_fits(10, 10, "cpu")
        with pytest.raises(DeviceOutOfMemory, match="cuda:0"):
            check_fits(11, 10, "cuda:0")


class TestSafetensorsHeader:
    def test_valid_layout_is_sorted_by_offset(self) -> None:
        header = {
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]},
            "a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]},
            "__metadata__": {},
        }
        assert [s.name for s in plan_safetensors(header, 10)] == ["a", "b"]

    @pytest.mark.parametrize(
        "header,size,needle",
        [
            ([], 0, "not a JSON object"),
            ({"a": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, 1, "unsupported dtype"),
            ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "bad shape"),
            ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4, "bytes for shape"),
            ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4, "truncated"),
            ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, 2, "gap/overlap"),
            ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, 2, "data section has 2"),
            ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 0]}}, 2, "bad data_offsets"),
        ],
    )
    def test_invalid_headers_are_named(self, header: object, size: int, needle: str) -> None:
        with pytest.raises(CorruptModel, match=needle):
            plan_safetensors(header, size)


def test_a_head_disagreeing_with_the_listing_names_what_changed() -> None:
    listed = ObjectInfo("m/a.bin", 100, '"e1"')
    headed = ObjectInfo("m/a.bin", 100, '"e1"', "v9", ("crc64nvme", "x", "FULL_OBJECT"))
    assert listing_disagreement(listed, headed) is None
    assert listing_disagreement(listed, ObjectInfo("m/a.bin", 100, "e1")) is None  # quoting differs, not the ETag
    assert listing_disagreement(listed, ObjectInfo("m/a.bin", 120, '"e1"')) == "size 100 listed, 120 now"
    both = listing_disagreement(listed, ObjectInfo("m/a.bin", 120, '"e2"'))
    assert both == 'size 100 listed, 120 now; ETag "e1" listed, "e2" now'
