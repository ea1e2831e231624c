"""The scheduler: enqueues periodic jobs at their ticks (every runner runs one)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable

from django_relay import periodic

logger = logging.getLogger("django_relay")

#: Longest sleep between looks, so a changed clock or a missed tick is seen soon.
MAX_SLEEP = 5.0


class Scheduler:
    """Wakes at each entry's next tick and enqueues what is due (see :mod:`periodic`)."""

    def __init__(
        self,
        entries: list[periodic.Entry],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.entries = entries
        self._clock = clock
        self.since = clock()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            now = self._clock()
            try:
                for job in await periodic.aenqueue_due(now, self.since, self.entries):
                    logger.info(
                        "periodic %s: enqueued job %s for %s",
                        job.meta.get("periodic"),
                        job.pk,
                        job.meta.get("tick"),
                    )
            except Exception:
                logger.exception("enqueueing periodic jobs failed; trying again at the next tick")
            upcoming = min(entry.next_tick(now) for entry in self.entries)
            pause = min(max((upcoming - self._clock()).total_seconds(), 0.0), MAX_SLEEP)
            with contextlib.suppress(TimeoutError):
                # A hair past the tick: its second has begun on the database's clock too.
                await asyncio.wait_for(stopping.wait(), pause + 0.01)
