"""``preloader SRC DEST``: KServe's storage initializer, with and without the node cache, against moto."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from model_files import safetensors_bytes, sample_tensors

from preloader.cache import ModelCache
from preloader.config import load_config
from preloader.errors import DestinationNotUsable
from preloader.initializer import initialize

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def model(s3: Any, bucket: str) -> dict[str, bytes]:
    """A small model directory as KServe users keep it: shards, config, tokenizer files in a subdirectory."""
    files = {
        "model-00001-of-00002.safetensors": safetensors_bytes(sample_tensors(41)),
        "model-00002-of-00002.safetensors": safetensors_bytes(sample_tensors(42)),
        "config.json": b'{"hidden": 512}',
        "tokenizer/tokenizer.bin": b"\n\x0esentencepiece" * 100,
        "empty.txt": b"",
    }
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"llm/{name}", Body=body)
    return files


def dest_files(dest: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


def init_config(env: dict[str, str], uri: str, dest: Path, *extra: str) -> Any:
    argv = [uri, str(dest), "--progress", "never", "--part-size", "256KiB", "--termination-log", "/dev/null"]
    return load_config([*argv, *extra], env)


def test_fills_dest_with_kserves_names_and_bytes(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "mnt" / "models"  # created if missing, as KServe's initializer does
    result = initialize(init_config(env, f"s3://{bucket}/llm", dest))
    assert dest_files(dest) == model
    assert (
        result.cache == "off" and result.files == len(model) and result.fetched_bytes == sum(map(len, model.values()))
    )
    assert result.version.startswith("sha256:") and result.verified == "crc32-full-object"
    one = tmp_path / "one"
    single = initialize(init_config(env, f"s3://{bucket}/llm/config.json", one))
    assert dest_files(one) == {"config.json": model["config.json"]}  # one object: its base name
    assert single.version == "etag:" + hashlib.md5(model["config.json"]).hexdigest()  # a single-part ETag


def test_warm_node_links_from_the_cache_without_fetching(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cold = initialize(init_config(env, f"s3://{bucket}/llm/", tmp_path / "pod1", "--cache-dir", str(cache)))
    assert cold.cache == "miss" and cold.extra["linked"] is True
    warm = initialize(init_config(env, f"s3://{bucket}/llm/", tmp_path / "pod2", "--cache-dir", str(cache)))
    assert warm.cache == "hit" and warm.fetched_bytes == 0 and warm.version == cold.version
    assert dest_files(tmp_path / "pod2") == model
    cached = Path(warm.cache_path or "", "config.json")
    assert os.stat(tmp_path / "pod2" / "config.json").st_ino == cached.stat().st_ino  # a hard link, no copy


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    """/dev/shm is a tmpfs, pytest's tmp_path is not: a cache on another filesystem than DEST."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    path = Path("/dev/shm") / f"preloader-test-{os.getpid()}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_cache_on_another_filesystem_is_written_and_copied_in_one_download(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path, other_filesystem: Path
) -> None:
    if os.stat(tmp_path).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip("tmp_path is on /dev/shm's filesystem here")
    cold = initialize(init_config(env, f"s3://{bucket}/llm/", tmp_path / "a", "--cache-dir", str(other_filesystem)))
    assert cold.cache == "miss" and cold.extra["linked"] is False
    assert dest_files(tmp_path / "a") == model
    assert Path(cold.cache_path or "", "config.json").read_bytes() == model["config.json"]
    warm = initialize(init_config(env, f"s3://{bucket}/llm/", tmp_path / "b", "--cache-dir", str(other_filesystem)))
    assert warm.cache == "hit" and dest_files(tmp_path / "b") == model


def test_a_corrupt_cache_entry_is_repaired_never_served(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path, other_filesystem: Path
) -> None:
    cold = initialize(init_config(env, f"s3://{bucket}/llm/", tmp_path / "a", "--cache-dir", str(other_filesystem)))
    shard = Path(cold.cache_path or "", "model-00002-of-00002.safetensors")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    again = initialize(init_config(env, f"s3://{bucket}/llm/", tmp_path / "b", "--cache-dir", str(other_filesystem)))
    assert again.cache == "miss"
    assert dest_files(tmp_path / "b") == model
    assert Path(again.cache_path or "", shard.name).read_bytes() == model[shard.name]


def test_dest_with_other_files_or_unwritable_is_refused_before_downloading(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "someone-elses.txt").write_text("x")
    with pytest.raises(DestinationNotUsable, match="not part of this model"):
        initialize(init_config(env, f"s3://{bucket}/llm/", dest))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(DestinationNotUsable, match="cannot write"):
        initialize(init_config(env, f"s3://{bucket}/llm/", blocker / "models"))
    # A restarted init container finds its own earlier files (and a killed write): that is fine.
    (dest / "someone-elses.txt").unlink()
    (dest / "config.json").write_bytes(b"stale")
    (dest / ".tmp-0badf00d").write_bytes(b"partial")
    initialize(init_config(env, f"s3://{bucket}/llm/", dest))
    assert dest_files(dest) == model


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter; fails if the initializer mode imported torch."""
    code = (
        "import sys; from preloader.__main__ import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules or '--device' in sys.argv, 'torch was imported'; sys.exit(rc)"
    )
    child = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *argv], env=child, capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_one_line_errors_and_no_torch(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path
) -> None:
    ok = run_cli([f"s3://{bucket}/llm", str(tmp_path / "ok"), "--termination-log", str(tmp_path / "t")], env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["files"] == len(model)
    missing = run_cli([f"s3://{bucket}/nope/", str(tmp_path / "no"), "--termination-log", str(tmp_path / "t")], env)
    assert missing.returncode == 3
    [line] = missing.stdout.strip().splitlines()
    assert json.loads(line)["error"] == "EmptyPrefix"
    assert not list((tmp_path / "no").iterdir())


def test_two_initializers_and_a_job_on_one_node_download_once(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path
) -> None:
    cache = str(tmp_path / "cache")
    common = ["--cache-dir", cache, "--progress", "never", "--part-size", "256KiB", "--termination-log", "/dev/null"]
    runs = [
        [sys.executable, "-m", "preloader", f"s3://{bucket}/llm/", str(tmp_path / f"pod{i}"), *common] for i in range(2)
    ]
    runs.append([sys.executable, "-m", "preloader", f"s3://{bucket}/llm/", "--device", "cpu", *common])
    child = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(argv, env=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in runs
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    lines = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(line["cache"] for line in lines) == ["hit", "hit", "miss"]
    assert dest_files(tmp_path / "pod0") == dest_files(tmp_path / "pod1") == model
    [entry] = ModelCache(Path(cache)).entries()
    assert entry.uri == f"s3://{bucket}/llm/" and entry.complete and entry.current
