"""Leader election's loop: campaign for the Lease, then renew it, on the main thread's event loop.

`planning.leader_election` decides, `clients.leader_election.LeaseStore` talks to the API server;
this module times the two. A leader that has not renewed within the renew deadline calls
`on_lost`, which must stop every controller at once (the entry point exits the process); a
watchdog thread calls it too, should this event loop ever be stuck, so the deadline holds
whatever the loop is doing. Not a kopf handler: the entry point runs it beside the operators.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kserve_operator.clients.leader_election import LeaseStore
from kserve_operator.errors import ApiError
from kserve_operator.planning import leader_election as plan
from kserve_operator.resources.kinds import LEASE
from kserve_operator.resources.lease import LeaseRecord, parse_lease

logger = logging.getLogger(__name__)

Lease = dict[str, Any]


def _wall() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Campaigns for the Lease, then renews it; `on_started_leading` and `on_lost` are called once each at most."""

    def __init__(self, store: LeaseStore, identity: str, timings: plan.ElectionTimings, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = _wall) -> None:
        self.store = store
        self.identity = identity
        self.timings = timings
        self._clock = clock
        self._wall = wall
        self.leading = False
        self.observation: plan.Observation | None = None  # None until the first read answered
        self._lease: Lease | None = None  # the Lease as last read or written
        self._last_renew_sent = 0.0
        self._on_lost: Callable[[str], None] = lambda _: None
        self._failures = 0

    @property
    def holder(self) -> str | None:
        """The holder as last seen ("" released, None absent or not read yet)."""
        record = self.observation.record if self.observation is not None else None
        return record.holder if record is not None else None

    async def run(self, on_started_leading: Callable[[], None], on_lost: Callable[[str], None]) -> None:
        """Until cancelled: campaign, lead, renew; `on_lost` when leadership is lost (it should not return)."""
        self._on_lost = on_lost
        while not self.leading:
            await self._campaign_once()
        logger.info("Leading (Lease %s/%s, identity %s).", self.store.namespace, self.store.name, self.identity)
        watchdog = threading.Thread(target=self._watchdog, name="leader-election-watchdog", daemon=True)
        watchdog.start()
        on_started_leading()
        while True:
            await asyncio.sleep(max(0.0, self._last_renew_sent + self.timings.retry_period - self._clock()))
            await self._renew_within_deadline()

    def _read(self, lease: Lease | None, now: float) -> LeaseRecord | None:
        self._lease = lease
        record = parse_lease(lease) if lease is not None else None
        self.observation = plan.observe(self.observation, record, now)
        return record

    async def _campaign_once(self) -> None:
        try:
            lease = await self.store.get(within=self.timings.renew_deadline)
        except ApiError as exc:
            self._log_failure("read", exc)
            await asyncio.sleep(self.timings.retry_period)
            return
        record = self._read(lease, self._clock())
        assert self.observation is not None
        decision = plan.decide(self.identity, self.observation, self._clock(), leading=False, timings=self.timings)
        if decision.action is plan.Action.WAIT:
            await asyncio.sleep(decision.wait)
            return
        sent = self._clock()
        spec = plan.held_spec(decision.action, self.identity, record, self._wall(), self.timings)
        try:
            if decision.action is plan.Action.CREATE:
                written = await self.store.create(spec, within=self.timings.renew_deadline)
            else:
                assert lease is not None
                written = await self.store.replace(lease, spec, within=self.timings.renew_deadline)
        except ApiError as exc:
            # A 409: another candidate wrote first; it leads, and we read again at once.
            self._log_failure("take", exc, quiet=exc.conflict)
            if not exc.conflict:
                await asyncio.sleep(self.timings.retry_period)
            return
        logger.info("Took the Lease (%s).", decision.reason)
        self._read(written, self._clock())
        self._last_renew_sent = sent
        self._failures = 0
        self.leading = True

    async def _renew_within_deadline(self) -> None:
        """Renew, retrying until the renew deadline; past it, leadership is lost."""
        while True:
            now = self._clock()
            budget = plan.renew_budget(self._last_renew_sent, now, self.timings)
            if budget <= 0:
                self._lose(f"could not renew the Lease within the renew deadline "
                           f"({self.timings.renew_deadline:g} s)")
                return
            try:
                await self._renew_once(budget)
                self._failures = 0
                return
            except ApiError as exc:
                self._log_failure("renew", exc)
            except _Lost as lost:
                self._lose(str(lost))
                return
            remaining = plan.renew_budget(self._last_renew_sent, self._clock(), self.timings)
            await asyncio.sleep(max(0.0, min(self.timings.retry_period / 2, remaining)))

    async def _renew_once(self, budget: float) -> None:
        """One renewal: a replace pinned to the Lease we last wrote; on a 409 or 404, read and decide."""
        deadline = self._clock() + budget
        sent = self._clock()
        assert self._lease is not None
        lease = self._lease
        for _ in range(2):  # a 409 from a metadata edit by hand: read once, then retry
            record = parse_lease(lease)
            spec = plan.held_spec(plan.Action.RENEW, self.identity, record, self._wall(), self.timings)
            try:
                written = await self.store.replace(lease, spec, within=deadline - self._clock())
            except ApiError as exc:
                if not (exc.conflict or exc.not_found):
                    raise
                fresh = await self.store.get(within=deadline - self._clock())
                self._read(fresh, self._clock())
                assert self.observation is not None
                decision = plan.decide(self.identity, self.observation, self._clock(), leading=True,
                                       timings=self.timings)
                if decision.action is plan.Action.LOST:
                    raise _Lost(decision.reason) from exc
                assert fresh is not None
                lease = fresh
                continue
            self._read(written, self._clock())
            self._last_renew_sent = sent
            return
        raise ApiError(409, "Conflict", "the Lease kept changing under the renewal", method="PUT",
                       path=f"{LEASE.plural}/{self.store.name}")

    def _lose(self, why: str) -> None:
        self.leading = False
        self._on_lost(why)

    def _watchdog(self) -> None:
        """A backstop in its own thread: if the loop cannot even notice the deadline, this does."""
        slack = min(1.0, (self.timings.lease_duration - self.timings.renew_deadline) / 2)
        while self.leading:
            overdue = -plan.renew_budget(self._last_renew_sent, self._clock(), self.timings)
            if overdue > slack:
                self._lose(f"the renewal loop did not renew for {self.timings.renew_deadline + overdue:.1f} s")
                return
            time.sleep(0.25)

    async def release(self, within: float = 2.0) -> bool:
        """Hand the Lease back (the caller has stopped every controller): a candidate takes it at its next look."""
        if not self.leading or self._lease is None:
            return False
        self.leading = False
        lease = self._lease
        try:
            record = parse_lease(lease)
            if record.holder != self.identity:
                return False
            await self.store.replace(lease, plan.released_spec(record, self._wall()), within=within)
        except ApiError as exc:
            logger.warning("Could not release the Lease (a standby takes it when it expires): %s", exc)
            return False
        logger.info("Released the Lease %s/%s.", self.store.namespace, self.store.name)
        return True

    def _log_failure(self, what: str, exc: ApiError, *, quiet: bool = False) -> None:
        self._failures += 1
        level = logging.DEBUG if quiet or self._failures > 3 else logging.WARNING
        logger.log(level, "Leader election: could not %s the Lease (attempt %d): %s", what, self._failures, exc)


class _Lost(Exception):
    """The Lease is no longer ours: deleted, released or taken by someone else."""
