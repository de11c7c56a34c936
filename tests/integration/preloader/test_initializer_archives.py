"""A model stored as one archive: unpacked into DEST as KServe's initializer does (checked against
KServe's own ``Storage._unpack_archive_file`` on the same archive where ``kserve-storage`` is
installed), the cache keeping the archive; unsafe members and broken archives refused with a clear
error. Against moto."""

from __future__ import annotations

import importlib
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from model_files import safetensors_bytes, sample_tensors

from preloader.config import load_config
from preloader.errors import CorruptModel, DestinationNotUsable, UnsafeKey
from preloader.files import FileSystem
from preloader.initializer import initialize

pytestmark = pytest.mark.integration

FILES = {
    "model.safetensors": safetensors_bytes(sample_tensors(51)),
    "config.json": b'{"hidden": 512}',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
}


def tar_gz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    return out.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, body in files.items():
            zipped.writestr(name, body)
    return out.getvalue()


def dest_files(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


def run(env: dict[str, str], uri: str, dest: Path, *extra: str) -> Any:
    argv = [uri, str(dest), "--progress", "never", "--part-size", "256KiB", "--termination-log", "/dev/null"]
    return initialize(load_config([*argv, *extra], env))


def kserve_unpacked(archive: bytes, name: str, tmp_path: Path) -> dict[str, bytes]:
    """What KServe's own initializer leaves in its output directory for this archive."""
    storage: Any = importlib.import_module("kserve_storage").Storage
    out = tmp_path / "kserve-out"
    out.mkdir()
    (out / name).write_bytes(archive)
    mimetype = "application/zip" if name.endswith(".zip") else "application/x-tar"
    storage._unpack_archive_file(str(out / name), mimetype, str(out))
    return dest_files(out)


@pytest.mark.parametrize(("name", "build"), [("model.tar.gz", tar_gz), ("model.zip", zip_bytes)])
def test_one_archive_is_unpacked_like_kserve_and_the_cache_keeps_the_archive(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path, name: str, build: Any
) -> None:
    archive = build(FILES)
    s3.put_object(Bucket=bucket, Key=f"packed/{name}", Body=archive)
    cache = tmp_path / "cache"

    cold = run(env, f"s3://{bucket}/packed/{name}", tmp_path / "cold", "--cache-dir", str(cache))
    warm = run(env, f"s3://{bucket}/packed/{name}", tmp_path / "warm", "--cache-dir", str(cache))
    plain = run(env, f"s3://{bucket}/packed/{name}", tmp_path / "plain")
    assert plain.cache == "off" and plain.extra["unpacked"] == len(FILES)

    assert dest_files(tmp_path / "cold") == FILES
    assert dest_files(tmp_path / "plain") == FILES
    assert cold.cache == "miss" and cold.extra["unpacked"] == len(FILES)
    assert warm.cache == "hit" and warm.fetched_bytes == 0 and dest_files(tmp_path / "warm") == FILES
    cached = [p for p in (cache / "preloader-v2").rglob(name) if p.is_file()]
    assert len(cached) == 1 and cached[0].read_bytes() == archive  # the cache keeps the archive, intact
    # A restarted init container finds its earlier unpacking in DEST and unpacks again over it.
    again = run(env, f"s3://{bucket}/packed/{name}", tmp_path / "cold", "--cache-dir", str(cache))
    assert again.cache == "hit" and dest_files(tmp_path / "cold") == FILES


@pytest.mark.parametrize(("name", "build"), [("model.tar.gz", tar_gz), ("model.zip", zip_bytes)])
def test_unpacking_matches_kserves_own_initializer(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path, name: str, build: Any
) -> None:
    """Needs ``kserve-storage`` (the bench extra, ``make bench-preload``; too heavy for ``make test``)."""
    pytest.importorskip("kserve_storage", reason="kserve-storage is installed by the bench extra only")
    archive = build(FILES)
    s3.put_object(Bucket=bucket, Key=f"packed/{name}", Body=archive)
    run(env, f"s3://{bucket}/packed/{name}", tmp_path / "dest")
    assert dest_files(tmp_path / "dest") == kserve_unpacked(archive, name, tmp_path)


def test_an_archive_beside_other_files_is_left_packed(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path
) -> None:
    archive = tar_gz(FILES)
    s3.put_object(Bucket=bucket, Key="two/extra.tar.gz", Body=archive)
    s3.put_object(Bucket=bucket, Key="two/config.json", Body=b"{}")
    result = run(env, f"s3://{bucket}/two/", tmp_path / "dest")
    assert dest_files(tmp_path / "dest") == {"extra.tar.gz": archive, "config.json": b"{}"}
    assert "unpacked" not in result.extra


@pytest.mark.parametrize(
    ("name", "body", "error", "message"),
    [
        ("evil.tar.gz", tar_gz({"../escape.txt": b"x"}), UnsafeKey, "refused to unpack"),
        ("evil.tar.gz", tar_gz({}, links={"weights": "../../outside"}), UnsafeKey, "refused to unpack"),
        ("evil.zip", zip_bytes({"../escape.txt": b"x"}), UnsafeKey, "outside DEST"),
        ("broken.tar.gz", tar_gz(FILES)[:300], CorruptModel, "not a valid tar archive"),
        ("broken.zip", b"PK\x03\x04 not really a zip", CorruptModel, "not a valid zip archive"),
    ],
    ids=["tar-dotdot", "tar-link-outside", "zip-dotdot", "tar-truncated", "zip-garbage"],
)
def test_unsafe_or_broken_archives_are_refused_with_a_clear_error(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path, name: str, body: bytes, error: type, message: str
) -> None:
    s3.put_object(Bucket=bucket, Key=f"bad/{name}", Body=body)
    dest = tmp_path / "pod" / "models"
    with pytest.raises(error, match=message):
        run(env, f"s3://{bucket}/bad/{name}", dest)
    assert not (tmp_path / "pod" / "escape.txt").exists() and not Path("/etc/escape.txt").exists()


class SmallDisk(FileSystem):
    """DEST's filesystem as a nearly full node disk would report it (the real one has room)."""

    def free_bytes(self, path: Path) -> int:
        return 1 << 20


@pytest.mark.parametrize("name", ["bomb.tar.gz", "bomb.zip"])
def test_an_archive_larger_than_dests_free_space_is_refused_before_anything_is_unpacked(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path, name: str
) -> None:
    """8 MiB of zeros compress to a few KiB: a small download that would unpack past the free MiB."""
    files = {"config.json": b"{}", "weights.bin": bytes(8 << 20)}
    body = tar_gz(files) if name.endswith(".tar.gz") else zip_bytes(files)
    assert len(body) < (1 << 20)
    s3.put_object(Bucket=bucket, Key=f"bomb/{name}", Body=body)
    dest = tmp_path / "pod" / "models"
    argv = [f"s3://{bucket}/bomb/{name}", str(dest), "--progress", "never", "--termination-log", "/dev/null"]
    with pytest.raises(DestinationNotUsable, match=f"{name} unpacks to {(8 << 20) + 2} bytes .* nothing was unpacked"):
        initialize(load_config(argv, env), fs=SmallDisk())
    assert sorted(p.name for p in dest.iterdir()) == [name]  # the archive as fetched, no member
