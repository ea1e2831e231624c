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
                await asyncio.wait_for(self._stopping.wait(), self.period)

    async def stop(self) -> None:
        """Let the current run finish (each statement has a deadline), then end."""
        self._stopping.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class Exclusive(Periodic):
    """A duty of the whole system that one runner at a time performs, without a leader.

    Each run takes the duty's advisory lock for its own transaction; a runner that
    finds it taken skips that run. Nothing is held between runs, so a runner that
    died, hung or was stopped (SIGSTOP) blocks no other: the next runner to try
    performs the duty. The lock is transaction-scoped, so it also works through a
    pooler in transaction mode.

    A runner's duties share one connection (``link``, the runner's upkeep link):
    they run seconds apart and briefly, so a connection each would only add to the
    server's count (a long prune delays a stage by as long as it takes).
    """

    #: The duty's advisory lock (``queries.DUTY_LOCKS``).
    duty = ""

    def __init__(self, period: float, link: Link) -> None:
        super().__init__(period)
        self.link = link

    async def run(self, conn: psycopg.AsyncConnection) -> Any:
        raise NotImplementedError

    def done(self, result: Any) -> None:
        """Called with what ``run()`` returned, when this runner performed the duty."""

    async def tick(self) -> None:
        held, result = await self.link.run(self._if_free)
        if held:
            self.done(result)

    async def _if_free(self, conn: psycopg.AsyncConnection) -> tuple[bool, Any]:
        # A holder frozen inside its transaction is cut off by the server after
        # RESCUE_AFTER, as long as a frozen runner's jobs wait to be rescued.
        async with conn.transaction():
            if not await queries.take_duty_lock(conn, self.duty, settings.RESCUE_AFTER):
                return False, None
            return True, await self.run(conn)
