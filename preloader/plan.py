"""Pure decisions: URIs, byte ranges, response checks, file selection, key safety, retry delays.

Nothing here does I/O or reads a clock, so all of it is unit- and property-tested. The shape
follows s3transfer's ``calculate_num_parts`` / ``calculate_range_parameter`` and
``_validate_content_range``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from preloader.errors import CorruptModel, DeviceOutOfMemory, UnsafeKey, UsageError

FileFormat = Literal["safetensors", "torch", "other"]


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def is_prefix(self) -> bool:
        """A trailing slash (or no key) names a model directory rather than one object."""
        return self.key == "" or self.key.endswith("/")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    version_id: str = ""
    # S3's own checksum from HEAD with checksum mode on, e.g. ("crc64nvme", "RXy0lWEYIi8=", "FULL_OBJECT");
    # None when the object has none (or the server, like nginx, does not speak S3 checksums).
    checksum: tuple[str, str, str] | None = None
    # Sizes of the multipart upload's parts, needed to check a COMPOSITE checksum; () otherwise.
    part_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelFile:
    """One object of the model and where it lives relative to the model root."""

    obj: ObjectInfo
    path: PurePosixPath

    @property
    def format(self) -> FileFormat:
        return file_format(self.path.name)


@dataclass(frozen=True)
class ByteRange:
    """Inclusive [start, end], as HTTP Range headers count."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def header(self) -> str:
        return f"bytes={self.start}-{self.end}"


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")


def parse_s3_uri(uri: str) -> S3Location:
    """'s3://bucket/some/key' -> S3Location; anything else is a usage error."""
    if not uri.startswith("s3://"):
        raise UsageError(f"model location must start with s3://, got {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise UsageError(f"not a valid bucket name in {uri!r}")
    return S3Location(bucket=bucket, key=key)


def byte_ranges(size: int, part_size: int) -> list[ByteRange]:
    """Split [0, size) into consecutive ranges of at most part_size bytes; none for size 0."""
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    if size < 0:
        raise ValueError("size must not be negative")
    return [ByteRange(start, min(start + part_size, size) - 1) for start in range(0, size, part_size)]


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """'bytes 0-99/1000' -> (0, 99, 1000); raises ValueError on anything malformed."""
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        raise ValueError(f"malformed Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def range_response_problem(
    status: int, content_range: str | None, content_length: str | None, wanted: ByteRange, size: int
) -> str | None:
    """Why a ranged GET response cannot be used for ``wanted``, or None when it can.

    A 206 must say exactly the range asked for and the object size from HEAD; a 200 is only
    acceptable when the range was the whole object (servers may ignore Range then).
    """
    if content_length is None or not content_length.isdigit():
        return "response has no Content-Length"
    if int(content_length) != wanted.length:
        return f"Content-Length {content_length} but asked for {wanted.length} bytes"
    if status == 200:
        if wanted.start == 0 and wanted.length == size:
            return None
        return "server ignored the Range header (200 for a partial range)"
    if status != 206:
        return f"unexpected HTTP status {status}"
    if content_range is None:
        return "206 without Content-Range"
    try:
        start, end, total = parse_content_range(content_range)
    except ValueError as exc:
        return str(exc)
    if (start, end) != (wanted.start, wanted.end):
        return f"Content-Range {content_range!r} but asked for {wanted.header}"
    if total is not None and total != size:
        return f"object size changed: Content-Range says {total}, HEAD said {size}"
    return None


def is_md5_etag(etag: str) -> bool:
    """Single-part uploads (without SSE-KMS) have the body's MD5 as ETag; multipart ones end in -N."""
    return re.fullmatch(r'"?[0-9a-fA-F]{32}"?', etag) is not None


def listing_disagreement(listed: ObjectInfo, headed: ObjectInfo) -> str | None:
    """How a HEAD contradicts the LIST that named the object (another size or ETag), or None.

    Either means the object was replaced between the two requests: S3 holds another version than the
    one listed. ETags are compared without their quotes (servers differ in quoting them in listings).
    """
    problems = []
    if headed.size != listed.size:
        problems.append(f"size {listed.size} listed, {headed.size} now")
    if headed.etag.strip('"') != listed.etag.strip('"'):
        problems.append(f"ETag {listed.etag} listed, {headed.etag} now")
    return "; ".join(problems) or None


# Longest file name segment we accept: Linux's NAME_MAX is 255 bytes, and the writers' temporary
# names (".tmp-" + 8 hex digits) never embed the final name, so a 255-byte segment still works.
MAX_NAME_BYTES = 255


def safe_relative_path(text: str) -> PurePosixPath:
    """Validate a path derived from an object key; it must stay below the directory it is joined to.

    Refuses empty names, absolute paths, '.' and '..' segments, empty segments ('a//b'),
    backslashes, NUL, and segments longer than a file name may be. Links are checked where the
    filesystem is (cache.py).
    """
    if not text or "\x00" in text or "\\" in text:
        raise UnsafeKey(f"object key gives an unusable file name: {text!r}")
    if text.startswith("/"):
        raise UnsafeKey(f"object key would be an absolute path: {text!r}")
    parts = text.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeKey(f"object key would escape the cache directory: {text!r}")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise UnsafeKey(f"object key has a segment longer than {MAX_NAME_BYTES} bytes: {part[:40]!r}...")
    return PurePosixPath(*parts)


def check_key(location: S3Location) -> None:
    """Refuse a URI whose key (one object) or prefix has '..', '.' or empty segments.

    The same rule as for keys found under a prefix: S3 keys are opaque, but a key like
    ``a/../b`` means something else to every tool that maps keys to paths.
    """
    key = location.key.removesuffix("/") if location.is_prefix else location.key
    if key:
        safe_relative_path(key)


def select_files(objects: Iterable[ObjectInfo], location: S3Location) -> list[ModelFile]:
    """Turn a listing into model files: skip directory markers, derive safe relative paths, sort."""
    files: list[ModelFile] = []
    for obj in objects:
        if location.is_prefix:
            if not obj.key.startswith(location.key) or obj.key.endswith("/"):
                continue
            rel = obj.key[len(location.key) :]
        else:
            rel = obj.key.rsplit("/", 1)[-1]
        files.append(ModelFile(obj=obj, path=safe_relative_path(rel)))
    files.sort(key=lambda f: f.obj.key)
    check_no_path_conflicts(files)
    return files


def check_no_path_conflicts(files: Sequence[ModelFile]) -> None:
    """Keys ``a`` and ``a/b`` cannot both be files in a directory: refuse the model clearly."""
    names = {f.path for f in files}
    for f in files:
        for parent in f.path.parents:
            if parent in names:
                raise UnsafeKey(f"keys {parent} and {f.path} cannot both be files ({parent} would be a directory)")


def file_format(name: str) -> FileFormat:
    """safetensors first; .pt/.pth/.bin may be PyTorch files (``is_torch_file`` decides by content);
    anything else is copied, not loaded."""
    lowered = name.lower()
    if lowered.endswith(".safetensors"):
        return "safetensors"
    if lowered.endswith((".pt", ".pth", ".bin")):
        return "torch"
    return "other"


ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_OPCODE = 0x80


def is_torch_file(head: bytes | memoryview) -> bool:
    """Whether the first bytes are what ``torch.save`` writes: a zip archive (the format since torch
    1.6) or a pickle stream (the legacy format starts with the PROTO opcode, protocol 2 or later).

    A ``.bin`` that is neither (a sentencepiece tokenizer, OpenVINO weights, GGML) is not a PyTorch file
    and is copied as it is, not refused as a pickle.
    """
    first = bytes(head[:4])
    return first == ZIP_MAGIC or (len(first) >= 2 and first[0] == PICKLE_PROTOCOL_OPCODE and 2 <= first[1] <= 5)


def effective_concurrency(concurrency: int, part_size: int, max_inflight: int, parts: int) -> int:
    """Connections to open: bounded by the in-flight byte budget and by the work there is."""
    return max(1, min(concurrency, max_inflight // part_size, max(parts, 1)))


def backoff_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Full-jitter exponential backoff (attempt counts from 1); jitter in [0, 1] is passed in."""
    return float(min(cap, base * 2.0 ** (attempt - 1)) * jitter)


def check_fits(need: int, available: int, device: str) -> None:
    """Refuse before downloading a model that cannot fit in the target device's memory."""
    if need > available:
        raise DeviceOutOfMemory(f"model needs {need} bytes on {device} but only {available} bytes are available")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor in a safetensors file: dtype name, shape, and [begin, end) in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip

MAX_HEADER_BYTES = 100 * 1000 * 1000
# The largest real checkpoints have a few thousand tensors per shard; a header that names hundreds of
# thousands is refused before any per-tensor work (planning, views, device copies).
MAX_TENSORS = 65536
# safetensors stores shapes and offsets as u64; torch sizes are int64, so dimensions and byte counts
# beyond 2**63 - 1 could never be a tensor here.
MAX_INDEX = (1 << 63) - 1


def _is_index(value: object) -> bool:
    """A JSON integer in [0, 2**63); bool is an int subclass in Python but not an integer in safetensors."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INDEX


def safetensors_header_size(prefix: bytes | memoryview, file_size: int) -> int:
    """Length of the JSON header from the first 8 bytes (little-endian u64), bounds-checked."""
    if file_size < 8 or len(prefix) < 8:
        raise CorruptModel("safetensors file is shorter than its 8-byte header length")
    header_len = int.from_bytes(bytes(prefix[:8]), "little")
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise CorruptModel(f"safetensors header length {header_len} does not fit a {file_size}-byte file")
    return header_len


def plan_safetensors(header: object, data_size: int) -> list[TensorSpec]:
    """Validate a parsed safetensors header against the data section; return tensors by offset.

    Checks what the format promises: known dtypes, non-negative shapes, each tensor's byte length
    equal to numel * itemsize, offsets inside the data, and tensors that tile the data with no gap
    or overlap. A truncated file fails here (the last tensor ends beyond the data).
    """
    if not isinstance(header, dict):
        raise CorruptModel("safetensors header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptModel("safetensors __metadata__ must map strings to strings")
    if len(header) - ("__metadata__" in header) > MAX_TENSORS:
        raise CorruptModel(f"safetensors header names {len(header)} tensors; more than {MAX_TENSORS} is refused")
    specs: list[TensorSpec] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise CorruptModel(f"tensor {name!r}: header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_ITEMSIZE:
            raise CorruptModel(f"tensor {name!r}: unsupported dtype {str(dtype)[:40]!r}")
        if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
            raise CorruptModel(f"tensor {name!r}: bad shape {str(shape)[:80]}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_index(o) for o in offsets)
            or not offsets[0] <= offsets[1]
        ):
            raise CorruptModel(f"tensor {name!r}: bad data_offsets {str(offsets)[:80]}")
        numel = 1
        for dim in shape:
            numel *= dim
        if numel * SAFETENSORS_ITEMSIZE[dtype] > MAX_INDEX:
            raise CorruptModel(f"tensor {name!r}: shape {str(shape)[:80]} overflows 64 bits")
        if offsets[1] - offsets[0] != numel * SAFETENSORS_ITEMSIZE[dtype]:
            raise CorruptModel(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {str(shape)[:80]} {dtype}")
        if offsets[1] > data_size:
            raise CorruptModel(
                f"tensor {name!r} ends at byte {offsets[1]} of a {data_size}-byte data section (truncated file?)"
            )
        specs.append(TensorSpec(name, dtype, tuple(shape), offsets[0], offsets[1]))
    specs.sort(key=lambda s: (s.begin, s.end))
    expected = 0
    for spec in specs:
        if spec.begin != expected:
            raise CorruptModel(f"tensor {spec.name!r} starts at {spec.begin}, expected {expected} (gap/overlap)")
        expected = spec.end
    if expected != data_size:
        raise CorruptModel(f"tensors cover {expected} bytes but the data section has {data_size}")
    return specs


def parse_header(raw: bytes, name: str) -> object:
    """The JSON header; any way it can fail to parse is CorruptModel, never an internal error.

    ``json.loads`` raises RecursionError on deep nesting and ValueError (not JSONDecodeError) on
    integers of more than 4300 digits; both are a corrupt file, not a bug.
    """
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptModel(f"{name}: safetensors header is not valid JSON ({exc})") from None
    except RecursionError:
        raise CorruptModel(f"{name}: safetensors header is nested too deeply") from None
    except ValueError as exc:
        raise CorruptModel(f"{name}: safetensors header has an unreadable number ({str(exc)[:80]})") from None


def total_bytes(files: Sequence[ModelFile]) -> int:
    return sum(f.obj.size for f in files)
