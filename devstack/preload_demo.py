"""The preloader part of `make demo`: a small real model in a local S3 (moto's server),
pulled twice by `python -m preloader` (a miss, then a node-local cache hit)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile

import boto3
import torch
from moto.server import ThreadedMotoServer
from safetensors.torch import save_file

from devstack.metrics_stack import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_model(folder: pathlib.Path) -> list[pathlib.Path]:
    """A small MLP (about 13 MB of float32 weights) and its config, as a model directory."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "fc1.weight": torch.randn(2048, 784, generator=generator), "fc1.bias": torch.zeros(2048),
        "fc2.weight": torch.randn(1024, 2048, generator=generator), "fc2.bias": torch.zeros(1024),
        "fc3.weight": torch.randn(10, 1024, generator=generator), "fc3.bias": torch.zeros(10),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "mlp", "layers": [784, 2048, 1024, 10]}))
    return [folder / "model.safetensors", folder / "config.json"]


def run_preloader(uri: str, cache: pathlib.Path, workdir: pathlib.Path, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "preloader", uri, "--device", "cpu", "--cache-dir", str(cache),
         "--termination-log", str(workdir / "termination-log"), "--progress", "never"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    for line in proc.stderr.splitlines():
        print(f"    | {line}")
    if proc.returncode != 0:
        raise SystemExit(f"preloader failed with exit code {proc.returncode}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def describe(result: dict[str, object]) -> None:
    seconds = result["seconds"]
    assert isinstance(seconds, dict)
    print(f"  cache {result['cache']}: {result['files']} files, {int(str(result['bytes'])) / 1e6:.1f} MB onto "
          f"{result['device']} in {seconds['total']:.2f}s ({float(str(result['gbps'])):.2f} GB/s); "
          f"phases " + ", ".join(f"{k} {v:.3f}s" for k, v in seconds.items() if k != "total")
          + f"; peak RSS {int(str(result['peak_rss_bytes'])) / 2**20:.0f} MiB")


def main(workdir: pathlib.Path) -> int:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret",  # moto accepts any
                 "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        with tempfile.TemporaryDirectory() as tmp:
            for path in make_model(pathlib.Path(tmp)):
                s3.upload_file(str(path), "models", f"mlp/{path.name}")
        print(f"  uploaded s3://models/mlp/ (model.safetensors, config.json) to moto's server at {endpoint}")
        env = {**os.environ, **creds, "AWS_ENDPOINT_URL": endpoint, "S3_USE_HTTPS": "0"}
        cache = workdir / "model-cache"
        print("  first pull (empty node-local cache):")
        describe(run_preloader("s3://models/mlp/", cache, workdir, env))
        print("  second pull (the cache is verified by checksum and S3 is not contacted):")
        describe(run_preloader("s3://models/mlp/", cache, workdir, env))
        print(f"  the same JSON is in the termination message file {workdir / 'termination-log'}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(tempfile.mkdtemp())))
