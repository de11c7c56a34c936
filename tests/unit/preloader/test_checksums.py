"""S3 checksums from per-range values: full-object and composite, CRC and SHA, against values computed
the way S3 documents them (a composite checksum is the checksum of the concatenated part checksums)."""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest
from awscrt import checksums as crt
from hypothesis import given
from hypothesis import strategies as st

from preloader.checksums import aligned_ranges, checksum_from_head, range_sum, verify_object
from preloader.errors import ChecksumMismatch
from preloader.plan import ObjectInfo

DATA = bytes(range(256)) * 1000 + b"tail"  # 256004 bytes
PARTS = (100_000, 100_000, 56_004)
CRC = {"crc32": (crt.crc32, 4), "crc32c": (crt.crc32c, 4), "crc64nvme": (crt.crc64nvme, 8)}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def full(algorithm: str, data: bytes) -> bytes:
    if algorithm in CRC:
        fn, size = CRC[algorithm]
        return int(fn(data)).to_bytes(size, "big")
    return hashlib.new(algorithm, data).digest()


def composite(algorithm: str) -> str:
    parts, start = [], 0
    for size in PARTS:
        parts.append(full(algorithm, DATA[start : start + size]))
        start += size
    return f"{b64(full(algorithm, b''.join(parts)))}-{len(PARTS)}"


def check(obj: ObjectInfo, part_size: int, data: bytes = DATA) -> str:
    ranges = aligned_ranges(obj, part_size)
    sums = [range_sum(obj, memoryview(data)[r.start : r.end + 1]) for r in ranges]
    return verify_object(obj, ranges, sums, lambda start, length: data[start : start + length])


@pytest.mark.parametrize("algorithm", ["crc64nvme", "crc32c", "crc32", "sha256", "sha1"])
def test_full_object_checksums(algorithm: str) -> None:
    obj = ObjectInfo("k", len(DATA), '"e"', checksum=(algorithm, b64(full(algorithm, DATA)), "FULL_OBJECT"))
    assert check(obj, 65536) == f"{algorithm}-full-object"
    corrupt = DATA[:-1] + b"X"
    with pytest.raises(ChecksumMismatch, match=algorithm):
        check(obj, 65536, corrupt)


@pytest.mark.parametrize("algorithm", ["crc32c", "crc32", "sha256"])
def test_composite_checksums_of_multipart_uploads(algorithm: str) -> None:
    obj = ObjectInfo("k", len(DATA), '"e-3"', checksum=(algorithm, composite(algorithm), "COMPOSITE"), part_sizes=PARTS)
    assert check(obj, 30_000) == f"{algorithm}-composite"  # ranges smaller than parts, cut at their edges
    with pytest.raises(ChecksumMismatch):
        check(obj, 30_000, b"X" + DATA[1:])


def test_md5_etag_without_s3_checksum_and_size_only_otherwise() -> None:
    md5 = hashlib.md5(DATA).hexdigest()
    assert check(ObjectInfo("k", len(DATA), f'"{md5}"'), 65536) == "md5"
    with pytest.raises(ChecksumMismatch, match="MD5"):
        check(ObjectInfo("k", len(DATA), f'"{md5}"'), 65536, DATA[::-1])
    assert check(ObjectInfo("k", len(DATA), '"6b0f6bde-40040c8"'), 65536) == "size"


def test_head_response_reading() -> None:
    assert checksum_from_head({"ChecksumCRC64NVME": "x", "ChecksumCRC32": "y"}) == ("crc64nvme", "x", "FULL_OBJECT")
    assert checksum_from_head({"ChecksumCRC32": "y", "ETag": '"abc-3"'}) == ("crc32", "y", "COMPOSITE")
    assert checksum_from_head({"ChecksumCRC32C": "y-3"}) == ("crc32c", "y-3", "COMPOSITE")
    assert checksum_from_head({"ChecksumSHA256": "z", "ChecksumType": "FULL_OBJECT", "ETag": '"a-2"'}) == (
        "sha256",
        "z",
        "FULL_OBJECT",
    )
    assert checksum_from_head({"ETag": '"abc"'}) is None


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=8), st.integers(1, 3000))
def test_aligned_ranges_tile_the_object_and_never_cross_a_part(parts: list[int], part_size: int) -> None:
    obj = ObjectInfo("k", sum(parts), '"e"', checksum=("crc32", "x", "COMPOSITE"), part_sizes=tuple(parts))
    ranges = aligned_ranges(obj, part_size)
    assert ranges[0].start == 0 and ranges[-1].end == sum(parts) - 1
    assert all(a.end + 1 == b.start for a, b in itertools.pairwise(ranges))
    edges = {sum(parts[:i]) for i in range(1, len(parts))}
    assert all(r.length <= part_size for r in ranges)
    assert not any(r.start < edge <= r.end for r in ranges for edge in edges)
