"""A runner's periodic duty as a service of its own: ``start()``, ``stop()``, its own period."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from django_relay import queries
from django_relay.conf import settings
from django_relay.pg import Link

logger = logging.getLogger("django_relay")


class Periodic:
    """Runs ``tick()`` every ``period`` seconds on the runner's event loop until stopped.

    Each duty has its own task: a slow one (a long prune) delays no other.
    """

    name = "periodic"

    def __init__(self, period: float) -> None:
        self.period = period
        self.task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the duty's task (``self.task``; it ends only when stopped)."""
        self.task = asyncio.create_task(self._run(), name=f"relay-{self.name}")

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                logger.exception("%s failed; it runs again in %ss", self.name, self.period)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.wait())

    def wait(self) -> float:
        """Seconds until the next run."""
        return self.period

    async def stop(self) -> None:
        """Let the current run finish (each statement has a deadline), then end."""
        self._stopping.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class Exclusive(Periodic):
    """A duty of the whole system that one runner at a time performs, without a leader.

    The runner whose connection holds the duty's advisory lock performs it; the
    others try again each period. The lock ends with its connection, so when the
    holder dies (or its connection fails) another runner takes over within a period.
    """

    #: The duty's advisory lock (``queries.DUTY_LOCKS``).
    duty = ""

    def __init__(self, period: float) -> None:
        super().__init__(period)
        self.link = Link(self.name)
        self.held = False

    def wait(self) -> float:
        # Not the holder: look again within a heartbeat, so a dead holder's duty
        # (a prune runs once a minute) is taken over within seconds.
        return self.period if self.held else min(self.period, settings.HEARTBEAT_INTERVAL)

    async def run(self, conn: psycopg.AsyncConnection) -> Any:
        raise NotImplementedError

    def done(self, result: Any) -> None:
        """Called with what ``run()`` returned, when this runner performed the duty."""

    async def tick(self) -> None:
        self.held, result = await self.link.run(self._if_held)
        if self.held:
            self.done(result)

    async def _if_held(self, conn: psycopg.AsyncConnection) -> tuple[bool, Any]:
        if not await queries.hold_duty_lock(conn, self.duty):
            return False, None
        return True, await self.run(conn)

    async def stop(self) -> None:
        await super().stop()
        self.held = False
        await self.link.close()  # gives the lock up at once: another runner takes over
