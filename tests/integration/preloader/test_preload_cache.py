"""The node-local cache: miss then hit, hits without S3, corruption repaired, versions apart, escapes refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.errors import UnsafeKey
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


def test_hit_needs_no_s3_at_all(s3: Any, bucket: str, make_config: Any, env: dict[str, str], tmp_path: Path) -> None:
    tensors = sample_tensors(2)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(tensors))
    cache = str(tmp_path / "cache")
    preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))
    s3.delete_object(Bucket=bucket, Key="m/model.safetensors")  # S3 no longer has it at all
    hit = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))
    assert hit.result.cache == "hit"
    assert_bit_exact(tensors, hit.tensors["model.safetensors"])


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


def test_new_version_gets_its_own_entry_on_revalidate(s3: Any, bucket: str, make_config: Any, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    v1, v2 = sample_tensors(5), sample_tensors(6)
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(v1))
    first = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=safetensors_bytes(v2))
    stale = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache))
    assert stale.result.cache == "hit"  # without --revalidate a hit does not ask S3
    fresh = preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache, "--revalidate"))
    assert fresh.result.cache == "miss"
    assert fresh.result.cache_path != first.result.cache_path
    assert_bit_exact(v2, fresh.tensors["model.safetensors"])
    assert Path(first.result.cache_path or "", "model.safetensors").read_bytes() == safetensors_bytes(v1)
    assert preload(make_config(f"s3://{bucket}/m/", "--cache-dir", cache, "--revalidate")).result.cache == "hit"


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
    [path] = cached_files(tmp_path / "cache" / "preloader-v1")
    outside = tmp_path / "outside"
    outside.mkdir()
    sub = path.parent
    for child in sub.iterdir():
        child.unlink()
    sub.rmdir()
    sub.symlink_to(outside, target_is_directory=True)
    manifest = next((tmp_path / "cache").rglob("manifest.json"))
    manifest.unlink()  # force a rewrite through the link
    with pytest.raises(UnsafeKey, match="symbolic link"):
        preload(config)
    assert list(outside.iterdir()) == []
