"""The preloader as whole processes against nginx on loopback: a real HTTP server at wire speed, with
nginx's own Range, If-Match and ETag handling (moto is the S3 API; this is the server the benchmark
pulls from). The pre-warm Job with its cache, the storage initializer cold and warm, and a model
changed in place on the server, each checked byte for byte against the file nginx serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from devstack.nginx_s3 import have_nginx, nginx
from preloader.cache import ModelCache
from preloader.config import load_config
from preloader.plan import parse_s3_uri
from preloader.preload import preload

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
KEY = "llm/model.safetensors"

if not have_nginx():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the nginx tests: .ci/run installs nginx")
    pytest.skip("nginx not installed (apt-get install nginx)", allow_module_level=True)


def write_model(path: Path, seed: int) -> None:
    """About 24 MiB of bf16 and fp32 layers: 24 ranges of 1 MiB, so four connections interleave."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        f"layers.{i}.weight": torch.randint(0, 2**15, (1024, 1024 + i), generator=gen, dtype=torch.int16).view(
            torch.bfloat16
        )
        for i in range(11)
    }
    tensors["norm.weight"] = torch.randn(4096, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nginx serving ``models/llm/model.safetensors``; yields the endpoint and the file it serves."""
    root = tmp_path / "root"
    model = root / "models" / KEY
    write_model(model, seed=1)
    with nginx(root, tmp_path / "nginx") as endpoint:
        yield endpoint, model


def run_preloader(endpoint: str, *args: str) -> dict[str, Any]:
    """``python -m preloader`` as the Job and the init container run it; its one JSON line."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "awsAnonymousCredential": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    argv = [sys.executable, "-m", "preloader", *args, "--part-size", "1MiB", "--progress", "never",
            "--termination-log", "/dev/null"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return line


def cached_file(cache: Path) -> Path:
    (found,) = list(cache.rglob("files/model.safetensors"))
    return found


def test_job_tensors_are_bit_exact(served: tuple[str, Path]) -> None:
    endpoint, model = served
    config = load_config(
        [f"s3://models/{KEY}", "--device", "cpu", "--part-size", "1MiB", "--progress", "never"],
        {"AWS_ENDPOINT_URL": endpoint, "awsAnonymousCredential": "true", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    loaded = preload(config).tensors["model.safetensors"]
    expected = load_file(str(model))
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_job_fills_the_cache_and_a_second_run_fetches_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, model = served
    cache = tmp_path / "cache"
    cold = run_preloader(endpoint, f"s3://models/{KEY}", "--device", "cpu", "--cache-dir", str(cache))
    assert cold["cache"] == "miss" and cold["fetched_bytes"] == model.stat().st_size
    assert cold["tensors"] == 12 and cold["verified"] == "size"  # nginx sends no S3 checksum and no MD5 ETag
    assert cached_file(cache).read_bytes() == model.read_bytes()  # written with O_DIRECT where ext4/xfs allow it
    warm = run_preloader(endpoint, f"s3://models/{KEY}", "--device", "cpu", "--cache-dir", str(cache))
    assert warm["cache"] == "hit" and warm["fetched_bytes"] == 0 and warm["tensors"] == 12


def test_initializer_cold_then_warm_fills_dest_with_the_served_bytes(served: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, model = served
    cache = tmp_path / "cache"
    cold_dest, warm_dest = tmp_path / "pod-1" / "models", tmp_path / "pod-2" / "models"
    cold = run_preloader(endpoint, f"s3://models/{KEY}", str(cold_dest), "--cache-dir", str(cache))
    assert cold["cache"] == "miss" and cold["fetched_bytes"] == model.stat().st_size
    assert (cold_dest / "model.safetensors").read_bytes() == model.read_bytes()
    warm = run_preloader(endpoint, f"s3://models/{KEY}", str(warm_dest), "--cache-dir", str(cache))
    assert warm["cache"] == "hit" and warm["fetched_bytes"] == 0
    assert (warm_dest / "model.safetensors").read_bytes() == model.read_bytes()


def test_a_model_changed_on_the_server_is_fetched_again_not_served_stale(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    endpoint, model = served
    cache = tmp_path / "cache"
    run_preloader(endpoint, f"s3://models/{KEY}", str(tmp_path / "a"), "--cache-dir", str(cache))
    write_model(model, seed=2)  # same names and sizes, other bytes: nginx's ETag (mtime, size) changes
    os.utime(model, (model.stat().st_atime, model.stat().st_mtime + 5))
    again = run_preloader(endpoint, f"s3://models/{KEY}", str(tmp_path / "b"), "--cache-dir", str(cache))
    assert again["cache"] == "miss" and again["fetched_bytes"] == model.stat().st_size
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == model.read_bytes()
    found = ModelCache(cache).lookup(endpoint, parse_s3_uri(f"s3://models/{KEY}"))
    assert found is not None
    _manifest, entry = found
    assert (entry / "files" / "model.safetensors").read_bytes() == model.read_bytes()  # current: the new version
    assert len(list(cache.rglob("files/model.safetensors"))) == 2  # the old one stays until the bound or gc
