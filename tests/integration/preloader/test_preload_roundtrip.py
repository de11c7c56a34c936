"""Bytes in S3 come back as the same tensors, bit for bit: single objects, prefixes, torch files, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from model_files import assert_bit_exact, safetensors_bytes, sample_tensors

from preloader.__main__ import main
from preloader.preload import preload

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def test_single_safetensors_object_round_trips_bit_exact(s3: Any, bucket: str, make_config: Any) -> None:
    tensors = sample_tensors(1, scale=4)
    s3.put_object(Bucket=bucket, Key="llm/model.safetensors", Body=safetensors_bytes(tensors))
    out = preload(make_config(f"s3://{bucket}/llm/model.safetensors"))
    assert_bit_exact(tensors, out.tensors["model.safetensors"])
    assert out.result.files == 1 and out.result.cache == "off"
    assert out.result.device == "cpu"
    assert out.result.device_memory_bytes == sum(t.numel() * t.element_size() for t in tensors.values())


def test_prefix_downloads_every_shard_and_side_file(s3: Any, bucket: str, make_config: Any) -> None:
    shards = {f"model-0000{i}-of-00003.safetensors": sample_tensors(10 + i) for i in range(3)}
    for name, tensors in shards.items():
        s3.put_object(Bucket=bucket, Key=f"llm/{name}", Body=safetensors_bytes(tensors))
    s3.put_object(Bucket=bucket, Key="llm/config.json", Body=b'{"hidden": 512}')
    s3.put_object(Bucket=bucket, Key="llm/tokenizer/vocab.txt", Body=b"a\nb\n")
    s3.put_object(Bucket=bucket, Key="llm-other/model.safetensors", Body=safetensors_bytes(sample_tensors(99)))
    out = preload(make_config(f"s3://{bucket}/llm/"))
    assert out.result.files == 5
    assert set(out.tensors) == {*shards, "config.json", "tokenizer/vocab.txt"}
    for name, tensors in shards.items():
        assert_bit_exact(tensors, out.tensors[name])


def test_kserve_style_uri_without_slash_is_read_as_a_directory(s3: Any, bucket: str, make_config: Any) -> None:
    tensors = sample_tensors(2)
    s3.put_object(Bucket=bucket, Key="mnist/model.safetensors", Body=safetensors_bytes(tensors))
    out = preload(make_config(f"s3://{bucket}/mnist"))
    assert out.result.model == f"s3://{bucket}/mnist/"
    assert_bit_exact(tensors, out.tensors["model.safetensors"])


def test_torch_state_dict_loads_with_weights_only(s3: Any, bucket: str, make_config: Any) -> None:
    tensors = sample_tensors(3)
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    s3.put_object(Bucket=bucket, Key="pt/model.pt", Body=buffer.getvalue())
    out = preload(make_config(f"s3://{bucket}/pt/model.pt"))
    assert_bit_exact(tensors, out.tensors["model.pt"])


def test_many_small_parts_and_few_connections_still_bit_exact(s3: Any, bucket: str, make_config: Any) -> None:
    tensors = sample_tensors(4, scale=2)
    s3.put_object(Bucket=bucket, Key="m.safetensors", Body=safetensors_bytes(tensors))
    config = make_config(f"s3://{bucket}/m.safetensors", "--part-size", "64KiB", "--concurrency", "3")
    assert_bit_exact(tensors, preload(config).tensors["m.safetensors"])


def test_cli_prints_one_json_result_last_and_writes_termination_log(
    s3: Any, bucket: str, env: dict[str, str], tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="cli/model.safetensors", Body=safetensors_bytes(sample_tensors(5)))
    termination = tmp_path / "termination-log"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "preloader",
            f"s3://{bucket}/cli/",
            "--device",
            "auto",
            "--termination-log",
            str(termination),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"model", "files", "bytes", "seconds", "gbps", "device", "cache", "peak_rss_bytes"} <= last.keys()
    assert {"list", "download", "deserialise", "to-device", "total", "hash", "cache-write", "commit"} <= set(
        last["seconds"]
    )
    assert last["version"].startswith("sha256:") and last["fetched_bytes"] == last["bytes"]
    assert last["cache"] == "miss" and last["files"] == 1 and last["peak_rss_bytes"] > 0
    assert json.loads(termination.read_text()) == last
    assert "download" in proc.stderr  # plain progress lines, not a bar, when stderr is not a terminal
    assert "\r" not in proc.stderr
    assert "testing" not in proc.stderr  # no credentials in logs


def test_unwritable_termination_log_is_a_warning_not_a_failure(
    s3: Any,
    bucket: str,
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    s3.put_object(Bucket=bucket, Key="t.safetensors", Body=safetensors_bytes(sample_tensors(6)))
    code = main(
        [f"s3://{bucket}/t.safetensors", "--device", "cpu", "--termination-log", str(tmp_path / "missing-dir" / "log")],
        env,
    )
    assert code == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["files"] == 1
    assert "not writing the termination message" in caplog.text
