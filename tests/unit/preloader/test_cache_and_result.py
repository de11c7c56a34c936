"""Cache keys and manifests, device choice, and the result record's contract with the operator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import pytest
import torch

from preloader.cache import CacheCorrupt, CachedFile, Manifest, location_key, model_version, version_key
from preloader.device import host_available_bytes, resolve_device
from preloader.errors import EmptyPrefix, UnsafeKey, UsageError
from preloader.files import safe_join
from preloader.formats import tensor_view
from preloader.plan import ModelFile, ObjectInfo, S3Location, TensorSpec
from preloader.progress import bar_text
from preloader.result import Phases, Result, error_line, result_line, termination_text


def files(*etags: str) -> list[ModelFile]:
    return [ModelFile(ObjectInfo(f"m/{i}", 10, e), PurePosixPath(str(i))) for i, e in enumerate(etags)]


class TestKeys:
    def test_location_key_separates_endpoint_bucket_and_key(self) -> None:
        keys = {
            location_key("http://a", S3Location("b", "m/")),
            location_key("http://other", S3Location("b", "m/")),
            location_key("http://a", S3Location("c", "m/")),
            location_key("http://a", S3Location("b", "m2/")),
            location_key("http://a", S3Location("bm", "/")),
        }
        assert len(keys) == 5

    def test_version_key_changes_with_any_etag(self) -> None:
        assert version_key(files("x", "y")) == version_key(list(reversed(files("x", "y"))))
        assert version_key(files("x", "y")) != version_key(files("x", "z"))


class TestManifest:
    def test_round_trip(self) -> None:
        chunks = ((4, 0xDEADBEEF), (1, 2**64 - 1))
        manifest = Manifest(
            "s3://b/m/", "http://e", "v1", "etag:e", (CachedFile(PurePosixPath("a/b"), "m/a/b", 5, '"e"', chunks),)
        )
        assert Manifest.from_json(manifest.to_json()) == manifest

    @pytest.mark.parametrize(
        "mutate",
        [
            lambda d: d.pop("files"),
            lambda d: d["files"][0].update(path="../x"),
            lambda d: d["files"][0].update(chunks=[[4, "00"]]),  # does not cover the 5 bytes
            lambda d: d["files"][0].update(chunks=[[5, "not-hex"]]),
            lambda d: d["files"][0].update(chunks=[[0, "00"], [5, "00"]]),  # an empty chunk
            lambda d: d.pop("model_version"),
        ],
    )
    def test_damaged_manifest_is_corrupt_not_a_crash(self, mutate: object) -> None:
        raw = {
            "uri": "u",
            "endpoint": "e",
            "version": "v",
            "model_version": "etag:e",
            "files": [{"path": "a", "key": "k", "size": 5, "etag": "e", "chunks": [[4, "1"], [1, "2"]]}],
        }
        mutate(raw)  # type: ignore[operator]
        with pytest.raises(CacheCorrupt):
            Manifest.from_json(json.dumps(raw))


def test_safe_join_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "link").symlink_to(tmp_path)
    assert safe_join(tmp_path / "base", PurePosixPath("a/b")) == tmp_path / "base" / "a" / "b"
    with pytest.raises(UnsafeKey, match="symbolic link"):
        safe_join(tmp_path / "base", PurePosixPath("link/x"))


class TestDevice:
    def test_auto_is_cpu_without_cuda(self) -> None:
        assert resolve_device("auto", cuda_available=False) == torch.device("cpu")

    @pytest.mark.parametrize("spec", ["cuda", "cuda:0", "tpu", "cuda:x"])
    def test_unusable_devices(self, spec: str) -> None:
        with pytest.raises(UsageError):
            resolve_device(spec, cuda_available=False)

    def test_host_memory_from_meminfo(self, tmp_path: Path) -> None:
        meminfo = tmp_path / "meminfo"
        meminfo.write_text("MemTotal: 100 kB\nMemAvailable:  42 kB\n")
        assert host_available_bytes(meminfo) == 42 * 1024


def test_misaligned_tensor_is_copied_aligned_is_a_view() -> None:
    base = torch.arange(16, dtype=torch.uint8)
    aligned = tensor_view(base, 0, TensorSpec("a", "I32", (2,), 4, 12))
    assert aligned.data_ptr() == base.data_ptr() + 4
    odd = tensor_view(base, 1, TensorSpec("b", "I16", (2,), 0, 4))
    assert odd.tolist() == torch.tensor([1, 2, 3, 4], dtype=torch.uint8).view(torch.int16).tolist()


class TestResult:
    result = Result("s3://b/m/", 2, 2 * 10**9, Phases(0.1, 1.5, 0.2, 0.3, 2.0), "cuda:0", "miss", 123)

    def test_json_has_the_promised_keys(self) -> None:
        data = json.loads(result_line(self.result))
        assert {"model", "files", "bytes", "seconds", "gbps", "device", "cache", "peak_rss_bytes"} <= data.keys()
        assert data["seconds"] == {
            "list": 0.1,
            "download": 1.5,
            "deserialise": 0.2,
            "to-device": 0.3,
            "total": 2.0,
            "hash": 0.0,
            "cache-write": 0.0,
            "commit": 0.0,
            "fill": 0.0,
        }
        assert {"version", "fetched_bytes", "verified"} <= data.keys()
        assert data["gbps"] == 1.0
        assert "\n" not in result_line(self.result)

    def test_error_line_names_reason(self) -> None:
        data = json.loads(error_line("s3://b/m/", EmptyPrefix("nothing here")))
        assert data == {"model": "s3://b/m/", "error": "EmptyPrefix", "message": "nothing here", "exit_code": 3}

    def test_termination_message_stays_under_the_kubelet_limit(self) -> None:
        assert termination_text("x" * 5000) == '{"truncated": true}'
        assert termination_text("{}") == "{}"

    def test_progress_bar_text(self) -> None:
        assert bar_text(50, 100, 1.0, width=10) == "[#####.....]  50.0%  0.00/0.00 GB  0.00 GB/s"


def test_peak_rss_is_this_processs_own_high_water_mark(tmp_path: Path) -> None:
    """VmHWM, not ru_maxrss, which a child inherits from a large parent."""
    from preloader.result import peak_rss_bytes

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n")
    assert peak_rss_bytes(str(status)) == 2048 * 1024
    assert peak_rss_bytes() > 0


class TestModelVersion:
    """The result's ``version``: the operator compares it to tell "already warm for this version"."""

    def test_one_object_is_its_etag_or_version_id(self) -> None:
        [f] = files('"abc"')
        assert model_version([f], prefix=False) == "etag:abc"
        versioned = ModelFile(ObjectInfo("m/0", 10, '"abc"', version_id="v7"), PurePosixPath("0"))
        assert model_version([versioned], prefix=False) == "versionid:v7"

    def test_a_prefix_is_a_documented_digest_of_key_size_etag(self) -> None:
        listing = files('"x"', '"y"')
        raw = json.dumps(sorted([f.obj.key, f.obj.size, f.obj.etag] for f in listing))
        assert model_version(listing, prefix=True) == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()[:32]
        assert model_version(listing, prefix=True) == model_version(list(reversed(listing)), prefix=True)
        assert model_version(listing, prefix=True) != model_version(files('"x"', '"z"'), prefix=True)
