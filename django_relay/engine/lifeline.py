"""Keeps a runner honest: heartbeat, staging due jobs, rescuing orphans, pruning."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

from django_relay import queries, signals
from django_relay.conf import settings
from django_relay.engine import executor
from django_relay.pg import Link

logger = logging.getLogger("django_relay")


class Lifeline:
    """Periodic upkeep on one connection; each duty on its own period."""

    def __init__(
        self, node: str, queues: dict[str, int], reconcile: Callable[[], Awaitable[None]]
    ) -> None:
        self.node = node
        self.link = Link("maintenance")
        self._queues = json.dumps(queues)
        self._reconcile = reconcile
        self._due: dict[str, float] = {}

    async def beat(self) -> None:
        """Record our heartbeat now (also run once before the first claim)."""
        await self.link.run(
            lambda conn: queries.heartbeat(
                conn, self.node, socket.gethostname(), os.getpid(), self._queues
            )
        )

    async def run(self, stopping: asyncio.Event) -> None:
        duties: list[tuple[str, float | None, Callable[[], Awaitable[object]]]] = [
            ("heartbeat", settings.HEARTBEAT_INTERVAL, self.beat),
            ("stage", settings.STAGE_INTERVAL, self._stage),
            ("rescue", settings.HEARTBEAT_INTERVAL, self._rescue),
            ("reconcile", settings.HEARTBEAT_INTERVAL, self._reconcile),
            ("prune", None if settings.PRUNE_AFTER is None else 60.0, self._prune),
        ]
        tick = min(period for _, period, _ in duties if period)
        while not stopping.is_set():
            now = time.monotonic()
            for name, period, duty in duties:
                if period is None or self._due.get(name, 0.0) > now:
                    continue
                self._due[name] = now + period
                try:
                    await duty()
                except Exception:
                    logger.exception("%s failed; it runs again in %ss", name, period)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), tick)

    async def _stage(self) -> None:
        await self.link.run(queries.stage)

    async def _rescue(self) -> None:
        rows = await self.link.run(lambda conn: queries.rescue(conn, settings.RESCUE_AFTER))
        for job_id, state in rows:
            logger.warning(
                "job %s rescued from a runner that stopped heartbeating: now %s", job_id, state
            )
        discarded = [job_id for job_id, state in rows if state == "discarded"]
        if discarded:  # its attempts were spent: the rescue ended it
            executor.soon(executor.announce(signals.job_discarded, discarded))

    async def _prune(self) -> None:
        deleted = await self.link.run(lambda conn: queries.prune(conn, settings.PRUNE_AFTER))
        if deleted:
            logger.info("pruned %s finished jobs", deleted)

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.link.run(lambda conn: queries.forget_node(conn, self.node)), 2.0
            )
        await self.link.close()
