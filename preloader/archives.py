"""A model stored as one archive: KServe's initializer unpacks it into DEST, so this one does too.

KServe's rule (``kserve_storage.Storage``): when exactly one object was downloaded and its name is a
tar (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz`` ...) or a ``.zip`` by Python's
``mimetypes``, it is extracted into the output directory and the archive removed. The same rule
here, with ``mimetypes``' built-in table only (not the node's ``/etc/mime.types``), so the decision
does not depend on the image. Extraction is refused rather than trusted: tar members go through
Python's ``data`` filter (no absolute paths, no ``..``, no links leaving DEST, no devices), and zip
members with absolute paths or ``..`` are refused (``zipfile`` would silently rename them). Unlike
KServe's, an archive whose members add up to more than DEST's free space is refused before anything
is written.
"""

from __future__ import annotations

import lzma
import mimetypes
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from preloader.errors import CorruptModel, DestinationNotUsable, UnsafeKey

_TYPES = mimetypes.MimeTypes()  # the built-in table; never the node's mime.types files
TAR, ZIP = "application/x-tar", "application/zip"
# What a truncated or garbled archive raises (gzip's BadGzipFile is an OSError without errno).
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


def archive_kind(name: str) -> str | None:
    """TAR or ZIP when KServe would unpack an object of this name, else None."""
    kind = _TYPES.guess_type(name)[0]
    return kind if kind in (TAR, ZIP) else None


def single_archive(paths: Sequence[PurePosixPath]) -> PurePosixPath | None:
    """The model's one file when the model is exactly one archive (KServe unpacks it), else None."""
    return paths[0] if len(paths) == 1 and archive_kind(paths[0].name) is not None else None


def unpack(archive: Path, dest: Path, free: int) -> int:
    """Extract ``archive`` into ``dest`` and remove it; returns the number of members extracted.

    ``free``: the bytes ``dest``'s filesystem has free. Every member's size is known before anything
    is written (the tar's headers, read through once; the zip's central directory, whose sizes
    ``zipfile`` enforces while inflating), so an archive that would not fit, a decompression bomb
    included, is refused with nothing unpacked instead of filling the node's disk.
    """
    kind = archive_kind(archive.name)
    where = archive.name
    try:
        if kind == TAR:
            with tarfile.open(archive, "r", encoding="utf-8") as tar:
                members = tar.getmembers()
                _check_fits(where, sum(m.size for m in members if m.isreg()), dest, free)
                tar.extractall(dest, filter="data")
                count = len(members)
        elif kind == ZIP:
            with zipfile.ZipFile(archive) as zipped:
                infos = zipped.infolist()
                for info in infos:
                    _check_zip_name(info.filename, where)
                _check_fits(where, sum(i.file_size for i in infos), dest, free)
                zipped.extractall(dest)  # noqa: S202 (every member name and the total size checked above)
                count = len(infos)
        else:
            raise ValueError(f"{where} is not an archive")
    except tarfile.FilterError as exc:
        raise UnsafeKey(f"{where}: refused to unpack {exc}") from None
    except _BROKEN as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a disk problem (ENOSPC ...), not the archive's
        raise CorruptModel(f"{where}: not a valid {'tar' if kind == TAR else 'zip'} archive ({exc})") from None
    archive.unlink()
    return count


def _check_fits(where: str, unpacked: int, dest: Path, free: int) -> None:
    if unpacked > free:
        raise DestinationNotUsable(
            f"{where} unpacks to {unpacked} bytes but {dest} has {free} bytes free; nothing was unpacked"
        )


def _check_zip_name(name: str, where: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeKey(f"{where}: refused to unpack member {name!r}: it would be written outside DEST")
