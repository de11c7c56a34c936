"""Progress reporting to stderr: a redrawn bar on a terminal, a few plain log lines otherwise.

Called from the download threads, so ``add`` is thread-safe and cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO

log = logging.getLogger("preloader")


def bar_text(done: int, total: int, seconds: float, width: int = 30) -> str:
    """Pure: '[#######.......]  45%  0.48/1.07 GB  1.20 GB/s'."""
    fraction = done / total if total else 1.0
    filled = int(width * fraction)
    rate = done / seconds / 1e9 if seconds > 0 else 0.0
    bar = f"[{'#' * filled}{'.' * (width - filled)}] " if width else ""
    return f"{bar}{fraction * 100:5.1f}%  {done / 1e9:.2f}/{total / 1e9:.2f} GB  {rate:.2f} GB/s"


class Progress:
    def __init__(self, total: int, stream: TextIO, bar: bool, label: str) -> None:
        self.total = total
        self.stream = stream
        self.bar = bar
        self.label = label
        self.done = 0
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._next_decile = 1

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.perf_counter()
            if self.bar:
                if now - self._last_draw >= 0.1 or self.done >= self.total:
                    self._last_draw = now
                    self.stream.write(f"\r{self.label} {bar_text(self.done, self.total, now - self._start)}")
                    self.stream.flush()
            elif self.total and self.done * 10 >= self._next_decile * self.total:
                self._next_decile = self.done * 10 // self.total + 1
                log.info("%s %s", self.label, bar_text(self.done, self.total, now - self._start, width=0))

    def close(self) -> None:
        if self.bar:
            self.stream.write("\n")
            self.stream.flush()
