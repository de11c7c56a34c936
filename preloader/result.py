"""The result record: what a run reports as its last stdout line and its termination message.

Pure formatting plus the two tiny measurements it needs (peak RSS). The JSON keys are a contract
with the operator, which reads the termination message from the pod status.
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass, field
from typing import Any, Literal

from preloader.errors import PreloadError

TERMINATION_LOG_LIMIT = 4096  # bytes the kubelet keeps of a termination message


@dataclass(frozen=True)
class Phases:
    """Seconds per phase. Phases overlap (download runs under deserialise and to-device, hashing and
    cache writes run inside the download threads), so their sum may exceed total.

    ``hash`` and ``cache-write`` are thread-seconds summed over the transfer threads (checksums and
    positional writes of each range as it arrives); ``commit`` is the wall time after the download
    (manifest, rename of ``current.json``); ``fill`` is the initializer's filling of DEST from the
    cache (hard links or copies) after the transfer.
    """

    list: float = 0.0
    download: float = 0.0
    deserialise: float = 0.0
    to_device: float = 0.0
    total: float = 0.0
    hash: float = 0.0
    cache_write: float = 0.0
    commit: float = 0.0
    fill: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "list": round(self.list, 4),
            "download": round(self.download, 4),
            "deserialise": round(self.deserialise, 4),
            "to-device": round(self.to_device, 4),
            "total": round(self.total, 4),
            "hash": round(self.hash, 4),
            "cache-write": round(self.cache_write, 4),
            "commit": round(self.commit, 4),
            "fill": round(self.fill, 4),
        }


@dataclass(frozen=True)
class Result:
    model: str
    files: int
    bytes: int
    seconds: Phases
    device: str
    # "bypassed": the initializer could not use the node cache and downloaded without it ("cacheBypassReason").
    cache: Literal["hit", "miss", "off", "bypassed"]
    peak_rss_bytes: int
    device_memory_bytes: int = 0
    tensors: int = 0
    cache_path: str | None = None
    # The model version loaded: "etag:<ETag>" / "versionid:<VersionId>" for one object, "sha256:<32 hex>"
    # over every object's (key, size, ETag) for a prefix (cache.model_version).
    version: str = ""
    fetched_bytes: int = 0  # bytes fetched from S3 (0 on a cache hit)
    verified: str = "none"  # what the bytes were checked against: "crc64nvme-full-object", "md5", "cache", ...
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gbps(self) -> float:
        """GB/s with GB = 10**9 bytes, over the whole run."""
        return self.bytes / self.seconds.total / 1e9 if self.seconds.total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": self.seconds.to_dict(),
            "gbps": round(self.gbps, 3),
            "device": self.device,
            "cache": self.cache,
            "peak_rss_bytes": self.peak_rss_bytes,
            "device_memory_bytes": self.device_memory_bytes,
            "tensors": self.tensors,
            "cache_path": self.cache_path,
            "version": self.version,
            "fetched_bytes": self.fetched_bytes,
            "verified": self.verified,
            **self.extra,
        }


def result_line(result: Result) -> str:
    """One JSON object on one line."""
    return json.dumps(result.to_dict(), separators=(",", ":"))


def error_line(model: str, error: PreloadError) -> str:
    """The failure record, same place as a result, so the operator can show the reason."""
    return json.dumps(
        {"model": model, "error": error.reason, "message": str(error)[:2000], "exit_code": error.exit_code},
        separators=(",", ":"),
    )


def termination_text(line: str) -> str:
    """The kubelet truncates termination messages at 4096 bytes; keep the line valid JSON."""
    return line if len(line.encode()) <= TERMINATION_LOG_LIMIT else json.dumps({"truncated": True})


def peak_rss_bytes(status: str = "/proc/self/status") -> int:
    """Peak resident set of this process: VmHWM, which starts afresh at exec.

    ``ru_maxrss`` does not: a process started by a large parent inherits the parent's peak (the
    kernel carries it over from the forked copy), so a preloader launched from a big process
    reported that process's memory. ru_maxrss (KiB on Linux) is the fallback without /proc.
    """
    try:
        with open(status) as lines:
            for line in lines:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
