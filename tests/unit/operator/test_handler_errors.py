"""How the Memcached handlers turn API failures into kopf's retry decisions.

The API client is replaced by a stand-in that fails every call: these tests are about the
classification (temporary -> backoff with jitter, permanent -> no retry), not about I/O.
Real API behaviour is covered against the emulated server in tests/integration/operator/.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest

from kserve_operator.controllers import memcached
from kserve_operator.errors import ApiError
from kserve_operator.settings import OperatorSettings


class FailingKube:
    def __init__(self, status: int) -> None:
        self.status = status

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        raise ApiError(self.status, "Reason", "failed", method="GET", path="/x")


def memo(status: int) -> kopf.Memo:
    ctx = memcached.MemcachedContext(settings=OperatorSettings(), kube=FailingKube(status), prometheus=None)  # type: ignore[arg-type]
    return kopf.Memo(memcached=ctx)


@pytest.mark.parametrize("status", [0, 409, 429, 500, 503])
@pytest.mark.parametrize("retry", [0, 3, 10])
def test_temporary_api_errors_retry_with_capped_jittered_backoff(status: int, retry: int) -> None:
    with pytest.raises(kopf.TemporaryError) as info:
        asyncio.run(memcached.memcached_changed("ns", "cache", memo(status), logging.getLogger("t"), retry))
    ceiling = min(60.0, 2.0**retry)
    assert info.value.delay is not None and ceiling * 0.5 <= info.value.delay <= ceiling


@pytest.mark.parametrize("status", [400, 403, 422])
def test_other_api_errors_are_permanent(status: int) -> None:
    with pytest.raises(kopf.PermanentError):
        asyncio.run(memcached.memcached_changed("ns", "cache", memo(status), logging.getLogger("t"), 0))
