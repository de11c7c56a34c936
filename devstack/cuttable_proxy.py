"""A TCP proxy in front of the API server that a test can cut, to partition one operator replica.

Each replica's kubeconfig points at its own proxy; the proxy connects upstream from a source
address of its own (127.0.0.2, 127.0.0.3, ...), so the API server's audit log tells the
replicas apart by `sourceIPs` without any change to the operator. `cut()` is a black hole, as a
lost network is: open connections stop carrying bytes both ways and new ones are accepted but
never forwarded, so the replica's requests hang until its own timeouts. `heal()` closes what
the cut left half-dead and forwards new connections again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from devstack.metrics_stack import free_port


class CuttableProxy:
    """127.0.0.1:`port` -> `upstream` (an https:// URL), connecting from `source_ip`."""

    def __init__(self, upstream: str, source_ip: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = int(parts.port or 443)
        self.source_ip = source_ip
        self.port = free_port()
        self.cut_flag = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"proxy-{source_ip}", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> CuttableProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        own = [writer]
        self._writers.add(writer)
        try:
            while self.cut_flag.is_set():  # noqa: ASYNC110 (a threading.Event, set from the test thread)
                await asyncio.sleep(0.1)
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port, local_addr=(self.source_ip, 0))
            own.append(up_writer)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in own:
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.cut_flag.is_set():
                    continue  # dropped, as on a lost link
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def cut(self) -> None:
        self.cut_flag.set()

    def heal(self) -> None:
        """Forward again; the connections open during the cut are closed first (their TLS lost bytes)."""
        if not self.cut_flag.is_set():
            return
        done = threading.Event()

        def close_all() -> None:
            for writer in list(self._writers):
                with contextlib.suppress(Exception):
                    writer.close()
            self._writers.clear()
            self.cut_flag.clear()
            done.set()
        self._loop.call_soon_threadsafe(close_all)
        done.wait(5)

    def stop(self) -> None:
        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                with contextlib.suppress(Exception):
                    writer.close()
            self._loop.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(shutdown)
            self._thread.join(5)


def point_kubeconfig_at(path: Path, proxy: CuttableProxy) -> Path:
    """Rewrite the kubeconfig's server to the proxy (the API server's certificate names 127.0.0.1 too)."""
    document = yaml.safe_load(path.read_text())
    for cluster in document["clusters"]:
        cluster["cluster"]["server"] = proxy.url
    path.write_text(yaml.safe_dump(document))
    return path
