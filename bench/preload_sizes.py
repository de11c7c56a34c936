"""Models of any size without the bytes, and a process watched for its peak memory with a hard stop.

``write_sparse_checkpoint`` writes a sharded safetensors checkpoint (index + shards) whose data
sections are holes: a 6 GiB model costs a few kilobytes of disk and milliseconds to write, and nginx
serves it at wire speed (the kernel reads zeros for holes). ``run_watched`` runs a command, samples
its peak resident set (VmHWM) every few milliseconds and kills it the moment it passes a limit: the
"memory limit the test enforces" without a cgroup of its own (a test does not own the runner's cgroup hierarchy).
VmHWM is a high-water mark, so a sample misses nothing that happened before it; what happens after
the last sample is in the preloader's own result (its ``peak_rss_bytes`` is VmHWM read at the end).
``ru_maxrss`` of the child is not used: it starts from the parent's peak when the child is spawned
with vfork (the kernel keeps the old mm's high-water mark at exec), so a large test process taints it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
TENSOR_BYTES = 256 * MiB  # each tensor of the sparse shards (U8, 1-D)


def write_sparse_checkpoint(folder: Path, total: int, shards: int) -> list[Path]:
    """``model-0000i-of-0000n.safetensors`` of ``total // shards`` data bytes each (whole 256 MiB
    tensors, one smaller at the end when needed) + ``model.safetensors.index.json``; returns the shards."""
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = total // shards
    weight_map: dict[str, str] = {}
    paths = []
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset, j = 0, 0
        while offset < per_shard:
            size = min(TENSOR_BYTES, per_shard - offset)
            tensor = f"layers.{i}.{j}.weight"
            header[tensor] = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
            weight_map[tensor] = name
            offset += size
            j += 1
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % 8)  # data section 8-byte aligned, as the reference writer pads
        path = folder / name
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.truncate(8 + len(raw) + per_shard)  # a hole: no blocks, reads as zeros
        paths.append(path)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": per_shard * shards}, "weight_map": weight_map})
    )
    return paths


@dataclass(frozen=True)
class Watched:
    returncode: int
    peak_rss_bytes: int  # the child's VmHWM, sampled
    killed: bool  # stopped for passing the limit
    stdout: str
    stderr: str
    seconds: float


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as lines:
            for line in lines:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_watched(
    cmd: Sequence[str], env: Mapping[str, str], limit_bytes: int, timeout: float, cwd: Path | None = None,
    interval: float = 0.005,
) -> Watched:
    """Run ``cmd``; SIGKILL it once its peak RSS passes ``limit_bytes`` (or ``timeout`` passes)."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"watched-{os.getpid()}-{time.monotonic_ns()}"
    start = time.perf_counter()
    with open(f"{out_path}.out", "w+") as out, open(f"{out_path}.err", "w+") as err:
        proc = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdout=out, stderr=err)
        peak, killed = 0, False
        while True:
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _vm_hwm(proc.pid))
            if (peak > limit_bytes or time.perf_counter() - start > timeout) and not killed:
                killed = peak > limit_bytes
                os.kill(proc.pid, signal.SIGKILL)
            time.sleep(interval)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for suffix in (".out", ".err"):
        Path(f"{out_path}{suffix}").unlink(missing_ok=True)
    return Watched(proc.returncode, peak, killed, stdout, stderr, time.perf_counter() - start)
