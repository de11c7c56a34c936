"""Everything the preloader can be told, parsed once into frozen dataclasses.

This is the only module that reads the environment (KServe's S3 variables) or the command line.
Every knob is a documented field with a default, in the manner of s3transfer's ``TransferConfig``;
the rest of the package receives a ``Config`` and never looks at ``os.environ``. boto3's own
credential chain (``AWS_ACCESS_KEY_ID``, web identity, instance metadata, ...) is left to boto3.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from preloader.errors import UsageError

MiB = 1 << 20
GiB = 1 << 30

ProgressMode = Literal["auto", "always", "never"]
AddressingStyle = Literal["auto", "virtual", "path"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3, following KServe's storage-initializer conventions."""

    endpoint_url: str | None = None
    region: str | None = None
    # True, False, or a CA bundle path (botocore's ``verify`` has the same three forms).
    verify: bool | str = True
    anonymous: bool = False
    addressing_style: AddressingStyle = "auto"
    # botocore retry mode for HEAD/LIST; the same budget is used for our ranged GETs.
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # scheme ("http", "https", "no") -> proxy URL / NO_PROXY list, as urllib.request.getproxies() has them.
    proxies: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferSettings:
    """How the bytes are fetched; defaults measured on loopback and sized for a GPU node."""

    part_size: int = 16 * MiB
    concurrency: int = 8
    # Bytes requested but not yet received, across all connections.
    max_inflight_bytes: int = 256 * MiB
    # Attempts per range for streaming failures (truncated body, reset connection) and 5xx.
    max_attempts: int = 5
    backoff_base: float = 0.2
    backoff_cap: float = 10.0


@dataclass(frozen=True)
class Config:
    uri: str
    # The storage initializer's directory to fill (KServe's second argument); None for the Job mode.
    dest: Path | None = None
    device: str = "auto"
    cache_dir: Path | None = None
    cache_max_bytes: int | None = None
    # Serve a complete, verified cache entry without asking S3 first (trusts the node).
    offline: bool = False
    termination_log: Path = Path("/dev/termination-log")
    max_device_bytes: int | None = None
    progress: ProgressMode = "auto"
    log_level: str = "INFO"
    # Seconds to wait for another run that is writing the same cache entry (then CacheBusy).
    lock_timeout: float = 1800.0
    # --device none: read the committed entry once, so the serving pod finds it in the page cache.
    page_cache: bool = False
    s3: S3Settings = field(default_factory=S3Settings)
    transfer: TransferSettings = field(default_factory=TransferSettings)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str) -> int:
    """'16MiB' -> 16777216, '1G' -> 10**9, '4096' -> 4096; binary units when an 'i' is present."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"not a size: {text!r} (examples: 4096, 16MiB, 1GiB, 2G)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    letter = unit[:1] if unit != "b" else ""
    scale = (1 << (10 * "kmgt".index(letter) + 10)) if "i" in unit and letter else _UNITS[letter]
    return int(float(number) * scale)


def parse_bool(name: str, text: str) -> bool:
    """Parse the loose booleans KServe writes into env ('0', 'false', 'True', ...)."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise UsageError(f"{name} must be true or false, got {text!r}")


def proxies_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY as urllib.request.getproxies_environment reads them.

    Lowercase wins over uppercase; HTTP_PROXY is ignored under CGI (REQUEST_METHOD set), as urllib does.
    """
    proxies: dict[str, str] = {}
    for name, value in env.items():  # first pass: any case
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in env:
        proxies.pop("http", None)
    for name, value in env.items():  # second pass: lowercase names win (an empty one unsets)
        if name.endswith("_proxy"):
            if value:
                proxies[name.lower()[:-6]] = value
            else:
                proxies.pop(name.lower()[:-6], None)
    return proxies


def s3_settings_from_env(env: Mapping[str, str]) -> S3Settings:
    """Read KServe's S3 variables.

    ``AWS_ENDPOINT_URL`` wins; otherwise ``S3_ENDPOINT`` (host[:port], as KServe's webhook writes it)
    gets ``https://`` unless ``S3_USE_HTTPS`` is false. ``S3_VERIFY_SSL=0`` turns TLS verification
    off, else ``AWS_CA_BUNDLE`` names a CA file. ``awsAnonymousCredential=true`` sends unsigned
    requests. ``S3_USER_VIRTUAL_BUCKET`` (KServe's spelling) selects virtual-hosted addressing.
    """
    use_https = parse_bool("S3_USE_HTTPS", env.get("S3_USE_HTTPS", "1"))
    endpoint = env.get("AWS_ENDPOINT_URL") or None
    if endpoint is None and env.get("S3_ENDPOINT"):
        raw = env["S3_ENDPOINT"].strip()
        endpoint = raw if "://" in raw else f"{'https' if use_https else 'http'}://{raw}"
    verify: bool | str = parse_bool("S3_VERIFY_SSL", env.get("S3_VERIFY_SSL", "1"))
    if verify and env.get("AWS_CA_BUNDLE"):
        verify = env["AWS_CA_BUNDLE"]
    anonymous = parse_bool("awsAnonymousCredential", env.get("awsAnonymousCredential", "false"))
    virtual = parse_bool("S3_USER_VIRTUAL_BUCKET", env.get("S3_USER_VIRTUAL_BUCKET", "false"))
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None
    retry_mode = env.get("AWS_RETRY_MODE", "standard")
    if retry_mode not in ("standard", "adaptive"):
        raise UsageError(f"AWS_RETRY_MODE must be standard or adaptive, got {retry_mode!r}")
    attempts = env.get("AWS_MAX_ATTEMPTS", "5")
    if not attempts.isdigit() or int(attempts) < 1:
        raise UsageError(f"AWS_MAX_ATTEMPTS must be a positive integer, got {attempts!r}")
    return S3Settings(
        endpoint_url=endpoint,
        region=region,
        verify=verify,
        anonymous=anonymous,
        addressing_style="virtual" if virtual else "auto",
        retry_mode="adaptive" if retry_mode == "adaptive" else "standard",
        max_attempts=int(attempts),
        proxies=proxies_from_env(env),
    )


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so __main__ owns every exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="preloader",
        description="Fetch a model from S3 into host memory and onto a device, through a node-local cache. "
        "Prints one JSON result as the last line of stdout.",
    )
    parser.add_argument("uri", help="s3://bucket/key for one file, s3://bucket/prefix/ for a model directory")
    parser.add_argument(
        "dest",
        nargs="?",
        type=Path,
        default=None,
        help="storage-initializer mode (KServe's convention): write the model's files under this directory "
        "instead of loading them onto a device; torch is not imported",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu, cuda (every visible GPU), cuda:N, or none (fill the node cache "
        "only: no tensors, no torch)",
    )
    parser.add_argument(
        "--page-cache",
        action="store_true",
        help="with --device none: read the cached model once after filling it, so a serving pod that "
        "starts next finds it in the page cache",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="node-local cache directory (or PRELOADER_CACHE_DIR)"
    )
    parser.add_argument(
        "--cache-max-bytes",
        default=None,
        help="keep the cache under this size, evicting least recently used versions not in use "
        "(or PRELOADER_CACHE_MAX_BYTES; e.g. 200GiB)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="serve a verified cache hit without asking S3 first: trusts the node to hold only models "
        "this pod may read, in their current version (or PRELOADER_OFFLINE=true)",
    )
    parser.add_argument(
        "--revalidate",
        action="store_true",
        help="kept for compatibility: a hit is always revalidated with HEAD/LIST unless --offline",
    )
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"))
    parser.add_argument("--part-size", default="16MiB", help="bytes per ranged GET (default 16MiB)")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel connections (default 8)")
    parser.add_argument("--max-inflight", default="256MiB", help="bytes requested at once (default 256MiB)")
    parser.add_argument("--max-attempts", type=int, default=None, help="attempts per range (default 5)")
    parser.add_argument(
        "--max-device-bytes",
        default=None,
        help="refuse models larger than this (default: free device memory, or MemAvailable for cpu)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for another run writing the same cache entry (default 1800)",
    )
    parser.add_argument("--progress", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def load_config(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """argv + environment -> Config; raises UsageError naming the bad input."""
    args = build_parser().parse_args(list(argv))
    s3 = s3_settings_from_env(env)
    part_size = parse_size(args.part_size)
    inflight = parse_size(args.max_inflight)
    if part_size < 64 * 1024:
        raise UsageError("--part-size must be at least 64KiB")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if inflight < part_size:
        raise UsageError("--max-inflight must be at least one --part-size")
    if not args.lock_timeout >= 0:
        raise UsageError("--lock-timeout must be a number of seconds, 0 or more")
    attempts = args.max_attempts if args.max_attempts is not None else s3.max_attempts
    if attempts < 1:
        raise UsageError("--max-attempts must be at least 1")
    transfer = TransferSettings(
        part_size=part_size, concurrency=args.concurrency, max_inflight_bytes=inflight, max_attempts=attempts
    )
    cache_dir = args.cache_dir or (Path(env["PRELOADER_CACHE_DIR"]) if env.get("PRELOADER_CACHE_DIR") else None)
    max_bytes_text = args.cache_max_bytes or env.get("PRELOADER_CACHE_MAX_BYTES") or None
    cache_max_bytes = parse_size(max_bytes_text) if max_bytes_text else None
    if cache_max_bytes is not None and cache_dir is None:
        raise UsageError("--cache-max-bytes needs --cache-dir (or PRELOADER_CACHE_DIR)")
    if args.device == "none" and args.dest is None and cache_dir is None:
        raise UsageError("--device none only fills the node cache: it needs --cache-dir (or PRELOADER_CACHE_DIR)")
    if args.page_cache and args.device != "none":
        raise UsageError("--page-cache goes with --device none")
    offline = args.offline or parse_bool("PRELOADER_OFFLINE", env.get("PRELOADER_OFFLINE", "false"))
    return Config(
        uri=args.uri,
        dest=args.dest,
        device=args.device,
        cache_dir=cache_dir,
        cache_max_bytes=cache_max_bytes,
        offline=offline,
        termination_log=args.termination_log,
        max_device_bytes=parse_size(args.max_device_bytes) if args.max_device_bytes else None,
        progress=args.progress,
        log_level=args.log_level,
        lock_timeout=args.lock_timeout,
        page_cache=args.page_cache,
        s3=s3,
        transfer=transfer,
    )
