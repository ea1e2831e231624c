"""The rescuer: gives back the jobs of runners that stopped heartbeating."""

from __future__ import annotations

import logging

import psycopg

from django_relay import queries, signals
from django_relay.conf import settings
from django_relay.engine import executor
from django_relay.engine.service import Exclusive
from django_relay.pg import Link

logger = logging.getLogger("django_relay")


class Rescuer(Exclusive):
    """Rescues orphaned jobs every ``HEARTBEAT_INTERVAL`` seconds (one runner at a time)."""

    name = duty = "rescue"

    def __init__(self, link: Link) -> None:
        super().__init__(settings.HEARTBEAT_INTERVAL, link)

    async def run(self, conn: psycopg.AsyncConnection) -> list[tuple[int, str]]:
        return await queries.rescue(conn, settings.RESCUE_AFTER)

    def done(self, result: list[tuple[int, str]]) -> None:
        for job_id, state in result:
            logger.warning(
                "job %s rescued from a runner that stopped heartbeating: now %s", job_id, state
            )
        discarded = [job_id for job_id, state in result if state == "discarded"]
        if discarded:  # its attempts were spent: the rescue ended it
            executor.soon(executor.announce(signals.job_discarded, discarded))
