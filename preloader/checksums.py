"""Checksums: S3's own (to verify a download) and the cache's (to verify every later use).

S3 returns the checksum it stored with an object on ``HEAD`` with checksum mode on:
``x-amz-checksum-crc64nvme`` (always of the full object), ``crc32``/``crc32c`` (of the full object,
or for a multipart upload COMPOSITE: the checksum of the concatenated part checksums, suffixed
``-N``), ``sha256``/``sha1`` (likewise). The CRCs are computed with awscrt's SIMD implementations
(tens of GB/s per core, the GIL released) range by range in the download threads as the bytes
arrive, and combined: ``combine(crc(a), crc(b), len(b)) == crc(a + b)``, so ranges fetched in any
order and in parallel still give the full-object value. For a COMPOSITE checksum the ranges are cut
at the upload's part boundaries, so each part's CRC is a combination of whole ranges. SHA
checksums cannot be combined; they are computed once over each part after the file is complete.
Without an S3 checksum, a single-part upload's MD5 ETag is checked the same way.

The cache records a CRC-64/NVME per range (the ranges the file was downloaded in). It detects torn
writes and bit rot, not tampering: whoever can write the cache can write its manifest too.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awscrt import checksums as crt

from preloader.errors import ChecksumMismatch
from preloader.plan import ByteRange, ObjectInfo, byte_ranges, is_md5_etag

CRC_ALGORITHMS = ("crc64nvme", "crc32c", "crc32")
DIGEST_ALGORITHMS = ("sha256", "sha1")
# Strongest first: which checksum to check when an object carries more than one.
PREFERENCE = (*CRC_ALGORITHMS, *DIGEST_ALGORITHMS)
_HEAD_FIELDS = {name: f"Checksum{name.upper()}" for name in PREFERENCE}
_CRC_BYTES = {"crc64nvme": 8, "crc32c": 4, "crc32": 4}
_CRC: dict[str, Callable[[Any, int], int]] = {"crc64nvme": crt.crc64nvme, "crc32c": crt.crc32c, "crc32": crt.crc32}
_COMBINE: dict[str, Callable[[int, int, int], int]] = {
    "crc64nvme": crt.combine_crc64nvme,
    "crc32c": crt.combine_crc32c,
    "crc32": crt.combine_crc32,
}
READ_CHUNK = 16 << 20


def cache_crc(data: memoryview | bytes) -> int:
    """The cache's per-range check value: CRC-64/NVME."""
    return int(crt.crc64nvme(data))


def crc(algorithm: str, data: memoryview | bytes) -> int:
    return int(_CRC[algorithm](data, 0))


def combine(algorithm: str, first: int, second: int, second_length: int) -> int:
    return int(_COMBINE[algorithm](first, second, second_length))


def checksum_from_head(response: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(algorithm, value, "FULL_OBJECT" | "COMPOSITE") from a HEAD response, or None.

    Servers that do not return ``ChecksumType`` (older S3 answers, moto) are read by the value's
    ``-N`` suffix, and by the ETag: a multipart upload's CRC32/CRC32C/SHA is composite unless S3
    says otherwise; CRC-64/NVME is always of the full object.
    """
    for algorithm in PREFERENCE:
        value = response.get(_HEAD_FIELDS[algorithm])
        if not value:
            continue
        kind = str(response.get("ChecksumType") or "")
        if kind not in ("FULL_OBJECT", "COMPOSITE"):
            multipart = str(response.get("ETag", "")).strip('"').rpartition("-")[2].isdigit()
            suffixed = str(value).rpartition("-")[2].isdigit() and "-" in str(value)
            kind = "COMPOSITE" if algorithm != "crc64nvme" and (suffixed or multipart) else "FULL_OBJECT"
        return algorithm, str(value), kind
    return None


def aligned_ranges(obj: ObjectInfo, part_size: int) -> list[ByteRange]:
    """Ranges of at most part_size bytes; cut at the upload's part boundaries for a COMPOSITE checksum."""
    if obj.checksum is None or obj.checksum[2] != "COMPOSITE" or not obj.part_sizes:
        return byte_ranges(obj.size, part_size)
    ranges: list[ByteRange] = []
    start = 0
    for size in obj.part_sizes:
        ranges += [ByteRange(start + r.start, start + r.end) for r in byte_ranges(size, part_size)]
        start += size
    return ranges


@dataclass(frozen=True)
class RangeSum:
    """Check values of one downloaded range: the cache's CRC-64/NVME and, when S3's checksum is a
    different CRC, that CRC too."""

    length: int
    cache: int
    s3: int | None = None


def range_sum(obj: ObjectInfo, data: memoryview | bytes) -> RangeSum:
    """Computed in the download thread, right after the range arrived."""
    algorithm = obj.checksum[0] if obj.checksum else ""
    mine = cache_crc(data)
    if algorithm in ("crc32", "crc32c"):
        return RangeSum(len(data), mine, crc(algorithm, data))
    return RangeSum(len(data), mine)


def _decode(value: str) -> bytes:
    return base64.b64decode(value.rpartition("-")[0] if value.rpartition("-")[2].isdigit() else value)


def _combined(algorithm: str, sums: Sequence[RangeSum]) -> int:
    """The CRC of the concatenated ranges, from their CRCs alone."""
    total: int | None = None
    for s in sums:
        value = s.cache if algorithm == "crc64nvme" else s.s3
        assert value is not None, "range sums were computed for another algorithm"
        total = value if total is None else combine(algorithm, total, value, s.length)
    return crc(algorithm, b"") if total is None else total


def verify_object(
    obj: ObjectInfo,
    ranges: Sequence[ByteRange],
    sums: Sequence[RangeSum],
    read: Callable[[int, int], memoryview | bytes],
) -> str:
    """Check a complete object against S3's checksum (or MD5 ETag); returns what was checked.

    ``read(start, length)`` gives bytes back (from the memory buffer or the written file), used
    only for SHA and MD5, which cannot be combined from per-range values. Raises ChecksumMismatch.
    """
    where = f"s3 object {obj.key}"
    if obj.checksum is None:
        if not is_md5_etag(obj.etag):
            return "size"
        digest = _digest("md5", read, 0, obj.size)
        if digest.hex() != obj.etag.strip('"').lower():
            raise ChecksumMismatch(f"{where}: downloaded bytes do not match the object's MD5 ETag")
        return "md5"
    algorithm, value, kind = obj.checksum
    expected = _decode(value)
    if kind == "COMPOSITE" and obj.part_sizes:
        parts = _part_values(obj, ranges, sums, read)
        joined = b"".join(parts)
        got = (
            crc(algorithm, joined).to_bytes(_CRC_BYTES[algorithm], "big")
            if algorithm in _CRC_BYTES
            else hashlib.new(algorithm, joined).digest()
        )
    elif kind == "COMPOSITE":
        raise ChecksumMismatch(f"{where}: a COMPOSITE {algorithm} checksum but the part sizes are unknown")
    elif algorithm in _CRC_BYTES:
        got = _combined(algorithm, sums).to_bytes(_CRC_BYTES[algorithm], "big")
    else:
        got = _digest(algorithm, read, 0, obj.size)
    if got != expected:
        raise ChecksumMismatch(f"{where}: downloaded bytes do not match S3's {kind.lower()} {algorithm} checksum")
    return f"{algorithm}-{kind.lower().replace('_', '-')}"


def _part_values(
    obj: ObjectInfo,
    ranges: Sequence[ByteRange],
    sums: Sequence[RangeSum],
    read: Callable[[int, int], memoryview | bytes],
) -> list[bytes]:
    assert obj.checksum is not None
    algorithm = obj.checksum[0]
    values: list[bytes] = []
    start = 0
    index = 0
    for size in obj.part_sizes:
        if algorithm in _CRC_BYTES:
            mine: list[RangeSum] = []
            while index < len(ranges) and ranges[index].end < start + size:
                mine.append(sums[index])
                index += 1
            part = _combined(algorithm, mine)
            values.append(part.to_bytes(_CRC_BYTES[algorithm], "big"))
        else:
            values.append(_digest(algorithm, read, start, size))
        start += size
    return values


def _digest(algorithm: str, read: Callable[[int, int], memoryview | bytes], start: int, length: int) -> bytes:
    hasher = hashlib.new(algorithm, usedforsecurity=False)
    for offset in range(start, start + length, READ_CHUNK):
        hasher.update(read(offset, min(READ_CHUNK, start + length - offset)))
    return hasher.digest()
