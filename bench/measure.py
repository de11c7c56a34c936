"""What every operator benchmark measures the same way: percentiles, the operator's memory, and its
API traffic, as the emulated API server's request log recorded it or, on the real control plane,
as kube-apiserver's own audit log recorded it (writes and reads, watches counted apart)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
from collections import Counter

from devcluster.emulator import EmulatedCluster

OPERATOR_AGENTS = ("kopf/", "kserve-operator")  # kopf's own client and ours
READ_VERBS = frozenset({"get", "list"})
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile `q` (0..100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _proc_status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set (VmHWM), read while it still runs."""
    return _proc_status_kib(pid, "VmHWM") * 1024


def rss_bytes(pid: int) -> int:
    """The process's resident set now (VmRSS)."""
    return _proc_status_kib(pid, "VmRSS") * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def operator_writes(cluster: EmulatedCluster, since: float) -> int:
    """POST/PUT/PATCH/DELETE by the operator since `since` (time.time()), Events included."""
    return sum(cluster.count_writes(since=since, exclude_resources=(), user_agent=agent) for agent in OPERATOR_AGENTS)


def operator_reads(cluster: EmulatedCluster, since: float) -> int:
    """GETs and LISTs by the operator since `since`; watch streams are not reads of this kind."""
    return sum(1 for r in cluster.request_log.snapshot() if r.timestamp >= since and r.method == "GET"
               and not r.watch and r.user_agent.startswith(OPERATOR_AGENTS))


# ---- the operator's traffic over a window, split between kopf and our own client --------------------


@dataclasses.dataclass(frozen=True)
class Traffic:
    """The operator's requests in a window as the server recorded them, by client ("kopf": kopf's
    watches, its progress/finalizer patches and its posting; "ours": `clients/kube.py`)."""

    reads: dict[str, int]  # GET and LIST of one object or collection; watches excluded
    writes: dict[str, int]  # POST, PUT, PATCH, DELETE (Events included)
    watches: int  # watch requests made (kopf's streams, re-opened when they end)
    conflicts: int  # answered 409 (a stale resourceVersion, or created already)

    @property
    def total_reads(self) -> int:
        return sum(self.reads.values())

    @property
    def total_writes(self) -> int:
        return sum(self.writes.values())


def client_of(user_agent: str) -> str | None:
    """kopf's client or ours, by User-Agent; None for anyone else."""
    if user_agent.startswith("kopf/"):
        return "kopf"
    if user_agent.startswith("kserve-operator"):
        return "ours"
    return None


def emulated_traffic(cluster: EmulatedCluster, since: float, until: float) -> Traffic:
    """From the emulated API server's request log (time.time() bounds)."""
    reads: Counter[str] = Counter()
    writes: Counter[str] = Counter()
    watches = conflicts = 0
    for record in cluster.request_log.snapshot():
        who = client_of(record.user_agent)
        if who is None or not since <= record.timestamp < until:
            continue
        conflicts += record.status == 409
        if record.watch:
            watches += 1
        elif record.method == "GET":
            reads[who] += 1
        elif record.method in WRITE_METHODS:
            writes[who] += 1
    return Traffic(dict(reads), dict(writes), watches, conflicts)


#: kube-apiserver's audit policy for the benchmark: one line per request of `{user}` (the operator's
#: ServiceAccount, so kopf's requests and ours, whoever else talks to the server), written once the
#: response is complete, metadata only; nothing for anyone else.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    users: ["{user}"]
  - level: None
"""


def audit_flags(work_dir: pathlib.Path, user: str) -> tuple[str, ...]:
    """kube-apiserver flags that write the audit log of `user`'s requests to work_dir/audit.log."""
    work_dir.mkdir(parents=True, exist_ok=True)
    policy = work_dir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY.replace("{user}", user))
    return (f"--audit-policy-file={policy}", f"--audit-log-path={work_dir / 'audit.log'}",
            "--audit-log-format=json", "--audit-log-maxsize=0")


def _epoch(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def audit_traffic(log: pathlib.Path, user: str, since: float, until: float) -> Traffic:
    """From kube-apiserver's audit log (see `audit_flags`): the requests `user` sent between `since`
    and `until` (time.time(); the server's receive time)."""
    reads: Counter[str] = Counter()
    writes: Counter[str] = Counter()
    watches = conflicts = 0
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete" or event["user"].get("username") != user:
            continue
        if not since <= _epoch(event["requestReceivedTimestamp"]) < until:
            continue
        who = client_of(str(event.get("userAgent") or "")) or "other"
        conflicts += (event.get("responseStatus") or {}).get("code") == 409
        verb = event["verb"]
        if verb == "watch":
            watches += 1
        elif verb in READ_VERBS:
            reads[who] += 1
        elif verb in WRITE_VERBS:
            writes[who] += 1
    return Traffic(dict(reads), dict(writes), watches, conflicts)


_API_REQUESTS = re.compile(r'^kserve_operator_api_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$', re.M)


def own_api_requests(metrics: str) -> Counter[str]:
    """`kserve_operator_api_requests_total` from the operator's /metrics, summed per method (GET,
    LIST, POST, PATCH, DELETE): its own client's calls, which kopf's are not part of."""
    counts: Counter[str] = Counter()
    for match in _API_REQUESTS.finditer(metrics):
        method = re.search(r'method="([^"]*)"', match["labels"])
        if method:
            counts[method[1]] += int(float(match["value"]))
    return counts


_LATENCY = re.compile(r'^kserve_operator_api_request_duration_seconds_(?P<what>sum|count)\{[^}]*\}\s+(?P<value>\S+)$',
                      re.M)


def own_api_latency_totals(metrics: str) -> tuple[float, int]:
    """(seconds, calls) of `kserve_operator_api_request_duration_seconds` over every method: the
    difference of two readings gives the mean latency of our own client's calls in between."""
    seconds, calls = 0.0, 0
    for match in _LATENCY.finditer(metrics):
        if match["what"] == "sum":
            seconds += float(match["value"])
        else:
            calls += int(float(match["value"]))
    return seconds, calls
