"""The controllers' loop's exception handler (kserve_operator.__main__.quiet_after_stop): a lost
connection of one of kopf's own tasks after the stop is one WARNING line, no traceback; anything
else, and anything before the stop, still reaches asyncio's default handler."""

from __future__ import annotations

import logging
import threading
from typing import Any

import aiohttp
import pytest

from kserve_operator.__main__ import quiet_after_stop


class Loop:
    def __init__(self) -> None:
        self.defaulted: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.defaulted.append(context)


def test_a_lost_connection_after_the_stop_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    stop, loop = threading.Event(), Loop()
    context = {"message": "Task exception was never retrieved",
               "exception": aiohttp.ClientConnectionError("Connection closed")}
    quiet_after_stop(stop, loop, context)  # type: ignore[arg-type]
    assert loop.defaulted == [context], "before the stop: asyncio's own handler"
    stop.set()
    with caplog.at_level(logging.WARNING, logger="kserve_operator"):
        quiet_after_stop(stop, loop, context)  # type: ignore[arg-type]
    assert loop.defaulted == [context]
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and "Connection closed" in caplog.text
    other = {"message": "Task exception was never retrieved", "exception": ValueError("a bug")}
    quiet_after_stop(stop, loop, other)  # type: ignore[arg-type]
    assert loop.defaulted == [context, other], "a bug is never hidden"
