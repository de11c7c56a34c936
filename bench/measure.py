"""What every operator benchmark measures the same way: percentiles, the operator's peak memory,
and its API traffic as the emulated API server recorded it (writes and reads, watches excluded)."""

from __future__ import annotations

import pathlib

from devcluster.emulator import EmulatedCluster

OPERATOR_AGENTS = ("kopf/", "kserve-operator")  # kopf's own client and ours


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile `q` (0..100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set (VmHWM), read while it still runs."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def operator_writes(cluster: EmulatedCluster, since: float) -> int:
    """POST/PUT/PATCH/DELETE by the operator since `since` (time.time()), Events included."""
    return sum(cluster.count_writes(since=since, exclude_resources=(), user_agent=agent) for agent in OPERATOR_AGENTS)


def operator_reads(cluster: EmulatedCluster, since: float) -> int:
    """GETs and LISTs by the operator since `since`; watch streams are not reads of this kind."""
    return sum(1 for r in cluster.request_log.snapshot() if r.timestamp >= since and r.method == "GET"
               and not r.watch and r.user_agent.startswith(OPERATOR_AGENTS))
