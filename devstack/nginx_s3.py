"""nginx on loopback as a fast, anonymous, read-only S3: what the preload benchmark pulls from and
what the preloader's whole-process tests run against (moto's server is the S3 API; this is a real
HTTP server at wire speed, with nginx's own Range, If-Match and ETag handling).

nginx answers path-style unsigned GET/HEAD with Range and If-Match the way S3 does for a public
object. ``GET``/``HEAD /<bucket>`` (HeadBucket, ListObjects v1/v2) is answered with a static listing
written beside the config when the server starts, so clients that list first (KServe's storage
initializer, the preloader with a prefix) work too; the listing ignores ``prefix`` (one model per
bucket) and is not rewritten when files change, so change a file in place to test a stale cache,
not the set of files. It runs in the foreground with its own pid, log and temp paths under the work
directory, on a free port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.metrics_stack import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def have_nginx() -> bool:
    """Debian installs nginx in /usr/sbin, which is not on every user's PATH."""
    return os.access(NGINX, os.X_OK)


NGINX_CONF = """
worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
{listings}
    }}
}}
"""


def nginx_etag(path: Path) -> str:
    """The ETag nginx sends for a static file: hex mtime and hex size."""
    st = path.stat()
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def listing_xml(bucket: str, root: Path) -> str:
    """A ListObjects (v1 and v2 alike) answer for every file under root/bucket."""
    contents = []
    for path in sorted(p for p in (root / bucket).rglob("*") if p.is_file()):
        key = path.relative_to(root / bucket).as_posix()
        etag = nginx_etag(path).replace('"', "&quot;")
        contents.append(
            f"<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f"<ETag>{etag}</ETag><Size>{path.stat().st_size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{bucket}</Name><Prefix></Prefix><KeyCount>{len(contents)}</KeyCount><MaxKeys>1000</MaxKeys>"
        f"<IsTruncated>false</IsTruncated>{''.join(contents)}</ListBucketResult>"
    )


@contextmanager
def nginx(root: Path, work: Path) -> Iterator[str]:
    """Serve ``root`` (``root/<bucket>/<key>``) on loopback; yields the endpoint URL."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    listings = []
    for bucket in sorted(p.name for p in root.iterdir() if p.is_dir()):
        (work / f"list-{bucket}.xml").write_text(listing_xml(bucket, root))
        listings.append(
            f"        location = /{bucket} {{ default_type application/xml; alias {work}/list-{bucket}.xml; }}"
        )
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, root=root, listings="\n".join(listings)))
    user = [] if os.geteuid() != 0 else ["-g", "user root;"]
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work), *user], stderr=subprocess.PIPE)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()  # noqa: S310  (our loopback http URL)
                break
            except OSError as exc:
                if getattr(exc, "code", None):  # an HTTP error (403/404) means it is serving
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}") from exc
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
