"""The node-local cache: miss then hit, hits checked with S3 first, corruption repaired, versions apart,
escapes refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.errors import AccessDenied, ObjectNotFound, UnsafeKey
from preloader.preload import preload

pytestmark = pytest.mark.integration


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and "files" in p.parts)


def test_miss_writes_entry_then_hit_reads_it(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    tensors = sample_tensors(1)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(tensors))
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"))
    first = preload(config)
    assert first.result.cache == "miss"
    assert first.result.cache_path and Path(first.result.cache_path, "model.safetensors").is_file()
    assert not list((tmp_path / "cache").rglob(".tmp-*"))
    second = preload(config)
    assert second.result.cache == "hit"
    assert second.result.cache_path == first.result.cache_path
    assert_bit_exact(tensors, second.tensors["model.safetensors"])


def test_hit_is_refused_once_s3_no_longer_has_the_model_unless_offline(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path
) -> None:
    tensors = sample_tensors(2)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(tensors))
    cache = str(tmp_path / "cache")
    preload(make_config(f"s3://{bucket}/m/model.safetensors", "--cache-dir", cache))
    s3.delete_object(Bucket=bucket, Key="m/model.safetensors")  # S3 no longer has it at all
    with pytest.raises(ObjectNotFound):
        preload(make_config(f"s3://{bucket}/m/model.safetensors", "--cache-dir", cache))
    # --offline trusts the node: the verified entry is served without asking S3.
    hit = preload(make_config(f"s3://{bucket}/m/model.safetensors", "--cache-dir", cache, "--offline"))
    assert hit.result.cache == "hit" and hit.result.fetched_bytes == 0
    assert_bit_exact(tensors, hit.tensors["model.safetensors"])


def test_hit_without_credentials_is_refused_not_served(
    s3: Any, bucket: str, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a run with no credentials at all got a cached model S3 would refuse it."""
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(21)))
    cache = str(tmp_path / "cache")
    assert preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache)).result.cache == "miss"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(AccessDenied, match="no AWS credentials"):
        preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))


def test_same_size_corruption_is_caught_and_repaired(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    tensors = sample_tensors(3)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(tensors))
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"))
    preload(config)
    [path] = cached_files(tmp_path / "cache")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in a tensor: same size, same header
    path.write_bytes(bytes(data))
    repaired = preload(config)
    assert repaired.result.cache == "miss"
    assert_bit_exact(tensors, repaired.tensors["model.safetensors"])
    assert path.read_bytes() == safetensors_bytes(tensors)
    assert preload(config).result.cache == "hit"


def test_entry_without_manifest_is_never_used(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(sample_tensors(4)))
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"))
    preload(config)
    [manifest] = list((tmp_path / "cache").rglob("manifest.json"))
    manifest.unlink()  # as if the writer was killed before committing
    [path] = cached_files(tmp_path / "cache")
    path.write_bytes(path.read_bytes()[:100])  # and the file is partial
    again = preload(config)
    assert again.result.cache == "miss"
    assert manifest.exists() and path.stat().st_size == len(safetensors_bytes(sample_tensors(4)))


def test_a_changed_object_is_never_served_stale(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    v1, v2 = sample_tensors(5), sample_tensors(6)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(v1))
    first = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(v2))
    fresh = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))
    assert fresh.result.cache == "miss"  # the HEAD before the hit saw the new ETag
    assert fresh.result.cache_path != first.result.cache_path
    assert fresh.result.version != first.result.version and fresh.result.version.startswith("sha256:")
    assert_bit_exact(v2, fresh.tensors["model.safetensors"])
    assert Path(first.result.cache_path or "", "model.safetensors").read_bytes() == safetensors_bytes(v1)
    again = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))
    assert again.result.cache == "hit" and again.result.version == fresh.result.version


def test_two_models_and_two_endpoints_never_share_an_entry(
    s3: Any, bucket: str, make_config: Any, env: dict[str, str], tmp_path: Path
) -> None:
    cache = str(tmp_path / "cache")
    for name in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=f"{name}/model.safetensors", Body=safetensors_bytes(sample_tensors(ord(name))))
    a = preload(make_config(f"s3://{bucket}/a/", "--cache-dir", cache)).result.cache_path
    b = preload(make_config(f"s3://{bucket}/b/", "--cache-dir", cache)).result.cache_path
    assert a != b
    # The same bucket/key behind another endpoint (here: localhost instead of 127.0.0.1) is another model.
    other = env["AWS_ENDPOINT_URL"].replace("127.0.0.1", "localhost")
    again = preload(make_config(f"s3://{bucket}/a/", "--cache-dir", cache, AWS_ENDPOINT_URL=other))
    assert again.result.cache == "miss" and again.result.cache_path != a


def test_keys_escaping_the_model_directory_are_refused(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m/ok.safetensors", Body=safetensors_bytes(sample_tensors(7)))
    s3.put_object(Bucket=bucket, Key="m/sub/../../../escape.txt", Body=b"pwned")
    with pytest.raises(UnsafeKey, match="escape"):
        preload(make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache")))
    assert not list(tmp_path.rglob("escape.txt"))


def test_symlink_inside_the_cache_is_not_followed(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m/sub/model.safetensors", Body=safetensors_bytes(sample_tensors(8)))
    config = make_config(f"s3://{bucket}/m/", "--cache-dir", str(tmp_path / "cache"))
    preload(config)
    [path] = cached_files(tmp_path / "cache" / "preloader-v2")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(path.read_bytes())
    sub = path.parent
    for child in sub.iterdir():
        child.unlink()
    sub.rmdir()
    sub.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeKey, match="symbolic link"):  # a hit does not read through it
        preload(config)
    manifest = next((tmp_path / "cache").rglob("manifest.json"))
    manifest.unlink()  # an unfinished entry: the next writer replaces the whole directory
    assert preload(config).result.cache == "miss"
    assert [p.name for p in outside.iterdir()] == ["model.safetensors"] and not sub.is_symlink()
