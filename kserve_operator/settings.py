"""Operator settings: flags and environment parsed once into a frozen dataclass, and kopf's tuning.

Every environment variable the operator reads is read here and documented in the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import secrets
from collections.abc import Mapping, Sequence

import kopf

from kserve_operator.errors import InvalidSpec
from kserve_operator.planning.leader_election import ElectionTimings
from kserve_operator.planning.memcached import MemcachedImages
from kserve_operator.resources.prewarm import DEFAULT_CACHE_PATH, DEFAULT_JOB_NAMESPACE, PrewarmPlatform, parse_size

FINALIZER = "serverless.xyz/kserve-operator"
ANNOTATION_PREFIX = "kserve-operator.serverless.xyz"


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = True
    prometheus_url: str | None = None
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    # The placement webhook (kopf's WebhookServer, HTTPS): 0 turns it off. Its certificates are
    # self-managed in a Secret of the operator's namespace, beside the Service the API server calls.
    webhook_port: int = 9443  # WEBHOOK_PORT
    webhook_namespace: str = "kserve-operator"  # WEBHOOK_NAMESPACE: the Service's and the Secret's
    webhook_service: str = "kserve-operator-webhook"  # WEBHOOK_SERVICE
    webhook_secret: str = "kserve-operator-webhook-tls"  # noqa: S105 (a Secret's name) WEBHOOK_CERT_SECRET
    webhook_configuration: str = "kserve-operator-placement"  # WEBHOOK_CONFIGURATION (Mutating...)
    resync_seconds: float = 30.0
    finalizer_timeout_seconds: float = 60.0
    memcached: MemcachedImages = dataclasses.field(default_factory=MemcachedImages)
    # A Memcached's spec.metricsQuery runs with the operator's view of Prometheus (every
    # namespace) and its number lands in the tenant's status: an administrator's opt-in.
    allow_custom_metrics_queries: bool = False
    # A ModelCanary writes VirtualServices in its own namespace only, and in these (`*`: every one).
    canary_allowed_route_namespaces: tuple[str, ...] = ()  # CANARY_ALLOWED_ROUTE_NAMESPACES
    preloader_image: str = "kserve-preloader:0.1.0"  # PRELOADER_IMAGE: the image built from Dockerfile.gpu
    verbose: bool = False
    # Pre-warm tenancy: the Jobs (and their hostPath) live in a namespace the platform owns, so
    # tenant namespaces never need Pod Security `privileged`; the node cache is the platform's.
    prewarm_namespace: str = DEFAULT_JOB_NAMESPACE  # PREWARM_NAMESPACE
    prewarm_cache_host_path: str = DEFAULT_CACHE_PATH  # PREWARM_CACHE_HOST_PATH
    prewarm_cache_max_bytes: int | None = None  # PREWARM_CACHE_MAX_BYTES
    prewarm_retry_max_seconds: float = 3600.0  # PREWARM_RETRY_MAX_SECONDS: cap of a failed node's backoff
    # Leader election (docs/architecture.md, "High availability"): only the holder of the Lease runs the
    # controllers; every replica serves the webhook. Off by default (one local process); the shipped
    # Deployment turns it on. The identity is the pod's name plus a random suffix, unique per process.
    leader_election: bool = False  # LEADER_ELECT / --leader-elect
    lease_name: str = "kserve-operator"  # LEADER_ELECTION_ID
    lease_namespace: str = "kserve-operator"  # LEADER_ELECTION_NAMESPACE, else POD_NAMESPACE
    election: ElectionTimings = dataclasses.field(default_factory=ElectionTimings)  # LEASE_DURATION_SECONDS...
    identity: str = ""  # POD_NAME (else the host name) + "_" + random hex
    # The operator's own client (not kopf's watches, not the Lease): a token bucket as client-go's, KUBE_API_QPS
    # requests per second after a burst of KUBE_API_BURST (clients/rate_limiter.py). A cap on herds, not a
    # throttle of the designed load: creating 40 objects/s takes ~270 of our requests/s (0 s waited at 300/600),
    # a restart ~50 in all (docs/benchmarks.md, bench-scale); at 50/100 the creates queued (p99 create -> child
    # 21 s at 400 objects).
    kube_api_qps: float = 300.0  # KUBE_API_QPS
    kube_api_burst: int = 600  # KUBE_API_BURST

    @property
    def prewarm_platform(self) -> PrewarmPlatform:
        return PrewarmPlatform(namespace=self.prewarm_namespace, cache_path=self.prewarm_cache_host_path,
                               cache_max_bytes=self.prewarm_cache_max_bytes, image=self.preloader_image,
                               retry_max_seconds=self.prewarm_retry_max_seconds)

    @property
    def watched_namespaces(self) -> tuple[str, ...]:
        """The namespaces kopf watches when restricted: the pre-warm Jobs' namespace too."""
        if not self.namespaces or self.prewarm_namespace in self.namespaces:
            return self.namespaces
        return (*self.namespaces, self.prewarm_namespace)


def _cache_path(env: Mapping[str, str]) -> str:
    path = env.get("PREWARM_CACHE_HOST_PATH") or DEFAULT_CACHE_PATH
    if not path.startswith("/") or "/../" in f"{path}/":
        raise SystemExit(f"PREWARM_CACHE_HOST_PATH={path!r} must be an absolute path without '..'")
    return path.rstrip("/") or "/"


def _max_bytes(env: Mapping[str, str]) -> int | None:
    raw = env.get("PREWARM_CACHE_MAX_BYTES")
    if not raw:
        return None
    try:
        return parse_size(raw, field="PREWARM_CACHE_MAX_BYTES")
    except InvalidSpec as exc:
        raise SystemExit(str(exc)) from exc


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SystemExit(f"{key}={raw!r} is not a number") from exc
    if value <= 0:
        raise SystemExit(f"{key} must be positive, got {raw}")
    return value


def _namespace_list(raw: str, key: str) -> tuple[str, ...]:
    """A comma-separated list of namespace names, or `*` alone for every namespace."""
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in names:
        if name != "*" and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise SystemExit(f"{key}: {name!r} is not a namespace name (nor * for every namespace)")
    return names


def _dns_name(raw: str, key: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?", raw):
        raise SystemExit(f"{key}: {raw!r} is not a valid object name (lower-case DNS subdomain)")
    return raw


def _lease_namespace(env: Mapping[str, str]) -> str:
    raw = env.get("LEADER_ELECTION_NAMESPACE") or env.get("POD_NAMESPACE") or OperatorSettings.lease_namespace
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", raw):
        raise SystemExit(f"LEADER_ELECTION_NAMESPACE (or POD_NAMESPACE): {raw!r} is not a namespace name")
    return raw


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise SystemExit(f"{key}={raw!r} is not a port number (0 turns the endpoint off)")
    return int(raw)


def _election(env: Mapping[str, str]) -> ElectionTimings:
    timings = ElectionTimings(
        lease_duration=_float(env, "LEASE_DURATION_SECONDS", ElectionTimings.lease_duration),
        renew_deadline=_float(env, "RENEW_DEADLINE_SECONDS", ElectionTimings.renew_deadline),
        retry_period=_float(env, "RETRY_PERIOD_SECONDS", ElectionTimings.retry_period),
    )
    problems = timings.problems()
    if problems:
        raise SystemExit("leader election (LEASE_DURATION_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_PERIOD_SECONDS): "
                         + "; ".join(problems))
    return timings


def _burst(env: Mapping[str, str]) -> int:
    raw = env.get("KUBE_API_BURST")
    if raw is None or raw == "":
        return OperatorSettings.kube_api_burst
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"KUBE_API_BURST={raw!r} must be a whole number of requests, at least 1")
    return int(raw)


def _identity(env: Mapping[str, str]) -> str:
    """client-go's shape: the pod (or host) name, then a random suffix, so a restarted pod is a new candidate."""
    return f"{env.get('POD_NAME') or os.uname().nodename}_{secrets.token_hex(4)}"


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> OperatorSettings:
    """Flags win over environment variables, which win over defaults."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="kserve-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=None,
                       help="watch this namespace (repeatable; env WATCH_NAMESPACE, comma-separated)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--prometheus-url", default=env.get("PROMETHEUS_URL") or None)
    parser.add_argument("--http-port", type=int, default=_port(env, "OPERATOR_HTTP_PORT", 8080),
                        help="port for /healthz, /readyz and /metrics (0 disables)")
    parser.add_argument("--http-host", default=env.get("OPERATOR_HTTP_HOST", "0.0.0.0"))
    parser.add_argument("--webhook-port", type=int, default=_port(env, "WEBHOOK_PORT", 9443),
                        help="HTTPS port of the placement webhook (0 disables; env WEBHOOK_PORT)")
    parser.add_argument("--resync-seconds", type=float, default=_float(env, "RESYNC_SECONDS", 30.0))
    parser.add_argument("--allow-custom-metrics-queries", action="store_true",
                        default=env.get("ALLOW_CUSTOM_METRICS_QUERIES", "").lower() in ("1", "true", "yes"),
                        help="let Memcached specs carry their own PromQL (env ALLOW_CUSTOM_METRICS_QUERIES)")
    parser.add_argument("--canary-allowed-route-namespaces", default=env.get("CANARY_ALLOWED_ROUTE_NAMESPACES", ""),
                        help="namespaces (comma-separated, * for all) whose VirtualServices a ModelCanary in "
                             "another namespace may change (env CANARY_ALLOWED_ROUTE_NAMESPACES; default none)")
    parser.add_argument("--leader-elect", action="store_true",
                        default=env.get("LEADER_ELECT", "").lower() in ("1", "true", "yes"),
                        help="run the controllers only while holding the Lease (env LEADER_ELECT); every replica "
                             "serves the webhook")
    parser.add_argument("-v", "--verbose", action="store_true", default=env.get("LOG_LEVEL", "").upper() == "DEBUG")
    args = parser.parse_args(argv)

    namespaces: tuple[str, ...] = ()
    if args.namespace:
        namespaces = tuple(args.namespace)
    elif not args.all_namespaces and env.get("WATCH_NAMESPACE"):
        namespaces = tuple(ns.strip() for ns in env["WATCH_NAMESPACE"].split(",") if ns.strip())
    if args.resync_seconds <= 0:
        parser.error("--resync-seconds must be positive")
    if not 0 <= args.webhook_port <= 65535:
        parser.error("--webhook-port must be a port number (0 turns the webhook off)")
    return OperatorSettings(
        namespaces=namespaces,
        all_namespaces=not namespaces,
        prometheus_url=args.prometheus_url,
        http_host=args.http_host,
        http_port=args.http_port,
        webhook_port=args.webhook_port,
        webhook_namespace=env.get("WEBHOOK_NAMESPACE") or OperatorSettings.webhook_namespace,
        webhook_service=env.get("WEBHOOK_SERVICE") or OperatorSettings.webhook_service,
        webhook_secret=env.get("WEBHOOK_CERT_SECRET") or OperatorSettings.webhook_secret,
        webhook_configuration=env.get("WEBHOOK_CONFIGURATION") or OperatorSettings.webhook_configuration,
        resync_seconds=args.resync_seconds,
        finalizer_timeout_seconds=_float(env, "FINALIZER_TIMEOUT_SECONDS", 60.0),
        memcached=MemcachedImages(
            memcached=env.get("MEMCACHED_IMAGE") or MemcachedImages.memcached,
            exporter=env.get("MEMCACHED_EXPORTER_IMAGE") or MemcachedImages.exporter,
            memory_mb=int(_float(env, "MEMCACHED_MEMORY_MB", MemcachedImages.memory_mb)),
        ),
        allow_custom_metrics_queries=args.allow_custom_metrics_queries,
        canary_allowed_route_namespaces=_namespace_list(args.canary_allowed_route_namespaces,
                                                        "CANARY_ALLOWED_ROUTE_NAMESPACES"),
        preloader_image=env.get("PRELOADER_IMAGE") or OperatorSettings.preloader_image,
        verbose=args.verbose,
        prewarm_namespace=env.get("PREWARM_NAMESPACE") or DEFAULT_JOB_NAMESPACE,
        prewarm_cache_host_path=_cache_path(env),
        prewarm_cache_max_bytes=_max_bytes(env),
        prewarm_retry_max_seconds=_float(env, "PREWARM_RETRY_MAX_SECONDS", 3600.0),
        leader_election=args.leader_elect,
        lease_name=_dns_name(env.get("LEADER_ELECTION_ID") or OperatorSettings.lease_name, "LEADER_ELECTION_ID"),
        lease_namespace=_lease_namespace(env),
        election=_election(env),
        identity=_identity(env),
        kube_api_qps=_float(env, "KUBE_API_QPS", OperatorSettings.kube_api_qps),
        kube_api_burst=_burst(env),
    )


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's knobs, set once before it starts."""
    tuned = kopf.OperatorSettings()
    tuned.persistence.finalizer = FINALIZER
    tuned.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    tuned.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Events come from the controllers' explicit decisions only: kopf would otherwise turn
    # every handler log line into an Event, a write per line.
    tuned.posting.loggers = False
    # Watches die silently behind some load balancers; reconnect well before that
    # (kopf issues #232, #585: a server-side timeout plus a slightly longer client one).
    tuned.watching.server_timeout = 300
    tuned.watching.client_timeout = 330
    tuned.watching.connect_timeout = 30
    tuned.networking.request_timeout = 60
    tuned.networking.error_backoffs = [1, 2, 5, 10, 20]
    tuned.execution.max_workers = 16
    tuned.batching.error_delays = (1, 2, 5, 10, 20, 30)
    return tuned
