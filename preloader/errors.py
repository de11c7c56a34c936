"""Domain errors of the preloader, one class per failure a platform engineer must tell apart.

Every error carries a CamelCase ``reason`` (what the operator puts in a condition) and an
``exit_code`` (what the Job's pod status shows). ``__main__`` is the only place that turns them
into a message and an exit status; the rest of the package only raises them.
"""

from __future__ import annotations


class PreloadError(Exception):
    """Base class: a failure with a stable reason and exit code."""

    reason = "PreloadFailed"
    exit_code = 1


class UsageError(PreloadError):
    """Bad command line or environment: retrying cannot help."""

    reason = "InvalidArguments"
    exit_code = 2


class BucketNotFound(PreloadError):
    reason = "NoSuchBucket"
    exit_code = 3


class ObjectNotFound(PreloadError):
    reason = "NoSuchKey"
    exit_code = 3


class EmptyPrefix(PreloadError):
    reason = "EmptyPrefix"
    exit_code = 3


class AccessDenied(PreloadError):
    reason = "AccessDenied"
    exit_code = 4


class ObjectChanged(PreloadError):
    """The object changed while the run read it: its ETag between HEAD and a ranged GET (If-Match
    failed), or its size or ETag between the LIST that named it and its HEAD. Not ChecksumMismatch:
    the bytes are S3's, they are just of another version than the one the run set out to fetch."""

    reason = "ObjectChanged"
    exit_code = 5


class TransferFailed(PreloadError):
    """A range could not be fetched intact within the retry budget."""

    reason = "TransferFailed"
    exit_code = 5


class ChecksumMismatch(PreloadError):
    """The bytes received do not match the checksum S3 stored with the object (or its MD5 ETag)."""

    reason = "ChecksumMismatch"
    exit_code = 5


class CorruptModel(PreloadError):
    """The bytes arrived intact but are not a valid model file (bad/truncated safetensors)."""

    reason = "CorruptModel"
    exit_code = 6


class UnsafePickle(PreloadError):
    """A PyTorch file needs arbitrary code to unpickle; it was refused, not executed."""

    reason = "UnsafePickle"
    exit_code = 6


class UnsafeKey(PreloadError):
    """An object key would escape the cache directory."""

    reason = "UnsafeKey"
    exit_code = 6


class DeviceOutOfMemory(PreloadError):
    reason = "DeviceOutOfMemory"
    exit_code = 7


class DiskFull(PreloadError):
    reason = "DiskFull"
    exit_code = 8


class CacheUnwritable(PreloadError):
    """The cache directory cannot be created or written (not a directory, read-only, permissions).

    Its own reason, not TransferFailed: S3 is fine, the node's cache volume is not. The run fails
    rather than going on uncached, because a pre-warm that leaves nothing warm has not done its job.
    """

    reason = "CacheUnwritable"
    exit_code = 8


class CacheTooSmall(PreloadError):
    """The model is larger than ``--cache-max-bytes``, or the bound cannot be met because every
    other entry is in use; nothing was evicted for it."""

    reason = "CacheTooSmall"
    exit_code = 8


class DestinationNotUsable(PreloadError):
    """The initializer's DEST cannot be written, or holds files that are not this model's."""

    reason = "DestinationNotUsable"
    exit_code = 10


class CacheBusy(PreloadError):
    """Another run held the cache entry's lock for longer than ``--lock-timeout``."""

    reason = "CacheBusy"
    exit_code = 9


class InternalError(PreloadError):
    """An unexpected exception (a bug, a torch RuntimeError, MemoryError); the traceback is on stderr."""

    reason = "InternalError"
    exit_code = 70  # EX_SOFTWARE in sysexits.h


class Interrupted(PreloadError):
    """SIGINT / Ctrl-C."""

    reason = "Interrupted"
    exit_code = 130  # 128 + SIGINT, what a shell reports for an interrupted command


class ShardMissing(PreloadError):
    """A shard the checkpoint's index names is not under the model's prefix in S3."""

    reason = "ShardMissing"
    exit_code = 3


class ShardIndexInvalid(PreloadError):
    """``model.safetensors.index.json`` cannot be used: not JSON of the expected shape, a tensor
    listed twice, or a shard named outside the prefix (``../x``, an absolute path)."""

    reason = "ShardIndexInvalid"
    exit_code = 6


class ShardNotInIndex(PreloadError):
    """A shard of the checkpoint (``<stem>-*.safetensors`` beside ``<stem>.safetensors.index.json``)
    that the index does not name: a checkpoint half replaced, or uploaded over another."""

    reason = "ShardNotInIndex"
    exit_code = 6


class ShardMismatch(PreloadError):
    """A shard's own header disagrees with the index: a tensor the index puts in it is missing, or it
    holds a tensor the index puts elsewhere (which is also how a tensor in two shards shows)."""

    reason = "ShardMismatch"
    exit_code = 6
