"""psycopg connections of our own, for the runner and the listener.

Django's connections are synchronous and per-thread; the runner's hot path and
the LISTEN connection need asyncio connections that outlive requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from django.db import connections

from django_relay.conf import settings

logger = logging.getLogger("django_relay")
R = TypeVar("R")

# Django sets these for its own cursors; our connections use psycopg's defaults.
_DJANGO_ONLY = ("cursor_factory", "context", "prepare_threshold")


def connect_kwargs() -> dict[str, Any]:
    """psycopg keyword arguments for the jobs' database, from ``DATABASES``."""
    wrapper = connections[settings.DATABASE_ALIAS]
    params = wrapper.get_connection_params()
    for key in _DJANGO_ONLY:
        params.pop(key, None)
    if "prepare_threshold" in wrapper.settings_dict.get("OPTIONS", {}):
        params["prepare_threshold"] = wrapper.settings_dict["OPTIONS"]["prepare_threshold"]
    return params


async def connect(*, listen: bool = False) -> psycopg.AsyncConnection:
    """Open an autocommit connection (for LISTEN, ``RELAY["LISTEN_DSN"]`` if set)."""
    if listen and settings.LISTEN_DSN:
        return await psycopg.AsyncConnection.connect(settings.LISTEN_DSN, autocommit=True)
    return await psycopg.AsyncConnection.connect(**connect_kwargs(), autocommit=True)


class Link:
    """One long-lived connection that is reopened after it fails.

    ``run(fn)`` calls ``fn(conn)``; on a connection error it logs, reconnects with
    backoff and calls ``fn`` again. Callers make ``fn`` safe to repeat.
    """

    def __init__(self, name: str, *, max_backoff: float = 5.0) -> None:
        self.name = name
        self.max_backoff = max_backoff
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def run(
        self, fn: Callable[[psycopg.AsyncConnection], Awaitable[R]], *, retry: bool = True
    ) -> R:
        """``fn(conn)``; with ``retry=False`` a connection error is raised, not retried."""
        delay = 0.05
        while True:
            try:
                async with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = await connect()
                    return await fn(self._conn)
            except psycopg.errors.TransactionRollback as exc:
                # A deadlock or serialization failure rolled the statement back;
                # the connection is fine: run it again.
                logger.info("%s: %s; retrying", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            except psycopg.OperationalError as exc:
                if not retry:
                    await self._discard()
                    raise
                logger.warning(
                    "%s connection failed (%s); retrying in %.2fs", self.name, exc, delay
                )
                await self._discard()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: nothing to close
                await conn.close()

    async def close(self) -> None:
        await self._discard()
