"""Serving never fails because of the node cache: the storage initializer bypasses an unwritable, full,
locked or corrupt cache and downloads the model straight into DEST, saying so in its log and result.

The unwritable case is real, not simulated: the tests run as root, so the initializer is started as a
child process under UID 1337 (what KServe gives the initializer under Istio CNI) against a cache owned
by UID 10001 with mode 0755 (what the pre-warm Job leaves), and a DEST owned by 1337. A full disk is
the ``FileSystem`` seam failing a write into the cache with ENOSPC mid-fill (making a real filesystem
full needs a mount this test cannot make); a locked cache is another process holding the flock.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest
from model_files import safetensors_bytes, sample_tensors

import preloader.initializer as initializer_module
from preloader.cache import ModelCache, location_key
from preloader.config import load_config
from preloader.errors import AccessDenied
from preloader.files import FileSystem
from preloader.initializer import (
    CACHE_CORRUPT,
    CACHE_FULL,
    CACHE_LOCKED,
    CACHE_UNWRITABLE,
    initialize,
)
from preloader.plan import parse_s3_uri
from preloader.result import Result, result_line

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
ISTIO_UID = 1337  # KServe runs the storage initializer as Istio's proxy user under Istio CNI
JOB_UID = 10001  # the pre-warm Job's user, owner of the node cache


@pytest.fixture
def model(s3: Any, bucket: str) -> dict[str, bytes]:
    files = {
        "model-00001-of-00002.safetensors": safetensors_bytes(sample_tensors(81)),
        "model-00002-of-00002.safetensors": safetensors_bytes(sample_tensors(82)),
        "config.json": b'{"hidden": 512}',
        "tokenizer/tokenizer.bin": b"\n\x0esentencepiece" * 100,
    }
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"llm/{name}", Body=body)
    return files


def dest_files(dest: Path) -> dict[str, bytes]:
    """Every file under DEST, hidden ones (a left-over ``.tmp-*``) included."""
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


def tree(root: Path) -> dict[str, tuple[str, bytes, int]]:
    """The cache as it is on disk: kind, bytes and owner of everything under it (mtimes and lock files
    aside), to show a bypass left it exactly as it was."""
    out: dict[str, tuple[str, bytes, int]] = {}
    for path in sorted(root.rglob("*")):
        if path.name in (".lock", ".room.lock"):
            continue  # lock files: taking a lock may create one, which leaves no state behind
        st = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        out[str(path.relative_to(root))] = (kind, path.read_bytes() if kind == "file" else b"", st.st_uid)
    return out


def unfinished(cache: Path) -> list[str]:
    """Partial cache state: entries without a manifest, temporary files, trash."""
    entries = [str(e.path) for e in ModelCache(cache).entries() if not e.complete]
    temps = [str(p) for p in cache.rglob(".tmp-*")] + [str(p) for p in cache.rglob(".trash-*")]
    return entries + temps


def init_argv(uri: str, dest: Path, cache: Path, *extra: str) -> list[str]:
    return [uri, str(dest), "--cache-dir", str(cache), "--progress", "never", "--part-size", "256KiB",
            "--termination-log", "/dev/null", *extra]


def child_env(env: dict[str, str]) -> dict[str, str]:
    """This checkout and this interpreter's packages, for a child that may run another user's way."""
    paths = [str(REPO), *site.getsitepackages()]
    return {**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)}


def run_initializer(
    argv: list[str], env: dict[str, str], uid: int | None = None, python: str = sys.executable
) -> tuple[int, dict[str, Any], str]:
    """``python -m preloader SRC DEST`` in a child process (as ``uid`` when given): exit code, the JSON
    line, stderr (the log)."""
    ids: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    proc = subprocess.run(
        [python, "-m", "preloader", *argv], env=child_env(env), capture_output=True, text=True, timeout=120,
        cwd="/", **ids,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return proc.returncode, json.loads(lines[-1]), proc.stderr


def assert_bypassed(line: dict[str, Any], reason: str, log: str, model: dict[str, bytes], dest: Path) -> None:
    assert line["cache"] == "bypassed" and line["cacheBypassReason"] == reason, line
    assert line["cache_path"] is None and line["linked"] is False
    assert line["fetched_bytes"] == sum(map(len, model.values()))
    assert f"WARNING cache bypassed ({reason})" in log, log
    assert dest_files(dest) == model  # complete and correct, nothing partial beside it


# ---- unwritable: a real UID 1337 against a cache owned by 10001, mode 0755 ----


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is under root's 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="preloader-uid-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def istio_python(shared_dir: Path) -> str:
    """An interpreter UID 1337 can start, of this one's version, importing the preloader. Running as
    another user needs root (CAP_SETUID); this interpreter may sit under root's 0700 home (a pyenv),
    then the system's Python of the same version runs this environment's packages."""
    if os.geteuid() != 0:
        pytest.skip(f"running the initializer as UID {ISTIO_UID} needs root; this run is UID {os.geteuid()}")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = "import os, sys, preloader.initializer; print(os.getuid(), '%d.%d' % sys.version_info[:2])"
    tried: list[str] = []
    for python in dict.fromkeys([sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]):
        try:
            out = subprocess.run(
                [python, "-c", probe], user=ISTIO_UID, group=ISTIO_UID, extra_groups=[], capture_output=True,
                text=True, timeout=60, cwd="/", env=child_env({}),
            )
        except OSError as exc:
            tried.append(f"{python}: {exc.strerror}")
            continue
        if out.stdout.split() == [str(ISTIO_UID), version]:
            return python
        tried.append(f"{python}: {out.stderr.strip()[-200:]}")
    pytest.skip(f"no Python {version} that UID {ISTIO_UID} can start here: {tried}")


def own(root: Path, uid: int) -> None:
    """Give a tree to ``uid``, directories 0755 and files 0644: as the pre-warm Job's user leaves it."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def layout(shared_dir: Path) -> tuple[Path, Path]:
    cache, dest = shared_dir / "cache", shared_dir / "pod" / "models"
    cache.mkdir()
    dest.mkdir(parents=True)
    own(shared_dir / "pod", ISTIO_UID)
    return cache, dest


def test_uid_1337_and_a_cache_owned_by_the_job_user_download_into_dest(
    bucket: str, model: dict[str, bytes], env: dict[str, str], shared_dir: Path, istio_python: str
) -> None:
    cache, dest = layout(shared_dir)
    own(cache, JOB_UID)
    before = tree(cache)
    code, line, log = run_initializer(init_argv(f"s3://{bucket}/llm/", dest, cache), env, ISTIO_UID, istio_python)
    assert code == 0, log
    assert_bypassed(line, CACHE_UNWRITABLE, log, model, dest)
    assert "Permission denied" in log
    assert all(p.stat().st_uid == ISTIO_UID for p in dest.rglob("*"))
    assert tree(cache) == before  # nothing written, nothing partial


def test_uid_1337_and_a_warm_cache_owned_by_the_job_user_is_still_a_hit(
    bucket: str, model: dict[str, bytes], env: dict[str, str], shared_dir: Path, istio_python: str
) -> None:
    cache, dest = layout(shared_dir)
    filled = initialize(load_config(init_argv(f"s3://{bucket}/llm/", shared_dir / "job", cache), env))
    assert filled.cache == "miss"
    own(cache, JOB_UID)
    code, line, log = run_initializer(init_argv(f"s3://{bucket}/llm/", dest, cache), env, ISTIO_UID, istio_python)
    assert code == 0, log
    assert line["cache"] == "hit" and line["fetched_bytes"] == 0 and "cacheBypassReason" not in line
    assert dest_files(dest) == model


def test_uid_1337_and_a_corrupt_entry_it_cannot_repair_bypass_it(
    bucket: str, model: dict[str, bytes], env: dict[str, str], shared_dir: Path, istio_python: str
) -> None:
    cache, dest = layout(shared_dir)
    filled = initialize(load_config(init_argv(f"s3://{bucket}/llm/", shared_dir / "job", cache), env))
    shard = Path(filled.cache_path or "", "model-00002-of-00002.safetensors")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    own(cache, JOB_UID)
    before = tree(cache)
    code, line, log = run_initializer(init_argv(f"s3://{bucket}/llm/", dest, cache), env, ISTIO_UID, istio_python)
    assert code == 0, log
    assert_bypassed(line, CACHE_CORRUPT, log, model, dest)
    assert "failed verification" in log
    assert tree(cache) == before  # the bad entry is not served, and not touched: the Job repairs it


def test_uid_1337_and_s3_errors_still_fail_with_their_reasons(
    bucket: str, model: dict[str, bytes], env: dict[str, str], shared_dir: Path, istio_python: str
) -> None:
    """The bypass is for the cache only: a missing model is still EmptyPrefix / NoSuchKey, exit 3."""
    cache, dest = layout(shared_dir)
    own(cache, JOB_UID)
    for uri, reason in [(f"s3://{bucket}/gone/", "EmptyPrefix"), (f"s3://{bucket}/llm/gone.bin", "NoSuchKey")]:
        code, line, log = run_initializer(init_argv(uri, dest, cache), env, ISTIO_UID, istio_python)
        assert (code, line["error"]) == (3, reason), log
        assert not list(dest.iterdir())


def test_access_denied_with_an_unusable_cache_is_still_access_denied(
    s3: Any, s3_endpoint: str, bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real moto IAM enforcement (in this process, where moto's server runs): a user with no policy."""
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    iam.create_user(UserName=f"nobody-{bucket}")
    key = iam.create_access_key(UserName=f"nobody-{bucket}")["AccessKey"]
    creds = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # enforce from now on
    dest = tmp_path / "dest"
    with pytest.raises(AccessDenied, match="access denied"):
        initialize(load_config(init_argv(f"s3://{bucket}/llm/", dest, cache), {**env, **creds}))
    assert not list(dest.iterdir())


# ---- full: ENOSPC mid-fill, and a bound the model does not fit ----


class _CacheDiskFills(FileSystem):
    """The cache's disk fills up after a few ranges: the fourth write into a file under the cache fails
    with ENOSPC. Writes into DEST (another disk, or the same one with room left) go through."""

    map_writes = False  # range by range, so there are writes to fail

    def __init__(self, cache: Path) -> None:
        self.cache = str(cache.resolve())
        self.cache_writes = 0

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(self.cache + os.sep):
            self.cache_writes += 1
            if self.cache_writes >= 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().pwrite(fd, data, offset)


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    """/dev/shm is a tmpfs, pytest's tmp_path is not: a cache on another filesystem than DEST (copied,
    not linked, so DEST files are written while the cache is)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    path = Path("/dev/shm") / f"preloader-fallback-{os.getpid()}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("where", ["same-filesystem", "other-filesystem"])
def test_a_cache_disk_full_mid_fill_is_bypassed_and_leaves_nothing_partial(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path, other_filesystem: Path,
    where: str, caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cache" if where == "same-filesystem" else other_filesystem
    if where == "other-filesystem" and os.stat(tmp_path).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip("tmp_path is on /dev/shm's filesystem here")
    dest = tmp_path / "dest"
    disk = _CacheDiskFills(cache)
    with caplog.at_level(logging.INFO, logger="preloader"):
        result = initialize(load_config(init_argv(f"s3://{bucket}/llm/", dest, cache), env), fs=disk)
    assert disk.cache_writes >= 4  # it did fail mid-fill
    assert_bypassed(json.loads(result_line(result)), CACHE_FULL, log_text(caplog), model, dest)
    assert "No space left on device" in caplog.text
    assert ModelCache(cache).entries() == [] and unfinished(cache) == []
    again = initialize(load_config(init_argv(f"s3://{bucket}/llm/", tmp_path / "next", cache), env))
    assert again.cache == "miss" and dest_files(tmp_path / "next") == model  # room again: cached as ever


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """The records as the CLI prints them (``<time> LEVEL message``), for assert_bypassed."""
    return "\n".join(f"- {r.levelname} {r.getMessage()}" for r in caplog.records)


def test_a_cache_bound_the_model_does_not_fit_is_bypassed(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path
) -> None:
    cache, dest = tmp_path / "cache", tmp_path / "dest"
    code, line, log = run_initializer(init_argv(f"s3://{bucket}/llm/", dest, cache, "--cache-max-bytes", "100KiB"), env)
    assert code == 0, log
    assert_bypassed(line, CACHE_FULL, log, model, dest)
    assert "CacheTooSmall" in log and unfinished(cache) == [] and ModelCache(cache).entries() == []


# ---- locked: another process holds the entry's lock, or an entry's lease, for too long ----


def hold_flock(path: Path) -> subprocess.Popen[str]:
    """Another process holding an exclusive flock on ``path`` (a stuck writer, a stuck eviction)."""
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def location_dir(cache: Path, s3_endpoint: str, uri: str) -> Path:
    return cache / "preloader-v2" / location_key(s3_endpoint, parse_s3_uri(uri))


@pytest.mark.parametrize("held", ["writer-lock-on-a-cold-node", "lease-of-a-warm-entry"])
def test_a_lock_held_past_the_serving_bound_is_bypassed(
    bucket: str, model: dict[str, bytes], env: dict[str, str], s3_endpoint: str, tmp_path: Path, held: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Without --lock-timeout the serving bound applies (SERVING_LOCK_WAIT, shortened to 1 s here)."""
    uri, cache, dest = f"s3://{bucket}/llm/", tmp_path / "cache", tmp_path / "dest"
    if held == "writer-lock-on-a-cold-node":
        lock = location_dir(cache, s3_endpoint, uri) / ".lock"
        lock.parent.mkdir(parents=True)
    else:
        warm = initialize(load_config(init_argv(uri, tmp_path / "job", cache), env))
        lock = Path(warm.cache_path or "").parent / ".lease"
    before = tree(cache)
    monkeypatch.setattr(initializer_module, "SERVING_LOCK_WAIT", 1.0)
    holder = hold_flock(lock)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="preloader"):
            result = initialize(load_config(init_argv(uri, dest, cache), env))
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert_bypassed(json.loads(result_line(result)), CACHE_LOCKED, log_text(caplog), model, dest)
    assert 1.0 <= waited < 30, waited
    assert "for over 1s" in caplog.text
    assert tree(cache) == before


def test_the_serving_bound_caps_lock_timeout_and_a_smaller_one_wins(
    bucket: str, model: dict[str, bytes], env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    """--lock-timeout's default (1800 s) is the Job's; a serving pod waits at most SERVING_LOCK_WAIT."""
    assert initializer_module.SERVING_LOCK_WAIT == 300.0
    uri, cache, dest = f"s3://{bucket}/llm/", tmp_path / "cache", tmp_path / "dest"
    lock = location_dir(cache, s3_endpoint, uri) / ".lock"
    lock.parent.mkdir(parents=True)
    holder = hold_flock(lock)
    try:
        code, line, log = run_initializer(init_argv(uri, dest, cache, "--lock-timeout", "0.5"), env)
    finally:
        holder.kill()
        holder.wait()
    assert code == 0, log
    assert_bypassed(line, CACHE_LOCKED, log, model, dest)
    assert "for over 0.5s" in log


# ---- corrupt: foreign things in the cache's layout, on a cache the run may write ----


def _file_for_entry(where: Path, entry: Path) -> None:
    shutil.rmtree(entry)
    entry.write_text("garbage")


def _file_for_location(where: Path, entry: Path) -> None:
    shutil.rmtree(where)
    where.write_text("garbage")


def _file_for_format_dir(where: Path, entry: Path) -> None:
    shutil.rmtree(where.parent)
    where.parent.write_text("garbage")


@pytest.mark.parametrize(
    "plant",
    [_file_for_entry, _file_for_location, _file_for_format_dir],
    ids=["entry-is-a-file", "location-is-a-file", "format-dir-is-a-file"],
)
def test_garbage_in_the_cache_layout_is_bypassed_and_left_as_found(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path, plant: Any,
) -> None:
    """Files where the cache's directories belong (a foreign tool, a bad restore). Foreign *directories*
    need no bypass: the writer reclaims them as unfinished entries."""
    uri, cache, dest = f"s3://{bucket}/llm/", tmp_path / "cache", tmp_path / "dest"
    warm = initialize(load_config(init_argv(uri, tmp_path / "job", cache), env))
    entry = Path(warm.cache_path or "").parent
    plant(entry.parent, entry)
    before = tree(cache)
    code, line, log = run_initializer(init_argv(uri, dest, cache), env)
    assert code == 0, log
    assert_bypassed(line, CACHE_CORRUPT, log, model, dest)
    assert tree(cache) == before and unfinished(cache) == []


def test_a_corrupt_entry_on_a_writable_cache_is_repaired_by_the_one_download(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path
) -> None:
    """Where the run may write the cache, a bad entry (failed verification, an unparsable index, a
    symbolic link planted in it) costs what a bypass would, one download, and heals the node: a miss."""
    uri, cache = f"s3://{bucket}/llm/", tmp_path / "cache"
    filled = initialize(load_config(init_argv(uri, tmp_path / "job", cache), env))
    files = Path(filled.cache_path or "")
    (files / "config.json").unlink()
    (files / "config.json").symlink_to("/etc/hostname")
    code, line, log = run_initializer(init_argv(uri, tmp_path / "a", cache), env)
    assert (code, line["cache"]) == (0, "miss"), log
    assert "failed verification" in log and dest_files(tmp_path / "a") == model
    (files.parent.parent / "current.json").write_text("{not json")
    code, line, log = run_initializer(init_argv(uri, tmp_path / "b", cache), env)
    assert (code, line["cache"]) == (0, "miss"), log
    assert "unusable" in log and dest_files(tmp_path / "b") == model
    code, line, _ = run_initializer(init_argv(uri, tmp_path / "c", cache), env)
    assert line["cache"] == "hit" and dest_files(tmp_path / "c") == model
    assert unfinished(cache) == [] and [e.complete for e in ModelCache(cache).entries()] == [True]


# ---- DEST after a failed cached attempt ----


class _CacheFailsAfterDestFiles(FileSystem):
    """The cache's disk fills at the manifest's write, after every DEST file was written and renamed."""

    def __init__(self, cache: Path) -> None:
        self.cache = str(cache.resolve())

    def write(self, fd: int, data: memoryview) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(self.cache + os.sep):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(fd, data)


def test_what_the_cached_attempt_put_in_dest_is_removed_before_the_fallback(
    bucket: str, model: dict[str, bytes], env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The cached attempt had linked every file into DEST when the commit failed; the fall-back starts
    from DEST as it found it (a restarted pod's earlier file kept), and nothing else is left there."""
    uri, cache, dest = f"s3://{bucket}/llm/", tmp_path / "cache", tmp_path / "dest"
    (dest / "tokenizer").mkdir(parents=True)
    (dest / "tokenizer" / "tokenizer.bin").write_bytes(model["tokenizer/tokenizer.bin"])  # an earlier attempt's
    with caplog.at_level(logging.INFO, logger="preloader"):
        result: Result = initialize(load_config(init_argv(uri, dest, cache), env), fs=_CacheFailsAfterDestFiles(cache))
    assert_bypassed(json.loads(result_line(result)), CACHE_FULL, log_text(caplog), model, dest)
    assert f"removed {len(model)} file(s) the cached attempt left in DEST" in caplog.text
    assert not any(stat.S_ISLNK(p.lstat().st_mode) for p in dest.rglob("*"))
    assert all(p.stat().st_nlink == 1 for p in dest.rglob("*") if p.is_file())  # none shared with the cache
    assert ModelCache(cache).entries() == [] and unfinished(cache) == []
