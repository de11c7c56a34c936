"""A burst of child events for one object costs one pass (controllers/core.py): while a child-event
pass waits for the object's lock, more child events are dropped, because the waiting pass reads the
informers' caches (every change so far) once it runs. kopf's own passes are never dropped."""

from __future__ import annotations

import asyncio

from kserve_operator.controllers.core import Outcome, ReconcileCore, ReconcileResult


class NoApi:
    pass


def test_child_events_behind_a_running_pass_coalesce_into_one() -> None:
    async def scenario() -> None:
        core = ReconcileCore("test", NoApi())  # type: ignore[arg-type]
        release = asyncio.Event()
        passes: list[str] = []

        async def slow() -> ReconcileResult:
            passes.append("kopf")
            await release.wait()
            return ReconcileResult(Outcome.OK)

        async def child() -> ReconcileResult:
            passes.append("child")
            return ReconcileResult(Outcome.OK)

        running = asyncio.create_task(core.run("ns", "a", slow))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(core.run("ns", "a", child, from_child=True))
        await asyncio.sleep(0)
        dropped = [await core.run("ns", "a", child, from_child=True) for _ in range(3)]
        other = await core.run("ns", "b", child, from_child=True)  # another object is not held back
        kopf_pass = asyncio.create_task(core.run("ns", "a", child))  # kopf's own: never dropped
        release.set()
        assert await running is Outcome.OK and await waiting is Outcome.OK and await kopf_pass is Outcome.OK
        assert dropped == [Outcome.SKIPPED] * 3 and other is Outcome.OK
        assert passes == ["kopf", "child", "child", "child"]  # b's, then a's waiting pass, then kopf's
        assert not core.queued
        assert await core.run("ns", "a", child, from_child=True) is Outcome.OK  # nothing waits now

    asyncio.run(scenario())
