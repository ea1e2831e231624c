"""The stager: makes scheduled and retryable jobs available when their time comes."""

from __future__ import annotations

import psycopg

from django_relay import queries
from django_relay.conf import settings
from django_relay.engine.service import Exclusive
from django_relay.pg import Link


class Stager(Exclusive):
    """Stages due jobs every ``RELAY["STAGE_INTERVAL"]`` seconds (one runner at a time)."""

    name = duty = "stage"

    def __init__(self, link: Link) -> None:
        super().__init__(settings.STAGE_INTERVAL, link)

    async def run(self, conn: psycopg.AsyncConnection) -> int:
        return await queries.stage(conn)
