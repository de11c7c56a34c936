"""The preloader-alone part of `make demo`: a small real model in a local S3 (moto's server,
devstack/local_s3.py), pulled twice by `python -m preloader` (a miss, then a node-local cache hit)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from devstack.local_s3 import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, moto_s3, upload_model_directory

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    with moto_s3() as s3:
        upload_model_directory(s3, "mlp")
        print(f"  uploaded s3://{BUCKET}/mlp/ (model.safetensors, config.json) to moto's server at {s3.url}")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": s3.url, "S3_USE_HTTPS": "0"}
        cache = workdir / "model-cache"
        print("  first pull (empty node-local cache):")
        describe(run_preloader(f"s3://{BUCKET}/mlp/", cache, workdir, env))
        print("  second pull (S3 confirms access and version, no body; the cache is verified by checksum):")
        describe(run_preloader(f"s3://{BUCKET}/mlp/", cache, workdir, env))
        print(f"  the same JSON is in the termination message file {workdir / 'termination-log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(tempfile.mkdtemp())))
