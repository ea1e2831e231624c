"""The pruner: deletes finished jobs older than ``RELAY["PRUNE_AFTER"]``."""

from __future__ import annotations

import logging

import psycopg

from django_relay import queries
from django_relay.conf import settings
from django_relay.engine.service import Exclusive
from django_relay.pg import Link

logger = logging.getLogger("django_relay")


class Pruner(Exclusive):
    """Prunes once a minute (one runner at a time); not started when ``PRUNE_AFTER`` is None."""

    name = duty = "prune"

    def __init__(self, link: Link) -> None:
        super().__init__(60.0, link)

    async def run(self, conn: psycopg.AsyncConnection) -> int:
        assert settings.PRUNE_AFTER is not None  # the runner starts no pruner otherwise
        return await queries.prune(conn, settings.PRUNE_AFTER)

    def done(self, result: int) -> None:
        if result:
            logger.info("pruned %s finished jobs", result)
